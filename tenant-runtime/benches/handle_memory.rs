//! Memory and descriptors of open tenant handles (issue 19: "an open tenant costs ~210–240
//! KiB of RSS and 2 file descriptors"). Makes TENANTS encrypted tenant databases with one
//! small table, opens a handle on each, runs one read and one write through it (as a
//! tenant's first requests do), keeps every handle open, and reports the growth of the
//! process's resident memory and open descriptors per handle.
//!
//!     cargo bench -p silo-tenant-runtime --bench handle_memory -- [TENANTS]
//!
//! Default: 2,000 tenants. Results go to stdout as Markdown, for docs/benchmarks.md.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::OpenFlags;
use silo_crypto::DbToken;
use silo_tenant_runtime::handle::open_keyed;
use silo_tenant_runtime::{AccessLevel, TenantId};
use silo_tenant_runtime::{ExecLimits, Params, Statement, TenantHandle};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn stmt(sql: &str) -> Statement {
    Statement {
        sql: sql.to_owned(),
        params: Params::None,
    }
}

fn main() {
    let tenants: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().expect("temp dir");
    let made: Vec<_> = (0..tenants)
        .map(|i| {
            let path = dir.path().join(format!("{i}.db"));
            let token = DbToken::generate();
            let conn = open_keyed(
                &path,
                &token,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )
            .expect("create");
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
                 INSERT INTO notes (body) VALUES ('first');",
            )
            .expect("schema");
            drop(conn);
            (path, token)
        })
        .collect();
    let (rss_before, fds_before) = (rss_kib(), open_fds());
    let started = Instant::now();
    let handles: Vec<Arc<TenantHandle>> = made
        .iter()
        .map(|(path, token)| {
            let handle = Arc::new(
                TenantHandle::open_local(TenantId::generate(), path, token, ExecLimits::default())
                    .expect("open"),
            );
            handle
                .execute(
                    &stmt("SELECT body FROM notes WHERE id = 1"),
                    AccessLevel::ReadWrite,
                )
                .expect("read");
            handle
                .execute(
                    &stmt("INSERT INTO notes (body) VALUES ('second')"),
                    AccessLevel::ReadWrite,
                )
                .expect("write");
            handle
        })
        .collect();
    let elapsed = started.elapsed();
    let (rss_after, fds_after) = (rss_kib(), open_fds());
    // What the settings that save memory cost a hot tenant: point reads on one handle.
    let hot = &handles[0];
    let read = stmt("SELECT body FROM notes WHERE id = 1");
    for _ in 0..2_000 {
        hot.execute(&read, AccessLevel::ReadWrite).expect("warm");
    }
    let reads = 50_000;
    let timed = Instant::now();
    for _ in 0..reads {
        hot.execute(&read, AccessLevel::ReadWrite).expect("read");
    }
    let per_read = timed.elapsed().as_secs_f64() * 1e6 / f64::from(reads);
    let n = handles.len() as f64;
    println!(
        "| tenants open | RSS per handle | descriptors per handle | open + read + write, mean | point read on a hot handle |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.1} KiB | {:.2} | {:.2} ms | {:.2} µs |",
        handles.len(),
        rss_after.saturating_sub(rss_before) as f64 / n,
        (fds_after.saturating_sub(fds_before)) as f64 / n,
        elapsed.as_secs_f64() * 1000.0 / n,
        per_read,
    );
    drop(handles);
}
