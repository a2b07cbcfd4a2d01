//! Write epochs: how a copy of catalog facts (the credential cache) knows it is still what
//! the catalog holds, without asking the catalog.
//!
//! There is one epoch for the whole catalog and one per tenant. A write bumps the epoch of
//! what it may have changed: a tenant's own rows (its sessions, memberships, API keys, its
//! row in `tenants`, and rows of any table that are new, which nothing cached names yet)
//! bump that tenant's epoch only; rows that no cached fact is read from (the audit log,
//! login failures, known networks, invitations, a user's last TOTP step, when a key was last
//! used: a cached key's copy of that is only a hint of when to write it next) bump none; and
//! everything else, including every write not classified otherwise, bumps the whole
//! catalog's. A copy carries the [`Stamp`] of its read and is current while neither epoch
//! it was stamped with has moved.
//!
//! Why per tenant: with one epoch, each audited action, login or refresh anywhere made
//! every cached credential of every tenant stale, so that under many tenants the cache
//! hardly ever hit and every request waited for the catalog's one connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use silo_tenant_runtime::TenantId;

/// What a write may have changed, for the epochs it bumps. The default is
/// [`Touches::Everything`]: a write says it touches less only where that is plain from its
/// statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touches {
    /// Any row (users, for one, span tenants).
    Everything,
    /// Rows of this tenant only: its sessions and their refresh tokens, its memberships,
    /// its API keys, its own row; and new rows of any table (a signup's or a joining
    /// member's new `users` row), which nothing cached names yet. Never a change to an
    /// existing user: users span tenants.
    Tenant(TenantId),
    /// Only rows no cached fact is read from.
    Nothing,
}

/// The catalog's epochs. Cheap to read; a tenant's cell exists only while some stamp holds
/// it, since a tenant nobody cached anything of has nothing to make stale.
#[derive(Default)]
pub(crate) struct Epochs {
    everything: AtomicU64,
    tenants: Mutex<TenantCells>,
}

#[derive(Default)]
struct TenantCells {
    cells: HashMap<TenantId, Weak<AtomicU64>>,
    /// Dead cells are swept when the map reaches this size (then twice the live count).
    sweep_at: usize,
}

/// When cached facts were read. Taken while the catalog's connection is locked, the same
/// lock every write bumps its epoch under, so no write falls between the read and its stamp.
#[derive(Debug, Clone)]
pub struct Stamp {
    everything: u64,
    tenant: Arc<AtomicU64>,
    tenant_at: u64,
}

impl Epochs {
    /// Called with the catalog's connection locked.
    pub(crate) fn stamp(&self, tenant: TenantId) -> Stamp {
        const MIN_SWEEP: usize = 1024;
        let everything = self.everything.load(Ordering::SeqCst);
        let mut t = self.tenants.lock();
        let cell = match t.cells.get(&tenant).and_then(Weak::upgrade) {
            Some(cell) => cell,
            None => {
                if t.cells.len() >= t.sweep_at.max(MIN_SWEEP) {
                    t.cells.retain(|_, c| c.strong_count() > 0);
                    t.sweep_at = t.cells.len() * 2;
                }
                let cell = Arc::new(AtomicU64::new(0));
                t.cells.insert(tenant, Arc::downgrade(&cell));
                cell
            }
        };
        Stamp {
            everything,
            tenant_at: cell.load(Ordering::SeqCst),
            tenant: cell,
        }
    }

    /// Called with the catalog's connection locked, after a write that changed rows.
    pub(crate) fn bump(&self, touched: Touches) {
        match touched {
            Touches::Everything => {
                self.everything.fetch_add(1, Ordering::SeqCst);
            }
            Touches::Tenant(tenant) => {
                let t = self.tenants.lock();
                if let Some(cell) = t.cells.get(&tenant).and_then(Weak::upgrade) {
                    cell.fetch_add(1, Ordering::SeqCst);
                }
            }
            Touches::Nothing => {}
        }
    }

    pub(crate) fn is_current(&self, stamp: &Stamp) -> bool {
        self.everything.load(Ordering::SeqCst) == stamp.everything
            && stamp.tenant.load(Ordering::SeqCst) == stamp.tenant_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_makes_stale_what_it_touches_and_nothing_else() {
        let epochs = Epochs::default();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let stamp_a = epochs.stamp(a);
        let stamp_b = epochs.stamp(b);
        epochs.bump(Touches::Nothing);
        assert!(epochs.is_current(&stamp_a) && epochs.is_current(&stamp_b));
        epochs.bump(Touches::Tenant(a));
        assert!(!epochs.is_current(&stamp_a), "a write of tenant a");
        assert!(epochs.is_current(&stamp_b), "tenant b is untouched");
        let stamp_a = epochs.stamp(a);
        assert!(epochs.is_current(&stamp_a), "read again");
        epochs.bump(Touches::Everything);
        assert!(!epochs.is_current(&stamp_a) && !epochs.is_current(&stamp_b));
    }

    #[test]
    fn a_tenant_cell_lives_while_a_stamp_holds_it() {
        let epochs = Epochs::default();
        let a = TenantId::generate();
        let first = epochs.stamp(a);
        let second = epochs.stamp(a);
        assert!(
            Arc::ptr_eq(&first.tenant, &second.tenant),
            "one cell a tenant"
        );
        epochs.bump(Touches::Tenant(a));
        assert!(!epochs.is_current(&first) && !epochs.is_current(&second));
        drop((first, second));
        // Many tenants come and go: dead cells are swept, live ones kept.
        let kept = epochs.stamp(a);
        for _ in 0..5_000 {
            drop(epochs.stamp(TenantId::generate()));
        }
        let cells = epochs.tenants.lock();
        assert!(cells.cells.len() <= 2_100, "{} cells", cells.cells.len());
        drop(cells);
        epochs.bump(Touches::Tenant(a));
        assert!(!epochs.is_current(&kept), "a live cell survives the sweeps");
    }
}
