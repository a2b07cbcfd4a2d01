//! Plans: what each tenant may use. A tenant's `plan` (in the catalog) names one; its
//! limits apply from the next time the tenant's database is opened (a plan change closes
//! it, so at once).
//!
//! Built in: `free` (1 GiB, 6,000 requests a minute), `pro` (10 GiB, 60,000), `enterprise`
//! (100 GiB, no request limit). `--plans` (JSON) changes them or adds others, e.g.
//! `{"free": {"storage_mb": 200, "requests_per_minute": 600}}`; `0` means no limit. A
//! tenant whose plan is not configured (any more) gets the `free` limits.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What one plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Storage of the tenant's database, in MiB (SQLite's `max_page_count`); 0: no limit.
    pub storage_mb: u64,
    /// Data requests (`/v1/db/*`, libSQL pipelines and cursors, exports) a minute, all of
    /// them allowed in a burst; 0: no limit.
    #[serde(default)]
    pub requests_per_minute: u32,
}

impl PlanLimits {
    /// The storage quota in bytes, `None` for no limit.
    pub fn storage_bytes(&self) -> Option<u64> {
        (self.storage_mb > 0).then(|| self.storage_mb.saturating_mul(1024 * 1024))
    }
}

/// The plan tenants get by default, and the limits of an unknown plan.
pub const DEFAULT_PLAN: &str = "free";

#[derive(Debug, Clone)]
pub struct Plans(BTreeMap<String, PlanLimits>);

impl Default for Plans {
    fn default() -> Self {
        let mut plans = BTreeMap::new();
        let limits = |storage_mb, requests_per_minute| PlanLimits {
            storage_mb,
            requests_per_minute,
        };
        plans.insert("free".to_owned(), limits(1024, 6_000));
        plans.insert("pro".to_owned(), limits(10 * 1024, 60_000));
        plans.insert("enterprise".to_owned(), limits(100 * 1024, 0));
        Plans(plans)
    }
}

impl Plans {
    /// The built-in plans with `json`'s plans laid over them.
    pub fn with_overrides(json: Option<&str>) -> Result<Self, String> {
        let mut plans = Plans::default();
        if let Some(json) = json.filter(|j| !j.trim().is_empty()) {
            let extra: BTreeMap<String, PlanLimits> = serde_json::from_str(json)
                .map_err(|e| format!("--plans is not valid: {e} (expected e.g. {{\"free\": {{\"storage_mb\": 200}}}})"))?;
            for name in extra.keys() {
                if !valid_name(name) {
                    return Err(format!(
                        "--plans: plan name {name:?} is not 1 to 32 characters of a-z, 0-9, - and _"
                    ));
                }
            }
            plans.0.extend(extra);
        }
        Ok(plans)
    }

    /// The limits of `plan` (the default plan's if it is not configured).
    pub fn limits(&self, plan: &str) -> PlanLimits {
        self.0
            .get(plan)
            .or_else(|| self.0.get(DEFAULT_PLAN))
            .copied()
            .unwrap_or(PlanLimits {
                storage_mb: 1024,
                requests_per_minute: 6_000,
            })
    }

    pub fn contains(&self, plan: &str) -> bool {
        self.0.contains_key(plan)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// A plan name: 1 to 32 characters of a-z, 0-9, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_and_add_plans_and_unknown_plans_get_free() {
        let plans = Plans::with_overrides(Some(
            r#"{"free": {"storage_mb": 5}, "team": {"storage_mb": 0}}"#,
        ))
        .expect("plans");
        assert_eq!(plans.limits("free").storage_bytes(), Some(5 * 1024 * 1024));
        assert_eq!(plans.limits("team").storage_bytes(), None);
        assert_eq!(plans.limits("pro").storage_mb, 10 * 1024);
        assert_eq!(
            plans.limits("team").requests_per_minute,
            0,
            "unset: no limit"
        );
        assert_eq!(plans.limits("pro").requests_per_minute, 60_000);
        assert_eq!(plans.limits("gone"), plans.limits("free"));
        assert!(Plans::with_overrides(Some(r#"{"Bad Name": {"storage_mb": 1}}"#)).is_err());
        assert!(Plans::with_overrides(Some(r#"{"x": {"storage": 1}}"#)).is_err());
    }
}
