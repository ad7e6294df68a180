//! High availability, the pure parts: Proxmox VE 9's HA rules and their feasibility
//! checks (`rules`), where a resource should run, with the reasons (`placement`), HA
//! resources and the cluster options (`resources`), the lease arithmetic (`lease`) and the
//! manager's decisions (`manager`). The daemon's side (lease renewals, the fence process,
//! the manager's loop) is in horcrux-raft, horcrux-drivers and horcrux-actors
//! (`docs/ha.md`).

pub mod lease;
pub mod manager;
pub mod placement;
pub mod resources;
pub mod rules;
