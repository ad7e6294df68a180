//! `StorageFleet`: one supervised `PoolActor` per configured storage that exists on this
//! node (`nodes`), in step with the replicated storage config. A pool actor activates its
//! storage (checks the mount, the pool, the volume group; makes its layout) and measures
//! it on start and every [`REFRESH`], and on demand; what it found is on the
//! [`StorageBoard`] the API answers `status` from, so a storage that hangs (a dead NFS
//! server) delays its own actor, never a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use horcrux_core::StoragePool;
use horcrux_drivers::{StoreUsage, VolumeStore};

use crate::guard::{catch, guarded};
use crate::port::{read, ClusterPort};
use crate::runtime::VolumeFactory;

/// How often each storage is re-activated and measured.
pub const REFRESH: Duration = Duration::from_secs(10);

/// What a pool actor last found of its storage on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// Not `disable`d in the config.
    pub enabled: bool,
    /// Activated and measured.
    pub active: bool,
    pub usage: Option<StoreUsage>,
    /// Why it is not active.
    pub error: Option<String>,
    /// The config revision this was measured under.
    pub revision: u64,
}

/// Each local storage's last status, by id.
pub type StorageBoard = Arc<Mutex<BTreeMap<String, PoolStatus>>>;

pub struct PoolActor {
    pool: StoragePool,
    store: Arc<dyn VolumeStore>,
    board: StorageBoard,
}

/// Activate and measure now; answers the new status.
#[derive(Message)]
#[rtype(result = "PoolStatus")]
pub struct Refresh;

impl PoolActor {
    fn new(pool: StoragePool, store: Arc<dyn VolumeStore>, board: StorageBoard) -> Self {
        Self { pool, store, board }
    }
}

/// Activates and measures `store` (unless disabled).
async fn probe(pool: &StoragePool, store: &dyn VolumeStore) -> PoolStatus {
    let enabled = !pool.config.disable;
    let mut st = PoolStatus { enabled, active: false, usage: None, error: None, revision: pool.revision };
    if !enabled {
        return st;
    }
    match store.activate().await {
        Err(e) => st.error = Some(e.to_string()),
        Ok(()) => match store.usage().await {
            Ok(u) => {
                st.active = true;
                st.usage = u;
            }
            Err(e) => st.error = Some(e.to_string()),
        },
    }
    st
}

impl Actor for PoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.address().do_send(Refresh);
        ctx.run_interval(REFRESH, |_, ctx| ctx.address().do_send(Refresh));
    }
}

impl actix::Supervised for PoolActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(storage = %self.pool.id, "storage actor restarting");
    }
}

impl Handler<Refresh> for PoolActor {
    type Result = ResponseActFuture<Self, PoolStatus>;

    fn handle(&mut self, _: Refresh, _: &mut Context<Self>) -> Self::Result {
        let (pool, store) = (self.pool.clone(), self.store.clone());
        let fut = catch(async move { probe(&pool, &*store).await });
        Box::pin(fut.into_actor(self).map(|r, act, ctx| {
            let st = match r {
                Ok(st) => st,
                Err(panic) => {
                    tracing::error!(storage = %act.pool.id, "storage probe panicked ({panic}); restarting the actor");
                    ctx.stop();
                    PoolStatus {
                        enabled: !act.pool.config.disable,
                        active: false,
                        usage: None,
                        error: Some(format!("internal error: {panic}")),
                        revision: act.pool.revision,
                    }
                }
            };
            if let Some(e) = &st.error {
                tracing::debug!(storage = %act.pool.id, "storage not active: {e}");
            }
            act.board.lock().unwrap_or_else(|p| p.into_inner()).insert(act.pool.id.clone(), st.clone());
            st
        }))
    }
}

pub struct StorageFleet {
    cluster: Arc<dyn ClusterPort>,
    volumes: VolumeFactory,
    board: StorageBoard,
    /// Each local storage's actor, with the config revision it was started with.
    pools: BTreeMap<String, (u64, Addr<PoolActor>)>,
}

/// Bring the set of pool actors in line with the config.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncPools;

/// Refresh storage `id` now (`None`: it is not configured on this node).
#[derive(Message)]
#[rtype(result = "Option<Addr<PoolActor>>")]
pub struct PoolOf(pub String);

impl StorageFleet {
    pub fn new(cluster: Arc<dyn ClusterPort>, volumes: VolumeFactory, board: StorageBoard) -> Self {
        Self { cluster, volumes, board, pools: BTreeMap::new() }
    }

    fn sync(&mut self) {
        let node = self.cluster.node_name().to_string();
        let wanted: BTreeMap<String, StoragePool> =
            read(&*self.cluster, |s| s.storages_on(&node).map(|p| (p.id.clone(), p.clone())).collect());
        self.pools.retain(|id, (rev, addr)| {
            let keep = wanted.get(id).is_some_and(|p| p.revision == *rev) && addr.connected();
            if !keep {
                // A changed config gets a new actor; the old one ends with its address.
                addr.do_send(Stop);
            }
            keep
        });
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        board.retain(|id, _| wanted.contains_key(id));
        drop(board);
        for (id, pool) in wanted {
            if self.pools.contains_key(&id) {
                continue;
            }
            let store = (self.volumes)(&pool);
            let board = self.board.clone();
            let rev = pool.revision;
            let addr = Supervisor::start(move |_| PoolActor::new(pool, store, board));
            self.pools.insert(id, (rev, addr));
        }
    }
}

/// End a pool actor for good (its storage was removed or reconfigured).
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for PoolActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // Stopping would make the supervisor restart it: terminate ends actor and supervisor.
        ctx.terminate();
    }
}

impl Actor for StorageFleet {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut applied = self.cluster.subscribe_guest_changes();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                while applied.changed().await.is_ok() && addr.connected() {
                    addr.do_send(SyncPools);
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(REFRESH, |_, ctx| ctx.address().do_send(SyncPools));
        ctx.address().do_send(SyncPools);
    }
}

impl actix::Supervised for StorageFleet {}

impl Handler<SyncPools> for StorageFleet {
    type Result = ();

    fn handle(&mut self, _: SyncPools, ctx: &mut Context<Self>) {
        guarded(self, ctx, "storage fleet", |act, _| act.sync());
    }
}

impl Handler<PoolOf> for StorageFleet {
    type Result = Option<Addr<PoolActor>>;

    fn handle(&mut self, msg: PoolOf, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, "storage fleet", |act, _| {
            act.sync();
            act.pools.get(&msg.0).map(|(_, a)| a.clone())
        })
        .flatten()
    }
}
