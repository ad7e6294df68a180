//! The HTTPS API: the native `/api/v1` routes, bearer-token authentication, and the TLS
//! listener with a self-signed certificate generated on first start (as Proxmox does).

mod access;
mod audit;
mod auth;
pub mod authz;
mod caller;
mod cluster;
mod console;
mod console_tickets;
mod drain;
mod error;
mod events;
mod forward;
mod ha;
mod nodes;
mod openapi;
mod pools;
mod pve;
mod routes;
mod serve;
mod state;
mod storage;
mod tail;
mod throttle;
mod tickets;
mod tls;
mod vms;
mod web;
mod webfiles;
mod ws;

pub use access::login;
pub use auth::token_sha256;
pub use authz::{routes as access_rules, Check, RouteAccess};
pub use routes::router;
pub use serve::{serve, MAX_CONNS_PER_ADDR};
pub use state::ApiState;
pub use tls::{keep_https_cert, load_or_create_tls, HttpsCert, TlsFiles};
pub use web::WebRoot;
