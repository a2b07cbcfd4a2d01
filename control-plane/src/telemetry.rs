//! Prometheus metrics: one recorder per process, rendered at `GET /metrics`.
//!
//! What is counted (names as exported):
//! - `silo_http_request_duration_seconds{route,method,status}`: latency per route, so
//!   `/v1/db/query`, `/v2/pipeline`, `/v3/pipeline` and `/v3/cursor` each have theirs;
//! - `silo_tenant_handle_cache_hits_total`, `silo_tenant_handle_cache_misses_total`,
//!   `silo_tenant_open_seconds` (every open), `silo_tenant_handle_evictions_total{cause}`,
//!   `silo_tenant_connections_opened_total{kind}`, `silo_tenant_handles_open`,
//!   `silo_tenant_open_refusals_total` (over the limit of databases open at once);
//! - `silo_sandbox_refusals_total`;
//! - `silo_hrana_streams_open`;
//! - `silo_inline_overruns_total`: quick-looking queries that ran past the inline budget
//!   and went to the blocking pool.
//!
//! No label carries a tenant id, a user or SQL text.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Drains histogram samples into their buckets; called on a timer.
pub fn upkeep() {
    if let Some(Some(h)) = HANDLE.get() {
        h.run_upkeep();
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn handle_metrics(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    use secrecy::ExposeSecret as _;
    if let Some(expected) = &state.metrics_token {
        let presented = crate::auth::bearer(&headers).unwrap_or("");
        if !silo_crypto::constant_time_eq(presented.as_bytes(), expected.expose_secret().as_bytes())
        {
            return crate::error::ApiError::Unauthenticated(
                "GET /metrics needs the metrics token (SILO_METRICS_TOKEN) as a bearer token",
            )
            .into_response();
        }
    }
    let body = match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Records a routed request's latency under its route template (never the raw path, which
/// could carry ids).
pub(crate) fn record(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    metrics::histogram!(
        "silo_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_string(),
        "status" => status.as_u16().to_string(),
    )
    .record(elapsed.as_secs_f64());
}
