//! The fence (`horcrux fence`): a small per-node process that holds the HA guests' QEMU
//! processes and kills them when the daemon stops proving that the node holds its lease.
//! It plays the role of Proxmox's watchdog-mux + softdog, without a watchdog device.
//!
//! - The daemon feeds it the lease's end as an absolute `CLOCK_MONOTONIC` deadline (one
//!   clock on one host, so no drift between them). When the deadline passes, it SIGKILLs
//!   every process it holds, whatever the daemon does (crashed, hung, cut off).
//! - It starts the HA guests itself, as their parent, with the descriptors the daemon
//!   opened (passed with `SCM_RIGHTS`) and `PR_SET_PDEATHSIG(SIGKILL)`: if the fence dies,
//!   its guests die with it instead of running unfenced. It refuses a start once the lease
//!   (or the lease the start was decided under) has too little time left.
//! - It is single-threaded (`PR_SET_PDEATHSIG` fires when the forking *thread* exits) and
//!   talks only to root over a Unix socket in the daemon's private run directory.
//!
//! One request per connection: a JSON object in one message (with descriptors for a
//! spawn), answered by one JSON object.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hypervisor::DriverError;

/// A start is refused with less lease than this left: QEMU must be up well before the
/// fence could have to kill it.
pub const MIN_LEFT_MS: u64 = 500;
const MAX_MESSAGE: usize = 256 * 1024;
const MAX_FDS: usize = 60;
/// A fence holding no guest that nobody contacted for this long exits.
const IDLE_EXIT_MS: u64 = 60_000;

/// Milliseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FenceRequest {
    /// The node holds its lease until `deadline_ms` (monotonic).
    Feed { deadline_ms: u64 },
    /// Start a guest's process as the fence's child. The descriptors sent with the message
    /// become `fds[i]` in it (stderr among them as 2); stdin and stdout are /dev/null.
    Spawn {
        vmid: u32,
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        fds: Vec<i32>,
        owner: Option<(u32, u32)>,
        groups: Vec<u32>,
        /// The end of the lease the start was decided under.
        valid_until_ms: u64,
    },
    /// What the fence holds, and its deadline.
    Status,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceStatus {
    pub deadline_ms: u64,
    pub now_ms: u64,
    /// Held guests: vmid -> pid.
    pub guests: BTreeMap<u32, i32>,
    /// How many times the deadline passed with guests to kill.
    pub fired: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceReply {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub status: Option<FenceStatus>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Io(format!("fence: {what}: {e}"))
}

/// Sends `bytes` with `fds` attached (`SCM_RIGHTS`).
fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE bytes for exactly these descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
        }
    }
    // SAFETY: a valid socket and message.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

/// Receives one message of at most `MAX_MESSAGE` bytes and the descriptors attached.
fn recv_with_fds(sock: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in `send_with_fds`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: a valid socket and buffers; received descriptors are close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(*data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(std::io::Error::other("message or descriptors truncated"));
    }
    buf.truncate(n as usize);
    Ok((buf, fds))
}

/// The daemon's side.
#[derive(Debug, Clone)]
pub struct FenceClient {
    socket: PathBuf,
}

impl FenceClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FenceClient { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request (blocking; a local socket answers in microseconds).
    pub fn call(&self, req: &FenceRequest, fds: &[RawFd]) -> Result<FenceReply, DriverError> {
        let sock =
            UnixStream::connect(&self.socket).map_err(|e| io_err(&self.socket.display().to_string(), e))?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| io_err("socket", e))?;
        let bytes = serde_json::to_vec(req).map_err(|e| io_err("encode", e))?;
        send_with_fds(&sock, &bytes, fds).map_err(|e| io_err("send", e))?;
        let mut answer = Vec::new();
        (&sock).take(MAX_MESSAGE as u64).read_to_end(&mut answer).map_err(|e| io_err("receive", e))?;
        let reply: FenceReply = serde_json::from_slice(&answer).map_err(|e| io_err("answer", e))?;
        if !reply.ok {
            return Err(DriverError::Invalid(format!("fence refused: {}", reply.error)));
        }
        Ok(reply)
    }

    pub fn feed(&self, deadline_ms: u64) -> Result<(), DriverError> {
        self.call(&FenceRequest::Feed { deadline_ms }, &[]).map(|_| ())
    }

    pub fn status(&self) -> Result<FenceStatus, DriverError> {
        self.call(&FenceRequest::Status, &[])?.status.ok_or_else(|| io_err("status", "missing"))
    }

    /// Whether a fence answers on the socket.
    pub fn alive(&self) -> bool {
        self.status().is_ok()
    }
}

/// The fence's state.
struct Fence {
    deadline_ms: u64,
    guests: BTreeMap<u32, i32>,
    fired: u64,
}

/// Runs the fence on `socket` until killed. Never returns on success.
pub fn run(socket: &Path) -> Result<(), DriverError> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| io_err(&socket.display().to_string(), e))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| io_err("socket mode", e))?;
    listener.set_nonblocking(true).map_err(|e| io_err("socket", e))?;
    let mut f = Fence { deadline_ms: 0, guests: BTreeMap::new(), fired: 0 };
    eprintln!("fence: serving on {}", socket.display());
    let mut last_contact = monotonic_ms();
    loop {
        f.reap();
        let now = monotonic_ms();
        if now >= f.deadline_ms && !f.guests.is_empty() {
            f.fire(now);
        }
        // Nothing to guard and nobody feeding (the daemon is gone for good, or its data
        // directory was removed): end; a daemon starts a new fence when it needs one.
        let orphaned = f.guests.is_empty() && now.saturating_sub(last_contact) > IDLE_EXIT_MS;
        if orphaned || !socket.exists() {
            if !f.guests.is_empty() {
                f.fire(now);
            }
            eprintln!("fence: exiting ({})", if orphaned { "idle" } else { "socket removed" });
            return Ok(());
        }
        // Wake at the deadline at the latest, and every 100 ms to reap.
        let wait = f.deadline_ms.saturating_sub(now).clamp(1, 100) as i32;
        let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait) };
        while let Ok((conn, _)) = listener.accept() {
            last_contact = monotonic_ms();
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
            let reply = f.serve(&conn);
            let mut c = &conn;
            let _ = c.write_all(&serde_json::to_vec(&reply).unwrap_or_default());
        }
    }
}

/// The uid of the process at the other end of `conn`.
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given length.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

fn refuse(error: String) -> FenceReply {
    FenceReply { ok: false, error, pid: 0, status: None }
}

impl Fence {
    fn status(&self) -> FenceStatus {
        FenceStatus {
            deadline_ms: self.deadline_ms,
            now_ms: monotonic_ms(),
            guests: self.guests.clone(),
            fired: self.fired,
        }
    }

    /// Kills every guest it holds; they are reaped as they exit (`reap`).
    fn fire(&mut self, now: u64) {
        self.fired += 1;
        for (vmid, pid) in std::mem::take(&mut self.guests) {
            // SAFETY: kill(2) of our own child (its pid cannot be recycled before we reap it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            eprintln!(
                "fence: lease ended {} ms ago without renewal: killed guest {vmid} (pid {pid})",
                now.saturating_sub(self.deadline_ms)
            );
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid for any child, without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.guests.retain(|_, p| *p != pid);
        }
    }

    fn serve(&mut self, conn: &UnixStream) -> FenceReply {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        match peer_uid(conn) {
            Some(uid) if uid == 0 || uid == me => {}
            other => return refuse(format!("uid {other:?} may not use the fence")),
        }
        let (bytes, fds) = match recv_with_fds(conn) {
            Ok(m) => m,
            Err(e) => return refuse(format!("receive: {e}")),
        };
        let req: FenceRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return refuse(format!("malformed request: {e}")),
        };
        match req {
            FenceRequest::Feed { deadline_ms } => {
                self.deadline_ms = deadline_ms;
                FenceReply { ok: true, error: String::new(), pid: 0, status: None }
            }
            FenceRequest::Status => {
                FenceReply { ok: true, error: String::new(), pid: 0, status: Some(self.status()) }
            }
            FenceRequest::Spawn { vmid, program, args, env, fds: targets, owner, groups, valid_until_ms } => {
                let now = monotonic_ms();
                let until = self.deadline_ms.min(valid_until_ms);
                if now + MIN_LEFT_MS >= until {
                    return refuse(format!(
                        "guest {vmid}: the node's lease has {} ms left; not starting it",
                        until.saturating_sub(now)
                    ));
                }
                if self.guests.contains_key(&vmid) {
                    return refuse(format!("guest {vmid} already runs under the fence"));
                }
                if targets.len() != fds.len() {
                    return refuse(format!("{} descriptors sent for {} targets", fds.len(), targets.len()));
                }
                match spawn(&program, &args, &env, &fds, &targets, owner, &groups) {
                    Ok(pid) => {
                        self.guests.insert(vmid, pid);
                        FenceReply { ok: true, error: String::new(), pid, status: None }
                    }
                    Err(e) => refuse(format!("guest {vmid}: {e}")),
                }
            }
        }
    }
}

fn cstring(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Forks and execs `program` with the received descriptors at their targets, stdin and
/// stdout on /dev/null, in a process group of its own, dying with the fence.
fn spawn(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    fds: &[OwnedFd],
    targets: &[i32],
    owner: Option<(u32, u32)>,
    groups: &[u32],
) -> Result<i32, String> {
    let prog = cstring(program)?;
    let mut argv = vec![prog.clone()];
    for a in args {
        argv.push(cstring(a)?);
    }
    let envp: Vec<std::ffi::CString> =
        env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let devnull =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| e.to_string())?;
    let mut plan: Vec<(i32, i32)> = fds.iter().map(|f| f.as_raw_fd()).zip(targets.iter().copied()).collect();
    plan.push((devnull.as_raw_fd(), 0));
    plan.push((devnull.as_raw_fd(), 1));
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the fence is single-threaded; the child calls only async-signal-safe
    // functions on data prepared above, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child, between fork and exec.
        unsafe {
            libc::setpgid(0, 0);
            if crate::qemu::install_fds(&plan, owner, &groups).is_err() {
                libc::_exit(126);
            }
            // After the change of user: a change of credentials clears the death signal.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            // The fence died before the death signal was set: do not run unfenced.
            if libc::getppid() != parent {
                libc::_exit(126);
            }
            libc::execve(prog.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    //! The fence as a real process of its own (this test binary re-executed), with `sleep`
    //! standing in for QEMU: it kills what it holds when not fed, refuses starts without
    //! lease, and its children die with it.

    use super::*;

    fn proc_alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z') && !r.starts_with('X')))
            .unwrap_or(false)
    }

    fn wait_until(what: &str, limit_ms: u64, mut f: impl FnMut() -> bool) {
        let end = monotonic_ms() + limit_ms;
        while !f() {
            assert!(monotonic_ms() < end, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run by the tests below in a child process: the fence itself.
    #[test]
    #[ignore = "the fence process of the other tests"]
    fn fence_process() {
        let socket = std::env::var("FENCE_TEST_SOCKET").expect("run by the fence tests");
        run(Path::new(&socket)).unwrap();
    }

    fn start_fence(dir: &Path) -> (std::process::Child, FenceClient) {
        let socket = dir.join("fence.sock");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "fence::tests::fence_process", "--nocapture"])
            .env("FENCE_TEST_SOCKET", &socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let client = FenceClient::new(&socket);
        wait_until("the fence answers", 10_000, || client.alive());
        (child, client)
    }

    fn sleeper(client: &FenceClient, vmid: u32, valid_until_ms: u64) -> Result<i32, DriverError> {
        sleeper_as(client, vmid, valid_until_ms, None)
    }

    fn sleeper_as(
        client: &FenceClient,
        vmid: u32,
        valid_until_ms: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<i32, DriverError> {
        let err = std::fs::File::create("/dev/null").unwrap();
        let req = FenceRequest::Spawn {
            vmid,
            program: "/bin/sleep".into(),
            args: vec!["600".into()],
            env: vec![],
            fds: vec![2],
            owner,
            groups: vec![],
            valid_until_ms,
        };
        client.call(&req, &[err.as_raw_fd()]).map(|r| r.pid)
    }

    #[test]
    fn the_fence_kills_its_guests_when_not_fed_and_refuses_starts_without_lease() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fence, client) = start_fence(dir.path());
        let e = sleeper(&client, 100, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("lease has 0 ms left"), "{e}");
        let now = monotonic_ms();
        client.feed(now + 1_500).unwrap();
        let e = sleeper(&client, 100, now + 200).unwrap_err();
        assert!(e.to_string().contains("lease has"), "the start's own lease counts: {e}");
        let pid = sleeper(&client, 100, now + 10_000).unwrap();
        assert!(proc_alive(pid));
        let st = client.status().unwrap();
        assert_eq!(st.guests.get(&100), Some(&pid));
        // Fed once more, then not: it dies at the deadline, not before.
        let deadline = monotonic_ms() + 800;
        client.feed(deadline).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(proc_alive(pid), "killed before the deadline");
        wait_until("the guest is killed at the deadline", 2_000, || !proc_alive(pid));
        let late = monotonic_ms().saturating_sub(deadline);
        assert!(late < 300, "killed {late} ms after the deadline");
        let st = client.status().unwrap();
        assert!(st.guests.is_empty() && st.fired == 1, "{st:?}");
        fence.kill().unwrap();
        fence.wait().unwrap();
    }

    #[test]
    fn guests_die_with_the_fence() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fence, client) = start_fence(dir.path());
        client.feed(monotonic_ms() + 60_000).unwrap();
        let pid = sleeper(&client, 101, u64::MAX).unwrap();
        // As QEMU runs: under a user of its own (a change of user clears the death signal
        // unless it is set after it).
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let other = root.then(|| sleeper_as(&client, 102, u64::MAX, Some((65534, 65534))).unwrap());
        assert!(proc_alive(pid));
        fence.kill().unwrap();
        fence.wait().unwrap();
        wait_until("the guest dies with its fence", 2_000, || !proc_alive(pid));
        if let Some(other) = other {
            wait_until("the guest of another user dies with its fence", 2_000, || !proc_alive(other));
        }
    }
}
