//! Long operations are tasks with a Proxmox UPID, a log and an exit status. Finished tasks
//! are written to `DIR/tasks/` so their status and log survive a daemon restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use horcrux_core::Upid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    pub upid: String,
    pub node: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub user: String,
    /// The UPID's process id and process start (Proxmox's worker pid; here the daemon's,
    /// made unique per second among tasks that start in the same one).
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub pstart: u64,
    pub starttime: u64,
    pub status: TaskStatus,
    /// "OK" or the error, once stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endtime: Option<u64>,
    #[serde(default)]
    pub log: Vec<String>,
}

const MAX_TASKS_IN_MEMORY: usize = 1000;
/// Finished tasks a node keeps on disk unless the `task-history` cluster option says
/// otherwise (Proxmox keeps an index of its recent tasks the same way).
pub const DEFAULT_TASK_HISTORY: usize = 1000;
/// Log lines one task keeps; later lines replace a marker's count.
const MAX_LOG_LINES: usize = 10_000;

/// How many finished tasks to keep: read at every finish, so a changed option applies.
pub type HistoryLimit = Arc<dyn Fn() -> usize + Send + Sync>;

struct Inner {
    tasks: HashMap<String, TaskInfo>,
    /// The last task's start second and how many started in it.
    last_starttime: u64,
    same_second: u32,
    /// Finished tasks on disk, oldest first: what rotation removes.
    finished: std::collections::BTreeSet<(u64, String)>,
}

#[derive(Clone)]
pub struct TaskRegistry {
    node: Arc<str>,
    dir: PathBuf,
    pid: u32,
    pstart: u64,
    inner: Arc<Mutex<Inner>>,
    limit: HistoryLimit,
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// This process's start time in clock ticks since boot (field 22 of /proc/self/stat),
/// which Proxmox puts in the UPID as `pstart`.
fn process_start_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split_whitespace().nth(19).and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

fn file_name(upid: &str) -> String {
    upid.replace(':', "_")
}

impl TaskRegistry {
    /// Where task logs are kept (`DATA_DIR/tasks`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Tasks found running in `dir` belonged to a daemon that died: they are closed with an
    /// error so clients polling them stop waiting.
    pub fn open(node: &str, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let inner =
            Inner { tasks: HashMap::new(), last_starttime: 0, same_second: 0, finished: Default::default() };
        let reg = Self {
            node: node.into(),
            dir,
            pid: std::process::id(),
            pstart: process_start_ticks(),
            inner: Arc::new(Mutex::new(inner)),
            limit: Arc::new(|| DEFAULT_TASK_HISTORY),
        };
        let mut finished = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&reg.dir)?.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            let Ok(mut t) = serde_json::from_slice::<TaskInfo>(&bytes) else { continue };
            if t.status == TaskStatus::Running {
                t.status = TaskStatus::Stopped;
                t.exitstatus = Some("unexpected status: daemon restarted while the task ran".into());
                t.endtime = Some(now_s());
                reg.persist(&t);
            }
            finished.insert((t.starttime, t.upid));
        }
        reg.lock().finished = finished;
        reg.rotate();
        Ok(reg)
    }

    /// Keep `limit()` finished tasks on disk (the daemon reads the cluster option).
    pub fn with_history_limit(mut self, limit: HistoryLimit) -> Self {
        self.limit = limit;
        self.rotate();
        self
    }

    /// Removes the oldest finished tasks beyond the limit, from disk and memory.
    fn rotate(&self) {
        let keep = (self.limit)().max(1);
        let doomed: Vec<String> = {
            let mut inner = self.lock();
            let excess = inner.finished.len().saturating_sub(keep);
            let doomed: Vec<(u64, String)> = inner.finished.iter().take(excess).cloned().collect();
            for d in &doomed {
                inner.finished.remove(d);
                inner.tasks.remove(&d.1);
            }
            doomed.into_iter().map(|(_, u)| u).collect()
        };
        for upid in doomed {
            if let Err(e) = std::fs::remove_file(self.dir.join(file_name(&upid))) {
                tracing::warn!(%upid, "could not remove an old task: {e}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, t: &TaskInfo) {
        let path = self.dir.join(file_name(&t.upid));
        let tmp = path.with_extension("tmp");
        let res = serde_json::to_vec(t)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            tracing::warn!(upid = %t.upid, "could not persist task: {e}");
        }
    }

    /// Starts a task and returns the handle its worker logs through.
    pub fn create(&self, kind: &str, id: &str, user: &str) -> TaskLog {
        let mut inner = self.lock();
        // UPIDs must be unique: tasks that start in the same second get successive process
        // ids (a Proxmox worker has its own pid), and the start time stays the clock's.
        let starttime = now_s().max(inner.last_starttime);
        if starttime == inner.last_starttime {
            inner.same_second += 1;
        } else {
            inner.same_second = 0;
        }
        inner.last_starttime = starttime;
        let pid = self.pid.wrapping_add(inner.same_second);
        let upid = Upid {
            node: self.node.to_string(),
            pid,
            pstart: self.pstart,
            starttime,
            kind: kind.into(),
            id: id.into(),
            user: user.into(),
        }
        .to_string();
        let info = TaskInfo {
            upid: upid.clone(),
            node: self.node.to_string(),
            kind: kind.into(),
            id: id.into(),
            user: user.into(),
            pid,
            pstart: self.pstart,
            starttime,
            status: TaskStatus::Running,
            exitstatus: None,
            endtime: None,
            log: Vec::new(),
        };
        self.persist(&info);
        inner.tasks.insert(upid.clone(), info);
        if inner.tasks.len() > MAX_TASKS_IN_MEMORY {
            // Finished tasks stay readable from disk; memory keeps the recent ones.
            let mut finished: Vec<(u64, String)> = inner
                .tasks
                .values()
                .filter(|t| t.status == TaskStatus::Stopped)
                .map(|t| (t.starttime, t.upid.clone()))
                .collect();
            finished.sort();
            let excess = inner.tasks.len() - MAX_TASKS_IN_MEMORY;
            for (_, upid) in finished.into_iter().take(excess) {
                inner.tasks.remove(&upid);
            }
        }
        TaskLog { registry: self.clone(), upid }
    }

    pub fn get(&self, upid: &str) -> Option<TaskInfo> {
        if let Some(t) = self.lock().tasks.get(upid) {
            return Some(t.clone());
        }
        // Only well-formed UPIDs reach the filesystem.
        upid.parse::<Upid>().ok()?;
        let bytes = std::fs::read(self.dir.join(file_name(upid))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Tasks of this daemon's lifetime, newest first.
    pub fn list(&self) -> Vec<TaskInfo> {
        let mut v: Vec<TaskInfo> = self.lock().tasks.values().cloned().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.starttime));
        v
    }
}

/// A running task's handle: log lines, then `finish`.
#[derive(Clone)]
pub struct TaskLog {
    registry: TaskRegistry,
    upid: String,
}

impl TaskLog {
    pub fn upid(&self) -> &str {
        &self.upid
    }

    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(upid = %self.upid, "{line}");
        if let Some(t) = self.registry.lock().tasks.get_mut(&self.upid) {
            if t.log.len() < MAX_LOG_LINES {
                t.log.push(line);
            } else if t.log.len() == MAX_LOG_LINES {
                t.log.push("(further lines are in the daemon's log only)".into());
            }
        }
    }

    /// Ends the task with "OK" or the error message.
    pub fn finish<E: std::fmt::Display>(&self, result: Result<(), E>) {
        let snapshot = {
            let mut inner = self.registry.lock();
            let Some(t) = inner.tasks.get_mut(&self.upid) else { return };
            if let Err(e) = &result {
                t.log.push(format!("TASK ERROR: {e}"));
            } else {
                t.log.push("TASK OK".into());
            }
            t.status = TaskStatus::Stopped;
            t.exitstatus = Some(match result {
                Ok(()) => "OK".into(),
                Err(e) => e.to_string(),
            });
            t.endtime = Some(now_s());
            let snapshot = t.clone();
            inner.finished.insert((snapshot.starttime, snapshot.upid.clone()));
            snapshot
        };
        self.registry.persist(&snapshot);
        self.registry.rotate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upids_are_unique_and_tasks_survive_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = TaskRegistry::open("n1", tmp.path().to_path_buf()).unwrap();
        let a = reg.create("qmstart", "101", "root@pam");
        let b = reg.create("qmstart", "101", "root@pam");
        assert_ne!(a.upid(), b.upid());
        let parsed: Upid = a.upid().parse().unwrap();
        assert_eq!(parsed.node, "n1");
        assert_eq!(parsed.pid, std::process::id());
        a.log("starting");
        a.finish(Ok::<(), String>(()));
        b.finish(Err("boom"));
        let leftover = reg.create("qmstop", "101", "root@pam");
        assert_eq!(reg.get(leftover.upid()).unwrap().status, TaskStatus::Running);

        let reg2 = TaskRegistry::open("n1", tmp.path().to_path_buf()).unwrap();
        let ta = reg2.get(a.upid()).unwrap();
        assert_eq!(ta.exitstatus.as_deref(), Some("OK"));
        assert_eq!(ta.log, vec!["starting".to_string(), "TASK OK".to_string()]);
        assert_eq!(reg2.get(b.upid()).unwrap().exitstatus.as_deref(), Some("boom"));
        let orphan = reg2.get(leftover.upid()).unwrap();
        assert_eq!(orphan.status, TaskStatus::Stopped);
        assert!(orphan.exitstatus.unwrap().contains("unexpected"));
        assert!(reg2.get("UPID:../../etc:1:1:1:x:y:z:").is_none());
    }

    #[test]
    fn only_the_last_finished_tasks_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let keep = Arc::new(std::sync::atomic::AtomicUsize::new(5));
        let k = keep.clone();
        let limit: HistoryLimit = Arc::new(move || k.load(std::sync::atomic::Ordering::Relaxed));
        let reg =
            TaskRegistry::open("n1", tmp.path().to_path_buf()).unwrap().with_history_limit(limit.clone());
        let running = reg.create("qmstart", "100", "root@pam");
        let upids: Vec<String> = (0..12)
            .map(|i| {
                let t = reg.create("qmstop", &i.to_string(), "root@pam");
                t.finish(Ok::<(), String>(()));
                t.upid().to_string()
            })
            .collect();
        let files = || std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(files(), 6, "5 finished + the running one");
        assert!(reg.get(&upids[6]).is_none() && reg.get(&upids[7]).is_some());
        assert!(reg.get(running.upid()).is_some(), "a running task is never rotated away");
        // A smaller limit applies at the next finish; a restart applies it too.
        keep.store(2, std::sync::atomic::Ordering::Relaxed);
        running.finish(Ok::<(), String>(()));
        assert_eq!(files(), 2);
        let reg2 = TaskRegistry::open("n1", tmp.path().to_path_buf()).unwrap().with_history_limit(limit);
        assert_eq!(reg2.get(&upids[11]).unwrap().exitstatus.as_deref(), Some("OK"));
        // Log lines are bounded per task.
        let chatty = reg2.create("qmigrate", "1", "root@pam");
        for i in 0..(MAX_LOG_LINES + 50) {
            chatty.log(format!("line {i}"));
        }
        assert_eq!(reg2.get(chatty.upid()).unwrap().log.len(), MAX_LOG_LINES + 1);
    }
}
