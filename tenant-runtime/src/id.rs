//! Server-generated identifiers that are always safe to use as file names: defined in
//! `silo-types`, re-exported here where the runtime's callers have always found them.

pub use silo_types::{InvalidTenantId, TenantId};
