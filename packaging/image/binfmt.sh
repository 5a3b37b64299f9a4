# Sourced by build.sh and inject.sh: foreign programs (arm64, arm) run in a
# chroot through qemu-user, so binfmt_misc must know them. $1: qemu's name
# for the architecture (aarch64, arm).
ensure_binfmt() {
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$1" ] && return 0
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  cat "/usr/lib/binfmt.d/qemu-$1.conf" > /proc/sys/fs/binfmt_misc/register
}
