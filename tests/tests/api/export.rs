//! Full exports: a plain SQLite copy and a SQL dump, both restorable, taken while writes go on.

use serde_json::json;

use crate::helpers::{Tenant, TestApp, contains};

fn download(app: &TestApp, token: &str, format: &str) -> (u16, String, Vec<u8>) {
    let resp = app
        .client
        .get(format!("{}/v1/export?format={format}", app.base))
        .bearer_auth(token)
        .send()
        .expect("export");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, resp.bytes().expect("body").to_vec())
}

/// Every row of every user table, as text, for comparison.
fn contents(conn: &rusqlite::Connection) -> Vec<String> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("tables");
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .expect("select");
        let width = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..width)
                    .map(|i| {
                        format!("{:?}", r.get_ref(i).map(|v| v.data_type()))
                            + &format!("{:?}", r.get::<_, rusqlite::types::Value>(i))
                    })
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .and_then(|rows| rows.collect())
            .expect("rows");
        rows.sort();
        out.push(format!("{t}: {rows:?}"));
    }
    out
}

fn seed(app: &TestApp, owner: &Tenant) {
    app.batch(
        &owner.access_token,
        json!([
            { "sql": "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL, photo BLOB, note TEXT)" },
            { "sql": "CREATE INDEX people_name ON people (name)" },
            { "sql": "INSERT INTO people (name, score, photo, note) VALUES (?, ?, ?, ?)", "params": ["O'Brien", 0.1, { "base64": "AAEC/w==" }, null] },
            { "sql": "INSERT INTO people (name, score, photo, note) VALUES (?, ?, ?, ?)", "params": ["", -1e300, { "base64": "" }, "line\nbreak"] },
            { "sql": "CREATE TABLE log (at INTEGER)" }
        ]),
    )
    .expect(200);
}

#[test]
fn both_formats_restore_to_the_same_content() {
    let mut app = TestApp::spawn();
    let owner = app.signup("Exporter");
    seed(&app, &owner);

    let (status, ctype, sqlite) = download(&app, &owner.access_token, "sqlite");
    assert_eq!((status, ctype.as_str()), (200, "application/vnd.sqlite3"));
    assert!(
        sqlite.starts_with(b"SQLite format 3\0"),
        "not a plain SQLite file"
    );
    let copy_path = app.dir.path().join("copy.db");
    std::fs::write(&copy_path, &sqlite).expect("write copy");
    let copy = rusqlite::Connection::open(&copy_path).expect("open copy");
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(check, "ok");

    let (status, ctype, dump) = download(&app, &owner.access_token, "sql");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let restored = rusqlite::Connection::open_in_memory().expect("memory db");
    restored
        .execute_batch(std::str::from_utf8(&dump).expect("utf-8 dump"))
        .expect("the dump restores");

    // The original, read with its own key, to compare against.
    app.stop();
    let original =
        rusqlite::Connection::open(app.tenant_db_path(&owner.id)).expect("open original");
    original
        .execute_batch(&format!(
            "PRAGMA key = \"x'{}'\";",
            hex::encode(app.db_token(&owner.id))
        ))
        .expect("key");
    let expected = contents(&original);
    assert!(expected.iter().any(|t| t.contains("O'Brien")));
    assert_eq!(contents(&copy), expected);
    assert_eq!(contents(&restored), expected);
    // Exports are streamed: no directory of built files.
    assert!(!app.data_dir().join("exports").exists());
}

/// Issue 17, finding 9: exports were built as plaintext files under `<data-dir>/exports`,
/// and sorts could spill to plaintext temporary files. While an export of every format
/// streams, and a large sort runs, no file the server has open (deleted ones included,
/// through /proc) nor any file under the data directory or the temporary directories
/// holds a tenant's row in clear; nor does any afterwards.
#[test]
fn no_plaintext_copy_reaches_a_file_during_exports_and_sorts() {
    use std::io::Read as _;
    let app = TestApp::spawn_process();
    let owner = app.signup("Marked");
    let marker = "plaintext-row-marker-7c1e";
    app.post(
        "/v1/db/batch",
        Some(&owner.access_token),
        serde_json::json!({ "statements": [
            { "sql": "CREATE TABLE rows(id INTEGER PRIMARY KEY, body TEXT)" },
            { "sql": format!("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 60000) INSERT INTO rows(body) SELECT '{marker}-' || x || '-' || hex(randomblob(100)) FROM n") }
        ]}),
    )
    .expect(200);
    let files = |pid: u32| -> Vec<std::path::PathBuf> {
        let mut out: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let mut stack = vec![
            app.data_dir(),
            std::env::temp_dir(),
            std::path::PathBuf::from("/var/tmp"),
        ];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() && dir != std::env::temp_dir() => stack.push(path),
                    // Only SQLite's temporary files in the shared temporary directories.
                    Ok(t)
                        if t.is_file()
                            && (dir.starts_with(app.data_dir())
                                || path.file_name().is_some_and(|n| {
                                    n.to_string_lossy().starts_with("etilqs")
                                })) =>
                    {
                        out.push(path)
                    }
                    _ => {}
                }
            }
        }
        out
    };
    let scan = |when: &str| {
        for path in files(app.pid()) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "{when}: a row in clear in {} ({:?})",
                path.display(),
                std::fs::read_link(&path).ok()
            );
        }
    };
    for format in ["sqlite", "csv", "sql"] {
        let mut resp = app
            .client
            .get(format!("{}/v1/export?format={format}", app.base))
            .bearer_auth(&owner.access_token)
            .send()
            .expect("export");
        assert_eq!(resp.status(), 200, "{format}");
        // Part of it read: the export is under way on the server.
        let mut first = vec![0u8; 64 * 1024];
        resp.read_exact(&mut first).expect("first chunk");
        let sorted = app.query(
            &owner.access_token,
            "SELECT body FROM rows ORDER BY body DESC LIMIT 1",
        );
        sorted.expect(200);
        scan(&format!("during the {format} export"));
        let mut rest = Vec::new();
        resp.read_to_end(&mut rest).expect("rest");
        first.extend(rest);
        if format != "csv" {
            // Deflated in the archive; in clear in the other two: the needle is good.
            assert!(contains(&first, marker.as_bytes()), "{format}");
        }
    }
    scan("after the exports");
}

#[test]
fn an_export_taken_during_writes_is_consistent_and_the_writer_never_fails() {
    let app = TestApp::spawn();
    let owner = app.signup("Busy");
    seed(&app, &owner);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (writes, exports) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                app.query(
                    &owner.access_token,
                    "INSERT INTO log VALUES (unixepoch('subsec') * 1000)",
                )
                .expect(200);
                ok += 1;
            }
            ok
        });
        let mut exports = Vec::new();
        for format in ["sqlite", "sql", "sqlite"] {
            exports.push((format, download(&app, &owner.access_token, format)));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (writer.join().expect("writer"), exports)
    });
    assert!(writes > 0);
    for (format, (status, _, body)) in exports {
        assert_eq!(status, 200, "{format}");
        let conn = if format == "sqlite" {
            let path = app.dir.path().join(format!(
                "snap-{}.db",
                hex::encode(silo_crypto::random_bytes::<4>())
            ));
            std::fs::write(&path, &body).expect("write");
            rusqlite::Connection::open(&path).expect("open")
        } else {
            let c = rusqlite::Connection::open_in_memory().expect("memory");
            c.execute_batch(std::str::from_utf8(&body).expect("utf-8"))
                .expect("restore");
            c
        };
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
        let people: i64 = conn
            .query_row("SELECT count(*) FROM people", [], |r| r.get(0))
            .expect("count");
        assert_eq!(people, 2);
    }
}

#[test]
fn exports_need_an_admin_or_the_export_scope_and_are_audited() {
    let app = TestApp::spawn();
    let owner = app.signup("Guarded");
    let member = app.add_member(&owner, "member");
    assert_eq!(download(&app, &member.access_token, "sqlite").0, 403);
    let (_, export_key) = app.create_key(&owner, &["export"], json!({}));
    let (_, db_key) = app.create_key(&owner, &["db:admin"], json!({}));
    assert_eq!(download(&app, &export_key, "sql").0, 200);
    assert_eq!(download(&app, &db_key, "sql").0, 403);
    app.get("/v1/export?format=xlsx", Some(&owner.access_token))
        .expect_error(400, "invalid_input");
    let audit = app
        .get("/v1/audit?action=data.export", Some(&owner.access_token))
        .expect(200);
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["after"]["format"], json!("sql"));
    // The SQL dump is streamed as it is written: no plaintext file for it on disk.
    assert_eq!(events[0]["after"]["streamed"], json!(true));
    assert!(
        events[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("api_key:"))
    );
}

#[test]
fn the_csv_archive_holds_every_table_with_null_and_empty_apart() {
    let app = TestApp::spawn();
    let owner = app.signup("Csv");
    seed(&app, &owner);
    let (status, ctype, body) = download(&app, &owner.access_token, "csv");
    assert_eq!((status, ctype.as_str()), (200, "application/zip"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).expect("a zip archive");
    let names: Vec<String> = archive
        .file_names()
        .filter_map(Result::ok)
        .map(|n| n.into_owned())
        .collect();
    for expected in ["people.csv", "log.csv"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // The tenant's database holds only the tenant's tables: nothing of silo's is exported.
    assert!(!names.iter().any(|n| n.starts_with("_silo")), "{names:?}");
    let mut people = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("people.csv").expect("people.csv"),
        &mut people,
    )
    .expect("read");
    let lines: Vec<&str> = people.split("\r\n").collect();
    assert_eq!(lines[0], "\"id\",\"name\",\"score\",\"photo\",\"note\"");
    // NULL is an empty unquoted field; the empty string is "".
    assert_eq!(lines[1], "1,\"O'Brien\",0.1,\"AAEC/w==\",");
    assert_eq!(lines[2], "2,\"\",-1e300,\"\",\"line\nbreak\"");
}

#[test]
fn a_second_export_of_the_same_tenant_waits_its_turn() {
    let app = TestApp::spawn_with(&["--query-timeout-ms", "120000"]);
    let owner = app.signup("Big");
    app.query(&owner.access_token, "CREATE TABLE big (b BLOB)")
        .expect(200);
    // ~64 MiB, so each export takes long enough for the others to overlap it.
    app.query(
        &owner.access_token,
        "INSERT INTO big SELECT randomblob(524288) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 128) SELECT x FROM c)",
    )
    .expect(200);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let all: Vec<_> = (0..4)
            .map(|_| s.spawn(|| download(&app, &owner.access_token, "sql").0))
            .collect();
        all.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "no export was turned away: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Once they are done, the next one is served.
    assert_eq!(download(&app, &owner.access_token, "sqlite").0, 200);
}
