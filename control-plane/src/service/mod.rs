//! The service layer: what silo does, with no HTTP in it. Handlers check the request and
//! the caller, call a service function, and turn its answer into a response; the CLI's
//! offline commands call the same functions. Each function takes the server's state, the
//! acting identity and the request's metadata for the audit log, and returns the API's
//! types (`silo-api`) or an `ApiError`.
//!
//! Moving here resource by resource (issue 16): platform admin tokens first.

pub mod admin_tokens;
