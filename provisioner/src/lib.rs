//! Where tenant databases live and how they come to exist.
//!
//! - [`local`]: [`LocalPlacement`], one SQLCipher file per tenant, created crash-safely.
//! - [`migrations`]: numbered SQL migrations with checksums, for the catalog and for every
//!   tenant database.
//! - [`TenantStatus`] (from `silo-types`): the tenant lifecycle and its allowed transitions.
//! - [`Provisioner`]: runs the provisioning steps against a [`Ledger`] (the catalog) and
//!   reconciles what a crash left half-done.

pub mod local;
pub mod migrations;

use std::time::Duration;

use silo_crypto::DbToken;
use silo_tenant_runtime::TenantId;

pub use local::LocalPlacement;
pub use migrations::{MigrationError, MigrationSet};
pub use silo_types::TenantStatus;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tenant database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("catalog: {0}")]
    Ledger(String),
}

pub type Result<T, E = ProvisionError> = std::result::Result<T, E>;

/// The provisioning records the provisioner needs from the catalog. The catalog writes the
/// *intent* itself (the tenant row in `provisioning`, with its sealed DB token, in the same
/// transaction as the owner's account); the provisioner then drives it to `active`, or
/// rolls it back.
pub trait Ledger: Send + Sync {
    /// Tenants recorded as `provisioning`.
    fn provisioning(&self) -> Result<Vec<TenantId>>;
    /// Whether this tenant is still recorded as `provisioning`.
    fn is_provisioning(&self, tenant: TenantId) -> Result<bool>;
    /// `provisioning → active`, with the schema version the database is at; records the
    /// tenant migrations seen for the first time, `(version, name, checksum)`.
    fn mark_active(
        &self,
        tenant: TenantId,
        schema_version: u32,
        migrations: &[(u32, String, String)],
    ) -> Result<()>;
    /// The checksum of every tenant migration when it was first applied, by version.
    fn migration_checksums(&self) -> Result<std::collections::HashMap<u32, String>>;
    /// Removes every record of a tenant that never became active. Must do nothing to a
    /// tenant that is no longer `provisioning`.
    fn forget(&self, tenant: TenantId) -> Result<()>;
}

/// Runs the provisioning state machine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Provisioner {
    placement: LocalPlacement,
    migrations: MigrationSet,
    /// Test-only: sleep this long after the database is published and before the tenant is
    /// marked active, so a test can kill the process at the most awkward moment.
    pause_before_activation: Option<Duration>,
}

impl Provisioner {
    pub fn new(placement: LocalPlacement, migrations: MigrationSet) -> Self {
        Provisioner {
            placement,
            migrations,
            pause_before_activation: None,
        }
    }

    pub fn with_test_pause(mut self, pause: Option<Duration>) -> Self {
        self.pause_before_activation = pause;
        self
    }

    pub fn placement(&self) -> &LocalPlacement {
        &self.placement
    }

    pub fn migrations(&self) -> &MigrationSet {
        &self.migrations
    }

    /// Creates the database of a tenant whose intent is recorded, then marks it active. On
    /// failure the tenant is rolled back (file and records removed). Blocking.
    pub fn provision(&self, ledger: &dyn Ledger, tenant: TenantId, token: &DbToken) -> Result<()> {
        let result = ledger
            .migration_checksums()
            .and_then(|known| self.placement.create(tenant, token, &self.migrations, &known))
            .and_then(|migrated| {
                if let Some(pause) = self.pause_before_activation {
                    tracing::warn!(tenant_id = %tenant, ?pause, "test pause point: database published, tenant not yet active");
                    std::thread::sleep(pause);
                }
                ledger.mark_active(tenant, migrated.version, &migrated.to_record())
            });
        if let Err(e) = &result {
            tracing::error!(tenant_id = %tenant, error = %e, "provisioning failed; rolling back");
            if let Err(rollback) = self.roll_back(ledger, tenant) {
                tracing::error!(tenant_id = %tenant, error = %rollback, "rollback failed; the reconciler retries at next start");
            }
        }
        result
    }

    fn roll_back(&self, ledger: &dyn Ledger, tenant: TenantId) -> Result<()> {
        // Never undo a tenant that made it to active (e.g. activation committed but reported
        // an error): its file and records stay.
        if !ledger.is_provisioning(tenant)? {
            tracing::warn!(tenant_id = %tenant, "not rolling back: the tenant is no longer provisioning");
            return Ok(());
        }
        // File first, then records: if we crash in between, the record is still there for
        // the reconciler to find, so nothing is ever left without a record pointing at it.
        self.placement.destroy(tenant)?;
        ledger.forget(tenant)
    }

    /// Finishes what a crash interrupted: removes unpublished files, and rolls back every
    /// tenant still `provisioning` (its creator never got an answer, so a retry is the way
    /// forward). Run at start-up, before serving. Returns the tenants rolled back.
    pub fn reconcile(&self, ledger: &dyn Ledger) -> Result<Vec<TenantId>> {
        let swept = self.placement.sweep_unpublished()?;
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed unpublished tenant databases left by a crash"
            );
        }
        let pending = ledger.provisioning()?;
        let mut rolled_back = Vec::new();
        for tenant in pending {
            tracing::warn!(tenant_id = %tenant, "rolling back tenant left in provisioning by a crash");
            // One tenant that cannot be cleaned up (say, a file we may not delete) must not
            // keep the server from starting: it stays recorded and is retried next start.
            match self.roll_back(ledger, tenant) {
                Ok(()) => rolled_back.push(tenant),
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %e, "rollback failed; will retry at next start")
                }
            }
        }
        Ok(rolled_back)
    }
}
