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

fn client_from(ip: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn login_from(client: &reqwest::blocking::Client, app: &TestApp, email: &str, pw: &str) -> u16 {
    client
        .post(format!("{}/v1/auth/login", app.base))
        .json(&json!({ "email": email, "password": pw }))
        .send()
        .expect("login")
        .status()
        .as_u16()
}

/// Finding 5: ten wrong passwords from anywhere locked the owner out for 15 minutes.
#[test]
fn a_stranger_cannot_lock_an_owner_out_of_their_own_address() {
    let app = TestApp::spawn();
    // Signed up from 127.0.0.1: that network is the owner's.
    let owner = app.signup("Owned");
    let stranger = client_from("127.0.1.1");
    for _ in 0..12 {
        login_from(&stranger, &app, &owner.email, "not the password");
    }
    assert_eq!(
        login_from(&stranger, &app, &owner.email, &owner.password),
        429,
        "the stranger's address is locked for this account"
    );
    assert_eq!(
        login_from(
            &client_from("127.0.2.1"),
            &app,
            &owner.email,
            &owner.password
        ),
        429,
        "and so is the account from networks it never signed in from"
    );
    assert_eq!(
        login_from(
            &client_from("127.0.0.1"),
            &app,
            &owner.email,
            &owner.password
        ),
        200,
        "the owner still gets in from their own network"
    );
}

/// Finding 5: each refused attempt appended an event to the victim's audit chain (7,929 in
/// 15 s from one address).
#[test]
fn refused_attempts_are_audited_in_bounded_form() {
    let app = TestApp::spawn();
    let owner = app.signup("Hammered");
    let stranger = client_from("127.0.1.1");
    let statuses: Vec<u16> = (0..150)
        .map(|_| login_from(&stranger, &app, &owner.email, "not the password"))
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 10);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 140);
    let audit = app
        .get("/v1/audit?limit=1000", Some(&owner.access_token))
        .expect(200);
    let events = audit["events"].as_array().expect("events");
    let lockouts: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == json!("auth.lockout"))
        .collect();
    assert_eq!(lockouts.len(), 1, "one event per minute: {lockouts:?}");
    assert_eq!(lockouts[0]["after"]["refused"], json!(1));
    assert!(events.len() < 20, "{} events", events.len());
    app.get("/v1/audit/verify", Some(&owner.access_token))
        .expect(200);
}

#[test]
fn sign_in_is_rate_limited_per_address() {
    let app = TestApp::spawn_with(&["--auth-rate-limit", "5"]);
    let a = app.signup("Limited");
    let here = client_from("127.0.0.1");
    let statuses: Vec<u16> = (0..6)
        .map(|_| login_from(&here, &app, "nobody@example.com", "whatever1"))
        .collect();
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
    let r = here
        .post(format!("{}/v1/auth/login", app.base))
        .json(&json!({ "email": a.email, "password": a.password }))
        .send()
        .expect("login");
    assert_eq!(r.status().as_u16(), 429, "the address's budget is spent");
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = r.json().expect("json");
    assert_eq!(body["error"]["code"], json!("rate_limited"));
    // Another address has its own budget.
    assert_eq!(
        login_from(&client_from("127.0.3.1"), &app, &a.email, &a.password),
        200
    );
}

/// A spoofed `X-Forwarded-For` from anyone but a configured proxy changes nothing; through
/// a trusted proxy, the forwarded client is who is counted and audited.
#[test]
fn forwarded_for_counts_only_through_a_trusted_proxy() {
    let spoofed = TestApp::spawn_with(&["--auth-rate-limit", "3"]);
    let statuses: Vec<u16> = (0..5)
        .map(|i| {
            spoofed
                .client
                .post(format!("{}/v1/auth/login", spoofed.base))
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .json(&json!({ "email": "nobody@example.com", "password": "whatever1" }))
                .send()
                .expect("login")
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(
        statuses,
        vec![401, 401, 401, 429, 429],
        "spoofing did not help"
    );

    let proxied = TestApp::spawn_with(&[
        "--auth-rate-limit",
        "3",
        "--trusted-proxies",
        "127.0.0.1/32",
    ]);
    let a = proxied.signup("Proxied");
    let statuses: Vec<u16> = (0..5)
        .map(|i| {
            proxied
                .client
                .post(format!("{}/v1/auth/login", proxied.base))
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .json(&json!({ "email": "nobody@example.com", "password": "whatever1" }))
                .send()
                .expect("login")
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(
        statuses,
        vec![401; 5],
        "each forwarded client has its own budget"
    );
    let r = proxied
        .client
        .post(format!("{}/v1/auth/login", proxied.base))
        .header("x-forwarded-for", "1.2.3.4, 198.51.100.77")
        .json(&json!({ "email": a.email, "password": a.password }))
        .send()
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let audit = proxied
        .get("/v1/audit?action=auth.login", Some(&a.access_token))
        .expect(200);
    assert_eq!(audit["events"][0]["ip"], json!("198.51.100.77"), "{audit}");
}

#[test]
fn an_operator_unlocks_an_account_and_it_is_audited() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let owner = app.signup("Unlockable");
    for _ in 0..10 {
        app.post(
            "/v1/auth/login",
            None,
            json!({ "email": owner.email, "password": "wrong password" }),
        )
        .expect_error(401, "invalid_credentials");
    }
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": owner.email, "password": owner.password }),
    )
    .expect_error(429, "rate_limited");
    let out = app.cli_json(&admin, &["accounts", "unlock", &owner.email.to_uppercase()]);
    assert_eq!(out["email"], json!(owner.email));
    assert!(out["cleared"].as_u64().expect("cleared") >= 10, "{out}");
    // The address is still counted (the operator freed the account, not the address), so
    // sign in from another one.
    let r = reqwest::blocking::Client::builder()
        .local_address("127.0.4.1".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
        .post(format!("{}/v1/auth/login", app.base))
        .json(&json!({ "email": owner.email, "password": owner.password }))
        .send()
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let audit = app
        .get("/v1/audit?action=auth.unlocked", Some(&owner.access_token))
        .expect(200);
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(1), "{audit}");
    assert!(
        audit["events"][0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("admin:")),
        "{audit}"
    );
}
