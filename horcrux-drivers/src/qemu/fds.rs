//! What a QEMU is handed instead of paths: the daemon opens every file, socket and tap a
//! guest needs and passes the descriptors, so QEMU, running as a user of its own, needs no
//! right on any path: it can reach its own disks and nothing else.
//!
//! Descriptor numbers are fixed by the launch (`FdLayout`), so the argument vector is a pure
//! function of it: 3 is the QMP listening socket, then two per disk (read-write and
//! read-only: QEMU's fd sets hand out a descriptor whose access mode matches the open;
//! a network disk gets none, or one memory file holding its password), then the serial log and the serial console's listening socket, the kernel and initrd (copied into memory files, so a kernel only
//! root may read still boots), and one tap per bridged NIC.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::hypervisor::{DiskSource, DriverError, GuestLaunch};

/// The QMP listening socket.
pub const QMP_FD: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdLayout {
    /// Per disk; a file disk `i` is QEMU fd set `i + 1`.
    pub disks: Vec<DiskFds>,
    /// Per CD-ROM drive: an ISO file's read-only descriptor (`rw` is -1: none); CD-ROM `j`
    /// is fd set `101 + j`.
    pub cdroms: Vec<DiskFds>,
    pub serial: i32,
    /// The listening socket of the serial console (QEMU accepts one client at a time; the
    /// serial log records all output either way).
    pub serial_socket: i32,
    pub kernel: Option<i32>,
    pub initrd: Option<i32>,
    /// (NIC index, fd) of each bridged NIC's tap.
    pub taps: Vec<(u8, i32)>,
}

impl FdLayout {
    pub fn of(launch: &GuestLaunch) -> Self {
        let mut next = QMP_FD + 1;
        let mut take = || {
            next += 1;
            next - 1
        };
        let disks = launch
            .disks
            .iter()
            .map(|d| match d {
                DiskSource::File(_) => DiskFds::File { rw: take(), ro: take() },
                DiskSource::Net(n) => DiskFds::Net { secret: n.secret.as_ref().map(|_| take()) },
            })
            .collect();
        let cdroms = launch
            .cdroms
            .iter()
            .map(|c| match c {
                Some(DiskSource::File(_)) => DiskFds::File { rw: -1, ro: take() },
                Some(DiskSource::Net(n)) => DiskFds::Net { secret: n.secret.as_ref().map(|_| take()) },
                None => DiskFds::Net { secret: None },
            })
            .collect();
        let serial = take();
        let serial_socket = take();
        let boot = launch.spec.boot.as_ref();
        let kernel = boot.map(|_| take());
        let initrd = boot.and_then(|b| b.initrd.as_ref()).map(|_| take());
        let taps =
            launch.spec.nets.iter().filter(|n| n.bridge.is_some()).map(|n| (n.index, take())).collect();
        FdLayout { disks, cdroms, serial, serial_socket, kernel, initrd, taps }
    }

    pub fn tap(&self, index: u8) -> Option<i32> {
        self.taps.iter().find(|(i, _)| *i == index).map(|(_, fd)| *fd)
    }
}

/// The descriptors of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFds {
    /// A host file, opened read-write and read-only.
    File { rw: i32, ro: i32 },
    /// A network volume: QEMU connects itself; a password, if any, in a memory file.
    Net { secret: Option<i32> },
}

/// A path QEMU opens to get at descriptor `fd` again.
pub fn proc_fd(fd: i32) -> String {
    format!("/proc/self/fd/{fd}")
}

fn invalid(what: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::Invalid(format!("{what} {}: {e}", path.display()))
}

/// A tap device `name` (IFF_TAP, no packet info, with virtio-net headers), open; it lives
/// as long as a descriptor to it does.
pub fn open_tap(name: &str) -> Result<OwnedFd, DriverError> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| DriverError::Io(format!("/dev/net/tun: {e}")))?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(DriverError::Invalid(format!("tap name {name} is too long")));
    }
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays out (40 bytes).
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(DriverError::Io(format!("creating tap {name}: {}", std::io::Error::last_os_error())));
    }
    Ok(tun.into())
}

/// `bytes` in an anonymous memory file, at offset 0.
fn memory_file(bytes: &[u8]) -> Result<OwnedFd, DriverError> {
    let name = c"horcrux-secret";
    // SAFETY: memfd_create with a valid C string; the result is checked and owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(DriverError::Io(format!("memfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok(file.into())
}

/// The contents of `path` in an anonymous memory file (readable through /proc/self/fd by
/// any user, unlike the file itself, which may be root's alone).
fn memory_copy(what: &str, path: &Path) -> Result<OwnedFd, DriverError> {
    let mut src = File::open(path).map_err(|e| invalid(what, path, e))?;
    let name = c"horcrux-boot";
    // SAFETY: memfd_create with a valid C string; the result is checked and owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(DriverError::Io(format!("memfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut dst = unsafe { File::from_raw_fd(fd) };
    std::io::copy(&mut src, &mut dst).map_err(|e| invalid(what, path, e))?;
    dst.flush()?;
    Ok(dst.into())
}

/// Opens everything `layout` names for `launch`: (descriptor, number it gets in QEMU).
/// `owner` is the uid/gid QEMU runs as: it must be able to reopen the serial log.
pub fn open_all(
    launch: &GuestLaunch,
    layout: &FdLayout,
    qmp: OwnedFd,
    serial_socket: OwnedFd,
    serial_log: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Vec<(OwnedFd, i32)>, DriverError> {
    let mut fds = vec![(qmp, QMP_FD)];
    for (disk, fds_of) in launch.disks.iter().zip(&layout.disks) {
        let (path, rw, ro) = match (disk, fds_of) {
            (DiskSource::File(path), DiskFds::File { rw, ro }) => (path, rw, ro),
            (DiskSource::Net(net), DiskFds::Net { secret: Some(fd) }) => {
                let value = net.secret.as_ref().map(|s| s.value.as_bytes()).unwrap_or_default();
                fds.push((memory_file(value)?, *fd));
                continue;
            }
            _ => continue,
        };
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| invalid("disk", path, e))
        };
        fds.push((open(true)?.into(), *rw));
        fds.push((open(false)?.into(), *ro));
    }
    for (cd, fds_of) in launch.cdroms.iter().zip(&layout.cdroms) {
        match (cd, fds_of) {
            (Some(DiskSource::File(path)), DiskFds::File { ro, .. }) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(path)
                    .map_err(|e| invalid("CD-ROM image", path, e))?;
                fds.push((f.into(), *ro));
            }
            (Some(DiskSource::Net(net)), DiskFds::Net { secret: Some(fd) }) => {
                let value = net.secret.as_ref().map(|s| s.value.as_bytes()).unwrap_or_default();
                fds.push((memory_file(value)?, *fd));
            }
            _ => {}
        }
    }
    let serial = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(serial_log)
        .map_err(|e| invalid("serial log", serial_log, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&serial, Some(uid), Some(gid))?;
    }
    fds.push((serial.into(), layout.serial));
    fds.push((serial_socket, layout.serial_socket));
    if let (Some(boot), Some(k)) = (&launch.spec.boot, layout.kernel) {
        fds.push((memory_copy("kernel", Path::new(&boot.kernel))?, k));
        if let (Some(initrd), Some(i)) = (&boot.initrd, layout.initrd) {
            fds.push((memory_copy("initrd", Path::new(initrd))?, i));
        }
    }
    for (index, fd) in &layout.taps {
        fds.push((open_tap(&super::tap_name(launch.vmid, *index))?, *fd));
    }
    Ok(fds)
}

/// The raw (source, target) pairs for `pre_exec`, computed before the fork.
pub fn plan(fds: &[(OwnedFd, i32)]) -> Vec<(i32, i32)> {
    fds.iter().map(|(fd, target)| (fd.as_raw_fd(), *target)).collect()
}

/// In the child, between fork and exec (async-signal-safe calls only): puts every
/// descriptor at its number, then drops to `owner` with `groups` as its only groups.
///
/// # Safety
/// Only to be called from a `pre_exec` hook.
pub unsafe fn install(
    plan: &[(i32, i32)],
    owner: Option<(u32, u32)>,
    groups: &[libc::gid_t],
) -> std::io::Result<()> {
    let check = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) };
    // First out of the way (a source may sit on another's target), then into place; dup2
    // leaves the targets open across exec, the parked copies close at exec.
    let mut parked = [0i32; 64];
    if plan.len() > parked.len() {
        return Err(std::io::Error::other("too many descriptors"));
    }
    for (i, (src, _)) in plan.iter().enumerate() {
        parked[i] = check(libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100))?;
    }
    for (i, (_, target)) in plan.iter().enumerate() {
        check(libc::dup2(parked[i], *target))?;
    }
    if let Some((uid, gid)) = owner {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    Ok(())
}
