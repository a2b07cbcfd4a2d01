//! The credential cache: what one tenant does in the catalog (audited changes, logins,
//! refreshes, logouts, API keys) leaves other tenants' cached credentials in place, while a
//! change to a tenant's own credentials still applies to its very next request.

use serde_json::json;

use crate::helpers::TestApp;

/// `silo_credential_cache_misses_total` for `kind`, from `/metrics`.
fn misses(app: &TestApp, kind: &str) -> u64 {
    let text = app.metrics();
    let prefix = format!("silo_credential_cache_misses_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[test]
fn another_tenants_catalog_writes_leave_cached_credentials_in_place() {
    let app = TestApp::spawn_process();
    let a = app.signup("Steady");
    let b = app.signup("Busy");
    let (_, a_key) = app.create_key(&a, &["db:read"], json!({}));
    // First use of each credential reads the catalog; the second is served from the cache.
    for _ in 0..2 {
        app.query(&a.access_token, "SELECT 1").expect(200);
        app.query(&a_key, "SELECT 1").expect(200);
    }

    // Tenant b is busy: audited schema changes, a login, a refresh, a logout, a new key and
    // its revocation, a member's role change.
    app.query(&b.access_token, "CREATE TABLE t(x)").expect(200);
    app.query(&b.access_token, "DROP TABLE t").expect(200);
    let login = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": b.email, "password": b.password }),
        )
        .expect(200);
    let refreshed = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": login["refresh_token"] }),
        )
        .expect(200);
    app.post(
        "/v1/auth/logout",
        refreshed["access_token"].as_str(),
        json!({}),
    )
    .expect(204);
    let (b_key_id, _) = app.create_key(&b, &["db:read"], json!({}));
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{b_key_id}"),
        Some(&b.access_token),
        None,
    )
    .expect(204);
    let member = app.add_member(&b, "member");
    app.request(
        reqwest::Method::PATCH,
        &format!("/v1/members/{}", member.user_id),
        Some(&b.access_token),
        Some(&json!({ "role": "viewer" })),
    )
    .expect(200);

    // Counted after b's own requests, which read b's changed credentials again.
    let (sessions, keys) = (misses(&app, "session"), misses(&app, "api_key"));
    for _ in 0..3 {
        app.query(&a.access_token, "SELECT 1").expect(200);
        app.query(&a_key, "SELECT 1").expect(200);
    }
    assert_eq!(
        misses(&app, "session"),
        sessions,
        "tenant a's session stayed cached"
    );
    assert_eq!(
        misses(&app, "api_key"),
        keys,
        "tenant a's key stayed cached"
    );

    // A change to tenant a's own credentials applies to its next request: a new key makes
    // a's cached session and key stale (read again once), and a demotion is seen at once.
    let _ = app.create_key(&a, &["db:read"], json!({}));
    app.query(&a_key, "SELECT 1").expect(200);
    assert_eq!(misses(&app, "api_key"), keys + 1);
    let admin = app.add_member(&a, "admin");
    app.query(&admin.access_token, "CREATE TABLE mine(x)")
        .expect(200);
    app.request(
        reqwest::Method::PATCH,
        &format!("/v1/members/{}", admin.user_id),
        Some(&a.access_token),
        Some(&json!({ "role": "viewer" })),
    )
    .expect(200);
    app.query(&admin.access_token, "CREATE TABLE yours(x)")
        .expect_error(403, "sql_forbidden");
}

/// A user belongs to two tenants: a change to the user made through one of them (a new
/// password, which ends every session of the user) applies at once to the session cached in
/// the other, and a key revoked in one tenant stops at once while the other's stays cached.
#[test]
fn a_change_to_a_user_of_two_tenants_applies_at_once_in_both() {
    let app = TestApp::spawn_process();
    let a = app.signup("Home");
    let b = app.signup("Away");
    let invite = app
        .post(
            "/v1/invites",
            Some(&b.access_token),
            json!({ "email": a.email, "role": "member" }),
        )
        .expect(201);
    // The existing account joins b with its own password.
    let joined = app
        .post(
            "/v1/invites/accept",
            None,
            json!({ "invite_token": invite["invite_token"], "password": a.password }),
        )
        .expect(201);
    let in_b = joined["access_token"].as_str().expect("access").to_owned();
    let (a_key_id, a_key) = app.create_key(&a, &["db:read"], json!({}));
    let (_, b_key) = app.create_key(&b, &["db:read"], json!({}));
    for _ in 0..2 {
        for t in [&a.access_token, &in_b, &a_key, &b_key] {
            app.query(t, "SELECT 1").expect(200);
        }
    }

    // A key revoked in tenant a stops at once; b's key stays cached.
    let keys = misses(&app, "api_key");
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{a_key_id}"),
        Some(&a.access_token),
        None,
    )
    .expect(204);
    app.query(&a_key, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(&b_key, "SELECT 1").expect(200);
    assert_eq!(
        misses(&app, "api_key"),
        keys + 1,
        "only a's key was read again"
    );

    // The user changes their password through their session in b: their session in a,
    // cached, ends at once too.
    app.post(
        "/v1/auth/password",
        Some(&in_b),
        json!({ "current_password": a.password, "new_password": "a new password!" }),
    )
    .expect(200);
    app.query(&a.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(&in_b, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(&b.access_token, "SELECT 1").expect(200);
}
