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

/// Cheap to clone: every field is an `Arc` or a handle over one.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
    pub keyring: Arc<Keyring>,
    pub tokens: Arc<TokenKeys>,
    /// Open tenant databases. Only ever used from blocking threads.
    pub store: TenantStore,
    pub provisioner: Arc<Provisioner>,
    pub max_body_bytes: usize,
    pub gates: TenantGates,
}

/// Per-tenant concurrency limit: at most `permits` requests of one tenant hold a blocking
/// thread at once; more wait (without a thread) up to `queue_wait`, then get 429. So one
/// tenant's flood cannot take the blocking pool that every other tenant needs.
#[derive(Clone)]
pub struct TenantGates {
    gates: moka::sync::Cache<TenantId, Arc<tokio::sync::Semaphore>>,
    permits: usize,
    queue_wait: std::time::Duration,
}

impl TenantGates {
    pub fn new(permits: usize, queue_wait: std::time::Duration) -> Self {
        TenantGates {
            // Idle gates are dropped; a gate in use is kept alive by its permits' Arc.
            gates: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
            permits: permits.max(1),
            queue_wait,
        }
    }

    async fn enter(&self, tenant: TenantId) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let gate = self.gates.get_with(tenant, || {
            Arc::new(tokio::sync::Semaphore::new(self.permits))
        });
        match tokio::time::timeout(self.queue_wait, gate.acquire_owned()).await {
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
        F: FnOnce(&TenantHandle) -> Result<T, RuntimeError> + Send + 'static,
    {
        let permit = self.gates.enter(tenant).await?;
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

    /// Opens the tenant's database: unseal its DB token, key a new connection. Blocking.
    fn open_handle(&self, tenant: TenantId) -> Result<TenantHandle, RuntimeError> {
        let (db_id, sealed) = self
            .catalog
            .sealed_db_token(tenant)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?
            .ok_or(RuntimeError::Missing)?;
        let tenant_text = tenant.to_string();
        let plain = self
            .keyring
            .open(
                EnvelopeContext {
                    tenant: &tenant_text,
                    purpose: DB_TOKEN_PURPOSE,
                    binding: &db_id,
                },
                &sealed,
            )
            .map_err(|e| {
                tracing::error!(tenant_id = %tenant, error = %e, "the stored DB token envelope does not open");
                RuntimeError::WrongKey
            })?;
        let token = DbToken::from_secret_bytes(&plain).map_err(|_| RuntimeError::WrongKey)?;
        let path = self.provisioner.placement().path(tenant);
        TenantHandle::open_local(tenant, &path, &token, self.store.limits().clone())
    }
}
