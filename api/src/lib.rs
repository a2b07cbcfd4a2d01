//! silo's HTTP API as types: the requests and answers of the tenant API (`/v1/…`) and the
//! admin API (`/admin/v1/…`). The server reads and writes them, the `silo` CLI and the
//! end-to-end tests read them, so a renamed or retyped field fails to compile (or, for an
//! older server, to parse) instead of printing `-`.
//!
//! Fields are added, never renamed or dropped (the contract is `shared/API.md`). Readers
//! ignore fields they do not know, so a newer server still talks to an older CLI. Requests
//! refuse unknown fields, so a typo is a 400 and not a silently ignored setting.

mod admin;
mod v1;

pub use admin::*;
pub use v1::*;
