//! What every backend shares: host tools run from an argument vector through a
//! [`Runner`] (never a shell; tests record the argv and answer with real recorded output),
//! qemu-img, file system usage, Proxmox's volume and snapshot names.

use std::path::Path;
use std::sync::Mutex;

use horcrux_core::ids;

use super::StoreUsage;
use crate::hypervisor::{BoxFuture, DriverError};

/// Runs a host program with arguments; answers its standard output, or an error carrying
/// its standard error.
pub trait Runner: Send + Sync + 'static {
    fn run<'a>(&'a self, program: &'a str, args: &'a [String]) -> BoxFuture<'a, Result<String, DriverError>> {
        self.run_env(program, args, &[])
    }
    /// With extra environment variables: how a password reaches a tool (libiscsi's
    /// `LIBISCSI_CHAP_PASSWORD`) without appearing in its argument vector.
    fn run_env<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        env: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<String, DriverError>>;
}

/// The host's programs.
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run_env<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        env: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let out = tokio::process::Command::new(program)
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| DriverError::Command { program: program.into(), message: e.to_string() })?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                let verb = args.iter().find(|a| !a.starts_with('-')).map(String::as_str).unwrap_or("");
                // Some tools (libiscsi's) say why on standard output.
                let said =
                    if out.stderr.iter().all(u8::is_ascii_whitespace) { &out.stdout } else { &out.stderr };
                Err(DriverError::Command {
                    program: format!("{program} {verb}").trim().to_string(),
                    message: String::from_utf8_lossy(said).trim().to_string(),
                })
            }
        })
    }
}

/// A runner for tests: records every argv and answers from a script of replies, each
/// matched by the argv's first words.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Vec<String>>>,
    replies: Mutex<Vec<Scripted>>,
}

/// An argv prefix and the reply to the next call that starts with it.
type Scripted = (Vec<String>, Result<String, String>);

impl Recorder {
    /// Answers the next call whose argv starts with `prefix` with `reply` (stdout, or an
    /// error message as the tool's stderr).
    pub fn reply(&self, prefix: &[&str], reply: Result<&str, &str>) {
        let prefix = prefix.iter().map(|s| s.to_string()).collect();
        let reply = reply.map(str::to_string).map_err(str::to_string);
        self.replies.lock().unwrap().push((prefix, reply));
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|c| c.join(" ")).collect()
    }
}

impl Runner for Recorder {
    /// Records the names of the environment variables given (as `NAME=<set>` before the
    /// program), never their values.
    fn run_env<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        env: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        let mut argv: Vec<String> = env.iter().map(|(k, _)| format!("{k}=<set>")).collect();
        argv.push(program.to_string());
        argv.extend(args.iter().cloned());
        self.calls.lock().unwrap().push(argv.clone());
        let mut replies = self.replies.lock().unwrap();
        let found = replies.iter().position(|(p, _)| argv[env.len()..].starts_with(p));
        let reply = found.map(|i| replies.remove(i).1).unwrap_or(Ok(String::new()));
        Box::pin(
            async move { reply.map_err(|message| DriverError::Command { program: program.into(), message }) },
        )
    }
}

/// `["a", "b"]` as owned strings, for a [`Runner`]'s argv.
pub fn argv<S: AsRef<str>>(parts: &[S]) -> Vec<String> {
    parts.iter().map(|s| s.as_ref().to_string()).collect()
}

pub use horcrux_core::ids::volume_format;

/// Proxmox's name of disk `index` of guest `vmid`: `vm-100-disk-0`.
pub fn disk_name(vmid: u32, index: usize) -> String {
    format!("vm-{vmid}-disk-{index}")
}

/// `vm-100-disk-0` (or `base-`, `subvol-`): the guest it belongs to.
pub fn vmid_of(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("vm-")
        .or_else(|| name.strip_prefix("base-"))
        .or_else(|| name.strip_prefix("subvol-"))?;
    rest.split('-').next()?.parse().ok()
}

/// The part of `volid` after `STORAGE:`, checked to belong to storage `id`.
pub fn volume_name<'a>(id: &str, volid: &'a str) -> Result<&'a str, DriverError> {
    let (storage, rel) = ids::parse_volume_id(volid).map_err(|e| DriverError::Invalid(e.to_string()))?;
    if storage != id {
        return Err(DriverError::Invalid(format!("volume {volid} is not on storage {id}")));
    }
    Ok(rel)
}

/// A snapshot name as Proxmox takes it: a letter, then letters, digits, `-` and `_`, 2 to
/// 40 characters in all.
pub fn validate_snapshot_name(name: &str) -> Result<(), DriverError> {
    let ok = (2..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DriverError::Invalid(format!(
            "snapname: {name:?} must be 2 to 40 letters, digits, '-' or '_', starting with a letter"
        )))
    }
}

/// Size, use and free space of the file system holding `path` (its nearest existing
/// ancestor).
pub fn fs_usage(path: &Path) -> Result<Option<StoreUsage>, DriverError> {
    let mut dir = path;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => return Ok(None),
        }
    }
    let (total, free, avail) = crate::metrics::statvfs(dir)?;
    Ok(Some(StoreUsage { total, used: total - free, avail }))
}

/// The file system type of `path` (`statfs`'s `f_type`).
pub fn fs_type(path: &Path) -> Result<i64, DriverError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| DriverError::Invalid(e.to_string()))?;
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `fs` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(DriverError::Io(format!("{}: {}", path.display(), std::io::Error::last_os_error())));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(fs.f_type as i64)
}

/// Creates an image with qemu-img (`format` qcow2, raw or vmdk; `preallocation` as the
/// storage option says; qcow2's default is `metadata`, as Proxmox's).
pub async fn qemu_img_create(
    runner: &dyn Runner,
    path: &Path,
    format: &str,
    size_mib: u64,
    preallocation: Option<&str>,
) -> Result<(), DriverError> {
    let mut args = argv(&["create", "-q", "-f", format]);
    let prealloc = match (format, preallocation) {
        ("vmdk", _) => None,
        // qemu-img's raw has no `metadata` mode (Proxmox: "off" for raw then).
        ("raw", Some("metadata") | None) => None,
        ("qcow2", None) => Some("metadata"),
        (_, p) => p,
    };
    if let Some(p) = prealloc {
        args.extend(["-o".into(), format!("preallocation={p}")]);
    }
    args.push(path.display().to_string());
    args.push(format!("{size_mib}M"));
    if let Err(e) = runner.run("qemu-img", &args).await {
        let _ = tokio::fs::remove_file(path).await;
        return Err(e);
    }
    // Root's alone: QEMU gets the guest's disks as descriptors, nobody else reads them.
    tokio::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).await?;
    Ok(())
}

/// Moves the file or subvolume `from` to `to` (volume `new`, refused if it exists) within
/// one file system, making `to`'s directory and dropping `from`'s once empty (a guest's
/// `images/VMID/`); answers `new`.
pub async fn move_volume(from: &Path, to: &Path, new: String) -> Result<String, DriverError> {
    if tokio::fs::try_exists(to).await? {
        return Err(DriverError::Invalid(format!("volume {new} already exists")));
    }
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::rename(from, to).await?;
    if let Some(dir) = from.parent() {
        let _ = tokio::fs::remove_dir(dir).await;
    }
    Ok(new)
}

/// The virtual size recorded in a qcow2 header (big-endian u64 at offset 24, after the
/// magic `QFI\xfb`), or `None` if `head` is not a qcow2 header.
pub fn qcow2_virtual_size(head: &[u8]) -> Option<u64> {
    if head.len() < 32 || &head[..4] != b"QFI\xfb" {
        return None;
    }
    Some(u64::from_be_bytes(head[24..32].try_into().ok()?))
}

/// Where a qcow2 header says its backing file's name is: (offset, length), from the
/// big-endian u64 at 8 and u32 at 16; `None` without one (or for another format).
pub fn qcow2_backing_at(head: &[u8]) -> Option<(u64, usize)> {
    qcow2_virtual_size(head)?;
    let offset = u64::from_be_bytes(head[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(head[16..20].try_into().ok()?) as usize;
    // QEMU writes at most 1023 bytes of name, within the header cluster.
    (offset != 0 && len != 0 && len <= 1023).then_some((offset, len))
}

/// Virtual size of an image file: the qcow2 header's, else (raw, ISO) the file's length.
pub async fn image_size(path: &Path) -> Result<u64, DriverError> {
    Ok(image_info(path).await?.0)
}

/// An image file's virtual size and, for a qcow2 with a backing file, that file's name as
/// its header records it (Proxmox's `parent` of a linked clone: `../100/base-100-disk-0.qcow2`).
pub async fn image_info(path: &Path) -> Result<(u64, Option<String>), DriverError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut head = [0u8; 32];
    let mut file = tokio::fs::File::open(path).await?;
    let n = file.read(&mut head).await?;
    let Some(size) = qcow2_virtual_size(&head[..n]) else { return Ok((file.metadata().await?.len(), None)) };
    let Some((offset, len)) = qcow2_backing_at(&head) else { return Ok((size, None)) };
    let mut name = vec![0u8; len];
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    file.read_exact(&mut name).await?;
    Ok((size, Some(String::from_utf8_lossy(&name).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(vmid_of("vm-100-disk-0"), Some(100));
        assert_eq!(vmid_of("subvol-7001-disk-2"), Some(7001));
        assert_eq!(vmid_of("snap_vm-100-disk-0_x"), None);
        assert!(validate_snapshot_name("before-upgrade_1").is_ok());
        for bad in ["a", "1abc", "a b", "x/../y", &"a".repeat(41)] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad}");
        }
        assert!(volume_name("local", "local:../x").is_err());
        assert_eq!(volume_name("tank", "tank:vm-1-disk-0").unwrap(), "vm-1-disk-0");
        assert!(volume_name("tank", "other:vm-1-disk-0").is_err());
    }
}
