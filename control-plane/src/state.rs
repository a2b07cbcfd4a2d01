//! What every handler shares.

use std::sync::Arc;

use silo_crypto::{DbToken, EnvelopeContext, Keyring};
use silo_provisioner::Provisioner;
use silo_tenant_runtime::{RuntimeError, TenantHandle, TenantId, TenantStore};

use crate::auth::TokenKeys;
use crate::catalog::Catalog;
use crate::error::ApiError;

/// The purpose a DB token envelope is sealed for (part of its key derivation).
pub const DB_TOKEN_PURPOSE: &str = "db-token";

/// What every handler shares: one `Arc`, so a clone per request is one counter increment
/// (it was a dozen, and showed in profiles of the point-query path). Fields are reached
/// through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub catalog: Catalog,
    pub keyring: Arc<Keyring>,
    pub tokens: Arc<TokenKeys>,
    /// Open tenant databases. Only ever used from blocking threads.
    pub store: TenantStore,
    pub provisioner: Arc<Provisioner>,
    pub max_body_bytes: usize,
    pub gates: TenantGates,
    /// The fleet migration job, if one was started.
    pub jobs: crate::jobs::MigrationJobs,
    /// Tenants with an export under way (one at a time each).
    pub exports: crate::exports::ExportsInFlight,
    /// Grace period of a scheduled deletion.
    pub deletion_grace: std::time::Duration,
    /// Open libSQL (Hrana) streams.
    pub streams: crate::streams::Streams,
    /// Open WebSocket connections.
    pub sockets: crate::sockets::Sockets,
    /// API keys as the catalog last said, while nothing that could change them has been
    /// written since (sessions are kept with their access tokens, in `tokens`).
    pub credentials: Arc<crate::auth::CredentialCache>,
    /// The bearer token `GET /metrics` asks for, if one is configured.
    pub metrics_token: Option<secrecy::SecretString>,
    /// Log one line per request (`--access-log`).
    pub access_log: bool,
    /// Browser origins allowed to call the API (`--cors-origins`); empty: CORS off.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Per-address rate limits and the lockout audit bound.
    pub throttles: crate::throttle::Throttles,
    /// Who may create accounts.
    pub signup: SignupPolicy,
    /// Plans and their limits.
    pub plans: crate::plans::Plans,
    /// Each open tenant's request rate limiter (its plan's), set when its database opens.
    pub tenant_rates: TenantRates,
}

/// Per-tenant request rate limiters, by plan. A tenant without one (its database not open
/// yet) is not limited until it opens, which its first request does.
#[derive(Clone)]
pub struct TenantRates {
    /// The limiter and the rate it was made for.
    limiters: moka::sync::Cache<
        TenantId,
        Arc<(u32, governor::DefaultDirectRateLimiter)>,
        crate::FastHash,
    >,
}

impl Default for TenantRates {
    fn default() -> Self {
        TenantRates {
            limiters: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build_with_hasher(Default::default()),
        }
    }
}

impl TenantRates {
    /// Sets the tenant's limit (`None`: unlimited) when its database opens. A limiter of the
    /// same rate is kept (a reopened database does not refill the budget); a new one is
    /// charged for the request that opens the database, which came before it.
    pub fn set(&self, tenant: TenantId, per_minute: Option<std::num::NonZeroU32>) {
        let Some(n) = per_minute else {
            self.limiters.invalidate(&tenant);
            return;
        };
        if self.limiters.get(&tenant).is_some_and(|l| l.0 == n.get()) {
            return;
        }
        let limiter = governor::RateLimiter::direct(governor::Quota::per_minute(n));
        let _ = limiter.check();
        self.limiters.insert(tenant, Arc::new((n.get(), limiter)));
    }

    /// Drops the tenant's limiter (its plan changed): the next open sets the new one.
    pub fn forget(&self, tenant: TenantId) {
        self.limiters.invalidate(&tenant);
    }

    /// Takes one request from the tenant's budget, or 429 with the wait.
    pub fn charge(&self, tenant: TenantId) -> Result<(), ApiError> {
        use governor::clock::Clock as _;
        let Some(limiter) = self.limiters.get(&tenant) else {
            return Ok(());
        };
        limiter.1.check().map_err(|not_until| {
            ApiError::RateLimited(
                not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
            )
        })
    }
}

/// Who may create accounts (`--signup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SignupMode {
    /// Anyone.
    #[default]
    Open,
    /// `POST /v1/signup` is refused; people join by invitation.
    InviteOnly,
    /// No new accounts: invitations admit only people who have one.
    Closed,
}

/// Who may create accounts: `--signup` and `--signup-email-domains`.
#[derive(Debug, Clone, Default)]
pub struct SignupPolicy {
    pub mode: SignupMode,
    /// Lower-case domains a signup's email must be in; empty: any.
    pub email_domains: Vec<String>,
}

impl SignupPolicy {
    /// Whether a (normalised) email's domain may sign up.
    pub fn allows(&self, email: &str) -> bool {
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        self.email_domains.is_empty() || self.email_domains.iter().any(|d| d == domain)
    }
}

/// How long a query may run on an async thread before it is undone and sent to a blocking
/// thread (see `AppState::try_tenant_now`). Point queries take tens of microseconds.
pub(crate) const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

/// Overruns of the inline budget within a second that bar a tenant from inline execution.
/// More than one: on a busy machine a quick query is sometimes preempted past the budget,
/// and one such accident should not send a tenant's next second of queries to the blocking
/// pool. A tenant sending heavy queries strikes out after a few milliseconds.
const INLINE_STRIKES: u32 = 3;

/// Per-tenant concurrency limit: at most `permits` requests of one tenant hold a blocking
/// thread at once; more wait (without a thread) up to `queue_wait`, then get 429. So one
/// tenant's flood cannot take the blocking pool that every other tenant needs.
#[derive(Clone)]
pub struct TenantGates {
    gates: moka::sync::Cache<TenantId, Arc<tokio::sync::Semaphore>, crate::FastHash>,
    /// Inline overruns per tenant, counted for a second from the first: at
    /// [`INLINE_STRIKES`] the tenant is barred from inline execution until the count expires.
    inline_bar: moka::sync::Cache<TenantId, Arc<std::sync::atomic::AtomicU32>, crate::FastHash>,
    /// Entries in `inline_bar` (kept by its insertions and its removal listener): while it is
    /// zero, which is nearly always, a query needs no lookup there.
    struck_tenants: Arc<std::sync::atomic::AtomicI64>,
    permits: usize,
    queue_wait: std::time::Duration,
}

impl TenantGates {
    pub fn new(permits: usize, queue_wait: std::time::Duration) -> Self {
        let struck_tenants = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let removed = struck_tenants.clone();
        TenantGates {
            // Idle gates are dropped; a gate in use is kept alive by its permits' Arc.
            gates: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build_with_hasher(Default::default()),
            inline_bar: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(1))
                .eviction_listener(move |_, _, _| {
                    removed.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                })
                .build_with_hasher(Default::default()),
            struck_tenants,
            permits: permits.max(1),
            queue_wait,
        }
    }

    /// Every permit of the tenant: no request of it runs until the guard drops. For
    /// operations that need the database to themselves (DB token rotation).
    async fn enter_exclusive(
        &self,
        tenant: TenantId,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let gate = self.gates.get_with(tenant, || {
            Arc::new(tokio::sync::Semaphore::new(self.permits))
        });
        let permits = u32::try_from(self.permits).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.queue_wait * 4, gate.acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(ApiError::internal(anyhow::anyhow!("tenant gate closed"))),
            Err(_elapsed) => Err(ApiError::Busy(
                "the tenant stayed busy; retry the operation".to_owned(),
            )),
        }
    }

    /// The tenant's queries ran past the inline budget lately (see
    /// `AppState::try_tenant_now`).
    fn inline_barred(&self, tenant: TenantId) -> bool {
        if self
            .struck_tenants
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 0
        {
            return false;
        }
        self.inline_bar
            .get(&tenant)
            .is_some_and(|n| n.load(std::sync::atomic::Ordering::Relaxed) >= INLINE_STRIKES)
    }

    fn strike_inline(&self, tenant: TenantId) {
        metrics::counter!("silo_inline_overruns_total").increment(1);
        let entry = self.inline_bar.entry(tenant).or_default();
        if entry.is_fresh() {
            self.struck_tenants
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        entry
            .value()
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn enter(&self, tenant: TenantId) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.enter_for(tenant, self.queue_wait).await
    }

    /// One permit, waiting up to `wait`. Export and migrations hold one while they work on
    /// the tenant's file, so a DB token rotation (which takes every permit) excludes them.
    pub async fn enter_for(
        &self,
        tenant: TenantId,
        wait: std::time::Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let gate = self.gates.get_with(tenant, || {
            Arc::new(tokio::sync::Semaphore::new(self.permits))
        });
        match tokio::time::timeout(wait, gate.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(ApiError::internal(anyhow::anyhow!("tenant gate closed"))),
            Err(_elapsed) => {
                tracing::warn!(tenant_id = %tenant, "tenant over its concurrency limit");
                Err(ApiError::RateLimited(std::time::Duration::from_secs(1)))
            }
        }
    }
}

impl AppState {
    /// Seals a new tenant's DB token, bound to the tenant and its database id.
    pub fn seal_db_token(&self, tenant: TenantId, db_id: &str, token: &DbToken) -> Vec<u8> {
        let tenant = tenant.to_string();
        self.keyring.seal(
            EnvelopeContext {
                tenant: &tenant,
                purpose: DB_TOKEN_PURPOSE,
                binding: db_id,
            },
            token.expose_bytes(),
        )
    }

    /// Runs `f` with the tenant's own database handle, on a blocking thread, inside the
    /// caller's span. The handle is the cached one, or opened now with the tenant's DB token.
    pub async fn with_tenant<T, F>(&self, tenant: TenantId, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<TenantHandle>) -> Result<T, RuntimeError> + Send + 'static,
    {
        self.with_tenant_gated(tenant, true, f).await
    }

    /// [`AppState::with_tenant`], past the tenant's concurrency gate when `gated` is false:
    /// only for a libSQL stream that holds the tenant's writer in a transaction (at most one
    /// per tenant, each with one request at a time), which must be able to finish it.
    pub async fn with_tenant_gated<T, F>(
        &self,
        tenant: TenantId,
        gated: bool,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<TenantHandle>) -> Result<T, RuntimeError> + Send + 'static,
    {
        // A stream finishing its transaction is not charged: it must be able to finish.
        let permit = if gated {
            self.tenant_rates.charge(tenant)?;
            Some(self.gates.enter(tenant).await?)
        } else {
            None
        };
        let state = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            // Held until the blocking work ends, even if the request is dropped meanwhile.
            let _permit = permit;
            span.in_scope(|| {
                let handle = state
                    .store
                    .get_or_open(tenant, || state.open_handle(tenant))?;
                f(&handle).map_err(ApiError::from)
            })
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Runs `f` on the tenant's handle right here, on this async thread, if that is sure to
    /// be quick: a gate permit is free now and the handle is open (`f` itself runs only if
    /// a connection is free, within a budget of about a millisecond; see
    /// `TenantHandle::execute_now`). `None`: not run, use [`AppState::with_tenant`].
    /// Spares quick queries two thread hand-offs, which cost more than the query.
    pub fn try_tenant_now<T>(
        &self,
        tenant: TenantId,
        f: impl FnOnce(&Arc<TenantHandle>) -> Option<Result<T, RuntimeError>>,
    ) -> Option<Result<T, ApiError>> {
        // No gate permit: the gate guards the blocking pool, which this does not use. A
        // tenant whose queries overran the inline budget lately goes the usual, gated way
        // for a while, so a flood of heavy queries cannot spend async threads on tries.
        if self.gates.inline_barred(tenant) {
            return None;
        }
        let handle = self.store.get_open(tenant)?;
        let started = std::time::Instant::now();
        let out = f(&handle);
        if out.is_none() && started.elapsed() >= INLINE_BUDGET {
            self.gates.strike_inline(tenant);
        }
        // Charged once it ran (`None` goes on to `with_tenant`, which charges): past the
        // plan's rate the read's answer is dropped for a 429 (inline runs only reads).
        let out = out?;
        if let Err(e) = self.tenant_rates.charge(tenant) {
            return Some(Err(e));
        }
        Some(out.map_err(ApiError::from))
    }

    fn unseal(
        &self,
        tenant: TenantId,
        db_id: &str,
        sealed: &[u8],
    ) -> Result<DbToken, RuntimeError> {
        let tenant_text = tenant.to_string();
        let plain = self
            .keyring
            .open(
                EnvelopeContext {
                    tenant: &tenant_text,
                    purpose: DB_TOKEN_PURPOSE,
                    binding: db_id,
                },
                sealed,
            )
            .map_err(|e| {
                tracing::error!(tenant_id = %tenant, error = %e, "the stored DB token envelope does not open");
                RuntimeError::WrongKey
            })?;
        DbToken::from_secret_bytes(&plain).map_err(|_| RuntimeError::WrongKey)
    }

    /// Opens the tenant's database: unseal its DB token, key a new connection. If a token
    /// rotation was interrupted after the file was re-keyed, the recorded next token opens
    /// it, and the rotation is finished here. Blocking.
    fn open_handle(&self, tenant: TenantId) -> Result<TenantHandle, RuntimeError> {
        let (db_id, sealed, next) = self
            .catalog
            .db_tokens(tenant)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?
            .ok_or(RuntimeError::Missing)?;
        let path = self.provisioner.placement().path(tenant);
        let mut limits = self.store.limits().clone();
        let plan = self
            .catalog
            .tenant(tenant)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?
            .map(|t| t.plan)
            .unwrap_or_default();
        let plan = self.plans.limits(&plan);
        limits.max_db_bytes = plan.storage_bytes();
        self.tenant_rates
            .set(tenant, std::num::NonZeroU32::new(plan.requests_per_minute));
        let token = self.unseal(tenant, &db_id, &sealed)?;
        let mut handle = match TenantHandle::open_local(tenant, &path, &token, limits.clone()) {
            Err(RuntimeError::WrongKey) if next.is_some() => {
                let next = next.unwrap_or_default();
                let token = self.unseal(tenant, &db_id, &next)?;
                let handle = TenantHandle::open_local(tenant, &path, &token, limits)?;
                tracing::warn!(tenant_id = %tenant, "finishing an interrupted DB token rotation");
                self.catalog
                    .promote_next_db_token(tenant)
                    .map_err(|e| RuntimeError::Internal(e.to_string()))?;
                handle
            }
            other => other?,
        };
        // An older silo's bookkeeping tables, moved into the header as the database opened:
        // their checksums go where tenant migrations are recorded now.
        if let Some(legacy) = handle.take_legacy_bookkeeping() {
            let recorded: Vec<(u32, String, String)> = legacy.to_record().collect();
            tracing::info!(tenant_id = %tenant, version = legacy.version(), "moved silo's bookkeeping tables out of the tenant database");
            self.catalog
                .record_tenant_migrations(&recorded)
                .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        }
        Ok(handle)
    }

    /// Creates a tenant and its database: generates its id and DB token, seals the token,
    /// lets `record_intent` write the catalog rows (tenant in `provisioning`, plus anything
    /// that must be created with it), then provisions. All in one blocking task, so a client
    /// hanging up cannot stop it half-way; on failure the intent is rolled back.
    pub async fn provision_tenant<F>(&self, record_intent: F) -> Result<TenantId, ApiError>
    where
        F: FnOnce(&Catalog, TenantId, &str, &[u8]) -> Result<(), ApiError> + Send + 'static,
    {
        if crate::disk::pressure() {
            return Err(ApiError::StorageFull(
                "the server's disk is nearly full: new tenants are paused until the operator \
                 makes room"
                    .to_owned(),
            ));
        }
        let tenant = TenantId::generate();
        tracing::Span::current().record("tenant_id", tenant.hex().as_str());
        let db_id = hex::encode(silo_crypto::random_bytes::<16>());
        let token = DbToken::generate();
        let sealed = self.seal_db_token(tenant, &db_id, &token);
        let (provisioner, catalog) = (self.provisioner.clone(), self.catalog.clone());
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| -> Result<(), ApiError> {
                record_intent(&catalog, tenant, &db_id, &sealed)?;
                provisioner
                    .provision(&catalog, tenant, &token)
                    .map_err(ApiError::internal)
            })
        })
        .await
        .map_err(ApiError::internal)??;
        tracing::info!(tenant_id = %tenant, "tenant provisioned");
        Ok(tenant)
    }

    /// Re-keys the tenant's database with a new DB token. Crash-safe: the new token is stored
    /// (sealed) before the file changes, and promoted after; a crash in between is finished
    /// at the next open. No request of the tenant runs meanwhile.
    pub async fn rotate_db_token(&self, tenant: TenantId) -> Result<(), ApiError> {
        let _exclusive = self.gates.enter_exclusive(tenant).await?;
        let state = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| -> Result<(), ApiError> {
                let (db_id, sealed, next) = state
                    .catalog
                    .db_tokens(tenant)?
                    .ok_or_else(|| ApiError::NotFound("no such tenant".to_owned()))?;
                // The cached handle holds the file open with the old key: close it first.
                state.drop_connections(tenant);
                let old = state
                    .unseal(tenant, &db_id, &sealed)
                    .map_err(ApiError::from)?;
                let new = match next {
                    // An earlier rotation stopped half-way: finish with its token.
                    Some(n) => state.unseal(tenant, &db_id, &n).map_err(ApiError::from)?,
                    None => {
                        let new = DbToken::generate();
                        state.catalog.set_next_db_token(
                            tenant,
                            &state.seal_db_token(tenant, &db_id, &new),
                        )?;
                        new
                    }
                };
                state
                    .provisioner
                    .placement()
                    .rekey(tenant, &old, &new)
                    .map_err(ApiError::internal)?;
                state.catalog.promote_next_db_token(tenant)?;
                Ok(())
            })
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// The DB tokens on record for the tenant, the current one first, then the pending one of
    /// an interrupted rotation. Blocking.
    pub fn db_token_candidates(&self, tenant: TenantId) -> Result<Vec<DbToken>, RuntimeError> {
        let (db_id, sealed, next) = self
            .catalog
            .db_tokens(tenant)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?
            .ok_or(RuntimeError::Missing)?;
        let mut out = vec![self.unseal(tenant, &db_id, &sealed)?];
        if let Some(n) = next {
            out.push(self.unseal(tenant, &db_id, &n)?);
        }
        Ok(out)
    }

    /// What authenticating a request reads, borrowed from this state.
    pub fn authority(&self) -> crate::auth::Authority<'_> {
        crate::auth::Authority {
            tokens: &self.tokens,
            catalog: &self.catalog,
            credentials: &self.credentials,
        }
    }

    /// Appends an event to the audit log (its tenant's chain, or the platform's).
    pub async fn audit(&self, rec: crate::audit::AuditRecord) -> Result<(), ApiError> {
        let keyring = self.keyring.clone();
        self.catalog
            .blocking(move |c| c.append_audit(&keyring, &rec).map(|_| ()))
            .await?;
        Ok(())
    }

    /// Appends an event about an account to the chain of each of its tenants.
    pub async fn audit_for_user(
        &self,
        user_id: &str,
        rec: crate::audit::AuditRecord,
    ) -> Result<(), ApiError> {
        let (keyring, uid) = (self.keyring.clone(), user_id.to_owned());
        self.catalog
            .blocking(move |c| c.append_audit_for_user(&keyring, &uid, &rec))
            .await?;
        Ok(())
    }

    /// Whether this instance can serve requests: the catalog answers.
    pub async fn ready(&self) -> crate::catalog::Result<()> {
        self.catalog.blocking(|c| c.ping()).await
    }

    /// Closes the tenant's cached handle (after a suspension or deletion). Blocking work on
    /// a blocking thread.
    pub async fn close_tenant(&self, tenant: TenantId) {
        let state = self.clone();
        let _ = tokio::task::spawn_blocking(move || state.drop_connections(tenant)).await;
    }

    /// Closes the libSQL streams a revoked credential opened (see
    /// [`crate::streams::Streams::close_credential`]).
    pub async fn close_streams_of_credential(&self, tenant: TenantId, credential: String) {
        let streams = self.streams.clone();
        let _ = tokio::task::spawn_blocking(move || streams.close_credential(tenant, &credential))
            .await;
    }

    /// Closes a user's libSQL streams, in `tenant` or everywhere (see
    /// [`crate::streams::Streams::close_user`]).
    pub async fn close_streams_of_user(
        &self,
        tenant: Option<TenantId>,
        user: String,
        sessions_only: bool,
    ) {
        let streams = self.streams.clone();
        let _ = tokio::task::spawn_blocking(move || {
            streams.close_user(tenant, &user, sessions_only);
        })
        .await;
    }

    /// Closes the tenant's libSQL streams (their open transactions roll back) and forgets
    /// its handle. Blocking.
    pub fn drop_connections(&self, tenant: TenantId) {
        self.streams.close_tenant(tenant);
        self.store.evict(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant is barred from inline execution at its third overrun within a second, alone,
    /// and only for that second; the count that lets a query skip the lookup while no tenant
    /// is struck follows the entries in and out.
    #[test]
    fn inline_bar_strikes_out_one_tenant_for_a_second() {
        let gates = TenantGates::new(4, std::time::Duration::from_secs(1));
        let (heavy, other) = (TenantId::generate(), TenantId::generate());
        let struck = || {
            gates
                .struck_tenants
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(struck(), 0);
        for _ in 0..INLINE_STRIKES - 1 {
            gates.strike_inline(heavy);
            assert!(!gates.inline_barred(heavy));
        }
        assert_eq!(struck(), 1, "one tenant struck, however often");
        gates.strike_inline(heavy);
        assert!(gates.inline_barred(heavy));
        assert!(!gates.inline_barred(other));
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        gates.inline_bar.run_pending_tasks();
        assert!(!gates.inline_barred(heavy), "the bar lasts a second");
        assert_eq!(struck(), 0, "the count follows the entries out");
    }
}
