//! Numbered SQL migrations (`NNNN_name.sql`), applied in order and recorded in the database
//! they changed, each with the SHA-256 of its text so a changed file is noticed (drift)
//! instead of silently re-run or skipped.
//!
//! The same files serve the catalog (`schemas/catalog/`, recorded in a table of the catalog)
//! and every tenant database (`schemas/tenant/`): a tenant database records only its version,
//! in its header (`silo_tenant_runtime::bookkeeping`), never in a table its tools would see;
//! the checksums of tenant migrations are kept in the catalog, once per migration.

use std::path::Path;

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use silo_tenant_runtime::bookkeeping;

/// `schemas/catalog/`, compiled into the binary.
pub static CATALOG_DIR: include_dir::Dir<'_> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/../schemas/catalog");
/// `schemas/tenant/`, compiled into the binary.
pub static TENANT_DIR: include_dir::Dir<'_> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/../schemas/tenant");

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration file name {0:?} is not of the form NNNN_name.sql")]
    BadName(String),
    #[error("two migrations have version {0}")]
    DuplicateVersion(u32),
    #[error(
        "migration {version} ({name}) has changed since it was applied (recorded checksum {recorded}, file {file}); write a new migration instead of editing an applied one"
    )]
    Drift {
        version: u32,
        name: String,
        recorded: String,
        file: String,
    },
    #[error(
        "the database has migration {0} applied, which this silo does not know; is it older than the database?"
    )]
    Unknown(u32),
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: u32,
        name: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "tenant migration version 1 is silo's own; number your migrations from 0002 (the file {0} has other content)"
    )]
    ReservedVersion(String),
    #[error("read migrations: {0}")]
    Io(#[from] std::io::Error),
    #[error("migration bookkeeping: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub sql: String,
    /// Hex SHA-256 of `sql`.
    pub checksum: String,
}

impl Migration {
    /// Runs this migration and `record` (its bookkeeping) in one transaction: all of it or
    /// none of it.
    fn apply_with(
        &self,
        conn: &mut Connection,
        record: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), MigrationError> {
        let failed = |source| MigrationError::Failed {
            version: self.version,
            name: self.name.clone(),
            source,
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(&self.sql).map_err(failed)?;
        record(&tx)?;
        tx.commit().map_err(failed)
    }
}

/// An ordered set of migrations.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

impl MigrationSet {
    /// The migrations compiled into the binary from one of [`CATALOG_DIR`], [`TENANT_DIR`].
    pub fn embedded(dir: &include_dir::Dir<'_>) -> Result<Self, MigrationError> {
        let files = dir.files().filter_map(|f| {
            let name = f.path().file_name()?.to_str()?.to_owned();
            Some((name, f.contents_utf8().unwrap_or_default().to_owned()))
        });
        Self::from_files(files)
    }

    /// The migrations in a directory on disk (operators ship schema changes this way without
    /// rebuilding silo).
    pub fn from_dir(dir: &Path) -> Result<Self, MigrationError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sql") {
                files.push((name, std::fs::read_to_string(entry.path())?));
            }
        }
        Self::from_files(files)
    }

    fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, MigrationError> {
        let mut migrations = Vec::new();
        for (file_name, sql) in files {
            let Some(stem) = file_name.strip_suffix(".sql") else {
                continue;
            };
            let (num, name) = stem
                .split_once('_')
                .filter(|(n, rest)| {
                    n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty()
                })
                .ok_or_else(|| MigrationError::BadName(file_name.clone()))?;
            let version: u32 = num
                .parse()
                .map_err(|_| MigrationError::BadName(file_name.clone()))?;
            let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
            migrations.push(Migration {
                version,
                name: name.to_owned(),
                sql,
                checksum,
            });
        }
        migrations.sort_by_key(|m| m.version);
        if let Some(w) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrationError::DuplicateVersion(w[0].version));
        }
        Ok(MigrationSet { migrations })
    }

    /// As a set of tenant migrations: version 1 is silo's own placeholder (an older silo's
    /// `0001_silo_meta.sql`, which made a `_silo_meta` table, counts as it), added if the
    /// set lacks it, so an operator's folder need not carry it.
    pub fn for_tenants(mut self) -> Result<Self, MigrationError> {
        let builtin = Self::embedded(&TENANT_DIR)?
            .migrations
            .into_iter()
            .find(|m| m.version == 1)
            .ok_or(MigrationError::Unknown(1))?;
        match self.migrations.iter().position(|m| m.version == 1) {
            Some(i) => {
                let mine = &self.migrations[i];
                if mine.checksum != builtin.checksum && mine.checksum != LEGACY_SILO_META_CHECKSUM {
                    return Err(MigrationError::ReservedVersion(format!(
                        "0001_{}.sql",
                        mine.name
                    )));
                }
                self.migrations[i] = builtin;
            }
            None => self.migrations.insert(0, builtin),
        }
        Ok(self)
    }

    /// Brings a tenant database up to date: moves an older silo's bookkeeping tables into
    /// the header first, checks the migrations it has against `known` (the checksums the
    /// catalog recorded when each was first applied), then applies the rest, each in its
    /// own transaction together with the new version in the header (all of a migration or
    /// none of it).
    pub fn apply_to_tenant(
        &self,
        conn: &mut Connection,
        known: &HashMap<u32, String>,
    ) -> Result<TenantMigrated, MigrationError> {
        let legacy = bookkeeping::take_over_legacy(conn)?;
        let at = bookkeeping::version(conn)?.unwrap_or(0);
        if at > 0 && !self.migrations.iter().any(|m| m.version == at) {
            return Err(MigrationError::Unknown(at));
        }
        for m in self
            .migrations
            .iter()
            .filter(|m| m.version <= at && m.version > 1)
        {
            let recorded = known.get(&m.version).or_else(|| {
                legacy.as_ref().and_then(|l| {
                    l.applied
                        .iter()
                        .find(|(v, _, _)| *v == m.version)
                        .map(|(_, _, c)| c)
                })
            });
            if let Some(recorded) = recorded
                && recorded != &m.checksum
            {
                return Err(MigrationError::Drift {
                    version: m.version,
                    name: m.name.clone(),
                    recorded: recorded.clone(),
                    file: m.checksum.clone(),
                });
            }
        }
        let mut applied = Vec::new();
        for m in self.migrations.iter().filter(|m| m.version > at) {
            m.apply_with(conn, |tx| {
                tx.execute_batch(&bookkeeping::set_version_sql(m.version))
            })?;
            applied.push(m.clone());
        }
        Ok(TenantMigrated {
            version: bookkeeping::version(conn)?.unwrap_or(0),
            applied,
            legacy,
        })
    }

    pub fn latest_version(&self) -> u32 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.iter()
    }

    /// Applies every migration `conn` has not recorded in `table`, each in its own
    /// transaction together with its record (all of a migration or none of it), after
    /// checking that the recorded ones still match their files. Returns the version the
    /// database is at afterwards.
    ///
    /// `table` is a fixed identifier chosen by silo (`_silo_migrations`, `schema_migrations`).
    pub fn apply(&self, conn: &mut Connection, table: &str) -> Result<u32, MigrationError> {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            )"
        ))?;
        let recorded: Vec<(u32, String)> = conn
            .prepare(&format!(
                "SELECT version, checksum FROM {table} ORDER BY version"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (version, checksum) in &recorded {
            let m = self
                .migrations
                .iter()
                .find(|m| m.version == *version)
                .ok_or(MigrationError::Unknown(*version))?;
            if &m.checksum != checksum {
                return Err(MigrationError::Drift {
                    version: m.version,
                    name: m.name.clone(),
                    recorded: checksum.clone(),
                    file: m.checksum.clone(),
                });
            }
        }
        for m in self
            .migrations
            .iter()
            .filter(|m| !recorded.iter().any(|(v, _)| *v == m.version))
        {
            m.apply_with(conn, |tx| {
                tx.execute(
                    &format!("INSERT INTO {table} (version, name, checksum) VALUES (?1, ?2, ?3)"),
                    rusqlite::params![m.version, m.name, m.checksum],
                )
                .map(drop)
            })?;
        }
        Ok(current_version(conn, table)?.unwrap_or(0))
    }
}

/// The checksum of the first `0001_silo_meta.sql`, which made the `_silo_meta` table.
const LEGACY_SILO_META_CHECKSUM: &str =
    "7b61a9d9f24b396e8c1df1cbd86c8d3556d5f0510426c768e77493c0b531ca1b";

/// What [`MigrationSet::apply_to_tenant`] did.
#[derive(Debug)]
pub struct TenantMigrated {
    /// The version the database is at now.
    pub version: u32,
    /// The migrations applied now, in order: the catalog records the first application of
    /// each (with its checksum).
    pub applied: Vec<Migration>,
    /// An older silo's bookkeeping, moved into the header now (its checksums go to the
    /// catalog too).
    pub legacy: Option<bookkeeping::Legacy>,
}

impl TenantMigrated {
    /// `(version, name, checksum)` of every migration the catalog should know of now.
    pub fn to_record(&self) -> Vec<(u32, String, String)> {
        let mut out: Vec<(u32, String, String)> =
            self.legacy.iter().flat_map(|l| l.to_record()).collect();
        out.extend(
            self.applied
                .iter()
                .filter(|m| m.version > 1)
                .map(|m| (m.version, m.name.clone(), m.checksum.clone())),
        );
        out
    }
}

/// The highest migration recorded in `table`, if any.
pub fn current_version(conn: &Connection, table: &str) -> rusqlite::Result<Option<u32>> {
    conn.query_row(&format!("SELECT max(version) FROM {table}"), [], |r| {
        r.get(0)
    })
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(files: &[(&str, &str)]) -> Result<MigrationSet, MigrationError> {
        MigrationSet::from_files(files.iter().map(|(n, s)| (n.to_string(), s.to_string())))
    }

    #[test]
    fn the_shipped_migrations_parse() {
        assert!(
            MigrationSet::embedded(&CATALOG_DIR)
                .unwrap()
                .latest_version()
                >= 1
        );
        assert!(
            MigrationSet::embedded(&TENANT_DIR)
                .unwrap()
                .latest_version()
                >= 1
        );
    }

    #[test]
    fn migrations_apply_in_order_once() {
        let s = set(&[
            ("0002_b.sql", "ALTER TABLE a ADD COLUMN y;"),
            ("0001_a.sql", "CREATE TABLE a(x);"),
        ])
        .unwrap();
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(s.apply(&mut conn, "m").unwrap(), 2);
        assert_eq!(s.apply(&mut conn, "m").unwrap(), 2);
        conn.execute("INSERT INTO a(x, y) VALUES (1, 2)", [])
            .unwrap();
    }

    #[test]
    fn a_failing_migration_leaves_the_database_at_the_previous_version() {
        let s = set(&[
            ("0001_a.sql", "CREATE TABLE a(x);"),
            ("0002_b.sql", "CREATE TABLE b(x); CREATE TABLE a(x);"),
        ])
        .unwrap();
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(matches!(
            s.apply(&mut conn, "m"),
            Err(MigrationError::Failed { version: 2, .. })
        ));
        assert_eq!(current_version(&conn, "m").unwrap(), Some(1));
        // Nothing of the failed migration remains.
        assert!(conn.prepare("SELECT * FROM b").is_err());
    }

    #[test]
    fn an_edited_applied_migration_is_reported_as_drift() {
        let mut conn = Connection::open_in_memory().unwrap();
        set(&[("0001_a.sql", "CREATE TABLE a(x);")])
            .unwrap()
            .apply(&mut conn, "m")
            .unwrap();
        let edited = set(&[("0001_a.sql", "CREATE TABLE a(x, z);")]).unwrap();
        assert!(matches!(
            edited.apply(&mut conn, "m"),
            Err(MigrationError::Drift { version: 1, .. })
        ));
    }

    fn tenant_set(files: &[(&str, &str)]) -> MigrationSet {
        set(files).unwrap().for_tenants().unwrap()
    }

    #[test]
    fn version_1_is_silos_own_in_every_tenant_set() {
        // Added when missing; an older silo's 0001 counts as it; any other 0001 is refused.
        let s = tenant_set(&[("0002_notes.sql", "CREATE TABLE notes(x);")]);
        assert_eq!(s.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
        // The older silo's file, byte for byte.
        let old = "-- silo's own facts about this tenant database (which tenant it belongs to, \u{2026}).\n\
                   -- Tenants can read tables named _silo_*; the sandbox refuses any change to them.\n\
                   CREATE TABLE _silo_meta (\n    key   TEXT PRIMARY KEY NOT NULL,\n    \
                   value TEXT NOT NULL\n) WITHOUT ROWID;\n";
        let legacy = set(&[("0001_silo_meta.sql", old)]).unwrap();
        assert_eq!(legacy.migrations[0].checksum, LEGACY_SILO_META_CHECKSUM);
        let replaced = legacy.for_tenants().unwrap();
        assert!(!replaced.migrations[0].sql.contains("CREATE TABLE"));
        assert!(matches!(
            set(&[("0001_mine.sql", "CREATE TABLE mine(x);")])
                .unwrap()
                .for_tenants(),
            Err(MigrationError::ReservedVersion(_))
        ));
    }

    #[test]
    fn tenant_migrations_record_their_version_in_the_header_only() {
        let s = tenant_set(&[
            ("0002_a.sql", "CREATE TABLE a(x);"),
            ("0003_b.sql", "ALTER TABLE a ADD COLUMN y;"),
        ]);
        let mut conn = Connection::open_in_memory().unwrap();
        let known = HashMap::new();
        let done = s.apply_to_tenant(&mut conn, &known).unwrap();
        assert_eq!(done.version, 3);
        assert_eq!(done.applied.len(), 3);
        // Silo's own version 1 is not recorded in the catalog: only the tenant's.
        assert_eq!(
            done.to_record().iter().map(|r| r.0).collect::<Vec<_>>(),
            [2, 3]
        );
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["a"]);
        // Again: nothing to do.
        assert!(
            s.apply_to_tenant(&mut conn, &known)
                .unwrap()
                .applied
                .is_empty()
        );
        // A file edited after the catalog recorded it is drift.
        let known: HashMap<u32, String> = [(2, "0".repeat(64))].into_iter().collect();
        assert!(matches!(
            s.apply_to_tenant(&mut conn, &known),
            Err(MigrationError::Drift { version: 2, .. })
        ));
    }

    #[test]
    fn a_failing_tenant_migration_leaves_the_header_at_the_previous_version() {
        let s = tenant_set(&[
            ("0002_a.sql", "CREATE TABLE a(x);"),
            ("0003_b.sql", "CREATE TABLE b(x); CREATE TABLE a(x);"),
        ]);
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(matches!(
            s.apply_to_tenant(&mut conn, &HashMap::new()),
            Err(MigrationError::Failed { version: 3, .. })
        ));
        assert_eq!(bookkeeping::version(&conn).unwrap(), Some(2));
        assert!(conn.prepare("SELECT * FROM b").is_err());
    }

    #[test]
    fn bad_names_and_duplicate_versions_are_refused() {
        assert!(matches!(
            set(&[("1_a.sql", "")]),
            Err(MigrationError::BadName(_))
        ));
        assert!(matches!(
            set(&[("0001_.sql", "")]),
            Err(MigrationError::BadName(_))
        ));
        assert!(matches!(
            set(&[("0001_a.sql", ""), ("0001_b.sql", "")]),
            Err(MigrationError::DuplicateVersion(1))
        ));
    }
}
