#!/usr/bin/env bash
# Debian packages from the binaries cross/build.sh made (nothing is rebuilt):
#   target/<triple>/debian/tend_<version>-1_<arch>.deb  for amd64, arm64, armhf.
# Usage: packaging/deb.sh [TRIPLE...]   (default: the three glibc targets)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("${@:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}")
read -r -a targets <<<"${targets[*]}"
command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb
for t in "${targets[@]}"; do
  [ -f "target/$t/release/tend" ] || { echo "target/$t/release/tend is missing: run cross/build.sh $t" >&2; exit 1; }
  # --no-strip: the release profile already strips; the cross strip tools may be absent.
  cargo deb --locked -p tend --target "$t" --no-build --no-strip
done
ls -l target/*/debian/*.deb
