//! LDAP realms: a user's entry is found by `user_attr` under `base_dn` (binding first as
//! `bind_dn` if the realm has one), then the password is checked by binding as that entry.

use std::time::Duration;

use horcrux_core::RealmConfig;
use ldap3::{ldap_escape, LdapConn, LdapConnSettings, Scope, SearchEntry};

/// Blocking; call it on a blocking thread. `Ok(false)`: wrong password or no such user.
pub fn authenticate(realm: &RealmConfig, name: &str, password: &str) -> Result<bool, String> {
    let RealmConfig::Ldap { server, port, base_dn, user_attr, bind_dn, bind_password, domain } = realm;
    // An empty password would be an unauthenticated bind, which LDAP servers accept.
    if password.is_empty() {
        return Ok(false);
    }
    let url = format!("ldap://{server}:{port}");
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let mut conn = LdapConn::with_settings(settings.clone(), &url).map_err(|e| format!("{url}: {e}"))?;
    if let Some(dn) = bind_dn {
        conn.simple_bind(dn, bind_password.as_deref().unwrap_or_default())
            .and_then(|r| r.success())
            .map_err(|e| format!("service bind as {dn}: {e}"))?;
    }
    let filter = match domain {
        // Active Directory: the account name or the user principal name.
        Some(d) => format!(
            "(|({}={})(userPrincipalName={}@{}))",
            user_attr,
            ldap_escape(name),
            ldap_escape(name),
            ldap_escape(d.as_str())
        ),
        None => format!("({}={})", user_attr, ldap_escape(name)),
    };
    let (entries, _) = conn
        .search(base_dn, Scope::Subtree, &filter, vec!["1.1"])
        .and_then(|r| r.success())
        .map_err(|e| format!("search {filter} under {base_dn}: {e}"))?;
    let _ = conn.unbind();
    let [entry] = entries.as_slice() else { return Ok(false) };
    let dn = SearchEntry::construct(entry.clone()).dn;
    let mut user = LdapConn::with_settings(settings, &url).map_err(|e| format!("{url}: {e}"))?;
    let ok = user.simple_bind(&dn, password).map(|r| r.rc == 0).unwrap_or(false);
    let _ = user.unbind();
    Ok(ok)
}
