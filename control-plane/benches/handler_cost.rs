//! What one request costs silo itself, in user space: the whole router (middleware,
//! authentication, parsing, the query, the response) driven in process, with no socket, on
//! one thread. Unlike a load test over loopback, where most of the time is the kernel's and
//! varies with what else the machine runs, this varies little between runs, so it tells
//! whether a change to the request path made it cheaper.
//!
//!     cargo bench -p silo-control-plane --bench handler_cost -- [ITERATIONS]
//!
//! With `ONLY=<part of a route's name>` (e.g. `ONLY=v2/pipeline`) only the routes whose name
//! contains it run, for a profiler.
//! Routes: `GET /health` (the floor of the load test), a point query by primary key over
//! `/v1/db/query` and over `/v2/pipeline`, with an access token and with a `db:read` API key.
//! Each is timed in 15 interleaved rounds of ITERATIONS requests (default 5,000); the best
//! round is reported, in microseconds per request.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, header};
use clap::Parser;
use serde_json::{Value, json};
use silo_control_plane::app::Application;
use silo_control_plane::config::ServeArgs;
use tower::ServiceExt as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A route to time: its name, method, path, credential and body.
type Route<'a> = (&'a str, Method, &'a str, Option<&'a str>, Option<&'a [u8]>);

/// Rounds per route; the best is reported.
const ROUNDS: usize = 15;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_vec())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000);
    // ONLY=<part of a route's name>: time that route alone (for a profiler).
    let only = std::env::var("ONLY").ok();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let args = Args::parse_from([
        "bench",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--master-key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = Application::build(args.serve).await.expect("build");
        let router = app.router();
        let (status, body) = call(
            &router,
            Method::POST,
            "/v1/signup",
            None,
            Some(br#"{"org":"Bench","email":"o@bench.example.com","password":"a bench password"}"#),
        )
        .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let signup: Value = serde_json::from_slice(&body).expect("signup");
        let token = signup["access_token"].as_str().expect("token").to_owned();
        for sql in [
            "CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) \
             INSERT INTO kv SELECT x, hex(randomblob(16)) FROM n",
        ] {
            let body = serde_json::to_vec(&json!({ "sql": sql })).expect("json");
            let (status, body) =
                call(&router, Method::POST, "/v1/db/query", Some(&token), Some(&body)).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        }
        let (status, body) = call(
            &router,
            Method::POST,
            "/v1/api-keys",
            Some(&token),
            Some(br#"{"name":"bench","scopes":["db:read"]}"#),
        )
        .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let key: Value = serde_json::from_slice(&body).expect("key");
        let key = key["key"].as_str().expect("key").to_owned();

        // As clients write them: a libSQL client puts each object's `type` first (json!
        // would sort the keys).
        let v1: &[u8] = br#"{"sql":"SELECT v FROM kv WHERE id = ?","params":[4242]}"#;
        let v2: &[u8] = br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT v FROM kv WHERE id = ?","args":[{"type":"integer","value":"4242"}]}},{"type":"close"}]}"#;
        let routes: [Route<'_>; 5] = [
            ("GET /health", Method::GET, "/health", None, None),
            ("/v1/db/query, access token", Method::POST, "/v1/db/query", Some(&token), Some(v1)),
            ("/v2/pipeline, access token", Method::POST, "/v2/pipeline", Some(&token), Some(v2)),
            ("/v1/db/query, API key", Method::POST, "/v1/db/query", Some(&key), Some(v1)),
            ("/v2/pipeline, API key", Method::POST, "/v2/pipeline", Some(&key), Some(v2)),
        ];
        // Rounds interleave the routes, so a slow spell of a shared machine hits them alike;
        // the best round of each is the one least disturbed.
        let mut best = [f64::MAX; 5];
        for _ in 0..ROUNDS {
            for (i, (name, method, path, token, body)) in routes.iter().enumerate() {
                if !only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
                    continue;
                }
                let started = Instant::now();
                for _ in 0..iterations {
                    let (status, _) = call(&router, method.clone(), path, *token, *body).await;
                    assert_eq!(status, 200, "{name}");
                }
                best[i] = best[i].min(started.elapsed().as_secs_f64() * 1e6 / iterations as f64);
            }
        }
        println!("| route | µs per request (best of {ROUNDS} × {iterations}) |");
        println!("|---|---|");
        for ((name, ..), best) in routes.iter().zip(best) {
            if best == f64::MAX {
                continue;
            }
            println!("| {name} | {best:.2} |");
        }
    });
}
