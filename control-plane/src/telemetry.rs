//! Prometheus metrics: one recorder per process, rendered at `GET /metrics` (served by
//! `http::ops`).
//!
//! What is counted (names as exported):
//! - `silo_http_request_duration_seconds{route,method,status}`: latency per route, so
//!   `/v1/db/query`, `/v2/pipeline`, `/v3/pipeline` and `/v3/cursor` each have theirs;
//! - `silo_tenant_handle_cache_hits_total`, `silo_tenant_handle_cache_misses_total`,
//!   `silo_tenant_open_seconds` (every open), `silo_tenant_handle_evictions_total{cause}`,
//!   `silo_tenant_connections_opened_total{kind}`, `silo_tenant_handles_open`,
//!   `silo_tenant_open_refusals_total` (over the limit of databases open at once);
//! - `silo_sandbox_refusals_total`;
//! - `silo_credential_cache_misses_total{kind}`: requests whose session (`kind="session"`)
//!   or API key (`"api_key"`) had to be read from the catalog (first use, or a catalog write
//!   since that may have changed it);
//! - `silo_hrana_streams_open`, `silo_hrana_streams_holding_database` (inside a transaction;
//!   at most half the databases that may be open), `silo_hrana_stored_sql_bytes`;
//! - `silo_connections_refused_total`, `silo_connections_closed_total{cause}` (`idle`,
//!   `make_room`);
//! - `silo_inline_overruns_total`: quick-looking queries that ran past the inline budget
//!   and went to the blocking pool.
//!
//! No label carries a tenant id, a user or SQL text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::FastHash;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's recorder (once; later calls reuse it).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match built {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Streams holding a tenant database in a transaction, and stored SQL bytes; on a timer.
pub fn stream_gauges() {
    use silo_tenant_runtime::hrana;
    metrics::gauge!("silo_hrana_streams_holding_database").set(hrana::pinned_streams() as f64);
    metrics::gauge!("silo_hrana_stored_sql_bytes").set(hrana::stored_sql_bytes() as f64);
}

/// Drains histogram samples into their buckets; called on a timer.
pub fn upkeep() {
    if let Some(Some(h)) = HANDLE.get() {
        h.run_upkeep();
    }
}

/// The metrics in Prometheus text format (empty when no recorder could be installed).
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}

/// Records a routed request's latency under its route template (never the raw path, which
/// could carry ids).
pub(crate) fn record(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    // Before the recorder is installed a handle would be a no-op one: not worth keeping.
    if !matches!(HANDLE.get(), Some(Some(_))) {
        return latency_histogram(route, method, status).record(seconds);
    }
    LATENCY.with_borrow_mut(|cache| {
        let of_route = match cache.get_mut(route) {
            Some(v) => v,
            None => cache.entry(route.into()).or_default(),
        };
        match of_route
            .iter()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, histogram)) => histogram.record(seconds),
            None => {
                let histogram = latency_histogram(route, method, status);
                histogram.record(seconds);
                of_route.push((method.clone(), status, histogram));
            }
        }
    });
}

/// Registers (or finds) the latency histogram of one route, method and status: three owned
/// label strings and a lookup in the recorder's registry.
fn latency_histogram(route: &str, method: &Method, status: StatusCode) -> metrics::Histogram {
    metrics::histogram!(
        "silo_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_string(),
        "status" => status.as_u16().to_string(),
    )
}

/// Each thread's handles to the latency histograms it has recorded into, by route, then
/// method and status (a route sees few of those). Registering a histogram cost more than
/// recording into it (handler_cost bench). Bounded: route templates
/// are the router's, methods are the standard ones (others are not routed), and statuses are
/// what silo answers.
type LatencyCache = HashMap<Box<str>, Vec<(Method, StatusCode, metrics::Histogram)>, FastHash>;

thread_local! {
    static LATENCY: RefCell<LatencyCache> = RefCell::new(HashMap::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request counts once, whichever thread records it and whether its histogram
    /// handle was cached there already: the cache changes nothing that is exported.
    #[test]
    fn latency_counts_every_request_through_the_cached_handles() {
        let handle = install().expect("recorder");
        let route = "/test/latency-cache";
        let count = |status: &str| {
            let text = handle.render();
            let needle = format!(
                "silo_http_request_duration_seconds_count{{route=\"{route}\",method=\"POST\",status=\"{status}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&needle))
                .map_or(0, |v| v.trim().parse::<u64>().expect("a count"))
        };
        let threads: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let status = if i % 4 == 0 {
                            StatusCode::BAD_REQUEST
                        } else {
                            StatusCode::OK
                        };
                        record(route, &Method::POST, status, Duration::from_micros(70));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // A route template that only shares a prefix is another route.
        record(
            "/test/latency-cache/{id}",
            &Method::POST,
            StatusCode::OK,
            Duration::ZERO,
        );
        handle.run_upkeep();
        assert_eq!(count("200"), 225);
        assert_eq!(count("400"), 75);
    }
}
