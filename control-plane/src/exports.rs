//! Exports under way: one at a time per tenant (an export holds a snapshot and a plaintext
//! file while it streams). Kept by the server's state, taken by `http::export`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use silo_tenant_runtime::TenantId;

/// Tenants with an export under way: one at a time per tenant.
#[derive(Clone, Default)]
pub struct ExportsInFlight(Arc<Mutex<HashSet<TenantId>>>);

/// Removes the tenant from the in-flight set when the export (its stream) ends.
pub struct InFlight {
    set: ExportsInFlight,
    tenant: TenantId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.0.lock().remove(&self.tenant);
    }
}

impl ExportsInFlight {
    pub fn begin(&self, tenant: TenantId) -> Option<InFlight> {
        let mut set = self.0.lock();
        set.insert(tenant).then(|| InFlight {
            set: self.clone(),
            tenant,
        })
    }
}
