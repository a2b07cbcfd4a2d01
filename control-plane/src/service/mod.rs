//! The service layer: what silo does, with no HTTP in it. Handlers check the caller (role,
//! scope, step-up), call a service function, and turn its answer into a response; the
//! CLI's offline commands call the same functions. Each function takes the server's state,
//! the acting identity and the request's metadata for the audit log, validates its input,
//! and returns the API's types (`silo-api`) or an `ApiError`.
//!
//! One module per resource. Handlers in `http/` hold no catalog call, no SQL and no crypto:
//! `tests/tests/layout.rs` checks it.

pub mod accounts;
pub mod admin_tokens;
pub mod api_keys;
pub mod audit;
pub mod export;
pub mod members;
pub mod migrations;
pub mod tenant;
pub mod tenants;
pub mod two_factor;
