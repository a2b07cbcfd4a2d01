//! silo's control plane: the HTTP API, the catalog, and the `silo` command.
//!
//! - [`config`]: the command line and its environment variables.
//! - [`cli`]: `silo init` and the admin subcommands (HTTP clients of the admin API).
//! - [`keys`]: loading (or, for development, generating) the master key.
//! - [`app`]: [`app::Application`]: build from configuration, bind, serve, shut down.
//! - [`http`]: the router, middleware and handlers.
//! - [`auth`]: passwords, access tokens, and the [`auth::Principal`] extractor.
//! - [`catalog`]: the control plane's own database.
//! - [`streams`]: open libSQL streams, their batons and expiry.
//! - [`service`]: what silo does, with no HTTP in it (handlers and the CLI call it).
//! - [`state`]: [`state::AppState`], what every handler shares.
//! - [`exports`]: exports under way, one per tenant.
//! - [`error`]: [`error::ApiError`], the one error type of the API.
//! - [`two_factor`]: TOTP and recovery codes.
//! - [`jobs`]: the fleet migration job's record.
//! - [`fleet`]: migrations across every tenant database.
//! - [`audit`]: the audit log's hash chains and signed heads.
//! - [`telemetry`]: Prometheus metrics.
//! - [`logging`]: the log subscriber: a background writer, plain fields.
//! - [`deletion`]: the grace period, crypto-shredding, and deletion certificates.

/// The hasher of silo's in-memory maps and caches: seeded per process, and far cheaper than
/// the default SipHash on a key as long as an access token, which is hashed on every request.
/// Only keys silo chose or checked go in (credentials that checked out, tenant ids, route
/// templates), so no client picks what collides.
pub(crate) type FastHash = foldhash::fast::RandomState;

pub mod app;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod deletion;
pub mod disk;
pub mod error;
pub mod exports;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod logging;
pub mod plans;
pub mod service;
pub mod sockets;
pub mod state;
pub mod streams;
pub mod telemetry;
pub mod throttle;
pub mod two_factor;
