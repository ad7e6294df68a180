#!/usr/bin/env bash
# Installs the Debian packages Horcrux builds and runs with (RocksDB and libclang to link,
# QEMU to run guests) and those the tests use (busybox, cpio, corosync, iproute2, nftables,
# chromium and Node.js for the browser tests, whose npm packages scripts/ui-deps.sh installs
# at the end). Idempotent; needs root.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -e /usr/include/rocksdb/c.h ] || need+=(librocksdb-dev)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-img >/dev/null || need+=(qemu-utils)
# The aarch64 guest test emulates an arm64 guest (qemu-system-aarch64, under TCG).
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
# The quorumtool comparison test runs the real Corosync in network namespaces.
command -v corosync >/dev/null || need+=(corosync)
command -v ip >/dev/null || need+=(iproute2)
# The HA partition test cuts a node off with nftables in its own network namespace.
command -v nft >/dev/null || need+=(nftables)
# The slow-loris test drives the HTTPS listener with openssl s_client.
command -v openssl >/dev/null || need+=(openssl)
# The HTTP/2 error-path test uses curl (Debian's is built with nghttp2).
command -v curl >/dev/null || need+=(curl)
# The LDAP realm test runs its own slapd.
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldapadd >/dev/null || need+=(ldap-utils)
# The storage backends' tests run the real tools: btrfs on a loop file, zfs-fuse
# (datasets, snapshots, clones), LVM's metadata-only commands on a loop device.
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v zfs-fuse >/dev/null || need+=(zfs-fuse)
command -v vgcreate >/dev/null || need+=(lvm2)
# iSCSI: the tgt target (with CHAP) and libiscsi's iscsi-ls; NFS: nfs-ganesha (userspace
# NFSv4) and libnfs's nfs-ls. QEMU reaches both through its own userspace initiators,
# which Debian ships in qemu-block-extra (installed with QEMU, at QEMU's version).
command -v tgtd >/dev/null || need+=(tgt)
command -v iscsi-ls >/dev/null || need+=(libiscsi-bin)
command -v ganesha.nfsd >/dev/null || need+=(nfs-ganesha nfs-ganesha-vfs)
command -v nfs-ls >/dev/null || need+=(libnfs-utils)
# The browser UI tests (tests/ui) drive Debian's Chromium with playwright-core 1.61.1, which
# needs Node.js >= 18: Debian 12's nodejs is 18.20 (with npm 9 from its npm package); this
# kind of machine comes with NodeSource's Node.js 20, whose nodejs package carries npm.
# LXC system containers (liblxc 5.0's tools; uidmap's newuidmap writes the id mappings
# of unprivileged containers).
command -v lxc-start >/dev/null || need+=(lxc)
command -v newuidmap >/dev/null || need+=(uidmap)
# OCI containers: Podman's libpod REST API (with runc, as ../shared/LAB.md says).
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
# and Docker's Engine API (dockerd, started by the test with its own roots).
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)

block_extra=1
dpkg -s qemu-block-extra >/dev/null 2>&1 || block_extra=0

if [ ${#need[@]} -gt 0 ] || [ "$block_extra" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Some images carry a newer qemu-utils (backports) that conflicts with Debian 12's
  # qemu-system-x86; pin the QEMU packages to the version qemu-system-x86 comes in.
  qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  pins=()
  for i in "${!need[@]}"; do
    case "${need[$i]}" in qemu-system-x86|qemu-utils|qemu-system-arm) unset 'need[i]' ;; esac
  done
  if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
    pins=(qemu-system-x86 "qemu-utils=$qv")
  fi
  command -v qemu-system-aarch64 >/dev/null || pins+=("qemu-system-arm=$qv")
  pins+=("qemu-block-extra=$qv")
  apt-get install -y -qq --allow-downgrades "${need[@]}" "${pins[@]}" >/dev/null
fi

# RBD: a one-host Ceph (monitor, memstore OSD) the rbd tests start (QEMU's librbd is in
# qemu-block-extra); without Ceph's recommends (its manager and dashboard are not needed).
if ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd >/dev/null
fi

# LXD 5.0's REST API (its recommends would pull in a VM stack LXD cannot run here).
if ! command -v lxd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends lxd >/dev/null
fi

# Unprivileged containers map their ids onto root's subordinate range, as Proxmox's
# packages set it up: 100000-165535 (see horcrux-drivers/src/lxc.rs).
for f in /etc/subuid /etc/subgid; do
  grep -qs '^root:100000:65536$' "$f" || echo 'root:100000:65536' >> "$f"
done

# The browser tests' npm packages (tests/ui), with npm ci when they are missing or stale.
"$(dirname "$0")/ui-deps.sh"
