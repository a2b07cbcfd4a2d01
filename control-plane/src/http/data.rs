//! Tenant data over JSON: `/v1/db/query` and `/v1/db/batch`. The tenant is the caller's,
//! from its credential; the SQL runs on that tenant's own handle, in the sandbox.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use silo_tenant_runtime::{AccessLevel, QueryResult, Statement};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, LazyMeta};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::state::{AppState, INLINE_BUDGET};

/// Most statements in one batch.
/// The body limit is the real bound; this only keeps a raised one from meaning millions
/// (as `silo_tenant_runtime::hrana::MAX_BATCH_STEPS`).
const MAX_BATCH_STATEMENTS: usize = 100_000;

pub(crate) async fn handle_db_query(
    State(state): State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    ApiJson(statement): ApiJson<Statement>,
) -> ApiResult<Json<QueryResult>> {
    let level = data_access(&principal)?;
    let now = state.try_tenant_now(principal.tenant, |handle| {
        handle.execute_now(&statement, level, INLINE_BUDGET)
    });
    let (result, sql) = match now {
        Some(result) => (result?, statement.sql),
        None => {
            // Boxed: the rare way, kept out of the size of every request's future.
            Box::pin(state.with_tenant(principal.tenant, move |handle| {
                handle
                    .execute(&statement, level)
                    .map(|r| (r, statement.sql))
            }))
            .await?
        }
    };
    if result.schema_changed {
        Box::pin(audit_schema_change(&state, &principal, &meta, vec![sql])).await?;
    }
    Ok(Json(result))
}

/// Schema changes made through the data routes are audited, one event per request, as the
/// kind of statement and the SHA-256 of its text: never the text itself, whose literals
/// (defaults, view bodies) are tenant data that must not outlive the tenant's deletion.
pub(crate) async fn audit_schema_change(
    state: &AppState,
    principal: &Principal,
    meta: &LazyMeta,
    statements: Vec<String>,
) -> ApiResult<()> {
    use sha2::Digest as _;
    let statements: Vec<serde_json::Value> = statements
        .iter()
        .map(|s| {
            serde_json::json!({
                "kind": statement_kind(s),
                "sha256": hex::encode(sha2::Sha256::digest(s.as_bytes())),
                "length": s.len(),
            })
        })
        .collect();
    let rec = AuditRecord::new(
        Some(principal.tenant),
        principal.actor(),
        AuditAction::SchemaChanged,
        &meta.resolve(),
    )
    .target(format!("tenant:{}", principal.tenant))
    .after(serde_json::json!({ "statements": statements }));
    state.audit(rec).await
}

/// "CREATE TABLE", "DROP INDEX", "CREATE VIRTUAL TABLE", …: the leading keywords only.
fn statement_kind(sql: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "CREATE",
        "DROP",
        "ALTER",
        "TABLE",
        "INDEX",
        "VIEW",
        "TRIGGER",
        "VIRTUAL",
        "TEMP",
        "TEMPORARY",
        "UNIQUE",
    ];
    sql.split_whitespace()
        .map(str::to_ascii_uppercase)
        .take_while(|w| KEYWORDS.contains(&w.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every role may reach its data; what its SQL may do is the access level, enforced by
/// the sandbox. An API key needs at least one `db:*` scope.
pub(crate) fn data_access(principal: &Principal) -> ApiResult<AccessLevel> {
    principal.access_level().ok_or(ApiError::Forbidden(
        "this API key has no db:read, db:write or db:admin scope",
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    statements: Vec<Statement>,
    /// All or nothing (default), or each statement on its own.
    #[serde(default = "default_true")]
    transaction: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Serialize)]
pub(crate) struct BatchResponse {
    results: Vec<QueryResult>,
}

pub(crate) async fn handle_db_batch(
    State(state): State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> ApiResult<Json<BatchResponse>> {
    let level = data_access(&principal)?;
    if batch.statements.is_empty() {
        return Err(ApiError::InvalidInput("statements is empty".to_owned()));
    }
    if batch.statements.len() > MAX_BATCH_STATEMENTS {
        return Err(ApiError::InvalidInput(format!(
            "a batch holds at most {MAX_BATCH_STATEMENTS} statements"
        )));
    }
    let sqls: Vec<String> = batch.statements.iter().map(|s| s.sql.clone()).collect();
    let results = state
        .with_tenant(principal.tenant, move |handle| {
            handle.batch(&batch.statements, batch.transaction, level)
        })
        .await?;
    let ddl: Vec<String> = results
        .iter()
        .zip(sqls)
        .filter(|(r, _)| r.schema_changed)
        .map(|(_, sql)| sql)
        .collect();
    if !ddl.is_empty() {
        audit_schema_change(&state, &principal, &meta, ddl).await?;
    }
    Ok(Json(BatchResponse { results }))
}
