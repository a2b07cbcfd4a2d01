//! Local placement: one SQLCipher file per tenant under `<data-dir>/tenants/`.
//!
//! A database is built under a temporary name (`.<id>.db.creating`), migrated, closed,
//! fsynced, and only then published by `rename` (and the directory fsynced), so a crash at
//! any point leaves either no file or a complete one, never a half-made database under the
//! real name.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rusqlite::OpenFlags;
use silo_crypto::DbToken;
use silo_tenant_runtime::{TenantId, handle::open_keyed, tenant_db_path};

use crate::migrations::{MigrationSet, TenantMigrated};
use crate::{ProvisionError, Result};

const CREATING_SUFFIX: &str = ".db.creating";
/// SQLite's companion files of a database in WAL (and, transiently, rollback) mode.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

#[derive(Debug, Clone)]
pub struct LocalPlacement {
    tenants_dir: PathBuf,
}

impl LocalPlacement {
    /// Creates `tenants_dir` if needed.
    pub fn new(tenants_dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&tenants_dir).map_err(|e| io("create tenants directory", e))?;
        Ok(LocalPlacement { tenants_dir })
    }

    pub fn tenants_dir(&self) -> &Path {
        &self.tenants_dir
    }

    pub fn path(&self, tenant: TenantId) -> PathBuf {
        tenant_db_path(&self.tenants_dir, tenant)
    }

    fn creating_path(&self, tenant: TenantId) -> PathBuf {
        self.tenants_dir.join(format!(".{tenant}{CREATING_SUFFIX}"))
    }

    /// Creates the tenant's encrypted database keyed with `token`, applies `migrations`
    /// (checked against the checksums the catalog knows, `known`), and publishes it.
    /// Idempotent: if the database was already published (a retry after a crash), it checks
    /// that `token` opens it and brings it up to date. Blocking.
    pub fn create(
        &self,
        tenant: TenantId,
        token: &DbToken,
        migrations: &MigrationSet,
        known: &std::collections::HashMap<u32, String>,
    ) -> Result<TenantMigrated> {
        let final_path = self.path(tenant);
        if final_path.exists() {
            let mut conn = open_keyed(&final_path, token, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            return Ok(migrations.apply_to_tenant(&mut conn, known)?);
        }
        let tmp = self.creating_path(tenant);
        remove_with_companions(&tmp)?;
        let migrated = {
            let mut conn = open_keyed(
                &tmp,
                token,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            let migrated = migrations.apply_to_tenant(&mut conn, known)?;
            // Closing the only connection checkpoints the WAL into the file and removes it.
            conn.close().map_err(|(_, e)| e)?;
            migrated
        };
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("fsync new tenant database", e))?;
        fs::rename(&tmp, &final_path).map_err(|e| io("publish tenant database", e))?;
        self.sync_dir()?;
        Ok(migrated)
    }

    /// Re-keys the tenant's database from `old` to `new` (SQLCipher `PRAGMA rekey`, raw
    /// key, every page rewritten). Idempotent: if `new` already opens the file, there is
    /// nothing to do. Callers must make sure nothing else has the file open, and must have
    /// stored `new` durably (sealed) *before* calling, so a crash half-way leaves a key that
    /// opens the file on record. Blocking.
    pub fn rekey(&self, tenant: TenantId, old: &DbToken, new: &DbToken) -> Result<()> {
        let path = self.path(tenant);
        if open_keyed(&path, new, OpenFlags::SQLITE_OPEN_READ_WRITE).is_ok() {
            return Ok(());
        }
        let conn = open_keyed(&path, old, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // Re-keying rewrites pages in place; do it outside WAL so no frame keeps old-key
        // pages around, then return to WAL.
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")?;
        {
            let pragma = format!("PRAGMA rekey = \"x'{}'\";", hex::encode(new.expose_bytes()));
            conn.execute_batch(&pragma).map_err(|_| {
                ProvisionError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some("re-keying the database failed".to_owned()),
                ))
            })?;
        }
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        conn.close().map_err(|(_, e)| e)?;
        // Prove it: the new key opens, the old one no longer does.
        open_keyed(&path, new, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Ok(())
    }

    /// Removes the tenant's database, its companions and any half-made copy. Idempotent.
    pub fn destroy(&self, tenant: TenantId) -> Result<()> {
        remove_with_companions(&self.path(tenant))?;
        remove_with_companions(&self.creating_path(tenant))?;
        self.sync_dir()
    }

    pub fn exists(&self, tenant: TenantId) -> bool {
        self.path(tenant).exists()
    }

    /// Size of the tenant's database and its WAL, in bytes.
    pub fn size_bytes(&self, tenant: TenantId) -> u64 {
        let path = self.path(tenant);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        [path, wal]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Half-made databases (`.<id>.db.creating`) left by a crash: always safe to delete,
    /// since nothing refers to an unpublished file. Returns how many were removed.
    pub fn sweep_unpublished(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tenants_dir).map_err(|e| io("list tenants directory", e))? {
            let entry = entry.map_err(|e| io("list tenants directory", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(CREATING_SUFFIX) {
                remove_with_companions(&entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.sync_dir()?;
        }
        Ok(removed)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.tenants_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync tenants directory", e))
    }
}

fn remove_with_companions(path: &Path) -> Result<()> {
    let mut paths = vec![path.to_path_buf()];
    paths.extend(
        COMPANIONS
            .iter()
            .map(|c| PathBuf::from(format!("{}{c}", path.display()))),
    );
    for p in paths {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove tenant database file", e)),
        }
    }
    Ok(())
}

fn io(what: &'static str, source: std::io::Error) -> ProvisionError {
    ProvisionError::Io { what, source }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::migrations::TENANT_DIR;

    fn setup() -> (tempfile::TempDir, LocalPlacement, MigrationSet) {
        let dir = tempfile::tempdir().unwrap();
        let placement = LocalPlacement::new(dir.path().join("tenants")).unwrap();
        (
            dir,
            placement,
            MigrationSet::embedded(&TENANT_DIR)
                .unwrap()
                .for_tenants()
                .unwrap(),
        )
    }

    #[test]
    fn create_publishes_an_encrypted_migrated_database_and_is_idempotent() {
        let (_d, p, m) = setup();
        let t = TenantId::generate();
        let token = DbToken::generate();
        let known = Default::default();
        let v = p.create(t, &token, &m, &known).unwrap().version;
        assert_eq!(v, m.latest_version());
        assert_eq!(p.create(t, &token, &m, &known).unwrap().version, v);
        let bytes = fs::read(p.path(t)).unwrap();
        assert!(!bytes.starts_with(b"SQLite format 3"));
        let names: Vec<_> = fs::read_dir(p.tenants_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // The tenant's database holds no object of silo's; its version is in the header.
        let conn = open_keyed(&p.path(t), &token, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(objects, 0);
        assert_eq!(
            silo_tenant_runtime::bookkeeping::version(&conn).unwrap(),
            Some(v)
        );
    }

    #[test]
    fn a_retry_with_another_token_is_refused() {
        let (_d, p, m) = setup();
        let t = TenantId::generate();
        p.create(t, &DbToken::generate(), &m, &Default::default())
            .unwrap();
        assert!(
            p.create(t, &DbToken::generate(), &m, &Default::default())
                .is_err()
        );
    }

    #[test]
    fn rekey_makes_the_old_key_useless_and_keeps_the_data() {
        let (_d, p, m) = setup();
        let t = TenantId::generate();
        let old = DbToken::generate();
        p.create(t, &old, &m, &Default::default()).unwrap();
        {
            let conn = open_keyed(&p.path(t), &old, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);")
                .unwrap();
        }
        let new = DbToken::generate();
        p.rekey(t, &old, &new).unwrap();
        p.rekey(t, &old, &new).unwrap();
        assert!(open_keyed(&p.path(t), &old, OpenFlags::SQLITE_OPEN_READ_ONLY).is_err());
        let conn = open_keyed(&p.path(t), &new, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        let x: i64 = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn destroy_and_sweep_leave_nothing_behind() {
        let (_d, p, m) = setup();
        let t = TenantId::generate();
        p.create(t, &DbToken::generate(), &m, &Default::default())
            .unwrap();
        fs::write(p.creating_path(TenantId::generate()), b"half").unwrap();
        assert_eq!(p.sweep_unpublished().unwrap(), 1);
        p.destroy(t).unwrap();
        p.destroy(t).unwrap();
        assert_eq!(fs::read_dir(p.tenants_dir()).unwrap().count(), 0);
    }
}
