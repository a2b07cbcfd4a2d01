//! silo's own record inside a tenant database: the schema version (the last tenant
//! migration applied), kept in the file header's `application_id`, not in a table. A
//! tenant's database then holds only the tenant's objects: schema tools (drizzle-kit,
//! Prisma, SQLAlchemy reflection, `sqlite_master`) see nothing of silo's.
//!
//! The header field is written in the same transaction as the migration it records, so
//! the two commit together or not at all, as the bookkeeping table they replace did. The
//! migrations' checksums (to notice an applied file that was edited) are kept in the
//! catalog, once per migration.
//!
//! Databases made by an older silo kept tables `_silo_migrations` and `_silo_meta`;
//! [`take_over_legacy`] moves them to the header in one transaction.

use rusqlite::{Connection, OptionalExtension};

/// The high bits of `application_id` that say "silo's schema version is in the low bits".
const MARK: i32 = 0x5110_0000;
const VERSION_BITS: i32 = 0xFFFF;
/// Highest version the header can record (migration files are numbered `NNNN`).
pub const MAX_VERSION: u32 = 0xFFFF;

/// The schema version recorded in the header, or `None` for a database silo never marked
/// (new and empty, or made by an older silo).
pub fn version(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    Ok((id & !VERSION_BITS == MARK).then(|| u32::try_from(id & VERSION_BITS).unwrap_or(0)))
}

/// The statement that records `version`; run it inside the migration's transaction.
pub fn set_version_sql(version: u32) -> String {
    let low = i32::try_from(version.min(MAX_VERSION)).unwrap_or(VERSION_BITS);
    format!("PRAGMA application_id = {}", MARK | low)
}

/// What an older silo's tables said: each migration applied, `(version, name, checksum)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legacy {
    pub applied: Vec<(u32, String, String)>,
}

impl Legacy {
    pub fn version(&self) -> u32 {
        self.applied.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
    }

    /// The migrations the catalog should record, `(version, name, checksum)`: all but
    /// version 1, which is silo's own.
    pub fn to_record(&self) -> impl Iterator<Item = (u32, String, String)> + '_ {
        self.applied.iter().filter(|(v, _, _)| *v > 1).cloned()
    }
}

/// Moves an older silo's bookkeeping tables into the header: reads `_silo_migrations`,
/// drops it and `_silo_meta`, and records the version, in one transaction. `None` when there
/// is nothing to move (the header is already silo's, or there are no such tables). Runs
/// with no sandbox: call it before one is installed.
pub fn take_over_legacy(conn: &Connection) -> rusqlite::Result<Option<Legacy>> {
    if version(conn)?.is_some() {
        return Ok(None);
    }
    let has_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_silo_migrations'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_table {
        return Ok(None);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| {
        // Looked at again under the write lock: another connection (a migration, another
        // opening) may have moved them meanwhile.
        if version(conn)?.is_some() {
            return Ok(None);
        }
        let applied: Vec<(u32, String, String)> = conn
            .prepare("SELECT version, name, checksum FROM _silo_migrations ORDER BY version")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let legacy = Legacy { applied };
        conn.execute_batch(&format!(
            "DROP TABLE _silo_migrations; DROP TABLE IF EXISTS _silo_meta; {};",
            set_version_sql(legacy.version())
        ))?;
        Ok(Some(legacy))
    })();
    match moved {
        Ok(legacy) => {
            conn.execute_batch("COMMIT")?;
            Ok(legacy)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn legacy_db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _silo_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE _silo_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 checksum TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT 'x');
             INSERT INTO _silo_migrations (version, name, checksum) VALUES
                 (1, 'silo_meta', 'aa'), (2, 'notes', 'bb');
             INSERT INTO _silo_meta VALUES ('tenant_id', 't');
             CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('kept');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn the_version_lives_in_the_header_and_nothing_else_marks_it() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(version(&conn).unwrap(), None);
        conn.execute_batch(&set_version_sql(42)).unwrap();
        assert_eq!(version(&conn).unwrap(), Some(42));
        // A tenant's own application id is not taken for silo's.
        conn.execute_batch("PRAGMA application_id = 1196444487")
            .unwrap();
        assert_eq!(version(&conn).unwrap(), None);
    }

    #[test]
    fn legacy_tables_move_into_the_header_in_one_step() {
        let conn = legacy_db();
        let legacy = take_over_legacy(&conn).unwrap().unwrap();
        assert_eq!(legacy.version(), 2);
        assert_eq!(legacy.applied[1], (2, "notes".to_owned(), "bb".to_owned()));
        assert_eq!(version(&conn).unwrap(), Some(2));
        let silo_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_silo\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(silo_tables, 0);
        let kept: String = conn
            .query_row("SELECT body FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "kept");
        // Done once: the second time there is nothing to move.
        assert_eq!(take_over_legacy(&conn).unwrap(), None);
    }

    #[test]
    fn a_failed_take_over_leaves_the_old_tables_and_no_mark() {
        let conn = legacy_db();
        // A statement still reading `_silo_meta` makes its DROP fail (the table is locked)
        // after `_silo_migrations` was dropped: nothing of the take-over may remain.
        let mut stmt = conn.prepare("SELECT * FROM _silo_meta").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let _ = rows.next().unwrap();
        assert!(take_over_legacy(&conn).is_err());
        drop(rows);
        drop(stmt);
        assert_eq!(version(&conn).unwrap(), None);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM _silo_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        // And it succeeds once nothing is in the way.
        assert!(take_over_legacy(&conn).unwrap().is_some());
    }
}
