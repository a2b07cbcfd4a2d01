//! The per-tenant side of silo: everything between "this request belongs to tenant T" and
//! SQLite.
//!
//! - [`id`]: [`TenantId`], the server-generated, file-name-safe tenant identity.
//! - [`handle`]: [`TenantHandle`], one tenant's own connections (a writer and lazy readers), opened with that tenant's DB
//!   token ([`handle::open_keyed`]), and statement/batch execution.
//! - [`hrana`]: libSQL's Hrana protocol (what standard libSQL clients speak) over a handle.
//! - [`sandbox`]: the authorizer, limits and time budget every tenant connection runs under.
//! - [`store`]: [`TenantStore`], the bounded cache of open handles (LRU + idle eviction).
//! - [`value`]: the JSON form of SQLite values and parameters.
//!
//! Nothing here is shared between tenants: no connection, statement cache or file handle.

pub mod bookkeeping;
pub mod error;
pub mod export;
pub mod handle;
pub mod hrana;
pub mod id;
pub mod sandbox;
pub mod store;
mod tagged;
pub mod value;
pub mod watchdog;

pub use error::{Result, RuntimeError};
pub use handle::{ExecLimits, Lease, QueryResult, Statement, TenantHandle};
pub use id::TenantId;
pub use sandbox::AccessLevel;
pub use store::{StoreConfig, TenantStore, tenant_db_path};
pub use value::{Params, Value};
