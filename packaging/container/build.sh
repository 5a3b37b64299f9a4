#!/usr/bin/env bash
# Multi-arch container images of tend, built with Podman and no registry:
#   target/container/tend-<version>-{amd64,arm64,armv7}.oci.tar  one OCI archive each
#   target/container/tend-<version>.oci.tar                       the three, as one image index
# FROM scratch: the static musl binary of each architecture
# (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl,
# armv7-unknown-linux-musleabihf, from cross/build.sh) and the build machine's
# CA certificates. Nothing runs inside the image while it is built, so no
# emulation is needed. Podman's settings come from the environment
# (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF).
set -euo pipefail
cd "$(dirname "$0")/../.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
out=target/container
mkdir -p "$out"
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "container/build.sh: $ca is missing (apt install ca-certificates)" >&2; exit 2; }
image="localhost/tend:$version"
podman manifest rm "$image" >/dev/null 2>&1 || true
podman manifest create "$image" >/dev/null
for spec in amd64:linux/amd64:x86_64-unknown-linux-musl arm64:linux/arm64:aarch64-unknown-linux-musl \
            armv7:linux/arm/v7:armv7-unknown-linux-musleabihf; do
  IFS=: read -r arch platform triple <<<"$spec"
  bin="target/$triple/release/tend"
  [ -x "$bin" ] || { echo "container/build.sh: $bin is missing: run cross/build.sh $triple" >&2; exit 2; }
  ctx="$(mktemp -d)"
  cp packaging/container/Containerfile "$ctx/"
  cp "$bin" "$ctx/tend"
  cp "$ca" "$ctx/ca-certificates.crt"
  tag="$image-$arch"
  podman build -q --platform "$platform" --timestamp "${SOURCE_DATE_EPOCH:-0}" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  rm -f "$out/tend-$version-$arch.oci.tar"
  podman save -q --format oci-archive -o "$out/tend-$version-$arch.oci.tar" "$tag"
  podman manifest add "$image" "containers-storage:$tag" >/dev/null
  echo "$out/tend-$version-$arch.oci.tar ($platform)"
done
rm -f "$out/tend-$version.oci.tar"
podman manifest push -q --all "$image" "oci-archive:$out/tend-$version.oci.tar"
echo "$out/tend-$version.oci.tar (index: linux/amd64, linux/arm64, linux/arm/v7)"
