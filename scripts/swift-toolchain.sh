#!/usr/bin/env bash
# Provides a Swift toolchain on Debian 12 (which has none): a minimal Debian trixie chroot with
# trixie's swiftlang 6.0.3, built once and cached in ~/.cache/chatvault. Prints the chroot path.
# Needs root (debootstrap, chroot, mount).
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chatvault"
ROOT="$CACHE/swift-trixie-6.0.3"
# /usr/bin/swift is an absolute symlink inside the chroot: test the link, not its host target.
if [ -L "$ROOT/usr/bin/swift" ] && [ -x "$ROOT/usr/libexec/swift/bin/swift" ]; then
  echo "$ROOT"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq debootstrap >/dev/null; }
rm -rf "$ROOT.partial"
mkdir -p "$ROOT.partial"
echo "swift-toolchain: debootstrap trixie (once, a few minutes)" >&2
debootstrap --variant=minbase trixie "$ROOT.partial" >&2
cp /etc/resolv.conf "$ROOT.partial/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$ROOT.partial/proc"
trap 'umount "$ROOT.partial/proc" 2>/dev/null || true' EXIT
chroot "$ROOT.partial" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swiftlang libc6-dev >/dev/null' >&2
umount "$ROOT.partial/proc"
trap - EXIT
umount "$ROOT/proc" 2>/dev/null || true
rm -rf "$ROOT"
mv "$ROOT.partial" "$ROOT"
echo "$ROOT"
