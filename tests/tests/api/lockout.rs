//! Failed-login lockout, new-network detection, and the per-tenant concurrency limit.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn ten_failures_lock_the_account_and_the_address_with_retry_after() {
    let app = TestApp::spawn();
    let a = app.signup("Locked");
    let b = app.signup("Neighbour");
    for _ in 0..10 {
        app.post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": "wrong password" }),
        )
        .expect_error(401, "invalid_credentials");
    }
    let resp = app
        .client
        .post(format!("{}/v1/auth/login", app.base))
        .json(&json!({ "email": a.email, "password": a.password }))
        .send()
        .expect("send");
    assert_eq!(
        resp.status().as_u16(),
        429,
        "the right password is refused during a lockout"
    );
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
    // Same address, other account: the per-address count locks it too.
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": b.email, "password": b.password }),
    )
    .expect_error(429, "rate_limited");
    // Unknown accounts are counted the same way (no difference to observe).
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": "nobody@example.com", "password": "whatever1" }),
    )
    .expect_error(429, "rate_limited");

    let events = app
        .get("/v1/security-events", Some(&a.access_token))
        .expect(200);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "auth.login_failed").count(),
        10,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"auth.lockout"), "{kinds:?}");
    // B's tenant saw nothing of A's failures.
    let b_events = app
        .get("/v1/security-events", Some(&b.access_token))
        .expect(200);
    assert!(
        !b_events.to_string().contains("auth.login_failed"),
        "{b_events}"
    );
}

#[test]
fn a_login_from_a_new_network_is_a_security_event() {
    let app = TestApp::spawn();
    let a = app.signup("Roaming");
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": a.email, "password": a.password }),
    )
    .expect(200);
    let quiet = app
        .get("/v1/security-events", Some(&a.access_token))
        .expect(200);
    assert!(!quiet.to_string().contains("auth.new_network"), "{quiet}");
    // 127.0.1.1 is loopback too, but in another /24.
    let elsewhere = reqwest::blocking::Client::builder()
        .local_address("127.0.1.1".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let resp = elsewhere
        .post(format!("{}/v1/auth/login", app.base))
        .json(&json!({ "email": a.email, "password": a.password }))
        .send()
        .expect("login from 127.0.1.1");
    assert_eq!(resp.status().as_u16(), 200);
    let events = app
        .get("/v1/security-events", Some(&a.access_token))
        .expect(200);
    let new_net: Vec<_> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == json!("auth.new_network"))
        .collect();
    assert_eq!(new_net.len(), 1, "{events}");
    assert_eq!(new_net[0]["detail"]["network"], json!("127.0.1.0/24"));
    assert_eq!(new_net[0]["ip"], json!("127.0.1.1"));
}

#[test]
fn one_tenants_flood_is_capped_and_other_tenants_are_served() {
    let app = TestApp::spawn_with(&["--tenant-concurrency", "2", "--query-timeout-ms", "1000"]);
    let flood = app.signup("Flood");
    let calm = app.signup("Calm");
    let slow =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c";
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let floods: Vec<_> = (0..12)
            .map(|_| s.spawn(|| app.query(&flood.access_token, slow).status))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // While the flood runs, the other tenant is answered.
        app.query(&calm.access_token, "SELECT 1").expect(200);
        floods
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 422 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "nothing was turned away: {statuses:?}"
    );
    assert!(statuses.contains(&422), "nothing ran: {statuses:?}");
}

#[test]
fn parallel_guesses_cannot_get_past_the_lockout() {
    let app = TestApp::spawn();
    let a = app.signup("Raced");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let guesses: Vec<_> = (0..30)
            .map(|i| {
                let (app, email) = (&app, a.email.clone());
                s.spawn(move || {
                    app.post(
                        "/v1/auth/login",
                        None,
                        json!({ "email": email, "password": format!("guess {i}") }),
                    )
                    .status
                })
            })
            .collect();
        guesses
            .into_iter()
            .map(|g| g.join().expect("thread"))
            .collect()
    });
    let tried = statuses.iter().filter(|s| **s == 401).count();
    assert!(tried <= 10, "{tried} guesses were checked: {statuses:?}");
    assert_eq!(
        tried + statuses.iter().filter(|s| **s == 429).count(),
        30,
        "{statuses:?}"
    );
}
