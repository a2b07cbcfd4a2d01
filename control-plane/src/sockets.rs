//! Open WebSocket connections (Hrana over WebSocket): how many may be open, from one
//! address and for one tenant, and their end when the server stops.
//!
//! A WebSocket leaves the listener's registry once it is upgraded (its caps count HTTP
//! connections), so it is counted here instead: a client cannot open sockets past these
//! caps, and one tenant cannot take every socket of the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use silo_tenant_runtime::TenantId;
use silo_tenant_runtime::hrana::SqlBudget;

/// Sockets one tenant may hold open at once (an application keeps one per process).
pub const MAX_SOCKETS_PER_TENANT: usize = 256;

/// Why a socket was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketRefusal {
    /// The server's cap.
    Full,
    /// The client address's cap.
    AddressFull,
    /// The tenant's cap.
    TenantFull,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Sockets per tenant, and the stored-SQL account they share.
    per_tenant: HashMap<TenantId, (usize, SqlBudget)>,
}

struct Inner {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
    /// Set when the server stops: every socket says goodbye and closes.
    closing: tokio::sync::watch::Sender<bool>,
    /// Told when the last socket is gone.
    empty: tokio::sync::Notify,
}

/// The server's open sockets.
#[derive(Clone)]
pub struct Sockets {
    inner: Arc<Inner>,
}

impl Sockets {
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Sockets {
            inner: Arc::new(Inner {
                max_total: max_total.max(1),
                max_per_address: max_per_address.max(1),
                counts: Mutex::default(),
                closing: tokio::sync::watch::channel(false).0,
                empty: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A place for a socket from `ip`, held until the slot is dropped.
    pub fn admit(&self, ip: IpAddr) -> Result<SocketSlot, SocketRefusal> {
        let mut counts = self.inner.counts.lock();
        if counts.total >= self.inner.max_total {
            return Err(SocketRefusal::Full);
        }
        let of_address = counts.per_address.entry(ip).or_default();
        if *of_address >= self.inner.max_per_address {
            return Err(SocketRefusal::AddressFull);
        }
        *of_address += 1;
        counts.total += 1;
        metrics::gauge!("silo_websockets_open").set(counts.total as f64);
        Ok(SocketSlot {
            inner: self.inner.clone(),
            ip,
            tenant: None,
        })
    }

    /// Answers once the server is stopping (at once if it already is).
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Tells every socket to close.
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Waits until no socket is open.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.inner.empty.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.inner.counts.lock().total
    }
}

/// One socket's place in the counts.
pub struct SocketSlot {
    inner: Arc<Inner>,
    ip: IpAddr,
    tenant: Option<TenantId>,
}

impl SocketSlot {
    /// Counts the socket against `tenant`'s cap, once its credential names the tenant, and
    /// answers the stored-SQL account the tenant's sockets share.
    pub fn bind(&mut self, tenant: TenantId) -> Result<SqlBudget, SocketRefusal> {
        let mut counts = self.inner.counts.lock();
        if self.tenant == Some(tenant) {
            return Ok(counts
                .per_tenant
                .get(&tenant)
                .map(|(_, b)| b.clone())
                .unwrap_or_default());
        }
        let (of_tenant, budget) = counts.per_tenant.entry(tenant).or_default();
        if *of_tenant >= MAX_SOCKETS_PER_TENANT {
            return Err(SocketRefusal::TenantFull);
        }
        *of_tenant += 1;
        let budget = budget.clone();
        if let Some(old) = self.tenant.replace(tenant) {
            uncount_tenant(&mut counts.per_tenant, &old);
        }
        Ok(budget)
    }
}

fn uncount_tenant(map: &mut HashMap<TenantId, (usize, SqlBudget)>, tenant: &TenantId) {
    if let Some((n, _)) = map.get_mut(tenant) {
        *n -= 1;
        if *n == 0 {
            map.remove(tenant);
        }
    }
}

fn uncount(map: &mut HashMap<IpAddr, usize>, key: &IpAddr) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock();
        counts.total -= 1;
        uncount(&mut counts.per_address, &self.ip);
        if let Some(tenant) = self.tenant {
            uncount_tenant(&mut counts.per_tenant, &tenant);
        }
        metrics::gauge!("silo_websockets_open").set(counts.total as f64);
        if counts.total == 0 {
            self.inner.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_id(byte: u8) -> TenantId {
        format!("{byte:02x}").repeat(16).parse().expect("tenant id")
    }

    #[test]
    fn caps_hold_and_counts_return_when_slots_drop() {
        let sockets = Sockets::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = sockets.admit(a).expect("first");
        let mut s2 = sockets.admit(a).expect("second");
        assert_eq!(sockets.admit(a).err(), Some(SocketRefusal::AddressFull));
        let s3 = sockets.admit(b).expect("other address");
        assert_eq!(sockets.admit(b).err(), Some(SocketRefusal::Full));
        drop(s1);
        assert_eq!(sockets.open(), 2);
        let tenant = tenant_id(7);
        s2.bind(tenant).expect("bind");
        // Binding again to the same tenant counts once.
        s2.bind(tenant).expect("bind again");
        assert_eq!(sockets.inner.counts.lock().per_tenant[&tenant].0, 1);
        drop((s2, s3));
        let counts = sockets.inner.counts.lock();
        assert_eq!(counts.total, 0);
        assert!(counts.per_address.is_empty() && counts.per_tenant.is_empty());
    }

    #[test]
    fn a_tenant_cannot_take_every_socket() {
        let sockets = Sockets::new(MAX_SOCKETS_PER_TENANT + 10, usize::MAX);
        let tenant = tenant_id(1);
        let mut held = Vec::new();
        for i in 0..MAX_SOCKETS_PER_TENANT {
            let mut slot = sockets
                .admit(IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]))
                .expect("admit");
            slot.bind(tenant).expect("under the tenant's cap");
            held.push(slot);
        }
        let mut one_more = sockets.admit([10, 9, 9, 9].into()).expect("admit");
        assert_eq!(one_more.bind(tenant).err(), Some(SocketRefusal::TenantFull));
        one_more
            .bind(tenant_id(2))
            .expect("another tenant still gets one");
    }
}
