//! Plans and storage quotas (issue 17, finding 7): a free tenant wrote 306 MB in 3.5 s to
//! the disk everyone shares, and deleting rows gave nothing back.

use serde_json::json;

use crate::helpers::TestApp;

#[test]
fn a_storage_quota_stops_writes_keeps_reads_and_vacuum_gives_space_back() {
    let (app, admin) = TestApp::spawn_initialized(&["--plans", r#"{"free": {"storage_mb": 1}}"#]);
    let t = app.signup("Quota");
    let tenant = app.get("/v1/tenant", Some(&t.access_token)).expect(200);
    assert_eq!(tenant["plan"], json!("free"));
    assert_eq!(tenant["limits"]["storage_bytes"], json!(1024 * 1024));
    app.query(&t.access_token, "CREATE TABLE blobs(b BLOB)")
        .expect(200);
    let mut refused = None;
    for i in 0..40 {
        let r = app.query(
            &t.access_token,
            "INSERT INTO blobs VALUES (randomblob(100000))",
        );
        if r.status != 200 {
            refused = Some((i, r));
            break;
        }
    }
    let (written, r) = refused.expect("the quota never stopped a write");
    assert!(
        (5..=11).contains(&written),
        "{written} rows of 100 kB fit in 1 MiB"
    );
    let body = r.expect_error(403, "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage quota")),
        "{body}"
    );
    // Reads keep working, and deleting does too.
    let n = app
        .query(&t.access_token, "SELECT count(*) FROM blobs")
        .expect(200);
    assert_eq!(n["rows"], json!([[written]]));
    app.query(&t.access_token, "DELETE FROM blobs").expect(200);
    let vacuumed = app
        .post("/v1/db/vacuum", Some(&t.access_token), json!({}))
        .expect(200);
    let (before, after) = (
        vacuumed["size_bytes_before"].as_u64().expect("before"),
        vacuumed["size_bytes_after"].as_u64().expect("after"),
    );
    assert!(
        after * 4 < before,
        "vacuum gave back too little: {before} -> {after}"
    );
    app.query(
        &t.access_token,
        "INSERT INTO blobs VALUES (randomblob(100000))",
    )
    .expect(200);
    let audit = app
        .get("/v1/audit?action=db.vacuumed", Some(&t.access_token))
        .expect(200);
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(1));

    // An operator moves the tenant to a larger plan: the limit lifts at once.
    let view = app.cli_json(&admin, &["tenants", "set-plan", &t.id, "pro"]);
    assert_eq!(view["plan"], json!("pro"));
    for _ in 0..15 {
        app.query(
            &t.access_token,
            "INSERT INTO blobs VALUES (randomblob(100000))",
        )
        .expect(200);
    }
    let tenant = app.get("/v1/tenant", Some(&t.access_token)).expect(200);
    assert_eq!(
        tenant["limits"]["storage_bytes"],
        json!(10u64 * 1024 * 1024 * 1024)
    );
    assert!(tenant["db"]["size_bytes"].as_u64().expect("size") > 1024 * 1024);
    // An operator can give a tenant's free space back too (no rows read; audited).
    app.query(&t.access_token, "DELETE FROM blobs").expect(200);
    let out = app.cli_json(&admin, &["tenants", "vacuum", &t.id]);
    assert!(
        out["size_bytes_after"].as_u64() < out["size_bytes_before"].as_u64(),
        "{out}"
    );
    // Unknown plans are refused with the list.
    let (code, _, err) = app.cli(&admin, &["tenants", "set-plan", &t.id, "platinum"]);
    assert_ne!(code, 0);
    assert!(err.contains("enterprise"), "{err}");
}

#[test]
fn vacuum_is_for_admins() {
    let app = TestApp::spawn();
    let owner = app.signup("Vac");
    let member = app.add_member(&owner, "member");
    app.post("/v1/db/vacuum", Some(&member.access_token), json!({}))
        .expect_error(403, "forbidden");
    app.post("/v1/db/vacuum", Some(&owner.access_token), json!({}))
        .expect(200);
    // The server vacuums one database at a time: a tenant may not keep it busy.
    app.post("/v1/db/vacuum", Some(&owner.access_token), json!({}))
        .expect_error(429, "rate_limited");
}

/// Finding 7: when a tenant filled the disk, every login and signup answered 500 and
/// `/readyz` still said ready. Under the free-space floor, tenant writes and new tenants
/// pause (507), reads and sign-ins keep working on the space the floor keeps, and
/// `/readyz` says not ready. (A floor above the disk's size stands in for a full disk.)
#[test]
fn under_the_free_disk_floor_writes_pause_and_sign_in_keeps_working() {
    let mut app = TestApp::spawn_process();
    let t = app.signup("Crowded");
    app.query(&t.access_token, "CREATE TABLE t(x)").expect(200);
    app.query(&t.access_token, "INSERT INTO t VALUES (1)")
        .expect(200);
    app.stop();
    app.start_with(&["--min-free-disk-mb".to_owned(), "1000000000".to_owned()]);
    let r = app.query(&t.access_token, "INSERT INTO t VALUES (2)");
    let body = r.expect_error(507, "storage_full");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("paused")),
        "{body}"
    );
    let n = app
        .query(&t.access_token, "SELECT count(*) FROM t")
        .expect(200);
    assert_eq!(n["rows"], json!([[1]]));
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": t.email, "password": t.password }),
    )
    .expect(200);
    app.try_signup("Another", "another@example.com", "password1")
        .expect_error(507, "storage_full");
    app.get("/readyz", None).expect_error(503, "busy");
    let metrics = app.metrics();
    assert!(metrics.contains("silo_disk_free_bytes"), "{metrics}");
}

/// Rate limits per tenant by plan: past the plan's requests a minute, 429 `rate_limited`
/// with `Retry-After`, for the JSON routes and libSQL alike; other tenants are not touched;
/// a plan change lifts it at once.
#[test]
fn data_requests_are_limited_per_tenant_by_plan() {
    let (app, admin) = TestApp::spawn_initialized(&[
        "--plans",
        r#"{"free": {"storage_mb": 1024, "requests_per_minute": 5}}"#,
    ]);
    let busy = app.signup("Busy");
    let calm = app.signup("Calm");
    let statuses: Vec<u16> = (0..5)
        .map(|_| app.query(&busy.access_token, "SELECT 1").status)
        .collect();
    assert_eq!(statuses, vec![200; 5]);
    app.query(&busy.access_token, "SELECT 1")
        .expect_error(429, "rate_limited");
    let r = app.post(
        "/v2/pipeline",
        Some(&busy.access_token),
        json!({ "requests": [{ "type": "execute", "stmt": { "sql": "SELECT 1" } }] }),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    // Another tenant has its own budget.
    app.query(&calm.access_token, "SELECT 1").expect(200);
    // A plan without a request limit lifts it at once.
    app.cli_json(&admin, &["tenants", "set-plan", &busy.id, "enterprise"]);
    for _ in 0..20 {
        app.query(&busy.access_token, "SELECT 1").expect(200);
    }
}
