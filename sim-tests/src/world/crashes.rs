//! Nodes going down: a daemon crash (its guests keep running, to be adopted), a power loss
//! of one node (its disk keeps only what was durable, its guests die), a blackout of every
//! node at once, and a node whose Raft stopped on a storage error.

use super::*;

impl World {
    /// Kills node `id`. With `power_loss` the disk loses what it had not made durable (an
    /// append in progress) at that instant, and the host's guests die too; otherwise only
    /// the daemon dies and its guests keep running, to be adopted after the restart.
    pub(super) async fn crash(&mut self, id: NodeId, power_loss: bool) {
        self.router.0.lock().unwrap().rafts.remove(&id);
        self.proposers.lock().unwrap().remove(&id);
        // A power loss hits the disk at once; the daemon's tasks stop after.
        let lost = power_loss.then(|| self.nodes.get_mut(&id).unwrap().store.crash(true));
        let node = self.nodes.get_mut(&id).unwrap();
        node.proposer = None;
        node.port = None;
        if let Some(fleet) = node.fleet.take() {
            fleet.do_send(Shutdown);
        }
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.take()) {
            let _ = r.shutdown().await;
        }
        match lost {
            Some(lost) => {
                let killed = self.hosts.power_off(id);
                self.log(format!(
                    "power loss on n{id}: {lost} log entries not yet durable lost, guests {killed:?} killed"
                ));
            }
            None => {
                self.nodes.get_mut(&id).unwrap().store.crash(false);
                self.log(format!("crash n{id}"));
            }
        }
    }

    /// Every running node loses power at the same instant (a rack's feed fails): each
    /// disk keeps only what a sync covered, every guest dies. An acknowledged write must
    /// survive it: it was durable on a majority before the client heard of it.
    pub(super) async fn blackout(&mut self) {
        let ids = self.running();
        let mut lost = Vec::new();
        for id in &ids {
            self.router.0.lock().unwrap().rafts.remove(id);
            self.proposers.lock().unwrap().remove(id);
            lost.push(self.nodes.get_mut(id).unwrap().store.crash(true));
        }
        for id in &ids {
            let node = self.nodes.get_mut(id).unwrap();
            node.proposer = None;
            node.port = None;
            if let Some(fleet) = node.fleet.take() {
                fleet.do_send(Shutdown);
            }
            if let Some(r) = node.raft.take() {
                let _ = r.shutdown().await;
            }
            self.hosts.power_off(*id);
        }
        self.log(format!(
            "blackout: power loss on {ids:?} at once, log entries not yet durable lost {lost:?}"
        ));
    }

    /// A node whose Raft stopped by itself (a failed disk write is fatal to openraft) is
    /// taken down like a crashed one, to be restarted later.
    pub(super) async fn reap_failed(&mut self) {
        let failed: Vec<(NodeId, String)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                let state = n.raft.as_ref()?.metrics().borrow().running_state.clone();
                state.err().map(|e| (*id, e.to_string()))
            })
            .collect();
        for (id, why) in failed {
            self.log(format!("n{id} stopped on a storage error (disk failure): {}", short(&why)));
            self.crash(id, false).await;
        }
    }
}
