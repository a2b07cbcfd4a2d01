//! Full exports of one tenant database: a plain SQLite copy, a SQL dump, or a zip of CSV
//! files. Each reads one snapshot (a read transaction, so WAL writers keep writing
//! meanwhile) on a connection of its own, with `trusted_schema = OFF` so the tenant's views
//! and triggers run with no more rights than in the sandbox, and writes to a stream: none
//! builds a file. Blocking: run on a blocking thread.

use std::io::Write;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use silo_crypto::DbToken;

use crate::error::{Result, RuntimeError};
use crate::handle::open_keyed;

fn internal(what: &str) -> impl Fn(rusqlite::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Internal(format!("{what}: {e}"))
}

fn open_for_export(db: &Path, token: &DbToken) -> Result<Connection> {
    if !db.exists() {
        return Err(RuntimeError::Missing);
    }
    // Read-write: a reader of a WAL database maps its shared-memory index, which it may
    // have to create. Nothing is written.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE;
    let conn = open_keyed(db, token, flags).map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => RuntimeError::WrongKey,
        _ => RuntimeError::Internal(format!("open for export: {e}")),
    })?;
    conn.execute_batch("PRAGMA trusted_schema = OFF; PRAGMA query_only = OFF;")
        .map_err(internal("export settings"))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(internal("busy timeout"))?;
    Ok(conn)
}

/// Writes a plain (unencrypted) SQLite copy of the database to `out`, page by page, from
/// one read snapshot. SQLCipher's pager decrypts each page as it is read (through the
/// `sqlite_dbpage` table), and nothing is written anywhere but `out`: no plaintext copy of
/// the database ever reaches the disk. The copy keeps SQLCipher's page size and the
/// reserved bytes at the end of each page (zeroed; any SQLite reads such a file), and is
/// marked as a rollback-journal database, so it opens on its own.
pub fn export_sqlite(db: &Path, token: &DbToken, out: &mut dyn Write) -> Result<()> {
    let conn = open_for_export(db, token)?;
    conn.execute_batch("BEGIN")
        .map_err(internal("begin snapshot"))?;
    let result = write_pages(&conn, out);
    let _ = conn.execute_batch("ROLLBACK");
    result
}

/// The header every SQLite file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

fn write_pages(conn: &Connection, out: &mut dyn Write) -> Result<()> {
    let io = |e: std::io::Error| RuntimeError::Internal(format!("write export: {e}"));
    let mut page = conn
        .prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
        .map_err(internal("read pages"))?;
    let mut read = |pgno: u32| -> Result<Vec<u8>> {
        page.query_row([pgno], |r| r.get::<_, Vec<u8>>(0))
            .map_err(internal("read page"))
    };
    let mut first = read(1)?;
    if first.len() < 100 || !first.starts_with(SQLITE_HEADER) {
        return Err(RuntimeError::Internal(
            "the database's first page has no SQLite header".to_owned(),
        ));
    }
    // In the header: the reserved bytes at the end of each page (20), the size of the
    // database in pages (28..32, current when the write counter at 92 matches 24).
    let reserve = usize::from(first[20]);
    let pages = u32::from_be_bytes([first[28], first[29], first[30], first[31]]);
    if first[24..28] != first[92..96] || pages == 0 {
        return Err(RuntimeError::Internal(
            "the database's header does not give its size".to_owned(),
        ));
    }
    // File format versions 1 (rollback journal), not 2 (WAL): a lone file then opens with
    // no -wal beside it, read-only media included.
    first[18] = 1;
    first[19] = 1;
    let scrub = |page: &mut Vec<u8>| {
        let len = page.len();
        if let Some(tail) = page.get_mut(len.saturating_sub(reserve)..) {
            tail.fill(0);
        }
    };
    scrub(&mut first);
    out.write_all(&first).map_err(io)?;
    for pgno in 2..=pages {
        let mut data = read(pgno)?;
        scrub(&mut data);
        out.write_all(&data).map_err(io)?;
    }
    out.flush().map_err(io)
}

fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) if f.is_nan() => "NULL".to_owned(),
        ValueRef::Real(f) if f.is_infinite() => if f > 0.0 { "9e999" } else { "-9e999" }.to_owned(),
        // `{:?}` is the shortest text that reads back as the same f64, and keeps a `.0`.
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(text) => format!("'{}'", text.replace('\'', "''")),
            // Bytes that are not UTF-8 are kept exactly, not "repaired".
            Err(_) => format!("CAST(X'{}' AS TEXT)", hex::encode_upper(t)),
        },
        ValueRef::Blob(b) => format!("X'{}'", hex::encode_upper(b)),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Tables SQLite itself marks as the internal storage of a virtual table (full-text, r-tree
/// indexes): they are rebuilt by refilling the virtual table, never dumped.
fn shadow_tables(conn: &Connection) -> Result<std::collections::HashSet<String>> {
    conn.prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(internal("list shadow tables"))
}

/// The columns a row can be written back through: not generated, not hidden.
fn insertable_columns(conn: &Connection, table: &str) -> Result<Vec<String>> {
    conn.prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")
        .and_then(|mut s| s.query_map([table], |r| r.get(0))?.collect())
        .map_err(internal("list columns"))
}

/// Writes a SQL dump that `sqlite3 new.db < dump.sql` restores: tables with their rows, then
/// indexes, triggers and views. Virtual tables (full-text, r-tree) are re-created and
/// refilled through their own interface; their internal tables are not dumped.
pub fn export_sql(db: &Path, token: &DbToken, out: &mut dyn Write) -> Result<()> {
    let conn = open_for_export(db, token)?;
    let io = |e: std::io::Error| RuntimeError::Internal(format!("write dump: {e}"));
    conn.execute_batch("BEGIN")
        .map_err(internal("begin snapshot"))?;
    let objects: Vec<(String, String, String)> = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(internal("read schema"))?;
    let shadows = shadow_tables(&conn)?;
    let is_shadow = |name: &str| shadows.contains(name);

    writeln!(out, "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;").map_err(io)?;
    for (kind, name, sql) in &objects {
        if kind != "table" || is_shadow(name) {
            continue;
        }
        writeln!(out, "{sql};").map_err(io)?;
        let columns = insertable_columns(&conn, name)?;
        if columns.is_empty() {
            continue;
        }
        let column_list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(",");
        let mut stmt = conn
            .prepare(&format!("SELECT {column_list} FROM {}", quote_ident(name)))
            .map_err(internal("read table"))?;
        let width = stmt.column_count();
        let mut rows = stmt.query([]).map_err(internal("read rows"))?;
        while let Some(row) = rows.next().map_err(internal("read row"))? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(literal(row.get_ref(i).map_err(internal("read value"))?));
            }
            writeln!(
                out,
                "INSERT INTO {}({column_list}) VALUES({});",
                quote_ident(name),
                values.join(",")
            )
            .map_err(io)?;
        }
    }
    // AUTOINCREMENT counters, so restored tables keep numbering where they left off.
    let has_sequence: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence')",
            [],
            |r| r.get(0),
        )
        .map_err(internal("read schema"))?;
    if has_sequence {
        writeln!(out, "DELETE FROM sqlite_sequence;").map_err(io)?;
        let mut stmt = conn
            .prepare("SELECT name, seq FROM sqlite_sequence")
            .map_err(internal("read sequences"))?;
        let mut rows = stmt.query([]).map_err(internal("read sequences"))?;
        while let Some(row) = rows.next().map_err(internal("read sequence"))? {
            writeln!(
                out,
                "INSERT INTO sqlite_sequence(name,seq) VALUES({},{});",
                literal(row.get_ref(0).map_err(internal("read value"))?),
                literal(row.get_ref(1).map_err(internal("read value"))?)
            )
            .map_err(io)?;
        }
    }
    for (kind, name, sql) in &objects {
        if kind != "table" && !is_shadow(name) {
            writeln!(out, "{sql};").map_err(io)?;
        }
    }
    writeln!(out, "COMMIT;").map_err(io)?;
    conn.execute_batch("COMMIT")
        .map_err(internal("end snapshot"))?;
    out.flush().map_err(io)
}

/// One CSV field (RFC 4180, `\r\n` rows). NULL is an empty, unquoted field; text and blobs
/// (base64) are always quoted, so an empty string is `""` and never looks like NULL.
fn csv_field(v: ValueRef<'_>) -> String {
    use base64::Engine as _;
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => quoted(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => quoted(&base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// A file name for a table's CSV: letters, digits, `_` and `-` kept, anything else `_`
/// (a table may be called `../x`), made unique within the archive.
fn csv_name(table: &str, taken: &mut std::collections::HashSet<String>) -> String {
    let base: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{base}.csv");
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}.csv");
        n += 1;
    }
    name
}

/// Writes a zip archive to `out` with one CSV file per table (header row first), from one
/// snapshot, as it goes (a streamed archive: sizes follow each entry). See [`csv_field`]
/// for how values are written.
pub fn export_csv_zip(db: &Path, token: &DbToken, out: &mut dyn Write) -> Result<()> {
    let conn = open_for_export(db, token)?;
    let mut zip = zip::ZipWriter::new_stream(out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let zerr = |e: zip::result::ZipError| RuntimeError::Internal(format!("write archive: {e}"));
    let io = |e: std::io::Error| RuntimeError::Internal(format!("write archive: {e}"));
    conn.execute_batch("BEGIN")
        .map_err(internal("begin snapshot"))?;
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(internal("read schema"))?;
    let shadows = shadow_tables(&conn)?;
    let mut taken = std::collections::HashSet::new();
    for (name, _) in &tables {
        if shadows.contains(name) {
            continue;
        }
        zip.start_file(csv_name(name, &mut taken), options)
            .map_err(zerr)?;
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {}", quote_ident(name)))
            .map_err(internal("read table"))?;
        let header: Vec<String> = stmt
            .column_names()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect();
        write!(zip, "{}\r\n", header.join(",")).map_err(io)?;
        let width = stmt.column_count();
        let mut rows = stmt.query([]).map_err(internal("read rows"))?;
        while let Some(row) = rows.next().map_err(internal("read row"))? {
            let mut fields = Vec::with_capacity(width);
            for i in 0..width {
                fields.push(csv_field(row.get_ref(i).map_err(internal("read value"))?));
            }
            write!(zip, "{}\r\n", fields.join(",")).map_err(io)?;
        }
    }
    conn.execute_batch("COMMIT")
        .map_err(internal("end snapshot"))?;
    let mut inner = zip.finish().map_err(zerr)?;
    inner.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seeded() -> (tempfile::TempDir, std::path::PathBuf, DbToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let token = DbToken::generate();
        let conn = open_keyed(
            &path,
            &token,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .unwrap();
        conn.execute_batch(
            "CREATE TABLE \"odd \"\"name\" (id INTEGER PRIMARY KEY, t TEXT, r REAL, b BLOB, n);
             INSERT INTO \"odd \"\"name\" VALUES (1, 'it''s', 1.5, x'00ff', NULL), (2, '', 0.1, x'', 42);
             CREATE INDEX odd_t ON \"odd \"\"name\" (t);
             CREATE VIEW v AS SELECT t FROM \"odd \"\"name\";
             CREATE VIRTUAL TABLE docs USING fts5(body);
             INSERT INTO docs VALUES ('hello world');
             CREATE TABLE docs_notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT,
                                      shout TEXT GENERATED ALWAYS AS (upper(body)) STORED);
             INSERT INTO docs_notes (body) VALUES ('a real table, not fts internals'), (CAST(x'ff00fe' AS TEXT)), ('x');
             DELETE FROM docs_notes WHERE id = 3;",
        )
        .unwrap();
        (dir, path, token)
    }

    fn dump_of(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for table in ["\"odd \"\"name\"", "docs", "docs_notes", "sqlite_sequence"] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
                .unwrap();
            let width = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                out.push(
                    (0..width)
                        .map(|i| literal(row.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
        out
    }

    #[test]
    fn the_sqlite_export_is_a_plain_copy_with_the_same_rows() {
        let (dir, path, token) = seeded();
        let out = dir.path().join("plain.db");
        // While a writer has pages in the WAL that the database file does not have yet.
        let writer = open_keyed(&path, &token, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE late(x); INSERT INTO late VALUES ('in the wal');")
            .unwrap();
        let mut bytes = Vec::new();
        export_sqlite(&path, &token, &mut bytes).unwrap();
        std::fs::write(&out, &bytes).unwrap();
        assert!(
            std::fs::read(&out)
                .unwrap()
                .starts_with(b"SQLite format 3\0")
        );
        let copy = Connection::open(&out).unwrap();
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "a lone file, not a WAL database");
        let ok: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let orig = open_keyed(&path, &token, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(dump_of(&copy), dump_of(&orig));
    }

    #[test]
    fn the_sql_dump_restores_the_same_content() {
        let (_dir, path, token) = seeded();
        let mut dump = Vec::new();
        export_sql(&path, &token, &mut dump).unwrap();
        let text = String::from_utf8(dump).unwrap();
        assert!(
            !text.contains("docs_data"),
            "internal fts tables were dumped"
        );
        assert!(
            text.contains("INSERT INTO \"docs_notes\""),
            "a real table named like fts internals was dropped"
        );
        let restored = Connection::open_in_memory().unwrap();
        restored.execute_batch(&text).unwrap();
        let orig = open_keyed(&path, &token, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(dump_of(&restored), dump_of(&orig));
        let hits: i64 = restored
            .query_row(
                "SELECT count(*) FROM docs WHERE docs MATCH 'hello'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 1);
    }

    #[test]
    fn the_csv_archive_has_a_file_per_table_and_tells_null_from_empty() {
        let (_dir, path, token) = seeded();
        let mut bytes = Vec::new();
        export_csv_zip(&path, &token, &mut bytes).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let names: Vec<String> = archive
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .collect();
        assert!(names.contains(&"odd__name.csv".to_owned()), "{names:?}");
        assert!(names.contains(&"docs.csv".to_owned()), "{names:?}");
        assert_eq!(
            names,
            ["odd__name.csv", "docs.csv", "docs_notes.csv"],
            "fts internals must not be exported"
        );
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("odd__name.csv").unwrap(), &mut text)
            .unwrap();
        assert_eq!(
            text,
            "\"id\",\"t\",\"r\",\"b\",\"n\"\r\n1,\"it's\",1.5,\"AP8=\",\r\n2,\"\",0.1,\"\",42\r\n"
        );
    }

    #[test]
    fn csv_file_names_cannot_escape_the_archive() {
        let mut taken = std::collections::HashSet::new();
        assert_eq!(csv_name("../etc/passwd", &mut taken), "___etc_passwd.csv");
        assert_eq!(csv_name("a/b", &mut taken), "a_b.csv");
        assert_eq!(csv_name("a.b", &mut taken), "a_b-2.csv");
    }

    #[test]
    fn reals_keep_their_exact_value() {
        for f in [0.1, 1.0, -2.5e-300, 1e300, 123_456_789.123_456_78] {
            let text = literal(ValueRef::Real(f));
            assert_eq!(text.parse::<f64>().unwrap(), f, "{text}");
        }
    }
}
