//! The bounded cache of open tenant handles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::TenantId;
use crate::error::Result;
use crate::handle::{ExecLimits, LiveSlot, TenantHandle};

/// Where local tenant databases live: `<dir>/<tenant-id>.db`. The file name comes from the
/// server-generated [`TenantId`] only, never from user input.
/// A handle's readers unused this long are closed by [`TenantStore::run_maintenance`].
pub const READER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

pub fn tenant_db_path(tenants_dir: &Path, tenant: TenantId) -> PathBuf {
    tenants_dir.join(format!("{tenant}.db"))
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most handles kept open in the cache. Each local handle costs ~3 file descriptors
    /// in WAL mode, plus 2 per reader.
    pub max_handles: u64,
    /// Most handles alive at once: the cache's, plus those evicted while a request or a
    /// libSQL transaction still held them. Past it, opening another tenant's database
    /// answers [`crate::RuntimeError::TooManyOpen`] instead of running out of file
    /// descriptors. At least `max_handles`; leave room above it (evictions are applied
    /// shortly after the insert that causes them).
    pub max_live: u64,
    /// A handle unused this long is closed.
    pub idle_timeout: Duration,
    pub limits: ExecLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_handles: 1_000,
            max_live: 1_100,
            idle_timeout: Duration::from_secs(300),
            limits: ExecLimits::default(),
        }
    }
}

/// A cheap-to-clone store of open tenant handles, at most one per tenant.
///
/// Eviction (least recently used past `max_handles`, or idle past `idle_timeout`) drops the
/// cache's reference only. A handle still in use (a running request, a libSQL stream in a
/// transaction) stays open and stays the tenant's one handle: the next request of that
/// tenant gets it back instead of opening a second one. It closes, checkpointing its WAL,
/// when its last user lets go. Committed writes are on disk either way (WAL with
/// `synchronous = FULL`): closing a handle never loses one.
///
/// Call every method from a blocking thread: opening and closing databases do file I/O.
#[derive(Clone)]
pub struct TenantStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: moka::sync::Cache<TenantId, Arc<TenantHandle>, foldhash::fast::RandomState>,
    /// Every handle that may still be alive, evicted or not. Dead entries are swept by
    /// [`TenantStore::run_maintenance`].
    live: Mutex<HashMap<TenantId, Weak<TenantHandle>>>,
    /// Handles alive now (each holds a [`LiveSlot`] until it closes).
    live_count: Arc<AtomicUsize>,
    /// `silo_tenant_handle_cache_hits_total`, counted on every request: held, not looked
    /// up in the recorder's registry each time (the recorder is installed before the store
    /// is made).
    hits: metrics::Counter,
    config: StoreConfig,
}

impl TenantStore {
    pub fn new(config: StoreConfig) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_handles)
            .time_to_idle(config.idle_timeout)
            .eviction_listener(|tenant: Arc<TenantId>, _handle, cause: RemovalCause| {
                if cause.was_evicted() {
                    let why = if cause == RemovalCause::Expired {
                        "idle"
                    } else {
                        "capacity"
                    };
                    metrics::counter!("silo_tenant_handle_evictions_total", "cause" => why)
                        .increment(1);
                }
                tracing::debug!(tenant_id = %tenant, ?cause, "tenant handle evicted");
            })
            // Seeded per process, and a fraction of SipHash's cost on every request.
            .build_with_hasher(Default::default());
        TenantStore {
            inner: Arc::new(Inner {
                cache,
                live: Mutex::new(HashMap::new()),
                live_count: Arc::new(AtomicUsize::new(0)),
                hits: metrics::counter!("silo_tenant_handle_cache_hits_total"),
                config,
            }),
        }
    }

    pub fn limits(&self) -> &ExecLimits {
        &self.inner.config.limits
    }

    pub fn max_handles(&self) -> u64 {
        self.inner.config.max_handles
    }

    /// The tenant's handle, opened with `open` if it is not open. Concurrent callers for
    /// the same tenant wait for one open instead of racing to open twice.
    pub fn get_or_open(
        &self,
        tenant: TenantId,
        open: impl FnOnce() -> Result<TenantHandle>,
    ) -> Result<Arc<TenantHandle>> {
        if let Some(handle) = self.inner.cache.get(&tenant) {
            self.inner.hits.increment(1);
            return Ok(handle);
        }
        let max_live = self
            .inner
            .config
            .max_live
            .max(self.inner.config.max_handles);
        if self.live_handles() as u64 >= max_live {
            self.make_room(max_live);
        }
        self.inner
            .cache
            .try_get_with(tenant, || {
                // Evicted but still in use: the same handle comes back into the cache.
                let alive = self.inner.live.lock().get(&tenant).and_then(Weak::upgrade);
                if let Some(handle) = alive {
                    self.inner.hits.increment(1);
                    return Ok(handle);
                }
                metrics::counter!("silo_tenant_handle_cache_misses_total").increment(1);
                let slot = LiveSlot::take(&self.inner.live_count, max_live).ok_or_else(|| {
                    metrics::counter!("silo_tenant_open_refusals_total").increment(1);
                    crate::RuntimeError::TooManyOpen
                })?;
                let started = std::time::Instant::now();
                let mut handle = open()?;
                handle.hold_slot(slot);
                let handle = Arc::new(handle);
                metrics::histogram!("silo_tenant_open_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.inner
                    .live
                    .lock()
                    .insert(tenant, Arc::downgrade(&handle));
                Ok(handle)
            })
            // moka shares one open's error among every waiter.
            .map_err(Arc::unwrap_or_clone)
    }

    /// At the limit of handles alive: applies the evictions the cache has decided but not
    /// yet carried out (it does so in batches), then closes a cached handle nobody is using
    /// (the cache evicts only when it is full, which a cache of handles held by libSQL
    /// transactions may never be), then gives requests finishing on evicted handles a
    /// moment to let go. Only if every handle alive is in use is the open refused.
    fn make_room(&self, max_live: u64) {
        const PATIENCE: Duration = Duration::from_millis(200);
        let started = std::time::Instant::now();
        loop {
            self.inner.cache.run_pending_tasks();
            if (self.live_handles() as u64) < max_live {
                return;
            }
            // The cache's reference and the iterator's clone: nobody else holds it.
            let idle = self
                .inner
                .cache
                .iter()
                .find(|(_, handle)| Arc::strong_count(handle) <= 2)
                .map(|(tenant, _)| *tenant);
            if let Some(tenant) = idle {
                self.inner.cache.invalidate(&tenant);
                continue;
            }
            if started.elapsed() >= PATIENCE {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The tenant's handle if it is open now; never opens one.
    pub fn get_open(&self, tenant: TenantId) -> Option<Arc<TenantHandle>> {
        let handle = self.inner.cache.get(&tenant)?;
        self.inner.hits.increment(1);
        Some(handle)
    }

    /// Forgets the tenant's handle (after its DB token changed or it was deleted): the next
    /// request opens a new one. Callers make sure nothing uses the old one any more.
    pub fn evict(&self, tenant: TenantId) {
        self.inner.cache.invalidate(&tenant);
        self.inner.live.lock().remove(&tenant);
        self.inner.cache.run_pending_tasks();
    }

    /// Applies pending evictions (idle handles) now, and closes readers unused for
    /// [`READER_IDLE`]. The server calls this on a timer so
    /// idle handles close even without traffic.
    pub fn run_maintenance(&self) {
        self.inner.cache.run_pending_tasks();
        // Readers of quiet tenants go back to the server's budget.
        let closed: usize = self
            .inner
            .cache
            .iter()
            .map(|(_, handle)| handle.close_idle_readers(READER_IDLE))
            .sum();
        if closed > 0 {
            metrics::counter!("silo_tenant_idle_readers_closed_total").increment(closed as u64);
        }
        self.inner.live.lock().retain(|_, h| h.strong_count() > 0);
        metrics::gauge!("silo_tenant_handles_open").set(self.live_handles() as f64);
    }

    /// Handles currently cached.
    pub fn open_handles(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }

    /// Handles alive now: cached, or evicted and still in use.
    pub fn live_handles(&self) -> usize {
        self.inner.live_count.load(Ordering::Acquire)
    }

    /// Drops every cached handle (on shutdown): each connection closes and checkpoints.
    pub fn close_all(&self) {
        self.inner.cache.invalidate_all();
        self.inner.cache.run_pending_tasks();
        self.inner.live.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handle::open_keyed;
    use rusqlite::OpenFlags;
    use silo_crypto::DbToken;

    /// `n` tenant databases in `dir`, created empty, with their DB tokens.
    fn tenants(dir: &Path, n: usize) -> Vec<(TenantId, DbToken)> {
        (0..n)
            .map(|_| {
                let t = TenantId::generate();
                let token = DbToken::generate();
                drop(
                    open_keyed(
                        &tenant_db_path(dir, t),
                        &token,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
                    )
                    .unwrap(),
                );
                (t, token)
            })
            .collect()
    }

    fn open_in(
        store: &TenantStore,
        dir: &Path,
        (t, token): &(TenantId, DbToken),
    ) -> Result<Arc<TenantHandle>> {
        store.get_or_open(*t, || {
            TenantHandle::open_local(*t, &tenant_db_path(dir, *t), token, ExecLimits::default())
        })
    }

    #[test]
    fn the_cache_is_bounded_and_reopens_evicted_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(StoreConfig {
            max_handles: 3,
            ..StoreConfig::default()
        });
        let tenants = tenants(dir.path(), 10);
        for _round in 0..2 {
            for tenant in &tenants {
                let h = open_in(&store, dir.path(), tenant).unwrap();
                assert_eq!(h.tenant(), tenant.0);
            }
        }
        assert!(store.open_handles() <= 3, "{}", store.open_handles());
    }

    #[test]
    fn handles_held_past_eviction_count_against_the_limit_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(StoreConfig {
            max_handles: 2,
            max_live: 3,
            ..StoreConfig::default()
        });
        let tenants = tenants(dir.path(), 6);
        let open = |i: usize| open_in(&store, dir.path(), &tenants[i]);
        // Three tenants held (say, by open transactions): the cache evicts one of them,
        // which stays alive, and a fourth database may not open.
        let held: Vec<_> = (0..3).map(|i| open(i).unwrap()).collect();
        store.run_maintenance();
        assert_eq!(store.live_handles(), 3);
        assert!(matches!(open(3), Err(crate::RuntimeError::TooManyOpen)));
        // A held tenant is still served: its handle is alive, nothing new opens.
        for (i, h) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(&open(i).unwrap(), h));
        }
        // Released: the evicted one closes, and the others may open again.
        drop(held);
        store.run_maintenance();
        store.run_maintenance();
        assert!(store.live_handles() <= 2, "{}", store.live_handles());
        for (i, (t, _)) in tenants.iter().enumerate().skip(3) {
            assert_eq!(open(i).unwrap().tenant(), *t);
        }
        assert!(store.live_handles() <= 3, "{}", store.live_handles());
    }

    #[test]
    fn an_idle_cached_handle_makes_room_when_held_ones_fill_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(StoreConfig {
            max_handles: 5,
            max_live: 6,
            ..StoreConfig::default()
        });
        let tenants = tenants(dir.path(), 8);
        let open = |i: usize| open_in(&store, dir.path(), &tenants[i]);
        // Three held (transactions), three opened and let go (idle in the cache).
        let held: Vec<_> = (0..3).map(|i| open(i).unwrap()).collect();
        for i in 3..6 {
            drop(open(i).unwrap());
        }
        store.run_maintenance();
        // Six alive (the cache of five evicted one; if a held one, it lives on): the limit.
        // Each newcomer gets the room of an idle handle.
        assert_eq!(open(6).unwrap().tenant(), tenants[6].0);
        assert_eq!(open(7).unwrap().tenant(), tenants[7].0);
        assert!(store.live_handles() <= 6, "{}", store.live_handles());
        drop(held);
    }
}
