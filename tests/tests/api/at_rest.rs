//! Invariant 4: a stolen disk or log file reveals nothing; envelopes are bound to their
//! tenant.

use base64::Engine as _;

use crate::helpers::{TestApp, contains};

fn db_token(app: &TestApp, tenant_id: &str) -> Vec<u8> {
    app.db_token(tenant_id)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn no_secret_is_stored_or_logged_in_clear_and_tenant_files_are_encrypted() {
    let mut app = TestApp::spawn_process();
    let a = app.signup("Alpha");
    app.query(&a.access_token, "CREATE TABLE t (secret TEXT)")
        .expect(200);
    app.query(
        &a.access_token,
        "INSERT INTO t VALUES ('tenant-plaintext-marker')",
    )
    .expect(200);
    let login = app
        .post(
            "/v1/auth/login",
            None,
            serde_json::json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    let refreshed = app
        .post(
            "/v1/auth/refresh",
            None,
            serde_json::json!({ "refresh_token": a.refresh_token }),
        )
        .expect(200);
    // Error paths log too: a refused statement, a failing one, a spent refresh token.
    app.query(&a.access_token, "ATTACH DATABASE '/tmp/x.db' AS x")
        .expect_error(403, "sql_forbidden");
    app.query(&a.access_token, "SELECT * FROM missing_table")
        .expect_error(422, "sql_error");
    app.post(
        "/v1/auth/refresh",
        None,
        serde_json::json!({ "refresh_token": a.refresh_token }),
    )
    .expect(401);
    // A wrong password is a secret too, and must not be logged either.
    app.post(
        "/v1/auth/login",
        None,
        serde_json::json!({ "email": a.email, "password": "wrong-password-marker" }),
    )
    .expect(401);
    app.stop();

    let token = db_token(&app, &a.id);
    let master_raw = base64::engine::general_purpose::STANDARD
        .decode(&app.master_key)
        .expect("b64");
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("DB token (raw)", token.clone()),
        ("DB token (hex)", hex::encode(&token).into_bytes()),
        ("DB token (HEX)", hex::encode_upper(&token).into_bytes()),
        ("master key (base64)", app.master_key.clone().into_bytes()),
        ("master key (raw)", master_raw),
        ("password", a.password.clone().into_bytes()),
        ("wrong password", b"wrong-password-marker".to_vec()),
        ("access token", a.access_token.clone().into_bytes()),
        ("refresh token", a.refresh_token.clone().into_bytes()),
        (
            "login access token",
            login["access_token"]
                .as_str()
                .expect("token")
                .as_bytes()
                .to_vec(),
        ),
        (
            "login refresh token",
            login["refresh_token"]
                .as_str()
                .expect("token")
                .as_bytes()
                .to_vec(),
        ),
        (
            "rotated refresh token",
            refreshed["refresh_token"]
                .as_str()
                .expect("token")
                .as_bytes()
                .to_vec(),
        ),
    ];

    for (what, secret) in &secrets {
        assert!(
            secret.len() >= 16,
            "{what} is too short to be a meaningful needle"
        );
    }

    // The catalog (and its WAL), the tenant database, and the logs.
    let mut scanned = files_under(&app.data_dir());
    scanned.retain(|p| !p.ends_with("master.key"));
    scanned.push(app.log_path());
    assert!(scanned.iter().any(|p| p.ends_with("catalog.db")));
    for path in &scanned {
        let bytes = std::fs::read(path).expect("read");
        for (what, secret) in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{what} found in clear in {}",
                path.display()
            );
        }
    }

    let tenant_file = std::fs::read(app.tenant_db_path(&a.id)).expect("tenant db");
    assert!(
        !tenant_file.starts_with(b"SQLite format 3"),
        "tenant database is not encrypted"
    );
    assert!(!contains(&tenant_file, b"tenant-plaintext-marker"));
}

#[test]
fn an_envelope_copied_to_another_tenants_row_opens_nothing() {
    let mut app = TestApp::spawn_process();
    let a = app.signup("Alpha");
    let b = app.signup("Beta");
    app.query(&a.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.query(&a.access_token, "INSERT INTO t VALUES ('alpha-only')")
        .expect(200);
    app.query(&b.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.stop();

    // Copy A's sealed token into B's row: first alone, then with A's database id as well.
    for copy_db_id in [false, true] {
        {
            let catalog = app.catalog();
            if copy_db_id {
                // db_id is unique: move A's aside first, as an attacker editing the file would.
                catalog
                    .execute(
                        "UPDATE tenants SET db_id = db_id || '-moved' WHERE id = ?1",
                        [&a.id],
                    )
                    .expect("move");
                catalog
                    .execute(
                        "UPDATE tenants SET db_token = (SELECT db_token FROM tenants WHERE id = ?1),
                                db_id = replace((SELECT db_id FROM tenants WHERE id = ?1), '-moved', '')
                         WHERE id = ?2",
                        [&a.id, &b.id],
                    )
                    .expect("copy");
            } else {
                catalog
                    .execute(
                        "UPDATE tenants SET db_token = (SELECT db_token FROM tenants WHERE id = ?1) WHERE id = ?2",
                        [&a.id, &b.id],
                    )
                    .expect("copy");
            }
        }
        app.start();
        let resp = app.query(&b.access_token, "SELECT * FROM t");
        assert_eq!(resp.status, 503, "copy_db_id={copy_db_id}: {}", resp.body);
        assert_eq!(resp.error_code(), "tenant_unavailable");
        assert!(!resp.body.to_string().contains("alpha-only"));
        app.stop();
    }
    let logs = String::from_utf8_lossy(&app.logs()).into_owned();
    assert!(
        logs.contains("envelope does not open"),
        "no clear log line for the operator"
    );
}

#[test]
fn after_a_master_key_rotation_old_data_and_sessions_still_work() {
    let mut app = TestApp::spawn();
    let a = app.signup("Rotating");
    app.query(&a.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.query(&a.access_token, "INSERT INTO t VALUES ('kept')")
        .expect(200);
    app.stop();
    let old = app.master_key.clone();
    app.master_key =
        base64::engine::general_purpose::STANDARD.encode(silo_crypto::random_bytes::<32>());
    app.start_with(&["--previous-master-keys".to_owned(), old]);
    // The DB token sealed under the old key still opens; the old access token still verifies.
    let rows = app.query(&a.access_token, "SELECT v FROM t").expect(200);
    assert_eq!(rows["rows"], serde_json::json!([["kept"]]));
    // New tenants are sealed and signed under the new key.
    let b = app.signup("Fresh");
    app.stop();
    // Without the old key: the new tenant works, the old one is a clear error, no data.
    app.start_with(&[]);
    app.query(&b.access_token, "SELECT 1").expect(200);
    app.query(&a.access_token, "SELECT 1")
        .expect_error(401, "unauthenticated");
    let login = app
        .post(
            "/v1/auth/login",
            None,
            serde_json::json!({ "email": a.email, "password": a.password }),
        )
        .expect(200);
    let body = app
        .query(
            login["access_token"].as_str().expect("token"),
            "SELECT v FROM t",
        )
        .expect_error(503, "tenant_unavailable");
    assert!(!body.to_string().contains("kept"));
}

/// Finding 9: the catalog was 0644 in a 0755 folder. Everything silo writes is its user's
/// alone: the data directory 0700, every directory in it 0700, every file 0600.
#[test]
fn the_data_directory_is_readable_by_silos_user_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn_process();
    let a = app.signup("Private");
    app.query(&a.access_token, "CREATE TABLE t(x)").expect(200);
    let data = app.data_dir();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let mut dirs = vec![data.clone()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                dirs.push(p);
            } else {
                assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
                files += 1;
            }
        }
    }
    assert!(files >= 3, "catalog, tenant database, lock: found {files}");
}

/// Issue 17, finding 9: the catalog (emails, password hashes, audit rows, client
/// addresses) was plain SQLite. It is SQLCipher now, under a key derived from the master key:
/// without the key nothing in the data directory shows an email or reads as a database.
#[test]
fn the_catalog_is_not_readable_without_the_master_key() {
    let mut app = TestApp::spawn();
    // In the tenant's name and its owner's email.
    let marker = "catalogplaintextmarker";
    let owner = app.signup(marker);
    app.query(&owner.access_token, "CREATE TABLE t(x)")
        .expect(200);
    // Audit rows carry the email and the address too.
    app.post(
        "/v1/auth/login",
        None,
        serde_json::json!({ "email": owner.email, "password": "not-the-password" }),
    )
    .expect(401);
    app.stop();
    let path = app.data_dir().join("catalog.db");
    let plain = rusqlite::Connection::open(&path).expect("open");
    assert!(
        plain
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r
                .get::<_, i64>(0))
            .is_err(),
        "the catalog reads as plain SQLite"
    );
    let mut files = files_under(&app.data_dir());
    files.retain(|p| !p.ends_with("master.key"));
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "an email in clear in {}",
            file.display()
        );
        assert!(
            !bytes.starts_with(b"SQLite format 3"),
            "{} is plain SQLite",
            file.display()
        );
    }
    // With the key, it is the server's catalog.
    let n: i64 = app
        .catalog()
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .expect("keyed read");
    assert_eq!(n, 1);
}
