#!/bin/sh
# Install tend on a gateway without dpkg: the binary, the systemd unit, a
# sample configuration, and the hands-free stick import (the udev rule, its
# unit and the tend-stick helper: docs/stick-notes.md). Idempotent: running it again upgrades the binary and
# unit and never overwrites /etc/tend/agent.toml.
#   packaging/install.sh [--binary PATH] [--prefix /]     install
#   packaging/install.sh --uninstall [--purge]            remove (--purge: also the
#                                                         config and the revision store)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
binary=""
prefix=""
action=install
purge=no
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --prefix) prefix=${2%/}; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
have_systemd() { [ -z "$prefix" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }
have_udev() { [ -z "$prefix" ] && [ -d /run/udev ] && command -v udevadm >/dev/null; }
rule=etc/udev/rules.d/90-tend-import.rules
import_unit=etc/systemd/system/tend-import@.service
stick=usr/local/lib/tend/tend-stick

if [ "$action" = uninstall ]; then
    if have_systemd; then systemctl disable --now tend.service 2>/dev/null || true; fi
    rm -f "$prefix/usr/local/bin/tend" "$prefix/etc/systemd/system/tend.service" \
        "$prefix/$rule" "$prefix/$import_unit" "$prefix/$stick"
    rmdir "$prefix/usr/local/lib/tend" 2>/dev/null || true
    if have_udev; then udevadm control --reload || true; fi
    if [ "$purge" = yes ]; then rm -rf "$prefix/etc/tend" "$prefix/var/lib/tend"; fi
    if have_systemd; then systemctl daemon-reload; fi
    echo "tend removed$( [ "$purge" = yes ] && echo ', with its configuration and store')"
    exit 0
fi

if [ -z "$binary" ]; then
    for c in "$here/target/release/tend" "$here/tend"; do [ -x "$c" ] && binary=$c && break; done
fi
[ -n "$binary" ] && [ -x "$binary" ] || { echo "install.sh: no tend binary (use --binary PATH)" >&2; exit 2; }
"$binary" --version >/dev/null || { echo "install.sh: $binary does not run on this machine" >&2; exit 2; }

install -d -m 0755 "$prefix/usr/local/bin" "$prefix/etc/systemd/system" "$prefix/etc/tend"
install -d -m 0700 "$prefix/var/lib/tend"
install -m 0755 "$binary" "$prefix/usr/local/bin/tend.new" && mv -f "$prefix/usr/local/bin/tend.new" "$prefix/usr/local/bin/tend"
sed 's|/usr/bin/tend|/usr/local/bin/tend|' "$here/systemd/tend.service" > "$prefix/etc/systemd/system/tend.service"
install -d -m 0755 "$prefix/usr/local/lib/tend" "$prefix/etc/udev/rules.d"
install -m 0755 "$here/packaging/stick/tend-stick" "$prefix/$stick"
sed -e 's|/usr/bin/tend|/usr/local/bin/tend|' -e 's|/usr/lib/tend/tend-stick|/usr/local/lib/tend/tend-stick|' \
    "$here/systemd/tend-import@.service" > "$prefix/$import_unit"
install -m 0644 "$here/packaging/udev/90-tend-import.rules" "$prefix/$rule"
if have_udev; then udevadm control --reload || true; fi
if [ ! -e "$prefix/etc/tend/agent.toml" ]; then
    install -m 0644 "$here/packaging/agent.toml" "$prefix/etc/tend/agent.toml"
fi
if have_systemd; then systemctl daemon-reload; fi
echo "tend $("$prefix/usr/local/bin/tend" --version | cut -d' ' -f2) installed."
if grep -q '^\[source\]' "$prefix/etc/tend/agent.toml"; then
    echo "start it with: systemctl enable --now tend"
else
    echo "next: edit /etc/tend/agent.toml, then: systemctl enable --now tend"
fi
