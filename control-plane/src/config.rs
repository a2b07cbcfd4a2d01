//! The `silo` command line: every flag has an environment variable and a sane default, so
//! `silo serve` runs with no configuration at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

/// silo: a database-per-tenant control plane for SQLite/libSQL.
#[derive(Parser)]
#[command(name = "silo", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP server (the embedded local default: catalog and tenant databases in the
    /// data directory).
    Serve(Box<ServeArgs>),
    /// Initialise a data directory offline and print its first platform admin token.
    Init(crate::cli::InitArgs),
    /// Manage platform admin tokens (over the admin API).
    AdminToken {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::AdminTokenCommand,
    },
    /// Create, list, inspect, suspend, resume, delete tenants; rotate their DB tokens.
    Tenants {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::TenantsCommand,
    },
    /// Schema migrations across every tenant database.
    Migrate {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::MigrateCommand,
    },
    /// Help people sign in: clear an account's lockout (over the admin API).
    Accounts {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::AccountsCommand,
    },
    /// Verify the audit log (over the admin API).
    Audit {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::AuditCommand,
    },
    /// Check a deletion certificate's signature (offline, with the master key).
    VerifyCertificate(crate::cli::VerifyCertificateArgs),
    /// Print shell completions: `silo completions bash > /etc/bash_completion.d/silo`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Settings of `silo serve`. No `Debug` derive: it holds the master key.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (printed at start-up).
    #[arg(long, env = "SILO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the catalog, tenant databases and (when generated) the master key.
    #[arg(long, env = "SILO_DATA_DIR", default_value = "./silo-data")]
    pub data_dir: PathBuf,

    /// Master key: base64 of 32 random bytes (`openssl rand -base64 32`). Everything silo
    /// encrypts or signs derives from it. Without this or --master-key-file, silo generates
    /// one into <data-dir>/master.key (development only).
    #[arg(long, env = "SILO_MASTER_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub master_key: Option<SecretString>,

    /// File holding the master key (base64 of 32 bytes).
    #[arg(long, env = "SILO_MASTER_KEY_FILE", conflicts_with = "master_key")]
    pub master_key_file: Option<PathBuf>,

    /// Earlier master keys, comma-separated base64, kept so data sealed and tokens signed
    /// under them still open after a rotation. The new key seals and signs.
    #[arg(long, env = "SILO_PREVIOUS_MASTER_KEYS", hide_env_values = true, value_parser = parse_secret)]
    pub previous_master_keys: Option<SecretString>,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "SILO_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time budget of one data request (a statement or a whole batch), in milliseconds.
    #[arg(long, env = "SILO_QUERY_TIMEOUT_MS", default_value_t = 5_000)]
    pub query_timeout_ms: u64,

    /// Largest result one data request may return, in bytes.
    #[arg(long, env = "SILO_MAX_RESULT_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_result_bytes: usize,

    /// Most tenant databases kept open at once (least recently used are closed first).
    /// Default: as many as the open-files limit allows (raised to its hard limit at start),
    /// at most 10,000. A larger figure than the limit allows is lowered, with a warning.
    #[arg(long, env = "SILO_MAX_OPEN_TENANTS")]
    pub max_open_tenants: Option<u64>,

    /// Reader connections each open tenant database may add beside its writer (opened on
    /// demand; read-only callers use them, so reads never queue behind a write).
    #[arg(long, env = "SILO_TENANT_READERS", default_value_t = 2)]
    pub tenant_readers: usize,

    /// Milliseconds after which an unused libSQL stream (baton) expires.
    #[arg(long, env = "SILO_STREAM_IDLE_MS", default_value_t = 10_000)]
    pub stream_idle_ms: u64,

    /// Milliseconds a libSQL stream may hold a transaction open; past it the transaction
    /// is rolled back and the stream's baton answers STREAM_EXPIRED.
    #[arg(long, env = "SILO_STREAM_TRANSACTION_MS", default_value_t = 15_000)]
    pub stream_transaction_ms: u64,

    /// If set, `GET /metrics` answers only requests carrying this token as
    /// `Authorization: Bearer …` (for a scraper on a network others reach too). Unset, the
    /// metrics are open: they hold no tenant id, user or SQL, only counts and latencies.
    #[arg(long, env = "SILO_METRICS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub metrics_token: Option<SecretString>,

    /// Most client connections open at once (default: a quarter of the open-files limit,
    /// at most 10,000). At the cap the longest-idle connection is closed to make room; a
    /// new one is refused (503) only when all are busy.
    #[arg(long, env = "SILO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most WebSocket connections (libSQL clients on `ws://` URLs) open at once (default: a
    /// quarter of --max-connections, at least 16). Each also counts against
    /// --max-connections-per-address, and one tenant holds at most 256.
    #[arg(long, env = "SILO_MAX_WEBSOCKETS")]
    pub max_websockets: Option<usize>,

    /// Most connections open at once from one client address (trusted proxies exempt).
    #[arg(long, env = "SILO_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,

    /// Seconds a client has to send a request's head (request line and headers).
    #[arg(long, env = "SILO_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,

    /// Seconds a connection may sit with no request in flight and no byte moved before it
    /// is closed (idle keep-alive, or a client that never sends).
    #[arg(long, env = "SILO_IDLE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Seconds within which a request must be answered (upload included); past it, 408.
    #[arg(long, env = "SILO_REQUEST_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,

    /// The same for exports, which build a file before answering.
    #[arg(long, env = "SILO_EXPORT_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub export_timeout_secs: u64,

    /// Serve HTTPS with this certificate chain (PEM), for deployments without a proxy in
    /// front. Needs `--tls-key`. Read again on SIGHUP and when the file changes.
    #[arg(long, env = "SILO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, env = "SILO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Request bodies buffered at once across all connections, in MiB: a request reserves
    /// its size before its body is read, and gets 503 `busy` (retry) if it does not fit.
    /// Bounds the memory strangers can make silo hold with large or slow uploads. One
    /// client address may hold a sixteenth of it (at least one largest body).
    #[arg(long, env = "SILO_MAX_BUFFERED_BODIES_MB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_buffered_bodies_mb: u32,

    /// Answers held at once across all connections, in MiB, while they wait to be sent: an
    /// answer over 64 KiB reserves its size when it is ready, and is replaced by 503
    /// `busy` (retry) if the budget cannot hold it. Bounds the memory slow readers of large
    /// results can make silo hold.
    #[arg(long, env = "SILO_MAX_BUFFERED_RESPONSES_MB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_buffered_responses_mb: u32,

    /// Browser origins allowed to call the API from their pages (CORS), comma-separated,
    /// e.g. `https://app.example.com`. Unset: no CORS headers, and a browser's preflight is
    /// a 405 like any unknown method.
    #[arg(long, env = "SILO_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<axum::http::HeaderValue>,

    /// Reverse proxies in front of silo, as comma-separated CIDRs or addresses (e.g.
    /// `10.0.0.0/8,127.0.0.1`). A request from one of them is attributed to the client
    /// address in its `X-Forwarded-For` (the last one the proxy added); from anyone else
    /// that header is ignored. Proxies are exempt from the per-address connection cap.
    #[arg(long, env = "SILO_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Free space (MiB) the data directory's disk must keep: below it tenant writes and new
    /// tenants pause (507 `storage_full`; reads and sign-ins work) and `/readyz` answers
    /// 503, until there is a tenth more again. 0 switches the watch off.
    #[arg(long, env = "SILO_MIN_FREE_DISK_MB", default_value_t = 256)]
    pub min_free_disk_mb: u64,

    /// Plans and their limits, as JSON laid over the built-in ones (`free` 1 GiB, `pro`
    /// 10 GiB, `enterprise` 100 GiB of storage), e.g. `{"free": {"storage_mb": 200}}`;
    /// `0` is no limit.
    #[arg(long, env = "SILO_PLANS")]
    pub plans: Option<String>,

    /// Sign-in attempts (and invitation acceptances, deletion-certificate fetches) allowed
    /// per client address per minute; past it, 429 `rate_limited`. 0 switches it off.
    #[arg(long, env = "SILO_AUTH_RATE_LIMIT", default_value_t = 10)]
    pub auth_rate_limit: u32,

    /// Signups allowed per client address per hour; past it, 429. 0 switches it off.
    #[arg(long, env = "SILO_SIGNUP_RATE_LIMIT", default_value_t = 20)]
    pub signup_rate_limit: u32,

    /// Who may sign up: `open` (anyone), `invite-only` (`POST /v1/signup` is refused; people
    /// join by invitation, tenants are made by operators), `closed` (no new accounts at all:
    /// invitations only admit people who already have one).
    #[arg(long, env = "SILO_SIGNUP", value_enum, default_value_t = crate::state::SignupMode::Open)]
    pub signup: crate::state::SignupMode,

    /// Email domains signups are limited to, comma-separated (e.g. `acme.com,acme.org`);
    /// unset: any domain.
    #[arg(long, env = "SILO_SIGNUP_EMAIL_DOMAINS", value_delimiter = ',')]
    pub signup_email_domains: Vec<String>,

    /// Log one INFO line per request (target `silo::access`: method, route, status,
    /// latency, request id, tenant). Off by default: the request span already puts the
    /// request id and tenant on every line a request logs, and a line per request costs
    /// formatting on the request's thread. Logs are written by a background
    /// thread either way, never on the request's path.
    #[arg(long, env = "SILO_ACCESS_LOG")]
    pub access_log: bool,

    /// Directory of tenant migrations (`NNNN_name.sql`) to use instead of the ones built
    /// into silo: ship schema changes without rebuilding. Must contain every migration
    /// already applied (checksums are compared).
    #[arg(long, env = "SILO_MIGRATIONS_DIR")]
    pub migrations: Option<PathBuf>,

    /// Requests of one tenant that may run at once; more wait up to the query timeout, then
    /// get 429. Keeps one tenant's flood from slowing the others.
    #[arg(long, env = "SILO_TENANT_CONCURRENCY", default_value_t = 4)]
    pub tenant_concurrency: usize,

    /// Seconds after which an unused tenant database is closed.
    #[arg(long, env = "SILO_TENANT_IDLE_SECS", default_value_t = 300)]
    pub tenant_idle_secs: u64,

    /// Grace period of a scheduled tenant deletion, in seconds (restorable until then).
    #[arg(long, env = "SILO_DELETION_GRACE_SECS", default_value_t = 7 * 24 * 60 * 60)]
    pub deletion_grace_secs: u64,

    /// How long the audit events of a deleted tenant are kept, in seconds.
    #[arg(long, env = "SILO_AUDIT_RETENTION_SECS", default_value_t = 90 * 24 * 60 * 60)]
    pub audit_retention_secs: u64,

    /// How often the deletion reaper looks for tenants whose grace period is over, in ms.
    #[arg(long, env = "SILO_REAPER_INTERVAL_MS", default_value_t = 60_000)]
    pub reaper_interval_ms: u64,

    /// Test only (built with the `test-hooks` feature, never in a release build): pause this
    /// many milliseconds inside a tenant's destruction, after its DB
    /// token is destroyed and before its files are deleted.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = "SILO_TEST_PAUSE_DELETION_MS", hide = true)]
    pub test_pause_deletion_ms: Option<u64>,

    /// Test only (`test-hooks` feature): pause this many milliseconds inside provisioning, after the tenant's
    /// database is published and before the tenant is marked active.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = "SILO_TEST_PAUSE_PROVISIONING_MS", hide = true)]
    pub test_pause_provisioning_ms: Option<u64>,
}

impl ServeArgs {
    /// The test pause inside provisioning; always none without the `test-hooks` feature.
    pub fn provisioning_pause(&self) -> Option<std::time::Duration> {
        #[cfg(feature = "test-hooks")]
        return self
            .test_pause_provisioning_ms
            .map(std::time::Duration::from_millis);
        #[cfg(not(feature = "test-hooks"))]
        None
    }

    /// The test pause inside a tenant's destruction; always none without `test-hooks`.
    pub fn deletion_pause(&self) -> Option<std::time::Duration> {
        #[cfg(feature = "test-hooks")]
        return self
            .test_pause_deletion_ms
            .map(std::time::Duration::from_millis);
        #[cfg(not(feature = "test-hooks"))]
        None
    }
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

/// A CIDR, or a bare address meaning that one host.
fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

/// A browser origin: `scheme://host[:port]`, nothing after.
fn parse_origin(text: &str) -> Result<axum::http::HeaderValue, String> {
    let text = text.trim().trim_end_matches('/');
    let ok = (text.starts_with("https://") || text.starts_with("http://"))
        && !text
            .split_once("://")
            .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
    if !ok {
        return Err(format!(
            "{text:?} is not an origin (expected e.g. https://app.example.com)"
        ));
    }
    axum::http::HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not an origin"))
}
