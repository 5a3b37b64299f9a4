#!/usr/bin/env bash
# tend quickstart: make examples/fleet a local Git repository, sync gateway
# gw-demo-01 from it into a demo root, and show the files, status and history.
# Needs no root; everything lives under ./target/quickstart (or $1).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$here/target/quickstart}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need git; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq git; else
    echo "quickstart: git is missing: sudo apt-get install -y git" >&2; exit 2; fi
fi
if ! need cargo; then
  echo "quickstart: cargo is missing: install Rust 1.95 or newer with rustup (https://rustup.rs)" >&2; exit 2
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building tend"
(cd "$here" && cargo build --quiet --bin tend)
tend="$here/target/debug/tend"

rm -rf "$work" && mkdir -p "$work/root" "$work/state"
step "making examples/fleet a Git repository at $work/fleet"
cp -r "$here/examples/fleet" "$work/fleet"
git -C "$work/fleet" init -q -b main
git -C "$work/fleet" add -A
git -C "$work/fleet" -c user.name=demo -c user.email=demo@example.com commit -qm "fleet: first revision"

cat > "$work/agent.toml" <<TOML
device_id = "gw-demo-01"
fleet = "demo"
state_dir = "$work/state"
labels = { site = "berlin", region = "eu" }

[source]
url = "file://$work/fleet"
branch = "main"
path = "devices/{device_id}"

[files]
root = "$work/root"
allow = ["/etc/myapp", "/opt/myapp"]
allow_hooks = true   # the example bundle runs an on_change command

[apply]
health_timeout = "3s"

[k3s]
manifests_dir = "$work/k3s-manifests"   # K3s's auto-deploy directory on a real gateway
TOML
export TEND_CONFIG="$work/agent.toml"
echo "config: $TEND_CONFIG"

step "tend validate (what the fleet repository's CI would run)"
"$tend" validate "$work/fleet/devices/gw-demo-01" --label site=berlin --label region=eu

step "tend sync --dry-run (the plan; nothing changes)"
"$tend" sync --dry-run

step "tend sync"
"$tend" sync

step "the files under the demo root, and the manifest for K3s"
(cd "$work/root" && find . -type f -exec ls -l {} + | awk '{print $1, $NF}')
ls "$work/k3s-manifests"
echo; cat "$work/root/etc/myapp/app.conf"

step "a new commit: change app.conf and drop region.conf"
sed -i 's/modbus_port = 502/modbus_port = 1502/' "$work/fleet/devices/gw-demo-01/files/etc/myapp/app.conf"
git -C "$work/fleet" rm -q -r groups/eu/files/etc/myapp/region.conf
sed -i 's|include = \["../../base", "../../groups/eu"\]|include = ["../../base"]|' "$work/fleet/devices/gw-demo-01/tend.toml"
git -C "$work/fleet" -c user.name=demo -c user.email=demo@example.com commit -qam "fleet: new modbus port, no region file"
"$tend" sync

step "drift: delete a managed file by hand, then sync again"
rm "$work/root/etc/myapp/common.conf"
"$tend" sync
ls -l "$work/root/etc/myapp"

step "a bad commit: its health check fails, so tend rolls back and quarantines it"
cat >> "$work/fleet/devices/gw-demo-01/tend.toml" <<'CHECK'

[[check]]
name = "api"
tcp = "127.0.0.1:9"    # nothing listens here
interval = "1s"
CHECK
sed -i 's/modbus_port = 1502/modbus_port = 2502/' "$work/fleet/devices/gw-demo-01/files/etc/myapp/app.conf"
git -C "$work/fleet" -c user.name=demo -c user.email=demo@example.com commit -qam "fleet: a revision that never becomes healthy"
"$tend" sync || echo "(exit $?: rolled back)"
grep modbus_port "$work/root/etc/myapp/app.conf"

step "tend status"
"$tend" status

step "tend history"
"$tend" history

step "the fleet: a local broker, the gateway's daemon, fleet status and the fleet view"
if ! command -v mosquitto >/dev/null 2>&1; then
  echo "Mosquitto is not installed, so the fleet part is skipped. To see it:"
  echo "  sudo apt-get install -y mosquitto && $0"
  exit 0
fi
# Free loopback ports for the broker and the view.
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 50))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "quickstart: no free port from $1" >&2; exit 1
}
mqtt_port="$(free_port 18830)"
view_port="$(free_port 9700)"
cat > "$work/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
pid_file $work/mosquitto.pid
CONF
[ "$(id -u)" = 0 ] && echo "user root" >> "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
echo $! > "$work/mosquitto.pid"
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.1; done
cat >> "$work/agent.toml" <<TOML

[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
health_interval = "10s"
TOML
"$tend" run > "$work/tend-run.log" 2>&1 &
echo $! > "$work/tend-run.pid"
"$tend" fleet serve --mqtt "mqtt://127.0.0.1:$mqtt_port" --listen "127.0.0.1:$view_port" > "$work/fleet-serve.log" 2>&1 &
echo $! > "$work/fleet-serve.pid"
cat > "$work/stop.sh" <<STOP
#!/bin/sh
# Stop what the quickstart left running.
for p in fleet-serve tend-run mosquitto; do [ -f "$work/\$p.pid" ] && kill "\$(cat "$work/\$p.pid")" 2>/dev/null; rm -f "$work/\$p.pid"; done
true
STOP
chmod +x "$work/stop.sh"
# The daemon publishes its status once connected.
for _ in $(seq 100); do
  "$tend" fleet status --mqtt "mqtt://127.0.0.1:$mqtt_port" --json 2>/dev/null | grep -q '"online":1' && break
  sleep 0.2
done
"$tend" fleet status --mqtt "mqtt://127.0.0.1:$mqtt_port" --all
echo
echo "The fleet view:   http://127.0.0.1:$view_port/   (metrics: /metrics, JSON: /api/devices)"
echo "Still running:    mosquitto, tend run and tend fleet serve; stop them with $work/stop.sh"
