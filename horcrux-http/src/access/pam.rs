//! The `pam` realm: passwords checked by the host's PAM stack (as Proxmox's `@pam` users
//! are), through libpam loaded at run time (`libpam.so.0`, no build-time dependency).

use std::ffi::{c_char, c_int, c_void, CStr, CString};

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int,
    appdata: *mut c_void,
}

const PAM_SUCCESS: c_int = 0;
const PAM_CONV_ERR: c_int = 19;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;

type PamStart = unsafe extern "C" fn(*const c_char, *const c_char, *const PamConv, *mut *mut c_void) -> c_int;
type PamCall = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

/// Answers every password prompt with the password in `appdata` (a C string).
extern "C" fn converse(
    n: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    if n <= 0 || msgs.is_null() || resp.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: PAM passes `n` messages and expects an array of `n` responses that it frees
    // with free(3), so it is allocated with calloc; `appdata` is the CString we passed.
    unsafe {
        let out = libc::calloc(n as usize, std::mem::size_of::<PamResponse>()) as *mut PamResponse;
        if out.is_null() {
            return PAM_CONV_ERR;
        }
        for i in 0..n as usize {
            let m = *msgs.add(i);
            let style = if m.is_null() { 0 } else { (*m).msg_style };
            if style == PAM_PROMPT_ECHO_OFF || style == PAM_PROMPT_ECHO_ON {
                (*out.add(i)).resp = libc::strdup(appdata as *const c_char);
            }
        }
        *resp = out;
    }
    PAM_SUCCESS
}

/// Checks `user`'s password with PAM service `service` (authentication and account
/// checks). Blocking: call it on a blocking thread.
pub fn authenticate(service: &str, user: &str, password: &str) -> Result<bool, String> {
    let (Ok(service), Ok(user), Ok(password)) =
        (CString::new(service), CString::new(user), CString::new(password))
    else {
        return Ok(false);
    };
    // SAFETY: dlopen/dlsym with valid C strings; the symbols have the libpam signatures
    // declared above; the handle stays open for the process (libpam is not unloaded).
    unsafe {
        let lib = libc::dlopen(c"libpam.so.0".as_ptr(), libc::RTLD_NOW);
        if lib.is_null() {
            return Err("libpam.so.0 is not installed".into());
        }
        let sym = |name: &CStr| libc::dlsym(lib, name.as_ptr());
        let (start, auth, acct, end) =
            (sym(c"pam_start"), sym(c"pam_authenticate"), sym(c"pam_acct_mgmt"), sym(c"pam_end"));
        if start.is_null() || auth.is_null() || acct.is_null() || end.is_null() {
            return Err("libpam lacks pam_start/pam_authenticate".into());
        }
        let start = std::mem::transmute::<*mut c_void, PamStart>(start);
        let auth = std::mem::transmute::<*mut c_void, PamCall>(auth);
        let acct = std::mem::transmute::<*mut c_void, PamCall>(acct);
        let end = std::mem::transmute::<*mut c_void, PamCall>(end);
        let conv = PamConv { conv: converse, appdata: password.as_ptr() as *mut c_void };
        let mut handle: *mut c_void = std::ptr::null_mut();
        let rc = start(service.as_ptr(), user.as_ptr(), &conv, &mut handle);
        if rc != PAM_SUCCESS {
            return Err(format!("pam_start failed ({rc})"));
        }
        let mut rc = auth(handle, 0);
        if rc == PAM_SUCCESS {
            rc = acct(handle, 0);
        }
        end(handle, rc);
        Ok(rc == PAM_SUCCESS)
    }
}
