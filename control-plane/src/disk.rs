//! The data directory's free space. Below a floor (`--min-free-disk-mb`), tenant writes
//! and new tenants pause (507 `storage_full`; reads, sign-ins and the catalog keep working,
//! on the space the floor keeps) and `/readyz` answers 503, until there is room again. A
//! tenant filling the disk thus cannot take the catalog, and every other tenant's sign-in,
//! down with it.

use std::path::{Path, PathBuf};

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Watches one directory's filesystem against a floor.
pub struct DiskWatch {
    pub dir: PathBuf,
    /// 0: never pause.
    pub floor_bytes: u64,
}

impl DiskWatch {
    /// Looks once: pauses tenant writes below the floor, resumes them a tenth above it (so
    /// a disk hovering at the floor does not flap). Blocking (one `statvfs`).
    pub fn check(&self) {
        use silo_tenant_runtime::handle::{pause_writes, writes_paused};
        let free = match free_bytes(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the data directory's free space");
                return;
            }
        };
        metrics::gauge!("silo_disk_free_bytes").set(free as f64);
        if self.floor_bytes == 0 {
            return;
        }
        let paused = writes_paused();
        if free < self.floor_bytes && !paused {
            pause_writes(true);
            tracing::error!(
                free_bytes = free,
                floor_bytes = self.floor_bytes,
                "the data directory's disk is nearly full: tenant writes and signups are paused"
            );
        } else if paused && free >= self.floor_bytes.saturating_add(self.floor_bytes / 10) {
            pause_writes(false);
            tracing::info!(
                free_bytes = free,
                "disk space is back: tenant writes resume"
            );
        }
    }
}

/// Whether tenant writes are paused for lack of disk.
pub fn pressure() -> bool {
    silo_tenant_runtime::handle::writes_paused()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }
}
