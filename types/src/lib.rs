//! silo's domain types: the nouns every other crate speaks of, with no behaviour beyond
//! parsing, printing and the rules that belong to the noun itself.
//!
//! - [`TenantId`]: the server-generated, file-name-safe tenant identity.
//! - [`Role`], [`Scope`]: what a member may do, and what an API key may do.
//! - [`TenantStatus`]: the tenant lifecycle and its allowed transitions.
//! - [`AuditAction`]: every action the audit log records, by name.
//!
//! The lowest layer: it depends on no other crate of silo's.

mod action;
mod id;
mod role;
mod status;

pub use action::AuditAction;
pub use id::{HexId, InvalidTenantId, TenantId};
pub use role::{Role, Scope};
pub use status::TenantStatus;
