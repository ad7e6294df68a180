//! The few NFS operations no command-line tool offers (libnfs-utils has `nfs-ls`, `nfs-cp`
//! and `nfs-cat`; qemu-img creates and opens images): making and removing directories and
//! removing files, through libnfs's synchronous API, loaded at run time so a host without
//! libnfs still runs every other storage.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use crate::hypervisor::DriverError;

type InitContext = unsafe extern "C" fn() -> *mut c_void;
type DestroyContext = unsafe extern "C" fn(*mut c_void);
type Mount = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type PathOp = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type GetError = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type Rename = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;

struct Api {
    init: InitContext,
    destroy: DestroyContext,
    mount: Mount,
    mkdir: PathOp,
    rmdir: PathOp,
    unlink: PathOp,
    rename: Rename,
    error: GetError,
}

fn api() -> Result<&'static Api, DriverError> {
    static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| DriverError::Invalid(e.clone()))
}

fn load() -> Result<Api, String> {
    // SAFETY: dlopen with a NUL-terminated name; the handle is never closed, so the symbols
    // stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(c"libnfs.so.13".as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        return Err("NFS storage needs libnfs (Debian: libnfs13), which is not installed".into());
    }
    let sym = |name: &CStr| {
        // SAFETY: a valid handle and a NUL-terminated symbol name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!("libnfs has no {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is cast to the signature libnfs 4's nfsc/libnfs.h declares.
    unsafe {
        Ok(Api {
            init: std::mem::transmute::<*mut c_void, InitContext>(sym(c"nfs_init_context")?),
            destroy: std::mem::transmute::<*mut c_void, DestroyContext>(sym(c"nfs_destroy_context")?),
            mount: std::mem::transmute::<*mut c_void, Mount>(sym(c"nfs_mount")?),
            mkdir: std::mem::transmute::<*mut c_void, PathOp>(sym(c"nfs_mkdir")?),
            rmdir: std::mem::transmute::<*mut c_void, PathOp>(sym(c"nfs_rmdir")?),
            unlink: std::mem::transmute::<*mut c_void, PathOp>(sym(c"nfs_unlink")?),
            rename: std::mem::transmute::<*mut c_void, Rename>(sym(c"nfs_rename")?),
            error: std::mem::transmute::<*mut c_void, GetError>(sym(c"nfs_get_error")?),
        })
    }
}

/// A mounted export (libnfs's own mount: no kernel involved).
pub struct Export {
    api: &'static Api,
    ctx: *mut c_void,
    what: String,
}

/// `-EEXIST` and `-ENOENT` as libnfs's calls return them.
const EEXIST: c_int = -libc::EEXIST;
const ENOENT: c_int = -libc::ENOENT;

impl Export {
    /// Mounts `export` of `server` (blocking: call from a blocking task).
    pub fn mount(server: &str, export: &str) -> Result<Self, DriverError> {
        let api = api()?;
        let (s, e) = (cstring(server)?, cstring(export)?);
        // SAFETY: nfs_init_context takes no arguments; a null result is checked.
        let ctx = unsafe { (api.init)() };
        if ctx.is_null() {
            return Err(DriverError::Io("libnfs: cannot create a context".into()));
        }
        let me = Export { api, ctx, what: format!("nfs://{server}{export}") };
        // SAFETY: a live context and two NUL-terminated strings.
        let r = unsafe { (api.mount)(ctx, s.as_ptr(), e.as_ptr()) };
        if r != 0 {
            return Err(me.error("mounting"));
        }
        Ok(me)
    }

    fn error(&self, doing: &str) -> DriverError {
        // SAFETY: a live context; libnfs returns a NUL-terminated string it owns, or null.
        let msg = unsafe {
            let p = (self.api.error)(self.ctx);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        DriverError::Command { program: format!("nfs {doing} {}", self.what), message: msg }
    }

    fn call(&self, op: PathOp, doing: &str, path: &str, ok: c_int) -> Result<(), DriverError> {
        let p = cstring(path)?;
        // SAFETY: a live context and a NUL-terminated path.
        let r = unsafe { op(self.ctx, p.as_ptr()) };
        if r == 0 || r == ok {
            Ok(())
        } else {
            Err(self.error(&format!("{doing} {path}:")))
        }
    }

    /// Makes `path` (absolute within the export) and its parents; existing ones are fine.
    pub fn mkdir_p(&self, path: &str) -> Result<(), DriverError> {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            self.call(self.api.mkdir, "mkdir", &at, EEXIST)?;
        }
        Ok(())
    }

    /// Removes a file; a missing one is not an error.
    pub fn unlink(&self, path: &str) -> Result<(), DriverError> {
        self.call(self.api.unlink, "unlink", path, ENOENT)
    }

    /// Renames `from` to `to` (both absolute within the export).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), DriverError> {
        let (f, t) = (cstring(from)?, cstring(to)?);
        // SAFETY: a live context and two NUL-terminated paths.
        let r = unsafe { (self.api.rename)(self.ctx, f.as_ptr(), t.as_ptr()) };
        if r == 0 {
            Ok(())
        } else {
            Err(self.error(&format!("rename {from}:")))
        }
    }

    /// Removes an empty directory; a missing one is not an error.
    pub fn rmdir(&self, path: &str) -> Result<(), DriverError> {
        self.call(self.api.rmdir, "rmdir", path, ENOENT)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // SAFETY: the context is live and dropped once.
        unsafe { (self.api.destroy)(self.ctx) }
    }
}

// SAFETY: a libnfs context is used by one thread at a time (Export is not Sync).
unsafe impl Send for Export {}

fn cstring(s: &str) -> Result<CString, DriverError> {
    CString::new(s).map_err(|_| DriverError::Invalid(format!("{s:?} contains a NUL byte")))
}
