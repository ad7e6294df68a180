//! Membership churn in the workload: spare nodes join (learner, then voter if the voter
//! target allows) and members are removed, through the product's own membership code.

use super::*;

impl World {
    /// A node joins the way `horcrux serve --join` does after admission: it starts on an
    /// empty store, the leader adds it as a learner and promotes it if the voter target
    /// allows (`horcrux_raft::promote_when_caught_up`), and it registers its name.
    pub(super) async fn join_spare(&mut self, rng: &mut StdRng) {
        let spares: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| !n.member).map(|(id, _)| *id).collect();
        let (Some((leader, _)), false) = (self.leader(), spares.is_empty()) else { return };
        let id = spares[rng.gen_range(0..spares.len())];
        self.log(format!("join n{id}"));
        // A fresh data dir, as a (re)joining node must have.
        let store = self.new_store(id, self.cfg.seed ^ (id << 32) ^ rng.gen::<u64>());
        let node = self.nodes.get_mut(&id).unwrap();
        node.store = store;
        node.member = true;
        self.boot(id).await;
        let raft = self.nodes[&leader].raft.clone().expect("the leader runs");
        let added =
            tokio::time::timeout(Duration::from_secs(3), raft.add_learner(id, World::member(id), false))
                .await;
        match added {
            Ok(Ok(_)) => {
                self.log(format!("join n{id}: added as learner"));
                tokio::spawn(horcrux_raft::promote_when_caught_up(raft, id));
                let cmd = Command::RegisterNode { name: format!("n{id}"), api_addr: format!("sim:{id}") };
                if let Some(port) = self.nodes[&id].port.clone() {
                    let (trace, start) = (self.trace.clone(), self.start);
                    tokio::spawn(async move {
                        let line = match port.propose(cmd).await {
                            Ok(ok) => format!("register n{id}: committed at {}", ok.revision),
                            Err(e) => format!("register n{id}: failed: {}", short(&e.to_string())),
                        };
                        let t = start.elapsed().as_millis();
                        trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
                    });
                }
            }
            // It may still be added later; the end of the run asks the membership itself.
            Ok(Err(e)) => self.log(format!("join n{id}: failed: {}", short(&e.to_string()))),
            Err(_) => self.log(format!("join n{id}: timed out (indeterminate)")),
        }
    }

    /// `horcrux cluster remove-node`: refused while the node owns guests or is the last
    /// voter; otherwise the leader takes it out of the membership
    /// (`horcrux_raft::remove_from_membership`) and the node table, and the node stops.
    pub(super) async fn remove_member(&mut self, rng: &mut StdRng) {
        let Some((leader, _)) = self.leader() else { return };
        let raft = self.nodes[&leader].raft.clone().expect("the leader runs");
        let membership = raft.metrics().borrow().membership_config.membership().clone();
        let ids: Vec<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        // Mostly a joined spare (initial nodes usually own guests, which refuses removal).
        let spares: Vec<NodeId> = ids.iter().copied().filter(|id| *id > self.cfg.nodes).collect();
        let pool = if !spares.is_empty() && rng.gen_bool(0.7) { &spares } else { &ids };
        let id = pool[rng.gen_range(0..pool.len())];
        let name = format!("n{id}");
        self.log(format!("remove {name}"));
        // As `ClusterHandle::remove_member_here`: the node table first (refused there
        // while the node owns guests), then the membership.
        let port = self.nodes[&leader].port.clone().expect("the leader runs");
        if membership.voter_ids().count() == 1 && membership.voter_ids().any(|v| v == id) {
            return self.log(format!("remove {name}: refused: the last voter"));
        }
        match port.propose(Command::RemoveNode { name: name.clone() }).await {
            Ok(_) | Err(horcrux_raft::ProposeError::Rejected(horcrux_core::ApplyError::NotFound { .. })) => {}
            Err(e) => return self.log(format!("remove {name}: refused: {}", short(&e.to_string()))),
        }
        match tokio::time::timeout(Duration::from_secs(3), horcrux_raft::remove_from_membership(&raft, id))
            .await
        {
            Ok(Ok(())) => self.log(format!("remove {name}: out of the membership")),
            Ok(Err(e)) => return self.log(format!("remove {name}: failed: {}", short(&e))),
            Err(_) => return self.log(format!("remove {name}: timed out (indeterminate)")),
        }
        if self.nodes[&id].raft.is_some() {
            self.crash(id, false).await;
        }
        self.nodes.get_mut(&id).unwrap().member = false;
    }
}
