//! Reading and verifying the audit log (writing it is [`AppState::audit`]).

use silo_api as api;
use silo_tenant_runtime::TenantId;

use crate::audit::verify_chain;
use crate::catalog::{AuditFilter, CatalogError, StoredAuditEvent};
use crate::error::{ApiError, ApiResult};
use crate::service::tenant::page_limit;
use crate::state::AppState;

/// Which events of a tenant to read.
pub(crate) struct EventQuery {
    pub(crate) limit: Option<i64>,
    /// Cursor: events after this id.
    pub(crate) after: Option<i64>,
    /// Comma-separated actions, e.g. `auth.login,auth.logout`.
    pub(crate) action: Option<String>,
    /// RFC 3339 bounds on `at`: `since` inclusive, `until` exclusive.
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
}

fn view(e: StoredAuditEvent) -> api::AuditEvent {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    api::AuditEvent {
        id: e.id,
        at: e.at,
        actor: e.actor,
        action: e.action,
        target: e.target,
        ip: e.ip,
        user_agent: e.user_agent,
        request_id: e.request_id,
        outcome: e.outcome,
        before: parse(e.before),
        after: parse(e.after),
        hash: hex::encode(&e.hash),
        prev_hash: hex::encode(&e.prev_hash),
    }
}

/// A page of the tenant's events, oldest first.
pub(crate) async fn events(
    state: &AppState,
    tenant: TenantId,
    q: EventQuery,
) -> ApiResult<api::AuditEvents> {
    let limit = page_limit(q.limit)?;
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
    let events = state
        .catalog
        .blocking(move |c| c.audit_events(tenant, &filter))
        .await?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(api::AuditEvents {
        events: events.into_iter().map(view).collect(),
        next,
    })
}

/// The tenant's whole audit log as JSON lines (one event per line, oldest first), read
/// page by page on a task of its own so memory stays bounded. A read failure ends the
/// stream with an error, never a silent truncation.
pub(crate) fn export(
    state: &AppState,
    tenant: TenantId,
) -> tokio::sync::mpsc::Receiver<Result<String, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
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
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let Some(last) = page.last().map(|e| e.id) else {
                return;
            };
            let mut chunk = String::new();
            for e in page {
                match serde_json::to_string(&view(e)) {
                    Ok(line) => chunk.push_str(&line),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                }
                chunk.push('\n');
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            after = Some(last);
        }
    });
    rx
}

fn check(r: crate::audit::VerifyReport) -> api::ChainCheck {
    api::ChainCheck {
        ok: r.ok,
        checked: r.checked,
        first_bad_id: r.first_bad_id,
        reason: r.reason,
    }
}

/// Checks the tenant's chain and its signed head.
pub(crate) async fn verify(state: &AppState, tenant: TenantId) -> ApiResult<api::ChainCheck> {
    let keyring = state.keyring.clone();
    let report = state
        .catalog
        .blocking(move |c| {
            verify_chain(c, &keyring, Some(tenant))
                .map_err(|e| CatalogError::Corrupt(format!("{e:#}")))
        })
        .await?;
    Ok(check(report))
}

/// Checks one tenant's chain, or every chain (the platform's and each tenant's).
pub(crate) async fn verify_all(
    state: &AppState,
    only: Option<TenantId>,
) -> ApiResult<api::AuditVerification> {
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
                                check(r),
                            )
                        })
                        .map_err(|e| CatalogError::Corrupt(format!("{e:#}"))),
                    Err(bad_key) => Ok((
                        bad_key,
                        api::ChainCheck {
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
    Ok(api::AuditVerification {
        ok,
        checked,
        chains: chains
            .into_iter()
            .map(|(chain, r)| api::ChainReport {
                chain,
                ok: r.ok,
                checked: r.checked,
                first_bad_id: r.first_bad_id,
                reason: r.reason,
            })
            .collect(),
    })
}
