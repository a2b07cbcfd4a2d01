//! What every request gets from the edge layer, whatever its route: a request id, the
//! security headers, its latency in the metrics, errors of the libSQL routes in sqld's
//! shape, and an access-log line only when asked for.

use crate::helpers::*;
use serde_json::json;

const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

#[test]
fn every_answer_carries_a_request_id_and_the_security_headers() {
    let app = TestApp::spawn_process();
    let mut ids = Vec::new();
    for path in ["/health", "/healthz", "/no/such/route", "/v1/me"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .expect("request");
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                resp.headers().get(name).and_then(|v| v.to_str().ok()),
                Some(value),
                "{path}: {name}"
            );
        }
        let id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: no x-request-id"))
            .to_owned();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{path}: {id}"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "request ids repeat: {ids:?}");
    // A client's own request id is kept, and answered back.
    let resp = app
        .client
        .get(format!("{}/health", app.base))
        .header("x-request-id", "client-chosen-42")
        .send()
        .expect("request");
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-chosen-42")
    );
    // One that could not sit in every log line (too long, or more than an id) is replaced.
    for sent in ["x".repeat(65), "a tenant_id=forged".to_owned()] {
        let resp = app
            .client
            .get(format!("{}/health", app.base))
            .header("x-request-id", &sent)
            .send()
            .expect("request");
        let answered = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(answered.len() == 32 && answered != sent, "{answered}");
    }
    // Routed requests are timed under their route template.
    let metrics = app.metrics();
    assert!(
        metrics.contains("silo_http_request_duration_seconds_count{route=\"/health\",method=\"GET\",status=\"200\"}"),
        "{metrics}"
    );
}

#[test]
fn libsql_route_errors_have_sqlds_shape_and_the_usual_headers() {
    let app = TestApp::spawn();
    let resp = app
        .client
        .post(format!("{}/v2/pipeline", app.base))
        .json(&json!({ "requests": [] }))
        .send()
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()
            .get("x-frame-options")
            .and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
    let body: serde_json::Value = resp.json().expect("json");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["code"], body["error"]["code"], "{body}");
}

#[test]
fn the_access_log_is_written_only_when_asked_for() {
    let mut quiet = TestApp::spawn_process();
    let mut logged = TestApp::spawn_process_with(&["--access-log"]);
    for app in [&quiet, &logged] {
        app.get("/healthz", None).expect(200);
        app.get("/no/such/route", None)
            .expect_error(404, "not_found");
    }
    // Stopped, so every queued line is written.
    quiet.stop();
    logged.stop();
    let quiet_logs = String::from_utf8_lossy(&quiet.logs()).into_owned();
    assert!(!quiet_logs.contains("silo::access"), "{quiet_logs}");
    let logs = String::from_utf8_lossy(&logged.logs()).into_owned();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("silo::access"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("route=/healthz")
            && l.contains("status=200")
            && l.contains("request_id=")),
        "{logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("route=/no/such/route") && l.contains("status=404")),
        "{logs}"
    );
}
