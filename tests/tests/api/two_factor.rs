//! TOTP 2FA: enrolment, login with a code, replay refusal, recovery codes, step-up, and the
//! tenant-wide requirement.

use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp};

/// The code for `now + offset` seconds from a base32 secret, as an authenticator app would.
fn code(secret_b32: &str, offset: i64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).expect("base32 secret");
    let totp = totp_rs::Builder::new()
        .with_secret(secret)
        .build_noncompliant();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp.generate(now.saturating_add_signed(offset)).to_string()
}

/// Enrols and confirms 2FA for `user`; returns (secret, recovery codes).
fn enable(app: &TestApp, user: &Tenant) -> (String, Vec<String>) {
    let enrolled = app
        .post("/v1/auth/2fa/enroll", Some(&user.access_token), json!({}))
        .expect(200);
    let secret = enrolled["secret"].as_str().expect("secret").to_owned();
    let uri = enrolled["otpauth_uri"].as_str().expect("uri");
    assert!(
        uri.starts_with("otpauth://totp/silo:") && uri.contains(&secret),
        "{uri}"
    );
    app.post(
        "/v1/auth/2fa/confirm",
        Some(&user.access_token),
        json!({ "code": "000000" }),
    )
    .expect_error(400, "invalid_input");
    // The earliest step the server accepts, so later codes in the test are all newer.
    let confirmed = app
        .post(
            "/v1/auth/2fa/confirm",
            Some(&user.access_token),
            json!({ "code": code(&secret, -30) }),
        )
        .expect(200);
    let codes: Vec<String> =
        serde_json::from_value(confirmed["recovery_codes"].clone()).expect("codes");
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

fn login(app: &TestApp, user: &Tenant, totp: Option<&str>) -> crate::helpers::Resp {
    let mut body = json!({ "email": user.email, "password": user.password });
    if let Some(t) = totp {
        body["totp"] = Value::from(t);
    }
    app.post("/v1/auth/login", None, body)
}

#[test]
fn login_with_2fa_needs_a_fresh_code_and_a_code_is_accepted_once() {
    let app = TestApp::spawn();
    let user = app.signup("Totp");
    let (secret, recovery) = enable(&app, &user);

    login(&app, &user, None).expect_error(401, "totp_required");
    login(&app, &user, Some("123456")).expect_error(401, "totp_required");
    // The code that confirmed enrolment was spent: no replay.
    login(&app, &user, Some(&code(&secret, -30))).expect_error(401, "totp_required");
    let now = code(&secret, 0);
    let ok = login(&app, &user, Some(&now)).expect(200);
    app.query(ok["access_token"].as_str().expect("token"), "SELECT 1")
        .expect(200);
    login(&app, &user, Some(&now)).expect_error(401, "totp_required");

    // Recovery codes work once each, in any case and spacing.
    login(&app, &user, Some(&recovery[0].to_lowercase())).expect(200);
    login(&app, &user, Some(&recovery[0])).expect_error(401, "totp_required");
    // A wrong password with a right code is still a wrong password.
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": user.email, "password": "wrong password", "totp": recovery[1] }),
    )
    .expect_error(401, "invalid_credentials");
}

#[test]
fn sensitive_routes_need_a_recent_step_up_and_2fa_can_be_removed() {
    let app = TestApp::spawn();
    let user = app.signup("StepUp");
    let (secret, recovery) = enable(&app, &user);
    // A new session that has not proved the second factor: the password change makes one.
    let fresh = app
        .post(
            "/v1/auth/password",
            Some(&user.access_token),
            json!({ "current_password": user.password, "new_password": "another password" }),
        )
        .expect(200);
    let token = fresh["access_token"].as_str().expect("token").to_owned();
    let key = json!({ "name": "k", "scopes": ["db:read"] });
    app.post("/v1/api-keys", Some(&token), key.clone())
        .expect_error(403, "step_up_required"); // An invitation grants a role, so it needs the step-up too.
    app.post(
        "/v1/invites",
        Some(&token),
        json!({ "email": "helper@example.com", "role": "admin" }),
    )
    .expect_error(403, "step_up_required");

    app.request(
        reqwest::Method::DELETE,
        "/v1/auth/2fa",
        Some(&token),
        Some(&json!({ "code": recovery[0] })),
    )
    .expect_error(403, "step_up_required");
    app.post(
        "/v1/auth/2fa/verify",
        Some(&token),
        json!({ "code": "999999" }),
    )
    .expect_error(401, "totp_required");
    let verified = app
        .post(
            "/v1/auth/2fa/verify",
            Some(&token),
            json!({ "code": code(&secret, 0) }),
        )
        .expect(200);
    assert_eq!(verified["step_up_expires_in"], json!(300));
    // Both the old and the re-issued access token of this session are stepped up.
    app.post("/v1/api-keys", Some(&token), key.clone())
        .expect(201);
    app.post("/v1/api-keys", verified["access_token"].as_str(), key)
        .expect(201);

    // Removing 2FA takes a code too; afterwards the password alone signs in.
    app.request(
        reqwest::Method::DELETE,
        "/v1/auth/2fa",
        Some(&token),
        Some(&json!({ "code": recovery[1] })),
    )
    .expect(204);
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": user.email, "password": "another password" }),
    )
    .expect(200);
    let events = app.get("/v1/security-events", Some(&token)).expect(200);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["auth.2fa_enabled", "auth.step_up", "auth.2fa_disabled"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let secret_in_events = events.to_string().contains(&secret);
    assert!(!secret_in_events, "the TOTP secret reached the events");
}

#[test]
fn a_tenant_that_requires_2fa_lets_members_without_it_only_enroll() {
    let app = TestApp::spawn();
    let owner = app.signup("Strict");
    let member = app.add_member(&owner, "member");
    let (_, _) = enable(&app, &owner);
    app.request(
        reqwest::Method::PATCH,
        "/v1/tenant/settings",
        Some(&member.access_token),
        Some(&json!({ "require_2fa": true })),
    )
    .expect_error(403, "forbidden");
    app.request(
        reqwest::Method::PATCH,
        "/v1/tenant/settings",
        Some(&owner.access_token),
        Some(&json!({ "require_2fa": true })),
    )
    .expect(200);
    app.query(&member.access_token, "SELECT 1")
        .expect_error(403, "forbidden");
    app.get("/v1/members", Some(&member.access_token))
        .expect_error(403, "forbidden");
    app.get("/v1/me", Some(&member.access_token)).expect(200);
    let enrolled = app
        .post("/v1/auth/2fa/enroll", Some(&member.access_token), json!({}))
        .expect(200);
    let secret = enrolled["secret"].as_str().expect("secret");
    app.post(
        "/v1/auth/2fa/confirm",
        Some(&member.access_token),
        json!({ "code": code(secret, 0) }),
    )
    .expect(200);
    app.query(&member.access_token, "SELECT 1").expect(200);
    // The owner, who has 2FA, was never blocked.
    app.query(&owner.access_token, "SELECT 1").expect(200);
    assert_eq!(
        app.get("/v1/tenant", Some(&owner.access_token)).expect(200)["settings"]["require_2fa"],
        json!(true)
    );
}

#[test]
fn the_totp_secret_is_stored_sealed() {
    let mut app = TestApp::spawn();
    let user = app.signup("Sealed");
    let (secret, recovery) = enable(&app, &user);
    app.stop();
    let raw = totp_rs::Secret::try_from_base32(&secret)
        .expect("base32")
        .as_bytes()
        .to_vec();
    for path in [
        app.data_dir().join("catalog.db"),
        app.data_dir().join("catalog.db-wal"),
        app.log_path(),
    ] {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !crate::helpers::contains(&bytes, &raw),
            "raw TOTP secret in {}",
            path.display()
        );
        assert!(
            !crate::helpers::contains(&bytes, secret.as_bytes()),
            "base32 TOTP secret in {}",
            path.display()
        );
        for c in &recovery {
            assert!(
                !crate::helpers::contains(&bytes, c.as_bytes()),
                "recovery code in {}",
                path.display()
            );
        }
    }
}

#[test]
fn wrong_codes_lock_the_second_factor() {
    let app = TestApp::spawn();
    let user = app.signup("Guessed");
    let (secret, _) = enable(&app, &user);
    // enable() already spent one wrong code (its "000000" confirmation): 9 more make 10.
    for _ in 0..9 {
        app.post(
            "/v1/auth/2fa/verify",
            Some(&user.access_token),
            json!({ "code": "000001" }),
        )
        .expect_error(401, "totp_required");
    }
    // Locked now, even for the right code: guessing 6 digits does not pay.
    app.post(
        "/v1/auth/2fa/verify",
        Some(&user.access_token),
        json!({ "code": code(&secret, 0) }),
    )
    .expect_error(429, "rate_limited");
    login(&app, &user, Some(&code(&secret, 30))).expect_error(429, "rate_limited");
}
