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
}
