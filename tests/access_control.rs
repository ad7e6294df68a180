//! Access control end to end: the router walk (every declared route refuses an anonymous
//! caller with 401 and a caller without the privilege with 403), ACL grants with
//! propagation, privilege-separated tokens, and tokens dying with their user.

mod common;

use common::{free_port, Daemon};
use horcrux_http::Check;
use serde_json::{json, Value};

fn concrete(route: &str) -> String {
    route
        .replace("{vmid}", "100")
        .replace("{upid}", "UPID:nowhere:00000001:00000001:00000001:qmstart:100:bob@pve:")
        .replace("{id}", "x")
        .replace("{key}", "k")
        .replace("{name}", "nobody")
        .replace("{userid}", "carol@pve")
        .replace("{tokenid}", "t9")
        .replace("{roleid}", "Custom9")
        .replace("{groupid}", "grp9")
        .replace("{poolid}", "pool9")
        .replace("{sid}", "vm:100")
        .replace("{rule}", "rule9")
}

#[test]
fn every_route_refuses_anonymous_and_unprivileged_callers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    assert_eq!(admin.post("/access/users", &json!({"userid": "alice@pve", "comment": "tester"})).0, 200);
    let (code, tok) = admin.post("/access/users/alice@pve/token/t1", &json!({}));
    assert_eq!(code, 200, "{tok}");
    assert_eq!(tok["full-tokenid"], "alice@pve!t1");
    let alice = tok["value"].as_str().unwrap().to_string();
    let rules = horcrux_http::access_rules();
    assert!(rules.len() >= 30, "the table covers the router");
    for r in rules {
        let path = concrete(r.route);
        let method = r.method.as_str();
        // The password route names its target in the body.
        let body = match r.route {
            "/access/password" => json!({"userid": "carol@pve", "password": "0123456789"}),
            _ => json!({}),
        };
        let (code, body) = admin.request(method, &path, None, &body);
        assert_eq!(code, 401, "anonymous {method} {path}: {body}");
        let (code, body) = admin.request(method, &path, Some("not-a-token"), &json!({}));
        assert_eq!(code, 401, "bad token {method} {path}: {body}");
        let req = match r.route {
            "/access/password" => json!({"userid": "carol@pve", "password": "0123456789"}),
            _ => json!({}),
        };
        let (code, body) = admin.request(method, &path, Some(&alice), &req);
        match r.check {
            Check::AnyUser => {
                assert!(code != 401 && code != 403, "{method} {path} is open to users: {code} {body}")
            }
            _ => {
                assert_eq!(code, 403, "alice without privileges: {method} {path}: {body}");
                assert!(body.to_string().contains("permission check failed"), "{body}");
            }
        }
        // The admin passes the check (whatever the handler then says).
        let (code, body) = admin.request(method, &path, Some(admin.token()), &json!({}));
        assert!(code != 401 && code != 403, "admin {method} {path}: {code} {body}");
    }
    // The version is public.
    assert_eq!(admin.request("GET", "/version", None, &json!({})).0, 200);
}

/// The escalations review reproduced, each refused now (the router walk's column "caller
/// with the route's privilege but not over the target"): a user manager holding
/// User.Modify and Permissions.Modify on /access cannot act on root@pam's or an
/// administrator's credentials, nor grant itself or anyone more than it holds; the
/// neighbouring cases it may do still work; and no client hides a write from the audit log.
#[test]
fn a_user_manager_cannot_take_over_administrators_or_grant_itself_more() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    let ok = |(code, body): (u16, Value)| assert_eq!(code, 200, "{body}");
    ok(admin.post("/access/groups", &json!({"groupid": "admins"})));
    ok(admin.post("/access/groups", &json!({"groupid": "staff"})));
    ok(admin.post("/access/users", &json!({"userid": "carol@pve", "groups": ["admins"]})));
    ok(admin.post("/access/users", &json!({"userid": "mgr@pve"})));
    ok(admin.post("/access/users", &json!({"userid": "dan@pve", "groups": ["staff"]})));
    let put = |p: &str, v: Value| admin.request("PUT", p, Some(admin.token()), &v);
    ok(put("/access/acl", json!({"path": "/", "role": "Administrator", "group": "admins"})));
    let role = json!({"roleid": "UserManager", "privs": "User.Modify,Permissions.Modify,Sys.Audit"});
    ok(admin.post("/access/roles", &role));
    ok(put("/access/acl", json!({"path": "/access", "role": "UserManager", "user": "mgr@pve"})));
    ok(put("/access/password", json!({"userid": "carol@pve", "password": "carol's own password"})));
    let (_, t) = admin.post("/access/users/mgr@pve/token/t", &json!({"privsep": false}));
    let mgr = t["value"].as_str().unwrap().to_string();
    let as_mgr = |m: &str, p: &str, v: Value| admin.request(m, p, Some(&mgr), &v);
    let refused = [
        ("POST", "/access/users/root@pam/token/x", json!({"privsep": false})),
        ("POST", "/access/users/carol@pve/token/x", json!({"privsep": false})),
        ("POST", "/access/users/carol@pve/token/y", json!({"privsep": true})),
        ("DELETE", "/access/users/root@pam/token/admin", json!({})),
        ("PUT", "/access/password", json!({"userid": "carol@pve", "password": "mgr knows it now"})),
        ("PUT", "/access/password", json!({"userid": "root@pam", "password": "mgr knows it now"})),
        ("POST", "/access/tfa/carol@pve", json!({})),
        ("DELETE", "/access/tfa/carol@pve", json!({})),
        ("PUT", "/access/users/carol@pve", json!({"enable": false})),
        ("DELETE", "/access/users/carol@pve", json!({})),
        ("PUT", "/access/users/mgr@pve", json!({"groups": ["admins"], "append": true})),
        ("POST", "/access/users", json!({"userid": "sock@pve", "groups": ["admins"]})),
        ("PUT", "/access/acl", json!({"path": "/", "role": "Administrator", "user": "mgr@pve"})),
        ("PUT", "/access/acl", json!({"path": "/access", "role": "Administrator", "user": "mgr@pve"})),
    ];
    for (m, p, v) in &refused {
        let (code, body) = as_mgr(m, p, v.clone());
        assert_eq!(code, 403, "{m} {p} {v}: {body}");
        assert!(body.to_string().contains("permission check failed"), "{m} {p}: {body}");
    }
    // Through Proxmox's API the same.
    let (code, body) = as_mgr("POST", "/api2/json/access/users/root@pam/token/x", json!({"privsep": 0}));
    assert_eq!(code, 403, "{body}");
    let acl = json!({"path": "/", "roles": "Administrator", "users": "mgr@pve"});
    assert_eq!(as_mgr("PUT", "/api2/json/access/acl", acl).0, 403);
    // Nothing of it happened.
    let login = |u: &str, pw: &str| {
        admin.raw("POST", "/access/ticket", &[], &json!({"username": u, "password": pw})).0
    };
    assert_eq!(login("carol@pve", "carol's own password"), 200);
    assert_eq!(login("carol@pve", "mgr knows it now"), 401);
    let (_, root) = admin.get("/access/users/root@pam/token");
    assert_eq!(root.as_array().map(Vec::len), Some(1), "{root}");
    let (_, perms) = as_mgr("GET", "/access/permissions?path=/", json!({}));
    assert_eq!(perms["/"], json!({}), "{perms}");
    let (_, carol) = admin.get("/access/users/carol@pve");
    assert_eq!((carol["enable"].as_bool(), carol["tfa"].as_bool()), (Some(true), Some(false)), "{carol}");
    // The neighbours: mgr manages dan (no rights beyond mgr's), grants what it holds where
    // it holds it, and everyone changes their own password.
    ok(as_mgr("PUT", "/access/password", json!({"userid": "dan@pve", "password": "dan's first pw"})));
    ok(as_mgr("POST", "/access/users/dan@pve/token/ci", json!({"privsep": true})));
    ok(as_mgr("PUT", "/access/users/dan@pve", json!({"comment": "managed"})));
    ok(as_mgr(
        "PUT",
        "/access/acl",
        json!({"path": "/access/groups/staff", "role": "UserManager", "user": "dan@pve"}),
    ));
    ok(as_mgr("POST", "/access/users", json!({"userid": "erin@pve", "groups": ["staff"]})));
    let session = |pw: &str| {
        let (code, t, _) =
            admin.raw("POST", "/access/ticket", &[], &json!({"username": "dan@pve", "password": pw}));
        assert_eq!(code, 200, "{t}");
        [
            ("Cookie", format!("PVEAuthCookie={}", t["ticket"].as_str().unwrap())),
            ("CSRFPreventionToken", t["CSRFPreventionToken"].as_str().unwrap().to_string()),
        ]
    };
    let first = session("dan's first pw");
    let dan: Vec<(&str, &str)> = first.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let own = json!({"userid": "dan@pve", "password": "dan's second pw"});
    assert_eq!(admin.raw("PUT", "/access/password", &dan, &own).0, 200);
    // The change ended dan's ticket too; he logs in with the new password.
    assert_eq!(admin.raw("GET", "/access/permissions", &dan, &json!({})).0, 401);
    let second = session("dan's second pw");
    let dan: Vec<(&str, &str)> = second.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let other = json!({"userid": "mgr@pve", "password": "dan's second pw"});
    assert_eq!(admin.raw("PUT", "/access/password", &dan, &other).0, 403);
    // dan manages staff now, but not a staff member with more rights than dan.
    ok(put("/access/acl", json!({"path": "/vms", "role": "PVEVMAdmin", "user": "erin@pve"})));
    let erin = json!({"userid": "erin@pve", "password": "taken over?"});
    assert_eq!(admin.raw("PUT", "/access/password", &dan, &erin).0, 403);

    // A client's "forwarded" header does not keep its write out of the audit log.
    let bearer = format!("Bearer {}", admin.token());
    let hdrs = [("Authorization", bearer.as_str()), ("x-horcrux-forwarded", "1")];
    let (code, body, _) = admin.raw("POST", "/access/groups", &hdrs, &json!({"groupid": "hidden"}));
    assert_eq!(code, 200, "{body}");
    let (_, log) = admin.get("/access/audit?limit=1000");
    let hit = log
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "POST /api/v1/access/groups" && e["status"] == 200 && e["detail"] == "");
    assert!(hit, "{log}");
    let refusals = log.as_array().unwrap().iter().filter(|e| e["user"] == "mgr@pve!t" && e["status"] == 403);
    assert!(refusals.count() >= 15, "refused writes are audited: {log}");
}

#[test]
fn acl_grants_propagate_and_tokens_are_bounded_by_their_user() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    // Groups must exist before users join them.
    let (code, body) = admin.post("/access/users", &json!({"userid": "bob@pve", "groups": ["ops"]}));
    assert_eq!((code, body["field"].as_str()), (400, Some("groups")), "{body}");
    assert_eq!(admin.post("/access/groups", &json!({"groupid": "ops", "comment": "operators"})).0, 200);
    assert_eq!(admin.post("/access/users", &json!({"userid": "bob@pve", "groups": ["ops"]})).0, 200);
    let (_, t) = admin.post("/access/users/bob@pve/token/sep", &json!({"privsep": true}));
    let sep = t["value"].as_str().unwrap().to_string();
    let (_, t) = admin.post("/access/users/bob@pve/token/full", &json!({"privsep": false}));
    let full = t["value"].as_str().unwrap().to_string();
    let put_acl = |v: Value| admin.request("PUT", "/access/acl", Some(admin.token()), &v);
    // Bob's group may audit and power VMs below /vms.
    assert_eq!(put_acl(json!({"path": "/vms", "role": "PVEVMUser", "group": "ops"})).0, 200);
    // Bad input names the field.
    let (code, body) = put_acl(json!({"path": "vms", "role": "PVEVMUser", "group": "ops"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("path")), "{body}");
    let (code, body) = put_acl(json!({"path": "/", "role": "Wizard", "user": "bob@pve"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("roles")), "{body}");
    assert_eq!(put_acl(json!({"path": "/", "role": "PVEAuditor", "user": "ghost@pve"})).0, 404);

    let as_ = |tok: &str, m: &str, p: &str| admin.request(m, p, Some(tok), &json!({})).0;
    // Not privilege-separated: the user's rights. VM 100 does not exist: 404, not 403.
    assert_eq!(as_(&full, "GET", "/vms/100"), 404);
    assert_eq!(as_(&full, "GET", "/vms"), 200);
    assert_eq!(as_(&full, "POST", "/vms"), 403, "PVEVMUser cannot allocate");
    // Storages are listed to anyone, each only to who may audit it: PVEVMUser sees none.
    let (code, seen) = admin.request("GET", "/storage", Some(&full), &json!({}));
    assert_eq!((code, seen), (200, json!([])));
    // Separated, with no entries of its own: nothing.
    assert_eq!(as_(&sep, "GET", "/vms"), 403);
    // Granted more than its user has: still only what both allow.
    assert_eq!(put_acl(json!({"path": "/", "role": "Administrator", "token": "bob@pve!sep"})).0, 200);
    assert_eq!(as_(&sep, "GET", "/vms"), 200);
    assert_eq!(as_(&sep, "POST", "/vms"), 403);
    let (_, perms) = admin.request("GET", "/access/permissions?path=/vms/7", Some(&sep), &json!({}));
    assert_eq!(perms["/vms/7"]["VM.PowerMgmt"], 1, "{perms}");
    assert!(perms["/vms/7"].get("VM.Allocate").is_none(), "{perms}");
    // A user-specific NoAccess below overrides the group's grant.
    assert_eq!(put_acl(json!({"path": "/vms/100", "role": "NoAccess", "user": "bob@pve"})).0, 200);
    assert_eq!(as_(&full, "GET", "/vms/100"), 403);
    assert_eq!(as_(&full, "GET", "/vms/101"), 404);
    // Revoking works too.
    assert_eq!(
        put_acl(json!({"path": "/vms/100", "role": "NoAccess", "user": "bob@pve", "delete": true})).0,
        200
    );
    assert_eq!(as_(&full, "GET", "/vms/100"), 404);
    // A custom role: storage auditing only, granted on /storage.
    let (code, body) =
        admin.post("/access/roles", &json!({"roleid": "StorageWatch", "privs": "Datastore.Audit,Bogus"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("privs")), "{body}");
    assert_eq!(admin.post("/access/roles", &json!({"roleid": "PVEAuditor"})).0, 409);
    assert_eq!(
        admin.post("/access/roles", &json!({"roleid": "StorageWatch", "privs": "Datastore.Audit"})).0,
        200
    );
    assert_eq!(put_acl(json!({"path": "/storage", "role": "StorageWatch", "user": "bob@pve"})).0, 200);
    assert_eq!(as_(&full, "GET", "/storage"), 200);
    let (_, roles) = admin.get("/access/roles");
    let mine = roles.as_array().unwrap().iter().find(|r| r["roleid"] == "StorageWatch").cloned().unwrap();
    assert_eq!((mine["privs"].as_str(), mine["special"].as_bool()), (Some("Datastore.Audit"), Some(false)));
    // Deleting the role takes its grants away.
    assert_eq!(admin.delete("/access/roles/StorageWatch").0, 200);
    // Storages are listed to anyone, each only to who may audit it: PVEVMUser sees none.
    let (code, seen) = admin.request("GET", "/storage", Some(&full), &json!({}));
    assert_eq!((code, seen), (200, json!([])));
    assert_eq!(admin.delete("/access/roles/PVEAdmin").0, 400);
    // A disabled user's tokens stop working; enabling it again restores them.
    let put = |p: &str, v: Value| admin.request("PUT", p, Some(admin.token()), &v).0;
    assert_eq!(put("/access/users/bob@pve", json!({"enable": false, "comment": "on leave"})), 200);
    assert_eq!(as_(&full, "GET", "/vms"), 401);
    let (_, bob) = admin.get("/access/users/bob@pve");
    assert_eq!((bob["enable"].as_bool(), bob["comment"].as_str()), (Some(false), Some("on leave")), "{bob}");
    assert_eq!(bob["tokens"].as_array().map(Vec::len), Some(2), "{bob}");
    assert_eq!(put("/access/users/bob@pve", json!({"enable": true})), 200);
    assert_eq!(as_(&full, "GET", "/vms"), 200);
    assert_eq!(put("/access/users/bob@pve", json!({"groups": ["nope"]})), 400);
    // Deleting a token ends it.
    assert_eq!(admin.delete("/access/users/bob@pve/token/sep").0, 200);
    assert_eq!(as_(&sep, "GET", "/vms"), 401);
    assert_eq!(admin.get("/access/users/bob@pve/token/sep").0, 404);
    // Deleting the group takes its members' grants away.
    assert_eq!(admin.delete("/access/groups/ops").0, 200);
    assert_eq!(as_(&full, "GET", "/vms"), 403);
    // Deleting the user kills its tokens and entries.
    assert_eq!(admin.delete("/access/users/bob@pve").0, 200);
    assert_eq!(as_(&full, "GET", "/vms"), 401);
    let (_, acl) = admin.get("/access/acl");
    assert!(!acl.to_string().contains("bob@pve"), "{acl}");
    assert_eq!(admin.delete("/access/users/root@pam").0, 409);
    let (code, body) = admin.post("/access/users", &json!({"userid": "eve@ldap"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("userid")), "{body}");
}

#[test]
fn password_login_tickets_csrf_renewal_and_throttling() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_LOGIN_WINDOW_S", "3")]);
    let admin = d.client();
    assert_eq!(admin.post("/access/users", &json!({"userid": "dave@pve"})).0, 200);
    let put = |v: Value| admin.request("PUT", "/access/password", Some(admin.token()), &v);
    let (code, body) = put(json!({"userid": "dave@pve", "password": "short"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("password")));
    let (code, body) = put(json!({"userid": "root@pam", "password": "long enough pw"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("userid")), "{body}");
    assert_eq!(put(json!({"userid": "dave@pve", "password": "correct horse"})).0, 200);
    // The hash is replicated, never the password.
    let (_, users) = admin.get("/access/users");
    assert!(!users.to_string().contains("correct horse"));

    let login =
        |pw: &str| admin.raw("POST", "/access/ticket", &[], &json!({"username": "dave@pve", "password": pw}));
    let (code, body, _) = login("wrong password");
    assert_eq!(code, 401, "{body}");
    let (code, _, _) =
        admin.raw("POST", "/access/ticket", &[], &json!({"username": "nobody@pve", "password": "x"}));
    assert_eq!(code, 401);
    let (code, t, cookie) = login("correct horse");
    assert_eq!(code, 200, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let csrf = t["CSRFPreventionToken"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("PVE:dave@pve:"), "{ticket}");
    assert!(cookie.starts_with("PVEAuthCookie="), "{cookie}");
    let cookie_hdr = format!("PVEAuthCookie={ticket}");
    // GET with the cookie alone; a write needs the CSRF token as well.
    let (code, perms, _) = admin.raw("GET", "/access/permissions", &[("Cookie", &cookie_hdr)], &json!({}));
    assert_eq!(code, 200, "{perms}");
    let (code, body, _) = admin.raw("POST", "/vms", &[("Cookie", &cookie_hdr)], &json!({}));
    assert_eq!(code, 401, "{body}");
    assert!(body.to_string().contains("CSRF"), "{body}");
    let with_csrf = [("Cookie", cookie_hdr.as_str()), ("CSRFPreventionToken", csrf.as_str())];
    let (code, body, _) = admin.raw("POST", "/vms", &with_csrf, &json!({}));
    assert_eq!(code, 403, "authenticated, but dave holds no privilege: {body}");
    // Telmate's header form works too; a forged ticket does not.
    let auth_hdr = format!("PVEAuthCookie={ticket}");
    assert_eq!(admin.raw("GET", "/access/permissions", &[("Authorization", &auth_hdr)], &json!({})).0, 200);
    let last = if ticket.ends_with('0') { '1' } else { '0' };
    let forged = format!("PVEAuthCookie={}{last}", &ticket[..ticket.len() - 1]);
    assert_eq!(admin.raw("GET", "/access/permissions", &[("Cookie", &forged)], &json!({})).0, 401);
    // Renewal: the ticket stands for the password.
    let (code, renewed, _) = login(&ticket);
    assert_eq!(code, 200, "{renewed}");
    // Logout clears the HttpOnly cookie (which no script can); the login form's realm list
    // is public, as Proxmox's.
    let (code, _, cleared) = admin.raw("DELETE", "/access/ticket", &[], &json!(null));
    assert_eq!(code, 200);
    assert!(cleared.starts_with("PVEAuthCookie=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let (code, realms, _) = admin.raw("GET", "/api2/json/access/domains", &[], &json!(null));
    assert_eq!(code, 200, "{realms}");
    let names: Vec<&str> =
        realms["data"].as_array().unwrap().iter().filter_map(|r| r["realm"].as_str()).collect();
    assert_eq!(&names[..2], &["pam", "pve"], "{realms}");
    assert!(realms["data"][0].get("server1").is_none(), "names and types only: {realms}");

    // Brute force: 20 wrong passwords in a row are throttled...
    let codes: Vec<u16> = (0..20).map(|_| login("guess").0).collect();
    assert!(codes.iter().filter(|c| **c == 429).count() >= 14, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    // ...so is the right one while the window lasts, and it works once it passed.
    assert_eq!(login("correct horse").0, 429);
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert_eq!(login("correct horse").0, 200);
    // Password spraying through /api2/json counts against the address too: many names,
    // one client.
    let spray: Vec<u16> = (0..24)
        .map(|i| {
            let body = json!({"username": format!("spray{i}@pve"), "password": "x"});
            admin.raw("POST", "/api2/json/access/ticket", &[], &body).0
        })
        .collect();
    assert!(spray[..20].iter().all(|c| *c == 401) && spray[20..].iter().all(|c| *c == 429), "{spray:?}");
    std::thread::sleep(std::time::Duration::from_millis(3200));

    // The audit log has the logins (both outcomes) and the mutating requests, with who.
    let (code, log) = admin.get("/access/audit?limit=1000");
    assert_eq!(code, 200, "{log}");
    let entries = log.as_array().unwrap();
    let has = |user: &str, action: &str, status: u64| {
        entries.iter().any(|e| e["user"] == user && e["action"] == action && e["status"] == status)
    };
    assert!(has("dave@pve", "login", 401) && has("dave@pve", "login", 200), "{log}");
    assert!(has("dave@pve", "login", 429), "{log}");
    assert!(has("root@pam!admin", "POST /api/v1/access/users", 200), "{log}");
    assert!(has("dave@pve", "POST /api/v1/vms", 403), "{log}");
    assert!(entries.iter().all(|e| e["time"].as_u64().is_some()));
    assert!(!log.to_string().contains("correct horse"), "no password in the audit log");
    let (code, _, _) = admin.raw("GET", "/access/audit", &[("Cookie", &cookie_hdr)], &json!({}));
    assert_eq!(code, 403, "reading the audit log is privileged");
    // A password change ends the tickets issued before it, and their renewal.
    assert_eq!(put(json!({"userid": "dave@pve", "password": "battery staple"})).0, 200);
    let (code, _, _) = admin.raw("GET", "/access/permissions", &[("Cookie", &cookie_hdr)], &json!({}));
    assert_eq!(code, 401, "the old ticket died with the old password");
    assert_eq!(login(&ticket).0, 401);
    assert_eq!(login("battery staple").0, 200);
}

#[test]
fn second_factor_totp_and_recovery_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    assert_eq!(admin.post("/access/users", &json!({"userid": "erin@pve"})).0, 200);
    let pw = json!({"userid": "erin@pve", "password": "a long password"});
    assert_eq!(admin.request("PUT", "/access/password", Some(admin.token()), &pw).0, 200);
    let (code, enrol) = admin.post("/access/tfa/erin@pve", &json!({}));
    assert_eq!(code, 200, "{enrol}");
    assert!(enrol["uri"].as_str().unwrap().starts_with("otpauth://totp/Horcrux:erin@pve?secret="), "{enrol}");
    let secret = horcrux_core::totp::base32_decode(enrol["secret"].as_str().unwrap()).unwrap();
    let recovery: Vec<String> =
        enrol["recovery"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(recovery.len(), 8);
    let (_, users) = admin.get("/access/users");
    assert!(!users.to_string().contains(enrol["secret"].as_str().unwrap()), "secret leaked: {users}");
    assert_eq!(users[0]["tfa"], true);

    let step1 = || {
        let (code, t, _) = admin.raw(
            "POST",
            "/access/ticket",
            &[],
            &json!({"username": "erin@pve", "password": "a long password"}),
        );
        assert_eq!((code, t["NeedTFA"].as_i64()), (200, Some(1)), "{t}");
        t["ticket"].as_str().unwrap().to_string()
    };
    let step2 = |challenge: &str, answer: &str| {
        admin.raw(
            "POST",
            "/access/ticket",
            &[],
            &json!({"username": "erin@pve", "password": answer, "tfa-challenge": challenge}),
        )
    };
    let partial = step1();
    // The partial ticket is no ticket.
    let cookie = format!("PVEAuthCookie={partial}");
    assert_eq!(admin.raw("GET", "/access/permissions", &[("Cookie", &cookie)], &json!({})).0, 401);
    assert_eq!(step2(&partial, "totp:000000").0, 401);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let code =
        format!("{:06}", horcrux_core::totp::totp(&secret, now, 6, horcrux_core::totp::Algorithm::Sha1));
    let (status, full, _) = step2(&partial, &format!("totp:{code}"));
    assert_eq!(status, 200, "{full}");
    assert!(full["ticket"].as_str().unwrap().starts_with("PVE:erin@pve:"), "{full}");
    assert!(full["CSRFPreventionToken"].is_string());
    // The same code does not work twice.
    assert_eq!(step2(&step1(), &format!("totp:{code}")).0, 401);
    // A recovery code works once.
    assert_eq!(step2(&step1(), &format!("recovery:{}", recovery[3])).0, 200);
    assert_eq!(step2(&step1(), &format!("recovery:{}", recovery[3])).0, 401);
    // The same flow through /api2/json, as Proxmox clients drive it (form fields).
    let (code, t, _) = admin.raw(
        "POST",
        "/api2/json/access/ticket",
        &[],
        &json!({"username": "erin@pve", "password": "a long password"}),
    );
    assert_eq!((code, t["data"]["NeedTFA"].as_i64()), (200, Some(1)), "{t}");
    let challenge = t["data"]["ticket"].as_str().unwrap().to_string();
    let answer = json!({"username": "erin@pve", "password": format!("recovery:{}", recovery[5]), "tfa-challenge": challenge});
    let (code, t, _) = admin.raw("POST", "/api2/json/access/ticket", &[], &answer);
    assert_eq!(code, 200, "{t}");
    assert!(t["data"]["ticket"].as_str().unwrap().starts_with("PVE:erin@pve:"), "{t}");
    // The one-step form with a wrong code fails; without the factor nothing is issued.
    let (status, _, _) = admin.raw(
        "POST",
        "/access/ticket",
        &[],
        &json!({"username": "erin@pve", "password": "a long password", "otp": "123456"}),
    );
    assert_eq!(status, 401);
    // Removing the factor brings back the one-step login.
    assert_eq!(admin.delete("/access/tfa/erin@pve").0, 200);
    let (status, t, _) = admin.raw(
        "POST",
        "/access/ticket",
        &[],
        &json!({"username": "erin@pve", "password": "a long password"}),
    );
    assert_eq!(status, 200);
    assert!(t.get("NeedTFA").is_none(), "{t}");
}

/// The `pam` realm checks passwords with the host's real PAM stack (pam_unix here): a
/// Unix user created by the test logs in with its password, and not with another.
#[test]
fn pam_users_log_in_with_their_unix_password() {
    let name = format!("hxpam{}", std::process::id() % 100_000);
    let run = |cmd: &str, args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut c = std::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        if let Some(s) = stdin {
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        assert!(c.wait().unwrap().success(), "{cmd} {args:?}");
    };
    run("useradd", &["--no-create-home", "--shell", "/usr/sbin/nologin", &name], None);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("userdel").arg(&self.0).status();
        }
    }
    let _cleanup = Cleanup(name.clone());
    run("chpasswd", &[], Some(&format!("{name}:unix pass word\n")));

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    let userid = format!("{name}@pam");
    let login = |user: &str, pw: &str| {
        admin.raw("POST", "/access/ticket", &[], &json!({"username": user, "password": pw})).0
    };
    // Not yet a Horcrux user: refused even with the right password.
    assert_eq!(login(&userid, "unix pass word"), 401);
    assert_eq!(admin.post("/access/users", &json!({"userid": userid})).0, 200);
    assert_eq!(login(&userid, "wrong"), 401);
    let (code, t, _) =
        admin.raw("POST", "/access/ticket", &[], &json!({"username": userid, "password": "unix pass word"}));
    assert_eq!(code, 200, "{t}");
    assert!(t["ticket"].as_str().unwrap().starts_with(&format!("PVE:{userid}:")));
    // A password cannot be set here for a pam user.
    let pw = json!({"userid": userid, "password": "something else"});
    assert_eq!(admin.request("PUT", "/access/password", Some(admin.token()), &pw).0, 400);
}

/// An LDAP realm against a real OpenLDAP `slapd` started by the test: the right password
/// logs in, a wrong one, an empty one and an unknown user do not.
#[test]
fn ldap_realm_binds_and_searches_a_real_slapd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ldap");
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let conf = format!(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n{ad}pidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\n\
         moduleload back_mdb\ndatabase mdb\nsuffix \"dc=example,dc=org\"\nrootdn \"cn=admin,dc=example,dc=org\"\n\
         rootpw adminpw\ndirectory {d}/db\n",
        d = dir.display(),
        ad = AD_SCHEMA
    );
    std::fs::write(dir.join("slapd.conf"), conf).unwrap();
    let ldap_port = free_port();
    let url = format!("ldap://127.0.0.1:{ldap_port}/");
    let st = std::process::Command::new("/usr/sbin/slapd")
        .args(["-f", dir.join("slapd.conf").to_str().unwrap(), "-h", &url])
        .status()
        .expect("slapd (Debian slapd) must be installed: scripts/lab.sh installs it");
    assert!(st.success());
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _stop = Stop(dir.join("slapd.pid"));
    let ldif = "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
                dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n\n\
                dn: uid=alice,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: A\n\
                userPassword: alice ldap pw\n\n\
                dn: cn=Carol Jones,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nobjectClass: adAccount\n\
                cn: Carol Jones\nsn: Jones\nsAMAccountName: carol\nuserPrincipalName: carol@corp.example\n\
                userPassword: carol ad pw\n";
    std::fs::write(dir.join("data.ldif"), ldif).unwrap();
    let mut added = false;
    for _ in 0..50 {
        let st = std::process::Command::new("ldapadd")
            .args(["-x", "-H", &url, "-D", "cn=admin,dc=example,dc=org", "-w", "adminpw", "-f"])
            .arg(dir.join("data.ldif"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        if st.success() {
            added = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(added, "could not load the directory");

    let d = Daemon::start(tmp.path().join("hx").as_path(), free_port(), &[]);
    let admin = d.client();
    let realm = json!({"realm": "corp", "type": "ldap", "server1": "127.0.0.1", "port": ldap_port,
                       "base_dn": "ou=people,dc=example,dc=org", "user_attr": "uid"});
    assert_eq!(admin.post("/access/domains", &realm).0, 200);
    let (code, body) = admin
        .post("/access/domains", &json!({"realm": "bad", "type": "ldap", "server1": "x", "base_dn": "nodn"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("base_dn")), "{body}");
    assert_eq!(admin.post("/access/users", &json!({"userid": "alice@corp"})).0, 200);
    assert_eq!(admin.post("/access/users", &json!({"userid": "bob@corp"})).0, 200);
    let login = |user: &str, pw: &str| {
        admin.raw("POST", "/access/ticket", &[], &json!({"username": user, "password": pw})).0
    };
    assert_eq!(login("alice@corp", "alice ldap pw"), 200);
    assert_eq!(login("alice@corp", "wrong"), 401);
    assert_eq!(login("alice@corp", ""), 401, "an empty password is no unauthenticated bind");
    assert_eq!(login("bob@corp", "alice ldap pw"), 401, "bob is not in the directory");
    let (_, realms) = admin.get("/access/domains");
    assert!(realms.to_string().contains("\"corp\""), "{realms}");

    // An Active Directory realm: users found by sAMAccountName (or userPrincipalName
    // NAME@DOMAIN) through a service bind, then bound as.
    let ad = json!({"realm": "win", "type": "ad", "server1": "127.0.0.1", "port": ldap_port,
                    "domain": "corp.example", "base_dn": "ou=people,dc=example,dc=org",
                    "bind_dn": "cn=admin,dc=example,dc=org", "password": "adminpw"});
    assert_eq!(admin.post("/access/domains", &ad).0, 200);
    let no_domain = json!({"realm": "win2", "type": "ad", "server1": "h", "base_dn": "dc=x"});
    assert_eq!(admin.post("/access/domains", &no_domain).1["field"], "domain");
    assert_eq!(admin.post("/access/users", &json!({"userid": "carol@win"})).0, 200);
    assert_eq!(admin.post("/access/users", &json!({"userid": "jones@win"})).0, 200);
    assert_eq!(login("carol@win", "carol ad pw"), 200);
    assert_eq!(login("carol@win", "alice ldap pw"), 401);
    assert_eq!(login("jones@win", "carol ad pw"), 401, "the cn is no account name");
    let (_, realms) = admin.get("/access/domains");
    let win = realms.as_array().unwrap().iter().find(|r| r["realm"] == "win").cloned().unwrap();
    assert_eq!((win["type"].as_str(), win["user_attr"].as_str()), (Some("ad"), Some("sAMAccountName")));
    assert!(!realms.to_string().contains("adminpw"), "no bind password in the listing");
}

/// The two Active Directory attributes the AD realm searches by, for OpenLDAP.
const AD_SCHEMA: &str = "attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'sAMAccountName' EQUALITY caseIgnoreMatch \
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )\n\
    attributetype ( 1.3.6.1.4.1.99999.1.2 NAME 'userPrincipalName' EQUALITY caseIgnoreMatch \
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )\n\
    objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'adAccount' SUP top AUXILIARY MAY ( sAMAccountName $ userPrincipalName ) )\n";

#[test]
fn rights_on_a_pool_apply_to_its_members() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    assert_eq!(admin.post("/pools", &json!({"poolid": "team", "comment": "team A"})).0, 200);
    assert_eq!(admin.post("/pools", &json!({"poolid": "team"})).0, 409);
    assert_eq!(admin.post("/pools", &json!({"poolid": "bad pool"})).1["field"], "poolid");
    let vm = |vmid: u32, pool: Option<&str>| {
        let mut b = json!({"vmid": vmid, "name": format!("p{vmid}"), "memory_mib": 64});
        if let Some(p) = pool {
            b["pool"] = json!(p);
        }
        admin.post("/vms", &b)
    };
    assert_eq!(vm(100, Some("team")).0, 200);
    assert_eq!(vm(101, None).0, 200);
    let (code, body) = vm(102, Some("nowhere"));
    assert_eq!((code, body["field"].as_str()), (400, Some("pool")), "{body}");
    assert_eq!(admin.get("/vms/102").0, 404, "nothing created");
    assert_eq!(admin.post("/access/users", &json!({"userid": "carol@pve"})).0, 200);
    let (_, t) = admin.post("/access/users/carol@pve/token/t", &json!({"privsep": false}));
    let carol = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/pool/team", "role": "PVEVMUser", "user": "carol@pve"});
    assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    let as_carol = |m: &str, p: &str| admin.request(m, p, Some(&carol), &json!({})).0;
    assert_eq!(as_carol("GET", "/vms/100"), 200, "member of the pool");
    assert_eq!(as_carol("GET", "/vms/101"), 403, "not a member");
    let (_, pools) = admin.request("GET", "/pools", Some(&carol), &json!({}));
    assert_eq!(pools, json!([]), "PVEVMUser cannot audit the pool itself");
    // Moving 101 in extends carol's rights; out again removes them.
    let put = |v: Value| admin.request("PUT", "/pools/team", Some(admin.token()), &v).0;
    assert_eq!(put(json!({"vms": [101]})), 200);
    assert_eq!(as_carol("GET", "/vms/101"), 200);
    let (_, p) = admin.get("/pools/team");
    assert_eq!(p["vms"].as_array().map(Vec::len), Some(2), "{p}");
    assert_eq!(put(json!({"vms": [101], "delete": true})), 200);
    assert_eq!(as_carol("GET", "/vms/101"), 403);
    assert_eq!(put(json!({"vms": [999]})), 400);
    // A guest belongs to one pool at most; a pool with members cannot be deleted.
    assert_eq!(admin.post("/pools", &json!({"poolid": "other"})).0, 200);
    assert_eq!(admin.request("PUT", "/pools/other", Some(admin.token()), &json!({"vms": [100]})).0, 409);
    assert_eq!(admin.delete("/pools/team").0, 409);
    // Deleting the guest takes it out of its pool.
    assert_eq!(admin.delete("/vms/100").0, 200);
    let (_, p) = admin.get("/pools/team");
    assert_eq!(p["vms"], json!([]), "{p}");
    assert_eq!(admin.delete("/pools/team").0, 200);
    let (_, acl) = admin.get("/access/acl");
    assert!(!acl.to_string().contains("/pool/team"), "its ACL entries went with it: {acl}");
}

/// Host paths are not user input: a guest's kernel and initrd come from volumes the caller
/// may read; only root@pam names host files, and the answer to anyone else is the same
/// whether the file exists or not.
#[test]
fn guests_boot_from_volumes_the_caller_may_read_and_never_from_host_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let admin = d.client();
    let snippets = tmp.path().join("storage/local/snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    std::fs::write(snippets.join("vmlinuz"), b"not really a kernel").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", snippets.join("shadow")).unwrap();
    let ok = |(code, body): (u16, Value)| assert_eq!(code, 200, "{body}");
    ok(admin.post("/access/users", &json!({"userid": "vmadm@pve"})));
    ok(admin.request(
        "PUT",
        "/access/acl",
        Some(admin.token()),
        &json!({"path": "/", "role": "PVEVMAdmin", "user": "vmadm@pve"}),
    ));
    let (_, t) = admin.post("/access/users/vmadm@pve/token/t", &json!({"privsep": false}));
    let vmadm = t["value"].as_str().unwrap().to_string();
    let create = |tok: &str, vmid: u32, kernel: &str, initrd: Option<&str>| {
        let mut boot = json!({"kernel": kernel, "cmdline": "console=ttyS0"});
        if let Some(i) = initrd {
            boot["initrd"] = json!(i);
        }
        let body = json!({"vmid": vmid, "name": format!("b{vmid}"), "memory_mib": 64, "boot": boot});
        admin.request("POST", "/vms", Some(tok), &body)
    };
    // Any host path, existing or not: the same refusal.
    let (code, shadow) = create(&vmadm, 200, "/etc/shadow", None);
    assert_eq!(code, 403, "{shadow}");
    let (code, missing) = create(&vmadm, 200, "/no/such/file", None);
    assert_eq!(code, 403, "{missing}");
    assert_eq!(
        shadow.to_string().replace("/etc/shadow", "X"),
        missing.to_string().replace("/no/such/file", "X"),
        "no file-existence oracle"
    );
    let token_file = tmp.path().join("admin.token");
    let (code, body) = create(&vmadm, 200, "local:snippets/vmlinuz", Some(token_file.to_str().unwrap()));
    assert_eq!(
        (code, body["error"].as_str().map(|e| e.contains("boot.initrd"))),
        (403, Some(true)),
        "{body}"
    );
    assert_eq!(admin.get("/vms/200").0, 404, "nothing created");
    // A volume on a storage vmadm may use: created.
    ok(create(&vmadm, 201, "local:snippets/vmlinuz", None));
    let (code, body) = create(&vmadm, 202, "local:snippets/missing", None);
    assert_eq!((code, body["field"].as_str()), (400, Some("boot.kernel")), "{body}");
    let (code, body) = create(&vmadm, 202, "local:snippets/shadow", None);
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("boot.kernel")),
        "a link out of the storage: {body}"
    );
    let (code, body) = create(&vmadm, 202, "local:101/vm-101-disk-0.qcow2", None);
    assert_eq!((code, body["field"].as_str()), (400, Some("boot.kernel")), "{body}");
    // Without rights on the storage, not even a volume.
    ok(admin.post("/access/users", &json!({"userid": "nods@pve"})));
    ok(admin.post("/access/roles", &json!({"roleid": "VmOnly", "privs": "VM.Allocate,VM.Audit"})));
    ok(admin.request(
        "PUT",
        "/access/acl",
        Some(admin.token()),
        &json!({"path": "/vms", "role": "VmOnly", "user": "nods@pve"}),
    ));
    let (_, t) = admin.post("/access/users/nods@pve/token/t", &json!({"privsep": false}));
    let nods = t["value"].as_str().unwrap().to_string();
    let (code, body) = create(&nods, 203, "local:snippets/vmlinuz", None);
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/storage/local"), "{body}");
    // root@pam may name host files (and is told when one is missing).
    let root = admin.token().to_string();
    let (code, body) = create(&root, 204, "/no/such/file", None);
    assert_eq!((code, body["field"].as_str()), (400, Some("boot.kernel")), "{body}");
    ok(create(&root, 204, snippets.join("vmlinuz").to_str().unwrap(), None));
}
