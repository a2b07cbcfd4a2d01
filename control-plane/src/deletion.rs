//! Tenant deletion: after the grace period, crypto-shredding, then a signed certificate.
//!
//! The reaper destroys a due tenant in a fixed order, each step idempotent, and the tenant
//! stays `deleting` until the last step: a crash anywhere is finished at the next start.
//! 1. The sealed DB token is destroyed: from here on nobody can read the database file, nor
//!    any backup of it.
//! 2. The database file and its `-wal`/`-shm` are deleted.
//! 3. In one transaction: the tenant's rows go (accounts that belong to it alone, memberships,
//!    sessions, keys, invitations) and the signed certificate is stored. Audit events stay.

use silo_types::AuditAction;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::Sha256;
use silo_crypto::Keyring;
use silo_tenant_runtime::TenantId;

use crate::audit::{AuditRecord, RequestMeta};
use crate::error::ApiError;
use crate::state::AppState;

const CERTIFICATE_KEY_LABEL: &str = "deletion-certificate/hmac-sha256";
pub const CERTIFICATE_TOKEN_PREFIX: &str = "silo_cert_";

/// Schedules the tenant's deletion after the grace period (the tenant is suspended at
/// once) and returns (delete_after, certificate token). The token fetches the signed
/// certificate once the deletion is complete; it is shown only here.
pub async fn schedule(
    state: &AppState,
    tenant: TenantId,
) -> Result<(i64, secrecy::SecretString), ApiError> {
    let token = silo_crypto::random_token(CERTIFICATE_TOKEN_PREFIX);
    let hash = silo_crypto::hash_token(secrecy::ExposeSecret::expose_secret(&token));
    let after = crate::catalog::now_unix()
        + i64::try_from(state.deletion_grace.as_secs()).unwrap_or(i64::MAX / 2);
    state
        .catalog
        .blocking(move |c| c.schedule_deletion(tenant, after, &hash))
        .await?;
    state.close_tenant(tenant).await;
    Ok((after, token))
}

/// Signs a certificate: HMAC-SHA256 over its canonical JSON (keys sorted, no spaces).
fn sign(
    keyring: &Keyring,
    key_id: silo_crypto::KeyId,
    certificate: &Value,
) -> anyhow::Result<String> {
    let key = keyring.derive_key(key_id, CERTIFICATE_KEY_LABEL)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.expose_secret())
        .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(serde_json::to_string(certificate)?.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks a certificate document `{"certificate", "key_id", "signature"}`.
pub fn verify_certificate(keyring: &Keyring, document: &Value) -> anyhow::Result<bool> {
    let key_id = document["key_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the document has no key_id"))?;
    let key_id = keyring
        .key_ids()
        .find(|k| k.to_string() == key_id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the certificate was signed with master key {key_id}, which is not configured"
            )
        })?;
    let signature = document["signature"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the document has no signature"))?;
    let expected = sign(keyring, key_id, &document["certificate"])?;
    Ok(silo_crypto::constant_time_eq(
        expected.as_bytes(),
        signature.as_bytes(),
    ))
}

/// Destroys one due tenant (blocking). See the module doc for the order.
fn destroy(
    state: &AppState,
    tenant: TenantId,
    name: &str,
    requested_at: &str,
    pause: Option<Duration>,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("delete_tenant", tenant_id = %tenant);
    let _entered = span.enter();
    state.catalog.shred_db_token(tenant)?;
    if let Some(p) = pause {
        tracing::warn!(
            ?p,
            "test pause point: DB token destroyed, files not yet deleted"
        );
        std::thread::sleep(p);
    }
    state.drop_connections(tenant);
    let placement = state.provisioner.placement();
    let file = placement.path(tenant);
    placement.destroy(tenant)?;
    let keyring = state.keyring.clone();
    let key_id = keyring.primary_id();
    let completed_at = state.catalog.now_text()?;
    let files: Vec<String> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            format!(
                "{}{s}",
                file.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        })
        .collect();
    let mut signing_error = None;
    let purged = state.catalog.purge_tenant(tenant, |purged| {
        let certificate = json!({
            "tenant_id": tenant.to_string(),
            "tenant_name": name,
            "requested_at": requested_at,
            "completed_at": completed_at,
            "destroyed": {
                "db_token": "the sealed DB token was destroyed first: the database and any copy of it can no longer be decrypted",
                "database_files": files,
                "accounts": purged.users,
                "memberships": purged.memberships,
                "sessions": purged.sessions,
                "api_keys": purged.api_keys,
                "invitations": purged.invites,
            },
            "retained": "security audit events, for the audit retention period",
        });
        let signature = sign(&keyring, key_id, &certificate).unwrap_or_else(|e| {
            signing_error = Some(e.to_string());
            String::new()
        });
        json!({ "certificate": certificate, "key_id": key_id.to_string(), "signature": signature }).to_string()
    })?;
    if let Some(e) = signing_error {
        anyhow::bail!("signing the certificate: {e}");
    }
    let rec = AuditRecord::new(
        Some(tenant),
        "system",
        AuditAction::TenantDeleted,
        &RequestMeta::default(),
    )
    .target(format!("tenant:{tenant}"))
    .after(serde_json::to_value(&purged)?);
    state.catalog.append_audit(&state.keyring, &rec)?;
    tracing::info!("tenant destroyed");
    Ok(())
}

/// Destroys every tenant whose grace period is over, then purges the audit chains of
/// deleted tenants past `audit_retention`. Run at start-up and on a timer.
pub async fn reap(state: &AppState, pause: Option<Duration>, audit_retention: Duration) {
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (tenant, name, requested_at) in st.catalog.due_deletions()? {
            if let Err(e) = destroy(&st, tenant, &name, &requested_at, pause) {
                tracing::error!(tenant_id = %tenant, error = format!("{e:#}"), "tenant deletion failed; retrying later");
            }
        }
        let retention = i64::try_from(audit_retention.as_secs()).unwrap_or(i64::MAX / 2);
        for tenant in st.catalog.purge_expired_audit(retention)? {
            tracing::info!(tenant_id = %tenant, "audit events of a deleted tenant purged after the retention period");
        }
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "deletion reaper failed"),
        Err(e) => tracing::error!(error = %e, "deletion reaper task failed"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use silo_crypto::MasterKey;

    #[test]
    fn a_certificate_verifies_and_any_change_breaks_it() {
        let ring = Keyring::new(MasterKey::generate(), vec![]);
        let cert = json!({ "tenant_id": "t", "destroyed": { "accounts": 2 } });
        let doc = json!({ "certificate": cert, "key_id": ring.primary_id().to_string(), "signature": sign(&ring, ring.primary_id(), &cert).unwrap() });
        assert!(verify_certificate(&ring, &doc).unwrap());
        let mut forged = doc.clone();
        forged["certificate"]["destroyed"]["accounts"] = json!(3);
        assert!(!verify_certificate(&ring, &forged).unwrap());
        let other = Keyring::new(MasterKey::generate(), vec![]);
        assert!(verify_certificate(&other, &doc).is_err());
    }
}
