#!/usr/bin/env bash
# Builds the tiny test guest (Debian kernel + busybox initramfs that prints GUEST-BOOTED on
# the serial console) into $1 (default .lab/tiny-guest). Idempotent; rebuilt when the
# init below changes (its version in $out/version).
# With `showdisk` on the kernel command line the guest also prints the first 12 bytes of
# its first virtio disk as DISK:<bytes>: the storage tests boot it from their volumes.
# With `watchhotplug` (and `stayup`) it prints DEVICES:<its vd* disks and NICs> whenever
# that list changes, and DISK-<name>:<first 12 bytes> of each disk: the hot-plug tests.
# With `burn` it keeps one CPU busy (a shell loop in the background): the metrics tests.
# With `shell` (and `stayup`) a shell reads the serial port: the console tests type into it.
set -euo pipefail
out=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.lab/tiny-guest"}
version=6
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] && [ "$(cat "$out/version" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "cannot find the kernel package behind linux-image-amd64 (run apt-get update)" >&2; exit 1; }
apt-get download "$pkg" >/dev/null
dpkg -x linux-image-*.deb kpkg
cp kpkg/boot/vmlinuz-* "$out/vmlinuz"
mods="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net"
mkdir -p initrd/bin initrd/proc initrd/sys initrd/dev initrd/lib/modules
cp /bin/busybox initrd/bin/
for m in $mods; do
  f=$(find kpkg/lib/modules -name "$m.ko*" | head -n1)
  case "$f" in
    *.ko) cp "$f" initrd/lib/modules/ ;;
    *.ko.xz) xz -dc "$f" > "initrd/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "initrd/lib/modules/$m.ko" ;;
    *) echo "module $m not found" >&2 ;;
  esac
done
cat > initrd/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# Twice: a module whose dependency comes later in the list loads on the second pass
# (kernels differ in which of virtio and virtio_ring needs the other).
for pass in 1 2; do for m in $mods; do insmod /lib/modules/\$m.ko 2>/dev/null; done; done
echo "GUEST-BOOTED"
grep -q showdisk /proc/cmdline && [ -b /dev/vda ] && echo "DISK:\$(head -c 12 /dev/vda)"
grep -q burn /proc/cmdline && { while :; do :; done & }
grep -q shell /proc/cmdline && { setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' & }
seen=""
grep -q stayup /proc/cmdline && while true; do
  if grep -q watchhotplug /proc/cmdline; then
    now="\$(ls /sys/block | grep '^vd' | tr '\n' ' ')\$(ls /sys/class/net | grep -v '^lo' | tr '\n' ' ')"
    if [ "\$now" != "\$seen" ]; then
      echo "DEVICES:\$now"
      for d in /sys/block/vd*; do [ -e "\$d" ] && echo "DISK-\${d##*/}:\$(head -c 12 /dev/\${d##*/})"; done
      seen="\$now"
    fi
  fi
  sleep 1
done
poweroff -f
INIT
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$out/initrd.gz.tmp")
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "$version" > "$out/version"
echo "tiny guest in $out"
