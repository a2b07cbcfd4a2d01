//! The sandbox every tenant connection runs in: tenant SQL can do anything to its own
//! database and nothing outside it.
//!
//! Three layers, all installed by [`install`] before the first tenant statement:
//! 1. an authorizer ([`authorize`]) consulted by SQLite while it *compiles* each statement:
//!    no ATTACH/DETACH (which also stops `VACUUM` and `VACUUM INTO`, both of which attach),
//!    no PRAGMA but read-only introspection, no file- or key-touching functions, no virtual
//!    table modules but full-text and r-tree, no transaction control (the server owns
//!    transactions), no writes to silo's own `_silo_*` tables;
//! 2. connection hardening: defensive mode, `trusted_schema` off, extension loading never
//!    enabled, and [`SandboxLimits`] (`sqlite3_limit`), including `ATTACHED = 0`;
//! 3. a time budget per request, enforced by a progress handler that interrupts the
//!    statement once the deadline set by [`SandboxState::start_budget`] has passed, and by
//!    the [`crate::watchdog`], which interrupts it from outside when one virtual machine
//!    step runs long (a `LIKE` over a megabyte string calls back into no handler).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;

/// `sqlite3_limit` values applied to every tenant connection.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    pub length: i32,
    pub sql_length: i32,
    pub column: i32,
    pub expr_depth: i32,
    pub compound_select: i32,
    pub function_arg: i32,
    pub like_pattern_length: i32,
    pub variable_number: i32,
    pub trigger_depth: i32,
}

impl Default for SandboxLimits {
    /// Generous for applications (the defaults of SQLite where they are sane), small
    /// enough that one statement cannot take the process's memory.
    fn default() -> Self {
        SandboxLimits {
            length: 1_000_000,
            sql_length: 100_000,
            column: 100,
            expr_depth: 100,
            compound_select: 5,
            function_arg: 32,
            like_pattern_length: 50,
            variable_number: 999,
            trigger_depth: 10,
        }
    }
}

/// PRAGMAs a tenant may run with an argument that names an object (`PRAGMA table_info(t)`),
/// also reachable as table-valued functions (`pragma_table_info('t')`). All read-only.
const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// PRAGMAs that change only how this connection behaves (no file, no key, no memory limit,
/// nothing kept in the database), which ORMs and migration tools set around a table rebuild
/// (drizzle, Prisma, knex, Django, SQLAlchemy, TypeORM): a tenant may set and read them.
/// They last as long as the request, or the libSQL stream, that set them: the connection
/// is reset to these values (silo's for `foreign_keys`, SQLite's for the rest) before it
/// serves anyone else. Each is a flag SQLite reads back as 0 or 1.
pub const SESSION_PRAGMAS: &[(&str, i64)] = &[
    ("foreign_keys", 1),
    ("defer_foreign_keys", 0),
    ("legacy_alter_table", 0),
    ("recursive_triggers", 0),
    ("read_uncommitted", 0),
    ("reverse_unordered_selects", 0),
    ("automatic_index", 1),
];

fn is_session_pragma(name: &str) -> bool {
    SESSION_PRAGMAS.iter().any(|(n, _)| *n == name)
}

/// PRAGMAs a tenant may *read* (no argument, no assignment). Note what is absent:
/// `database_list` (it prints the file's path) and every `cipher_*`/`key`/`rekey`.
const READABLE_PRAGMAS: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "busy_timeout",
    "collation_list",
    "compile_options",
    "data_version",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "journal_mode",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "schema_version",
    "user_version",
];

/// Virtual table modules a tenant may create: they keep their data in ordinary tables of
/// the same database.
const ALLOWED_VTAB_MODULES: &[&str] = &["fts3", "fts4", "fts5", "rtree", "rtree_i32"];

/// Tables whose name starts with this belong to silo (migration bookkeeping, metadata).
/// Tenants may read them but not create, change or drop them.
pub const RESERVED_TABLE_PREFIX: &str = "_silo_";

/// What the statements of one request may do, from the caller's role (and API key scopes).
/// Checked by the authorizer when a statement is compiled, on top of the base sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    /// Read rows and schema; change nothing (viewers, `db:read` keys).
    ReadOnly = 1,
    /// Also insert, update and delete rows (members, `db:write` keys).
    ReadWrite = 2,
    /// Also create, alter and drop tables, indexes, views, triggers (admins and owners,
    /// `db:admin` keys).
    Schema = 3,
}

impl AccessLevel {
    fn from_u8(v: u8) -> AccessLevel {
        match v {
            3 => AccessLevel::Schema,
            2 => AccessLevel::ReadWrite,
            _ => AccessLevel::ReadOnly,
        }
    }
}

/// Per-connection sandbox state shared between the connection's owner and the callbacks
/// SQLite calls (authorizer, progress handler). Owned by one tenant handle; never shared
/// across tenants.
#[derive(Debug)]
pub struct SandboxState {
    /// Reference point for `deadline_nanos` (an `Instant` cannot live in an atomic).
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the running statement must stop; 0 = no budget.
    deadline_nanos: AtomicU64,
    /// Set by the progress handler when it interrupted a statement for the time budget, so
    /// the caller can tell a timeout from any other interruption.
    timed_out: AtomicBool,
    /// Set only while silo itself runs a statement of its own on the tenant's connection
    /// (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`, `PRAGMA query_only`), never tenant text.
    server_statement: AtomicBool,
    /// The [`AccessLevel`] of the request running now, as its discriminant. Starts at the
    /// lowest: a statement compiled outside a request may not write.
    level: std::sync::atomic::AtomicU8,
    /// Why the authorizer refused the last statement, for the 403 message. A plain mutex: it is
    /// touched only from the thread that is preparing a statement on this connection.
    denial: Mutex<Option<String>>,
    /// Transaction statements (`BEGIN`, `COMMIT`, `SAVEPOINT`, …) are the tenant's to send:
    /// on for libSQL streams, which own their connection across requests; off for the JSON
    /// routes, where silo frames the transaction itself.
    transactions_allowed: AtomicBool,
    /// The last refusal was of a transaction statement (see
    /// [`SandboxState::take_transaction_refusal`]).
    transaction_refused: AtomicBool,
    /// The least access level that would have allowed every statement compiled since
    /// [`SandboxState::forget_compiled`], and whether one of them was a transaction
    /// statement: the rules those statements, some of them kept in the statement cache, need.
    compiled_level: std::sync::atomic::AtomicU8,
    compiled_transactions: AtomicBool,
    /// Interrupts the connection's running statement from another thread (the watchdog).
    interrupt: Interrupt,
    /// The statement runs inline (on an async thread, for a quick read): one that can write
    /// is refused before it starts (see `TenantHandle::run_now` for why).
    reads_only: AtomicBool,
    /// A statement that sets a session PRAGMA has been compiled on this connection since
    /// the last reset (PRAGMAs never sit in the statement cache, so each that runs is
    /// seen here), or silo re-applied a stream's: the lease resets them when it ends.
    session_pragmas_used: AtomicBool,
}

/// The connection's interrupt handle (not `Debug` itself).
struct Interrupt(Option<rusqlite::InterruptHandle>);

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

impl SandboxState {
    fn new(interrupt: Option<rusqlite::InterruptHandle>) -> Self {
        SandboxState {
            interrupt: Interrupt(interrupt),
            epoch: Instant::now(),
            deadline_nanos: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            server_statement: AtomicBool::new(false),
            level: std::sync::atomic::AtomicU8::new(AccessLevel::ReadOnly as u8),
            denial: Mutex::new(None),
            transactions_allowed: AtomicBool::new(false),
            transaction_refused: AtomicBool::new(false),
            compiled_level: std::sync::atomic::AtomicU8::new(AccessLevel::ReadOnly as u8),
            compiled_transactions: AtomicBool::new(false),
            reads_only: AtomicBool::new(false),
            session_pragmas_used: AtomicBool::new(false),
        }
    }

    /// Whether a session PRAGMA may have been set on this connection (see the field).
    pub fn session_pragmas_used(&self) -> bool {
        self.session_pragmas_used.load(Ordering::Relaxed)
    }

    /// Silo set session PRAGMAs itself (a stream's, on a fresh connection).
    pub fn mark_session_pragmas(&self) {
        self.session_pragmas_used.store(true, Ordering::Relaxed);
    }

    /// Takes the mark, for the reset.
    pub fn take_session_pragmas(&self) -> bool {
        self.session_pragmas_used.swap(false, Ordering::Relaxed)
    }

    /// Every statement compiled since [`SandboxState::forget_compiled`] would also compile
    /// under `level` and `transactions`: the statement cache may be kept when switching to
    /// them (the authorizer runs when a statement is compiled, not when a cached one is
    /// reused). A connection that alternates between a libSQL stream and single statements,
    /// or between callers of different roles, then keeps its cache unless a statement that
    /// needed more was compiled.
    pub fn compiled_fit(&self, level: AccessLevel, transactions: bool) -> bool {
        self.compiled_level.load(Ordering::Relaxed) <= level as u8
            && (transactions || !self.compiled_transactions.load(Ordering::Relaxed))
    }

    /// The statement cache was flushed: nothing compiled before counts any more.
    pub fn forget_compiled(&self) {
        self.compiled_level
            .store(AccessLevel::ReadOnly as u8, Ordering::Relaxed);
        self.compiled_transactions.store(false, Ordering::Relaxed);
    }

    /// Notes what an allowed action needed: the least level at which [`authorize`] allows it.
    fn note_allowed(&self, action: &AuthAction<'_>, level: AccessLevel) {
        let needed = [AccessLevel::ReadOnly, AccessLevel::ReadWrite]
            .into_iter()
            .take_while(|l| *l < level)
            .find(|l| authorize(action, *l).is_ok())
            .unwrap_or(level);
        self.compiled_level
            .fetch_max(needed as u8, Ordering::Relaxed);
    }

    /// Marks the statements run from now on as inline (`true`) or not.
    pub(crate) fn set_reads_only(&self, on: bool) {
        self.reads_only.store(on, Ordering::Relaxed);
    }

    /// Statements run now must not be able to write.
    pub(crate) fn reads_only(&self) -> bool {
        self.reads_only.load(Ordering::Relaxed)
    }

    /// Starts the time budget of one request. Call [`SandboxState::end_budget`] after.
    /// Clears what a request before may have left (a panic in an inline run cannot leave
    /// the connection refusing writes).
    pub fn start_budget(&self, budget: Duration) {
        let deadline = self.epoch.elapsed() + budget;
        self.timed_out.store(false, Ordering::Relaxed);
        self.reads_only.store(false, Ordering::Relaxed);
        self.deadline_nanos.store(
            u64::try_from(deadline.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            Ordering::Relaxed,
        );
    }

    pub fn end_budget(&self) {
        self.deadline_nanos.store(0, Ordering::Relaxed);
    }

    /// True if the last interruption came from the time budget.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Takes the reason recorded by the last refusal.
    pub fn take_denial(&self) -> Option<String> {
        self.denial.lock().take()
    }

    /// Runs `f` with silo's own statements allowed. Only for statements silo writes itself
    /// (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`, `PRAGMA query_only`), never tenant text.
    pub fn as_server<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Clears the flag however `f` ends, unwinding included: a flag left set would let
        /// every later statement on the connection past the authorizer.
        struct Reset<'a>(&'a AtomicBool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.server_statement.store(true, Ordering::Relaxed);
        let _reset = Reset(&self.server_statement);
        f()
    }

    /// Sets the access level the authorizer applies to statements compiled from now on.
    pub fn set_level(&self, level: AccessLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    pub fn level(&self) -> AccessLevel {
        AccessLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Whether tenant transaction statements compile from now on (see the field).
    pub fn set_transactions_allowed(&self, allowed: bool) {
        self.transactions_allowed.store(allowed, Ordering::Relaxed);
    }

    pub fn transactions_allowed(&self) -> bool {
        self.transactions_allowed.load(Ordering::Relaxed)
    }

    /// Whether a transaction statement was refused (because transactions are not allowed
    /// here) since the last call: such a statement may still run on a libSQL stream.
    pub fn take_transaction_refusal(&self) -> bool {
        self.transaction_refused.swap(false, Ordering::Relaxed)
    }

    /// The watchdog's stop: the request ran past its deadline inside one virtual machine
    /// step, where the progress handler is not called. Interrupting a connection that runs
    /// nothing is a no-op in SQLite, so a late call cannot touch a later statement.
    pub(crate) fn interrupt_for_budget(&self) {
        if let Some(handle) = &self.interrupt.0 {
            self.timed_out.store(true, Ordering::Relaxed);
            handle.interrupt();
        }
    }

    fn over_budget(&self) -> bool {
        let deadline = self.deadline_nanos.load(Ordering::Relaxed);
        if deadline != 0 && self.epoch.elapsed().as_nanos() >= u128::from(deadline) {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn deny(&self, reason: String) -> Authorization {
        *self.denial.lock() = Some(reason);
        Authorization::Deny
    }
}

/// The SQLite error code of `e`, including errors rusqlite reports with a position in the
/// SQL text (`SqlInputError`), whose `sqlite_error_code()` is `None`.
pub fn error_code(e: &rusqlite::Error) -> Option<rusqlite::ErrorCode> {
    match e {
        rusqlite::Error::SqlInputError { error, .. } => Some(error.code),
        other => other.sqlite_error_code(),
    }
}

/// The authorizer's decision for one action of a tenant statement.
/// `Ok(())` allows; `Err(reason)` refuses with a message meant for the tenant.
pub fn authorize(action: &AuthAction<'_>, level: AccessLevel) -> Result<(), String> {
    use AuthAction as A;
    level_allows(action, level)?;
    let reserved = |table: &str| {
        if table
            .to_ascii_lowercase()
            .starts_with(RESERVED_TABLE_PREFIX)
        {
            Err(format!(
                "tables named {RESERVED_TABLE_PREFIX}* belong to silo: they can be read, not changed"
            ))
        } else {
            Ok(())
        }
    };
    // Raw pages (the SQLite export reads them on a connection of its own): below the
    // schema, the triggers and the reserved tables' rule.
    let raw_pages = |table: &str| table.eq_ignore_ascii_case("sqlite_dbpage");
    match action {
        A::Read { table_name, .. }
        | A::Insert { table_name }
        | A::Update { table_name, .. }
        | A::Delete { table_name }
            if raw_pages(table_name) =>
        {
            Err("sqlite_dbpage is not available: read the database through SQL".to_owned())
        }
        A::Attach { .. } | A::Detach { .. } => Err(
            "ATTACH, DETACH and VACUUM are not allowed: a tenant reaches only its own database"
                .to_owned(),
        ),
        A::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = INTROSPECTION_PRAGMAS.contains(&name.as_str())
                || is_session_pragma(&name)
                || (pragma_value.is_none() && READABLE_PRAGMAS.contains(&name.as_str()))
                // Kept in the database's header, or writes statistics: schema work.
                || (level >= AccessLevel::Schema && matches!(name.as_str(), "user_version" | "optimize"));
            if allowed {
                Ok(())
            } else {
                Err(format!(
                    "PRAGMA {name}{} is not allowed: only read-only introspection PRAGMAs are",
                    if pragma_value.is_some() {
                        " with a value"
                    } else {
                        ""
                    }
                ))
            }
        }
        A::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if name == "load_extension" || name.starts_with("sqlcipher") || name == "fts3_tokenizer"
            {
                Err(format!("function {name}() is not allowed"))
            } else {
                Ok(())
            }
        }
        A::CreateVtable {
            module_name,
            table_name,
        } => {
            vtab_module_allowed(module_name)?;
            reserved(table_name)
        }
        A::DropVtable { module_name, .. } => vtab_module_allowed(module_name),
        // A TEMP object lives on the connection, not in the database: on the tenant's shared
        // writer it would outlive its request, stay hidden from sqlite_master, export and the
        // audit log, and act on the next statements of every member (a TEMP trigger, or a
        // TEMP table shadowing a real one).
        A::CreateTempTable { .. }
        | A::CreateTempIndex { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. } => Err(
            "TEMP tables, views, indexes and triggers are not allowed: they would outlive this \
             request on a connection other requests share; create an ordinary table (and drop \
             it), or use a WITH clause"
                .to_owned(),
        ),
        A::Transaction { .. } | A::Savepoint { .. } => Err(
            "transaction statements are not allowed here: send the statements together to \
             /v1/db/batch (atomic by default) or use an interactive libSQL stream"
                .to_owned(),
        ),
        A::Insert { table_name }
        | A::Delete { table_name }
        | A::Update { table_name, .. }
        | A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::CreateTrigger { table_name, .. }
        | A::DropTrigger { table_name, .. } => reserved(table_name),
        A::CreateView { view_name } => reserved(view_name),
        A::Unknown { code, .. } => Err(format!("statement kind {code} is not allowed")),
        _ => Ok(()),
    }
}

fn vtab_module_allowed(module: &str) -> Result<(), String> {
    if ALLOWED_VTAB_MODULES.contains(&module.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!(
            "virtual table module {module} is not allowed (allowed: {})",
            ALLOWED_VTAB_MODULES.join(", ")
        ))
    }
}

/// The part of the decision that depends on the caller's [`AccessLevel`].
fn level_allows(action: &AuthAction<'_>, level: AccessLevel) -> Result<(), String> {
    use AuthAction as A;
    let needed = match action {
        A::Insert { .. } | A::Update { .. } | A::Delete { .. } => AccessLevel::ReadWrite,
        A::CreateIndex { .. }
        | A::CreateTable { .. }
        | A::CreateTrigger { .. }
        | A::CreateView { .. }
        | A::CreateVtable { .. }
        | A::DropIndex { .. }
        | A::DropTable { .. }
        | A::DropTrigger { .. }
        | A::DropView { .. }
        | A::DropVtable { .. }
        | A::AlterTable { .. }
        | A::Reindex { .. }
        | A::Analyze { .. }
        // Temporary objects live on the tenant's shared connection: a temporary trigger
        // planted by a member would run with the rights of the next admin's statement.
        | A::CreateTempIndex { .. }
        | A::CreateTempTable { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. }
        | A::DropTempIndex { .. }
        | A::DropTempTable { .. }
        | A::DropTempTrigger { .. }
        | A::DropTempView { .. } => AccessLevel::Schema,
        _ => AccessLevel::ReadOnly,
    };
    if level >= needed {
        Ok(())
    } else if needed == AccessLevel::ReadWrite {
        Err("your role or API key may read this database but not change it".to_owned())
    } else {
        Err("your role or API key may not change the schema (admin or db:admin needed)".to_owned())
    }
}

/// Installs the sandbox on a freshly keyed connection. Must run before any tenant SQL, and
/// after silo's own setup PRAGMAs (which the authorizer would refuse).
pub fn install(
    conn: &mut Connection,
    limits: &SandboxLimits,
) -> rusqlite::Result<std::sync::Arc<SandboxState>> {
    // Hardening first, while PRAGMAs are still allowed.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.execute_batch("PRAGMA trusted_schema = OFF;")?;
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_LENGTH, limits.length),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, limits.sql_length),
        (Limit::SQLITE_LIMIT_COLUMN, limits.column),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, limits.expr_depth),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, limits.compound_select),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, limits.function_arg),
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (
            Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            limits.like_pattern_length,
        ),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, limits.variable_number),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, limits.trigger_depth),
    ] {
        conn.set_limit(limit, value)?;
    }

    let state = std::sync::Arc::new(SandboxState::new(Some(conn.get_interrupt_handle())));
    let auth_state = state.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if auth_state.server_statement.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        if matches!(
            ctx.action,
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
        ) {
            if auth_state.transactions_allowed() {
                auth_state
                    .compiled_transactions
                    .store(true, Ordering::Relaxed);
                return Authorization::Allow;
            }
            auth_state
                .transaction_refused
                .store(true, Ordering::Relaxed);
        }
        let level = auth_state.level();
        match authorize(&ctx.action, level) {
            Ok(()) => {
                if let AuthAction::Pragma {
                    pragma_name,
                    pragma_value: Some(_),
                } = &ctx.action
                    && is_session_pragma(&pragma_name.to_ascii_lowercase())
                {
                    auth_state
                        .session_pragmas_used
                        .store(true, Ordering::Relaxed);
                }
                if level != AccessLevel::ReadOnly {
                    auth_state.note_allowed(&ctx.action, level);
                }
                Authorization::Allow
            }
            Err(reason) => auth_state.deny(reason),
        }
    }))?;
    let progress_state = state.clone();
    // Checked every 1,000 virtual machine steps: a few microseconds apart, so a statement
    // overruns its budget by well under a millisecond, and the clock read is amortised.
    conn.progress_handler(1_000, Some(move || progress_state.over_budget()))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sandboxed() -> (Connection, std::sync::Arc<SandboxState>) {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); CREATE TABLE _silo_meta(k, v);",
        )
        .unwrap();
        let state = install(&mut conn, &SandboxLimits::default()).unwrap();
        state.set_level(AccessLevel::Schema);
        (conn, state)
    }

    fn refused(conn: &Connection, state: &SandboxState, sql: &str) -> String {
        state.take_denial();
        if conn.execute_batch(sql).is_ok() {
            panic!("the sandbox let this run: {sql}");
        }
        state
            .take_denial()
            .unwrap_or_else(|| panic!("failed, but not by the sandbox: {sql}"))
    }

    #[test]
    fn file_and_key_touching_statements_are_refused() {
        let (conn, state) = sandboxed();
        for sql in [
            "ATTACH DATABASE '/tmp/other.db' AS o",
            "ATTACH ':memory:' AS m",
            "DETACH DATABASE main",
            "VACUUM",
            "VACUUM INTO '/tmp/silo-sandbox-test-copy.db'",
            "PRAGMA writable_schema = 1",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA cache_size = -1000000",
            "PRAGMA temp_store = FILE",
            "PRAGMA query_only = 0",
            "PRAGMA trusted_schema = 1",
            "PRAGMA ignore_check_constraints = 1",
            "PRAGMA key = 'x'",
            "PRAGMA rekey = 'x'",
            "PRAGMA cipher_compatibility = 3",
            "PRAGMA database_list",
            "SELECT load_extension('/tmp/evil.so')",
            "SELECT sqlcipher_export('o')",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT s",
            "INSERT INTO _silo_meta VALUES (1, 2)",
            "DROP TABLE _silo_meta",
            "CREATE TABLE _silo_mine(x)",
            "CREATE VIEW _silo_view AS SELECT 1",
            "CREATE TEMP TABLE _silo_meta(x)",
            "CREATE VIRTUAL TABLE _silo_docs USING fts5(body)",
            "CREATE VIRTUAL TABLE files USING fsdir",
            "SELECT data FROM sqlite_dbpage WHERE pgno = 1",
            "SELECT count(*) FROM SQLITE_DBPAGE",
            "UPDATE sqlite_dbpage SET data = zeroblob(4096) WHERE pgno = 2",
        ] {
            let reason = refused(&conn, &state, sql);
            assert!(!reason.is_empty(), "{sql}");
        }
    }

    #[test]
    fn session_pragmas_are_anyones_and_mark_the_connection_the_schema_version_is_admins() {
        let (conn, state) = sandboxed();
        state.set_level(AccessLevel::ReadOnly);
        assert!(!state.session_pragmas_used());
        conn.query_row("PRAGMA foreign_keys", [], |_| Ok(()))
            .unwrap();
        assert!(!state.session_pragmas_used(), "a read sets nothing");
        for sql in [
            "PRAGMA foreign_keys = OFF",
            "PRAGMA defer_foreign_keys = ON",
            "PRAGMA legacy_alter_table = 1",
            "PRAGMA read_uncommitted = true",
        ] {
            conn.execute_batch(sql).unwrap();
        }
        assert!(state.session_pragmas_used());
        let reason = refused(&conn, &state, "PRAGMA user_version = 3");
        assert!(reason.contains("user_version"), "{reason}");
        state.set_level(AccessLevel::ReadWrite);
        refused(&conn, &state, "PRAGMA user_version = 4");
        refused(&conn, &state, "PRAGMA optimize");
        state.set_level(AccessLevel::Schema);
        conn.execute_batch("PRAGMA user_version = 5; PRAGMA optimize;")
            .unwrap();
    }

    #[test]
    fn ordinary_sql_and_introspection_still_work() {
        let (conn, _state) = sandboxed();
        conn.execute_batch(
            "INSERT INTO t(b) VALUES ('x');
             CREATE INDEX t_b ON t(b);
             CREATE VIEW v AS SELECT * FROM t;
             CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;
             CREATE VIRTUAL TABLE docs USING fts5(body);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT count(*) FROM c;
             ALTER TABLE t ADD COLUMN c INTEGER;
             DROP VIEW v;",
        )
        .unwrap();
        let cols: i64 = conn
            .query_row("SELECT count(*) FROM pragma_table_info('t')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(cols, 3);
        conn.prepare("PRAGMA table_info(t)").unwrap();
        conn.prepare("PRAGMA user_version").unwrap();
        conn.prepare("SELECT * FROM _silo_meta").unwrap();
    }

    #[test]
    fn time_budget_interrupts_a_runaway_statement_and_clears() {
        let (conn, state) = sandboxed();
        state.start_budget(Duration::from_millis(50));
        let err = conn
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert!(state.timed_out());
        state.end_budget();
        let one: i64 = conn.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(one, 1);
    }

    #[test]
    fn each_access_level_allows_only_its_kind_of_statement() {
        let (conn, state) = sandboxed();
        let write = "INSERT INTO t(b) VALUES ('x')";
        let ddl = "CREATE TABLE u(x)";
        let temp = "CREATE TEMP TRIGGER tt AFTER INSERT ON t BEGIN SELECT 1; END";
        state.set_level(AccessLevel::ReadOnly);
        conn.execute_batch("SELECT * FROM t").unwrap();
        refused(&conn, &state, write);
        refused(&conn, &state, ddl);
        state.set_level(AccessLevel::ReadWrite);
        conn.execute_batch(write).unwrap();
        conn.execute_batch("UPDATE t SET b = 'y'; DELETE FROM t")
            .unwrap();
        refused(&conn, &state, ddl);
        refused(&conn, &state, temp);
        refused(&conn, &state, "DROP TABLE t");
        state.set_level(AccessLevel::Schema);
        conn.execute_batch(ddl).unwrap();
        // TEMP objects are refused at every level (they would outlive the request on a
        // shared connection).
        refused(&conn, &state, temp);
        refused(&conn, &state, "CREATE TEMP TABLE tt(x)");
        // Silo's own statements pass whatever the level.
        state.set_level(AccessLevel::ReadOnly);
        state
            .as_server(|| conn.execute_batch("BEGIN; ROLLBACK;"))
            .unwrap();
    }

    /// What the compiled statements needed decides whether the statement cache may be kept
    /// on a switch of rules: reads compiled for a writer fit a reader; a write, a schema
    /// change or a transaction statement does not fit rules that refuse it.
    #[test]
    fn the_rules_compiled_statements_need_are_tracked() {
        let (conn, state) = sandboxed();
        let prepare = |sql: &str| drop(conn.prepare(sql).unwrap());
        let all = [
            AccessLevel::ReadOnly,
            AccessLevel::ReadWrite,
            AccessLevel::Schema,
        ];
        state.set_level(AccessLevel::Schema);
        prepare("SELECT a, b FROM t WHERE a = ?1");
        prepare("SELECT count(*) FROM t JOIN t AS u USING (a)");
        prepare("WITH c(x) AS (VALUES (1)) SELECT x FROM c");
        assert!(all.iter().all(|l| state.compiled_fit(*l, false)));

        state.set_level(AccessLevel::ReadWrite);
        prepare("INSERT INTO t (b) VALUES ('x')");
        assert!(!state.compiled_fit(AccessLevel::ReadOnly, true));
        assert!(state.compiled_fit(AccessLevel::ReadWrite, false));
        state.set_level(AccessLevel::Schema);
        prepare("CREATE INDEX IF NOT EXISTS ib ON t(b)");
        assert!(!state.compiled_fit(AccessLevel::ReadWrite, true));
        assert!(state.compiled_fit(AccessLevel::Schema, false));

        state.forget_compiled();
        assert!(all.iter().all(|l| state.compiled_fit(*l, false)));
        state.set_transactions_allowed(true);
        prepare("BEGIN");
        state.set_transactions_allowed(false);
        assert!(!state.compiled_fit(AccessLevel::Schema, false));
        assert!(state.compiled_fit(AccessLevel::ReadOnly, true));
        // Refused statements compile nothing.
        state.forget_compiled();
        state.set_level(AccessLevel::ReadOnly);
        assert!(conn.prepare("DELETE FROM t").is_err());
        assert!(conn.prepare("COMMIT").is_err());
        assert!(state.compiled_fit(AccessLevel::ReadOnly, false));
    }

    #[test]
    fn limits_are_applied() {
        let (conn, _state) = sandboxed();
        assert_eq!(conn.limit(Limit::SQLITE_LIMIT_ATTACHED).unwrap(), 0);
        let long = format!("SELECT {}", "1+".repeat(60_000) + "1");
        assert!(conn.prepare(&long).is_err());
    }
}
