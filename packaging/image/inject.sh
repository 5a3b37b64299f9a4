#!/usr/bin/env bash
# Inject tend into an existing gateway image (issue 18): a Raspberry Pi OS
# image as downloaded (.img or .img.xz), or any Debian-based image with an
# ext4 root and, for provisioning, a FAT boot partition.
#
#   packaging/image/inject.sh IMAGE [--out OUT] [--deb PATH]
#   (also: packaging/image/build.sh --from IMAGE ...)
#
# IMAGE is not modified: tend goes into a copy, OUT (default
# target/image/<name>-tend.img), written under OUT.tmp and renamed at the end,
# so a failed injection leaves no half-made image. What changes in the copy:
#   - the tend .deb for the image's architecture (arm64, armhf or amd64) is
#     installed with the image's own dpkg, in a chroot (foreign programs run
#     through qemu-user): /usr/bin/tend, its unit, /etc/tend, /var/lib/tend
#     and dpkg's database; tend.service is enabled;
#   - tend-firstboot (its script in /usr/lib/tend, its unit enabled) and, when
#     the image mounts its FAT partition elsewhere than /boot/firmware, a
#     drop-in telling it where;
#   - README-tend.txt on the FAT boot partition.
# Nothing else: no user, password, host name, network setting, kernel or
# partition is touched, the file systems are not resized.
#
# It mounts the image's partitions through loop devices, so it runs as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=packaging/image
. "$here/common.sh"

src=""
out=""
deb=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --deb) deb="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "inject.sh: unknown argument $1" >&2; exit 2 ;;
    *) [ -z "$src" ] || { echo "inject.sh: one image at a time ($src, $1)" >&2; exit 2; }; src="$1"; shift ;;
  esac
done
die() { echo "inject.sh: $*" >&2; exit 2; }
[ -n "$src" ] || die "which image? packaging/image/inject.sh IMAGE [--out OUT] [--deb PATH]"
[ -f "$src" ] || die "$src: no such image file"
[ "$(id -u)" = 0 ] || die "it mounts the image's partitions through loop devices: run it as root (sudo $0 $src)"
for t in losetup blkid sfdisk mount chroot mcopy; do
  command -v "$t" >/dev/null || die "$t is missing (apt install mount util-linux fdisk mtools)"
done
if [ -z "$out" ]; then
  name="$(basename "$src")"
  name="${name%.xz}"
  out="target/image/${name%.img}-tend.img"
fi
mkdir -p "$(dirname "$out")"

tmp="$out.tmp"
mnt="$(mktemp -d)"
loops=()
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" || true; done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rmdir "$mnt" 2>/dev/null || true
  rm -f "$tmp"
}
trap cleanup EXIT
mount_at() { mount "$@"; mounts+=("${!#}"); }

case "$src" in
  *.xz) xz -dc "$src" > "$tmp" ;;
  *) cp --sparse=always "$src" "$tmp" ;;
esac

# The partitions, from the partition table; each probed for its file system.
table="$(sfdisk -d "$tmp" 2>/dev/null)" || die "$src: no partition table sfdisk can read"
ss="$(awk '/^sector-size:/{print $2}' <<<"$table")"
ss="${ss:-512}"
boot_at=""
root_loop=""
found=""
while read -r start size; do
  loop="$(losetup --show -f -r -o $((start * ss)) --sizelimit $((size * ss)) "$tmp")" ||
    die "cannot attach a loop device to $tmp (in a container, one started without --privileged has none)"
  fs="$(blkid -p -o value -s TYPE "$loop" || true)"
  losetup -d "$loop"
  found="$found ${fs:-unknown}@$start"
  if [ "$fs" = vfat ] && [ -z "$boot_at" ]; then
    boot_at="$tmp@@$((start * ss))"   # written with mtools: no vfat module needed
  elif [ "$fs" = ext4 ] && [ -z "$root_loop" ]; then
    root_loop="$(losetup --show -f -o $((start * ss)) --sizelimit $((size * ss)) "$tmp")"
    loops+=("$root_loop")
  fi
done < <(sed -n 's/.*start= *\([0-9]*\), *size= *\([0-9]*\).*/\1 \2/p' <<<"$table")
[ -n "$root_loop" ] || die "$src: no ext4 root partition (found:$found)"

mount_at "$root_loop" "$mnt"
[ -x "$mnt/usr/bin/dpkg" ] || die "$src: its root file system has no dpkg (tend is injected as a Debian package)"

# Where the image mounts its FAT partition (its fstab).
boot_dir="$(awk '$1 !~ /^#/ && $3 == "vfat" {print $2; exit}' "$mnt/etc/fstab" 2>/dev/null || true)"
if [ -z "$boot_at" ] || [ -z "$boot_dir" ]; then
  echo "inject.sh: warning: $src has no FAT boot partition in its fstab: provision its gateways by writing /etc/tend/agent.toml into the image" >&2
  boot_dir=""
fi

# The image's architecture, from its dpkg's ELF header (e_machine).
machine="$(od -An -t u2 -j 18 -N 2 "$mnt/usr/bin/dpkg" | tr -d ' ')"
case "$machine" in
  183) arch=arm64 triple=aarch64-unknown-linux-gnu qemu=aarch64 ;;
  40) arch=armhf triple=armv7-unknown-linux-gnueabihf qemu=arm ;;
  62) arch=amd64 triple=x86_64-unknown-linux-gnu qemu="" ;;
  *) die "$src: its programs are for ELF machine $machine, which tend is not built for" ;;
esac
if [ "$(dpkg --print-architecture 2>/dev/null)" != "$arch" ] && [ -n "$qemu" ]; then
  command -v "qemu-$qemu-static" >/dev/null || die "qemu-$qemu-static is missing (apt install qemu-user-static)"
  ensure_binfmt "$qemu"
fi
if [ -z "$deb" ]; then
  deb="$(ls target/$triple/debian/tend_*_$arch.deb 2>/dev/null | tail -n 1 || true)"
fi
[ -f "$deb" ] || die "no $arch .deb: run cross/build.sh $triple and packaging/deb.sh $triple, or pass --deb"

# The image's own dpkg installs it, with /dev and /proc there for its scripts.
mkdir -p "$mnt/dev" "$mnt/proc"
mount_at --bind /dev "$mnt/dev"
mount_at -t proc proc "$mnt/proc"
install_tend "$mnt" "$deb"
if [ -n "$boot_dir" ] && [ "$boot_dir" != /boot/firmware ]; then
  install -d "$mnt/etc/systemd/system/tend-firstboot.service.d"
  printf '[Unit]\nRequiresMountsFor=%s\n[Service]\nEnvironment=TEND_BOOT=%s\n' "$boot_dir" "$boot_dir" \
    > "$mnt/etc/systemd/system/tend-firstboot.service.d/boot.conf"
fi
[ -z "$boot_dir" ] || mcopy -o -i "$boot_at" "$here/README-tend.txt" ::README-tend.txt

# One image, many gateways: a machine-id baked in would be every gateway's.
if [ -s "$mnt/etc/machine-id" ] && ! grep -q uninitialized "$mnt/etc/machine-id"; then
  echo "inject.sh: warning: $src has a machine-id ($(cut -c1-12 "$mnt/etc/machine-id")…): a gateway with no board serial and no device_id file takes its id from it, so every such gateway gets the same one; empty /etc/machine-id in the image (systemd makes one at first boot)" >&2
fi

sync
for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}"; done
mounts=()
for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()
mv "$tmp" "$out"
echo "inject.sh: tend $(basename "$deb") injected into $out ($arch; boot partition ${boot_dir:-none})" >&2
echo "$out"
