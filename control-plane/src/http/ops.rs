//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The process is up and answering.
pub(crate) async fn handle_healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The catalog answers: this instance can serve requests.
pub(crate) async fn handle_readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state
        .catalog
        .blocking(|c| c.ping())
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("catalog not reachable: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}
