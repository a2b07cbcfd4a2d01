//! The audit log over HTTP: `/v1/audit`, `/v1/audit/verify`, `/admin/v1/audit/verify`.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use silo_tenant_runtime::TenantId;

use crate::audit::verify_chain;
use crate::auth::{Principal, Role, Scope};
use crate::catalog::{AuditFilter, StoredAuditEvent};
use crate::error::{ApiError, ApiResult};
use crate::http::admin::Admin;
use crate::http::extract::ApiQuery;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    /// Cursor: events after this id.
    after: Option<i64>,
    /// Comma-separated actions, e.g. `auth.login,auth.logout`.
    action: Option<String>,
    /// RFC 3339 bounds on `at`: `since` inclusive, `until` exclusive.
    since: Option<String>,
    until: Option<String>,
}

fn view(e: StoredAuditEvent) -> Value {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    json!({
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "ip": e.ip,
        "user_agent": e.user_agent,
        "request_id": e.request_id,
        "outcome": e.outcome,
        "before": parse(e.before),
        "after": parse(e.after),
        "hash": hex::encode(&e.hash),
        "prev_hash": hex::encode(&e.prev_hash),
    })
}

/// Admins, or API keys with `audit:read`.
fn may_read_audit(principal: &Principal) -> ApiResult<()> {
    principal.require(Role::Admin)?;
    principal.require_scope(Scope::AuditRead)
}

/// `GET /v1/audit?limit=&after=&action=&since=&until=`: the tenant's events, oldest first.
pub(crate) async fn handle_audit_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Value>> {
    may_read_audit(&principal)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidInput(
            "limit must be between 1 and 1000".to_owned(),
        ));
    }
    let filter = AuditFilter {
        actions: q
            .action
            .as_deref()
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        after_id: q.after,
        since: q.since,
        until: q.until,
        limit,
    };
    let tenant = principal.tenant;
    let events = state
        .catalog
        .blocking(move |c| c.audit_events(tenant, &filter))
        .await?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(
        json!({ "events": events.into_iter().map(view).collect::<Vec<_>>(), "next": next }),
    ))
}

/// `GET /v1/audit/export`: the tenant's whole audit log as JSON lines (one event per line,
/// oldest first), read page by page so memory stays bounded.
pub(crate) async fn handle_audit_export(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    may_read_audit(&principal)?;
    let tenant = principal.tenant;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    let catalog = state.catalog.clone();
    tokio::spawn(async move {
        let mut after = None;
        loop {
            let filter = AuditFilter {
                after_id: after,
                limit: 500,
                ..AuditFilter::default()
            };
            let page = match catalog
                .blocking(move |c| c.audit_events(tenant, &filter))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    // Report the failure at the end of the stream, not as a silent truncation.
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let Some(last) = page.last().map(|e| e.id) else {
                return;
            };
            let mut chunk = String::new();
            for e in page {
                chunk.push_str(&view(e).to_string());
                chunk.push('\n');
            }
            if tx.send(Ok(chunk.into())).await.is_err() {
                return;
            }
            after = Some(last);
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response())
}

/// A receiver as a stream (what `tokio-stream`'s wrapper does, in a few lines).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct Rx<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

/// `GET /v1/audit/verify`: checks the tenant's chain and its signed head.
pub(crate) async fn handle_audit_verify(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    may_read_audit(&principal)?;
    let (tenant, keyring) = (principal.tenant, state.keyring.clone());
    let report = state
        .catalog
        .blocking(move |c| {
            verify_chain(c, &keyring, Some(tenant))
                .map_err(|e| crate::catalog::CatalogError::Corrupt(format!("{e:#}")))
        })
        .await?;
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize)]
pub(crate) struct AdminVerifyQuery {
    tenant: Option<String>,
}

/// `GET /admin/v1/audit/verify[?tenant=ID]`: one chain, or every chain (the platform's and
/// each tenant's).
pub(crate) async fn handle_admin_audit_verify(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminVerifyQuery>,
) -> ApiResult<Json<silo_api::AuditVerification>> {
    let only: Option<TenantId> = q
        .tenant
        .as_deref()
        .map(|t| {
            t.parse()
                .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))
        })
        .transpose()?;
    if let Some(t) = only
        && !state.catalog.blocking(move |c| c.tenant_exists(t)).await?
        && state
            .catalog
            .blocking(move |c| c.audit_chain(Some(t)))
            .await?
            .is_empty()
    {
        return Err(ApiError::NotFound(
            "no such tenant, and no audit chain for it".to_owned(),
        ));
    }
    let keyring = state.keyring.clone();
    let chains = state
        .catalog
        .blocking(move |c| {
            let chains = match only {
                Some(t) => vec![Ok(Some(t))],
                None => c.audit_chains()?,
            };
            chains
                .into_iter()
                .map(|chain| match chain {
                    Ok(chain) => verify_chain(c, &keyring, chain)
                        .map(|r| {
                            (
                                chain.map_or_else(|| "platform".to_owned(), |t| t.to_string()),
                                r,
                            )
                        })
                        .map_err(|e| crate::catalog::CatalogError::Corrupt(format!("{e:#}"))),
                    Err(bad_key) => Ok((
                        bad_key,
                        crate::audit::VerifyReport {
                            ok: false,
                            checked: 0,
                            first_bad_id: None,
                            reason: Some(
                                "a chain key that is not a tenant id (tampered)".to_owned(),
                            ),
                        },
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let ok = chains.iter().all(|(_, r)| r.ok);
    let checked: usize = chains.iter().map(|(_, r)| r.checked).sum();
    let chains = chains
        .into_iter()
        .map(|(chain, r)| silo_api::ChainReport {
            chain,
            ok: r.ok,
            checked: r.checked,
            first_bad_id: r.first_bad_id,
            reason: r.reason,
        })
        .collect();
    Ok(Json(silo_api::AuditVerification {
        ok,
        checked,
        chains,
    }))
}
