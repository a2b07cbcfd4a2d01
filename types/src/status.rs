//! The tenant lifecycle, as recorded in the catalog:
//!
//! ```text
//! provisioning ──▶ active ⇄ suspended
//!      │             ▲ │         │
//!      ▼             │ ▼         ▼
//!   (rolled back)  deleting ──────▶ deleted
//! ```
//!
//! `deleting` goes back to `active` when restored within the grace period.
//!
//! A tenant left in `provisioning` by a crash is rolled back by the reconciler at start-up
//! (its row and any file removed), so the signup can simply be retried.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Deleting,
    Deleted,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 5] = [
        TenantStatus::Provisioning,
        TenantStatus::Active,
        TenantStatus::Suspended,
        TenantStatus::Deleting,
        TenantStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleting => "deleting",
            TenantStatus::Deleted => "deleted",
        }
    }

    /// Whether the lifecycle allows going from `self` to `next`. Staying put is allowed
    /// (every step is idempotent).
    pub fn can_become(self, next: TenantStatus) -> bool {
        use TenantStatus as S;
        self == next
            || matches!(
                (self, next),
                (S::Provisioning, S::Active)
                    | (S::Active, S::Suspended)
                    | (S::Suspended, S::Active)
                    | (S::Active | S::Suspended, S::Deleting)
                    | (S::Deleting, S::Suspended)
                    // Restored within the grace period.
                    | (S::Deleting, S::Active)
                    | (S::Deleting, S::Deleted)
            )
    }

    /// Whether the tenant's users may reach its data.
    pub fn serves_data(self) -> bool {
        self == TenantStatus::Active
    }
}

/// Written as its name (`"active"`), as the API and the catalog spell it.
impl serde::Serialize for TenantStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for TenantStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown tenant status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for TenantStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use TenantStatus as S;

    #[test]
    fn statuses_round_trip_through_text() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
        }
        assert!("Active".parse::<S>().is_err());
    }

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let allowed = [
            (S::Provisioning, S::Active),
            (S::Active, S::Suspended),
            (S::Suspended, S::Active),
            (S::Active, S::Deleting),
            (S::Suspended, S::Deleting),
            (S::Deleting, S::Suspended),
            (S::Deleting, S::Active),
            (S::Deleting, S::Deleted),
        ];
        for from in S::ALL {
            for to in S::ALL {
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
            }
        }
        // Nothing comes back from deleted, and nothing skips provisioning.
        assert!(
            S::ALL
                .iter()
                .all(|&to| to == S::Deleted || !S::Deleted.can_become(to))
        );
        assert!(!S::Provisioning.can_become(S::Suspended));
    }

    #[test]
    fn only_active_tenants_serve_data() {
        assert_eq!(S::ALL.iter().filter(|s| s.serves_data()).count(), 1);
    }
}
