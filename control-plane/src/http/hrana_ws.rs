//! Hrana over WebSocket: `GET /` upgraded, subprotocols `hrana3`, `hrana2` and `hrana1`
//! (JSON), what `ws://` and `wss://` URLs, `@libsql/client/ws` and the Python
//! `libsql-client` use.
//!
//! One connection carries many streams. Each stream is a stream of the same registry the
//! HTTP routes use (same caps, closed by the same revocations, its transaction rolled back
//! past the same limit) and has a task of its own, so a stream waiting on the tenant's
//! writer never holds up the stream that holds it; requests of one stream run in order.
//! Stored SQL belongs to the connection and is put in place before a stream runs a request.
//! The credential of `hello` is checked again before every request, so a revoked key, an
//! ended session or a changed role takes effect at the next request, as over HTTP.
//!
//! Limits: sockets per server, address and tenant, and those waiting for `hello`
//! (`sockets`); streams per connection, one cursor per stream; requests in flight per
//! connection (past them the connection is not read, and TCP pushes back, as the spec
//! asks); the request body limit per message; requests read, answers not yet written and
//! cursors not yet fetched held in one byte budget of all sockets (past it, `BUSY`); `hello`
//! within 10 s; an answer written within 30 s; a connection with no message and nothing in
//! flight for 5 minutes is closed (clients reconnect on their next query).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts as _, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use silo_tenant_runtime::TenantId;
use silo_tenant_runtime::hrana::{
    Batch, HError, Session, Stmt, StreamRequest, StreamResult, WriteJson,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::audit::LazyMeta;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::data::{audit_schema_change, data_access};
use crate::http::hrana::run_on_entry;
use crate::sockets::{Charge, SocketRefusal, SocketSlot, Sockets};
use crate::state::AppState;
use crate::streams::{BatonError, StreamEntry, StreamId};

/// The subprotocols spoken, best first. `hrana3-protobuf` is not: a client that offers
/// only it is refused at the upgrade.
const SUBPROTOCOLS: [&str; 3] = ["hrana3", "hrana2", "hrana1"];
/// Time a new connection has to say `hello`.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// A connection with no message from its client and nothing in flight this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// Requests of one connection in flight (running, queued on a stream, or answered but not
/// yet written). Past it the connection is not read until one is written. Generous: a
/// stream waiting for the tenant's writer must not keep the request that frees it (another
/// stream's `COMMIT`) from being read; memory is bounded by the byte budget.
const MAX_OUTSTANDING: u32 = 128;
/// Streams one connection may hold open (or failed to open and not yet closed).
const MAX_STREAMS: usize = 128;
/// Cursors one connection may hold open (one per stream).
const MAX_CURSORS: usize = MAX_STREAMS;
/// How often an open connection's credential is checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Time to write one message to a client that does not read.
const SEND_WITHIN: Duration = Duration::from_secs(30);

/// Close codes (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

/// `GET /`: the WebSocket upgrade for libSQL clients.
pub(crate) async fn handle_upgrade(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let meta = match LazyMeta::from_request_parts(&mut parts, &state).await {
        Ok(meta) => meta,
        Err(never) => match never {},
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return ApiError::InvalidInput(
                "GET / is the libSQL WebSocket endpoint (Hrana over WebSocket): connect with a \
                 libSQL client to a ws:// or wss:// URL; HTTP clients use /v2/pipeline"
                    .to_owned(),
            )
            .into_response();
        }
    };
    let version = match choose_subprotocol(&parts.headers) {
        Ok(v) => v,
        Err(offered) => {
            return ApiError::InvalidInput(format!(
                "silo speaks Hrana over WebSocket as {} (JSON); the client offered {offered}",
                SUBPROTOCOLS.join(", ")
            ))
            .into_response();
        }
    };
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let slot = match state
        .sockets
        .admit(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])))
    {
        Ok(slot) => slot,
        Err(refusal) => {
            metrics::counter!("silo_websockets_refused_total").increment(1);
            return ApiError::Busy(
                match refusal {
                    SocketRefusal::AddressFull => {
                        "too many WebSockets are open from your address; close some first"
                    }
                    _ => "the server has as many WebSockets open as it takes; retry shortly",
                }
                .to_owned(),
            )
            .into_response();
        }
    };
    let max_message = state.max_body_bytes;
    let upgrade = upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message);
    let upgrade = match version {
        Some(v) => upgrade.protocols([SUBPROTOCOLS[usize::from(3 - v)]]),
        None => upgrade,
    };
    let span = tracing::Span::current();
    upgrade.on_upgrade(move |socket| {
        let connection = Connection {
            state,
            ip,
            meta,
            slot,
            token: None,
            tenant: None,
            sqls: Session::default(),
            streams: HashMap::new(),
            cursors: HashMap::new(),
            outstanding: Arc::new(Semaphore::new(MAX_OUTSTANDING as usize)),
        };
        tracing::Instrument::instrument(connection.serve(socket), span)
    })
}

/// The Hrana version of the subprotocol to speak (`None`: the client named none, which
/// means version 1), or what the client offered when it is nothing silo speaks.
fn choose_subprotocol(headers: &axum::http::HeaderMap) -> Result<Option<u8>, String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    for p in &offered {
        if let Some(i) = SUBPROTOCOLS.iter().position(|s| s == p) {
            return Ok(Some(3 - u8::try_from(i).unwrap_or(2)));
        }
    }
    let mut list = offered.join(", ");
    list.truncate(200);
    Err(list)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Hello {
        #[serde(default)]
        jwt: Option<String>,
    },
    Request {
        request_id: i32,
        request: WsRequest,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsRequest {
    OpenStream {
        stream_id: i32,
    },
    CloseStream {
        stream_id: i32,
    },
    Execute {
        stream_id: i32,
        stmt: Stmt,
    },
    Batch {
        stream_id: i32,
        batch: Batch,
    },
    OpenCursor {
        stream_id: i32,
        cursor_id: i32,
        batch: Batch,
    },
    CloseCursor {
        cursor_id: i32,
    },
    FetchCursor {
        cursor_id: i32,
        max_count: u32,
    },
    Sequence {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        stream_id: i32,
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit {
        stream_id: i32,
    },
}

/// A message for the client, the in-flight place of the request it answers, and its bytes
/// in the sockets' budget: both given back once it is written.
struct Outgoing {
    bytes: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
    _charge: Option<Charge>,
}

impl Outgoing {
    /// A message that answers no request (`hello_ok`, `hello_error`).
    fn bare(bytes: Vec<u8>) -> Self {
        Outgoing {
            bytes,
            _permit: None,
            _charge: None,
        }
    }

    /// The answer to `request_id`, held in the budget until written. Never replaced, even
    /// past the budget: the work ran (a write may have committed), and a `BUSY` would
    /// invite the client to run it again. New requests are what the budget refuses.
    fn answer(
        sockets: &Sockets,
        request_id: i32,
        result: Result<Vec<u8>, HError>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let bytes = response(request_id, result);
        let charge = sockets.charge_anyway(bytes.len());
        Outgoing {
            bytes,
            _permit: Some(permit),
            _charge: Some(charge),
        }
    }
}

fn busy() -> HError {
    HError {
        message: "the server holds as many WebSocket answers as it may; retry shortly".to_owned(),
        code: "BUSY".to_owned(),
    }
}

/// What a stream's task is asked to do.
enum Job {
    Run(StreamRequest),
    OpenCursor { cursor_id: i32, batch: Batch },
    FetchCursor { cursor_id: i32, max_count: u32 },
    CloseCursor { cursor_id: i32 },
    Close,
}

struct Queued {
    request_id: i32,
    principal: Arc<Principal>,
    job: Job,
    permit: OwnedSemaphorePermit,
    /// The request's size, held in the budget until it has run.
    _charge: Option<Charge>,
}

enum StreamSlot {
    Open(mpsc::UnboundedSender<Queued>),
    /// `open_stream` failed: the id stays taken until `close_stream`.
    Failed,
}

struct Connection {
    state: AppState,
    ip: Option<IpAddr>,
    meta: LazyMeta,
    slot: SocketSlot,
    /// The credential of the last `hello`.
    token: Option<SecretString>,
    tenant: Option<TenantId>,
    /// The connection's stored SQL (`store_sql`), drawn from its tenant's account.
    sqls: Session,
    streams: HashMap<i32, StreamSlot>,
    /// Open cursors, by id: the stream each runs on.
    cursors: HashMap<i32, i32>,
    outstanding: Arc<Semaphore>,
}

/// How a connection ends: a close frame to send, if any.
struct Close(u16, String);

impl Connection {
    async fn serve(mut self, mut socket: WebSocket) {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut closing = self.state.sockets.closing();
        if *closing.borrow_and_update() {
            return;
        }
        let hello_by = tokio::time::Instant::now() + HELLO_WITHIN;
        let mut last_message = tokio::time::Instant::now();
        // The credential is checked again every second, requests or not: a revoked key, an
        // ended session, an expired access token or a suspended tenant closes the socket
        // within a second (and every request checks it too).
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let close = loop {
            let idle_at = if self.token.is_none() {
                hello_by
            } else {
                last_message + IDLE
            };
            let may_read = self.outstanding.available_permits() > 0;
            tokio::select! {
                biased;
                Some(out) = out_rx.recv() => {
                    if !send(&mut socket, out).await {
                        break None;
                    }
                }
                _ = closing.changed() => {
                    break Some(Close(CLOSE_GOING_AWAY, "the server is shutting down".to_owned()));
                }
                _ = recheck.tick(), if self.token.is_some() => {
                    if let Some(token) = &self.token
                        && authenticate(&self.state, token, self.ip).await.is_err()
                    {
                        break Some(Close(
                            CLOSE_POLICY,
                            "the credential no longer holds; connect again with a valid one"
                                .to_owned(),
                        ));
                    }
                }
                message = socket.recv(), if may_read => {
                    last_message = tokio::time::Instant::now();
                    match message {
                        Some(Ok(Message::Text(t))) => {
                            if let Err(close) = self.on_text(t.as_str(), &out_tx).await {
                                break close;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            break Some(Close(
                                CLOSE_UNSUPPORTED,
                                "binary frames are Protobuf, which this connection did not \
                                 negotiate; send JSON as text"
                                    .to_owned(),
                            ));
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break None,
                        // Past the size limit, or not WebSocket at all.
                        Some(Err(_)) => {
                            break Some(Close(
                                CLOSE_TOO_BIG,
                                format!(
                                    "the message could not be read (at most {} bytes)",
                                    self.state.max_body_bytes
                                ),
                            ));
                        }
                    }
                }
                () = tokio::time::sleep_until(idle_at), if may_read
                    && self.outstanding.available_permits() == MAX_OUTSTANDING as usize =>
                {
                    break Some(if self.token.is_none() {
                        Close(CLOSE_POLICY, "no hello within 10 seconds".to_owned())
                    } else {
                        Close(CLOSE_NORMAL, "idle".to_owned())
                    });
                }
            }
        };
        // Streams end: each finishes what it was asked and rolls back what is left open.
        self.streams.clear();
        if let Some(Close(code, reason)) = close {
            // Answers to requests already taken go out first (when the server stops, or
            // before a protocol error's close), within a bound.
            let all = MAX_OUTSTANDING as usize;
            let flush = async {
                loop {
                    while let Ok(out) = out_rx.try_recv() {
                        if !send(&mut socket, out).await {
                            return;
                        }
                    }
                    if self.outstanding.available_permits() == all {
                        break;
                    }
                    match out_rx.recv().await {
                        Some(out) => {
                            if !send(&mut socket, out).await {
                                return;
                            }
                        }
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), flush).await;
            let mut reason = reason;
            truncate_at_char(&mut reason, 120);
            let _ = tokio::time::timeout(
                SEND_WITHIN,
                socket.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                }))),
            )
            .await;
        }
    }

    /// One text message. `Err`: the connection ends (with a close frame, if some).
    async fn on_text(
        &mut self,
        text: &str,
        out: &mpsc::UnboundedSender<Outgoing>,
    ) -> Result<(), Option<Close>> {
        let message: ClientMsg = serde_json::from_str(text)
            .map_err(|e| Some(Close(CLOSE_PROTOCOL, format!("not a Hrana message: {e}"))))?;
        match message {
            ClientMsg::Hello { jwt } => self.hello(jwt, out).await,
            ClientMsg::Request {
                request_id,
                request,
            } => {
                if self.token.is_none() {
                    return Err(Some(Close(
                        CLOSE_PROTOCOL,
                        "the first message must be hello".to_owned(),
                    )));
                }
                // Never fails: the loop reads only while a place is free.
                let Ok(permit) = self.outstanding.clone().try_acquire_owned() else {
                    return Err(Some(Close(
                        CLOSE_POLICY,
                        "too many requests in flight".to_owned(),
                    )));
                };
                let Some(charge) = self.state.sockets.charge(text.len()) else {
                    let _ = out.send(Outgoing {
                        bytes: response(request_id, Err(busy())),
                        _permit: Some(permit),
                        _charge: None,
                    });
                    return Ok(());
                };
                self.request(request_id, request, permit, charge, out).await
            }
        }
    }

    async fn hello(
        &mut self,
        jwt: Option<String>,
        out: &mpsc::UnboundedSender<Outgoing>,
    ) -> Result<(), Option<Close>> {
        let refuse = |message: String, code: &str| {
            let mut bytes = br#"{"type":"hello_error","error":"#.to_vec();
            HError {
                message,
                code: code.to_owned(),
            }
            .write_json(&mut bytes);
            bytes.push(b'}');
            let _ = out.send(Outgoing::bare(bytes));
            Err(Some(Close(CLOSE_POLICY, "hello refused".to_owned())))
        };
        let Some(jwt) = jwt.map(SecretString::from) else {
            return refuse(
                "silo needs a credential: pass an access token or an API key as the client's \
                 auth token"
                    .to_owned(),
                "UNAUTHENTICATED",
            );
        };
        let principal = match authenticate(&self.state, &jwt, self.ip).await {
            Ok(p) => p,
            Err(e) => return refuse(e.public_message(), &e.code().to_ascii_uppercase()),
        };
        if self.tenant.is_some_and(|t| t != principal.tenant) {
            return refuse(
                "a connection stays with the tenant it started with; open a new one for another"
                    .to_owned(),
                "FORBIDDEN",
            );
        }
        if self.tenant.is_none() {
            match self.slot.bind(principal.tenant) {
                Ok(budget) => self.sqls = Session::new(budget),
                Err(_) => {
                    return refuse(
                        "this tenant has as many WebSockets open as it may; close some first"
                            .to_owned(),
                        "BUSY",
                    );
                }
            }
            self.tenant = Some(principal.tenant);
            tracing::Span::current().record("tenant_id", principal.tenant.hex().as_str());
        }
        self.token = Some(jwt);
        let _ = out.send(Outgoing::bare(br#"{"type":"hello_ok"}"#.to_vec()));
        Ok(())
    }

    async fn request(
        &mut self,
        request_id: i32,
        request: WsRequest,
        permit: OwnedSemaphorePermit,
        charge: Charge,
        out: &mpsc::UnboundedSender<Outgoing>,
    ) -> Result<(), Option<Close>> {
        let sockets = self.state.sockets.clone();
        let respond_now = |result: Result<Vec<u8>, HError>, permit| {
            let _ = out.send(Outgoing::answer(&sockets, request_id, result, permit));
        };
        // The credential again: revoked keys, ended sessions and changed roles count now.
        let Some(token) = &self.token else {
            return Err(None);
        };
        let principal = match authenticate(&self.state, token, self.ip).await {
            Ok(p) if Some(p.tenant) == self.tenant => Arc::new(p),
            Ok(_) => return Err(None),
            Err(e) => {
                respond_now(Err(api_error(&e)), permit);
                return Err(Some(Close(
                    CLOSE_POLICY,
                    "the credential no longer holds; connect again with a valid one".to_owned(),
                )));
            }
        };
        let (stream_id, job) = match request {
            WsRequest::OpenStream { stream_id } => {
                let result = self.open_stream(stream_id, &principal, out);
                respond_now(
                    result.map(|()| br#"{"type":"open_stream"}"#.to_vec()),
                    permit,
                );
                return Ok(());
            }
            WsRequest::StoreSql { sql_id, sql } => {
                if self.sqls.has_sql(sql_id) {
                    respond_now(
                        Err(invalid(format!("sql_id {sql_id} is already in use"))),
                        permit,
                    );
                    return Err(Some(Close(
                        CLOSE_PROTOCOL,
                        format!("store_sql with sql_id {sql_id}, which is in use"),
                    )));
                }
                let result = self
                    .sqls
                    .store_sql(sql_id, sql)
                    .map(|()| br#"{"type":"store_sql"}"#.to_vec())
                    .map_err(|e| HError::from(&e));
                respond_now(result, permit);
                return Ok(());
            }
            WsRequest::CloseSql { sql_id } => {
                self.sqls.close_sql(sql_id);
                respond_now(Ok(br#"{"type":"close_sql"}"#.to_vec()), permit);
                return Ok(());
            }
            WsRequest::CloseStream { stream_id } => {
                self.cursors.retain(|_, s| *s != stream_id);
                if let Some(StreamSlot::Open(tx)) = self.streams.remove(&stream_id) {
                    // Last on its queue: the stream finishes what it was asked, then closes.
                    let queued = Queued {
                        request_id,
                        principal,
                        job: Job::Close,
                        permit,
                        _charge: Some(charge),
                    };
                    if let Err(mpsc::error::SendError(q)) = tx.send(queued) {
                        respond_now(Ok(br#"{"type":"close_stream"}"#.to_vec()), q.permit);
                    }
                } else {
                    respond_now(Ok(br#"{"type":"close_stream"}"#.to_vec()), permit);
                }
                return Ok(());
            }
            WsRequest::Execute { stream_id, stmt } => {
                (stream_id, Job::Run(StreamRequest::Execute { stmt }))
            }
            WsRequest::Batch { stream_id, batch } => {
                (stream_id, Job::Run(StreamRequest::Batch { batch }))
            }
            WsRequest::Sequence {
                stream_id,
                sql,
                sql_id,
            } => (stream_id, Job::Run(StreamRequest::Sequence { sql, sql_id })),
            WsRequest::Describe {
                stream_id,
                sql,
                sql_id,
            } => (stream_id, Job::Run(StreamRequest::Describe { sql, sql_id })),
            WsRequest::GetAutocommit { stream_id } => {
                (stream_id, Job::Run(StreamRequest::GetAutocommit))
            }
            WsRequest::OpenCursor {
                stream_id,
                cursor_id,
                batch,
            } => {
                if !matches!(self.streams.get(&stream_id), Some(StreamSlot::Open(_))) {
                    respond_now(
                        Err(invalid(format!("no stream {stream_id} is open"))),
                        permit,
                    );
                    return Ok(());
                }
                if self.cursors.values().any(|s| *s == stream_id) {
                    respond_now(
                        Err(invalid(format!(
                            "stream {stream_id} holds an open cursor; close it first"
                        ))),
                        permit,
                    );
                    return Ok(());
                }
                if self.cursors.contains_key(&cursor_id) {
                    respond_now(
                        Err(invalid(format!("cursor {cursor_id} is already open"))),
                        permit,
                    );
                    return Ok(());
                }
                if self.cursors.len() >= MAX_CURSORS {
                    respond_now(
                        Err(invalid(format!(
                            "a connection holds at most {MAX_CURSORS} cursors; close some first"
                        ))),
                        permit,
                    );
                    return Ok(());
                }
                self.cursors.insert(cursor_id, stream_id);
                let mut request = StreamRequest::Batch { batch };
                self.sqls.inline_stored_sql(&mut request);
                let StreamRequest::Batch { batch } = request else {
                    return Err(None);
                };
                (stream_id, Job::OpenCursor { cursor_id, batch })
            }
            WsRequest::FetchCursor {
                cursor_id,
                max_count,
            } => match self.cursors.get(&cursor_id) {
                Some(&stream_id) => (
                    stream_id,
                    Job::FetchCursor {
                        cursor_id,
                        max_count,
                    },
                ),
                None => {
                    respond_now(
                        Err(invalid(format!("no cursor {cursor_id} is open"))),
                        permit,
                    );
                    return Ok(());
                }
            },
            WsRequest::CloseCursor { cursor_id } => match self.cursors.remove(&cursor_id) {
                Some(stream_id) => (stream_id, Job::CloseCursor { cursor_id }),
                None => {
                    respond_now(Ok(br#"{"type":"close_cursor"}"#.to_vec()), permit);
                    return Ok(());
                }
            },
        };
        let job = match job {
            Job::Run(mut request) => {
                self.sqls.inline_stored_sql(&mut request);
                Job::Run(request)
            }
            other => other,
        };
        let queued = Queued {
            request_id,
            principal,
            job,
            permit,
            _charge: Some(charge),
        };
        match self.streams.get(&stream_id) {
            Some(StreamSlot::Open(tx)) => {
                if let Err(mpsc::error::SendError(q)) = tx.send(queued) {
                    respond_now(Err(invalid("the stream has ended".to_owned())), q.permit);
                }
            }
            Some(StreamSlot::Failed) => respond_now(
                Err(invalid(format!("stream {stream_id} failed to open"))),
                queued.permit,
            ),
            None => respond_now(
                Err(invalid(format!("no stream {stream_id} is open"))),
                queued.permit,
            ),
        }
        Ok(())
    }

    fn open_stream(
        &mut self,
        stream_id: i32,
        principal: &Principal,
        out: &mpsc::UnboundedSender<Outgoing>,
    ) -> Result<(), HError> {
        if self.streams.contains_key(&stream_id) {
            return Err(invalid(format!("stream {stream_id} is already open")));
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(invalid(format!(
                "a connection holds at most {MAX_STREAMS} streams; close some first"
            )));
        }
        let credential = crate::http::hrana::credential_of(principal);
        match self.state.streams.create_for_socket(
            principal.tenant,
            credential,
            principal.user_id.clone(),
        ) {
            Ok((id, entry)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.streams.insert(stream_id, StreamSlot::Open(tx));
                let worker = StreamTask {
                    state: self.state.clone(),
                    meta: self.meta.clone(),
                    out: out.clone(),
                    cursors: HashMap::new(),
                    cleanup: Cleanup {
                        streams: self.state.streams.clone(),
                        id,
                        held: Some((entry.clone(), self.state.sockets.task())),
                    },
                    entry,
                };
                tokio::spawn(tracing::Instrument::instrument(
                    worker.run(rx),
                    tracing::Span::current(),
                ));
                Ok(())
            }
            Err(_) => {
                self.streams.insert(stream_id, StreamSlot::Failed);
                Err(HError {
                    message: "this tenant has as many streams open as it may; close some first"
                        .to_owned(),
                    code: "RATE_LIMITED".to_owned(),
                })
            }
        }
    }
}

/// One stream of a connection: runs its requests in order, then closes it.
struct StreamTask {
    state: AppState,
    meta: LazyMeta,
    entry: Arc<StreamEntry>,
    out: mpsc::UnboundedSender<Outgoing>,
    /// This stream's open cursor (one at a time): its entries not fetched yet, as JSON,
    /// and their bytes in the budget.
    cursors: HashMap<i32, (VecDeque<Vec<u8>>, Option<Charge>)>,
    cleanup: Cleanup,
}

/// Closes a stream however its task ends (the client closed it, the socket went, or the
/// task was dropped): out of the registry, and whatever transaction it holds rolled back,
/// on a blocking thread (that is database work). The socket's task count is held until
/// then, so the server never closes the tenant databases under it.
struct Cleanup {
    streams: crate::streams::Streams,
    id: StreamId,
    held: Option<(Arc<StreamEntry>, crate::sockets::TaskGuard)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some((entry, task)) = self.held.take() else {
            return;
        };
        let (streams, id) = (self.streams.clone(), self.id);
        let close = move || {
            streams.remove(&id);
            entry.state.lock().session.close();
            drop(task);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(close);
            }
            Err(_) => close(),
        }
    }
}

impl StreamTask {
    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Queued>) {
        while let Some(queued) = jobs.recv().await {
            // The socket is gone: nobody waits for what is queued.
            if self.out.is_closed() {
                break;
            }
            let closing = matches!(queued.job, Job::Close);
            let result = self.job(&queued.principal, queued.job).await;
            let answer = Outgoing::answer(
                &self.state.sockets,
                queued.request_id,
                result,
                queued.permit,
            );
            let _ = self.out.send(answer);
            if closing {
                break;
            }
        }
        // `cleanup` closes the stream as the task ends.
        drop(self.cleanup);
    }

    async fn job(&mut self, principal: &Principal, job: Job) -> Result<Vec<u8>, HError> {
        match job {
            Job::Close => Ok(br#"{"type":"close_stream"}"#.to_vec()),
            Job::Run(request) => {
                let result = self
                    .on_session(principal, move |session, handle, level| match request {
                        StreamRequest::Execute { stmt } => session.execute_one(handle, level, stmt),
                        other => {
                            let (mut results, outcome) =
                                session.pipeline(handle, level, vec![other]);
                            let result = results.pop().unwrap_or_else(|| StreamResult::Error {
                                error: invalid("no result".to_owned()),
                            });
                            (result, outcome)
                        }
                    })
                    .await?;
                match result {
                    StreamResult::Ok { response } => {
                        let mut bytes = Vec::new();
                        response.write_json(&mut bytes);
                        Ok(bytes)
                    }
                    StreamResult::Error { error } => Err(error),
                }
            }
            Job::OpenCursor { cursor_id, batch } => {
                let entries = self
                    .on_session(principal, move |session, handle, level| {
                        session.cursor(handle, level, batch)
                    })
                    .await?;
                let entries: VecDeque<Vec<u8>> = entries
                    .iter()
                    .map(|e| {
                        let mut bytes = Vec::new();
                        e.write_json(&mut bytes);
                        bytes
                    })
                    .collect();
                let held = entries.iter().map(Vec::len).sum();
                // The batch ran: its entries are kept whatever the budget says (see `Outgoing::answer`).
                let charge = self.state.sockets.charge_anyway(held);
                self.cursors.insert(cursor_id, (entries, Some(charge)));
                Ok(br#"{"type":"open_cursor"}"#.to_vec())
            }
            Job::FetchCursor {
                cursor_id,
                max_count,
            } => {
                let Some((entries, charge)) = self.cursors.get_mut(&cursor_id) else {
                    return Err(invalid(format!(
                        "cursor {cursor_id} did not open; close it and open another"
                    )));
                };
                let n = entries.len().min(max_count as usize);
                let mut bytes = br#"{"type":"fetch_cursor","entries":["#.to_vec();
                let mut taken = 0;
                for (i, entry) in entries.drain(..n).enumerate() {
                    if i > 0 {
                        bytes.push(b',');
                    }
                    bytes.extend_from_slice(&entry);
                    taken += entry.len();
                }
                // Those bytes now belong to the answer, which holds them in the budget.
                if let Some(charge) = charge {
                    charge.release(taken);
                }
                bytes.extend_from_slice(br#"],"done":"#);
                bytes.extend_from_slice(if entries.is_empty() {
                    b"true"
                } else {
                    b"false"
                });
                bytes.push(b'}');
                Ok(bytes)
            }
            Job::CloseCursor { cursor_id } => {
                self.cursors.remove(&cursor_id);
                Ok(br#"{"type":"close_cursor"}"#.to_vec())
            }
        }
    }

    /// Runs `work` on the stream's session as the HTTP routes do (gate, blocking thread),
    /// then audits the schema changes it made.
    async fn on_session<T, F>(&self, principal: &Principal, work: F) -> Result<T, HError>
    where
        T: Send + 'static,
        F: FnOnce(
                &mut Session,
                &Arc<silo_tenant_runtime::TenantHandle>,
                silo_tenant_runtime::AccessLevel,
            ) -> (T, silo_tenant_runtime::hrana::Outcome)
            + Send
            + 'static,
    {
        let level = data_access(principal).map_err(|e| api_error(&e))?;
        let ran = run_on_entry(
            &self.state,
            principal.tenant,
            self.entry.clone(),
            None,
            move |session, handle| work(session, handle, level),
        )
        .await;
        let (out, outcome) = match ran {
            Ok(Ok((out, outcome, _))) => (out, outcome),
            Ok(Err(BatonError::Expired | BatonError::Reused | BatonError::Invalid)) => {
                return Err(HError {
                    message: "the server closed this stream (its transaction ran past the \
                              limit, or its credential was revoked); open a new one"
                        .to_owned(),
                    code: "STREAM_EXPIRED".to_owned(),
                });
            }
            Err(e) => return Err(api_error(&e)),
        };
        if !outcome.schema_changes.is_empty() {
            audit_schema_change(&self.state, principal, &self.meta, outcome.schema_changes)
                .await
                .map_err(|e| api_error(&e))?;
        }
        Ok(out)
    }
}

/// Writes one message within [`SEND_WITHIN`]; `false` if the client is gone or stuck.
async fn send(socket: &mut WebSocket, out: Outgoing) -> bool {
    let sent = tokio::time::timeout(SEND_WITHIN, socket.send(Message::Text(text(out.bytes)))).await;
    matches!(sent, Ok(Ok(())))
}

async fn authenticate(
    state: &AppState,
    token: &SecretString,
    ip: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    state
        .authority()
        .authenticate_token(token.expose_secret(), ip, Some("/"))
        .await
}

/// A `response_ok` around `response`, or a `response_error`.
fn response(request_id: i32, result: Result<Vec<u8>, HError>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + result.as_ref().map_or(0, Vec::len));
    match result {
        Ok(body) => {
            bytes.extend_from_slice(br#"{"type":"response_ok","request_id":"#);
            bytes.extend_from_slice(request_id.to_string().as_bytes());
            bytes.extend_from_slice(br#","response":"#);
            bytes.extend_from_slice(&body);
        }
        Err(error) => {
            bytes.extend_from_slice(br#"{"type":"response_error","request_id":"#);
            bytes.extend_from_slice(request_id.to_string().as_bytes());
            bytes.extend_from_slice(br#","error":"#);
            error.write_json(&mut bytes);
        }
    }
    bytes.push(b'}');
    bytes
}

fn api_error(e: &ApiError) -> HError {
    HError {
        message: e.public_message(),
        code: e.code().to_ascii_uppercase(),
    }
}

fn invalid(message: String) -> HError {
    HError {
        message,
        code: "INVALID_INPUT".to_owned(),
    }
}

/// JSON written by this module is UTF-8 (every string goes through the JSON writer).
fn text(bytes: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(bytes) {
        Ok(s) => Utf8Bytes::from(s),
        Err(e) => Utf8Bytes::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}
