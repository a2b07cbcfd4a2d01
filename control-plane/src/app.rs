//! Start-up and shutdown: build everything from the configuration, bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use silo_provisioner::migrations::TENANT_DIR;
use silo_provisioner::{LocalPlacement, MigrationSet, Provisioner};
use silo_tenant_runtime::{ExecLimits, StoreConfig, TenantStore};
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::catalog::{Catalog, CatalogKeys};
use crate::config::ServeArgs;
use crate::keys::{KeySource, load_keys};
use crate::state::AppState;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often idle tenant handles are looked for and closed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// A built server: listener bound (so its port is known), state ready, crash leftovers
/// reconciled.
pub struct Application {
    listener: TcpListener,
    connections: crate::http::listener::ConnectionLimits,
    disk: Arc<crate::disk::DiskWatch>,
    /// The TLS certificate in use, if silo serves HTTPS.
    tls: Option<Arc<crate::http::tls::Certificate>>,
    state: AppState,
    reaper_interval: Duration,
    deletion_pause: Option<Duration>,
    audit_retention: Duration,
    /// Held for the life of the process: one silo per data directory (two would reconcile
    /// each other's signups away).
    _data_dir_lock: std::fs::File,
}

impl Application {
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        // Everything silo creates from here on (the catalog, tenant databases with their
        // WAL files, keys, exports) is its user's alone: 0600 files, 0700 directories.
        rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| {
                    format!("cannot restrict data directory {}", args.data_dir.display())
                })?;
        }
        let lock_path = args.data_dir.join("silo.lock");
        let data_dir_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        data_dir_lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "another silo is already using the data directory {}; stop it first",
                args.data_dir.display()
            )
        })?;
        crate::telemetry::install();
        let (keyring, source) = load_keys(
            &args.data_dir,
            args.master_key.as_ref(),
            args.master_key_file.as_deref(),
            args.previous_master_keys.as_ref(),
            true,
        )?;
        match &source {
            KeySource::Generated(path) => tracing::warn!(
                path = %path.display(),
                "no master key configured: using a generated one. This suits development only; \
                 set SILO_MASTER_KEY or --master-key-file in production, and back the key up: \
                 without it no tenant database can be opened"
            ),
            KeySource::Env => tracing::info!("master key: from SILO_MASTER_KEY"),
            KeySource::File(path) => {
                tracing::info!(path = %path.display(), "master key: from file")
            }
        }
        tracing::info!(key_id = %keyring.primary_id(), "encryption: enabled (AES-256-GCM envelopes, SQLCipher catalog and tenant databases)");
        let keyring = Arc::new(keyring);
        let tokens = Arc::new(TokenKeys::from_keyring(&keyring)?);

        let data_dir = args.data_dir.clone();
        let pause = args.provisioning_pause();
        let migrations_dir = args.migrations.clone();
        let catalog_keys = CatalogKeys::from_keyring(&keyring)?;
        let (catalog, provisioner) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            crate::auth::warm_up();
            let catalog = Catalog::open(&data_dir.join(crate::keys::CATALOG_FILE), &catalog_keys)
                .context("open catalog")?;
            let placement = LocalPlacement::new(data_dir.join("tenants"))?;
            let migrations = match &migrations_dir {
                Some(dir) => MigrationSet::from_dir(dir)
                    .and_then(MigrationSet::for_tenants)
                    .with_context(|| format!("load tenant migrations from {}", dir.display()))?,
                None => MigrationSet::embedded(&TENANT_DIR)?.for_tenants()?,
            };
            tracing::info!(
                latest = migrations.latest_version(),
                "tenant migrations loaded"
            );
            let provisioner = Provisioner::new(placement, migrations).with_test_pause(pause);
            let rolled_back = provisioner
                .reconcile(&catalog)
                .context("reconcile tenants left in provisioning")?;
            if !rolled_back.is_empty() {
                tracing::warn!(
                    count = rolled_back.len(),
                    "rolled back interrupted provisioning"
                );
            }
            Ok((catalog, provisioner))
        })
        .await??;

        let open_files = raise_open_files_limit();
        let max_connections = args
            .max_connections
            .unwrap_or_else(|| default_max_connections(open_files))
            .max(1);
        let max_websockets = args
            .max_websockets
            .unwrap_or((max_connections / 4).max(16))
            .max(1);
        let (max_handles, max_live, max_readers) = handle_budget(
            open_files,
            (max_connections + max_websockets) as u64,
            args.max_open_tenants,
            args.tenant_readers,
        );
        silo_tenant_runtime::handle::set_max_readers(
            usize::try_from(max_readers).unwrap_or(usize::MAX),
        );
        // Half the databases that may be open can be held by libSQL transactions; the rest
        // stay for tenants that just run a statement.
        silo_tenant_runtime::hrana::set_max_pinned(
            usize::try_from(max_live / 2).unwrap_or(usize::MAX),
        );
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::http::tls::Certificate::load(cert, key).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        let connections = crate::http::listener::ConnectionLimits {
            tls: tls.as_ref().map(crate::http::tls::Certificate::acceptor),
            body_budget_kib: args.max_buffered_bodies_mb.saturating_mul(1024),
            response_budget_kib: args.max_buffered_responses_mb.saturating_mul(1024),
            max_body_bytes: args.max_body_bytes,
            max_connections,
            max_per_address: args.max_connections_per_address.max(1),
            header_read: Duration::from_secs(args.header_read_timeout_secs),
            idle: Duration::from_secs(args.idle_timeout_secs),
            request: Duration::from_secs(args.request_timeout_secs),
            long_request: Duration::from_secs(args.export_timeout_secs),
            trusted_proxies: args.trusted_proxies.clone(),
        };
        let store = TenantStore::new(StoreConfig {
            max_handles,
            max_live,
            idle_timeout: Duration::from_secs(args.tenant_idle_secs),
            limits: ExecLimits {
                time_budget: Duration::from_millis(args.query_timeout_ms),
                max_result_bytes: args.max_result_bytes,
                readers: args.tenant_readers,
                ..ExecLimits::default()
            },
        });
        let state = AppState::new(crate::state::Shared {
            catalog,
            keyring,
            tokens,
            store,
            provisioner: Arc::new(provisioner),
            max_body_bytes: args.max_body_bytes,
            gates: crate::state::TenantGates::new(
                args.tenant_concurrency,
                Duration::from_millis(args.query_timeout_ms),
            ),
            jobs: crate::jobs::MigrationJobs::default(),
            exports: crate::exports::ExportsInFlight::default(),
            deletion_grace: Duration::from_secs(args.deletion_grace_secs),
            streams: crate::streams::Streams::new(crate::streams::StreamLimits {
                idle: Duration::from_millis(args.stream_idle_ms.max(1)),
                transaction: Duration::from_millis(args.stream_transaction_ms.max(1)),
            }),
            // WebSockets hold what they buffer in a budget of their own, as large as the
            // one of HTTP answers.
            sockets: crate::sockets::Sockets::new(
                max_websockets,
                args.max_connections_per_address.max(1),
                (args.max_buffered_responses_mb as usize).saturating_mul(1024 * 1024),
            ),
            credentials: Arc::default(),
            metrics_token: args.metrics_token.clone(),
            access_log: args.access_log,
            cors_origins: args.cors_origins.clone(),
            throttles: crate::throttle::Throttles::new(
                args.auth_rate_limit,
                args.signup_rate_limit,
            ),
            tenant_rates: crate::state::TenantRates::default(),
            plans: crate::plans::Plans::with_overrides(args.plans.as_deref())
                .map_err(anyhow::Error::msg)?,
            signup: crate::state::SignupPolicy {
                mode: args.signup,
                email_domains: args
                    .signup_email_domains
                    .iter()
                    .map(|d| d.trim().trim_start_matches('@').to_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect(),
            },
        });
        // Exports are streamed and never touch the disk; an older silo built them in
        // `exports/`, and one interrupted by a crash left a plaintext copy there.
        let old_exports = args.data_dir.join("exports");
        if let Ok(entries) = std::fs::read_dir(&old_exports) {
            for entry in entries.flatten() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(error = %e, "could not remove a leftover export");
                }
            }
            let _ = std::fs::remove_dir(&old_exports);
        }
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let disk = Arc::new(crate::disk::DiskWatch {
            dir: args.data_dir.clone(),
            floor_bytes: args.min_free_disk_mb.saturating_mul(1024 * 1024),
        });
        disk.check();
        Ok(Application {
            listener,
            connections,
            disk,
            tls,
            state,
            reaper_interval: Duration::from_millis(args.reaper_interval_ms.max(100)),
            deletion_pause: args.deletion_pause(),
            audit_retention: Duration::from_secs(args.audit_retention_secs),
            _data_dir_lock: data_dir_lock,
        })
    }

    /// The whole API as a router over this server's state, for in-process use (the handler
    /// cost bench); `run_until_stopped` serves the same router.
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.state.clone())
    }

    /// `https` when silo serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until ctrl-c or SIGTERM, then drains in-flight requests (bounded by
    /// [`DRAIN_TIMEOUT`]) and closes every tenant database cleanly.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then drains and closes as [`Self::run_until_stopped`]
    /// does (for a server embedded in another program: the end-to-end tests).
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            connections,
            disk,
            tls,
            state,
            reaper_interval,
            deletion_pause,
            audit_retention,
            _data_dir_lock,
        } = self;
        // Finishes interrupted deletions at start-up, then destroys tenants as their grace
        // periods end.
        let reaper = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(reaper_interval);
                loop {
                    tick.tick().await;
                    crate::deletion::reap(&state, deletion_pause, audit_retention).await;
                }
            }
        });
        // Expires idle libSQL streams and over-long transactions, to the second.
        let stream_sweeper = tokio::spawn({
            let streams = state.streams.clone();
            let every = (streams.limits().idle / 10)
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let streams = streams.clone();
                    // Expiring rolls back on tenant connections: a blocking thread.
                    let _ = tokio::task::spawn_blocking(move || streams.sweep()).await;
                }
            }
        });
        let store = state.store.clone();
        let maintenance = tokio::spawn({
            let store = store.clone();
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
                loop {
                    tick.tick().await;
                    let store = store.clone();
                    // Closing a database checkpoints its WAL: file I/O, so a blocking thread.
                    let _ = tokio::task::spawn_blocking(move || store.run_maintenance()).await;
                    crate::telemetry::upkeep();
                    state.throttles.upkeep();
                    crate::telemetry::stream_gauges();
                }
            }
        });
        let tls_reloader = tls
            .as_ref()
            .map(crate::http::tls::Certificate::spawn_reloader);
        // The data directory's free space, every two seconds.
        let disk_watch = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let disk = disk.clone();
                let _ = tokio::task::spawn_blocking(move || disk.check()).await;
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sockets = state.sockets.clone();
        let server =
            crate::http::listener::serve(listener, crate::http::router(state), connections, {
                let sockets = sockets.clone();
                async move {
                    stop.await;
                    tracing::info!("shutting down: draining in-flight requests");
                    // WebSockets finish the request they run, say goodbye and close.
                    sockets.close_all();
                    let _ = stop_tx.send(());
                }
            });
        // The listener drains HTTP connections; upgraded ones are the sockets' to close.
        let server = async move {
            let served = server.await;
            sockets.wait_empty().await;
            served
        };
        let server = tokio::spawn(server);
        // Drain with a time limit: once the signal came, give requests DRAIN_TIMEOUT.
        let result = tokio::select! {
            r = server => r.context("server task"),
            () = async {
                let _ = stop_rx.await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } => {
                tracing::warn!("drain timed out; closing with requests in flight");
                Ok(())
            }
        };
        maintenance.abort();
        disk_watch.abort();
        if let Some(reloader) = tls_reloader {
            reloader.abort();
        }
        reaper.abort();
        stream_sweeper.abort();
        tokio::task::spawn_blocking(move || store.close_all()).await?;
        tracing::info!("stopped; tenant databases closed");
        result
    }
}

/// File descriptors one open tenant database costs: its writer holds the database file and
/// its WAL (the WAL index lives in the process, under the `unix-excl` VFS). Each reader it
/// opens adds as many, from a budget all handles share (`tenant-runtime`'s
/// `set_max_readers`): most handles never open one (measured by
/// `tenant-runtime/benches/handle_memory.rs`), so sizing every handle for all its readers
/// kept two-thirds of the descriptors unused.
const FDS_PER_HANDLE: u64 = 2;
const FDS_PER_READER: u64 = 2;

/// Descriptors kept for everything but tenant databases and client connections: the
/// catalog, exports, logs, the listener.
const FD_RESERVE: u64 = 256;
/// The default cache never grows past this, however high the limit.
const DEFAULT_MAX_HANDLES: u64 = 10_000;

/// Sizes the handle cache from the open-files limit `soft`, less what `connections` client
/// connections and the reserve need: a quarter of the rest for reader connections (shared
/// by all handles; none when `readers` is 0), the remainder for handles.
/// `configured` (SILO_MAX_OPEN_TENANTS) is honoured up to that. Answers the cache size, the
/// most handles alive at once (the cache's plus those evicted while in use: what the
/// descriptors allow; the cache keeps a tenth of it free for handles held by requests and
/// libSQL transactions) and the most readers open at once.
fn handle_budget(
    soft: u64,
    connections: u64,
    configured: Option<u64>,
    readers: usize,
) -> (u64, u64, u64) {
    let for_tenants = soft.saturating_sub(FD_RESERVE + connections);
    let max_readers = if readers == 0 {
        0
    } else {
        for_tenants / 4 / FDS_PER_READER
    };
    let live = (for_tenants.saturating_sub(max_readers * FDS_PER_READER) / FDS_PER_HANDLE).max(1);
    let fits = (live - live / 10).max(1);
    let budget = match configured {
        Some(n) if n > fits => {
            tracing::warn!(
                configured = n,
                open_files_limit = soft,
                lowered_to = fits,
                "SILO_MAX_OPEN_TENANTS would run out of file descriptors: lowered"
            );
            fits
        }
        Some(n) => n.max(1),
        None => fits.min(DEFAULT_MAX_HANDLES),
    };
    tracing::info!(
        open_files_limit = soft,
        fds_per_tenant = FDS_PER_HANDLE,
        max_open_tenants = budget,
        max_alive = live,
        max_readers,
        "tenant handle cache sized"
    );
    (budget, live.max(budget), max_readers)
}

/// Raises the open-files soft limit to the hard limit and answers it.
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// A quarter of the descriptors for client connections, at most 10,000: the rest is for
/// tenant databases and the catalog.
fn default_max_connections(open_files: u64) -> usize {
    usize::try_from((open_files / 4).clamp(16, 10_000)).unwrap_or(10_000)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
