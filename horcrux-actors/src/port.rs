//! `ClusterPort`: what the actors need of the cluster. Production passes the
//! `ClusterHandle`; the simulation passes its in-memory nodes, so the same actors run there.

use horcrux_core::{ApplyOk, ClusterState, Command};
use horcrux_drivers::BoxFuture;
use horcrux_raft::{ClusterHandle, ProposeError};
use tokio::sync::watch;

pub trait ClusterPort: Send + Sync + 'static {
    /// This node's name (guests name their owner by it).
    fn node_name(&self) -> &str;
    /// Runs `f` on this node's applied state.
    fn with_state(&self, f: &mut dyn FnMut(&ClusterState));
    /// Fires with the applied index whenever applied entries changed guests.
    fn subscribe_guest_changes(&self) -> watch::Receiver<u64>;
    /// Proposes a command on behalf of `actor` (an API caller; `None`: this daemon) and
    /// waits until it is committed and applied here. The state machine checks an
    /// access-relevant command (a guest created into a pool) against the actor.
    fn propose_as(
        &self,
        actor: Option<horcrux_core::access::Actor>,
        cmd: Command,
    ) -> BoxFuture<'static, Result<ApplyOk, ProposeError>>;
    /// `propose_as` for this daemon's own commands.
    fn propose(&self, cmd: Command) -> BoxFuture<'static, Result<ApplyOk, ProposeError>> {
        self.propose_as(None, cmd)
    }
    /// Returns once this node has applied every write committed before the call (a
    /// linearizable read barrier through the leader).
    fn read_barrier(&self) -> BoxFuture<'static, Result<(), ProposeError>>;
    /// Renews this node's HA lease through the leader; answers the leader's commit index
    /// at the grant (`horcrux_core::ha::lease::NodeLease`).
    fn renew_lease(&self) -> BoxFuture<'static, Result<u64, ProposeError>> {
        Box::pin(async { Err(ProposeError::Unavailable("this cluster has no HA leases".into())) })
    }
    /// As leader: the HA leases granted in the current term. `None`: not the leader.
    fn lease_table(&self) -> Option<horcrux_core::ha::lease::LeaseTable> {
        None
    }
    /// The log index this node has applied.
    fn applied_index(&self) -> u64 {
        0
    }
    /// This host's monotonic clock in milliseconds (what leases and the fence count in).
    fn monotonic_ms(&self) -> u64 {
        horcrux_raft::monotonic_ms()
    }
}

/// `f` applied to `port`'s state (the typed form of [`ClusterPort::with_state`]).
pub fn read<R>(port: &dyn ClusterPort, f: impl FnOnce(&ClusterState) -> R) -> R {
    let mut f = Some(f);
    let mut out = None;
    port.with_state(&mut |s| {
        if let Some(f) = f.take() {
            out = Some(f(s));
        }
    });
    out.expect("with_state calls its closure exactly once")
}

impl ClusterPort for ClusterHandle {
    fn node_name(&self) -> &str {
        ClusterHandle::node_name(self)
    }

    fn with_state(&self, f: &mut dyn FnMut(&ClusterState)) {
        self.read_local(|s| f(s))
    }

    fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
        ClusterHandle::subscribe_guest_changes(self)
    }

    fn propose_as(
        &self,
        actor: Option<horcrux_core::access::Actor>,
        cmd: Command,
    ) -> BoxFuture<'static, Result<ApplyOk, ProposeError>> {
        let h = self.clone();
        Box::pin(async move { ClusterHandle::propose_as(&h, actor, cmd).await })
    }

    fn read_barrier(&self) -> BoxFuture<'static, Result<(), ProposeError>> {
        let h = self.clone();
        Box::pin(async move { h.read_linearizable(|_| ()).await })
    }

    fn renew_lease(&self) -> BoxFuture<'static, Result<u64, ProposeError>> {
        let h = self.clone();
        Box::pin(async move { ClusterHandle::renew_lease(&h).await })
    }

    fn lease_table(&self) -> Option<horcrux_core::ha::lease::LeaseTable> {
        ClusterHandle::lease_table(self)
    }

    fn applied_index(&self) -> u64 {
        ClusterHandle::applied_index(self)
    }
}
