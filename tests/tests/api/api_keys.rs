//! API keys: scopes, expiry, IP allow-list, revocation, and never more than the maker.

use serde_json::json;

use crate::helpers::{TestApp, contains};

#[test]
fn each_scope_opens_exactly_its_routes() {
    let app = TestApp::spawn();
    let owner = app.signup("Keys");
    app.query(&owner.access_token, "CREATE TABLE t (x)")
        .expect(200);
    // (scope, select, insert, create table)
    for (scope, read, write, schema) in [
        ("db:read", 200, 403, 403),
        ("db:write", 200, 200, 403),
        ("db:admin", 200, 200, 200),
        ("export", 403, 403, 403),
        ("audit:read", 403, 403, 403),
    ] {
        let (_, key) = app.create_key(&owner, &[scope], json!({}));
        assert_eq!(
            app.query(&key, "SELECT * FROM t").status,
            read,
            "{scope}: select"
        );
        assert_eq!(
            app.query(&key, "INSERT INTO t VALUES (1)").status,
            write,
            "{scope}: insert"
        );
        let table = format!("by_{}", scope.replace(':', "_"));
        assert_eq!(
            app.query(&key, &format!("CREATE TABLE {table} (x)")).status,
            schema,
            "{scope}: create"
        );
        assert_eq!(
            app.batch(&key, json!([{ "sql": "SELECT 1" }])).status,
            read,
            "{scope}: batch"
        );
        // People and keys are managed by people only.
        for (what, resp) in [
            (
                "create key",
                app.post(
                    "/v1/api-keys",
                    Some(&key),
                    json!({ "name": "k", "scopes": ["db:read"] }),
                ),
            ),
            ("list keys", app.get("/v1/api-keys", Some(&key))),
            ("members", app.get("/v1/members", Some(&key))),
            (
                "invite",
                app.post(
                    "/v1/invites",
                    Some(&key),
                    json!({ "email": "x@example.com", "role": "viewer" }),
                ),
            ),
            ("logout", app.post("/v1/auth/logout", Some(&key), json!({}))),
        ] {
            assert_eq!(
                (resp.status, resp.error_code()),
                (403, "forbidden"),
                "{scope}: {what}"
            );
        }
    }
}

#[test]
fn a_key_is_shown_once_stored_hashed_and_listed_without_its_secret() {
    let mut app = TestApp::spawn_process();
    let owner = app.signup("Keys");
    let created = app
        .post(
            "/v1/api-keys",
            Some(&owner.access_token),
            json!({ "name": "ci", "scopes": ["db:read", "db:write"], "expires_in_days": 30 }),
        )
        .expect(201);
    let key = created["key"].as_str().expect("key").to_owned();
    let prefix = created["prefix"].as_str().expect("prefix");
    assert!(key.starts_with(&format!("silo_{prefix}_")), "{key}");
    assert_eq!(prefix.len(), 8);
    assert!(created["expires_at"].as_i64().is_some());
    app.query(&key, "SELECT 1").expect(200);
    let list = app
        .get("/v1/api-keys", Some(&owner.access_token))
        .expect(200);
    assert_eq!(list["api_keys"][0]["name"], json!("ci"));
    assert_eq!(
        list["api_keys"][0]["scopes"],
        json!(["db:read", "db:write"])
    );
    assert!(
        list["api_keys"][0]["last_used_at"].as_i64().is_some(),
        "{list}"
    );
    assert!(
        !list.to_string().contains(&key[14..]),
        "the secret was listed"
    );
    app.stop();
    assert!(key.len() > 40);
    for path in [app.data_dir().join("catalog.db"), app.log_path()] {
        let bytes = std::fs::read(&path).expect("read");
        assert!(!bytes.is_empty());
        assert!(
            !contains(&bytes, key.as_bytes()),
            "key in clear in {}",
            path.display()
        );
        assert!(
            !contains(&bytes, &key.as_bytes()[14..]),
            "key secret in clear in {}",
            path.display()
        );
    }
}

#[test]
fn revoked_expired_and_foreign_address_keys_are_refused() {
    let app = TestApp::spawn();
    let owner = app.signup("Keys");
    let (id, key) = app.create_key(&owner, &["db:read"], json!({}));
    app.query(&key, "SELECT 1").expect(200);
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        Some(&owner.access_token),
        None,
    )
    .expect(204);
    app.query(&key, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        Some(&owner.access_token),
        None,
    )
    .expect_error(404, "not_found");

    // Expiry: move the expiry into the past behind the server's back, before the key's
    // first use (once used, the server keeps what it read until one of its own writes may
    // have changed it; the expiry it then checks on every request against the clock).
    let (id, key) = app.create_key(&owner, &["db:read"], json!({ "expires_in_days": 1 }));
    let catalog = app.catalog();
    catalog
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    catalog
        .execute("UPDATE api_keys SET expires_at = 1 WHERE id = ?1", [&id])
        .expect("expire");
    app.query(&key, "SELECT 1")
        .expect_error(401, "unauthenticated");

    // IP allow-list: the tests connect from 127.0.0.1.
    let (_, elsewhere) = app.create_key(
        &owner,
        &["db:read"],
        json!({ "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"] }),
    );
    app.query(&elsewhere, "SELECT 1")
        .expect_error(403, "forbidden");
    let (_, here) = app.create_key(
        &owner,
        &["db:read"],
        json!({ "allowed_ips": ["127.0.0.1"] }),
    );
    app.query(&here, "SELECT 1").expect(200);

    // Forged keys: right shape, unknown prefix or wrong secret.
    let forged_secret = format!("{}{}", &key[..14], "A".repeat(43));
    app.query(&forged_secret, "SELECT 1")
        .expect_error(401, "unauthenticated");
    app.query(&format!("silo_zzzzzzzz_{}", "A".repeat(43)), "SELECT 1")
        .expect_error(401, "unauthenticated");
    for bad in [
        json!({ "name": "k", "scopes": [] }),
        json!({ "name": "k", "scopes": ["db:everything"] }),
        json!({ "name": "", "scopes": ["db:read"] }),
        json!({ "name": "k", "scopes": ["db:read"], "expires_in_days": 0 }),
        json!({ "name": "k", "scopes": ["db:read"], "allowed_ips": ["not-an-ip"] }),
        json!({ "name": "k", "scopes": ["db:read"], "allowed_ips": [] }),
    ] {
        app.post("/v1/api-keys", Some(&owner.access_token), bad.clone())
            .expect_error(400, "invalid_input");
    }
}

#[test]
fn demoting_the_maker_narrows_the_key_and_removing_the_maker_kills_it() {
    let app = TestApp::spawn();
    let owner = app.signup("Keys");
    let admin = app.add_member(&owner, "admin");
    let (_, key) = app.create_key(&admin, &["db:read", "db:admin"], json!({}));
    app.query(&key, "CREATE TABLE t (x)").expect(200);
    let path = format!("/v1/members/{}", admin.user_id);
    app.request(
        reqwest::Method::PATCH,
        &path,
        Some(&owner.access_token),
        Some(&json!({ "role": "viewer" })),
    )
    .expect(200);
    app.query(&key, "CREATE TABLE u (x)")
        .expect_error(403, "sql_forbidden");
    app.query(&key, "INSERT INTO t VALUES (1)")
        .expect_error(403, "sql_forbidden");
    app.query(&key, "SELECT * FROM t").expect(200);
    app.request(
        reqwest::Method::DELETE,
        &path,
        Some(&owner.access_token),
        None,
    )
    .expect(204);
    app.query(&key, "SELECT * FROM t")
        .expect_error(401, "unauthenticated");
}

#[test]
fn a_key_reaches_only_its_own_tenant() {
    let app = TestApp::spawn();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    app.query(&b.access_token, "CREATE TABLE b_only (x)")
        .expect(200);
    let (_, key) = app.create_key(&a, &["db:admin"], json!({}));
    app.query(&key, "SELECT * FROM b_only")
        .expect_error(422, "sql_error");
    // B's owner cannot revoke A's key either.
    let list = app.get("/v1/api-keys", Some(&a.access_token)).expect(200);
    let id = list["api_keys"][0]["id"].as_str().expect("id").to_owned();
    app.request(
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        Some(&b.access_token),
        None,
    )
    .expect_error(404, "not_found");
    app.query(&key, "SELECT 1").expect(200);
}
