//! Bad input gets a clear 4xx in the contract's shape, never a 500, and loses nothing.

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn malformed_signups_get_400_with_a_message() {
    let app = TestApp::spawn();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{\"org\": ".to_vec()),
        ("empty body", Vec::new()),
        ("array", b"[]".to_vec()),
        ("wrong type", br#"{"org": 5, "email": "a@example.com", "password": "long enough"}"#.to_vec()),
        ("missing field", br#"{"org": "Acme", "email": "a@example.com"}"#.to_vec()),
        ("unknown field", br#"{"org": "Acme", "email": "a@example.com", "password": "long enough", "pasword": "x"}"#.to_vec()),
        ("empty org", br#"{"org": "  ", "email": "a@example.com", "password": "long enough"}"#.to_vec()),
        ("huge org", format!(r#"{{"org": "{}", "email": "a@example.com", "password": "long enough"}}"#, "x".repeat(5000)).into_bytes()),
        ("invalid email", br#"{"org": "Acme", "email": "not-an-email", "password": "long enough"}"#.to_vec()),
        ("empty email", br#"{"org": "Acme", "email": "", "password": "long enough"}"#.to_vec()),
        ("short password", br#"{"org": "Acme", "email": "a@example.com", "password": "short"}"#.to_vec()),
        ("null password", br#"{"org": "Acme", "email": "a@example.com", "password": null}"#.to_vec()),
    ];
    for (what, body) in cases {
        let resp = app.post_raw("/v1/signup", None, body);
        assert_eq!(resp.status, 400, "{what}: {}", resp.body);
        assert_eq!(resp.error_code(), "invalid_input", "{what}");
        assert!(
            resp.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 5),
            "{what}"
        );
    }
    // Nothing was created by any of them.
    let tenants: i64 = app
        .catalog()
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tenants, 0);
    // A password sent as a number is not echoed back.
    let resp = app.post_raw(
        "/v1/signup",
        None,
        br#"{"org": "A", "email": "a@example.com", "password": 987654321}"#.to_vec(),
    );
    let body = resp.expect_error(400, "invalid_input");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("password")),
        "{body}"
    );
    assert!(!body.to_string().contains("987654321"), "{body}");
}

#[test]
fn a_body_over_the_limit_gets_413() {
    let app = TestApp::spawn_with(&["--max-body-bytes", "4096"]);
    let a = app.signup("Alpha");
    let big = json!({ "sql": format!("SELECT '{}'", "x".repeat(10_000)) })
        .to_string()
        .into_bytes();
    app.post_raw("/v1/db/query", Some(&a.access_token), big)
        .expect_error(413, "payload_too_large");
    app.post_raw("/v1/signup", None, vec![b' '; 5000])
        .expect_error(413, "payload_too_large");
}

#[test]
fn malformed_queries_get_4xx_and_the_tenant_keeps_its_data() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    app.query(
        &a.access_token,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
    )
    .expect(200);
    app.query(&a.access_token, "INSERT INTO t (v) VALUES ('kept')")
        .expect(200);
    let t = Some(a.access_token.as_str());
    for (what, body, status, code) in [
        ("no sql", json!({}), 400, "invalid_input"),
        (
            "sql not a string",
            json!({ "sql": 1 }),
            400,
            "invalid_input",
        ),
        ("empty sql", json!({ "sql": "   " }), 400, "invalid_input"),
        (
            "two statements",
            json!({ "sql": "SELECT 1; SELECT 2" }),
            400,
            "invalid_input",
        ),
        (
            "too few params",
            json!({ "sql": "SELECT ?, ?", "params": [1] }),
            400,
            "invalid_input",
        ),
        (
            "missing named param",
            json!({ "sql": "SELECT :a", "params": { "b": 1 } }),
            400,
            "invalid_input",
        ),
        (
            "array param",
            json!({ "sql": "SELECT ?", "params": [[1]] }),
            400,
            "invalid_input",
        ),
        (
            "bad blob",
            json!({ "sql": "SELECT ?", "params": [{ "base64": "!!" }] }),
            400,
            "invalid_input",
        ),
        (
            "syntax error",
            json!({ "sql": "SELEKT 1" }),
            422,
            "sql_error",
        ),
        (
            "no such table",
            json!({ "sql": "SELECT * FROM nope" }),
            422,
            "sql_error",
        ),
        (
            "constraint",
            json!({ "sql": "INSERT INTO t (v) VALUES ('kept')" }),
            422,
            "sql_error",
        ),
    ] {
        let resp = app.post("/v1/db/query", t, body);
        assert_eq!(
            (resp.status, resp.error_code()),
            (status, code),
            "{what}: {}",
            resp.body
        );
    }
    for (what, body) in [
        ("no statements", json!({ "statements": [] })),
        ("statements not a list", json!({ "statements": "SELECT 1" })),
        (
            "transaction not a bool",
            json!({ "statements": [{ "sql": "SELECT 1" }], "transaction": "yes" }),
        ),
    ] {
        let resp = app.post("/v1/db/batch", t, body);
        assert_eq!(
            (resp.status, resp.error_code()),
            (400, "invalid_input"),
            "{what}: {}",
            resp.body
        );
    }
    // A failing statement in a batch names its position and rolls back the batch.
    let resp = app.batch(&a.access_token, json!([{ "sql": "INSERT INTO t (v) VALUES ('new')" }, { "sql": "INSERT INTO t (v) VALUES ('kept')" }]));
    let body = resp.expect_error(422, "sql_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("statement 1:"),
        "{body}"
    );
    let rows = app
        .query(&a.access_token, "SELECT v FROM t ORDER BY id")
        .expect(200);
    assert_eq!(rows["rows"], json!([["kept"]]));
}

#[test]
fn unknown_routes_and_health_checks_answer_json() {
    let app = TestApp::spawn();
    app.get("/nope", None).expect_error(404, "not_found");
    // A known route with the wrong method: 405 in JSON (issue 17, finding 11; was 404).
    let r = app
        .client
        .delete(format!("{}/v1/signup", app.base))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().expect("json body");
    assert_eq!(body["error"]["code"], json!("method_not_allowed"));
    assert_eq!(app.get("/healthz", None).expect(200)["status"], json!("ok"));
    assert_eq!(
        app.get("/readyz", None).expect(200)["status"],
        json!("ready")
    );
}

/// Finding 11: a browser preflight got 404. With `--cors-origins`, the listed origin's
/// preflight is answered and its requests carry CORS headers; other origins get none.
#[test]
fn cors_preflights_are_answered_for_configured_origins_only() {
    let app = TestApp::spawn_with(&["--cors-origins", "https://app.example.com"]);
    let preflight = |origin: &str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/db/query", app.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .expect("preflight")
    };
    let ok = preflight("https://app.example.com");
    assert!(ok.status().is_success(), "{}", ok.status());
    let allowed = |r: &reqwest::blocking::Response, h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_lowercase()
    };
    assert_eq!(
        allowed(&ok, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(allowed(&ok, "access-control-allow-headers").contains("authorization"));
    assert!(allowed(&ok, "access-control-allow-methods").contains("post"));
    let other = preflight("https://evil.example.com");
    assert_eq!(allowed(&other, "access-control-allow-origin"), "");
    // An ordinary request from the allowed origin carries the header too.
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("origin", "https://app.example.com")
        .send()
        .expect("get");
    assert_eq!(
        allowed(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
    // Without the setting: no CORS headers at all.
    let plain = TestApp::spawn();
    let r = plain
        .client
        .get(format!("{}/healthz", plain.base))
        .header("origin", "https://app.example.com")
        .send()
        .expect("get");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
