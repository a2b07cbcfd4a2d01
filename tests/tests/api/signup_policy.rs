//! Brakes on signup (issue 17, finding 6): a per-address rate, modes, an email-domain list.

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn signups_are_rate_limited_per_address_and_bad_input_costs_nothing() {
    let app = TestApp::spawn_with(&["--signup-rate-limit", "3"]);
    for i in 0..5 {
        // Malformed: refused before it counts.
        app.try_signup("x", &format!("bad-{i}"), "password1")
            .expect_error(400, "invalid_input");
    }
    for i in 0..3 {
        app.try_signup("Org", &format!("s{i}@example.com"), "password1")
            .expect(201);
    }
    let r = app.try_signup("Org", "s3@example.com", "password1");
    r.expect_error(429, "rate_limited");
    // Nothing was made for the refused one.
    let login = app.post(
        "/v1/auth/login",
        None,
        json!({ "email": "s3@example.com", "password": "password1" }),
    );
    assert_eq!(login.status, 401, "{}", login.body);
}

#[test]
fn invite_only_refuses_signup_but_admits_invitations() {
    let (app, admin) = TestApp::spawn_initialized(&["--signup", "invite-only"]);
    app.try_signup("Org", "new@example.com", "password1")
        .expect_error(403, "forbidden");
    let created = app
        .request(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(&admin),
            Some(&json!({ "name": "Made", "owner_email": "owner@example.com" })),
        )
        .expect(201);
    app.post(
        "/v1/invites/accept",
        None,
        json!({ "invite_token": created["owner_invite_token"], "password": "password1" }),
    )
    .expect(201);
}

#[test]
fn closed_admits_only_people_who_have_an_account() {
    let (app, admin) = TestApp::spawn_initialized(&["--signup", "closed"]);
    app.try_signup("Org", "new@example.com", "password1")
        .expect_error(403, "forbidden");
    let created = app
        .request(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(&admin),
            Some(&json!({ "name": "Made", "owner_email": "owner@example.com" })),
        )
        .expect(201);
    let r = app.post(
        "/v1/invites/accept",
        None,
        json!({ "invite_token": created["owner_invite_token"], "password": "password1" }),
    );
    r.expect_error(403, "forbidden");
}

#[test]
fn an_email_domain_list_limits_signups() {
    let app = TestApp::spawn_with(&["--signup-email-domains", "acme.com,@Acme.org"]);
    app.try_signup("Org", "a@acme.com", "password1").expect(201);
    app.try_signup("Org", "b@ACME.org", "password1").expect(201);
    let r = app.try_signup("Org", "c@example.com", "password1");
    let body = r.expect_error(400, "invalid_input");
    assert!(body.to_string().contains("acme.com"), "{body}");
}

/// Finding 11: NFC/NFD and zero-width variants of one email made separate accounts.
#[test]
fn one_address_in_any_unicode_form_is_one_account() {
    let app = TestApp::spawn();
    let decomposed = "jose\u{0301}@example.com";
    let composed = "jos\u{00E9}@example.com";
    app.try_signup("Org", decomposed, "password1").expect(201);
    app.try_signup("Org", composed, "password1")
        .expect_error(409, "conflict");
    app.try_signup("Org", "jos\u{200B}\u{00E9}@example.com", "password1")
        .expect_error(400, "invalid_input");
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": composed, "password": "password1" }),
    )
    .expect(200);
}
