//! The HTTPS API: the native `/api/v1` routes, bearer-token authentication, and the TLS
//! listener with a self-signed certificate generated on first start (as Proxmox does).

mod access_routes;
mod audit;
mod auth;
pub mod authz;
mod cluster_routes;
mod compat;
mod drain;
mod error;
mod forward;
mod host;
mod ldap;
pub mod login;
mod openapi;
mod pam;
mod pool_routes;
mod routes;
mod serve;
mod tail;
mod tls;
mod vm_config;
mod vm_power;

pub use auth::token_sha256;
pub use authz::{routes as access_rules, Check, RouteAccess};
pub use routes::{router, ApiState};
pub use serve::{serve, MAX_CONNS_PER_ADDR};
pub use tls::{keep_https_cert, load_or_create_tls, HttpsCert, TlsFiles};
