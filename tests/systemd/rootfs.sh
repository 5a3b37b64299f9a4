#!/usr/bin/env bash
# The Debian bookworm root file system the real-systemd test boots (systemd as
# PID 1 in a Podman container), made once with debootstrap and cached outside
# the checkout like the other build caches:
#   ${TEND_BUILD_CACHE:-~/.cache/tend-build}/systemd/bookworm-rootfs-2.tar
# (the number changes when what goes in it changes).
# Prints the tarball's path. About two minutes the first time.
set -euo pipefail
cache="${TEND_BUILD_CACHE:-$HOME/.cache/tend-build}/systemd"
tar="$cache/bookworm-rootfs-2.tar"
if [ -s "$tar" ]; then echo "$tar"; exit 0; fi
mkdir -p "$cache"
command -v debootstrap >/dev/null || { echo "debootstrap is missing (tests/run installs it)" >&2; exit 1; }
mirror="$(awk '/^URIs:/{print $2;exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
dir="$(mktemp -d "$cache/rootfs.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
# git: a file:// source runs git-upload-pack. procps: pgrep for the checks.
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,git,procps bookworm "$dir" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
  { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
# mktemp made it 0700, and the tar's "." carries that to the container's /,
# where no service running as another user could then reach anything.
chmod 0755 "$dir"
tar -C "$dir" -cf "$tar.tmp" .
mv "$tar.tmp" "$tar"
echo "$tar"
