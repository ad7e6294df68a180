//! Applying the HA commands: resources and rules as the user configures them (checked as
//! Proxmox checks them), the manager's transitions (compare-and-set on the resource's
//! revision), and node facts.

use std::collections::BTreeSet;

use super::ClusterState;
use crate::command::{ApplyError, Command};
use crate::ha::resources::{self, HaResource, RequestedState, ServiceState, MAX_RETRIES};
use crate::ha::rules::{self, Rule, RuleKind};
use crate::ids::{self, ValidationError};
use crate::model::DesiredPower;

fn conflict(message: String) -> ApplyError {
    ApplyError::Conflict { message }
}

impl ClusterState {
    pub(super) fn apply_ha(&mut self, index: u64, ts_ms: u64, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
            Command::ReportNodeFacts { name, facts } => {
                let n = self
                    .nodes
                    .get_mut(name)
                    .ok_or_else(|| ApplyError::NotFound { what: format!("node {name}") })?;
                if facts.arch.is_empty() || facts.arch.len() > 32 || facts.emulates.len() > 64 {
                    return Err(ValidationError::new("arch", "1-32 characters, at most 64 emulators").into());
                }
                n.facts = facts.clone();
            }
            Command::SetHaResource { sid, create, state, max_restart, max_relocate, failback, comment } => {
                let sid = resources::normalize_sid("sid", sid)?;
                for (field, v) in [("max_restart", max_restart), ("max_relocate", max_relocate)] {
                    if *v > MAX_RETRIES {
                        return Err(ValidationError::new(field, format!("0 to {MAX_RETRIES}")).into());
                    }
                }
                if comment.len() > 4096 {
                    return Err(ValidationError::new("comment", "at most 4096 bytes").into());
                }
                let vmid = resources::vmid_of(&sid).ok_or_else(|| ValidationError::new("sid", "not a VM"))?;
                if !self.guests.contains_key(&vmid) {
                    return Err(ValidationError::new("sid", format!("guest {vmid} does not exist")).into());
                }
                match (self.ha_resources.get_mut(&sid), create) {
                    (Some(_), true) => {
                        return Err(conflict(format!("resource ID '{sid}' already defined")));
                    }
                    (None, false) => return Err(ApplyError::NotFound { what: format!("HA resource {sid}") }),
                    (Some(r), false) => {
                        r.state = *state;
                        r.max_restart = *max_restart;
                        r.max_relocate = *max_relocate;
                        r.failback = *failback;
                        r.comment = comment.clone();
                        r.revision = index;
                    }
                    (None, true) => {
                        // A guest already meant to run is `started` from the start.
                        let running = self.guests[&vmid].desired.is_running();
                        let service = if running { ServiceState::Started } else { ServiceState::Stopped };
                        self.ha_resources.insert(
                            sid.clone(),
                            HaResource {
                                sid: sid.clone(),
                                state: *state,
                                max_restart: *max_restart,
                                max_relocate: *max_relocate,
                                failback: *failback,
                                comment: comment.clone(),
                                service,
                                target: None,
                                failed_nodes: Vec::new(),
                                restarts: 0,
                                revision: index,
                            },
                        );
                    }
                }
            }
            Command::DeleteHaResource { sid } => {
                let sid = resources::normalize_sid("sid", sid)?;
                if self.ha_resources.remove(&sid).is_none() {
                    return Err(ApplyError::NotFound { what: format!("HA resource {sid}") });
                }
                // As Proxmox's purge: the resource leaves the rules; a rule left empty goes.
                for r in self.ha_rules.values_mut() {
                    r.resources.remove(&sid);
                }
                self.ha_rules.retain(|_, r| !r.resources.is_empty());
            }
            Command::SetHaRule { create, rule } => self.set_rule(*create, rule)?,
            Command::DeleteHaRule { rule } => {
                if self.ha_rules.remove(rule).is_none() {
                    return Err(ApplyError::NotFound { what: format!("HA rule {rule}") });
                }
            }
            Command::HaTransition { sid, expected_revision, service, node, run, failed_nodes, target } => {
                let r = self.ha_resource(sid)?;
                if r.revision != *expected_revision {
                    return Err(conflict(format!(
                        "HA resource {sid} changed: revision is {}, the transition expected {expected_revision}",
                        r.revision
                    )));
                }
                for n in node.iter().chain(target).chain(failed_nodes) {
                    if !self.nodes.contains_key(n) {
                        return Err(ValidationError::new("node", format!("unknown node {n:?}")).into());
                    }
                }
                let vmid = resources::vmid_of(sid).ok_or_else(|| ValidationError::new("sid", "not a VM"))?;
                let g = self.guest_mut(vmid)?;
                let moved = node.as_ref().is_some_and(|n| *n != g.node);
                let from_node = g.node.clone();
                if let Some(n) = node {
                    g.node = n.clone();
                }
                if let Some(run) = run {
                    g.desired = if *run {
                        DesiredPower::Running
                    } else {
                        DesiredPower::Stopped { graceful_timeout_s: None }
                    };
                }
                g.revision = index;
                let new_node = g.node.clone();
                let r = self.ha_resources.get_mut(sid).expect("checked above");
                if moved || r.service != *service {
                    r.restarts = 0;
                    let event = resources::HaEvent {
                        ts_ms,
                        index,
                        sid: sid.clone(),
                        from: r.service,
                        to: *service,
                        from_node,
                        node: new_node,
                    };
                    if self.ha_history.len() >= resources::HA_HISTORY {
                        self.ha_history.pop_front();
                    }
                    self.ha_history.push_back(event);
                }
                let r = self.ha_resources.get_mut(sid).expect("checked above");
                r.service = *service;
                r.failed_nodes = failed_nodes.clone();
                r.target = target.clone();
                r.revision = index;
            }
            Command::HaMove { sid, node, live: _ } => {
                let r = self.ha_resource(sid)?;
                if !self.nodes.contains_key(node) {
                    return Err(ValidationError::new("node", format!("unknown node {node:?}")).into());
                }
                let vmid = resources::vmid_of(sid).ok_or_else(|| ValidationError::new("sid", "not a VM"))?;
                let g = self.guest(vmid)?;
                if g.node == *node {
                    return Err(ValidationError::new("node", format!("{sid} is already on {node}")).into());
                }
                if !matches!(r.service, ServiceState::Started | ServiceState::Stopped) {
                    return Err(conflict(format!(
                        "{sid} is in state '{}'; it can move only when started or stopped",
                        r.service.as_str()
                    )));
                }
                if r.state == RequestedState::Ignored {
                    return Err(conflict(format!("{sid} is ignored by HA")));
                }
                if let Some(d) = g.vm_spec().disks.first() {
                    return Err(conflict(format!(
                        "{sid} has disks on node-local storage {}; it cannot move to {node}",
                        d.storage
                    )));
                }
                let running = g.desired.is_running();
                let g = self.guest_mut(vmid)?;
                g.revision = index;
                let r = self.ha_resources.get_mut(sid).expect("checked above");
                r.revision = index;
                if running {
                    // Stopped first; the owner moves it once its process is gone.
                    r.service = ServiceState::Relocate;
                    r.target = Some(node.clone());
                    let g = self.guest_mut(vmid)?;
                    g.desired = DesiredPower::Stopped { graceful_timeout_s: None };
                } else {
                    // Nothing runs: it moves at once.
                    let g = self.guest_mut(vmid)?;
                    g.node = node.clone();
                }
            }
            Command::HaStartFailed { sid, node } => {
                let r = self.ha_resource(sid)?;
                let vmid = resources::vmid_of(sid).ok_or_else(|| ValidationError::new("sid", "not a VM"))?;
                if self.guest(vmid)?.node != *node || r.service != ServiceState::Started {
                    return Err(conflict(format!("{sid} is no longer to start on {node}")));
                }
                let r = self.ha_resources.get_mut(sid).expect("checked above");
                r.restarts += 1;
                r.revision = index;
            }
            Command::SetArchitecture { create, arch } => {
                arch.validate()?;
                if crate::arch::is_builtin(&arch.name) {
                    return Err(ValidationError::new(
                        "name",
                        format!("{} is a built-in architecture", arch.name),
                    )
                    .into());
                }
                match (self.architectures.contains_key(&arch.name), create) {
                    (true, true) => {
                        return Err(conflict(format!("architecture {} already exists", arch.name)))
                    }
                    (false, false) => {
                        return Err(ApplyError::NotFound { what: format!("architecture {}", arch.name) })
                    }
                    _ => {}
                }
                if self.architectures.len() >= 256 && *create {
                    return Err(conflict("at most 256 registered architectures".into()));
                }
                self.architectures.insert(arch.name.clone(), arch.clone());
            }
            Command::DeleteArchitecture { name } => {
                if !self.architectures.contains_key(name) {
                    return Err(ApplyError::NotFound { what: format!("architecture {name}") });
                }
                if let Some(g) = self.guests.values().find(|g| g.vm_spec().arch.as_deref() == Some(name)) {
                    return Err(conflict(format!("guest {} uses architecture {name}", g.vmid)));
                }
                self.architectures.remove(name);
            }
            _ => unreachable!("apply_ha is called for HA commands only"),
        }
        Ok(())
    }

    fn ha_resource(&self, sid: &str) -> Result<&HaResource, ApplyError> {
        self.ha_resources.get(sid).ok_or_else(|| ApplyError::NotFound { what: format!("HA resource {sid}") })
    }

    /// A user started or stopped guest `vmid`: if it is an HA resource, that is now what it
    /// requests (`disabled` and `ignored` stay as they are, except that a start of a
    /// disabled one enables it, as `qm start` does in Proxmox).
    pub(super) fn ha_follow_power(&mut self, index: u64, vmid: u32, running: bool) {
        let Some(r) = self.ha_resources.get_mut(&resources::vm_sid(vmid)) else { return };
        let next = match (r.state, running) {
            (RequestedState::Ignored, _) => return,
            (_, true) => RequestedState::Started,
            (RequestedState::Disabled, false) => return,
            (_, false) => RequestedState::Stopped,
        };
        r.state = next;
        r.service = if running { ServiceState::Started } else { ServiceState::Stopped };
        r.revision = index;
    }

    fn set_rule(&mut self, create: bool, rule: &Rule) -> Result<(), ApplyError> {
        rules::validate_rule_id("rule", &rule.rule)?;
        if rule.resources.is_empty() {
            return Err(ValidationError::new("resources", "no resources were specified").into());
        }
        for sid in &rule.resources {
            rules::validate_sid("resources", sid)?;
        }
        if let RuleKind::NodeAffinity { nodes, .. } = &rule.kind {
            if nodes.is_empty() {
                return Err(ValidationError::new("nodes", "no nodes were specified").into());
            }
            for n in nodes.keys() {
                ids::validate_dns_label("nodes", n)?;
            }
        }
        if rule.comment.len() > 4096 {
            return Err(ValidationError::new("comment", "at most 4096 bytes").into());
        }
        match (self.ha_rules.get(&rule.rule), create) {
            (Some(_), true) => return Err(conflict(format!("HA rule '{}' already defined", rule.rule))),
            (None, false) => return Err(ApplyError::NotFound { what: format!("HA rule {}", rule.rule) }),
            (Some(old), false) if old.type_name() != rule.type_name() => {
                return Err(ValidationError::new("type", "the type of a rule cannot change").into())
            }
            _ => {}
        }
        let mut next = self.ha_rules.clone();
        next.insert(rule.rule.clone(), rule.clone());
        let all: Vec<Rule> = next.values().cloned().collect();
        let nodes: BTreeSet<String> = self.nodes.keys().cloned().collect();
        let problems = rules::check_feasibility(&all, &nodes);
        if let Some(list) = problems.get(&rule.rule) {
            let (field, msg) = list.first().cloned().unwrap_or_default();
            // Name the rules it conflicts with: the others reported that share a resource.
            let others: Vec<&str> = problems
                .keys()
                .filter(|id| **id != rule.rule)
                .filter(|id| next.get(*id).is_some_and(|o| !o.resources.is_disjoint(&rule.resources)))
                .map(String::as_str)
                .collect();
            let with = if others.is_empty() {
                String::new()
            } else {
                format!(" (conflicts with {})", others.join(", "))
            };
            return Err(
                ValidationError::new(field, format!("Rule '{}' is invalid: {msg}{with}", rule.rule)).into()
            );
        }
        self.ha_rules = next;
        Ok(())
    }
}
