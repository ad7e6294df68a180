//! How a disk becomes QEMU arguments: a `-drive` on an fd set for a host file, or on
//! QEMU's own network client (`file.driver=nfs|iscsi|rbd`, options as `file.*` keys) with
//! its password in a `secret` object; shared by the start and by hot-plug (`drive_add`).

use crate::hypervisor::DiskSource;

/// What a CD-ROM drive's `-drive` adds to a disk's.
pub(super) const CDROM: &str = ",media=cdrom,readonly=on";

/// The arguments that give QEMU one disk as drive `drive-SLOT` (`media`: [`CDROM`] for a
/// CD-ROM drive, else empty): a file through fd set `set` (its descriptors: a CD-ROM has
/// only the read-only one), a network volume through QEMU's own client (options as
/// `file.*` keys), its password in a `secret` object read from a memory file.
pub(super) fn drive_args(
    slot: &str,
    set: usize,
    disk: &DiskSource,
    disk_fds: &super::fds::DiskFds,
    media: &str,
) -> Vec<String> {
    let format = disk.format();
    let mut a = Vec::new();
    match (disk, disk_fds) {
        (DiskSource::Net(net), super::fds::DiskFds::Net { secret }) => {
            let mut options = net.options.clone();
            if let (Some(s), Some(fd)) = (&net.secret, secret) {
                a.push("-object".into());
                a.push(format!("secret,id=sec-{slot},file={},format={}", super::fds::proc_fd(*fd), s.format));
                options.insert(s.option.into(), serde_json::json!(format!("sec-{slot}")));
            }
            let mut drive = format!("if=none,id=drive-{slot},format={format}{media}");
            flatten_options("file", &serde_json::Value::Object(options), &mut drive);
            a.extend(["-drive".into(), drive]);
        }
        (_, super::fds::DiskFds::File { rw, ro }) => {
            for fd in [*rw, *ro].into_iter().filter(|fd| *fd >= 0) {
                a.extend(["-add-fd".into(), format!("fd={fd},set={set}")]);
            }
            // No image locking: QEMU holds the image through two descriptions (read-write
            // and read-only, from the fd set), and its OFD locks on one refuse the
            // permission changes of the other ("Failed to get write lock" on
            // `block_resize`). One QEMU per volume is the daemon's guarantee (one owner).
            a.push("-drive".into());
            a.push(format!(
                "file=/dev/fdset/{set},if=none,id=drive-{slot},format={format},file.locking=off{media}"
            ));
        }
        // FdLayout::of gives a file descriptors and a network volume none.
        (DiskSource::File(_), super::fds::DiskFds::Net { .. }) => {}
    }
    a
}

/// Appends `options` to a `-drive` value as `PREFIX.KEY=VALUE` (nested objects dotted,
/// commas in values doubled as QEMU's option syntax wants).
pub(super) fn flatten_options(prefix: &str, options: &serde_json::Value, out: &mut String) {
    match options {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten_options(&format!("{prefix}.{k}"), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_options(&format!("{prefix}.{i}"), v, out);
            }
        }
        serde_json::Value::String(v) => {
            out.push_str(&format!(",{prefix}={}", v.replace(',', ",,")));
        }
        other => out.push_str(&format!(",{prefix}={other}")),
    }
}
