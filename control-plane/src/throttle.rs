//! Brakes on what strangers can do: per-address rate limits on the routes that prove a
//! credential or create an account, and a bound on how much a lockout can write to its
//! victim's audit log.
//!
//! An IPv6 client is keyed by its /64 (one host usually holds a whole /64, so keying single
//! addresses would give it 2^64 buckets). Buckets are plain memory (`governor`'s keyed
//! limiter); `upkeep` drops the ones that are full again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

/// The address a client is counted under: itself for IPv4, its /64 for IPv6.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// A per-address limit: `None` when switched off (`0`).
pub struct AddressLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl AddressLimit {
    /// `per` requests per `period` from one address, all of them allowed in a burst.
    pub fn new(count: u32, period: Period) -> Self {
        let limiter = NonZeroU32::new(count).map(|n| {
            let quota = match period {
                Period::Minute => Quota::per_minute(n),
                Period::Hour => Quota::per_hour(n),
            };
            RateLimiter::keyed(quota)
        });
        AddressLimit { limiter }
    }

    /// Takes one request from the address's budget: `Err(wait)` when it has none left.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else {
            return Ok(());
        };
        limiter
            .check_key(&client_key(ip))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets addresses whose budget is full again (memory stays bounded by the clients
    /// of the last period).
    pub fn upkeep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[derive(Clone, Copy)]
pub enum Period {
    Minute,
    Hour,
}

/// How often, at most, a locked account's refused attempts reach its audit log.
pub const LOCKOUT_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// Refused sign-ins of locked accounts, counted so that each account gets at most one
/// `auth.lockout` audit event per [`LOCKOUT_AUDIT_EVERY`], carrying how many were refused
/// since the last one. A stranger hammering a locked account writes a bounded number of
/// events, not one per attempt.
pub struct LockoutLedger {
    accounts: moka::sync::Cache<String, Arc<Mutex<Refusals>>, crate::FastHash>,
}

/// When an account's last lockout event was written, and the refusals since.
type Refusals = (Option<Instant>, u64);

impl Default for LockoutLedger {
    fn default() -> Self {
        LockoutLedger {
            accounts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build_with_hasher(Default::default()),
        }
    }
}

impl LockoutLedger {
    /// Counts a refused attempt on `user_id`: `Some(n)` when an audit event is due now, `n`
    /// being the refusals since the last event (this one included).
    pub fn refused(&self, user_id: &str) -> Option<u64> {
        let entry = self
            .accounts
            .get_with_by_ref(user_id, || Arc::new(Mutex::new((None, 0))));
        let mut e = entry.lock();
        e.1 += 1;
        let due = e.0.is_none_or(|last| last.elapsed() >= LOCKOUT_AUDIT_EVERY);
        if due {
            let n = e.1;
            *e = (Some(Instant::now()), 0);
            Some(n)
        } else {
            None
        }
    }
}

/// The throttles of one server.
pub struct Throttles {
    /// Sign-in, invitation acceptance, deletion certificates: per address per minute.
    pub auth: AddressLimit,
    /// Signups: per address per hour.
    pub signup: AddressLimit,
    pub lockouts: LockoutLedger,
}

impl Throttles {
    pub fn new(auth_per_minute: u32, signups_per_hour: u32) -> Self {
        Throttles {
            auth: AddressLimit::new(auth_per_minute, Period::Minute),
            signup: AddressLimit::new(signups_per_hour, Period::Hour),
            lockouts: LockoutLedger::default(),
        }
    }

    pub fn upkeep(&self) {
        self.auth.upkeep();
        self.signup.upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(client_key(v4), v4);
    }

    #[test]
    fn an_address_gets_its_budget_and_then_a_wait() {
        let limit = AddressLimit::new(3, Period::Minute);
        let ip = Some("203.0.113.7".parse().expect("ip"));
        for _ in 0..3 {
            assert!(limit.check(ip).is_ok());
        }
        let wait = limit.check(ip).expect_err("fourth in a minute");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another address has its own budget; 0 switches the limit off.
        assert!(
            limit
                .check(Some("203.0.113.8".parse().expect("ip")))
                .is_ok()
        );
        let off = AddressLimit::new(0, Period::Minute);
        assert!((0..100).all(|_| off.check(ip).is_ok()));
    }

    #[test]
    fn a_lockout_is_audited_once_per_period_with_its_count() {
        let ledger = LockoutLedger::default();
        assert_eq!(ledger.refused("u1"), Some(1));
        assert_eq!(ledger.refused("u1"), None);
        assert_eq!(ledger.refused("u1"), None);
        assert_eq!(ledger.refused("u2"), Some(1), "accounts are counted apart");
        let entry = ledger.accounts.get("u1").expect("entry");
        entry.lock().0 = Instant::now().checked_sub(LOCKOUT_AUDIT_EVERY);
        assert_eq!(
            ledger.refused("u1"),
            Some(3),
            "the two since the last, and this one"
        );
    }
}
