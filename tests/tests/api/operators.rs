//! Operators: `silo init`, the admin API and the `silo` CLI, fleet migrations, suspension,
//! DB token rotation.

use rusqlite::OpenFlags;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp};

/// Accepts an owner invitation printed by `silo tenants create --owner-email`.
fn accept_owner(app: &TestApp, created: &Value) -> Tenant {
    let token = created["owner_invite_token"]
        .as_str()
        .expect("owner invite token");
    let tokens = app
        .post(
            "/v1/invites/accept",
            None,
            json!({ "invite_token": token, "password": "owner password" }),
        )
        .expect(201);
    Tenant {
        id: created["id"].as_str().expect("id").to_owned(),
        user_id: String::new(),
        email: String::new(),
        password: "owner password".to_owned(),
        access_token: tokens["access_token"].as_str().expect("access").to_owned(),
        refresh_token: tokens["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned(),
    }
}

/// A migrations directory with the built-in tenant migrations plus `0002_notes.sql`.
fn ship_migration(app: &TestApp, sql: &str) -> String {
    let dir = app.dir.path().join("migrations");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/tenant");
    for entry in std::fs::read_dir(&shipped)
        .expect("schemas/tenant")
        .flatten()
    {
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    std::fs::write(dir.join("0002_notes.sql"), sql).expect("write migration");
    dir.display().to_string()
}

fn versions(status: &Value) -> Value {
    status["versions"].clone()
}

#[test]
fn a_migration_reaches_every_tenant_isolates_a_failure_and_resumes() {
    let (mut app, admin) = TestApp::spawn_initialized(&[]);

    // 50 tenants made with the CLI; the first has an owner who will break its migration.
    let first = app.cli_json(
        &admin,
        &[
            "tenants",
            "create",
            "Broken Co",
            "--owner-email",
            "owner@broken.example.com",
        ],
    );
    for i in 1..50 {
        app.cli_json(&admin, &["tenants", "create", &format!("Tenant {i}")]);
    }
    let listed = app.cli_json(&admin, &["tenants", "list", "--all", "--limit", "20"]);
    assert_eq!(listed["tenants"].as_array().map(Vec::len), Some(50));
    let owner = accept_owner(&app, &first);
    app.query(
        &owner.access_token,
        "CREATE TABLE notes (conflicting INTEGER)",
    )
    .expect(200);

    // Ship migration 0002 from a directory, without rebuilding silo.
    let migrations = ship_migration(
        &app,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\nCREATE INDEX notes_body ON notes (body);\n",
    );
    app.stop();
    app.start_with(&["--migrations".to_owned(), migrations]);

    let plan = app.cli_json(&admin, &["migrate", "plan"]);
    assert_eq!(plan["latest_version"], json!(2));
    assert_eq!(
        plan["pending"],
        json!([{ "version": 2, "name": "notes", "tenants": 50 }])
    );

    // Apply with concurrency 8: 49 succeed, the broken one is reported and left at 1.
    let (code, out, err) = app.cli(
        &admin,
        &["migrate", "apply", "--concurrency", "8", "--json"],
    );
    assert_eq!(code, 1, "a failure must fail the command: {err}\n{out}");
    let result: Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(
        (
            result["job"]["done"].as_u64(),
            result["job"]["failed"].as_u64()
        ),
        (Some(49), Some(1)),
        "{result}"
    );
    assert_eq!(result["failures"][0]["tenant_id"], first["id"]);
    assert_eq!(result["failures"][0]["version"], json!(2));
    assert!(
        result["failures"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("notes")),
        "{result}"
    );
    assert_eq!(versions(&result), json!({ "1": 1, "2": 49 }));
    // All of the migration or none of it: the broken tenant has no trace of 0002.
    // The version is in the header's application id (silo's mark, then the version).
    let applied = app
        .query(&owner.access_token, "PRAGMA application_id")
        .expect(200);
    assert_eq!(applied["rows"], json!([[0x5110_0001]]));
    app.query(&owner.access_token, "SELECT conflicting FROM notes")
        .expect(200);
    let (code, out, _) = app.cli(&admin, &["migrate", "status"]);
    assert_eq!(code, 1);
    assert!(out.contains(first["id"].as_str().unwrap_or("?")), "{out}");

    // The owner fixes it; running again finishes the job.
    app.query(&owner.access_token, "DROP TABLE notes")
        .expect(200);
    let (code, out, err) = app.cli(&admin, &["migrate", "apply", "--concurrency", "8"]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("1 done, 0 failed"), "{out}");
    let status = app.cli_json(&admin, &["migrate", "status"]);
    assert_eq!(versions(&status), json!({ "2": 50 }));
    assert_eq!(status["failures"], json!([]));
    app.query(
        &owner.access_token,
        "INSERT INTO notes (body) VALUES ('migrated')",
    )
    .expect(200);
    // Nothing left to do.
    let plan = app.cli_json(&admin, &["migrate", "plan"]);
    assert_eq!(plan["pending"], json!([]));
}

#[test]
fn a_canary_failure_stops_the_migration_before_the_rest() {
    let (mut app, admin) = TestApp::spawn_initialized(&[]);
    let created = app.cli_json(
        &admin,
        &[
            "tenants",
            "create",
            "Aaa",
            "--owner-email",
            "o@aaa.example.com",
        ],
    );
    for i in 0..5 {
        app.cli_json(&admin, &["tenants", "create", &format!("T{i}")]);
    }
    let owner = accept_owner(&app, &created);
    app.query(&owner.access_token, "CREATE TABLE notes (x)")
        .expect(200);
    let migrations = ship_migration(&app, "CREATE TABLE notes (id INTEGER PRIMARY KEY);");
    app.stop();
    app.start_with(&["--migrations".to_owned(), migrations]);
    // Every tenant is a canary here, so the broken one is among them whatever the order.
    let (code, out, _) = app.cli(&admin, &["migrate", "apply", "--canary", "6", "--json"]);
    assert_eq!(code, 1);
    let result: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(result["job"]["state"], json!("canary_failed"), "{result}");
    assert_eq!(result["job"]["failed"], json!(1));
    assert!(
        result["job"]["remaining"].as_u64().unwrap_or(0)
            + result["job"]["done"].as_u64().unwrap_or(0)
            == 5
    );
}

#[test]
fn suspension_rotation_and_admin_only_routes() {
    let (app, admin) = TestApp::spawn_initialized_process(&[]);
    let created = app.cli_json(
        &admin,
        &[
            "tenants",
            "create",
            "Acme",
            "--owner-email",
            "boss@acme.example.com",
            "--plan",
            "pro",
        ],
    );
    assert_eq!(created["plan"], json!("pro"));
    let id = created["id"].as_str().expect("id").to_owned();
    let owner = accept_owner(&app, &created);
    app.query(&owner.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.query(&owner.access_token, "INSERT INTO t VALUES ('survives')")
        .expect(200);
    let (_, key) = app.create_key(&owner, &["db:read"], json!({}));

    // Suspend: users and keys are refused at once; resume restores them.
    let suspended = app.cli_json(&admin, &["tenants", "suspend", &id]);
    assert_eq!(suspended["status"], json!("suspended"));
    app.query(&owner.access_token, "SELECT * FROM t")
        .expect_error(403, "tenant_suspended");
    app.query(&key, "SELECT * FROM t")
        .expect_error(403, "tenant_suspended");
    app.cli_json(&admin, &["tenants", "resume", &id]);
    app.query(&owner.access_token, "SELECT * FROM t")
        .expect(200);
    app.query(&key, "SELECT * FROM t").expect(200);

    // Rotate the DB token: the old key no longer opens the file, the tenant keeps working.
    let old = app.db_token(&id);
    let path = app.tenant_db_path(&id);
    // silo holds its tenants' files exclusively while it runs (SQLite's `unix-excl`), so
    // the files are examined as they are on disk: a copy of the database and its WAL.
    let opens = |key: &[u8]| -> bool {
        let copy = tempfile::tempdir().expect("temp dir");
        let copied = copy.path().join("copy.db");
        std::fs::copy(&path, &copied).expect("copy the database file");
        let wal = path.with_file_name(format!(
            "{}-wal",
            path.file_name()
                .and_then(|n| n.to_str())
                .expect("file name")
        ));
        if wal.exists() {
            std::fs::copy(&wal, copy.path().join("copy.db-wal")).expect("copy the WAL");
        }
        let Ok(conn) = rusqlite::Connection::open(&copied) else {
            return false;
        };
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(key)))
            .is_ok()
            && conn
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .is_ok()
    };
    assert!(opens(&old));
    // …and no other process can open the live file meanwhile, even with the right key.
    let live = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    live.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(&old)))
        .expect("key");
    let err = live
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .expect_err("another process read a tenant database silo has open");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
    drop(live);
    let (code, out, err) = app.cli(&admin, &["tenants", "rotate-token", &id]);
    assert_eq!(code, 0, "{err}{out}");
    let new = app.db_token(&id);
    assert_ne!(old, new);
    assert!(!opens(&old), "the old DB token still opens the database");
    assert!(opens(&new));
    let rows = app
        .query(&owner.access_token, "SELECT v FROM t")
        .expect(200);
    assert_eq!(rows["rows"], json!([["survives"]]));
    let shown = app.cli_json(&admin, &["tenants", "show", &id]);
    assert_eq!(shown["members"], json!(1));
    assert_eq!(shown["db"]["placement"], json!("local"));
    assert!(shown["db"]["size_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(shown["last_activity_at"].is_string(), "{shown}");
    // Nothing an operator sees contains tenant rows.
    assert!(!shown.to_string().contains("survives"));

    // Deleting schedules deletion and suspends at once.
    let (code, _, _) = app.cli(&admin, &["tenants", "delete", &id]);
    assert_eq!(code, 0);
    app.query(&owner.access_token, "SELECT 1")
        .expect_error(403, "tenant_suspended");
    let (code, _, err) = app.cli(&admin, &["tenants", "resume", &id]);
    assert_eq!(code, 1, "a deleting tenant cannot simply resume");
    assert!(err.contains("restore"), "{err}");

    // Only platform admin tokens open the admin API.
    let other = app.signup("Other");
    let (_, other_key) = app.create_key(&other, &["db:admin"], json!({}));
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, "/admin/v1/tenants".to_owned()),
        (reqwest::Method::POST, "/admin/v1/tenants".to_owned()),
        (
            reqwest::Method::GET,
            format!("/admin/v1/tenants/{}", other.id),
        ),
        (
            reqwest::Method::POST,
            format!("/admin/v1/tenants/{}/suspend", other.id),
        ),
        (
            reqwest::Method::POST,
            format!("/admin/v1/tenants/{}/resume", other.id),
        ),
        (
            reqwest::Method::DELETE,
            format!("/admin/v1/tenants/{}", other.id),
        ),
        (
            reqwest::Method::POST,
            format!("/admin/v1/tenants/{}/rotate-db-token", other.id),
        ),
        (reqwest::Method::GET, "/admin/v1/admin-tokens".to_owned()),
        (reqwest::Method::POST, "/admin/v1/admin-tokens".to_owned()),
        (
            reqwest::Method::DELETE,
            "/admin/v1/admin-tokens/x".to_owned(),
        ),
        (reqwest::Method::GET, "/admin/v1/migrations/plan".to_owned()),
        (
            reqwest::Method::POST,
            "/admin/v1/migrations/apply".to_owned(),
        ),
        (
            reqwest::Method::GET,
            "/admin/v1/migrations/status".to_owned(),
        ),
    ];
    let forged = format!("silo_admin_{}", "A".repeat(43));
    for (method, path) in &routes {
        for (who, token) in [
            ("owner JWT", Some(other.access_token.as_str())),
            ("db:admin key", Some(other_key.as_str())),
            ("forged admin token", Some(forged.as_str())),
            ("nothing", None),
        ] {
            let resp = app.request(method.clone(), path, token, Some(&json!({ "name": "x" })));
            assert!(
                resp.status == 401 || resp.status == 403,
                "{who} on {method} {path}: {} {}",
                resp.status,
                resp.body
            );
        }
    }
    // The other tenant was not touched by any of that.
    app.query(&other.access_token, "SELECT 1").expect(200);
}

#[test]
fn admin_tokens_are_managed_with_the_cli_and_init_runs_once() {
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let (code, out, err) = app.cli(&admin, &["admin-token", "create", "--name", "ci"]);
    assert_eq!(code, 0, "{err}");
    let second = out.lines().last().expect("token line").trim().to_owned();
    assert!(second.starts_with("silo_admin_"));
    let list = app.cli_json(&second, &["admin-token", "list"]);
    let tokens = list["admin_tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2);
    assert!(
        !list.to_string().contains(&second[11..]),
        "a token was listed"
    );
    let ci_id = tokens
        .iter()
        .find(|t| t["name"] == json!("ci"))
        .and_then(|t| t["id"].as_str())
        .expect("ci")
        .to_owned();
    let (code, _, _) = app.cli(&admin, &["admin-token", "revoke", &ci_id]);
    assert_eq!(code, 0);
    let (code, _, err) = app.cli(&second, &["tenants", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 401"), "{err}");
    // The last token cannot go.
    let me = app.cli_json(&admin, &["admin-token", "list"])["admin_tokens"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (code, _, err) = app.cli(&admin, &["admin-token", "revoke", &me]);
    assert_eq!(code, 1);
    assert!(err.contains("last admin token"), "{err}");
    // `silo init` does not run on a directory a server is using (nor twice: see the CLI tests).
    let init = std::process::Command::new(crate::helpers::silo_bin())
        .arg("init")
        .arg("--data-dir")
        .arg(app.data_dir())
        .output()
        .expect("run silo init");
    assert!(!init.status.success());
    assert!(
        String::from_utf8_lossy(&init.stderr).contains("running"),
        "{init:?}"
    );
    // Usage errors exit 2; a missing token says what to do.
    assert_eq!(app.cli(&admin, &["tenants", "frobnicate"]).0, 2);
    let (code, _, err) = app.cli("", &["tenants", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 401") || err.contains("SILO_ADMIN_TOKEN"),
        "{err}"
    );
}

#[test]
fn a_rotation_interrupted_after_the_rekey_is_finished_at_the_next_open() {
    let (mut app, admin) = TestApp::spawn_initialized(&[]);
    let created = app.cli_json(
        &admin,
        &[
            "tenants",
            "create",
            "Crashy",
            "--owner-email",
            "o@crashy.example.com",
        ],
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let owner = accept_owner(&app, &created);
    app.query(&owner.access_token, "CREATE TABLE t (v TEXT)")
        .expect(200);
    app.query(&owner.access_token, "INSERT INTO t VALUES ('kept')")
        .expect(200);
    app.stop();

    // What rotate-db-token does, stopped just before its last step: the new token is
    // recorded (sealed) and the file re-keyed, but the new token was never promoted.
    let old = app.db_token(&id);
    let new: [u8; 32] = silo_crypto::random_bytes();
    {
        let catalog = app.catalog();
        let db_id: String = catalog
            .query_row("SELECT db_id FROM tenants WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .expect("db_id");
        let ring = silo_crypto::Keyring::new(
            silo_crypto::MasterKey::from_base64(&app.master_key).expect("key"),
            vec![],
        );
        let sealed = ring.seal(
            silo_crypto::EnvelopeContext {
                tenant: &id,
                purpose: "db-token",
                binding: &db_id,
            },
            &new,
        );
        catalog
            .execute(
                "UPDATE tenants SET db_token_next = ?2 WHERE id = ?1",
                rusqlite::params![id, sealed],
            )
            .expect("record next");
        let file = rusqlite::Connection::open(app.tenant_db_path(&id)).expect("open tenant file");
        file.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA journal_mode = DELETE; PRAGMA rekey = \"x'{}'\"; PRAGMA journal_mode = WAL;",
            hex::encode(&old),
            hex::encode(new)
        ))
        .expect("rekey");
    }
    app.start();
    let rows = app
        .query(&owner.access_token, "SELECT v FROM t")
        .expect(200);
    assert_eq!(rows["rows"], json!([["kept"]]));
    assert_eq!(
        app.db_token(&id),
        new.to_vec(),
        "the rotation was not finished"
    );
    let pending: Option<Vec<u8>> = app
        .catalog()
        .query_row(
            "SELECT db_token_next FROM tenants WHERE id = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("row");
    assert!(pending.is_none());
}

/// Every answer of the admin API reads as its type in `silo-api` (what the CLI reads), with
/// the values the request implies: the server and its typed contract agree.
#[test]
fn admin_answers_read_as_their_api_types() {
    use silo_api as api;
    use silo_types::TenantStatus;
    fn typed<T: serde::de::DeserializeOwned>(body: Value) -> T {
        serde_json::from_value(body.clone()).unwrap_or_else(|e| {
            panic!(
                "{} does not read as its type: {e}\n{body}",
                std::any::type_name::<T>()
            )
        })
    }
    let (app, admin) = TestApp::spawn_initialized(&[]);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        app.request(
            method,
            &format!("/admin/v1{path}"),
            Some(&admin),
            body.as_ref(),
        )
    };
    let created: api::TenantView = typed(
        call(
            reqwest::Method::POST,
            "/tenants",
            Some(json!({ "name": "Typed", "owner_email": "typed@example.com" })),
        )
        .expect(201),
    );
    assert_eq!(
        (created.name.as_str(), created.status),
        ("Typed", TenantStatus::Active)
    );
    assert!(created.owner_invite_token.is_some());
    assert_eq!(created.db.placement, "local");
    let id = created.id.clone();
    let shown: api::TenantView =
        typed(call(reqwest::Method::GET, &format!("/tenants/{id}"), None).expect(200));
    assert!(
        shown.owner_invite_token.is_none(),
        "an invitation is shown once"
    );
    assert_eq!(shown.members, 0);
    let list: api::TenantList = typed(call(reqwest::Method::GET, "/tenants", None).expect(200));
    assert!(list.tenants.iter().any(|t| t.id == id));
    let suspended: api::TenantView = typed(
        call(
            reqwest::Method::POST,
            &format!("/tenants/{id}/suspend"),
            None,
        )
        .expect(200),
    );
    assert_eq!(suspended.status, TenantStatus::Suspended);
    let resumed: api::TenantView = typed(
        call(
            reqwest::Method::POST,
            &format!("/tenants/{id}/resume"),
            None,
        )
        .expect(200),
    );
    assert_eq!(resumed.status, TenantStatus::Active);
    let deleting: api::TenantView =
        typed(call(reqwest::Method::DELETE, &format!("/tenants/{id}"), None).expect(202));
    assert_eq!(deleting.status, TenantStatus::Deleting);
    assert!(deleting.delete_after.is_some() && deleting.certificate_token.is_some());
    let restored: api::TenantView = typed(
        call(
            reqwest::Method::POST,
            &format!("/tenants/{id}/restore"),
            None,
        )
        .expect(200),
    );
    assert_eq!(restored.status, TenantStatus::Active);

    let token: api::AdminTokenCreated = typed(
        call(
            reqwest::Method::POST,
            "/admin-tokens",
            Some(json!({ "name": "typed" })),
        )
        .expect(201),
    );
    assert!(token.token.starts_with("silo_admin_"));
    let tokens: api::AdminTokenList =
        typed(call(reqwest::Method::GET, "/admin-tokens", None).expect(200));
    assert!(tokens.admin_tokens.iter().any(|t| t.id == token.id));

    let plan: api::MigrationPlan =
        typed(call(reqwest::Method::GET, "/migrations/plan", None).expect(200));
    assert!(plan.pending.is_empty() && plan.latest_version >= 1);
    let started: api::MigrationStarted =
        typed(call(reqwest::Method::POST, "/migrations/apply", Some(json!({}))).expect(202));
    assert_eq!(started.job.total, 0, "every tenant is up to date");
    let status: api::MigrationStatus =
        typed(call(reqwest::Method::GET, "/migrations/status", None).expect(200));
    assert!(status.failures.is_empty());
    assert_eq!(status.job.map(|j| j.id), Some(started.job.id));
    let verified: api::AuditVerification =
        typed(call(reqwest::Method::GET, "/audit/verify", None).expect(200));
    assert!(verified.ok && verified.chains.iter().any(|c| c.chain == id));
}
