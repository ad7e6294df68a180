//! The guest side of the workload and its quiet-state check: guest operations through a
//! node's API path (create with or without a disk, power changes, delete, offline
//! migration) and where guests run versus where the state wants them.

use super::*;

impl World {
    /// A guest operation through node `via`'s API path: its port forwards to the leader,
    /// and a power change is then reconciled on the owner (as the API does by forwarding).
    pub(super) fn guest_op(&mut self, via: NodeId, rng: &mut StdRng) {
        let Some(port) = self.nodes[&via].port.clone() else { return };
        let roll = rng.gen_range(0..10);
        if roll == 9 && !self.vmids.is_empty() {
            let vmid = self.vmids[rng.gen_range(0..self.vmids.len())];
            let target = format!("n{}", rng.gen_range(1..=self.cfg.nodes));
            return self.migrate_op(via, vmid, target);
        }
        if roll < 2 && rng.gen_bool(0.5) {
            return self.create_with_disk(via);
        }
        let (what, cmd, power_of) = if roll < 3 || self.vmids.is_empty() {
            let vmid = 100 + self.vmids.len() as u32;
            self.vmids.push(vmid);
            let owner = rng.gen_range(1..=self.cfg.nodes);
            let config = GuestConfig::Qemu(VmSpec::default());
            let cmd = Command::CreateGuest {
                vmid,
                name: format!("g{vmid}"),
                node: format!("n{owner}"),
                config,
                pool: None,
            };
            (format!("create guest {vmid} on n{owner}"), cmd, None)
        } else {
            let vmid = self.vmids[rng.gen_range(0..self.vmids.len())];
            if roll < 8 {
                let graceful_timeout_s = rng.gen_bool(0.5).then_some(30);
                let desired = if rng.gen_bool(0.6) {
                    DesiredPower::Running
                } else {
                    DesiredPower::Stopped { graceful_timeout_s }
                };
                let word = if desired.is_running() { "running" } else { "stopped" };
                let cmd = Command::SetDesiredPower { vmid, expected_revision: None, desired };
                (format!("set guest {vmid} {word}"), cmd, Some(vmid))
            } else {
                (format!("delete guest {vmid}"), Command::DeleteGuest { vmid, expected_revision: None }, None)
            }
        };
        self.log(format!("{what} via n{via}"));
        let fleets: BTreeMap<String, (NodeId, Addr<GuestFleet>)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| Some((format!("n{id}"), (*id, n.fleet.clone()?))))
            .collect();
        let (trace, start, router) = (self.trace.clone(), self.start, self.router.clone());
        tokio::spawn(async move {
            let res = port.propose(cmd).await;
            let t = start.elapsed().as_millis();
            let line = match &res {
                Ok(ok) => format!("{what}: committed at {}", ok.revision),
                Err(horcrux_raft::ProposeError::Rejected(e)) => {
                    format!("{what}: refused: {}", short(&e.to_string()))
                }
                Err(e) => format!("{what}: failed: {}", short(&e.to_string())),
            };
            trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
            if let (Ok(_), Some(vmid)) = (res, power_of) {
                let owner = horcrux_actors::read(&*port, |s| s.guests.get(&vmid).map(|g| g.node.clone()));
                if let Some((id, fleet)) = owner.and_then(|o| fleets.get(&o)) {
                    if router.connected(via, *id) && router.connected(*id, via) {
                        fleet.do_send(ReconcileOne { vmid, task: None });
                    }
                }
            }
        });
    }

    /// `POST /vms` with a disk, on node `via` (which becomes the owner): the product's
    /// allocate, commit, clean-up sequence over `via`'s simulated storage.
    fn create_with_disk(&mut self, via: NodeId) {
        let Some(port) = self.nodes[&via].port.clone() else { return };
        let vmid = 100 + self.vmids.len() as u32;
        self.vmids.push(vmid);
        let what = format!("create guest {vmid} with a disk on n{via}");
        self.log(what.clone());
        let store = self.hosts.volume_store(via);
        let volumes: VolumeFactory = Arc::new(move |_| store.clone());
        let (trace, start) = (self.trace.clone(), self.start);
        let spec = VmSpec {
            memory_mib: 512,
            cores: 1,
            disks: vec![horcrux_core::DiskSpec {
                storage: "local".into(),
                size_mib: 64,
                volume: None,
                slot: None,
                format: None,
            }],
            ..Default::default()
        };
        tokio::spawn(async move {
            let pools = horcrux_actors::read(&*port, |s| s.storage.clone());
            let res = horcrux_actors::create_with_disks(
                &*port,
                &volumes,
                &pools,
                horcrux_actors::NewGuest {
                    vmid,
                    name: format!("g{vmid}"),
                    spec,
                    pool: None,
                    actor: None,
                    imports: Default::default(),
                },
                &|_| {},
            )
            .await;
            let line = match res {
                Ok(ok) => format!("{what}: committed at {}", ok.revision),
                Err(horcrux_actors::CreateError::Cluster(horcrux_raft::ProposeError::Rejected(e))) => {
                    format!("{what}: refused: {}", short(&e.to_string()))
                }
                Err(e) => format!("{what}: failed: {}", short(&e.to_string())),
            };
            let t = start.elapsed().as_millis();
            trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
        });
    }

    /// An offline migration asked of node `via`: forwarded to the owner, whose guest actor
    /// checks that QEMU is gone before committing (as the API does).
    fn migrate_op(&mut self, via: NodeId, vmid: u32, target: String) {
        let Some(port) = self.nodes[&via].port.clone() else { return };
        let what = format!("migrate guest {vmid} to {target}");
        self.log(format!("{what} via n{via}"));
        let (trace, start) = (self.trace.clone(), self.start);
        if self.cfg.bug == Bug::UncheckedMigrate {
            tokio::spawn(async move {
                let cmd = Command::MigrateGuest { vmid, expected_revision: None, target };
                let line = match port.propose(cmd).await {
                    Ok(ok) => format!("{what}: committed at {}", ok.revision),
                    Err(e) => format!("{what}: failed: {}", short(&e.to_string())),
                };
                let t = start.elapsed().as_millis();
                trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
            });
            return;
        }
        let owner = horcrux_actors::read(&*port, |s| s.guests.get(&vmid).map(|g| g.node.clone()));
        let owner_id: Option<NodeId> = owner.and_then(|o| o.trim_start_matches('n').parse().ok());
        let fleet = owner_id.filter(|o| self.router.connected(via, *o) && self.router.connected(*o, via));
        let Some(fleet) = fleet.and_then(|o| self.nodes[&o].fleet.clone()) else {
            self.log(format!("{what}: failed: owner unreachable"));
            return;
        };
        tokio::spawn(async move {
            let line = match fleet.send(MigrateOne { vmid, target }).await {
                Ok(Ok(rev)) => format!("{what}: committed at {rev}"),
                Ok(Err(horcrux_actors::RuntimeError::Cluster(horcrux_raft::ProposeError::Rejected(e)))) => {
                    format!("{what}: refused: {}", short(&e.to_string()))
                }
                Ok(Err(e)) => format!("{what}: failed: {}", short(&e.to_string())),
                Err(_) => format!("{what}: failed: owner's fleet gone"),
            };
            let t = start.elapsed().as_millis();
            trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
        });
    }

    /// Where guests run versus where the state wants them: `Err` names the first mismatch.
    /// Call when the cluster is quiet (converged, faults healed).
    pub(super) fn guest_placement(&self) -> Result<(), String> {
        let Some(member) = self.nodes.values().find(|n| n.member) else { return Ok(()) };
        let state = member.store.with_data(|d| d.state.clone());
        let placed = self.hosts.placements();
        for g in state.guests.values() {
            let owner: Option<NodeId> = g.node.trim_start_matches('n').parse().ok();
            for volid in g.vm_spec().disks.iter().filter_map(|d| d.volume.as_deref()) {
                if !owner.is_some_and(|o| self.hosts.has_volume(o, volid)) {
                    return Err(format!(
                        "guest {} lost its disk {volid} (not on its owner {})",
                        g.vmid, g.node
                    ));
                }
            }
            let want: BTreeSet<NodeId> = match g.desired {
                DesiredPower::Running => g.node.trim_start_matches('n').parse().into_iter().collect(),
                DesiredPower::Stopped { .. } => BTreeSet::new(),
            };
            let have = placed.get(&g.vmid).cloned().unwrap_or_default();
            if want != have {
                return Err(format!(
                    "guest {} (owner {}, desired {:?}) runs on {have:?}, expected {want:?}",
                    g.vmid, g.node, g.desired
                ));
            }
        }
        if let Some((vmid, on)) = placed.iter().find(|(v, _)| !state.guests.contains_key(v)) {
            return Err(format!("guest {vmid} was deleted but still runs on {on:?}"));
        }
        Ok(())
    }
}
