//! The Raft node's own thread. openraft's core, its replication and state-machine tasks,
//! the proposer, the QUIC endpoint and the RPC server run on one current-thread tokio
//! runtime there, apart from the HTTP API's runtime: a write crosses several of these
//! tasks, and on the same thread each hand-over is a queue push rather than a wake-up of
//! another thread, and none of them waits behind HTTP work.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub(crate) struct RaftThread {
    handle: Handle,
    /// Dropped with this value, which ends the thread's `block_on`.
    _stop: oneshot::Sender<()>,
}

impl RaftThread {
    pub(crate) fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name("horcrux-raft".into()).spawn(move || {
            // Runs the spawned tasks until the owner is gone.
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_background();
        })?;
        Ok(Self { handle, _stop: stop })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` on the Raft thread and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.handle.spawn(fut).await
    }
}
