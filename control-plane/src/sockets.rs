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

/// Sockets one tenant may hold open at once (an application keeps one per process); never
/// more than a quarter of the server's.
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
    /// The cap of sockets that have not said `hello` yet.
    TooManyStrangers,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Sockets not bound to a tenant yet (no `hello` accepted).
    strangers: usize,
    /// Tasks of sockets (their streams) still running, the socket itself perhaps gone.
    tasks: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Sockets per tenant, and the stored-SQL account they share.
    per_tenant: HashMap<TenantId, (usize, SqlBudget)>,
}

struct Inner {
    max_total: usize,
    max_per_address: usize,
    max_per_tenant: usize,
    max_strangers: usize,
    /// Bytes held for sockets (requests read, answers not yet written, cursors not yet
    /// fetched), and the most they may hold together.
    buffered: std::sync::atomic::AtomicUsize,
    max_buffered: usize,
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
    /// At most `max_total` sockets, `max_per_address` from one address, holding
    /// `max_buffered` bytes together. A quarter of the sockets may belong to one tenant, and
    /// a quarter may be waiting for their `hello`: neither one tenant nor anonymous clients
    /// can take every socket.
    pub fn new(max_total: usize, max_per_address: usize, max_buffered: usize) -> Self {
        let max_total = max_total.max(1);
        Sockets {
            inner: Arc::new(Inner {
                max_total,
                max_per_address: max_per_address.max(1),
                max_per_tenant: (max_total / 4).clamp(1, MAX_SOCKETS_PER_TENANT),
                max_strangers: (max_total / 4).max(1),
                buffered: std::sync::atomic::AtomicUsize::new(0),
                max_buffered: max_buffered.max(1),
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
        if counts.strangers >= self.inner.max_strangers {
            return Err(SocketRefusal::TooManyStrangers);
        }
        let of_address = counts.per_address.entry(ip).or_default();
        if *of_address >= self.inner.max_per_address {
            return Err(SocketRefusal::AddressFull);
        }
        *of_address += 1;
        counts.total += 1;
        counts.strangers += 1;
        metrics::gauge!("silo_websockets_open").set(counts.total as f64);
        Ok(SocketSlot {
            inner: self.inner.clone(),
            ip,
            tenant: None,
        })
    }

    /// Holds `bytes` for a socket until the charge drops; `None` past the budget.
    pub fn charge(&self, bytes: usize) -> Option<Charge> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.inner.max_buffered;
        self.inner
            .buffered
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= max)
            })
            .ok()?;
        Some(Charge {
            inner: self.inner.clone(),
            bytes,
        })
    }

    /// Holds `bytes` whatever the budget says: for what already exists and must go out (the
    /// answer of work that ran). New work is refused at the budget instead ([`Self::charge`]),
    /// so the overshoot is bounded by what is in flight.
    pub fn charge_anyway(&self, bytes: usize) -> Charge {
        self.inner
            .buffered
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Charge {
            inner: self.inner.clone(),
            bytes,
        }
    }

    /// Bytes held for sockets now.
    pub fn buffered(&self) -> usize {
        self.inner
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers once the server is stopping (at once if it already is).
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Tells every socket to close.
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Waits until no socket is open and none of their tasks runs.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.inner.empty.notified();
            {
                let counts = self.inner.counts.lock();
                if counts.total == 0 && counts.tasks == 0 {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Counts a task of a socket (a stream's) until the guard drops: the server waits for
    /// it before closing the tenant databases.
    pub fn task(&self) -> TaskGuard {
        self.inner.counts.lock().tasks += 1;
        TaskGuard {
            inner: self.inner.clone(),
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
        let max_per_tenant = self.inner.max_per_tenant;
        let (of_tenant, budget) = counts.per_tenant.entry(tenant).or_default();
        if *of_tenant >= max_per_tenant {
            return Err(SocketRefusal::TenantFull);
        }
        *of_tenant += 1;
        let budget = budget.clone();
        match self.tenant.replace(tenant) {
            Some(old) => uncount_tenant(&mut counts.per_tenant, &old),
            None => counts.strangers -= 1,
        }
        Ok(budget)
    }
}

/// Bytes a socket holds in the shared budget (see [`Sockets::charge`]).
pub struct Charge {
    inner: Arc<Inner>,
    bytes: usize,
}

impl Charge {
    /// Gives `n` of the held bytes back now (they left the socket's keeping).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.inner
            .buffered
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.inner
            .buffered
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
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
        match self.tenant {
            Some(tenant) => uncount_tenant(&mut counts.per_tenant, &tenant),
            None => counts.strangers -= 1,
        }
        metrics::gauge!("silo_websockets_open").set(counts.total as f64);
        if counts.total == 0 && counts.tasks == 0 {
            self.inner.empty.notify_waiters();
        }
    }
}

/// One running task of a socket (see [`Sockets::task`]).
pub struct TaskGuard {
    inner: Arc<Inner>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock();
        counts.tasks -= 1;
        if counts.total == 0 && counts.tasks == 0 {
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
        let sockets = Sockets::new(12, 2, 1);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = sockets.admit(a).expect("first");
        let mut s2 = sockets.admit(a).expect("second");
        assert_eq!(sockets.admit(a).err(), Some(SocketRefusal::AddressFull));
        // A quarter of the sockets may wait for their hello: three here.
        let s3 = sockets.admit(b).expect("other address");
        assert_eq!(
            sockets.admit([10, 0, 0, 3].into()).err(),
            Some(SocketRefusal::TooManyStrangers)
        );
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
    fn the_byte_budget_is_shared_and_given_back() {
        let sockets = Sockets::new(4, 4, 100);
        let a = sockets.charge(60).expect("within");
        assert!(sockets.charge(41).is_none());
        let b = sockets.charge(40).expect("exactly full");
        let mut over = sockets.charge_anyway(10);
        assert_eq!(sockets.buffered(), 110);
        over.release(4);
        assert_eq!(sockets.buffered(), 106);
        drop(over);
        drop(a);
        assert_eq!(sockets.buffered(), 40);
        drop(b);
        assert_eq!(sockets.buffered(), 0);
    }

    #[test]
    fn a_tenant_cannot_take_every_socket() {
        // On a small server a tenant gets a quarter of the sockets.
        let small = Sockets::new(8, usize::MAX, 1);
        let mut held = Vec::new();
        for i in 0..2 {
            let mut slot = small.admit([10, 1, 0, i].into()).expect("admit");
            slot.bind(tenant_id(3)).expect("under the cap");
            held.push(slot);
        }
        let mut third = small.admit([10, 1, 0, 9].into()).expect("admit");
        assert_eq!(
            third.bind(tenant_id(3)).err(),
            Some(SocketRefusal::TenantFull)
        );
        drop((held, third));
        let sockets = Sockets::new(4 * MAX_SOCKETS_PER_TENANT + 40, usize::MAX, 1);
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
