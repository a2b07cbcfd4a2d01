//! One tenant's open database: its own connection, keyed with its own DB token, sandboxed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use secrecy::ExposeSecret;
use serde::Serialize;
use silo_crypto::DbToken;

use crate::TenantId;
use crate::error::{Result, RuntimeError};
use crate::sandbox::{self, AccessLevel, SandboxLimits, SandboxState};
use crate::value::{Params, Value};

/// How statements on a handle may run. One value per store, copied into each handle.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    /// Wall-clock budget of one request (a statement, or a whole batch).
    pub time_budget: Duration,
    /// Largest result one request may return, counted as the JSON it becomes (roughly).
    pub max_result_bytes: usize,
    /// How long a request waits for the tenant's writer (or a reader) before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Reader connections a handle may open (lazily) beside its writer; 0 sends reads to
    /// the writer too.
    pub readers: usize,
    pub sandbox: SandboxLimits,
    /// The tenant's storage quota (its plan's): SQLite's `max_page_count`. A write that
    /// would grow the database past it fails with [`RuntimeError::QuotaExceeded`]; reads and
    /// deletes keep working. `None`: no quota.
    pub max_db_bytes: Option<u64>,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            time_budget: Duration::from_secs(5),
            max_result_bytes: 10 * 1024 * 1024,
            busy_timeout: Duration::from_secs(5),
            readers: 2,
            sandbox: SandboxLimits::default(),
            max_db_bytes: None,
        }
    }
}

/// The answer to one statement, in the shape of the API's query result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    /// `null` for statements that cannot write.
    pub last_insert_rowid: Option<i64>,
    /// The statement changed the schema (DDL): the control plane audits these.
    #[serde(skip)]
    pub schema_changed: bool,
    /// Declared type of each column (`None` for expressions), for libSQL clients.
    #[serde(skip)]
    pub decltypes: Vec<Option<String>>,
    /// Rows the statement produced (counted even when they are not returned).
    #[serde(skip)]
    pub rows_read: u64,
}

/// One statement of a request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub sql: String,
    #[serde(default)]
    pub params: Params,
}

/// The SQLite VFS every tenant database is opened with: SQLite's own `unix-excl`. The first
/// connection of this process to a tenant's file takes an exclusive POSIX lock on it for the
/// whole process; the connections of this process then coordinate among themselves in
/// memory (SQLite tracks locks per file inside the process), and the WAL index lives on the
/// heap instead of in a shared `-shm` mapping. What that buys: no `fcntl` system call per
/// transaction (a read took at least two: lock and unlock its read mark in the WAL index),
/// and no other
/// process (a second silo on the same files, a stray `sqlite3` shell) can open a tenant's
/// database while this one has it open. One server per data dir is the rule anyway
/// (`silo.lock`). Everything that opens a tenant file goes through [`open_keyed`], so no
/// connection of this process uses another VFS on the same file.
pub const TENANT_VFS: &str = "unix-excl";

/// Runs `pragma` (a `PRAGMA key = …` statement: secret) on `conn`, for every SQLCipher
/// database of silo (tenants' and the catalog). Its error is replaced, never passed on:
/// some rusqlite errors quote the SQL, and this SQL holds the key.
///
/// Until one keying has succeeded in this process, keyings go one at a time: a CI run saw
/// `PRAGMA key` fail once when several threads keyed their first connections at the same
/// instant (SQLCipher sets up its crypto provider on first use); it could not be
/// reproduced in 140 runs here. After the first, no lock.
pub fn key_connection(conn: &Connection, pragma: &secrecy::SecretString) -> rusqlite::Result<()> {
    static FIRST: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    static KEYED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let _first = (!KEYED.load(std::sync::atomic::Ordering::Acquire)).then(|| FIRST.lock());
    conn.execute_batch(pragma.expose_secret()).map_err(|_| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some("keying the database failed".to_owned()),
        )
    })?;
    KEYED.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Opens an existing local tenant database file with its raw SQLCipher key and checks that
/// the key opens it. Used by the runtime for every handle and by the provisioner to create
/// and migrate new databases (with `OpenFlags::SQLITE_OPEN_CREATE`).
///
/// The key is given as a raw 256-bit key (`x'…'`), so opening costs no PBKDF2 (0.8 ms
/// instead of 153 ms, measured). WAL, `synchronous = FULL`: a committed write survives a
/// crash of the process or the machine.
pub fn open_keyed(path: &Path, token: &DbToken, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        flags | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        TENANT_VFS,
    )?;
    key_connection(&conn, &token.sqlcipher_key_pragma())?;
    // The first read is what fails (SQLITE_NOTADB) when the key is wrong.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// One connection of a tenant's database with its own sandbox state.
struct Conn {
    conn: Connection,
    sandbox: Arc<SandboxState>,
}

/// A tenant's open database: one writer connection plus up to `ExecLimits::readers`
/// lazily opened reader connections, every one of them this tenant's own and keyed with its
/// DB token. Cheap to share (`Arc<TenantHandle>`) between the cache, requests and libSQL
/// streams; the connections close when the last of them drops it.
///
/// A request takes a connection out (a [`Lease`]) and puts it back when done. Callers at
/// [`AccessLevel::ReadOnly`] read from a reader (WAL: a reader sees the last commit and
/// never waits for the writer); everyone else queues for the writer, waiting up to the busy
/// timeout. A libSQL stream in an interactive transaction keeps its lease across requests.
pub struct TenantHandle {
    tenant: TenantId,
    path: PathBuf,
    token: DbToken,
    limits: ExecLimits,
    /// `None` while leased. Only ever waited on from blocking threads. parking_lot rather
    /// than std: its `notify_one` costs no system call when nobody waits, which is every
    /// time a quick query hands its connection back.
    writer: Mutex<Option<Conn>>,
    writer_back: Condvar,
    readers: Mutex<Readers>,
    reader_back: Condvar,
    /// Set when opening moved an older silo's bookkeeping tables (see `bookkeeping`).
    legacy: Option<crate::bookkeeping::Legacy>,
    /// Its place among the handles the store allows alive at once, if the store opened it.
    /// Declared last: given back after the connections above have closed.
    slot: Option<LiveSlot>,
}

#[derive(Default)]
struct Readers {
    idle: Vec<Conn>,
    /// Readers in existence, idle or leased.
    opened: usize,
    /// Their places in the server's reader budget, given back when the handle closes or
    /// its idle readers do.
    slots: Vec<ReaderSlot>,
    /// When a reader was last given back.
    last_back: Option<std::time::Instant>,
}

/// Reader connections open in all handles, and how many may be (the server sets it from
/// the descriptors it has: see [`set_max_readers`]). A handle costs 2 descriptors (its
/// writer's database file and WAL) until it opens readers, 2 more each; sizing the handle
/// cache as if every handle had all its readers left two-thirds of the descriptors unused.
static OPEN_READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MAX_READERS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Sets how many reader connections all handles together may hold open.
pub fn set_max_readers(n: usize) {
    MAX_READERS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Reader connections open now, in all handles.
pub fn open_readers() -> usize {
    OPEN_READERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// One reader's place in the server's budget.
#[derive(Debug)]
struct ReaderSlot;

impl ReaderSlot {
    fn take() -> Option<ReaderSlot> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = MAX_READERS.load(Relaxed);
        OPEN_READERS
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ReaderSlot)
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        OPEN_READERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for TenantHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHandle")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantHandle {
    /// Opens `path` with `token` and installs the sandbox on its writer connection. Blocking:
    /// call from a blocking thread.
    pub fn open_local(
        tenant: TenantId,
        path: &Path,
        token: &DbToken,
        limits: ExecLimits,
    ) -> Result<Self> {
        // An older silo's bookkeeping tables move into the header before the sandbox is on.
        let mut legacy = None;
        let writer = open_conn(
            path,
            token,
            &limits,
            AccessLevel::ReadOnly,
            Some(&mut legacy),
        )?;
        metrics::counter!("silo_tenant_connections_opened_total", "kind" => "writer").increment(1);
        Ok(TenantHandle {
            tenant,
            path: path.to_owned(),
            token: token.clone(),
            limits,
            writer: Mutex::new(Some(writer)),
            writer_back: Condvar::new(),
            readers: Mutex::new(Readers::default()),
            reader_back: Condvar::new(),
            slot: None,
            legacy,
        })
    }

    /// What an older silo's bookkeeping tables said, if opening this handle moved them into
    /// the header (once per database): the caller records it where it keeps migrations.
    pub fn take_legacy_bookkeeping(&mut self) -> Option<crate::bookkeeping::Legacy> {
        self.legacy.take()
    }

    /// Counts this handle against the store's limit until it closes.
    pub(crate) fn hold_slot(&mut self, slot: LiveSlot) {
        self.slot = Some(slot);
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub(crate) fn limits(&self) -> &ExecLimits {
        &self.limits
    }

    /// Connections open now (writer and readers, leased or idle): for the file descriptor
    /// arithmetic and the tests of it.
    pub fn open_connections(&self) -> usize {
        1 + self.readers.lock().opened
    }

    /// Runs one statement at `level`. Blocking.
    ///
    /// A plain `SELECT` of a caller who may write does not queue behind the tenant's writer
    /// when it is busy: it reads from a reader (the same last commit the writer would see).
    pub fn execute(self: &Arc<Self>, stmt: &Statement, level: AccessLevel) -> Result<QueryResult> {
        self.run_one(level, &stmt.sql, |conn, sandbox, limits| {
            let mut budget = ResultBudget::new(limits.max_result_bytes);
            run(conn, sandbox, stmt, &mut budget)
        })
    }

    /// Runs `query` (one statement, `sql`, in autocommit) on the connection `level` calls
    /// for, waiting for it up to the busy timeout; a plain SELECT of a writer reads from a
    /// reader when the writer is busy. Blocking.
    pub(crate) fn run_one<T>(
        self: &Arc<Self>,
        level: AccessLevel,
        sql: &str,
        query: impl Fn(&Connection, &SandboxState, &ExecLimits) -> Result<T>,
    ) -> Result<T> {
        if level != AccessLevel::ReadOnly && self.limits.readers > 0 && plain_select(sql) {
            if let Some(mut lease) = self.try_lease(level) {
                return lease.run(level, false, query);
            }
            let deadline = std::time::Instant::now() + self.limits.busy_timeout;
            // No reader to be had (the server's budget is spent): the writer's turn.
            if let Some((conn, _)) = self.take_reader(deadline)? {
                let mut reader = Lease {
                    handle: self.clone(),
                    conn: Some(conn),
                    writer: false,
                };
                match reader.run(AccessLevel::ReadOnly, false, &query) {
                    // It writes after all (a function with side effects is refused on
                    // readers): the writer's turn.
                    Err(RuntimeError::Forbidden(_)) => {}
                    other => return other,
                }
            }
        }
        let mut lease = self.lease(level)?;
        lease.run(level, false, query)
    }

    /// Runs statements in order. With `transaction`, all of them or none: the first failure
    /// rolls everything back. Without, each commits on its own and the first failure stops
    /// the batch (earlier statements stay committed). Blocking.
    pub fn batch(
        self: &Arc<Self>,
        statements: &[Statement],
        transaction: bool,
        level: AccessLevel,
    ) -> Result<Vec<QueryResult>> {
        let mut lease = self.lease(level)?;
        lease.run(level, false, |conn, sandbox, limits| {
            let mut budget = ResultBudget::new(limits.max_result_bytes);
            if !transaction {
                return statements
                    .iter()
                    .enumerate()
                    .map(|(i, s)| run(conn, sandbox, s, &mut budget).map_err(|e| e.in_statement(i)))
                    .collect();
            }
            // IMMEDIATE: take the write lock up front, so a batch that reads then writes waits
            // on the busy timeout instead of failing half-way with SQLITE_BUSY. A read-only
            // caller cannot take the write lock (query_only), and needs only a snapshot.
            let begin = if level == AccessLevel::ReadOnly {
                "BEGIN DEFERRED"
            } else {
                "BEGIN IMMEDIATE"
            };
            server_sql(conn, sandbox, begin)?;
            let mut results = Vec::with_capacity(statements.len());
            for (i, s) in statements.iter().enumerate() {
                match run(conn, sandbox, s, &mut budget) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        rollback(conn, sandbox);
                        return Err(e.in_statement(i));
                    }
                }
            }
            if let Err(e) = server_sql(conn, sandbox, "COMMIT") {
                rollback(conn, sandbox);
                return Err(e);
            }
            Ok(results)
        })
    }

    /// Runs one statement now, on the caller's thread, if that is sure to be quick: only a
    /// statement that cannot write, only when a connection is free this instant (an idle
    /// reader, or the writer), and within `budget` (a millisecond or so). `None` when it did
    /// not run, or ran past `budget` and was stopped: then run it again with
    /// [`TenantHandle::execute`] on a blocking thread, with the full time budget. This spares
    /// a quick query the hand-off to the blocking pool, which costs more than the query
    /// itself.
    pub fn execute_now(
        self: &Arc<Self>,
        stmt: &Statement,
        level: AccessLevel,
        budget: Duration,
    ) -> Option<Result<QueryResult>> {
        self.run_now(level, &stmt.sql, budget, |conn, sandbox, limits| {
            let mut results = ResultBudget::new(limits.max_result_bytes);
            run(conn, sandbox, stmt, &mut results)
        })
    }

    /// The core of [`TenantHandle::execute_now`]: runs `query` (one statement, `sql`) on a
    /// connection free this instant, within `budget`, or answers `None`.
    pub(crate) fn run_now<T>(
        self: &Arc<Self>,
        level: AccessLevel,
        sql: &str,
        budget: Duration,
        query: impl FnOnce(&Connection, &SandboxState, &ExecLimits) -> Result<T>,
    ) -> Option<Result<T>> {
        let deadline = std::time::Instant::now() + budget;
        // Reads only, because only a read is safe to run again. SQLite consults the progress
        // handler, which enforces the budget, once more after a statement has finished, so a
        // write whose commit (an fsync) outlasts the budget is committed and still reported
        // as interrupted: run again, it would be applied twice (seen: a `CREATE TABLE` that
        // answered "already exists"). A write also waits on the disk, which an async thread
        // must not.
        let inline = move |mut lease: Lease, level| {
            lease.run_until(deadline, level, false, |conn, sandbox, limits| {
                sandbox.set_reads_only(true);
                let out = query(conn, sandbox, limits);
                sandbox.set_reads_only(false);
                out
            })
        };
        let out = match self.try_lease(level) {
            Some(lease) => inline(lease, level),
            // The writer is busy: a plain SELECT reads from an idle reader instead.
            None if level != AccessLevel::ReadOnly && plain_select(sql) => {
                let reader = self.try_lease(AccessLevel::ReadOnly)?;
                match inline(reader, AccessLevel::ReadOnly) {
                    Err(RuntimeError::Forbidden(_)) => return None,
                    other => other,
                }
            }
            None => return None,
        };
        match out {
            Err(RuntimeError::Timeout | RuntimeError::WritesNotInline) => None,
            other => Some(other),
        }
    }

    /// A connection for `level` if one is free this instant; never waits, never opens one.
    pub(crate) fn try_lease(self: &Arc<Self>, level: AccessLevel) -> Option<Lease> {
        let (conn, writer) = if level == AccessLevel::ReadOnly && self.limits.readers > 0 {
            (self.readers.lock().idle.pop()?, false)
        } else {
            (self.writer.try_lock()?.take()?, true)
        };
        Some(Lease {
            handle: self.clone(),
            conn: Some(conn),
            writer,
        })
    }

    /// Rebuilds the database file without its free pages (`VACUUM`), giving deleted data's
    /// space back to the disk, within `budget`. Returns the file size before and after.
    /// Needs memory about the database's size (temporary storage is in memory). Blocking.
    pub fn vacuum(self: &Arc<Self>, budget: Duration) -> Result<(u64, u64)> {
        let file_size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let size = || file_size(&self.path) + file_size(Path::new(&wal));
        let before = size();
        let mut lease = self.lease(AccessLevel::Schema)?;
        let deadline = std::time::Instant::now() + budget;
        // The rebuilt pages go through the WAL: checkpoint it back into the (now smaller)
        // file, and truncate it.
        lease.run_until(deadline, AccessLevel::Schema, false, |conn, sandbox, _| {
            // VACUUM builds the copy in an attached temporary database: one attachment, for
            // this statement of silo's own only (tenant SQL is refused ATTACH by the
            // authorizer either way).
            let attach = |n| {
                conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, n)
                    .map_err(|e| RuntimeError::Internal(format!("attach limit: {e}")))
            };
            attach(1)?;
            let out = server_sql(conn, sandbox, "VACUUM; PRAGMA wal_checkpoint(TRUNCATE);");
            attach(0)?;
            out
        })?;
        drop(lease);
        Ok((before, size()))
    }

    /// Takes a connection for a request at `level`: a reader for read-only callers (the
    /// writer, at their level, when the handle has no reader and the server's reader budget
    /// is spent), the writer for everyone else. Waits up to the busy timeout for one to come
    /// back, then answers [`RuntimeError::Busy`] (the writer) or
    /// [`RuntimeError::ReadersBusy`] (every reader). Blocking.
    pub fn lease(self: &Arc<Self>, level: AccessLevel) -> Result<Lease> {
        let deadline = std::time::Instant::now() + self.limits.busy_timeout;
        let reader = if level == AccessLevel::ReadOnly && self.limits.readers > 0 {
            self.take_reader(deadline)?
        } else {
            None
        };
        let conn = match reader {
            Some(conn) => conn,
            None => self.take_writer(deadline)?,
        };
        Ok(Lease {
            handle: self.clone(),
            conn: Some(conn.0),
            writer: conn.1,
        })
    }

    fn take_writer(&self, deadline: std::time::Instant) -> Result<(Conn, bool)> {
        let mut slot = self.writer.lock();
        loop {
            if let Some(conn) = slot.take() {
                return Ok((conn, true));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(RuntimeError::Busy);
            }
            self.writer_back.wait_for(&mut slot, left);
        }
    }

    /// A reader of this handle: an idle one, a new one if the handle and the server's
    /// reader budget allow, else the next one given back. `None`: the handle has no reader
    /// and the server's budget is spent; use the writer.
    fn take_reader(&self, deadline: std::time::Instant) -> Result<Option<(Conn, bool)>> {
        let mut readers = self.readers.lock();
        loop {
            if let Some(conn) = readers.idle.pop() {
                return Ok(Some((conn, false)));
            }
            if readers.opened < self.limits.readers {
                match ReaderSlot::take() {
                    Some(slot) => {
                        // Opened outside the lock: other readers come and go meanwhile.
                        readers.opened += 1;
                        readers.slots.push(slot);
                        drop(readers);
                        return match open_conn(
                            &self.path,
                            &self.token,
                            &self.limits,
                            AccessLevel::ReadOnly,
                            None,
                        ) {
                            Ok(conn) => {
                                metrics::counter!("silo_tenant_connections_opened_total", "kind" => "reader")
                                    .increment(1);
                                Ok(Some((conn, false)))
                            }
                            Err(e) => {
                                let mut readers = self.readers.lock();
                                readers.opened -= 1;
                                readers.slots.pop();
                                drop(readers);
                                self.reader_back.notify_one();
                                Err(e)
                            }
                        };
                    }
                    None if readers.opened == 0 => {
                        metrics::counter!("silo_tenant_reader_budget_spent_total").increment(1);
                        return Ok(None);
                    }
                    // Wait for one of its own.
                    None => {}
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                // Every reader is held by this tenant's own requests: its own load.
                return Err(RuntimeError::ReadersBusy);
            }
            self.reader_back.wait_for(&mut readers, left);
        }
    }

    /// Closes this handle's idle readers if none was used for `idle_for`, giving their
    /// places in the server's reader budget back: a cached handle of a quiet tenant must not
    /// keep readers a busy tenant could use. Answers how many were closed. Blocking.
    pub fn close_idle_readers(&self, idle_for: std::time::Duration) -> usize {
        let (closing, slots) = {
            let mut readers = self.readers.lock();
            let quiet = readers.last_back.is_none_or(|t| t.elapsed() >= idle_for);
            if !quiet || readers.idle.is_empty() {
                return 0;
            }
            let idle = std::mem::take(&mut readers.idle);
            readers.opened -= idle.len();
            let keep = readers.slots.len().saturating_sub(idle.len());
            let slots = readers.slots.split_off(keep);
            (idle, slots)
        };
        let n = closing.len();
        // The connections close first, outside the lock; then their places go back.
        drop(closing);
        drop(slots);
        n
    }

    fn give_back(&self, conn: Conn, writer: bool) {
        if writer {
            *self.writer.lock() = Some(conn);
            self.writer_back.notify_one();
        } else {
            let mut readers = self.readers.lock();
            readers.idle.push(conn);
            readers.last_back = Some(std::time::Instant::now());
            drop(readers);
            self.reader_back.notify_one();
        }
    }
}

/// The statement starts with SELECT or VALUES, so it almost surely only reads: worth
/// trying on a reader when the writer is busy (if it writes after all, the reader refuses
/// it and it waits for the writer).
fn plain_select(sql: &str) -> bool {
    let head = sql.trim_start().get(..6).unwrap_or("");
    head.eq_ignore_ascii_case("select") || head.eq_ignore_ascii_case("values")
}

/// Opens one sandboxed connection of a tenant database, starting at `level`.
/// Opens one connection of a tenant with its settings and sandbox. `legacy`: for the
/// writer, where to put what [`crate::bookkeeping::take_over_legacy`] moved, if anything.
fn open_conn(
    path: &Path,
    token: &DbToken,
    limits: &ExecLimits,
    level: AccessLevel,
    legacy: Option<&mut Option<crate::bookkeeping::Legacy>>,
) -> Result<Conn> {
    let mut conn = open_keyed(path, token, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| {
        match sandbox::error_code(&e) {
            Some(ErrorCode::NotADatabase) => RuntimeError::WrongKey,
            Some(ErrorCode::CannotOpen) => RuntimeError::Missing,
            _ => RuntimeError::Internal(format!("open tenant database: {e}")),
        }
    })?;
    conn.busy_timeout(limits.busy_timeout)
        .map_err(|e| RuntimeError::Internal(e.to_string()))?;
    conn.set_prepared_statement_cache_capacity(64);
    if let Some(legacy) = legacy {
        *legacy = crate::bookkeeping::take_over_legacy(&conn)
            .map_err(|e| RuntimeError::Internal(format!("move legacy bookkeeping: {e}")))?;
    }
    // The sandbox starts at the lowest access level; so does the run-time guard.
    // Sorts, DISTINCT and index builds that spill do so in memory: a temporary file would
    // hold the tenant's rows in plaintext (SQLCipher does not encrypt temporary files).
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA temp_store = MEMORY;")
        .map_err(|e| RuntimeError::Internal(format!("connection settings: {e}")))?;
    if let Some(bytes) = limits.max_db_bytes {
        // Per connection, not stored in the file. Never below the current size (SQLite
        // keeps that): an over-quota database can still be read and shrunk.
        // SQLCipher answers `page_size` as text (its `cipher_page_size`).
        let page_size: rusqlite::types::Value = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| RuntimeError::Internal(format!("page size: {e}")))?;
        let page_size = match page_size {
            rusqlite::types::Value::Integer(n) => u64::try_from(n).ok(),
            rusqlite::types::Value::Text(t) => t.trim().parse().ok(),
            _ => None,
        }
        .unwrap_or(4096)
        .max(512);
        let pages = bytes.div_ceil(page_size).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| RuntimeError::Internal(format!("storage quota: {e}")))?;
    }
    let sandbox = sandbox::install(&mut conn, &limits.sandbox)
        .map_err(|e| RuntimeError::Internal(format!("install sandbox: {e}")))?;
    debug_assert_eq!(sandbox.level(), level);
    Ok(Conn { conn, sandbox })
}

/// One connection of a tenant, taken out of its handle; it goes back when the lease drops,
/// with any transaction still open rolled back first. Holds the handle alive meanwhile, so a
/// leased handle is never closed under its user.
pub struct Lease {
    handle: Arc<TenantHandle>,
    conn: Option<Conn>,
    writer: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("tenant", &self.handle.tenant)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub fn tenant(&self) -> TenantId {
        self.handle.tenant
    }

    /// Runs `f` on the connection at `level`, within the time budget. `transactions`:
    /// whether the tenant's own transaction statements may compile (libSQL streams).
    /// Blocking.
    pub(crate) fn run<T>(
        &mut self,
        level: AccessLevel,
        transactions: bool,
        f: impl FnOnce(&Connection, &SandboxState, &ExecLimits) -> Result<T>,
    ) -> Result<T> {
        let deadline = std::time::Instant::now() + self.handle.limits.time_budget;
        self.run_until(deadline, level, transactions, f)
    }

    /// [`Lease::run`] within a deadline shared by several calls (one libSQL pipeline).
    pub(crate) fn run_until<T>(
        &mut self,
        deadline: std::time::Instant,
        level: AccessLevel,
        transactions: bool,
        f: impl FnOnce(&Connection, &SandboxState, &ExecLimits) -> Result<T>,
    ) -> Result<T> {
        let limits = &self.handle.limits;
        let Some(Conn { conn, sandbox }) = self.conn.as_ref() else {
            return Err(RuntimeError::Internal("lease already returned".to_owned()));
        };
        if !self.writer && level != AccessLevel::ReadOnly {
            // A stream leased a reader while its caller could only read; it may not write on
            // it now (writes go through the tenant's one writer).
            return Err(RuntimeError::InvalidInput(
                "this stream was opened read-only and the credential's access has changed; \
                 open a new stream"
                    .to_owned(),
            ));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(RuntimeError::Timeout);
        }
        // Paused writes: run as a reader, so the authorizer and `query_only` refuse any
        // write; the refusal is told as a full disk below.
        let paused = level != AccessLevel::ReadOnly && writes_paused();
        let level = if paused { AccessLevel::ReadOnly } else { level };
        if sandbox.level() != level || sandbox.transactions_allowed() != transactions {
            // The authorizer runs when a statement is compiled, not when a cached one is
            // reused: statements compiled under other rules must not be reused under these,
            // unless these would have allowed every one of them too.
            if !sandbox.compiled_fit(level, transactions) {
                conn.flush_prepared_statement_cache();
                sandbox.forget_compiled();
            }
            // A second, run-time guard for read-only callers, independent of the authorizer.
            // Set first: the level changes only once its guard is in place.
            sandbox
                .as_server(|| {
                    conn.pragma_update(None, "query_only", level == AccessLevel::ReadOnly)
                })
                .map_err(|e| RuntimeError::Internal(format!("set query_only: {e}")))?;
            sandbox.set_level(level);
            sandbox.set_transactions_allowed(transactions);
        }
        sandbox.start_budget(left);
        let watched = crate::watchdog::watch(sandbox, deadline);
        let out = f(conn, sandbox, limits);
        drop(watched);
        sandbox.end_budget();
        match out {
            Err(e) if paused && matches!(e.root(), RuntimeError::Forbidden(_)) => {
                Err(RuntimeError::WritesPaused)
            }
            Err(RuntimeError::Full) if limits.max_db_bytes.is_some() => {
                Err(classify_full(conn, sandbox))
            }
            Err(RuntimeError::InStatement { index, source })
                if matches!(*source, RuntimeError::Full) && limits.max_db_bytes.is_some() =>
            {
                Err(classify_full(conn, sandbox).in_statement(index))
            }
            other => other,
        }
    }

    /// No transaction is open on the connection.
    pub fn is_autocommit(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.conn.is_autocommit())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            // Nothing may leave a transaction open on a connection that goes back.
            if !c.conn.is_autocommit() {
                rollback(&c.conn, &c.sandbox);
            }
            // Nor a session PRAGMA: the next request may be another principal's. Only the
            // ones that differ are set (setting one expires the connection's statements).
            if c.sandbox.take_session_pragmas() {
                let reset: String = session_differences(&c.conn, &c.sandbox)
                    .into_iter()
                    .map(|(name, _, default)| format!("PRAGMA {name} = {default};"))
                    .collect();
                if !reset.is_empty()
                    && let Err(e) = server_sql(&c.conn, &c.sandbox, &reset)
                {
                    // Setting a flag PRAGMA on an idle connection does not fail short of a
                    // broken connection; should it, the next lease's end tries again.
                    tracing::error!(error = %e, "resetting session PRAGMAs failed");
                    c.sandbox.mark_session_pragmas();
                }
            }
            self.handle.give_back(c, self.writer);
        }
    }
}

/// Tenant writes are paused (the disk is nearly full): every request runs as a reader, and
/// a write is answered [`RuntimeError::Full`].
static WRITES_PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Pauses or resumes every tenant write on the server (the control plane's disk watch).
pub fn pause_writes(paused: bool) {
    WRITES_PAUSED.store(paused, Ordering::Relaxed);
}

pub fn writes_paused() -> bool {
    WRITES_PAUSED.load(Ordering::Relaxed)
}

/// "Database or disk is full": the tenant's quota when the database has reached its
/// `max_page_count`, else the disk.
fn classify_full(conn: &Connection, sandbox: &SandboxState) -> RuntimeError {
    let pages = |pragma: &str| -> Option<i64> {
        sandbox
            .as_server(|| conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0)))
            .ok()
    };
    match (pages("page_count"), pages("max_page_count")) {
        // A write needs a few pages at once: near the limit counts as at it.
        (Some(count), Some(max)) if count + 16 >= max => RuntimeError::QuotaExceeded,
        _ => RuntimeError::Full,
    }
}

/// The session PRAGMAs whose value on `conn` is not their default: (name, value, default).
/// One that cannot be read counts as changed.
fn session_differences(conn: &Connection, sandbox: &SandboxState) -> Vec<(&'static str, i64, i64)> {
    sandbox::SESSION_PRAGMAS
        .iter()
        .filter_map(|&(name, default)| {
            let value: i64 = sandbox
                .as_server(|| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0)))
                .unwrap_or(-1);
            (value != default).then_some((name, value, default))
        })
        .collect()
}

/// The session PRAGMAs set on `conn`, as the statements that set them again.
pub(crate) fn session_pragmas(conn: &Connection, sandbox: &SandboxState) -> String {
    session_differences(conn, sandbox)
        .into_iter()
        .filter(|(_, value, _)| *value >= 0)
        .map(|(name, value, _)| format!("PRAGMA {name} = {value};"))
        .collect()
}

pub(crate) fn server_sql(conn: &Connection, sandbox: &SandboxState, sql: &str) -> Result<()> {
    sandbox
        .as_server(|| conn.execute_batch(sql))
        .map_err(|e| map_error(e, sandbox))
}

fn rollback(conn: &Connection, sandbox: &SandboxState) {
    if let Err(e) = sandbox.as_server(|| conn.execute_batch("ROLLBACK")) {
        tracing::warn!(error = %e, "rollback failed");
    }
}

/// Tracks the size of a request's result against the cap.
pub(crate) struct ResultBudget {
    left: usize,
}

impl ResultBudget {
    pub(crate) fn new(max: usize) -> Self {
        ResultBudget { left: max }
    }

    pub(crate) fn take(&mut self, bytes: usize) -> Result<()> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(RuntimeError::ResultTooLarge)?;
        Ok(())
    }
}

fn run(
    conn: &Connection,
    sandbox: &SandboxState,
    stmt: &Statement,
    budget: &mut ResultBudget,
) -> Result<QueryResult> {
    run_with(
        conn,
        sandbox,
        &stmt.sql,
        |prepared| bind(prepared, &stmt.params),
        true,
        budget,
        Value::weight,
    )
}

/// Prepares `sql` (cached), binds it with `bind`, runs it to the end and collects its rows
/// (or only counts them, without `want_rows`). The core of every statement a tenant runs.
pub(crate) fn run_with(
    conn: &Connection,
    sandbox: &SandboxState,
    sql: &str,
    bind: impl FnOnce(&mut rusqlite::Statement<'_>) -> Result<()>,
    want_rows: bool,
    budget: &mut ResultBudget,
    weigh: fn(&Value) -> usize,
) -> Result<QueryResult> {
    if sql.trim().is_empty() {
        return Err(RuntimeError::InvalidInput("sql is empty".to_owned()));
    }
    // A refusal is recognised by the reason the authorizer records (SQLite reports some
    // refusals as SQLITE_AUTH and others as a plain SQLITE_ERROR), so start clean.
    sandbox.take_denial();
    // PRAGMAs are never kept in the statement cache: the authorizer then sees every one
    // that runs, and a session PRAGMA marks the connection for its reset each time.
    let (mut cached, mut plain);
    let prepared: &mut rusqlite::Statement<'_> = if is_pragma(sql) {
        plain = conn.prepare(sql).map_err(|e| map_error(e, sandbox))?;
        &mut plain
    } else {
        cached = conn
            .prepare_cached(sql)
            .map_err(|e| map_error(e, sandbox))?;
        &mut cached
    };
    bind(prepared)?;
    let readonly = prepared.readonly();
    if !readonly && sandbox.reads_only() {
        return Err(RuntimeError::WritesNotInline);
    }
    // The schema cookie changes exactly when the schema does; read only around statements
    // that can write at all.
    let schema_version = |conn: &Connection| -> Result<i64> {
        conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|e| map_error(e, sandbox))
    };
    let version_before = if readonly { 0 } else { schema_version(conn)? };
    // What this statement changed, not what the connection's previous one did: DDL, for
    // one, leaves sqlite3_changes() as the last INSERT/UPDATE/DELETE set it.
    let changes_before = conn.total_changes();
    let rowid_before = conn.last_insert_rowid();
    let columns: Vec<String> = prepared.column_names().map(str::to_owned).collect();
    let decltypes: Vec<Option<String>> = prepared
        .columns()
        .map(|c| c.decl_type().map(str::to_owned))
        .collect();
    let width = columns.len();
    let mut rows = Vec::new();
    let mut rows_read = 0u64;
    {
        let mut cursor = prepared.raw_query();
        while let Some(row) = cursor.next().map_err(|e| map_error(e, sandbox))? {
            rows_read += 1;
            if !want_rows {
                continue;
            }
            let mut out = Vec::with_capacity(width);
            for i in 0..width {
                let v = Value::from_ref(
                    row.get_ref(i)
                        .map_err(|e| RuntimeError::Internal(e.to_string()))?,
                );
                budget.take(weigh(&v))?;
                out.push(v);
            }
            rows.push(out);
        }
    }
    // SQLite reports rowid 0 when nothing was ever inserted on this connection: that is
    // "none", not a row.
    let (rows_affected, last_insert_rowid) = if readonly {
        (0, None)
    } else {
        let changed = conn.total_changes() != changes_before;
        let rowid = conn.last_insert_rowid();
        (
            if changed { conn.changes() } else { 0 },
            Some(rowid).filter(|&id| id != 0 && (changed || id != rowid_before)),
        )
    };
    let schema_changed = !readonly && schema_version(conn)? != version_before;
    Ok(QueryResult {
        columns,
        rows,
        rows_affected,
        last_insert_rowid,
        schema_changed,
        decltypes,
        rows_read,
    })
}

/// The statement is a PRAGMA (after leading blanks and comments).
pub(crate) fn is_pragma(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("pragma"))
}

fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> Result<()> {
    let expected = stmt.parameter_count();
    let bind_err =
        |e: rusqlite::Error| RuntimeError::InvalidInput(format!("cannot bind parameter: {e}"));
    match params {
        Params::None if expected == 0 => Ok(()),
        Params::None => Err(RuntimeError::InvalidInput(format!(
            "the statement has {expected} parameter(s) but no params were given"
        ))),
        Params::Positional(values) => {
            if values.len() != expected {
                return Err(RuntimeError::InvalidInput(format!(
                    "the statement has {expected} parameter(s) but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v).map_err(bind_err)?;
            }
            Ok(())
        }
        Params::Named(map) => {
            let mut used = 0;
            for i in 1..=expected {
                let Some(name) = stmt.parameter_name(i).map(str::to_owned) else {
                    return Err(RuntimeError::InvalidInput(format!(
                        "parameter {i} is positional (?); give params as an array"
                    )));
                };
                let bare = name.trim_start_matches([':', '@', '$']);
                let value = map
                    .get(name.as_str())
                    .or_else(|| map.get(bare))
                    .ok_or_else(|| {
                        RuntimeError::InvalidInput(format!("no value given for parameter {name}"))
                    })?;
                stmt.raw_bind_parameter(i, value).map_err(bind_err)?;
                used += 1;
            }
            if map.len() > used {
                return Err(RuntimeError::InvalidInput(format!(
                    "{} named value(s) match no parameter of the statement",
                    map.len() - used
                )));
            }
            Ok(())
        }
    }
}

/// SQLite's name for the classes of error that are the tenant's statement's fault.
fn sql_error_name(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::Unknown => "SQLITE_ERROR",
        ErrorCode::ConstraintViolation => "SQLITE_CONSTRAINT",
        ErrorCode::TypeMismatch => "SQLITE_MISMATCH",
        ErrorCode::TooBig => "SQLITE_TOOBIG",
        ErrorCode::ParameterOutOfRange => "SQLITE_RANGE",
        ErrorCode::ReadOnly => "SQLITE_READONLY",
        ErrorCode::SchemaChanged => "SQLITE_SCHEMA",
        ErrorCode::ApiMisuse => "SQLITE_MISUSE",
        _ => return None,
    })
}

/// Sorts a SQLite error into the tenant's fault (4xx) or ours (5xx).
pub(crate) fn map_error(e: rusqlite::Error, sandbox: &SandboxState) -> RuntimeError {
    use rusqlite::Error as E;
    match &e {
        E::MultipleStatement => {
            return RuntimeError::InvalidInput(
                "one statement per query: send several as a batch (/v1/db/batch, or a libSQL batch)".to_owned(),
            );
        }
        E::InvalidParameterCount(..) | E::InvalidParameterName(_) => {
            return RuntimeError::InvalidInput(e.to_string());
        }
        _ => {}
    }
    // Refusals are counted where they are answered (`silo_sandbox_refusals_total`), not
    // here: silo retries some statements elsewhere (a reader that may not write, the libSQL
    // fast path that may not open a transaction), and those refusals reach nobody.
    if let Some(reason) = sandbox.take_denial() {
        return RuntimeError::Forbidden(reason);
    }
    match sandbox::error_code(&e) {
        Some(ErrorCode::AuthorizationForStatementDenied) => {
            RuntimeError::Forbidden("statement not allowed".to_owned())
        }
        Some(ErrorCode::OperationInterrupted) if sandbox.timed_out() => RuntimeError::Timeout,
        Some(code) if sql_error_name(code).is_some() => RuntimeError::Sql {
            message: e.to_string(),
            code: sql_error_name(code).unwrap_or("SQLITE_ERROR"),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => RuntimeError::Busy,
        Some(ErrorCode::DiskFull) => RuntimeError::Full,
        Some(ErrorCode::OutOfMemory) => RuntimeError::Exhausted,
        _ => RuntimeError::Internal(e.to_string()),
    }
}

/// One handle's place in the store's budget of databases alive at once
/// ([`crate::StoreConfig::max_live`]), given back when the handle closes.
#[derive(Debug)]
pub(crate) struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    pub(crate) fn take(count: &Arc<AtomicUsize>, max: u64) -> Option<LiveSlot> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| LiveSlot(count.clone()))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tenant_whose_readers_are_all_held_gets_readers_busy() {
        let (_dir, h, _token) = fresh();
        let held: Vec<Lease> = (0..h.limits().readers)
            .map(|_| h.lease(AccessLevel::ReadOnly).unwrap())
            .collect();
        let started = std::time::Instant::now();
        let Err(err) = h.lease(AccessLevel::ReadOnly) else {
            panic!("a reader was left");
        };
        assert!(matches!(err, RuntimeError::ReadersBusy), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        drop(held);
        assert!(h.lease(AccessLevel::ReadOnly).is_ok());
    }

    fn fresh() -> (tempfile::TempDir, Arc<TenantHandle>, DbToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let token = DbToken::generate();
        drop(
            open_keyed(
                &path,
                &token,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap(),
        );
        let limits = ExecLimits {
            time_budget: Duration::from_millis(200),
            max_result_bytes: 10_000,
            busy_timeout: Duration::from_millis(200),
            ..ExecLimits::default()
        };
        let h = TenantHandle::open_local(TenantId::generate(), &path, &token, limits).unwrap();
        (dir, Arc::new(h), token)
    }

    const ALL: AccessLevel = AccessLevel::Schema;

    fn s(sql: &str) -> Statement {
        Statement {
            sql: sql.to_owned(),
            params: Params::None,
        }
    }

    #[test]
    fn idle_readers_close_and_give_their_places_back() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(x)"), ALL).unwrap();
        // A read-only caller opens a reader.
        h.execute(&s("SELECT count(*) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(h.open_connections(), 2);
        // Used just now: kept for a while.
        assert_eq!(h.close_idle_readers(Duration::from_secs(60)), 0);
        assert_eq!(h.close_idle_readers(Duration::ZERO), 1);
        assert_eq!(h.open_connections(), 1);
        assert!(h.readers.lock().slots.is_empty());
        // The next read opens one again.
        h.execute(&s("SELECT count(*) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(h.open_connections(), 2);
    }

    #[test]
    fn statements_bind_positional_and_named_params() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a INTEGER, b TEXT, c BLOB)"), ALL)
            .unwrap();
        let ins = h
            .execute(
                &Statement {
                    sql: "INSERT INTO t VALUES (?, ?, ?)".into(),
                    params: Params::Positional(vec![
                        Value::Integer(1),
                        Value::Text("x".into()),
                        Value::Blob(vec![1, 2]),
                    ]),
                },
                ALL,
            )
            .unwrap();
        assert_eq!((ins.rows_affected, ins.last_insert_rowid), (1, Some(1)));
        let named = h
            .execute(
                &Statement {
                    sql: "SELECT b, c FROM t WHERE a = :a".into(),
                    params: Params::Named([("a".to_owned(), Value::Integer(1))].into()),
                },
                ALL,
            )
            .unwrap();
        assert_eq!(named.columns, ["b", "c"]);
        assert_eq!(
            named.rows,
            vec![vec![Value::Text("x".into()), Value::Blob(vec![1, 2])]]
        );
        assert_eq!(named.last_insert_rowid, None);
        assert!(matches!(
            h.execute(&s("SELECT ?"), ALL),
            Err(RuntimeError::InvalidInput(_))
        ));
    }

    #[test]
    fn a_failing_batch_in_a_transaction_leaves_nothing_behind() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a INTEGER PRIMARY KEY)"), ALL)
            .unwrap();
        let err = h
            .batch(
                &[s("INSERT INTO t VALUES (1)"), s("INSERT INTO t VALUES (1)")],
                true,
                ALL,
            )
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::InStatement { index: 1, .. }),
            "{err:?}"
        );
        let count = h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        assert_eq!(count.rows[0][0], Value::Integer(0));
        // Without a transaction the first statement stays.
        h.batch(
            &[s("INSERT INTO t VALUES (1)"), s("INSERT INTO t VALUES (1)")],
            false,
            ALL,
        )
        .unwrap_err();
        let count = h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        assert_eq!(count.rows[0][0], Value::Integer(1));
    }

    #[test]
    fn overruns_are_reported_and_the_handle_keeps_working() {
        let (_d, h, _t) = fresh();
        let never_ends =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c";
        assert!(matches!(
            h.execute(&s(never_ends), ALL),
            Err(RuntimeError::Timeout)
        ));
        let big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
        assert!(matches!(
            h.execute(&s(big), ALL),
            Err(RuntimeError::ResultTooLarge)
        ));
        assert_eq!(
            h.execute(&s("SELECT 7"), ALL).unwrap().rows[0][0],
            Value::Integer(7)
        );
    }

    #[test]
    fn a_statement_cached_at_one_level_is_checked_again_at_another() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        let insert = s("INSERT INTO t VALUES (1)");
        h.execute(&insert, AccessLevel::ReadWrite).unwrap();
        // Same text, now from a read-only caller: refused, not served from the cache.
        let err = h.execute(&insert, AccessLevel::ReadOnly).unwrap_err();
        assert!(matches!(err, RuntimeError::Forbidden(_)), "{err:?}");
        let n = h
            .execute(&s("SELECT count(*) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(n.rows[0][0], Value::Integer(1));
        h.execute(&insert, AccessLevel::ReadWrite).unwrap();
    }

    #[test]
    fn a_read_only_caller_can_run_a_transactional_batch() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        let out = h
            .batch(
                &[s("SELECT count(*) FROM t"), s("SELECT 1")],
                true,
                AccessLevel::ReadOnly,
            )
            .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn schema_changes_are_flagged_and_row_writes_are_not() {
        let (_d, h, _t) = fresh();
        assert!(
            h.execute(&s("CREATE TABLE t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("INSERT INTO t VALUES (1)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("SELECT * FROM t"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            h.execute(&s("CREATE INDEX i ON t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("CREATE TABLE IF NOT EXISTS t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
    }

    #[test]
    fn readers_see_the_last_commit_while_a_leased_writer_holds_a_transaction() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        h.execute(&s("INSERT INTO t VALUES (1)"), ALL).unwrap();
        // A stream takes the writer into a transaction and keeps it.
        let mut writer = h.lease(AccessLevel::ReadWrite).unwrap();
        writer
            .run(AccessLevel::ReadWrite, true, |conn, sandbox, _| {
                server_sql(conn, sandbox, "BEGIN IMMEDIATE")?;
                conn.execute_batch("INSERT INTO t VALUES (2)")
                    .map_err(|e| RuntimeError::Internal(e.to_string()))
            })
            .unwrap();
        assert!(!writer.is_autocommit());
        // Readers do not wait for it and see only what was committed.
        let n = h
            .execute(&s("SELECT count(*) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(n.rows[0][0], Value::Integer(1));
        assert!(h.open_connections() >= 2);
        // Another writer waits the busy timeout, then is told so.
        let started = std::time::Instant::now();
        let err = h
            .execute(&s("INSERT INTO t VALUES (3)"), AccessLevel::ReadWrite)
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Busy), "{err:?}");
        assert!(started.elapsed() >= h.limits.busy_timeout);
        // Dropping the lease rolls its transaction back and returns the writer.
        drop(writer);
        h.execute(&s("INSERT INTO t VALUES (3)"), AccessLevel::ReadWrite)
            .unwrap();
        let n = h
            .execute(&s("SELECT group_concat(a) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(n.rows[0][0], Value::Text("1,3".into()));
    }

    #[test]
    fn a_statement_runs_now_only_when_quick_and_a_connection_is_free() {
        let (_d, h, _t) = fresh();
        let ms = Duration::from_millis;
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        h.execute(&s("INSERT INTO t VALUES (1)"), ALL).unwrap();
        let r = h
            .execute_now(&s("SELECT count(*) FROM t"), ALL, ms(100))
            .expect("the writer is free")
            .unwrap();
        assert_eq!(r.rows[0][0], Value::Integer(1));
        // A statement that can write never runs now, however quick, and nothing of it
        // happens: only a read is safe to run again on a blocking thread (a write whose
        // commit outlasts the budget is committed and still reported interrupted).
        for write in [
            "INSERT INTO t VALUES (2)",
            "CREATE TABLE u(a)",
            "DELETE FROM t",
        ] {
            let r = h.execute_now(&s(write), ALL, ms(100));
            assert!(r.is_none(), "{write}: {r:?}");
        }
        let tables = "SELECT count(*) FROM sqlite_schema WHERE name = 'u'";
        assert_eq!(
            h.execute(&s(tables), ALL).unwrap().rows[0][0],
            Value::Integer(0)
        );
        // Past its budget: not answered.
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000000) \
                    SELECT count(*) FROM c";
        assert!(
            h.execute_now(&s(slow), ALL, Duration::from_micros(300))
                .is_none()
        );
        let n = h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        assert_eq!(n.rows[0][0], Value::Integer(1));
        // The writer leased elsewhere: a plain SELECT runs now, on a reader.
        let held = h.lease(ALL).unwrap();
        h.execute(&s("SELECT 1"), AccessLevel::ReadOnly).unwrap();
        let r = h
            .execute_now(&s("SELECT count(*) FROM t"), ALL, ms(100))
            .expect("an idle reader")
            .unwrap();
        assert_eq!(r.rows[0][0], Value::Integer(1));
        // On the blocking path a writer's SELECT does not wait for the writer either (it
        // would fail with Busy after the busy timeout).
        h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        drop(held);
        assert!(plain_select("  select 1") && plain_select("VALUES (1)"));
        assert!(!plain_select("WITH x AS (SELECT 1) DELETE FROM t") && !plain_select("sel"));
    }

    #[test]
    fn transaction_statements_compile_only_where_allowed() {
        let (_d, h, _t) = fresh();
        let err = h.execute(&s("BEGIN"), ALL).unwrap_err();
        assert!(matches!(err, RuntimeError::Forbidden(_)), "{err:?}");
        let mut lease = h.lease(ALL).unwrap();
        lease
            .run(ALL, true, |conn, sandbox, _| {
                let mut budget = ResultBudget::new(1000);
                run(conn, sandbox, &s("BEGIN"), &mut budget)
            })
            .unwrap();
        assert!(!lease.is_autocommit());
        drop(lease);
        // The statement cached while allowed is not reused where it is not.
        let err = h.execute(&s("BEGIN"), ALL).unwrap_err();
        assert!(matches!(err, RuntimeError::Forbidden(_)), "{err:?}");
    }

    #[test]
    fn a_wrong_key_does_not_open_the_file() {
        let (dir, _h, _t) = fresh();
        let err = TenantHandle::open_local(
            TenantId::generate(),
            &dir.path().join("t.db"),
            &DbToken::generate(),
            ExecLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RuntimeError::WrongKey), "{err:?}");
    }

    #[test]
    fn the_file_is_encrypted() {
        let (dir, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        drop(h);
        let bytes = std::fs::read(dir.path().join("t.db")).unwrap();
        assert!(!bytes.starts_with(b"SQLite format 3"));
    }
}
