#!/usr/bin/env bash
# A bootable arm64 gateway image with tend baked in (issue 18).
#
#   packaging/image/build.sh [--deb PATH] [--out IMAGE] [--size 2G]
#   packaging/image/build.sh --from IMAGE [--deb PATH] [--out IMAGE]
#   packaging/image/build.sh --plain [--out IMAGE]   (the same image, no tend)
#   packaging/image/build.sh --base-only   (only the cached root file system)
#
# --from injects tend into an existing image (a Raspberry Pi OS image as
# downloaded, .img or .img.xz): see inject.sh, which it runs.
#
# Debian bookworm arm64 (debootstrap with qemu-user-static, from the Debian
# mirror the machine's apt uses), the arm64 .deb installed with dpkg (not a
# copied binary), tend and tend-firstboot enabled, DHCP on every wired NIC
# (systemd-networkd), a serial console; written as a disk image with an MBR:
#   1  FAT32 "TENDBOOT" 128 MiB  /boot/firmware: the kernel and initrd, and
#                                tend/ where an operator drops provisioning
#   2  ext4  "root"     the rest
# without mounting anything (mkfs.ext4 -d, mtools), so it runs unprivileged
# in a container. The kernel and initrd are also written beside the image
# (IMAGE.vmlinuz, IMAGE.initrd) for `qemu-system-aarch64 -M virt -kernel`.
#
# The root file system before tend is installed is cached in
# ${TEND_BUILD_CACHE:-~/.cache/tend-build}/image/ (debootstrap under
# emulation takes minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=packaging/image

deb=""
out=target/image/tend-gateway-arm64.img
size=2G
base_only=""
plain=""
from=""
out_given=""
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$2"; shift 2 ;;
    --out) out="$2"; out_given=1; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --base-only) base_only=1; shift ;;
    --plain) plain=1; shift ;;
    --from) from="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$from" ]; then
  exec "$here/inject.sh" "$from" ${out_given:+--out "$out"} ${deb:+--deb "$deb"}
fi

if [ -z "$deb" ]; then
  deb="$(ls target/aarch64-unknown-linux-gnu/debian/tend_*_arm64.deb 2>/dev/null | tail -n 1 || true)"
fi
[ -n "$base_only" ] || [ -n "$plain" ] || [ -f "$deb" ] || { echo "build.sh: no arm64 .deb: run cross/build.sh aarch64-unknown-linux-gnu and packaging/deb.sh aarch64-unknown-linux-gnu, or pass --deb" >&2; exit 2; }

need=(debootstrap qemu-aarch64-static mkfs.ext4 mkfs.vfat mcopy sfdisk)
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || { echo "build.sh: $t is missing (apt install debootstrap qemu-user-static e2fsprogs dosfstools mtools fdisk)" >&2; exit 2; }
done

. "$here/common.sh"
ensure_binfmt aarch64

cache="${TEND_BUILD_CACHE:-$HOME/.cache/tend-build}/image"
base="$cache/bookworm-arm64-base-1.tar"
mkdir -p "$cache" "$(dirname "$out")"
if [ ! -s "$base" ]; then
  mirror="$(awk '/^URIs:/{print $2;exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  tmp="$(mktemp -d "$cache/base.XXXXXX")"
  echo "build.sh: debootstrap arm64 bookworm from $mirror (minutes, under emulation)" >&2
  debootstrap --arch=arm64 --variant=minbase \
    --include=systemd,systemd-sysv,dbus,linux-image-arm64,ca-certificates,udev,kmod,iproute2,ifupdown,isc-dhcp-client \
    bookworm "$tmp" "$mirror" > "$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; rm -rf "$tmp"; exit 1; }
  chmod 0755 "$tmp"
  tar -C "$tmp" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$tmp"
fi
[ -z "$base_only" ] || { echo "$base"; exit 0; }

root="$(mktemp -d)"
work="$(mktemp -d)"
trap 'rm -rf "$root" "$work"' EXIT
tar -C "$root" -xf "$base"
chmod 0755 "$root"

# tend, from its package (not in a --plain image).
[ -n "$plain" ] || install_tend "$root" "$deb"

# The system around it.
echo tend-gateway > "$root/etc/hostname"
: > "$root/etc/machine-id"   # made unique at each gateway's first boot
rm -f "$root/var/lib/dbus/machine-id"
cat > "$root/etc/fstab" <<'FSTAB'
LABEL=root      /               ext4  defaults,noatime  0 1
LABEL=TENDBOOT  /boot/firmware  vfat  defaults,umask=0077  0 2
FSTAB
install -d "$root/boot/firmware"
cat > "$root/etc/systemd/network/20-wired.network" <<'NET'
[Match]
Name=en* eth*
[Network]
DHCP=yes
NET
# The journal also on the console, so a serial log shows tend's lines.
install -d "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\n' > "$root/etc/systemd/journald.conf.d/console.conf"
chroot "$root" systemctl enable systemd-networkd.service >&2
chroot "$root" passwd -l root >/dev/null

# The boot partition: kernel, initrd, and the provisioning directory's README.
kernel="$(ls "$root"/boot/vmlinuz-* | tail -n 1)"
initrd="$(ls "$root"/boot/initrd.img-* | tail -n 1)"
cp "$kernel" "$out.vmlinuz"
cp "$initrd" "$out.initrd"
boot_mib=128
mkfs.vfat -n TENDBOOT -C "$work/boot.img" $((boot_mib * 1024)) >/dev/null
mcopy -i "$work/boot.img" "$kernel" ::vmlinuz
mcopy -i "$work/boot.img" "$initrd" ::initrd.img
[ -n "$plain" ] || mcopy -i "$work/boot.img" "$here/README-tend.txt" ::README-tend.txt

# The root file system, populated without mounting.
total_bytes=$(numfmt --from=iec "$size")
root_mib=$(( total_bytes / 1048576 - boot_mib - 2 ))
mkfs.ext4 -q -L root -d "$root" -E root_owner=0:0 "$work/root.img" "${root_mib}M"

# The disk: MBR, boot at 1 MiB, root after it.
rm -f "$out"
truncate -s "$size" "$out"
sfdisk -q "$out" <<PART
label: dos
start=1MiB, size=${boot_mib}MiB, type=c, bootable
start=$((1 + boot_mib))MiB, type=83
PART
dd if="$work/boot.img" of="$out" bs=1M seek=1 conv=notrunc status=none
dd if="$work/root.img" of="$out" bs=1M seek=$((1 + boot_mib)) conv=notrunc status=none
echo "build.sh: $out ($(du -h --apparent-size "$out" | cut -f1)), kernel $out.vmlinuz, initrd $out.initrd" >&2
echo "$out"
