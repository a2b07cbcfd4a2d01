//! libSQL clients over HTTP (Hrana 2 and 3, JSON): `/v2`, `/v3`, `/v2/pipeline`,
//! `/v3/pipeline`, `/v3/cursor`, plus sqld's `/health` and `/version`.
//!
//! The tenant comes from the credential (`Authorization: Bearer <access token or API key>`,
//! which is what clients send for their `authToken`), exactly as on `/v1/db/*`; so do the
//! role, the scopes and the sandbox. A stream lives across requests through its baton:
//! random, MAC'd with a per-process key, and bound to the tenant and the credential that
//! opened it. The statement work is `silo_tenant_runtime::hrana`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use silo_tenant_runtime::hrana::{Batch, Session, StreamRequest, StreamResult};
use silo_tenant_runtime::{AccessLevel, TenantId};

use crate::audit::RequestMeta;
use crate::auth::{Actor, Principal};
use crate::error::ApiError;
use crate::http::data::{audit_schema_change, data_access};
use crate::http::extract::ApiJson;
use crate::state::AppState;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Streams one tenant may have open at once.
const MAX_STREAMS_PER_TENANT: usize = 1_000;
const STREAM_ID_LEN: usize = 16;
const MAC_LEN: usize = 32;

/// How long streams live.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// A stream unused this long is closed (sqld: 10 s).
    pub idle: Duration,
    /// A transaction held open this long is rolled back and its stream closed: it holds
    /// the tenant's writer, which every other writer of the tenant waits for.
    pub transaction: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            idle: Duration::from_secs(10),
            transaction: Duration::from_secs(15),
        }
    }
}

/// The open streams of every tenant, in memory (a restart closes them all, as in sqld).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<StreamsInner>,
}

struct StreamsInner {
    key: [u8; 32],
    limits: StreamLimits,
    map: Mutex<HashMap<[u8; STREAM_ID_LEN], Arc<Mutex<Stream>>>>,
}

struct Stream {
    tenant: TenantId,
    /// Who opened it: the session of a user, or an API key.
    credential: String,
    /// The sequence number the next request's baton must carry: a baton works once.
    seq: u64,
    last_used: Instant,
    session: Session,
}

/// Why a baton is refused.
enum BatonError {
    Invalid,
    Expired,
    Reused,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams {
            inner: Arc::new(StreamsInner {
                key: silo_crypto::random_bytes(),
                limits,
                map: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; STREAM_ID_LEN], Arc<Mutex<Stream>>>> {
        self.inner
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mac(&self, id: &[u8], seq: u64, tenant: TenantId, credential: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.inner.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(id);
        mac.update(&seq.to_be_bytes());
        mac.update(tenant.to_string().as_bytes());
        mac.update(&[0]);
        mac.update(credential.as_bytes());
        mac
    }

    fn baton(
        &self,
        id: &[u8; STREAM_ID_LEN],
        seq: u64,
        tenant: TenantId,
        credential: &str,
    ) -> String {
        let tag = self
            .mac(id, seq, tenant, credential)
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(STREAM_ID_LEN + 8 + MAC_LEN);
        raw.extend_from_slice(id);
        raw.extend_from_slice(&seq.to_be_bytes());
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The stream a baton names, if the baton was made by this process for this tenant and
    /// credential, and is the stream's current one.
    fn open(
        &self,
        baton: &str,
        tenant: TenantId,
        credential: &str,
    ) -> Result<([u8; STREAM_ID_LEN], Arc<Mutex<Stream>>), BatonError> {
        let raw = URL_SAFE_NO_PAD
            .decode(baton)
            .map_err(|_| BatonError::Invalid)?;
        if raw.len() != STREAM_ID_LEN + 8 + MAC_LEN {
            return Err(BatonError::Invalid);
        }
        let (id, rest) = raw.split_at(STREAM_ID_LEN);
        let (seq, tag) = rest.split_at(8);
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| BatonError::Invalid)?);
        // Constant-time: the MAC binds the baton to this tenant and this credential, so a
        // baton replayed with any other credential fails here.
        self.mac(id, seq, tenant, credential)
            .verify_slice(tag)
            .map_err(|_| BatonError::Invalid)?;
        let id: [u8; STREAM_ID_LEN] = id.try_into().map_err(|_| BatonError::Invalid)?;
        let stream = self.map().get(&id).cloned().ok_or(BatonError::Expired)?;
        {
            // Never wait here (an async thread): a stream busy with a request is in use.
            let s = stream.try_lock().map_err(|_| BatonError::Reused)?;
            if s.tenant != tenant || s.credential != credential {
                return Err(BatonError::Invalid);
            }
            if s.seq != seq {
                return Err(BatonError::Reused);
            }
        }
        Ok((id, stream))
    }

    fn create(
        &self,
        tenant: TenantId,
        credential: String,
    ) -> Result<([u8; STREAM_ID_LEN], Arc<Mutex<Stream>>), ApiError> {
        let mut map = self.map();
        let of_tenant = map
            .values()
            .filter(|s| s.try_lock().is_ok_and(|s| s.tenant == tenant))
            .count();
        if of_tenant >= MAX_STREAMS_PER_TENANT {
            return Err(ApiError::RateLimited(Duration::from_secs(1)));
        }
        let id: [u8; STREAM_ID_LEN] = silo_crypto::random_bytes();
        let stream = Arc::new(Mutex::new(Stream {
            tenant,
            credential,
            seq: u64::from_be_bytes(silo_crypto::random_bytes()),
            last_used: Instant::now(),
            session: Session::new(),
        }));
        map.insert(id, stream.clone());
        Ok((id, stream))
    }

    fn remove(&self, id: &[u8; STREAM_ID_LEN]) -> Option<Arc<Mutex<Stream>>> {
        self.map().remove(id)
    }

    /// Closes every stream of `tenant` (before its DB token changes or its data goes):
    /// open transactions roll back. Blocking.
    pub fn close_tenant(&self, tenant: TenantId) {
        let mut map = self.map();
        let ids: Vec<_> = map
            .iter()
            .filter(|(_, s)| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .tenant
                    == tenant
            })
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<_> = ids.iter().filter_map(|id| map.remove(id)).collect();
        drop(map);
        drop(gone);
    }

    /// Closes streams idle past the limit, and rolls back transactions held past theirs.
    /// A stream in the middle of a request is left for the next sweep. Blocking: closing
    /// rolls back on the tenant's connection.
    pub fn sweep(&self) -> usize {
        let limits = self.inner.limits;
        let mut map = self.map();
        let expired: Vec<_> = map
            .iter()
            .filter(|(_, s)| {
                s.try_lock().is_ok_and(|s| {
                    s.last_used.elapsed() > limits.idle
                        || s.session
                            .transaction_started()
                            .is_some_and(|t| t.elapsed() > limits.transaction)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<_> = expired.iter().filter_map(|id| map.remove(id)).collect();
        drop(map);
        let n = gone.len();
        for stream in gone {
            let mut s = stream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.session.transaction_started().is_some() {
                tracing::info!(tenant_id = %s.tenant, "libSQL stream expired inside a transaction; rolled back");
            }
            s.session.close();
        }
        metrics::gauge!("silo_hrana_streams_open").set(self.map().len() as f64);
        n
    }

    pub fn limits(&self) -> StreamLimits {
        self.inner.limits
    }
}

/// A stream-level refusal, answered the way sqld answers it (`{"message", "code"}`, which
/// clients show), with silo's usual `error` object beside it.
fn stream_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "message": message,
        "code": code,
        "error": { "code": code.to_ascii_lowercase(), "message": message },
    });
    (status, Json(body)).into_response()
}

impl BatonError {
    fn into_response(self) -> Response {
        match self {
            BatonError::Invalid => stream_error(
                StatusCode::BAD_REQUEST,
                "BATON_INVALID",
                "the baton is not valid for this credential: a baton works only with the \
                 credential that opened its stream",
            ),
            BatonError::Expired => stream_error(
                StatusCode::BAD_REQUEST,
                "STREAM_EXPIRED",
                "the stream has expired (idle too long, or its transaction was held open past \
                 the limit and rolled back); open a new stream",
            ),
            BatonError::Reused => stream_error(
                StatusCode::BAD_REQUEST,
                "BATON_REUSED",
                "this baton was already used; send the baton of the latest response",
            ),
        }
    }
}

fn credential_of(principal: &Principal) -> String {
    match &principal.actor {
        Actor::User { session_id, .. } => format!("session:{session_id}"),
        Actor::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
    }
}

#[derive(Deserialize)]
pub(crate) struct PipelineRequest {
    #[serde(default)]
    baton: Option<String>,
    requests: Vec<StreamRequest>,
}

#[derive(Serialize)]
struct PipelineResponse {
    baton: Option<String>,
    base_url: Option<String>,
    results: Vec<StreamResult>,
}

#[derive(Deserialize)]
pub(crate) struct CursorRequest {
    #[serde(default)]
    baton: Option<String>,
    batch: Batch,
}

#[derive(Serialize)]
struct CursorHead {
    baton: Option<String>,
    base_url: Option<String>,
}

/// Most requests in one pipeline.
const MAX_PIPELINE_REQUESTS: usize = 1_000;

pub(crate) async fn handle_pipeline(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(body): ApiJson<PipelineRequest>,
) -> Response {
    if body.requests.len() > MAX_PIPELINE_REQUESTS {
        return ApiError::InvalidInput(format!(
            "a pipeline holds at most {MAX_PIPELINE_REQUESTS} requests"
        ))
        .into_response();
    }
    let requests = body.requests;
    match run_on_stream(
        &state,
        &principal,
        &meta,
        body.baton,
        move |session, handle, level| session.pipeline(handle, level, requests),
    )
    .await
    {
        Ok((baton, results)) => Json(PipelineResponse {
            baton,
            base_url: None,
            results,
        })
        .into_response(),
        Err(response) => response,
    }
}

pub(crate) async fn handle_cursor(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CursorRequest>,
) -> Response {
    let batch = body.batch;
    match run_on_stream(
        &state,
        &principal,
        &meta,
        body.baton,
        move |session, handle, level| session.cursor(handle, level, batch),
    )
    .await
    {
        Ok((baton, entries)) => {
            // Newline-delimited JSON: the head, then one entry a line. The entries are built
            // within the result size cap, so they are sent as one body.
            let mut out = Vec::new();
            let head = CursorHead {
                baton,
                base_url: None,
            };
            let lines = std::iter::once(serde_json::to_vec(&head))
                .chain(entries.iter().map(serde_json::to_vec));
            for line in lines {
                match line {
                    Ok(line) => {
                        out.extend_from_slice(&line);
                        out.push(b'\n');
                    }
                    Err(e) => return ApiError::internal(e).into_response(),
                }
            }
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                Body::from(out),
            )
                .into_response()
        }
        Err(response) => response,
    }
}

/// Finds (or opens) the caller's stream, runs `work` on it on a blocking thread inside the
/// tenant's concurrency gate, audits schema changes, and answers the next baton (`None`
/// once the stream is closed).
async fn run_on_stream<T, F>(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    baton: Option<String>,
    work: F,
) -> Result<(Option<String>, T), Response>
where
    T: Send + 'static,
    F: FnOnce(
            &mut Session,
            &Arc<silo_tenant_runtime::TenantHandle>,
            AccessLevel,
        ) -> (T, silo_tenant_runtime::hrana::Outcome)
        + Send
        + 'static,
{
    let level = data_access(principal).map_err(IntoResponse::into_response)?;
    let tenant = principal.tenant;
    let credential = credential_of(principal);
    let streams = state.streams.clone();
    let (id, stream) = match baton.as_deref() {
        Some(b) => streams
            .open(b, tenant, &credential)
            .map_err(BatonError::into_response)?,
        None => streams
            .create(tenant, credential.clone())
            .map_err(IntoResponse::into_response)?,
    };
    let ran = state
        .with_tenant(tenant, move |handle| {
            let mut s = stream.try_lock().map_err(|_| {
                silo_tenant_runtime::RuntimeError::InvalidInput(
                    "this baton is in use by another request; send one request per stream at a time"
                        .to_owned(),
                )
            })?;
            let (out, outcome) = work(&mut s.session, handle, level);
            s.last_used = Instant::now();
            s.seq = s.seq.wrapping_add(1);
            let next = if s.session.is_closed() {
                None
            } else {
                Some(s.seq)
            };
            Ok((out, outcome, next))
        })
        .await;
    let (out, outcome, next) = match ran {
        Ok(v) => v,
        Err(e) => {
            // The stream stays as it was: its baton still works for a retry.
            return Err(e.into_response());
        }
    };
    let baton = match next {
        Some(seq) => Some(streams.baton(&id, seq, tenant, &credential)),
        None => {
            if let Some(gone) = streams.remove(&id) {
                // Dropped on a blocking thread: it may hold a connection to roll back.
                drop(tokio::task::spawn_blocking(move || drop(gone)));
            }
            None
        }
    };
    if !outcome.schema_changes.is_empty() {
        audit_schema_change(state, principal, meta, outcome.schema_changes)
            .await
            .map_err(IntoResponse::into_response)?;
    }
    Ok((baton, out))
}

/// `GET /v2`, `GET /v3`: the protocol versions are spoken here.
pub(crate) async fn handle_version_probe() -> &'static str {
    "Hello, this is HTTP API v2 (Hrana over HTTP)"
}

/// `GET /health`, as sqld answers it: 200, empty.
pub(crate) async fn handle_health() -> StatusCode {
    StatusCode::OK
}

/// `GET /version`, as sqld answers it: the server's name and version, as text.
pub(crate) async fn handle_version() -> String {
    format!("silo {}", env!("CARGO_PKG_VERSION"))
}
