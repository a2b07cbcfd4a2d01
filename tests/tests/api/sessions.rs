//! Login and refresh as the contract says.

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn login_gives_working_tokens_and_wrong_credentials_look_alike() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let body = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email.to_uppercase(), "password": a.password }),
        )
        .expect(200);
    assert_eq!(body["expires_in"], json!(900));
    let token = body["access_token"].as_str().expect("access token");
    app.query(token, "SELECT 1").expect(200);

    let wrong_password = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": "not the password" }),
        )
        .expect_error(401, "invalid_credentials");
    let unknown_email = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": "nobody@example.com", "password": "not the password" }),
        )
        .expect_error(401, "invalid_credentials");
    assert_eq!(
        wrong_password, unknown_email,
        "the answers must not reveal which accounts exist"
    );
    app.post("/v1/auth/login", None, json!({ "email": a.email }))
        .expect_error(400, "invalid_input");
}

#[test]
fn refresh_rotates_and_a_reused_refresh_token_ends_the_session() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let first = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": a.refresh_token }),
        )
        .expect(200);
    let (access2, refresh2) = (
        first["access_token"].as_str().expect("access").to_owned(),
        first["refresh_token"].as_str().expect("refresh").to_owned(),
    );
    assert_ne!(refresh2, a.refresh_token);
    app.query(&access2, "SELECT 1").expect(200);

    // The spent token again: refused, and the whole session (family) is revoked.
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": a.refresh_token }),
    )
    .expect_error(401, "unauthenticated");
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": refresh2 }),
    )
    .expect_error(401, "unauthenticated");
    app.query(&access2, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(&a.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");

    // Another session of the same user is unaffected.
    let login = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    app.query(login["access_token"].as_str().expect("access"), "SELECT 1")
        .expect(200);
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": "silo_rt_made-up" }),
    )
    .expect_error(401, "unauthenticated");
}

#[test]
fn logout_ends_the_session_at_once() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let other = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    let other_token = other["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    // It works before, so its 401 afterwards means something.
    app.query(&other_token, "SELECT 1").expect(200);
    app.post("/v1/auth/logout", Some(&a.access_token), json!({}))
        .expect(204);
    app.query(&a.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": a.refresh_token }),
    )
    .expect_error(401, "unauthenticated");
    // Only that session: the other one goes on.
    app.query(other_token.as_str(), "SELECT 1").expect(200);
}

#[test]
fn a_password_change_ends_every_session_of_the_user() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let other = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    let other_token = other["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    // It works before, so its 401 afterwards means something.
    app.query(&other_token, "SELECT 1").expect(200);
    app.post(
        "/v1/auth/password",
        Some(&a.access_token),
        json!({ "current_password": "wrong", "new_password": "new password!" }),
    )
    .expect_error(401, "invalid_credentials");
    app.post(
        "/v1/auth/password",
        Some(&a.access_token),
        json!({ "current_password": a.password, "new_password": "short" }),
    )
    .expect_error(400, "invalid_input");
    let fresh = app
        .post(
            "/v1/auth/password",
            Some(&a.access_token),
            json!({ "current_password": a.password, "new_password": "new password!" }),
        )
        .expect(200);
    for token in [a.access_token.as_str(), other_token.as_str()] {
        app.query(token, "SELECT 1")
            .expect_error(401, "unauthenticated");
    }
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": other["refresh_token"] }),
    )
    .expect_error(401, "unauthenticated");
    app.query(
        fresh["access_token"].as_str().expect("access token"),
        "SELECT 1",
    )
    .expect(200);
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": a.email, "password": a.password }),
    )
    .expect_error(401, "invalid_credentials");
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": a.email, "password": "new password!" }),
    )
    .expect(200);
}

#[test]
fn sign_out_everywhere_ends_every_session_including_this_one() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let other = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    let other_token = other["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    // It works before, so its 401 afterwards means something.
    app.query(&other_token, "SELECT 1").expect(200);
    app.post(
        "/v1/auth/sign-out-everywhere",
        Some(&a.access_token),
        json!({}),
    )
    .expect(204);
    app.query(&a.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(other_token.as_str(), "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": a.email, "password": a.password }),
    )
    .expect(200);
}

/// The tenant API's answers read as the `silo-api` types the server writes them with.
#[test]
fn tenant_answers_read_as_their_api_types() {
    use silo_api as api;
    fn typed<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> T {
        serde_json::from_value(body.clone()).unwrap_or_else(|e| {
            panic!(
                "{} does not read as its type: {e}\n{body}",
                std::any::type_name::<T>()
            )
        })
    }
    let app = TestApp::spawn();
    let a = app.signup("Typed");
    let me: api::Me = typed(app.get("/v1/me", Some(&a.access_token)).expect(200));
    assert_eq!(
        (me.user.id.as_str(), me.tenant.id.as_str()),
        (a.user_id.as_str(), a.id.as_str())
    );
    assert_eq!(me.role, silo_types::Role::Owner);
    let tenant: api::Tenant = typed(app.get("/v1/tenant", Some(&a.access_token)).expect(200));
    assert_eq!(tenant.db.placement, "local");
    assert!(!tenant.settings.require_2fa);
    let members: api::MemberList = typed(app.get("/v1/members", Some(&a.access_token)).expect(200));
    assert_eq!(members.members.len(), 1);
    let invite: api::InviteCreated = typed(
        app.post(
            "/v1/invites",
            Some(&a.access_token),
            json!({ "email": "typed-member@example.com", "role": "viewer" }),
        )
        .expect(201),
    );
    assert!(invite.invite_token.starts_with("silo_inv_"));
    let key: api::ApiKeyCreated = typed(
        app.post(
            "/v1/api-keys",
            Some(&a.access_token),
            json!({ "name": "ci", "scopes": ["db:read"] }),
        )
        .expect(201),
    );
    let keys: api::ApiKeyList = typed(app.get("/v1/api-keys", Some(&a.access_token)).expect(200));
    assert_eq!(keys.api_keys.len(), 1);
    assert_eq!(keys.api_keys[0].id, key.id);
    let events: api::AuditEvents = typed(app.get("/v1/audit", Some(&a.access_token)).expect(200));
    assert!(events.events.iter().any(|e| e.action == "tenant.signup"));
    let check: api::ChainCheck = typed(
        app.get("/v1/audit/verify", Some(&a.access_token))
            .expect(200),
    );
    assert!(check.ok);
    let _: api::SecurityEvents = typed(
        app.get("/v1/security-events", Some(&a.access_token))
            .expect(200),
    );
    let refreshed: api::Tokens = typed(
        app.post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": a.refresh_token }),
        )
        .expect(200),
    );
    assert_eq!(refreshed.expires_in, 900);
}

/// Finding 11: login and refresh issued tokens for suspended and deletion-pending tenants.
#[test]
fn suspended_and_deleting_tenants_get_no_new_tokens() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let a = app.signup("Paused");
    let admin_post = |path: String| {
        app.request(reqwest::Method::POST, &path, Some(&admin), None)
            .expect(200)
    };
    admin_post(format!("/admin/v1/tenants/{}/suspend", a.id));
    let login = json!({ "email": a.email, "password": a.password });
    app.post("/v1/auth/login", None, login.clone())
        .expect_error(403, "tenant_suspended");
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": a.refresh_token }),
    )
    .expect_error(403, "tenant_suspended");
    // A wrong password learns nothing of the tenant's state.
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": a.email, "password": "not the password" }),
    )
    .expect_error(401, "invalid_credentials");
    admin_post(format!("/admin/v1/tenants/{}/resume", a.id));
    app.post("/v1/auth/login", None, login.clone()).expect(200);
    app.request(
        reqwest::Method::DELETE,
        &format!("/admin/v1/tenants/{}", a.id),
        Some(&admin),
        None,
    )
    .expect(202);
    app.post("/v1/auth/login", None, login)
        .expect_error(403, "forbidden");
}
