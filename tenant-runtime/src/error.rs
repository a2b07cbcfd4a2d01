//! What can go wrong running tenant SQL, sorted by whose fault it is.

/// Errors of the tenant runtime. The first group is the tenant's doing (the API answers
/// 4xx with the message); the second is silo's (5xx, message logged, not shown).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// Malformed request: bad params, several statements in one query, empty SQL.
    #[error("{0}")]
    InvalidInput(String),
    /// SQLite rejected the tenant's own statement (syntax, constraint, type, …). `code` is
    /// SQLite's name for the error class (`SQLITE_CONSTRAINT`, …), for libSQL clients.
    #[error("{message}")]
    Sql { message: String, code: &'static str },
    /// The sandbox refused the statement; the message says which rule.
    #[error("{0}")]
    Forbidden(String),
    #[error("the statement ran past its time budget and was stopped")]
    Timeout,
    /// The statement can write, and was asked to run inline, where only reads may: it did
    /// not start. Never an answer: the caller runs it on a blocking thread instead.
    #[error("internal error: a statement that can write was not run inline")]
    WritesNotInline,
    #[error("the result is larger than the result size cap; select fewer rows or columns")]
    ResultTooLarge,
    #[error("the database stayed busy with another writer past the busy timeout; retry")]
    Busy,
    /// Every reader connection of the tenant stayed held by its own requests past the busy
    /// timeout: the tenant's own load, answered like its concurrency limit (429).
    #[error("all of this tenant's read connections are busy with its own requests; retry shortly")]
    ReadersBusy,
    /// Opening the database would pass the server's limit of databases open at once (the
    /// cache plus those held by running requests and libSQL transactions).
    #[error(
        "too many tenant databases are open on this server right now (held by running \
         requests and open transactions); retry shortly"
    )]
    TooManyOpen,
    /// The write would grow the database past the tenant's storage quota.
    #[error(
        "the database has reached its plan's storage quota: delete data (then POST /v1/db/vacuum to give the space back) or move to a larger plan"
    )]
    QuotaExceeded,
    /// Writes are paused: the server's disk is nearly full.
    #[error(
        "the server's disk is nearly full: writes are paused until the operator makes room (reads work)"
    )]
    WritesPaused,
    /// The server's disk is full.
    #[error("the server's disk is full; the operator has been alerted")]
    Full,
    /// Memory or disk ran out while running the statement.
    #[error(
        "the statement needed more memory or disk than is available; simplify it or retry later"
    )]
    Exhausted,
    /// The error happened in statement `index` (0-based) of a batch.
    #[error("statement {index}: {source}")]
    InStatement {
        index: usize,
        #[source]
        source: Box<RuntimeError>,
    },

    /// The DB token does not open the file (wrong or swapped token, or not a database).
    #[error("the DB token does not open the tenant database")]
    WrongKey,
    /// The tenant's database file is not there.
    #[error("the tenant database file is missing")]
    Missing,
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    pub(crate) fn in_statement(self, index: usize) -> Self {
        RuntimeError::InStatement {
            index,
            source: Box::new(self),
        }
    }

    /// The error itself, without the batch position.
    pub fn root(&self) -> &RuntimeError {
        match self {
            RuntimeError::InStatement { source, .. } => source.root(),
            other => other,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
