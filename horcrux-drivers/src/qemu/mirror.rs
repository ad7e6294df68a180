//! Moving a running guest's disk: the target volume is handed to QEMU as descriptors
//! (`add-fd`: QEMU is confined and opens no paths), added as a block node, mirrored from
//! the drive (`blockdev-mirror`, `sync: full`) and, once in sync, switched to
//! (`block-job-complete`): the guest keeps running on the new volume.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hypervisor::{DiskSource, DriverError};
use crate::qmp::QmpClient;

/// Mirrors drive `drive-SLOT` onto `target`, reporting progress through `progress`. On
/// failure the job is cancelled and the node removed.
pub async fn mirror(
    qmp: &Arc<QmpClient>,
    slot: &str,
    target: &DiskSource,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<(), DriverError> {
    // A fresh name each time: the node a previous move switched to keeps its name.
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let node = format!("mv-{slot}-{:x}", stamp % (1 << 40));
    let (file, cleanup) = match target {
        DiskSource::File(path) => {
            let (file, set_id) = add_file(qmp, path).await?;
            (file, Cleanup::FdSet(set_id))
        }
        DiskSource::Net(net) => {
            let mut options = net.options.clone();
            let mut cleanup = Cleanup::None;
            if let Some(secret) = &net.secret {
                // Through the monitor, never an argument vector.
                let id = format!("sec-{node}");
                let secret_object =
                    json!({ "qom-type": "secret", "id": id, "data": secret.value, "format": secret.format });
                qmp.execute("object-add", Some(secret_object)).await?;
                options.insert(secret.option.into(), json!(id));
                cleanup = Cleanup::Secret(id);
            }
            (Value::Object(options), cleanup)
        }
    };
    let added = qmp
        .execute("blockdev-add", Some(json!({ "driver": target.format(), "node-name": node, "file": file })))
        .await;
    if let Err(e) = added {
        cleanup.run(qmp).await;
        return Err(e.into());
    }
    let job = node.clone();
    let started = qmp
        .execute(
            "blockdev-mirror",
            Some(json!({ "job-id": job, "device": format!("drive-{slot}"), "target": node, "sync": "full" })),
        )
        .await;
    if let Err(e) = started {
        let _ = qmp.execute("blockdev-del", Some(json!({ "node-name": node }))).await;
        cleanup.run(qmp).await;
        return Err(e.into());
    }
    let result = drive_job(qmp, &job, progress).await;
    if result.is_err() {
        let _ = qmp.execute("block-job-cancel", Some(json!({ "device": job, "force": true }))).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = qmp.execute("blockdev-del", Some(json!({ "node-name": node }))).await;
        cleanup.run(qmp).await;
        return result;
    }
    // The drive now reads and writes the new node.
    let blocks = qmp.execute("query-block", None).await?;
    let now = blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["device"] == format!("drive-{slot}").as_str())
        .and_then(|b| b["inserted"]["node-name"].as_str().map(str::to_string));
    if now.as_deref() != Some(node.as_str()) {
        return Err(DriverError::Invalid(format!("the mirror finished but drive-{slot} is on {now:?}")));
    }
    Ok(())
}

/// Waits for the mirror to be in sync, completes it, and waits for it to end.
async fn drive_job(
    qmp: &Arc<QmpClient>,
    job: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<(), DriverError> {
    let mut completing = false;
    let mut last_report = std::time::Instant::now();
    loop {
        let jobs = qmp.execute("query-block-jobs", None).await?;
        let mine: Option<Value> = jobs.as_array().into_iter().flatten().find(|j| j["device"] == job).cloned();
        match mine {
            None if completing => return Ok(()),
            None => {
                return Err(DriverError::Invalid(format!("the mirror job {job} ended before it was in sync")))
            }
            Some(j) => {
                let (len, off) = (j["len"].as_u64().unwrap_or(0), j["offset"].as_u64().unwrap_or(0));
                if last_report.elapsed() >= Duration::from_secs(1) {
                    let pct = (off * 100).checked_div(len).unwrap_or(100);
                    progress(format!("mirror: {off} of {len} bytes ({pct}%)"));
                    last_report = std::time::Instant::now();
                }
                if j["ready"] == true && !completing {
                    progress(format!("mirror: in sync ({len} bytes), switching over"));
                    qmp.execute("block-job-complete", Some(json!({ "device": job }))).await?;
                    completing = true;
                }
                if j["status"] == "concluded" {
                    let _ = qmp.execute("job-dismiss", Some(json!({ "id": job }))).await;
                    return match j["error"].as_str() {
                        Some(e) => Err(DriverError::Invalid(format!("mirror: {e}"))),
                        None if completing => Ok(()),
                        None => Err(DriverError::Invalid("the mirror ended before it was in sync".into())),
                    };
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a failed mirror takes back from QEMU besides its block node.
enum Cleanup {
    None,
    FdSet(u64),
    Secret(String),
}

impl Cleanup {
    async fn run(&self, qmp: &Arc<QmpClient>) {
        let _ = match self {
            Cleanup::None => return,
            Cleanup::FdSet(id) => qmp.execute("remove-fd", Some(json!({ "fdset-id": id }))).await,
            Cleanup::Secret(id) => qmp.execute("object-del", Some(json!({ "id": id }))).await,
        };
    }
}

/// Hands QEMU a host file as an fd set (read-write and read-only descriptors: it opens
/// no paths); answers the protocol node's options and the set's id.
async fn add_file(qmp: &Arc<QmpClient>, target: &Path) -> Result<(Value, u64), DriverError> {
    use std::os::fd::AsFd;
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(target)
            .map_err(|e| DriverError::Invalid(format!("{}: {e}", target.display())))
    };
    let (rw, ro) = (open(true)?, open(false)?);
    let set = qmp.execute_with_fd("add-fd", Some(json!({})), rw.as_fd()).await?;
    let set_id =
        set["fdset-id"].as_u64().ok_or_else(|| DriverError::Invalid("add-fd answered no fdset-id".into()))?;
    qmp.execute_with_fd("add-fd", Some(json!({ "fdset-id": set_id })), ro.as_fd()).await?;
    let block =
        std::fs::metadata(target).map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let file = json!({
        "driver": if block.unwrap_or(false) { "host_device" } else { "file" },
        "filename": format!("/dev/fdset/{set_id}"),
        "locking": "off",
    });
    Ok((file, set_id))
}
