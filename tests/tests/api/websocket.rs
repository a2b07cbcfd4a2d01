//! Hrana over WebSocket (`GET /` upgraded, subprotocols `hrana3`/`hrana2`/`hrana1`), spoken
//! message by message as the spec writes it: the handshake, every request, stored SQL
//! across streams, cursors, errors that keep the connection and protocol errors that close
//! it, revocation, the caps and shutdown. The TypeScript client over `ws://` is in
//! `libsql_clients.rs`.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::helpers::TestApp;

type Socket = WebSocket<TcpStream>;

fn ws_url(app: &TestApp) -> String {
    app.base.replacen("http://", "ws://", 1) + "/"
}

/// Opens a WebSocket offering `protocols`; the subprotocol the server chose.
fn connect(app: &TestApp, protocols: &str) -> Result<(Socket, Option<String>), tungstenite::Error> {
    let mut request = ws_url(app).into_client_request().expect("request");
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocols).expect("header"),
        );
    }
    let address = app.base.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let (socket, response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("handshake interrupted"),
    })?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((socket, chosen))
}

fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .expect("send");
}

/// The next message: its JSON, or how the connection closed.
enum Next {
    Json(Value),
    Closed(Option<(CloseCode, String)>),
}

fn next(socket: &mut Socket) -> Next {
    loop {
        match socket.read() {
            Ok(Message::Text(t)) => return Next::Json(serde_json::from_str(&t).expect("JSON")),
            Ok(Message::Close(frame)) => {
                return Next::Closed(frame.map(|f| (f.code, f.reason.to_string())));
            }
            Ok(_) => {}
            Err(_) => return Next::Closed(None),
        }
    }
}

fn json_message(socket: &mut Socket) -> Value {
    match next(socket) {
        Next::Json(v) => v,
        Next::Closed(why) => panic!("closed: {why:?}"),
    }
}

fn closed_with(socket: &mut Socket) -> (CloseCode, String) {
    loop {
        match next(socket) {
            Next::Json(_) => {}
            Next::Closed(Some(frame)) => return frame,
            Next::Closed(None) => panic!("closed without a close frame"),
        }
    }
}

fn hello(socket: &mut Socket, token: &str) {
    send(socket, json!({"type": "hello", "jwt": token}));
    assert_eq!(json_message(socket), json!({"type": "hello_ok"}));
}

/// Sends a request and answers its response (`response_ok` or `response_error`).
fn request(socket: &mut Socket, id: i32, request: Value) -> Value {
    send(
        socket,
        json!({"type": "request", "request_id": id, "request": request}),
    );
    let answer = json_message(socket);
    assert_eq!(answer["request_id"], id, "{answer}");
    answer
}

fn ok(socket: &mut Socket, id: i32, req: Value) -> Value {
    let answer = request(socket, id, req);
    assert_eq!(answer["type"], "response_ok", "{answer}");
    answer["response"].clone()
}

fn stmt(sql: &str) -> Value {
    json!({"sql": sql, "want_rows": true})
}

#[test]
fn hrana_over_websocket_speaks_every_request_of_the_spec() {
    let app = TestApp::spawn();
    let owner = app.signup("Sockets");
    let (_, key) = app.create_key(&owner, &["db:admin"], json!({}));
    // The client's order decides among the versions silo speaks; Protobuf is skipped.
    let (mut ws, chosen) = connect(&app, "hrana3-protobuf, hrana3, hrana2").expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("hrana3"));
    hello(&mut ws, &key);

    ok(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    let created = ok(
        &mut ws,
        2,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT)")}),
    );
    assert_eq!(created["type"], "execute");
    // Stored SQL belongs to the connection: stored once, used by another stream.
    ok(
        &mut ws,
        3,
        json!({"type": "store_sql", "sql_id": 7, "sql": "INSERT INTO t(s) VALUES (?)"}),
    );
    ok(&mut ws, 4, json!({"type": "open_stream", "stream_id": 2}));
    let inserted = ok(
        &mut ws,
        5,
        json!({"type": "execute", "stream_id": 2,
               "stmt": {"sql_id": 7, "args": [{"type": "text", "value": "a"}], "want_rows": false}}),
    );
    assert_eq!(inserted["result"]["affected_row_count"], 1);
    assert_eq!(inserted["result"]["last_insert_rowid"], "1");
    // A batch with a condition; a failing step is reported inside the batch.
    let batch = ok(
        &mut ws,
        6,
        json!({"type": "batch", "stream_id": 1, "batch": {"steps": [
            {"stmt": {"sql_id": 7, "args": [{"type": "text", "value": "b"}]}},
            {"stmt": stmt("INSERT INTO nope VALUES (1)")},
            {"stmt": stmt("SELECT count(*) FROM t"), "condition": {"type": "ok", "step": 0}},
        ]}}),
    );
    let result = &batch["result"];
    assert!(
        result["step_errors"][1]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no such table")
    );
    assert_eq!(result["step_results"][2]["rows"][0][0]["value"], "2");
    // A statement's error is a response_error, and the connection stays.
    let failed = request(
        &mut ws,
        8,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("SELEKT 1")}),
    );
    assert_eq!(failed["type"], "response_error");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("syntax error")
    );
    // A transaction across requests; get_autocommit sees it.
    ok(
        &mut ws,
        9,
        json!({"type": "execute", "stream_id": 2, "stmt": stmt("BEGIN")}),
    );
    let auto = ok(
        &mut ws,
        10,
        json!({"type": "get_autocommit", "stream_id": 2}),
    );
    assert_eq!(
        auto,
        json!({"type": "get_autocommit", "is_autocommit": false})
    );
    ok(
        &mut ws,
        11,
        json!({"type": "sequence", "stream_id": 2, "sql": "INSERT INTO t(s) VALUES ('c'); INSERT INTO t(s) VALUES ('d');"}),
    );
    ok(
        &mut ws,
        12,
        json!({"type": "execute", "stream_id": 2, "stmt": stmt("COMMIT")}),
    );
    let described = ok(
        &mut ws,
        13,
        json!({"type": "describe", "stream_id": 1, "sql": "SELECT s FROM t WHERE id = ?"}),
    );
    assert_eq!(
        described["result"]["params"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(described["result"]["is_readonly"], true);
    // A cursor, fetched in two parts.
    ok(
        &mut ws,
        14,
        json!({"type": "open_cursor", "stream_id": 1, "cursor_id": 3,
               "batch": {"steps": [{"stmt": stmt("SELECT s FROM t ORDER BY id")}]}}),
    );
    let first = ok(
        &mut ws,
        15,
        json!({"type": "fetch_cursor", "cursor_id": 3, "max_count": 2}),
    );
    assert_eq!(first["done"], false);
    assert_eq!(first["entries"][0]["type"], "step_begin");
    let rest = ok(
        &mut ws,
        16,
        json!({"type": "fetch_cursor", "cursor_id": 3, "max_count": 100}),
    );
    assert_eq!(rest["done"], true);
    let rows: Vec<&Value> = first["entries"]
        .as_array()
        .into_iter()
        .chain(rest["entries"].as_array())
        .flatten()
        .filter(|e| e["type"] == "row")
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["row"][0]["value"], "d");
    ok(&mut ws, 17, json!({"type": "close_cursor", "cursor_id": 3}));
    // Requests on streams that are not open are errors, not the end of the connection.
    let missing = request(
        &mut ws,
        18,
        json!({"type": "execute", "stream_id": 99, "stmt": stmt("SELECT 1")}),
    );
    assert_eq!(missing["type"], "response_error");
    ok(&mut ws, 19, json!({"type": "close_sql", "sql_id": 7}));
    let gone = request(
        &mut ws,
        20,
        json!({"type": "execute", "stream_id": 1, "stmt": {"sql_id": 7}}),
    );
    assert_eq!(gone["type"], "response_error");
    ok(&mut ws, 21, json!({"type": "close_stream", "stream_id": 1}));
    ok(&mut ws, 22, json!({"type": "close_stream", "stream_id": 2}));
    // What it wrote is there for every other route, and its schema change is audited.
    let n = app
        .query(&owner.access_token, "SELECT count(*) FROM t")
        .expect(200);
    assert_eq!(n["rows"], json!([[4]]));
    let audit = app
        .get("/v1/audit?limit=100", Some(&owner.access_token))
        .expect(200);
    let changed: Vec<&Value> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "db.schema_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{audit}");
    assert!(
        changed[0]["actor"]
            .as_str()
            .unwrap_or("")
            .starts_with("api_key:")
    );
    assert_eq!(changed[0]["after"]["statements"][0]["kind"], "CREATE TABLE");
    // A message that is not Hrana closes the connection with a protocol error.
    send(
        &mut ws,
        json!({"type": "request", "request_id": 30, "request": {"type": "drop_everything"}}),
    );
    let (code, reason) = closed_with(&mut ws);
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("not a Hrana message"), "{reason}");
}

#[test]
fn hello_is_required_and_checked_and_a_revoked_key_ends_the_connection() {
    let app = TestApp::spawn();
    let owner = app.signup("Hello");
    let (key_id, key) = app.create_key(&owner, &["db:write"], json!({}));
    app.query(&owner.access_token, "CREATE TABLE t(x)")
        .expect(200);

    // No credential, a wrong one, or a request first: refused and closed.
    let (mut ws, chosen) = connect(&app, "hrana2").expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("hrana2"));
    send(&mut ws, json!({"type": "hello", "jwt": null}));
    let refused = json_message(&mut ws);
    assert_eq!(refused["type"], "hello_error", "{refused}");
    assert_eq!(closed_with(&mut ws).0, CloseCode::Policy);

    let (mut ws, _) = connect(&app, "hrana2").expect("upgrade");
    send(
        &mut ws,
        json!({"type": "hello", "jwt": "sk_live_not_a_key"}),
    );
    assert_eq!(json_message(&mut ws)["type"], "hello_error");

    let (mut ws, _) = connect(&app, "").expect("upgrade without a subprotocol (hrana1)");
    send(
        &mut ws,
        json!({"type": "request", "request_id": 1, "request": {"type": "open_stream", "stream_id": 1}}),
    );
    let (code, reason) = closed_with(&mut ws);
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("hello"), "{reason}");

    // A key revoked while its connection holds a transaction: the transaction is rolled
    // back at once (the tenant's writer is free), and the next request ends the connection.
    let (mut ws, _) = connect(&app, "hrana3").expect("upgrade");
    hello(&mut ws, &key);
    ok(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    ok(
        &mut ws,
        2,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("BEGIN IMMEDIATE")}),
    );
    ok(
        &mut ws,
        3,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("INSERT INTO t VALUES (1)")}),
    );
    let revoked = app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        Some(&owner.access_token),
        None,
    );
    assert_eq!(revoked.status, 204);
    app.query(&owner.access_token, "INSERT INTO t VALUES (2)")
        .expect(200);
    let after = request(
        &mut ws,
        4,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("COMMIT")}),
    );
    assert_eq!(after["type"], "response_error", "{after}");
    assert_eq!(closed_with(&mut ws).0, CloseCode::Policy);
    let rows = app
        .query(&owner.access_token, "SELECT x FROM t ORDER BY x")
        .expect(200);
    assert_eq!(rows["rows"], json!([[2]]));
}

#[test]
fn the_upgrade_refuses_what_it_cannot_speak_and_counts_sockets() {
    let app = TestApp::spawn_with(&["--max-connections-per-address", "3"]);
    let owner = app.signup("Caps");
    // Not an upgrade at all, or only Protobuf offered: a JSON error, before any upgrade.
    let plain = app.get("/", None);
    assert_eq!(plain.status, 400);
    assert!(
        plain.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("WebSocket")
    );
    match connect(&app, "hrana3-protobuf") {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("hrana3, hrana2, hrana1"), "{body}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|(_, p)| p)),
    }
    // Sockets from one address stop at its cap (three here), and come back when closed.
    let mut open: Vec<Socket> = (0..3)
        .map(|_| {
            let (mut ws, _) = connect(&app, "hrana3").expect("upgrade");
            hello(&mut ws, &owner.access_token);
            ws
        })
        .collect();
    match connect(&app, "hrana3") {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|(_, p)| p)),
    }
    let mut first = open.remove(0);
    first.close(None).expect("close");
    while first.read().is_ok() {}
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = connect(&app, "hrana3") {
            again = Some(ws);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = again.expect("a place came back");
    hello(&mut again, &owner.access_token);
}

#[test]
fn a_stopping_server_says_goodbye_on_every_socket() {
    let mut app = TestApp::spawn();
    let owner = app.signup("Goodbye");
    let (mut ws, _) = connect(&app, "hrana3").expect("upgrade");
    hello(&mut ws, &owner.access_token);
    ok(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    let stopper = std::thread::spawn(move || {
        app.stop();
        app
    });
    let (code, reason) = closed_with(&mut ws);
    assert_eq!(code, CloseCode::Away);
    assert!(reason.contains("shutting down"), "{reason}");
    let _app = stopper.join().expect("stopped");
}

/// What a review of the first version found: a stream's PRAGMA held only for one statement,
/// a cursor ignored stored SQL, a stream could hold many cursors, a reused `sql_id` was not
/// a protocol error, and a stream waiting for the tenant's writer could keep the `COMMIT`
/// that frees it from being read.
#[test]
fn streams_keep_their_pragmas_and_cursors_their_rules_and_a_waiting_stream_blocks_nobody() {
    let app = TestApp::spawn();
    let owner = app.signup("Review");
    let (_, key) = app.create_key(&owner, &["db:admin"], json!({}));
    app.query(
        &owner.access_token,
        "CREATE TABLE parent(id INTEGER PRIMARY KEY)",
    )
    .expect(200);
    app.query(
        &owner.access_token,
        "CREATE TABLE child(id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id))",
    )
    .expect(200);
    let (mut ws, _) = connect(&app, "hrana3").expect("upgrade");
    hello(&mut ws, &key);
    ok(&mut ws, 1, json!({"type": "open_stream", "stream_id": 1}));
    ok(&mut ws, 2, json!({"type": "open_stream", "stream_id": 2}));
    // A PRAGMA set on a stream holds for that stream's next statements, and no other's.
    ok(
        &mut ws,
        3,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("PRAGMA foreign_keys = OFF")}),
    );
    let fk = ok(
        &mut ws,
        4,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("PRAGMA foreign_keys")}),
    );
    assert_eq!(fk["result"]["rows"][0][0]["value"], "0", "{fk}");
    ok(
        &mut ws,
        5,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("INSERT INTO child VALUES (1, 99)")}),
    );
    let other = request(
        &mut ws,
        6,
        json!({"type": "execute", "stream_id": 2, "stmt": stmt("INSERT INTO child VALUES (2, 99)")}),
    );
    assert_eq!(other["type"], "response_error", "{other}");
    assert!(
        other["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("FOREIGN KEY"),
        "{other}"
    );

    // A cursor's batch may use stored SQL; a stream holds one cursor at a time.
    ok(
        &mut ws,
        7,
        json!({"type": "store_sql", "sql_id": 5, "sql": "SELECT id FROM child"}),
    );
    ok(
        &mut ws,
        8,
        json!({"type": "open_cursor", "stream_id": 2, "cursor_id": 1,
               "batch": {"steps": [{"stmt": {"sql_id": 5}}]}}),
    );
    let second = request(
        &mut ws,
        9,
        json!({"type": "open_cursor", "stream_id": 2, "cursor_id": 2,
               "batch": {"steps": [{"stmt": stmt("SELECT 1")}]}}),
    );
    assert_eq!(second["type"], "response_error", "{second}");
    let fetched = ok(
        &mut ws,
        10,
        json!({"type": "fetch_cursor", "cursor_id": 1, "max_count": 10}),
    );
    let kinds: Vec<&str> = fetched["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(kinds, ["step_begin", "row", "step_end"], "{fetched}");
    ok(&mut ws, 11, json!({"type": "close_cursor", "cursor_id": 1}));

    // Stream 1 holds the writer; stream 2 queues writes behind it; stream 1's COMMIT is
    // still read and run, and then every queued write goes through.
    ok(
        &mut ws,
        12,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("BEGIN IMMEDIATE")}),
    );
    ok(
        &mut ws,
        13,
        json!({"type": "execute", "stream_id": 1, "stmt": stmt("INSERT INTO parent VALUES (1)")}),
    );
    for i in 0..20 {
        send(
            &mut ws,
            json!({"type": "request", "request_id": 100 + i, "request":
                {"type": "execute", "stream_id": 2, "stmt": stmt(&format!("INSERT INTO parent VALUES ({})", 10 + i))}}),
        );
    }
    send(
        &mut ws,
        json!({"type": "request", "request_id": 14, "request":
            {"type": "execute", "stream_id": 1, "stmt": stmt("COMMIT")}}),
    );
    let mut answered = std::collections::HashMap::new();
    while answered.len() < 21 {
        let answer = json_message(&mut ws);
        answered.insert(answer["request_id"].as_i64().unwrap_or(-1), answer);
    }
    for (id, answer) in &answered {
        assert_eq!(answer["type"], "response_ok", "request {id}: {answer}");
    }
    let n = app
        .query(&owner.access_token, "SELECT count(*) FROM parent")
        .expect(200);
    assert_eq!(n["rows"], json!([[21]]));

    // Storing under an id in use is a protocol error.
    send(
        &mut ws,
        json!({"type": "request", "request_id": 15, "request": {"type": "store_sql", "sql_id": 5, "sql": "SELECT 2"}}),
    );
    let (code, _) = closed_with(&mut ws);
    assert_eq!(code, CloseCode::Protocol);
}

/// "Stale or revoked tokens close the socket immediately": an idle connection whose key is
/// revoked, or whose user's sessions all end, is closed within a second or so, with no
/// request needed.
#[test]
fn a_revoked_credential_closes_an_idle_socket() {
    let app = TestApp::spawn();
    let owner = app.signup("Revoked");
    let (key_id, key) = app.create_key(&owner, &["db:read"], json!({}));
    let (mut by_key, _) = connect(&app, "hrana3").expect("upgrade");
    hello(&mut by_key, &key);
    let member = app.add_member(&owner, "member");
    let (mut by_session, _) = connect(&app, "hrana2").expect("upgrade");
    hello(&mut by_session, &member.access_token);

    let revoked = app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        Some(&owner.access_token),
        None,
    );
    assert_eq!(revoked.status, 204);
    let revoked_at = std::time::Instant::now();
    let (code, reason) = closed_with(&mut by_key);
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("no longer holds"), "{reason}");
    // Checked every second: closed well before the socket's 20 s read timeout.
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );

    let ended = app.post(
        "/v1/auth/sign-out-everywhere",
        Some(&member.access_token),
        json!({}),
    );
    assert!(ended.status < 300, "{}", ended.status);
    assert_eq!(closed_with(&mut by_session).0, CloseCode::Policy);
}
