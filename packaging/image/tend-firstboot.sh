#!/bin/sh
# tend's first boot on a flashed gateway (packaging/image): give this gateway
# its identity and its credentials, once, before tend starts.
#
# Identity: device_id is, in order, the first line of BOOT/tend/device_id,
# the board's serial (/proc/device-tree/serial-number, e.g. a Raspberry Pi),
# or /etc/machine-id (made unique by systemd at first boot: the image ships it
# empty). It is written to /etc/tend/device_id and never changes afterwards.
#
# Provisioning: BOOT/tend/ (the FAT boot partition, where an operator drops
# files from any computer) may hold
#   agent.toml     the gateway's config, without device_id (added here)
#   git-token      -> /etc/tend/git-token      (0600; [source].token_file)
#   mqtt-password  -> /etc/tend/mqtt-password  (0600; [mqtt].password_file)
#   ca.pem, mqtt-ca.pem, client.pem -> /etc/tend/ (0644); client.key -> 0600
#   age.key        -> /etc/tend/age.key        (0600; [files].age_identity)
# They are moved into /etc/tend with those modes, owned by root, and the
# directory is deleted from the boot partition. The config's [files].allow
# roots are created and written to a ReadWritePaths= drop-in for tend's unit. (FAT has no permissions: a
# secret left there is readable by anyone who can read the card).
set -eu
BOOT="${TEND_BOOT:-/boot/firmware}"
ETC="${TEND_ETC:-/etc/tend}"
ROOT="${TEND_ROOT:-}"   # tests: where the allow roots are made
prov="$BOOT/tend"
log() { echo "tend-firstboot: $*" >&2; }

umask 077
mkdir -p "$ETC"
chmod 0755 "$ETC"

if [ ! -s "$ETC/device_id" ]; then
  id=""
  if [ -s "$prov/device_id" ]; then
    id="$(head -n 1 "$prov/device_id" | tr -d '\r' | tr -cd 'A-Za-z0-9_.-')"
    src="$prov/device_id"
  fi
  if [ -z "$id" ] && [ -r /proc/device-tree/serial-number ]; then
    id="$(tr -d '\0' < /proc/device-tree/serial-number | tr -cd 'A-Za-z0-9_.-' | sed 's/^0*//')"
    [ -n "$id" ] && id="gw-$id" && src=/proc/device-tree/serial-number
  fi
  if [ -z "$id" ] && [ -s /etc/machine-id ]; then
    id="gw-$(cut -c1-12 /etc/machine-id)"
    src=/etc/machine-id
  fi
  [ -n "$id" ] || { log "no device id: no $prov/device_id, no board serial, no /etc/machine-id"; exit 1; }
  printf '%s\n' "$id" > "$ETC/device_id.tmp"
  chmod 0644 "$ETC/device_id.tmp"
  mv "$ETC/device_id.tmp" "$ETC/device_id"
  log "device_id $id (from $src)"
fi
id="$(cat "$ETC/device_id")"

if [ -d "$prov" ]; then
  for f in git-token mqtt-password client.key age.key; do
    [ -f "$prov/$f" ] && install -o root -g root -m 0600 "$prov/$f" "$ETC/$f" && log "installed $ETC/$f (0600)"
  done
  for f in ca.pem mqtt-ca.pem client.pem allowed_signers; do
    [ -f "$prov/$f" ] && install -o root -g root -m 0644 "$prov/$f" "$ETC/$f" && log "installed $ETC/$f"
  done
  if [ -f "$prov/agent.toml" ]; then
    { printf 'device_id = "%s"\n' "$id"; grep -v '^[[:space:]]*device_id[[:space:]]*=' "$prov/agent.toml" | tr -d '\r'; } > "$ETC/agent.toml.tmp"
    chmod 0644 "$ETC/agent.toml.tmp"
    mv "$ETC/agent.toml.tmp" "$ETC/agent.toml"
    log "installed $ETC/agent.toml for $id"
    # The unit's ProtectSystem=strict leaves only what ReadWritePaths= names
    # writable: the config's [files].allow roots (one `allow = [...]` line),
    # made to exist, in a drop-in.
    roots="$(sed -n 's/^[[:space:]]*allow[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' "$ETC/agent.toml" | head -n 1 | tr ',' '\n' | tr -d ' "' | grep '^/' || true)"
    if [ -n "$roots" ]; then
      dropin="${TEND_DROPIN_DIR:-/etc/systemd/system/tend.service.d}"
      mkdir -p "$dropin"
      for r in $roots; do mkdir -p "$ROOT$r"; done
      printf '[Service]\nReadWritePaths=%s\n' "$(echo $roots)" > "$dropin/allow.conf"
      chmod 0644 "$dropin/allow.conf"
      log "ReadWritePaths=$(echo $roots) in $dropin/allow.conf"
      [ -n "${TEND_DROPIN_DIR:-}" ] || systemctl daemon-reload
    fi
  fi
  rm -rf "$prov"
  sync
  log "provisioning consumed and removed from $BOOT"
fi
