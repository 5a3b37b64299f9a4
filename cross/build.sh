#!/usr/bin/env bash
# Build tend for the gateways' architectures from this (x86_64 Debian) machine,
# reproducibly (locked dependencies, no embedded paths, fixed timestamps), and
# print the stripped sizes. Targets:
#   x86_64-unknown-linux-gnu          (this machine)
#   aarch64-unknown-linux-gnu         (Raspberry Pi 3/4/5 with 64-bit OS, most ARM64 gateways)
#   armv7-unknown-linux-gnueabihf     (32-bit Raspberry Pi OS, older gateways)
#   aarch64-unknown-linux-musl        (static: any aarch64 Linux)
#   armv7-unknown-linux-musleabihf    (static, built with cargo-zigbuild and build-std)
#   x86_64-unknown-linux-musl         (static: the amd64 container image, packaging/container)
# Usage: cross/build.sh [TARGET...]   (default: all six). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The longest build (armv7 musl, which also builds std) first, so two lanes end together.
all=(armv7-unknown-linux-musleabihf x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl x86_64-unknown-linux-musl)
targets=("${@:-${all[@]}}")

apt_install() {
  local sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v bc >/dev/null || need_apt+=(bc)
if ((${#need_apt[@]})); then apt_install "${need_apt[@]}"; fi
for t in "${targets[@]}"; do
  [ "$t" = armv7-unknown-linux-musleabihf ] && continue   # not downloadable: built with build-std
  rustup target list --installed | grep -qx "$t" || rustup target add "$t" >/dev/null
done

# Reproducible: no local paths in the binary, a fixed build time.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
# (Workspace sources are passed to rustc as relative paths already; the test
# suite checks no build path is in the binaries. RUSTFLAGS stay the same in
# every checkout, so cached dependencies stay valid.)
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$HOME/.cargo=~/.cargo"
# gold with identical code folding (see the scripts), run from the build cache
# (below) so that the linker's path, which cargo fingerprints, is the same from
# every checkout and the cached dependencies stay valid.
cache="${TEND_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tend-build}"
for cc in aarch64-linux-gnu arm-linux-gnueabihf; do
  cmp -s "cross/link-$cc" "$cache/bin/link-$cc" || install -D -m 755 "cross/link-$cc" "$cache/bin/link-$cc"
done
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$cache/bin/link-aarch64-linux-gnu"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER="$cache/bin/link-arm-linux-gnueabihf"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
export CC_x86_64_unknown_linux_musl=gcc
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld

# One target's release build. Each target has its own target directory, so two
# can build at once (one's single-threaded fat-LTO link overlaps the other's
# compile), kept outside the checkout in a build cache ($TEND_BUILD_CACHE,
# default ~/.cache/tend-build) like cargo's registry: the dependencies, fixed
# by Cargo.lock, compile once per machine, and each build after that compiles
# tend itself and links. The binary is copied to target/<triple>/release/tend.
# Gateway builds (ARM) leave out `tend fleet serve` (the `fleet-serve` feature):
# gateways never run it and the aarch64 binary has an 8 MiB budget. The x86_64
# build is the operators' and carries it (docs/decisions/0004-fleet-serve.md).
features_of() {
  case "$1" in
    x86_64-*) echo "--features=fleet-serve" ;;
    *) echo "--no-default-features" ;;
  esac
}
build_one() {
  local t="$1" dir="$cache/cross/$1" features
  features="$(features_of "$t")"
  # `|| return 1`: errexit does not apply inside a function called from an
  # `||` list, and a failed build must not ship the cache's older binary.
  # The gateway (ARM) builds take std from source without its default
  # features: no backtrace symbolizer (gimli, addr2line, miniz: about 470 KB
  # of the aarch64 binary, which a gateway never uses: a panic still prints
  # its message, and a gateway binary has no symbols to resolve anyway).
  # RUSTC_BOOTSTRAP as for armv7 musl, which has no prebuilt std.
  local std_flags=(-Zbuild-std=std,panic_abort -Zbuild-std-features=)
  local remap="--remap-path-prefix=$(rustc --print sysroot)/lib/rustlib/src/rust=/rustc/src"
  case "$t" in
    armv7-unknown-linux-musleabihf)
      RUSTC_BOOTSTRAP=1 RUSTFLAGS="$RUSTFLAGS $remap -C link-self-contained=no" CARGO_TARGET_DIR="$dir" \
        cargo zigbuild --locked --release -p tend --bin tend "$features" --target "$t" "${std_flags[@]}" || return 1 ;;
    aarch64-* | armv7-*)
      RUSTC_BOOTSTRAP=1 RUSTFLAGS="$RUSTFLAGS $remap" CARGO_TARGET_DIR="$dir" \
        cargo build --locked --release -p tend --bin tend "$features" --target "$t" "${std_flags[@]}" || return 1 ;;
    *)
      CARGO_TARGET_DIR="$dir" cargo build --locked --release -p tend --bin tend "$features" --target "$t" || return 1 ;;
  esac
  mkdir -p "target/$t/release"
  cp "$dir/$t/release/tend" "target/$t/release/tend.tmp" && mv "target/$t/release/tend.tmp" "target/$t/release/tend"
}

# std's sources, for the ARM builds' std (above).
if [[ " ${targets[*]} " == *" aarch64-"* || " ${targets[*]} " == *" armv7-"* ]]; then
  rustup component list --installed | grep -q rust-src || rustup component add rust-src >/dev/null
fi
if [[ " ${targets[*]} " == *" armv7-unknown-linux-musleabihf "* ]]; then
  # zig links armv7 musl (no musl cross gcc in Debian); both come from PyPI
  # into a venv in the build cache, so the system Python is left alone.
  venv="$cache/zig-venv"
  if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check ziglang==0.15.2 cargo-zigbuild==0.24.1
  fi
  export PATH="$venv/bin:$PATH"
  rustup component list --installed | grep -q rust-src || rustup component add rust-src >/dev/null
fi

mkdir -p target
rm -f target/cross-*.failed
jobs="${CROSS_JOBS:-2}"
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  echo "== $t" >&2
  { build_one "$t" > "target/cross-$t.log" 2>&1 || { touch "target/cross-$t.failed"; cat "target/cross-$t.log" >&2; }; } &
done
wait
if ls target/cross-*.failed >/dev/null 2>&1; then
  echo "failed: $(ls target/cross-*.failed | sed 's|target/cross-||; s|.failed||' | tr '\n' ' ')" >&2
  exit 1
fi
grep -h 'Finished' target/cross-*.log >&2 || true

echo
printf '%-34s %10s %8s\n' target bytes MiB
for t in "${targets[@]}"; do
  f="target/$t/release/tend"
  [ -f "$f" ] || { echo "$t: missing" >&2; exit 1; }
  b=$(stat -c %s "$f")
  printf '%-34s %10d %8.2f\n' "$t" "$b" "$(echo "$b / 1048576" | bc -l)"
done
