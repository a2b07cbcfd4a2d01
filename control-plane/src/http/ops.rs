//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The process is up and answering.
pub(crate) async fn handle_healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The catalog answers and the disk has room: this instance can serve requests.
pub(crate) async fn handle_readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    if crate::disk::pressure() {
        return Err(ApiError::Busy(
            "the data directory's disk is nearly full (under --min-free-disk-mb): tenant \
             writes and signups are paused"
                .to_owned(),
        ));
    }
    state
        .ready()
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("catalog not reachable: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text format; with a metrics token configured, only for its
/// bearer (compared in constant time).
pub(crate) async fn handle_metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !crate::auth::metrics_allowed(state.metrics_token.as_ref(), &headers) {
        return crate::error::ApiError::Unauthenticated(
            "GET /metrics needs the metrics token (SILO_METRICS_TOKEN) as a bearer token",
        )
        .into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
        .into_response()
}
