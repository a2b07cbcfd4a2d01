//! The bounded cache of open tenant handles.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::TenantId;
use crate::error::Result;
use crate::handle::{ExecLimits, TenantHandle};

/// Where local tenant databases live: `<dir>/<tenant-id>.db`. The file name comes from the
/// server-generated [`TenantId`] only, never from user input.
pub fn tenant_db_path(tenants_dir: &Path, tenant: TenantId) -> PathBuf {
    tenants_dir.join(format!("{tenant}.db"))
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most handles open at once. Each local handle costs ~3 file descriptors in WAL mode.
    pub max_handles: u64,
    /// A handle unused this long is closed.
    pub idle_timeout: Duration,
    pub limits: ExecLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_handles: 1_000,
            idle_timeout: Duration::from_secs(300),
            limits: ExecLimits::default(),
        }
    }
}

/// A cheap-to-clone store of open tenant handles, at most one cached per tenant.
///
/// Eviction (least recently used past `max_handles`, or idle past `idle_timeout`) drops the
/// cache's reference; the connection closes, checkpointing its WAL, when the last request
/// holding the handle finishes. Call every method from a blocking thread: opening and
/// closing databases do file I/O.
#[derive(Clone)]
pub struct TenantStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: moka::sync::Cache<TenantId, Arc<TenantHandle>>,
    config: StoreConfig,
}

impl TenantStore {
    pub fn new(config: StoreConfig) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_handles)
            .time_to_idle(config.idle_timeout)
            .eviction_listener(|tenant: Arc<TenantId>, _handle, cause: RemovalCause| {
                tracing::debug!(tenant_id = %tenant, ?cause, "tenant handle evicted");
            })
            .build();
        TenantStore {
            inner: Arc::new(Inner { cache, config }),
        }
    }

    pub fn limits(&self) -> &ExecLimits {
        &self.inner.config.limits
    }

    /// The tenant's handle, opened with `open` if it is not cached. Concurrent callers for
    /// the same tenant wait for one open instead of racing to open twice.
    pub fn get_or_open(
        &self,
        tenant: TenantId,
        open: impl FnOnce() -> Result<TenantHandle>,
    ) -> Result<Arc<TenantHandle>> {
        self.inner
            .cache
            .try_get_with(tenant, || open().map(Arc::new))
            // moka shares one open's error among every waiter.
            .map_err(Arc::unwrap_or_clone)
    }

    /// Closes the tenant's cached handle (after its DB token changed or it was deleted).
    pub fn evict(&self, tenant: TenantId) {
        self.inner.cache.invalidate(&tenant);
        self.inner.cache.run_pending_tasks();
    }

    /// Applies pending evictions (idle handles) now. The server calls this on a timer so
    /// idle handles close even without traffic.
    pub fn run_maintenance(&self) {
        self.inner.cache.run_pending_tasks();
    }

    /// Handles currently cached.
    pub fn open_handles(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }

    /// Drops every cached handle (on shutdown): each connection closes and checkpoints.
    pub fn close_all(&self) {
        self.inner.cache.invalidate_all();
        self.inner.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handle::open_keyed;
    use rusqlite::OpenFlags;
    use silo_crypto::DbToken;

    #[test]
    fn the_cache_is_bounded_and_reopens_evicted_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(StoreConfig {
            max_handles: 3,
            ..StoreConfig::default()
        });
        let tenants: Vec<(TenantId, DbToken)> = (0..10)
            .map(|_| {
                let t = TenantId::generate();
                let token = DbToken::generate();
                drop(
                    open_keyed(
                        &tenant_db_path(dir.path(), t),
                        &token,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
                    )
                    .unwrap(),
                );
                (t, token)
            })
            .collect();
        for _round in 0..2 {
            for (t, token) in &tenants {
                let h = store
                    .get_or_open(*t, || {
                        TenantHandle::open_local(
                            *t,
                            &tenant_db_path(dir.path(), *t),
                            token,
                            ExecLimits::default(),
                        )
                    })
                    .unwrap();
                assert_eq!(h.tenant(), *t);
            }
        }
        assert!(store.open_handles() <= 3, "{}", store.open_handles());
    }
}
