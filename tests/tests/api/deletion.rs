//! Tenant deletion: grace period, crypto-shredding, certificate, restore, crash recovery.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, silo_bin};

fn tenant_files(app: &TestApp, id: &str) -> Vec<String> {
    std::fs::read_dir(app.data_dir().join("tenants"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(id))
                .collect()
        })
        .unwrap_or_default()
}

fn count(app: &TestApp, sql: &str, id: &str) -> i64 {
    app.catalog().query_row(sql, [id], |r| r.get(0)).expect(sql)
}

fn wait_for_certificate(app: &TestApp, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = app.post(
            "/v1/deletion-certificate",
            None,
            json!({ "certificate_token": token }),
        );
        if resp.status == 200 {
            return resp.body;
        }
        assert_eq!(resp.status, 409, "{}", resp.body);
        assert!(Instant::now() < deadline, "the deletion never completed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn verify_certificate(app: &TestApp, doc: &Value) -> (bool, String) {
    let path = app.dir.path().join(format!(
        "cert-{}.json",
        hex::encode(silo_crypto::random_bytes::<4>())
    ));
    std::fs::write(&path, doc.to_string()).expect("write certificate");
    let out = std::process::Command::new(silo_bin())
        .arg("verify-certificate")
        .arg(&path)
        .env("SILO_MASTER_KEY", &app.master_key)
        .output()
        .expect("run verify-certificate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn after_the_grace_period_nothing_of_the_tenant_remains_but_its_audit_trail() {
    let app = TestApp::spawn_with(&["--deletion-grace-secs", "2", "--reaper-interval-ms", "200"]);
    let owner = app.signup("Doomed");
    let member = app.add_member(&owner, "member");
    app.create_key(&owner, &["db:read"], json!({}));
    app.post(
        "/v1/invites",
        Some(&owner.access_token),
        json!({ "email": "pending@example.com", "role": "viewer" }),
    )
    .expect(201);
    app.query(&owner.access_token, "CREATE TABLE secrets (v TEXT)")
        .expect(200);
    let other = app.signup("Survivor");
    app.query(&other.access_token, "CREATE TABLE kept (v TEXT)")
        .expect(200);
    let id = owner.id.clone();

    app.request(
        reqwest::Method::DELETE,
        "/v1/tenant",
        Some(&member.access_token),
        None,
    )
    .expect_error(403, "forbidden");
    let scheduled = app
        .request(
            reqwest::Method::DELETE,
            "/v1/tenant",
            Some(&owner.access_token),
            None,
        )
        .expect(202);
    let token = scheduled["certificate_token"]
        .as_str()
        .expect("certificate token")
        .to_owned();
    // Suspended at once; the certificate waits for the end of the grace period.
    app.query(&owner.access_token, "SELECT 1")
        .expect_error(403, "tenant_suspended");
    app.post(
        "/v1/deletion-certificate",
        None,
        json!({ "certificate_token": token }),
    )
    .expect_error(409, "conflict");

    let doc = wait_for_certificate(&app, &token);
    assert_eq!(doc["certificate"]["tenant_id"], json!(id));
    assert_eq!(doc["certificate"]["tenant_name"], json!("Doomed"));
    assert_eq!(doc["certificate"]["destroyed"]["accounts"], json!(2));
    assert_eq!(doc["certificate"]["destroyed"]["api_keys"], json!(1));

    // Nothing on disk, nothing in the catalog…
    assert_eq!(tenant_files(&app, &id), Vec::<String>::new());
    for sql in [
        "SELECT count(*) FROM tenants WHERE id = ?1",
        "SELECT count(*) FROM memberships WHERE tenant_id = ?1",
        "SELECT count(*) FROM sessions WHERE tenant_id = ?1",
        "SELECT count(*) FROM api_keys WHERE tenant_id = ?1",
        "SELECT count(*) FROM invites WHERE tenant_id = ?1",
    ] {
        assert_eq!(count(&app, sql, &id), 0, "{sql}");
    }
    for email in [&owner.email, &member.email] {
        assert_eq!(
            count(&app, "SELECT count(*) FROM users WHERE email = ?1", email),
            0,
            "{email}"
        );
    }
    app.post(
        "/v1/auth/login",
        None,
        json!({ "email": owner.email, "password": owner.password }),
    )
    .expect_error(401, "invalid_credentials");
    // …but the audit trail, which ends with the deletion.
    assert!(
        count(
            &app,
            "SELECT count(*) FROM audit_events WHERE tenant_id = ?1",
            &id
        ) >= 5
    );
    let last: String = app
        .catalog()
        .query_row(
            "SELECT action FROM audit_events WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
            [&id],
            |r| r.get(0),
        )
        .expect("last event");
    assert_eq!(last, "tenant.deleted");

    // The certificate verifies, and a doctored one does not.
    let (ok, out) = verify_certificate(&app, &doc);
    assert!(ok, "{out}");
    let mut forged = doc.clone();
    forged["certificate"]["destroyed"]["accounts"] = json!(1);
    let (ok, out) = verify_certificate(&app, &forged);
    assert!(!ok && out.contains("INVALID"), "{out}");

    // The other tenant never noticed.
    app.query(&other.access_token, "SELECT * FROM kept")
        .expect(200);
}

#[test]
fn a_scheduled_deletion_can_be_restored_within_the_grace_period() {
    let (app, admin) = TestApp::spawn_initialized(&["--reaper-interval-ms", "200"]);
    let owner = app.signup("Regretful");
    app.query(&owner.access_token, "CREATE TABLE t (v)")
        .expect(200);
    let scheduled = app.cli_json(&admin, &["tenants", "delete", &owner.id]);
    assert_eq!(scheduled["status"], json!("deleting"));
    let token = scheduled["certificate_token"]
        .as_str()
        .expect("token")
        .to_owned();
    app.query(&owner.access_token, "SELECT 1")
        .expect_error(403, "tenant_suspended");
    let (code, _, err) = app.cli(&admin, &["tenants", "resume", &owner.id]);
    assert_eq!(code, 1, "resume must not skip the deletion rules");
    assert!(err.contains("restore"), "{err}");
    let restored = app.cli_json(&admin, &["tenants", "restore", &owner.id]);
    assert_eq!(restored["status"], json!("active"));
    app.query(&owner.access_token, "SELECT * FROM t")
        .expect(200);
    app.post(
        "/v1/deletion-certificate",
        None,
        json!({ "certificate_token": token }),
    )
    .expect_error(404, "not_found");
    let (code, _, _) = app.cli(&admin, &["tenants", "restore", &owner.id]);
    assert_eq!(code, 1, "nothing to restore");
}

#[test]
fn a_crash_in_the_middle_of_a_deletion_is_finished_at_the_next_start() {
    let mut app = TestApp::spawn_process_with(&[
        "--deletion-grace-secs",
        "1",
        "--reaper-interval-ms",
        "200",
        "--test-pause-deletion-ms",
        "600000",
    ]);
    let owner = app.signup("Interrupted");
    let id = owner.id.clone();
    let token = app
        .request(
            reqwest::Method::DELETE,
            "/v1/tenant",
            Some(&owner.access_token),
            None,
        )
        .expect(202)["certificate_token"]
        .as_str()
        .expect("token")
        .to_owned();
    // Wait until the reaper has destroyed the DB token and paused before the files.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sealed: Vec<u8> = app
            .catalog()
            .query_row("SELECT db_token FROM tenants WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .expect("row");
        if sealed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the reaper never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !tenant_files(&app, &id).is_empty(),
        "files went before the pause"
    );
    app.kill9();
    app.start_with(&["--reaper-interval-ms".to_owned(), "200".to_owned()]);
    let doc = wait_for_certificate(&app, &token);
    assert_eq!(doc["certificate"]["tenant_id"], json!(id));
    assert_eq!(tenant_files(&app, &id), Vec::<String>::new());
    assert_eq!(
        count(&app, "SELECT count(*) FROM tenants WHERE id = ?1", &id),
        0
    );
}

#[test]
fn a_deleted_tenants_audit_trail_is_purged_after_the_retention_period() {
    let (app, admin) = TestApp::spawn_initialized(&[
        "--deletion-grace-secs",
        "1",
        "--audit-retention-secs",
        "2",
        "--reaper-interval-ms",
        "200",
    ]);
    let gone = app.signup("Forgotten");
    let kept = app.signup("Remembered");
    let token = app
        .request(
            reqwest::Method::DELETE,
            "/v1/tenant",
            Some(&gone.access_token),
            None,
        )
        .expect(202)["certificate_token"]
        .as_str()
        .expect("token")
        .to_owned();
    wait_for_certificate(&app, &token);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &app,
        "SELECT count(*) FROM audit_events WHERE tenant_id = ?1",
        &gone.id,
    ) > 0
    {
        assert!(
            Instant::now() < deadline,
            "the audit trail was never purged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_heads WHERE chain = ?1",
            &gone.id
        ),
        0
    );
    // The live tenant's trail is untouched, and the log is append-only again.
    assert!(
        count(
            &app,
            "SELECT count(*) FROM audit_events WHERE tenant_id = ?1",
            &kept.id
        ) > 0
    );
    let err = app
        .catalog()
        .execute("DELETE FROM audit_events", [])
        .expect_err("deletes are refused again");
    assert!(err.to_string().contains("append-only"), "{err}");
    let all = app
        .request(
            reqwest::Method::GET,
            "/admin/v1/audit/verify",
            Some(&admin),
            None,
        )
        .expect(200);
    assert_eq!(all["ok"], json!(true), "{all}");
}
