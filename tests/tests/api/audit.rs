//! The audit log: one event per action, append-only, tamper-evident.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::TestApp;

/// The code for `now + offset` seconds from a base32 TOTP secret.
fn totp(secret: &str, offset: i64) -> String {
    let s = totp_rs::Secret::try_from_base32(secret).expect("base32");
    let t = totp_rs::Builder::new().with_secret(s).build_noncompliant();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    t.generate(now.saturating_add_signed(offset)).to_string()
}

fn all_events(app: &TestApp, token: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/audit?limit=50&after={a}"),
            None => "/v1/audit?limit=50".to_owned(),
        };
        let page = app.get(&path, Some(token)).expect(200);
        events.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return events,
        }
    }
}

fn counts(events: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["action"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn every_action_is_recorded_exactly_once() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let owner = app.signup("Audited");
    let t = owner.access_token.as_str();

    // Data: a schema change is audited, row writes are not.
    app.query(t, "CREATE TABLE notes (body TEXT)").expect(200);
    app.query(t, "INSERT INTO notes VALUES ('a')").expect(200);
    app.batch(t, json!([{ "sql": "INSERT INTO notes VALUES ('b')" }, { "sql": "UPDATE notes SET body = 'c'" }])).expect(200);

    // Sessions.
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": owner.email, "password": owner.password }),
    )
    .expect(200);
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": owner.email, "password": "wrong password" }),
    )
    .expect(401);
    let second = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": owner.email, "password": owner.password }),
        )
        .expect(200);
    let refresh = second["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": refresh }),
    )
    .expect(200);
    app.post(
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": refresh }),
    )
    .expect(401);

    // Members.
    let member = app.add_member(&owner, "member");
    app.request(
        reqwest::Method::PATCH,
        &format!("/v1/members/{}", member.user_id),
        Some(t),
        Some(&json!({ "role": "viewer" })),
    )
    .expect(200);
    app.post(
        "/v1/auth/password",
        Some(&member.access_token),
        json!({ "current_password": member.password, "new_password": "a new password" }),
    )
    .expect(200);
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/members/{}", member.user_id),
        Some(t),
        None,
    )
    .expect(204);

    // Keys.
    let (key_id, _) = app.create_key(&owner, &["db:read"], json!({}));
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        Some(t),
        None,
    )
    .expect(204);

    // 2FA.
    let enrolled = app
        .post("/v1/auth/2fa/enroll", Some(t), json!({}))
        .expect(200);
    let secret = enrolled["secret"].as_str().expect("secret").to_owned();
    let codes = app
        .post(
            "/v1/auth/2fa/confirm",
            Some(t),
            json!({ "code": totp(&secret, -30) }),
        )
        .expect(200);
    app.post(
        "/v1/auth/2fa/verify",
        Some(t),
        json!({ "code": totp(&secret, 0) }),
    )
    .expect(200);
    app.request(
        reqwest::Method::DELETE,
        "/v1/auth/2fa",
        Some(t),
        Some(&json!({ "code": codes["recovery_codes"][0] })),
    )
    .expect(204);

    // Operators.
    for cmd in [
        ["tenants", "suspend"],
        ["tenants", "resume"],
        ["tenants", "rotate-token"],
    ] {
        let (code, _, err) = app.cli(&admin, &[cmd[0], cmd[1], &owner.id]);
        assert_eq!(code, 0, "{cmd:?}: {err}");
    }

    app.post("/v1/auth/logout", Some(t), json!({})).expect(204);
    let fresh = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": owner.email, "password": owner.password }),
        )
        .expect(200);
    let reader = fresh["access_token"].as_str().expect("access").to_owned();

    let events = all_events(&app, &reader);
    let expected: BTreeMap<String, usize> = [
        ("tenant.signup", 1),
        ("db.schema_changed", 1),
        ("auth.login", 3),
        ("auth.login_failed", 1),
        ("auth.refresh_reuse", 1),
        ("member.invited", 1),
        ("member.joined", 1),
        ("member.role_changed", 1),
        ("auth.password_changed", 1),
        ("member.removed", 1),
        ("api_key.created", 1),
        ("api_key.revoked", 1),
        ("auth.2fa_enrolled", 1),
        ("auth.2fa_enabled", 1),
        ("auth.step_up", 1),
        ("auth.2fa_disabled", 1),
        ("tenant.suspended", 1),
        ("tenant.resumed", 1),
        ("tenant.db_token_rotated", 1),
        ("auth.logout", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts(&events), expected);

    // The shape of an event, and what it says.
    let role_change = events
        .iter()
        .find(|e| e["action"] == json!("member.role_changed"))
        .expect("role change");
    assert_eq!(
        role_change["actor"],
        json!(format!("user:{}", owner.user_id))
    );
    assert_eq!(
        role_change["target"],
        json!(format!("user:{}", member.user_id))
    );
    assert_eq!(
        (
            role_change["before"]["role"].as_str(),
            role_change["after"]["role"].as_str()
        ),
        (Some("member"), Some("viewer"))
    );
    assert_eq!(role_change["ip"], json!("127.0.0.1"));
    assert!(
        role_change["request_id"]
            .as_str()
            .is_some_and(|r| r.len() >= 16)
    );
    assert!(role_change["user_agent"].is_string());
    let suspended = events
        .iter()
        .find(|e| e["action"] == json!("tenant.suspended"))
        .expect("suspension");
    assert!(
        suspended["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("admin:")),
        "{suspended}"
    );
    let ddl = events
        .iter()
        .find(|e| e["action"] == json!("db.schema_changed"))
        .expect("ddl");
    assert_eq!(ddl["after"]["statements"][0]["kind"], json!("CREATE TABLE"));
    assert!(
        !ddl.to_string().contains("notes (body"),
        "DDL text must not be kept: {ddl}"
    );
    // Chained: each event links to the one before.
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    // No secret in any event.
    let text = serde_json::to_string(&events).expect("json");
    for secret in [
        owner.password.as_str(),
        &secret,
        &refresh,
        codes["recovery_codes"][1].as_str().unwrap_or("?"),
    ] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }

    let verified = app.get("/v1/audit/verify", Some(&reader)).expect(200);
    assert_eq!(verified["ok"], json!(true), "{verified}");
    assert_eq!(
        verified["checked"].as_u64(),
        Some(events.len() as u64),
        "{verified}"
    );
    let (code, out, _) = app.cli(&admin, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_audit_log_is_for_admins_and_audit_read_keys() {
    let app = TestApp::spawn();
    let owner = app.signup("Readers");
    let member = app.add_member(&owner, "member");
    app.get("/v1/audit", Some(&member.access_token))
        .expect_error(403, "forbidden");
    app.get("/v1/audit/verify", Some(&member.access_token))
        .expect_error(403, "forbidden");
    let (_, reader) = app.create_key(&owner, &["audit:read"], json!({}));
    let (_, writer) = app.create_key(&owner, &["db:write"], json!({}));
    assert!(
        app.get("/v1/audit", Some(&reader)).expect(200)["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    app.get("/v1/audit", Some(&writer))
        .expect_error(403, "forbidden");
    let filtered = app
        .get(
            "/v1/audit?action=member.invited,member.joined",
            Some(&reader),
        )
        .expect(200);
    assert_eq!(
        filtered["events"].as_array().map(Vec::len),
        Some(2),
        "{filtered}"
    );
    app.get("/v1/audit?limit=0", Some(&reader))
        .expect_error(400, "invalid_input");
}

#[test]
fn the_database_refuses_changes_and_verify_catches_tampering() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let owner = app.signup("Tamper");
    for i in 0..4 {
        app.query(&owner.access_token, &format!("CREATE TABLE t{i} (x)"))
            .expect(200);
    }
    let events = all_events(&app, &owner.access_token);
    assert_eq!(events.len(), 5);
    let catalog = app.catalog();
    catalog
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");

    // Append-only, enforced by the database itself.
    for sql in [
        "UPDATE audit_events SET actor = 'someone else'",
        "DELETE FROM audit_events",
    ] {
        let err = catalog
            .execute(sql, [])
            .expect_err("the audit log accepted a change");
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    // With the triggers dropped, an edited row is caught, and named.
    catalog
        .execute_batch("DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;")
        .expect("drop triggers");
    let edited = events[2]["id"].as_i64().expect("id");
    catalog
        .execute(
            "UPDATE audit_events SET actor = 'user:nobody' WHERE id = ?1",
            [edited],
        )
        .expect("edit");
    let report = app
        .get("/v1/audit/verify", Some(&owner.access_token))
        .expect(200);
    assert_eq!(
        (report["ok"].clone(), report["first_bad_id"].clone()),
        (json!(false), json!(edited)),
        "{report}"
    );
    let (code, out, _) = app.cli(&admin, &["audit", "verify", "--tenant", &owner.id]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("TAMPERED"), "{out}");

    // Put it back: the chain is whole again.
    catalog
        .execute(
            "UPDATE audit_events SET actor = ?2 WHERE id = ?1",
            rusqlite::params![edited, events[2]["actor"].as_str()],
        )
        .expect("restore");
    assert_eq!(
        app.get("/v1/audit/verify", Some(&owner.access_token))
            .expect(200)["ok"],
        json!(true)
    );

    // Cutting off the newest events leaves a valid-looking chain, but not the signed head.
    let last_two: Vec<i64> = events[3..]
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    for id in last_two {
        catalog
            .execute("DELETE FROM audit_events WHERE id = ?1", [id])
            .expect("delete");
    }
    let report = app
        .get("/v1/audit/verify", Some(&owner.access_token))
        .expect(200);
    assert_eq!(report["ok"], json!(false), "{report}");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("removed")),
        "{report}"
    );
    let all = app
        .request(
            reqwest::Method::GET,
            "/admin/v1/audit/verify",
            Some(&admin),
            None,
        )
        .expect(200);
    assert_eq!(all["ok"], json!(false));
}

#[test]
fn a_chain_deleted_whole_is_missed_by_nobody() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let owner = app.signup("Erased");
    app.query(&owner.access_token, "CREATE TABLE t (x)")
        .expect(200);
    let catalog = app.catalog();
    catalog
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    catalog
        .execute_batch("DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;")
        .expect("drop triggers");
    catalog
        .execute("DELETE FROM audit_events WHERE tenant_id = ?1", [&owner.id])
        .expect("delete events");
    catalog
        .execute("DELETE FROM audit_heads WHERE chain = ?1", [&owner.id])
        .expect("delete head");
    let report = app
        .get("/v1/audit/verify", Some(&owner.access_token))
        .expect(200);
    assert_eq!(report["ok"], json!(false), "{report}");
    let all = app
        .request(
            reqwest::Method::GET,
            "/admin/v1/audit/verify",
            Some(&admin),
            None,
        )
        .expect(200);
    assert_eq!(all["ok"], json!(false), "{all}");
    let (code, _, _) = app.cli(&admin, &["audit", "verify"]);
    assert_eq!(code, 1);
    app.request(
        reqwest::Method::GET,
        "/admin/v1/audit/verify?tenant=00000000000000000000000000000000",
        Some(&admin),
        None,
    )
    .expect_error(404, "not_found");
    app.get("/v1/audit?limit=abc", Some(&owner.access_token))
        .expect_error(400, "invalid_input");
}

#[test]
fn the_audit_log_exports_as_json_lines() {
    let app = TestApp::spawn();
    let owner = app.signup("Lines");
    for i in 0..3 {
        app.query(&owner.access_token, &format!("CREATE TABLE t{i} (x)"))
            .expect(200);
    }
    let listed = all_events(&app, &owner.access_token);
    let resp = app
        .client
        .get(format!("{}/v1/audit/export", app.base))
        .bearer_auth(&owner.access_token)
        .send()
        .expect("export");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let text = resp.text().expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines, listed);
}

#[test]
fn operators_export_with_a_reason_that_lands_in_the_audit_log() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let owner = app.signup("Supported");
    app.query(&owner.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.query(&owner.access_token, "INSERT INTO t VALUES ('row')")
        .expect(200);
    let out = app.dir.path().join("operator.sql");
    let out_text = out.display().to_string();
    let (code, _, err) = app.cli(
        &admin,
        &[
            "tenants",
            "export",
            &owner.id,
            "--format",
            "sql",
            "--reason",
            "ticket 4711: restore request",
            "--output",
            &out_text,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let restored = rusqlite::Connection::open_in_memory().expect("memory");
    restored
        .execute_batch(&std::fs::read_to_string(&out).expect("dump"))
        .expect("restore");
    let v: String = restored
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .expect("row");
    assert_eq!(v, "row");
    // No reason, no export.
    assert_eq!(app.cli(&admin, &["tenants", "export", &owner.id]).0, 2);
    let (code, _, err) = app.cli(&admin, &["tenants", "export", &owner.id, "--reason", "no"]);
    assert_eq!(code, 1);
    assert!(err.contains("reason"), "{err}");
    let events = app
        .get(
            "/v1/audit?action=admin.tenant_exported",
            Some(&owner.access_token),
        )
        .expect(200);
    let events = events["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["after"]["reason"],
        json!("ticket 4711: restore request")
    );
    assert!(
        events[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("admin:"))
    );
}
