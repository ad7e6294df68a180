//! High availability, the pure parts: Proxmox VE 9's HA rules and their feasibility
//! checks (`rules`), and where a resource should run, with the reasons (`placement`).
//! The HA manager, leases and fencing that use them are being built (issue 13,
//! `docs/ha.md`).

pub mod placement;
pub mod rules;
