use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::access::{Actor, Ugid};
use crate::command::Request;
use crate::model::{GuestConfig, Tfa, VmSpec};
use crate::storage::StorageKind;

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3NCOVHLtlZVw8tSEDYLsTYtDQDfrGmsnXeJyrBxjVjc";
const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn sys(s: &mut ClusterState, cmd: Command) {
    let i = s.users.len() as u64 + s.acl.len() as u64 + 10;
    s.apply(i, &Request { ts_ms: 1, cmd: cmd.clone(), actor: None, id: None })
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
}

fn by(s: &mut ClusterState, actor: &Actor, cmd: Command) -> Result<(), ApplyError> {
    let before = s.clone();
    let r = s.apply(1000, &Request { ts_ms: 1, cmd, actor: Some(actor.clone()), id: None }).map(|_| ());
    if r.is_err() {
        assert_eq!(*s, before, "a refused command changed state");
    }
    r
}

fn forbidden(r: Result<(), ApplyError>) -> String {
    match r {
        Err(ApplyError::Forbidden { message }) => message,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

fn acl(path: &str, ugid: Ugid, role: &str) -> Command {
    Command::SetAcl { path: path.into(), ugid, role: role.into(), propagate: true, delete: false }
}

fn user(id: &str, groups: &[&str]) -> Command {
    Command::CreateUser {
        userid: id.into(),
        comment: String::new(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        expire: 0,
    }
}

fn group(id: &str) -> Command {
    Command::CreateGroup { groupid: id.into(), comment: String::new() }
}

/// admin@pve (Administrator on /, in group admins), mgr@pve (User.Modify and
/// Permissions.Modify on /access: a custom role), bob@pve (in group staff, PVEVMUser on
/// /vms).
fn office() -> ClusterState {
    let mut s = ClusterState::default();
    sys(&mut s, group("admins"));
    sys(&mut s, group("staff"));
    sys(&mut s, user("admin@pve", &["admins"]));
    sys(&mut s, user("mgr@pve", &[]));
    sys(&mut s, user("bob@pve", &["staff"]));
    let privs = ["User.Modify", "Permissions.Modify", "Sys.Audit"].map(String::from).into();
    sys(&mut s, Command::SetRole { roleid: "UserManager".into(), privs: Some(privs) });
    sys(&mut s, acl("/", Ugid::Group("admins".into()), "Administrator"));
    sys(&mut s, acl("/access", Ugid::User("mgr@pve".into()), "UserManager"));
    sys(&mut s, acl("/vms", Ugid::User("bob@pve".into()), "PVEVMUser"));
    s
}

fn token(id: &str, privsep: bool) -> Command {
    Command::SetApiToken { id: id.into(), secret_sha256: SHA.into(), privsep, expire: 0 }
}

#[test]
fn a_user_manager_cannot_mint_tokens_for_root_or_for_an_administrator() {
    let mut s = office();
    let mgr = Actor::user("mgr@pve");
    let m = forbidden(by(&mut s, &mgr, token("root@pam!x", false)));
    assert!(m.contains("only root@pam"), "{m}");
    let m = forbidden(by(&mut s, &mgr, token("admin@pve!x", false)));
    assert!(m.contains("admin@pve holds") && m.contains("on /"), "{m}");
    // A privilege-separated token is no way around it either.
    forbidden(by(&mut s, &mgr, token("admin@pve!x", true)));
    // bob holds nothing mgr lacks on /vms? PVEVMUser: mgr holds none of it.
    let m = forbidden(by(&mut s, &mgr, token("bob@pve!x", false)));
    assert!(m.contains("VM."), "{m}");
    // root@pam itself may; a user may mint its own.
    by(&mut s, &Actor::user("root@pam"), token("root@pam!x", false)).unwrap();
    by(&mut s, &Actor::user("bob@pve"), token("bob@pve!mine", false)).unwrap();
    // root@pam's privilege-separated token is not root.
    let rootsep = Actor { userid: "root@pam".into(), token: Some("root@pam!sep".into()), privsep: true };
    forbidden(by(&mut s, &rootsep, token("root@pam!y", false)));
}

#[test]
fn credentials_of_a_user_need_user_modify_on_its_group_and_all_its_rights() {
    let mut s = office();
    let mgr = Actor::user("mgr@pve");
    let pw = |u: &str| Command::SetPassword { userid: u.into(), password_hash: HASH.into() };
    forbidden(by(&mut s, &mgr, pw("admin@pve")));
    forbidden(by(&mut s, &mgr, Command::SetTfa { userid: "admin@pve".into(), tfa: None }));
    let disable = |u: &str| Command::UpdateUser {
        userid: u.into(),
        comment: None,
        email: None,
        groups: None,
        append: false,
        expire: None,
        enable: Some(false),
    };
    forbidden(by(&mut s, &mgr, disable("admin@pve")));
    forbidden(by(&mut s, &mgr, Command::DeleteUser { userid: "admin@pve".into() }));
    // A user with no more rights than mgr's: allowed.
    sys(&mut s, user("carol@pve", &["staff"]));
    by(&mut s, &mgr, pw("carol@pve")).unwrap();
    by(&mut s, &mgr, disable("carol@pve")).unwrap();
    by(&mut s, &mgr, token("carol@pve!t", true)).unwrap();
    // Own password: anyone. Another's: not without User.Modify.
    let bob = Actor::user("bob@pve");
    by(&mut s, &bob, pw("bob@pve")).unwrap();
    let m = forbidden(by(&mut s, &bob, pw("carol@pve")));
    assert!(m.contains("User.Modify on /access/groups/staff"), "{m}");
    // User.Modify on one group reaches that group's members only.
    sys(&mut s, user("gm@pve", &[]));
    let gm_role = ["User.Modify"].map(String::from).into();
    sys(&mut s, Command::SetRole { roleid: "GroupManager".into(), privs: Some(gm_role) });
    sys(&mut s, acl("/access/groups/staff", Ugid::User("gm@pve".into()), "GroupManager"));
    let gm = Actor::user("gm@pve");
    by(&mut s, &gm, pw("carol@pve")).unwrap();
    forbidden(by(&mut s, &gm, pw("mgr@pve")));
    // A privilege-separated token acts with the token's rights, not its user's.
    sys(&mut s, token("mgr@pve!sep", true));
    let sep = Actor { userid: "mgr@pve".into(), token: Some("mgr@pve!sep".into()), privsep: true };
    forbidden(by(&mut s, &sep, pw("carol@pve")));
    forbidden(by(&mut s, &sep, token("mgr@pve!full", false)));
}

#[test]
fn acl_changes_need_permissions_modify_on_the_path_and_cannot_grant_more() {
    let mut s = office();
    let mgr = Actor::user("mgr@pve");
    // Permissions.Modify on /access does not reach /.
    let m = forbidden(by(&mut s, &mgr, acl("/", Ugid::User("mgr@pve".into()), "Administrator")));
    assert!(m.contains("Permissions.Modify on /"), "{m}");
    // On /access it does, but only for privileges mgr holds there.
    let m = forbidden(by(&mut s, &mgr, acl("/access", Ugid::User("bob@pve".into()), "Administrator")));
    assert!(m.contains("would give bob@pve"), "{m}");
    by(&mut s, &mgr, acl("/access", Ugid::User("bob@pve".into()), "PVEAuditor")).unwrap_err();
    by(&mut s, &mgr, acl("/access", Ugid::User("bob@pve".into()), "UserManager")).unwrap();
    // Removing a NoAccess that shadowed a grant is a gain too.
    sys(&mut s, user("dave@pve", &["admins"]));
    sys(&mut s, acl("/vms", Ugid::User("dave@pve".into()), "NoAccess"));
    let pm = ["Permissions.Modify"].map(String::from).into();
    sys(&mut s, Command::SetRole { roleid: "PermMod".into(), privs: Some(pm) });
    sys(&mut s, acl("/vms", Ugid::User("mgr@pve".into()), "PermMod"));
    let undo = Command::SetAcl {
        path: "/vms".into(),
        ugid: Ugid::User("dave@pve".into()),
        role: "NoAccess".into(),
        propagate: true,
        delete: true,
    };
    forbidden(by(&mut s, &mgr, undo));
    // Joining a group is a gain; so is widening a role someone holds.
    let join = Command::UpdateUser {
        userid: "mgr@pve".into(),
        comment: None,
        email: None,
        groups: Some(vec!["admins".into()]),
        append: true,
        expire: None,
        enable: None,
    };
    let m = forbidden(by(&mut s, &mgr, join));
    assert!(m.contains("/access/groups/admins") || m.contains("would give"), "{m}");
    let widen = ["User.Modify", "Permissions.Modify", "Sys.Audit", "Sys.Modify"].map(String::from).into();
    forbidden(by(&mut s, &mgr, Command::SetRole { roleid: "UserManager".into(), privs: Some(widen) }));
    // An administrator may do all of it.
    let admin = Actor::user("admin@pve");
    by(&mut s, &admin, acl("/", Ugid::User("bob@pve".into()), "PVEAdmin")).unwrap();
}

#[test]
fn pool_members_count_as_paths() {
    let mut s = office();
    sys(&mut s, Command::RegisterNode { name: "n1".into(), api_addr: "x".into() });
    sys(&mut s, Command::AddStorage { id: "local".into(), kind: StorageKind::Dir { path: "/d".into() } });
    let guest = Command::CreateGuest {
        vmid: 100,
        name: "g".into(),
        node: "n1".into(),
        config: GuestConfig::Qemu(VmSpec { memory_mib: 64, cores: 1, ..Default::default() }),
        pool: None,
    };
    sys(&mut s, guest);
    sys(&mut s, Command::CreatePool { poolid: "p".into(), comment: String::new() });
    sys(&mut s, acl("/pool/p", Ugid::User("bob@pve".into()), "PVEVMAdmin"));
    let pa = ["Pool.Allocate"].map(String::from).into();
    sys(&mut s, Command::SetRole { roleid: "PoolAlloc".into(), privs: Some(pa) });
    sys(&mut s, acl("/", Ugid::User("mgr@pve".into()), "PoolAlloc"));
    let add = Command::UpdatePool {
        poolid: "p".into(),
        comment: None,
        vms: vec![100],
        storage: vec![],
        delete: false,
    };
    // Putting VM 100 in the pool would hand bob VM.Allocate on /vms/100.
    let m = forbidden(by(&mut s, &Actor::user("mgr@pve"), add.clone()));
    assert!(m.contains("/vms/100"), "{m}");
    by(&mut s, &Actor::user("admin@pve"), add).unwrap();
    assert!(s.user_privileges("bob@pve", "/vms/100").contains("VM.Allocate"));
    // Creating a guest into the pool is the same hand-over.
    sys(&mut s, user("carol@pve", &[]));
    let alloc = ["VM.Allocate"].map(String::from).into();
    sys(&mut s, Command::SetRole { roleid: "Creator".into(), privs: Some(alloc) });
    sys(&mut s, acl("/vms", Ugid::User("carol@pve".into()), "Creator"));
    let create = |vmid: u32, pool: Option<&str>| Command::CreateGuest {
        vmid,
        name: "g".into(),
        node: "n1".into(),
        config: GuestConfig::Qemu(VmSpec { memory_mib: 64, cores: 1, ..Default::default() }),
        pool: pool.map(String::from),
    };
    let carol = Actor::user("carol@pve");
    let m = forbidden(by(&mut s, &carol, create(101, Some("p"))));
    assert!(m.contains("bob@pve") && m.contains("/vms/101"), "{m}");
    by(&mut s, &carol, create(101, None)).unwrap();
    sys(&mut s, acl("/vms", Ugid::User("carol@pve".into()), "PVEVMAdmin"));
    by(&mut s, &carol, create(102, Some("p"))).unwrap();
}

#[test]
fn representative_paths_decide_every_path() {
    let s = office();
    let reps = s.representative_paths();
    for path in ["/vms/100", "/vms/7/x", "/storage/local", "/access/groups/x", "/nodes/n1", "/zz"] {
        // The longest prefix of `path` that is an ACL path; its "below" path answers alike.
        let mut prefix = "/".to_string();
        for r in &reps {
            let is_prefix = r == "/" || path == r || path.starts_with(&format!("{r}/"));
            if !r.contains(BELOW) && is_prefix && r.len() > prefix.len() {
                prefix = r.clone();
            }
        }
        let rep = if prefix == path {
            prefix
        } else if prefix == "/" {
            format!("/{BELOW}")
        } else {
            format!("{prefix}/{BELOW}")
        };
        for u in ["admin@pve", "mgr@pve", "bob@pve"] {
            assert_eq!(s.user_privileges(u, path), s.user_privileges(u, &rep), "{u} {path} vs {rep:?}");
        }
    }
}

/// A small deterministic PRNG (xorshift64*): the property test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

const USERS: &[&str] = &["u0@pve", "u1@pve", "u2@pve", "u3@pve", "u4@pve"];
const GROUPS: &[&str] = &["g0", "g1", "g2"];
const PATHS: &[&str] = &[
    "/",
    "/vms",
    "/vms/100",
    "/vms/101",
    "/storage",
    "/storage/local",
    "/access",
    "/access/groups",
    "/access/groups/g0",
    "/access/groups/g1",
    "/pool/p0",
];
/// Where the invariant is checked: the ACL paths and paths no entry names.
const CHECKED: &[&str] = &[
    "/",
    "/vms",
    "/vms/100",
    "/vms/101",
    "/vms/555",
    "/storage",
    "/storage/local",
    "/storage/other",
    "/access",
    "/access/groups",
    "/access/groups/g0",
    "/access/groups/g1",
    "/access/groups/g2",
    "/pool/p0",
    "/pool/p1",
    "/nodes/n1",
    "/zz/top",
];
const SMALL_PRIVS: &[&str] =
    &["User.Modify", "Permissions.Modify", "VM.Allocate", "VM.Audit", "Sys.Modify", "Pool.Allocate"];

fn roles() -> Vec<String> {
    let mut r: Vec<String> = ["Administrator", "NoAccess", "PVEAuditor", "PVEVMUser", "PVEAdmin"]
        .into_iter()
        .map(String::from)
        .collect();
    r.extend(["R0", "R1"].map(String::from));
    r
}

fn random_ugid(rng: &mut Rng, s: &ClusterState) -> Ugid {
    match rng.below(3) {
        0 => Ugid::User(rng.pick(USERS).to_string()),
        1 => Ugid::Group(rng.pick(GROUPS).to_string()),
        _ => {
            let tokens: Vec<&String> = s.api_tokens.keys().collect();
            if tokens.is_empty() {
                Ugid::User(rng.pick(USERS).to_string())
            } else {
                Ugid::Token(rng.pick(&tokens).to_string())
            }
        }
    }
}

fn random_privs(rng: &mut Rng) -> BTreeSet<String> {
    SMALL_PRIVS.iter().filter(|_| rng.below(3) == 0).map(|p| p.to_string()).collect()
}

fn random_groups(rng: &mut Rng) -> Vec<String> {
    GROUPS.iter().filter(|_| rng.below(3) == 0).map(|g| g.to_string()).collect()
}

fn random_state(rng: &mut Rng) -> ClusterState {
    let mut s = ClusterState::default();
    sys(&mut s, Command::RegisterNode { name: "n1".into(), api_addr: "x".into() });
    sys(&mut s, Command::AddStorage { id: "local".into(), kind: StorageKind::Dir { path: "/d".into() } });
    for vmid in [100, 101] {
        let config = GuestConfig::Qemu(VmSpec { memory_mib: 64, cores: 1, ..Default::default() });
        sys(&mut s, Command::CreateGuest { vmid, name: "g".into(), node: "n1".into(), config, pool: None });
    }
    sys(&mut s, Command::CreatePool { poolid: "p0".into(), comment: String::new() });
    for g in GROUPS {
        sys(&mut s, group(g));
    }
    for r in ["R0", "R1"] {
        sys(&mut s, Command::SetRole { roleid: r.into(), privs: Some(random_privs(rng)) });
    }
    for u in USERS {
        let groups: Vec<String> = random_groups(rng);
        let g: Vec<&str> = groups.iter().map(String::as_str).collect();
        sys(&mut s, user(u, &g));
        if rng.coin() {
            sys(&mut s, token(&format!("{u}!t"), rng.coin()));
        }
    }
    let roles = roles();
    for _ in 0..8 {
        let cmd = Command::SetAcl {
            path: rng.pick(PATHS).to_string(),
            ugid: random_ugid(rng, &s),
            role: rng.pick(&roles).clone(),
            propagate: rng.below(4) != 0,
            delete: false,
        };
        sys(&mut s, cmd);
    }
    s
}

fn random_actor(rng: &mut Rng, s: &ClusterState) -> Actor {
    let tokens: Vec<&crate::model::ApiToken> = s.api_tokens.values().collect();
    if !tokens.is_empty() && rng.below(4) == 0 {
        let t = rng.pick(&tokens);
        return Actor { userid: t.user().to_string(), token: Some(t.id.clone()), privsep: t.privsep };
    }
    let users: Vec<&String> = s.users.keys().collect();
    Actor::user(rng.pick(&users).as_str())
}

fn random_command(rng: &mut Rng, s: &ClusterState) -> Command {
    let target = rng.pick(USERS).to_string();
    let tokens: Vec<String> = s.api_tokens.keys().cloned().collect();
    match rng.below(11) {
        0..=2 => Command::SetAcl {
            path: rng.pick(PATHS).to_string(),
            ugid: random_ugid(rng, s),
            role: rng.pick(&roles()).clone(),
            propagate: rng.coin(),
            delete: rng.below(3) == 0,
        },
        3 => token(&format!("{target}!n{}", rng.below(2)), rng.coin()),
        4 => match tokens.is_empty() {
            true => Command::SetPassword { userid: target, password_hash: HASH.into() },
            false => Command::DeleteApiToken { id: rng.pick(&tokens).clone() },
        },
        5 => Command::SetPassword { userid: target, password_hash: HASH.into() },
        6 => Command::SetTfa {
            userid: target,
            tfa: Some(Tfa {
                totp_secret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into(),
                last_step: 0,
                recovery: vec![],
            }),
        },
        7 => Command::UpdateUser {
            userid: target,
            comment: None,
            email: None,
            groups: Some(random_groups(rng)),
            append: rng.coin(),
            expire: None,
            enable: Some(rng.below(4) != 0),
        },
        8 => match s.users.contains_key(&target) {
            true => Command::DeleteUser { userid: target },
            false => user(&target, &random_groups(rng).iter().map(String::as_str).collect::<Vec<_>>()),
        },
        9 => Command::SetRole { roleid: rng.pick(&["R0", "R1"]).to_string(), privs: Some(random_privs(rng)) },
        _ => Command::UpdatePool {
            poolid: "p0".into(),
            comment: None,
            vms: vec![*rng.pick(&[100, 101])],
            storage: if rng.coin() { vec!["local".into()] } else { vec![] },
            delete: rng.coin(),
        },
    }
}

/// Who can act as whom: the principal that set a user's password or second factor, or
/// minted a token, can act as that user (or token) from then on.
type Control = BTreeMap<Principal, BTreeSet<Principal>>;

fn principal_of(a: &Actor) -> Principal {
    match (&a.token, a.privsep) {
        (Some(t), true) => Principal { userid: a.userid.clone(), token: Some(t.clone()) },
        _ => Principal { userid: a.userid.clone(), token: None },
    }
}

/// Everything `who` can do on `path`, itself or through anyone it controls.
fn power(s: &ClusterState, control: &Control, who: &Principal, path: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([who.clone()]);
    let mut todo = vec![who.clone()];
    while let Some(p) = todo.pop() {
        for q in control.get(&p).into_iter().flatten() {
            if seen.insert(q.clone()) {
                todo.push(q.clone());
            }
        }
    }
    seen.iter().flat_map(|p| s.principal_privileges(p, path)).collect()
}

/// After every accepted change by any caller, nobody can do anything on any path that
/// they could not do before, unless the caller could do it there.
#[test]
fn no_accepted_change_lets_anyone_exceed_what_its_caller_held() {
    let mut accepted = 0;
    let mut refused = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut s = random_state(&mut rng);
        let mut control = Control::new();
        for step in 0..40 {
            let actor = random_actor(&mut rng, &s);
            let cmd = random_command(&mut rng, &s);
            let before = s.clone();
            let everyone: Vec<Principal> = before.principals().into_iter().chain(s.principals()).collect();
            let req = Request { ts_ms: 1, cmd: cmd.clone(), actor: Some(actor.clone()), id: None };
            if s.apply(2000 + step, &req).is_err() {
                assert_eq!(s, before, "seed {seed} step {step}: a refused command changed state");
                refused += 1;
                continue;
            }
            accepted += 1;
            let me = principal_of(&actor);
            let mut next_control = control.clone();
            match &cmd {
                Command::SetApiToken { id, privsep, .. } => {
                    let owner = id.split('!').next().unwrap_or_default().to_string();
                    let target = Principal { userid: owner, token: privsep.then(|| id.clone()) };
                    next_control.entry(me.clone()).or_default().insert(target);
                }
                Command::SetPassword { userid, .. } | Command::SetTfa { userid, .. } => {
                    let target = Principal { userid: userid.clone(), token: None };
                    next_control.entry(me.clone()).or_default().insert(target);
                }
                Command::DeleteUser { userid } => {
                    for v in next_control.values_mut() {
                        v.retain(|p| p.userid != *userid);
                    }
                }
                _ => {}
            }
            let all: BTreeSet<Principal> = everyone.into_iter().chain(s.principals()).collect();
            for path in CHECKED {
                let caller_had = power(&before, &control, &me, path);
                for x in &all {
                    let had = power(&before, &control, x, path);
                    let has = power(&s, &next_control, x, path);
                    let gained: Vec<&String> =
                        has.iter().filter(|p| !had.contains(*p) && !caller_had.contains(*p)).collect();
                    assert!(
                        gained.is_empty(),
                        "seed {seed} step {step}: {cmd:?} by {actor:?} gave {} {gained:?} on {path}",
                        x.name()
                    );
                }
            }
            control = next_control;
        }
    }
    // The test means something only if both outcomes are common.
    assert!(accepted > 1000 && refused > 1000, "accepted {accepted}, refused {refused}");
}
