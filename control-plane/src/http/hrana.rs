//! libSQL clients over HTTP (Hrana 2 and 3, JSON): `/v2`, `/v3`, `/v2/pipeline`,
//! `/v3/pipeline`, `/v3/cursor`, plus sqld's `/health` and `/version`.
//!
//! The tenant comes from the credential (`Authorization: Bearer <access token or API key>`,
//! which is what clients send for their `authToken`), exactly as on `/v1/db/*`; so do the
//! role, the scopes and the sandbox. A stream lives across requests through its baton:
//! random, MAC'd with a per-process key, and bound to the tenant and the credential that
//! opened it. The statement work is `silo_tenant_runtime::hrana`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use silo_tenant_runtime::AccessLevel;
use silo_tenant_runtime::hrana::{
    Batch, PipelineRequest, Session, Stmt, StreamRequest, StreamResponse, StreamResult,
    WriteJson as _, write_opt_str,
};

use crate::audit::LazyMeta;
use crate::auth::{Actor, Principal};
use crate::error::ApiError;
use crate::http::Answer;
use crate::http::data::{audit_schema_change, data_access};
use crate::http::extract::{ApiJson, parse_json, read_body};
use crate::state::AppState;
use crate::streams::{BatonError, StreamEntry};
use silo_tenant_runtime::TenantId;

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

pub(crate) fn credential_of(principal: &Principal) -> String {
    match &principal.actor {
        Actor::User { session_id, .. } => format!("session:{session_id}"),
        Actor::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
    }
}

/// A pipeline's body: the common shape read directly (`PipelineRequest::read_common`, much
/// cheaper than serde), any other read by serde as every JSON body is.
pub(crate) struct Pipeline(PipelineRequest);

impl FromRequest<AppState> for Pipeline {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        match PipelineRequest::read_common(&bytes) {
            Some(body) => Ok(Pipeline(body)),
            None => parse_json(&bytes).map(Pipeline),
        }
    }
}

/// The fields a pipeline's and a cursor's answer begin with, the object left open:
/// `{"baton":…,"base_url":null` (silo names no other server for a stream).
fn write_head(out: &mut Vec<u8>, baton: Option<&str>) {
    out.extend_from_slice(br#"{"baton":"#);
    write_opt_str(out, baton);
    out.extend_from_slice(br#","base_url":null"#);
}

/// A pipeline's answer, `{"baton", "base_url", "results"}`, written by the Hrana JSON
/// writer (see `silo_tenant_runtime::hrana::WriteJson` for why not serde).
fn pipeline_response(baton: Option<&str>, results: &[StreamResult]) -> Response {
    // Room for a one-row answer, the usual size, without growing.
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, baton);
    out.extend_from_slice(br#","results":"#);
    results.write_json(&mut out);
    out.push(b'}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(out),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct CursorRequest {
    #[serde(default)]
    baton: Option<String>,
    batch: Batch,
}

/// Most requests in one pipeline.
const MAX_PIPELINE_REQUESTS: usize = 1_000;

pub(crate) fn handle_pipeline(
    State(state): State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    Pipeline(body): Pipeline,
) -> Answer {
    if body.requests.len() > MAX_PIPELINE_REQUESTS {
        return ApiError::InvalidInput(format!(
            "a pipeline holds at most {MAX_PIPELINE_REQUESTS} requests"
        ))
        .into_response()
        .into();
    }
    if body.baton.is_none()
        && let Some((stmt, autocommit)) = one_statement(&body.requests)
    {
        match pipeline_now(&state, &principal, stmt) {
            Now::Answered(response) => return response.into(),
            Now::Ran(ran) if ran.schema_change.is_none() => {
                return ran.respond(autocommit).into();
            }
            Now::Ran(ran) => {
                return Answer::later(async move {
                    respond_audited(&state, &principal, &meta, ran, autocommit).await
                });
            }
            Now::Later => {}
        }
    }
    Answer::later(pipeline_waiting(state, principal, meta, body))
}

/// The ways of a pipeline that wait: a one-statement pipeline on a blocking thread, and
/// every pipeline on a stream.
async fn pipeline_waiting(
    state: AppState,
    principal: Principal,
    meta: LazyMeta,
    body: PipelineRequest,
) -> Response {
    let requests = body.requests;
    // Here with a one-statement pipeline only when it was not quick enough to run at once.
    if body.baton.is_none()
        && let Some((stmt, autocommit)) = one_statement(&requests)
    {
        match pipeline_later(&state, &principal, stmt).await {
            Ok(Some(ran)) => {
                return respond_audited(&state, &principal, &meta, ran, autocommit).await;
            }
            Err(response) => return response,
            // A transaction statement: on a stream, below.
            Ok(None) => {}
        }
    }
    let ran = run_on_stream(
        &state,
        &principal,
        &meta,
        body.baton,
        move |session, handle, level| session.pipeline(handle, level, requests),
    )
    .await;
    match ran {
        Ok((baton, results)) => pipeline_response(baton.as_deref(), &results),
        Err(response) => response,
    }
}

/// Answers a one-statement pipeline, once its schema change, if any, is audited.
async fn respond_audited(
    state: &AppState,
    principal: &Principal,
    meta: &LazyMeta,
    mut ran: OneRan,
    autocommit: bool,
) -> Response {
    if let Some(sql) = ran.schema_change.take()
        && let Err(e) = audit_schema_change(state, principal, meta, vec![sql]).await
    {
        return e.into_response();
    }
    ran.respond(autocommit)
}

/// The statement of a stateless one-statement pipeline (`execute`, perhaps `get_autocommit`,
/// `close`: what clients send for a single query), and whether it asks for autocommit. Such
/// a pipeline runs like `/v1/db/query`, on this thread if that is quick, else on a blocking
/// thread, and without making a stream, which would close at once.
fn one_statement(requests: &[StreamRequest]) -> Option<(&Stmt, bool)> {
    match requests {
        [StreamRequest::Execute { stmt }, StreamRequest::Close] => Some((stmt, false)),
        [
            StreamRequest::Execute { stmt },
            StreamRequest::GetAutocommit,
            StreamRequest::Close,
        ] => Some((stmt, true)),
        _ => None,
    }
}

/// A one-statement pipeline that ran, and what it answered.
struct OneRan {
    first: StreamResult,
    /// Its text, when it changed the schema: audited before the answer.
    schema_change: Option<String>,
}

impl OneRan {
    fn new(
        ran: Result<
            (silo_tenant_runtime::hrana::StmtResult, bool),
            silo_tenant_runtime::RuntimeError,
        >,
        stmt: &Stmt,
    ) -> OneRan {
        match ran {
            Ok((result, changed)) => OneRan {
                first: StreamResult::Ok {
                    response: StreamResponse::Execute { result },
                },
                schema_change: changed.then(|| stmt.sql.clone().unwrap_or_default()),
            },
            // The statement failed and changed nothing (one statement in autocommit): its
            // error in the protocol's shape, as a stream would answer it, without running
            // it a second time.
            Err(e) => OneRan {
                first: StreamResult::Error {
                    error: silo_tenant_runtime::hrana::HError::from(&e),
                },
                schema_change: None,
            },
        }
    }

    fn respond(self, autocommit: bool) -> Response {
        let mut results = Vec::with_capacity(3);
        results.push(self.first);
        if autocommit {
            results.push(StreamResult::Ok {
                response: StreamResponse::GetAutocommit {
                    is_autocommit: true,
                },
            });
        }
        results.push(StreamResult::Ok {
            response: StreamResponse::Close,
        });
        pipeline_response(None, &results)
    }
}

/// How [`pipeline_now`] went.
enum Now {
    Answered(Response),
    Ran(OneRan),
    /// Not quick enough to run here: [`pipeline_later`].
    Later,
}

/// Runs a one-statement pipeline on this thread if that is quick (see
/// `AppState::try_tenant_now`).
fn pipeline_now(state: &AppState, principal: &Principal, stmt: &Stmt) -> Now {
    let level = match data_access(principal) {
        Ok(level) => level,
        Err(e) => return Now::Answered(e.into_response()),
    };
    let now = state.try_tenant_now(principal.tenant, |handle| {
        silo_tenant_runtime::hrana::execute_now(handle, level, stmt, crate::state::INLINE_BUDGET)
            // Its error, if any, is the statement's: answered in the pipeline's results.
            .map(Ok)
    });
    match now {
        Some(Ok(ran)) => Now::Ran(OneRan::new(ran, stmt)),
        Some(Err(e)) => Now::Answered(e.into_response()),
        None => Now::Later,
    }
}

/// A one-statement pipeline on a blocking thread, still without a stream. `Ok(None)`: it is
/// a transaction statement, which needs a stream. `Err`: it did not run (the tenant is over
/// its concurrency limit, or its database is unavailable), answered now: a stream would meet
/// the same after waiting again, and would be left open for a baton nobody received.
async fn pipeline_later(
    state: &AppState,
    principal: &Principal,
    stmt: &Stmt,
) -> Result<Option<OneRan>, Response> {
    let level = data_access(principal).map_err(IntoResponse::into_response)?;
    let owned = stmt.clone();
    match state
        .with_tenant(principal.tenant, move |handle| {
            Ok(silo_tenant_runtime::hrana::execute_alone(
                handle, level, &owned,
            ))
        })
        .await
    {
        Ok(Some(ran)) => Ok(Some(OneRan::new(ran, stmt))),
        // A transaction statement: it needs a stream.
        Ok(None) => Ok(None),
        Err(e) => Err(e.into_response()),
    }
}

pub(crate) async fn handle_cursor(
    State(state): State<AppState>,
    principal: Principal,
    meta: LazyMeta,
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
            write_head(&mut out, baton.as_deref());
            out.extend_from_slice(b"}\n");
            for entry in &entries {
                entry.write_json(&mut out);
                out.push(b'\n');
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
    meta: &LazyMeta,
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
    let (id, entry, seq) = match baton.as_deref() {
        Some(b) => streams
            .open(b, tenant, &credential)
            .map_err(BatonError::into_response)?,
        None => streams
            .create(tenant, credential.clone(), principal.user_id.clone())
            .map_err(|_| ApiError::RateLimited(Duration::from_secs(1)).into_response())?,
    };
    let ran = run_on_entry(state, tenant, entry, Some(seq), move |session, handle| {
        work(session, handle, level)
    })
    .await;
    let (out, outcome, next) = match ran {
        Ok(Ok(v)) => v,
        Ok(Err(baton_error)) => return Err(baton_error.into_response()),
        // Not run (gate full, database unavailable): the stream is as it was, and its baton
        // still works for a retry.
        Err(e) => return Err(e.into_response()),
    };
    let baton = match next {
        Some(seq) => Some(streams.baton(&id, seq, tenant, &credential)),
        None => {
            if let Some(gone) = streams.remove(&id) {
                // Closed inside the request: it holds no connection any more.
                drop(gone);
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

/// Runs `work` on a stream's session on a blocking thread, inside the tenant's concurrency
/// gate, and answers what it returned, what it did, and the stream's next sequence number
/// (`None` once it is closed). `seq`: the number the request's baton carried, checked
/// (a baton works once); a WebSocket's stream has none (its connection orders requests).
pub(crate) async fn run_on_entry<T, F>(
    state: &AppState,
    tenant: TenantId,
    entry: Arc<StreamEntry>,
    seq: Option<u64>,
    work: F,
) -> Result<Result<(T, silo_tenant_runtime::hrana::Outcome, Option<u64>), BatonError>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(
            &mut Session,
            &Arc<silo_tenant_runtime::TenantHandle>,
        ) -> (T, silo_tenant_runtime::hrana::Outcome)
        + Send
        + 'static,
{
    // A stream inside a transaction holds the tenant's writer, which requests waiting at
    // the gate may be queued for: it goes past the gate, or it could never commit.
    let gated = !entry.holds_connection.load(Ordering::Relaxed);
    state
        .with_tenant_gated(tenant, gated, move |handle| {
            let mut s = entry.state.lock();
            if entry.removed.load(Ordering::Relaxed) {
                s.session.close();
                return Ok(Err(BatonError::Expired));
            }
            if seq.is_some_and(|seq| s.seq != seq) {
                return Ok(Err(BatonError::Reused));
            }
            let (out, outcome) = work(&mut s.session, handle);
            s.last_used = Instant::now();
            s.seq = s.seq.wrapping_add(1);
            entry
                .holds_connection
                .store(s.session.holds_tenant().is_some(), Ordering::Relaxed);
            let next = if s.session.is_closed() {
                None
            } else {
                Some(s.seq)
            };
            Ok(Ok((out, outcome, next)))
        })
        .await
}

/// Every error answer of the libSQL routes also carries `message` and `code` at the top
/// level, where libSQL clients look for them (sqld's shape), beside silo's usual `error`
/// object: a client then shows "this session has ended; sign in again", not a bare status.
/// Applied by `http::around_route` to the routes [`is_hrana_route`] names.
pub(crate) async fn sqld_error_shape(response: Response) -> Response {
    if response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "error").into_response();
    };
    let mut json: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if json.get("message").is_none() {
        let message = json["error"]["message"].clone();
        let code = json["error"]["code"].clone();
        if let Some(obj) = json.as_object_mut() {
            obj.insert("message".to_owned(), message);
            obj.insert("code".to_owned(), code);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json.to_string()))
}

/// The libSQL routes (`/v2`, `/v3` and everything under them), by route template.
pub(crate) fn is_hrana_route(route: &str) -> bool {
    route == "/"
        || route.starts_with("/v2")
        || route.starts_with("/v3")
        || route == "/v1/execute"
        || route == "/v1/batch"
}

/// `POST /v1/execute` (Hrana over HTTP v1, which the Python `libsql-client` and Django's
/// libSQL backend speak): `{"stmt"}` → `{"result"}`, as if on a fresh stream. Run as the
/// one-request pipeline it is, so roles, limits, audit and the quick path are the same.
pub(crate) async fn handle_v1_execute(
    state: State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    ApiJson(body): ApiJson<V1Execute>,
) -> Response {
    let request = serde_json::json!({ "type": "execute", "stmt": body.stmt });
    v1(state, principal, meta, request).await
}

/// `POST /v1/batch` (Hrana over HTTP v1): `{"batch"}` → `{"result"}`.
pub(crate) async fn handle_v1_batch(
    state: State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    ApiJson(body): ApiJson<V1Batch>,
) -> Response {
    let request = serde_json::json!({ "type": "batch", "batch": body.batch });
    v1(state, principal, meta, request).await
}

#[derive(Deserialize)]
pub(crate) struct V1Execute {
    stmt: serde_json::Value,
}

#[derive(Deserialize)]
pub(crate) struct V1Batch {
    batch: serde_json::Value,
}

/// Runs one Hrana request as a pipeline on a fresh stream and answers it in v1's shape: the
/// result alone, or the Hrana error with status 400.
async fn v1(
    state: State<AppState>,
    principal: Principal,
    meta: LazyMeta,
    request: serde_json::Value,
) -> Response {
    let pipeline = serde_json::json!({ "baton": null, "requests": [request, { "type": "close" }] });
    let body: PipelineRequest = match serde_json::from_value(pipeline) {
        Ok(body) => body,
        Err(e) => {
            return ApiError::InvalidInput(format!("the request is not valid Hrana: {e}"))
                .into_response();
        }
    };
    let answer = handle_pipeline(state, principal, meta, Pipeline(body)).await;
    if answer.status() != StatusCode::OK {
        return answer;
    }
    // Bounded by the result budget; the one result is cut out of the text as it is, with
    // no tree of values built for it.
    let bytes = match axum::body::to_bytes(answer.into_body(), 1 << 30).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::internal(anyhow::anyhow!("pipeline answer: {e}")).into_response();
        }
    };
    let parsed: V1Answer<'_> = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::internal(anyhow::anyhow!("pipeline answer: {e}")).into_response();
        }
    };
    let first = parsed.results.into_iter().next();
    let (status, text) = match first {
        Some(V1Result {
            response: Some(V1Response {
                result: Some(result),
            }),
            error: None,
        }) => (StatusCode::OK, format!("{{\"result\":{}}}", result.get())),
        Some(V1Result {
            error: Some(error), ..
        }) => (StatusCode::BAD_REQUEST, error.get().to_owned()),
        _ => {
            return ApiError::internal(anyhow::anyhow!("pipeline answer without a result"))
                .into_response();
        }
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

/// What [`v1`] reads of a pipeline's answer.
#[derive(Deserialize)]
struct V1Answer<'a> {
    #[serde(borrow)]
    results: Vec<V1Result<'a>>,
}

#[derive(Deserialize)]
struct V1Result<'a> {
    #[serde(borrow, default)]
    response: Option<V1Response<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct V1Response<'a> {
    #[serde(borrow, default)]
    result: Option<&'a serde_json::value::RawValue>,
}

/// `GET /v2`, `GET /v3`: the protocol versions are spoken here.
pub(crate) async fn handle_version_probe(uri: axum::http::Uri) -> &'static str {
    if uri.path().starts_with("/v3") {
        "Hello, this is HTTP API v3 (Hrana over HTTP)"
    } else {
        "Hello, this is HTTP API v2 (Hrana over HTTP)"
    }
}

/// `GET /health`, as sqld answers it: 200, empty.
pub(crate) async fn handle_health() -> StatusCode {
    StatusCode::OK
}

/// `GET /version`, as sqld answers it: the server's name and version, as text.
pub(crate) async fn handle_version() -> String {
    format!("silo {}", env!("CARGO_PKG_VERSION"))
}
