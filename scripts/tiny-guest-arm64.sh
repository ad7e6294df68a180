#!/usr/bin/env bash
# Builds the arm64 tiny test guest (Debian's arm64 kernel + an arm64 busybox initramfs that
# prints GUEST-BOOTED-AARCH64 on the serial console) into $1 (default
# .lab/tiny-guest-arm64). The packages come from Debian's arm64 archive through a private
# apt state under the work directory: the host's dpkg architectures are left alone.
# Idempotent.
set -euo pipefail
out=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.lab/tiny-guest-arm64"}
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ]; then exit 0; fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p lists/partial cache/archives/partial
apt_opts=(-q -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache" -o Dir::State::status=/dev/null)
apt-get "${apt_opts[@]}" update >/dev/null
pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "cannot find the kernel package behind linux-image-arm64" >&2; exit 1; }
apt-get "${apt_opts[@]}" download "$pkg" busybox-static >/dev/null 2>&1
dpkg -x linux-image-*.deb kpkg
dpkg -x busybox-static_*.deb bb
cp kpkg/boot/vmlinuz-* "$out/vmlinuz"
mkdir -p initrd/bin initrd/proc initrd/sys initrd/dev
cp bb/bin/busybox initrd/bin/
cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "GUEST-BOOTED-$(uname -m | tr a-z A-Z)"
grep -q stayup /proc/cmdline && while true; do sleep 1; done
poweroff -f
INIT
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$out/initrd.gz.tmp")
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "arm64 tiny guest in $out"
