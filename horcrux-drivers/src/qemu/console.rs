//! A running guest's consoles: its VNC server, reached through a socket pair handed to
//! QEMU over QMP, and its serial port, a chardev on a socket the daemon bound.

use std::path::PathBuf;

use super::QemuDriver;
use crate::hypervisor::{ConsoleKind, DriverError};

impl QemuDriver {
    /// The serial console's socket: QEMU accepts on it (the daemon bound it, in the
    /// daemon's own run directory), the daemon connects to relay a console.
    pub(super) fn serial_path(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(format!("{vmid}.serial"))
    }

    /// A new connection to the guest's VNC server: one end of a socket pair whose other end
    /// is handed to QEMU over QMP (`getfd`, `add_client`). QEMU listens nowhere.
    pub async fn vnc_connect(&self, vmid: u32) -> Result<std::os::unix::net::UnixStream, DriverError> {
        let qmp = self.qmp(vmid).await?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let name = format!("vnc-{}", std::process::id());
        let fdname = serde_json::json!({ "fdname": name });
        qmp.execute_with_fd("getfd", Some(fdname), std::os::fd::AsFd::as_fd(&theirs)).await?;
        let add = serde_json::json!({ "protocol": "vnc", "fdname": name, "skipauth": true });
        qmp.execute("add_client", Some(add)).await?;
        Ok(ours)
    }

    pub(super) async fn console_connect(
        &self,
        vmid: u32,
        kind: ConsoleKind,
    ) -> Result<std::os::unix::net::UnixStream, DriverError> {
        match kind {
            ConsoleKind::Vnc => self.vnc_connect(vmid).await,
            ConsoleKind::Serial => {
                let no_socket = |e: std::io::Error| {
                    DriverError::Invalid(format!("guest {vmid} has no serial console socket: {e}"))
                };
                let s = tokio::net::UnixStream::connect(self.serial_path(vmid)).await.map_err(no_socket)?;
                s.into_std().map_err(no_socket)
            }
        }
    }
}
