//! Open libSQL (Hrana) streams: the registry of every tenant's streams, their batons, and
//! their expiry. A stream lives across requests through its baton: random, MAC'd with a
//! per-process key, usable once, and bound to the tenant and the credential that opened it.
//! The HTTP side (`http::hrana`) opens, continues and closes streams through this registry;
//! the server's sweeper expires idle ones and over-long transactions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use parking_lot::Mutex;
use silo_tenant_runtime::TenantId;
use silo_tenant_runtime::hrana::{Session, SqlBudget};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Streams one tenant may have open at once, and all tenants together. Clients keep a few
/// (one per transaction in flight); each costs memory until it expires.
const MAX_STREAMS_PER_TENANT: usize = 128;
const MAX_STREAMS: usize = 20_000;
const STREAM_ID_LEN: usize = 16;
const MAC_LEN: usize = 32;

pub(crate) type StreamId = [u8; STREAM_ID_LEN];

/// The limit of open streams (of the tenant, or of the whole server) is reached.
#[derive(Debug)]
pub(crate) struct TooManyStreams;

/// How long streams live.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// A stream unused this long is closed (sqld: 10 s).
    pub idle: Duration,
    /// A transaction held open this long is rolled back and its stream closed: it holds
    /// the tenant's writer, which every other writer of the tenant waits for.
    pub transaction: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            idle: Duration::from_secs(10),
            transaction: Duration::from_secs(15),
        }
    }
}

/// The open streams of every tenant, in memory (a restart closes them all, as in sqld).
///
/// Locking: the registry mutex is held only for map operations, never while waiting for a
/// stream; a stream's own mutex is taken with `lock()` only on blocking threads, and never
/// while the registry mutex is held (scans under it use `try_lock`).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<StreamsInner>,
}

struct StreamsInner {
    key: [u8; 32],
    limits: StreamLimits,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    streams: HashMap<StreamId, Arc<StreamEntry>>,
    /// Streams per tenant, and the stored-SQL account they share.
    per_tenant: HashMap<TenantId, (usize, SqlBudget)>,
}

impl Registry {
    fn take(&mut self, id: &StreamId) -> Option<Arc<StreamEntry>> {
        let entry = self.streams.remove(id)?;
        if let Some((n, _)) = self.per_tenant.get_mut(&entry.tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&entry.tenant);
            }
        }
        entry.removed.store(true, Ordering::Relaxed);
        Some(entry)
    }
}

pub(crate) struct StreamEntry {
    /// Whose stream it is: fixed at creation, readable without the lock.
    pub(crate) tenant: TenantId,
    /// Who opened it: the session of a user, or an API key.
    pub(crate) credential: String,
    /// The user behind that credential (an API key's creator).
    pub(crate) user: String,
    /// Out of the registry (closed, expired, or its tenant closed): its baton no longer
    /// works, and a request that already held it closes it.
    pub(crate) removed: AtomicBool,
    /// The stream holds a tenant connection (a transaction is open): its next request
    /// skips the tenant's concurrency gate, so that it can always finish the transaction
    /// that other requests of the tenant are waiting for.
    pub(crate) holds_connection: AtomicBool,
    /// Owned by a WebSocket connection: it lives as long as the connection (or until the
    /// client closes it), not until it idles; the transaction limit still holds.
    pub(crate) socket: bool,
    pub(crate) state: Mutex<StreamState>,
}

pub(crate) struct StreamState {
    /// The sequence number the next request's baton must carry: a baton works once.
    pub(crate) seq: u64,
    pub(crate) last_used: Instant,
    pub(crate) session: Session,
}

/// Why a baton is refused.
pub(crate) enum BatonError {
    Invalid,
    Expired,
    Reused,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams {
            inner: Arc::new(StreamsInner {
                key: silo_crypto::random_bytes(),
                limits,
                registry: Mutex::new(Registry::default()),
            }),
        }
    }

    fn registry(&self) -> parking_lot::MutexGuard<'_, Registry> {
        self.inner.registry.lock()
    }

    fn mac(&self, id: &[u8], seq: u64, tenant: TenantId, credential: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.inner.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(id);
        mac.update(&seq.to_be_bytes());
        mac.update(tenant.hex().as_str().as_bytes());
        mac.update(&[0]);
        mac.update(credential.as_bytes());
        mac
    }

    pub(crate) fn baton(
        &self,
        id: &StreamId,
        seq: u64,
        tenant: TenantId,
        credential: &str,
    ) -> String {
        let tag = self
            .mac(id, seq, tenant, credential)
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(STREAM_ID_LEN + 8 + MAC_LEN);
        raw.extend_from_slice(id);
        raw.extend_from_slice(&seq.to_be_bytes());
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The stream a baton names, and the sequence number it carries, if the baton was made
    /// by this process for this tenant and credential. Whether it is the stream's current
    /// baton is checked under the stream's lock, when the request runs.
    pub(crate) fn open(
        &self,
        baton: &str,
        tenant: TenantId,
        credential: &str,
    ) -> Result<(StreamId, Arc<StreamEntry>, u64), BatonError> {
        let raw = URL_SAFE_NO_PAD
            .decode(baton)
            .map_err(|_| BatonError::Invalid)?;
        if raw.len() != STREAM_ID_LEN + 8 + MAC_LEN {
            return Err(BatonError::Invalid);
        }
        let (id, rest) = raw.split_at(STREAM_ID_LEN);
        let (seq, tag) = rest.split_at(8);
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| BatonError::Invalid)?);
        // Constant-time: the MAC binds the baton to this tenant and this credential, so a
        // baton replayed with any other credential fails here.
        self.mac(id, seq, tenant, credential)
            .verify_slice(tag)
            .map_err(|_| BatonError::Invalid)?;
        let id: StreamId = id.try_into().map_err(|_| BatonError::Invalid)?;
        let entry = self
            .registry()
            .streams
            .get(&id)
            .cloned()
            .ok_or(BatonError::Expired)?;
        if entry.tenant != tenant || entry.credential != credential {
            return Err(BatonError::Invalid);
        }
        Ok((id, entry, seq))
    }

    pub(crate) fn create(
        &self,
        tenant: TenantId,
        credential: String,
        user: String,
    ) -> Result<(StreamId, Arc<StreamEntry>, u64), TooManyStreams> {
        self.insert(tenant, credential, user, false)
    }

    /// A stream of a WebSocket connection (see [`StreamEntry::socket`]): counted against
    /// the same limits, closed by the same revocations.
    pub(crate) fn create_for_socket(
        &self,
        tenant: TenantId,
        credential: String,
        user: String,
    ) -> Result<(StreamId, Arc<StreamEntry>), TooManyStreams> {
        self.insert(tenant, credential, user, true)
            .map(|(id, entry, _)| (id, entry))
    }

    fn insert(
        &self,
        tenant: TenantId,
        credential: String,
        user: String,
        socket: bool,
    ) -> Result<(StreamId, Arc<StreamEntry>, u64), TooManyStreams> {
        let mut registry = self.registry();
        let of_tenant = registry.per_tenant.get(&tenant).map_or(0, |(n, _)| *n);
        if of_tenant >= MAX_STREAMS_PER_TENANT || registry.streams.len() >= MAX_STREAMS {
            return Err(TooManyStreams);
        }
        let budget = {
            let (n, budget) = registry.per_tenant.entry(tenant).or_default();
            *n += 1;
            budget.clone()
        };
        let id: StreamId = silo_crypto::random_bytes();
        let seq = u64::from_be_bytes(silo_crypto::random_bytes());
        let entry = Arc::new(StreamEntry {
            tenant,
            credential,
            user,
            removed: AtomicBool::new(false),
            holds_connection: AtomicBool::new(false),
            socket,
            state: Mutex::new(StreamState {
                seq,
                last_used: Instant::now(),
                session: Session::new(budget),
            }),
        });
        registry.streams.insert(id, entry.clone());
        Ok((id, entry, seq))
    }

    pub(crate) fn remove(&self, id: &StreamId) -> Option<Arc<StreamEntry>> {
        self.registry().take(id)
    }

    /// Closes every stream of `tenant` (before its DB token changes or its data goes):
    /// open transactions roll back, and their batons answer STREAM_EXPIRED. Blocking: waits
    /// for a request running on one of them to finish.
    pub fn close_tenant(&self, tenant: TenantId) {
        self.close_where(|e| e.tenant == tenant);
    }

    /// Closes the streams a credential opened (a revoked API key, a session that logged
    /// out): a transaction one of them holds rolls back now, rather than keeping the
    /// tenant's writer until the stream expires. Blocking, as [`Streams::close_tenant`].
    pub fn close_credential(&self, tenant: TenantId, credential: &str) {
        self.close_where(|e| e.tenant == tenant && e.credential == credential);
    }

    /// Closes the streams of a user (removed from a tenant, or every session ended), in
    /// one tenant or, with `None`, in all; with `sessions_only`, those opened with an API
    /// key stay. Blocking.
    pub fn close_user(&self, tenant: Option<TenantId>, user: &str, sessions_only: bool) {
        self.close_where(|e| {
            e.user == user
                && tenant.is_none_or(|t| t == e.tenant)
                && (!sessions_only || e.credential.starts_with("session:"))
        });
    }

    fn close_where(&self, which: impl Fn(&StreamEntry) -> bool) {
        let gone: Vec<Arc<StreamEntry>> = {
            let mut registry = self.registry();
            let ids: Vec<StreamId> = registry
                .streams
                .iter()
                .filter(|(_, e)| which(e))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| registry.take(id)).collect()
        };
        for entry in gone {
            entry.state.lock().session.close();
            entry.holds_connection.store(false, Ordering::Relaxed);
        }
    }

    /// Closes streams idle past the limit, and rolls back transactions held past theirs.
    /// A stream in the middle of a request is left for the next sweep. Blocking: closing
    /// rolls back on the tenant's connection.
    pub fn sweep(&self) -> usize {
        let limits = self.inner.limits;
        let gone: Vec<Arc<StreamEntry>> = {
            let mut registry = self.registry();
            let expired: Vec<StreamId> = registry
                .streams
                .iter()
                .filter(|(_, e)| {
                    let Some(state) = e.state.try_lock() else {
                        return false;
                    };
                    (!e.socket && state.last_used.elapsed() > limits.idle)
                        || state
                            .session
                            .transaction_started()
                            .is_some_and(|t| t.elapsed() > limits.transaction)
                })
                .map(|(id, _)| *id)
                .collect();
            expired.iter().filter_map(|id| registry.take(id)).collect()
        };
        let n = gone.len();
        for entry in gone {
            // Never wait here: one busy stream must not hold up every other expiry. A
            // request that took it meanwhile sees `removed` and closes it itself.
            if let Some(mut s) = entry.state.try_lock() {
                if s.session.transaction_started().is_some() {
                    tracing::info!(tenant_id = %entry.tenant, "libSQL stream expired inside a transaction; rolled back");
                }
                s.session.close();
                entry.holds_connection.store(false, Ordering::Relaxed);
            }
        }
        metrics::gauge!("silo_hrana_streams_open").set(self.registry().streams.len() as f64);
        n
    }

    pub fn limits(&self) -> StreamLimits {
        self.inner.limits
    }
}
