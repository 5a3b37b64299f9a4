# Sourced by build.sh and inject.sh.

# Foreign programs (arm64, arm) run in a chroot through qemu-user, so
# binfmt_misc must know them. $1: qemu's name for the architecture (aarch64,
# arm).
ensure_binfmt() {
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$1" ] && return 0
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  cat "/usr/lib/binfmt.d/qemu-$1.conf" > /proc/sys/fs/binfmt_misc/register
}

# Install tend into the root file system at $1 from the .deb $2, with the
# root's own dpkg in a chroot (not a copied binary), and tend-firstboot
# (packaging/image); enable both. (tend-firstboot writes the ReadWritePaths=
# drop-in for the provisioned config's [files].allow roots.) The .deb brings
# the hands-free stick import too (90-tend-import.rules, tend-import@.service,
# /usr/lib/tend/tend-stick: docs/stick-notes.md); the image's udev and the
# Debian kernel's usb-storage, vfat and exfat modules serve it.
install_tend() {
  local root="$1" deb="$2" here
  here="$(dirname "${BASH_SOURCE[0]}")"
  cp "$deb" "$root/tmp/tend.deb"
  chroot "$root" dpkg -i /tmp/tend.deb >&2
  rm "$root/tmp/tend.deb"
  for f in usr/lib/udev/rules.d/90-tend-import.rules usr/lib/systemd/system/tend-import@.service usr/lib/tend/tend-stick; do
    [ -e "$root/$f" ] || { echo "install_tend: the .deb did not install /$f" >&2; return 1; }
  done
  install -D -m 0755 "$here/tend-firstboot.sh" "$root/usr/lib/tend/tend-firstboot.sh"
  install -D -m 0644 "$here/tend-firstboot.service" "$root/etc/systemd/system/tend-firstboot.service"
  chroot "$root" systemctl enable tend-firstboot.service tend.service >&2
}
