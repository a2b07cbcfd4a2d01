//! Provisioning is crash-safe and race-free.

use std::time::{Duration, Instant};

use crate::helpers::TestApp;

fn tenant_files(app: &TestApp) -> Vec<String> {
    std::fs::read_dir(app.data_dir().join("tenants"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_kill_during_provisioning_leaves_no_orphan_and_the_signup_can_be_retried() {
    // Paused after the database file is published and before the tenant is active: the
    // moment with the most to clean up.
    let mut app = TestApp::spawn_process_with(&["--test-pause-provisioning-ms", "600000"]);
    let base = app.base.clone();
    let signup = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        // The server dies under this request; the error is expected.
        let _ = client
            .post(format!("{base}/v1/signup"))
            .json(&serde_json::json!({ "org": "Crashy", "email": "crash@example.com", "password": "long enough" }))
            .send();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tenant_files(&app).iter().any(|f| f.ends_with(".db")) {
        assert!(
            Instant::now() < deadline,
            "the database was never published: {:?}",
            tenant_files(&app)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status: String = app
        .catalog()
        .query_row("SELECT status FROM tenants", [], |r| r.get(0))
        .expect("the intent is recorded before the file exists");
    assert_eq!(status, "provisioning");

    app.kill9();
    let _ = signup.join();
    app.start_with(&[]);

    assert_eq!(
        tenant_files(&app),
        Vec::<String>::new(),
        "orphan files after restart"
    );
    let rows: i64 = app
        .catalog()
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 0, "a half-provisioned tenant survived the restart");
    let users: i64 = app
        .catalog()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .expect("count");
    assert_eq!(users, 0);

    // The same signup now simply works, and its database is there and usable.
    let body = app
        .try_signup("Crashy", "crash@example.com", "long enough")
        .expect(201);
    let token = body["access_token"].as_str().expect("token");
    app.query(token, "CREATE TABLE t (x)").expect(200);
    let databases: Vec<String> = tenant_files(&app)
        .into_iter()
        .filter(|f| f.ends_with(".db"))
        .collect();
    assert_eq!(databases.len(), 1, "{databases:?}");
}

#[test]
fn concurrent_signups_with_one_email_make_exactly_one_tenant() {
    let app = TestApp::spawn();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let app = &app;
                s.spawn(move || {
                    app.try_signup(&format!("Org {i}"), "Same@Example.com", "long enough")
                        .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        7,
        "{statuses:?}"
    );
    let tenants: i64 = app
        .catalog()
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tenants, 1);
    assert_eq!(
        tenant_files(&app)
            .iter()
            .filter(|f| f.ends_with(".db"))
            .count(),
        1
    );
    // Case and spaces do not make a different account.
    app.try_signup("Again", "  same@example.COM ", "long enough")
        .expect_error(409, "conflict");
}

#[test]
fn the_database_is_ready_when_signup_returns_and_survives_a_restart() {
    let mut app = TestApp::spawn();
    let a = app.signup("Alpha");
    // Ready, and holding nothing of silo's: the tenant's tools see an empty database.
    let body = app
        .query(&a.access_token, "SELECT count(*) FROM sqlite_master")
        .expect(200);
    assert_eq!(body["rows"], serde_json::json!([[0]]));
    app.query(&a.access_token, "CREATE TABLE kept (x)")
        .expect(200);
    app.query(&a.access_token, "INSERT INTO kept VALUES (42)")
        .expect(200);
    app.restart();
    let body = app.query(&a.access_token, "SELECT x FROM kept").expect(200);
    assert_eq!(body["rows"], serde_json::json!([[42]]));
    let me = app.get("/v1/me", Some(&a.access_token)).expect(200);
    assert_eq!(me["tenant"]["id"], serde_json::json!(a.id));
    assert_eq!(me["role"], serde_json::json!("owner"));
}

/// Databases made by an older silo held its bookkeeping as tables (`_silo_migrations`,
/// `_silo_meta`) that every schema tool saw. Opening such a database moves them into the
/// file header, in one transaction, and the tenant's data stays as it was.
#[test]
fn an_older_silos_bookkeeping_tables_leave_the_tenant_database() {
    let mut app = TestApp::spawn();
    let a = app.signup("Legacy");
    app.query(&a.access_token, "CREATE TABLE notes (body TEXT)")
        .expect(200);
    app.query(&a.access_token, "INSERT INTO notes VALUES ('kept')")
        .expect(200);
    app.stop();
    // Made as the older silo made it: both tables, version 1 recorded with the checksum of
    // the old `0001_silo_meta.sql`, no mark in the header.
    {
        let conn = rusqlite::Connection::open(app.tenant_db_path(&a.id)).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\";",
            hex::encode(app.db_token(&a.id))
        ))
        .expect("key");
        conn.execute_batch(
            "PRAGMA application_id = 0;
             CREATE TABLE _silo_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO _silo_meta VALUES ('tenant_id', 'x');
             CREATE TABLE _silo_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 checksum TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT 'then');
             INSERT INTO _silo_migrations (version, name, checksum) VALUES (1, 'silo_meta',
                 '7b61a9d9f24b396e8c1df1cbd86c8d3556d5f0510426c768e77493c0b531ca1b');",
        )
        .expect("legacy tables");
    }
    app.start();
    let objects = app
        .query(
            &a.access_token,
            "SELECT name FROM sqlite_master ORDER BY name",
        )
        .expect(200);
    assert_eq!(objects["rows"], serde_json::json!([["notes"]]));
    let kept = app
        .query(&a.access_token, "SELECT body FROM notes")
        .expect(200);
    assert_eq!(kept["rows"], serde_json::json!([["kept"]]));
    let version = app
        .query(&a.access_token, "PRAGMA application_id")
        .expect(200);
    assert_eq!(version["rows"], serde_json::json!([[0x5110_0001]]));
}
