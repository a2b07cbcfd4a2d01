//! The audit log's integrity: every chain (one per tenant, one for the platform) is a
//! SHA-256 hash chain over the events' canonical bytes, and its head is signed with an
//! HMAC under a key derived from the master key and kept outside the events table.
//!
//! What `verify` catches: an edited row (its hash no longer matches), a removed or
//! reordered row (a gap in `seq` or a broken `prev_hash` link), and a cut-off tail or a
//! rewritten chain (the signed head no longer matches the last event).
//!
//! Part of the catalog, which stores the chains: the hashing is how a row is written.

use hmac::{KeyInit, Mac};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use silo_crypto::Keyring;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use super::{Catalog, StoredAuditEvent};

/// The label of the key that signs chain heads.
const HEAD_KEY_LABEL: &str = "audit-head/hmac-sha256";
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Where a request came from, for the audit log (taken from the request by `audit`'s
/// extractors).
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One event to append. `before`/`after` describe what changed; never put a secret there.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// `None`: a platform event.
    pub tenant: Option<TenantId>,
    pub actor: String,
    pub action: AuditAction,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub meta: RequestMeta,
}

impl AuditRecord {
    pub fn new(
        tenant: Option<TenantId>,
        actor: impl Into<String>,
        action: AuditAction,
        meta: &RequestMeta,
    ) -> Self {
        AuditRecord {
            tenant,
            actor: actor.into(),
            action,
            target: None,
            outcome: Outcome::Success,
            before: None,
            after: None,
            meta: meta.clone(),
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// The chain a tenant's events belong to ("" is the platform's).
pub fn chain_of(tenant: Option<TenantId>) -> String {
    tenant.map(|t| t.to_string()).unwrap_or_default()
}

/// SHA-256 over the previous hash and the event's fields, each length-prefixed in a fixed
/// order (absent fields are marked, so "" and absent differ).
pub fn event_hash(prev: &[u8], e: &StoredAuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"silo/v1/audit-event");
    h.update(prev);
    let seq = e.seq.to_string();
    let fields: [Option<&str>; 12] = [
        e.tenant_id.as_deref(),
        Some(&seq),
        Some(&e.at),
        Some(&e.actor),
        Some(&e.action),
        e.target.as_deref(),
        e.ip.as_deref(),
        e.user_agent.as_deref(),
        e.request_id.as_deref(),
        Some(&e.outcome),
        e.before.as_deref(),
        e.after.as_deref(),
    ];
    for f in fields {
        match f {
            Some(s) => {
                h.update(u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(u32::MAX.to_be_bytes()),
        }
    }
    h.finalize().into()
}

/// The head signature: HMAC-SHA256(key, chain ‖ seq ‖ hash).
pub fn head_mac(
    keyring: &Keyring,
    key_id: silo_crypto::KeyId,
    chain: &str,
    seq: i64,
    hash: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let key = keyring.derive_key(key_id, HEAD_KEY_LABEL)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.expose_secret())
        .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(&u32::try_from(chain.len()).unwrap_or(u32::MAX).to_be_bytes());
    mac.update(chain.as_bytes());
    mac.update(&seq.to_be_bytes());
    mac.update(hash);
    Ok(mac.finalize().into_bytes().to_vec())
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checked: usize,
    pub first_bad_id: Option<i64>,
    /// Why verification failed, for people.
    pub reason: Option<String>,
}

/// Walks one chain from its first event and checks every link, then the signed head.
/// Blocking.
pub fn verify_chain(
    catalog: &Catalog,
    keyring: &Keyring,
    tenant: Option<TenantId>,
) -> anyhow::Result<VerifyReport> {
    let chain = chain_of(tenant);
    let (events, head) = catalog.audit_chain_and_head(tenant)?;
    let bad = |checked: usize, id: Option<i64>, reason: String| VerifyReport {
        ok: false,
        checked,
        first_bad_id: id,
        reason: Some(reason),
    };
    let mut prev = GENESIS.to_vec();
    for (i, e) in events.iter().enumerate() {
        let expected_seq = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        if e.seq != expected_seq {
            return Ok(bad(
                i,
                Some(e.id),
                format!(
                    "event {} is out of sequence (an event before it is missing)",
                    e.id
                ),
            ));
        }
        if e.prev_hash != prev {
            return Ok(bad(
                i,
                Some(e.id),
                format!("event {} does not link to the event before it", e.id),
            ));
        }
        if event_hash(&prev, e).as_slice() != e.hash.as_slice() {
            return Ok(bad(i, Some(e.id), format!("event {} was altered", e.id)));
        }
        prev.clone_from(&e.hash);
    }
    let checked = events.len();
    match (head, events.last()) {
        // A tenant's chain starts with its signup or creation: an existing tenant with no
        // events at all has lost its chain.
        (None, None) if tenant.is_some_and(|t| catalog.tenant_exists(t).unwrap_or(true)) => {
            return Ok(bad(
                0,
                None,
                "the tenant's audit chain is missing".to_owned(),
            ));
        }
        (None, None) => {}
        (None, Some(_)) => {
            return Ok(bad(
                checked,
                None,
                "the chain's signed head is missing".to_owned(),
            ));
        }
        (Some(h), last) => {
            let Some(key_id) = keyring.key_ids().find(|k| k.to_string() == h.mac_key_id) else {
                return Ok(bad(
                    checked,
                    None,
                    format!(
                        "the head was signed with master key {}, which is not configured (add it to SILO_PREVIOUS_MASTER_KEYS)",
                        h.mac_key_id
                    ),
                ));
            };
            let expected = head_mac(keyring, key_id, &chain, h.seq, &h.hash)?;
            if !silo_crypto::constant_time_eq(&expected, &h.mac) {
                return Ok(bad(
                    checked,
                    None,
                    "the chain's head signature does not match".to_owned(),
                ));
            }
            let (last_seq, last_hash) =
                last.map_or((0, GENESIS.to_vec()), |e| (e.seq, e.hash.clone()));
            if h.seq != last_seq || h.hash != last_hash {
                return Ok(bad(
                    checked,
                    None,
                    format!(
                        "the signed head names event {} of the chain but the log ends at {last_seq}: events were removed",
                        h.seq
                    ),
                ));
            }
        }
    }
    Ok(VerifyReport {
        ok: true,
        checked,
        first_bad_id: None,
        reason: None,
    })
}
