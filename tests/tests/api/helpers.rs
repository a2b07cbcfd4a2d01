//! The harness: silo on port 0 with a temporary data dir, and typed helpers.
//!
//! Most tests run the server inside the test process (`Application::build` on a runtime of
//! its own, serving a real socket): no process to start, and the same HTTP path. Tests that
//! need what only a process has start the real `silo` binary instead (`spawn_process*`):
//! a crash (`kill9`), an open-files limit, its log (scanned by the secret tests; `TEST_LOG=1`
//! also echoes it at the end of a test), its metrics (the recorder is one per process, so
//! in-process servers would count each other's requests) or its pid. Those helpers refuse
//! to run on an in-process server rather than answer emptily.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// The `silo` binary next to this test binary (target/<profile>/silo), or `SILO_BIN`.
pub fn silo_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SILO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("silo");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the binary)",
        bin.display()
    );
    bin
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::blocking::Client,
    /// Holds data/ (the data dir) and silo.log. Kept across restarts.
    pub dir: tempfile::TempDir,
    /// The master key the server runs with, base64 (the tests know it to forge tokens and
    /// to look for it where it must not be).
    pub master_key: String,
    child: Option<Child>,
    /// The server running in this process, if it runs here.
    embedded: Option<Embedded>,
    /// Run the `silo` binary rather than an in-process server.
    process: bool,
    extra_args: Vec<String>,
    /// Run under this open-files limit (soft and hard), with `prlimit`.
    open_files: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// A response: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        self.body
    }

    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        assert_eq!(
            (self.status, self.error_code()),
            (status, code),
            "body: {}",
            self.body
        );
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.body
        );
        self.body
    }
}

/// A server inside the test process: its own runtime on a thread of its own, stopped
/// gracefully (drain, close tenant databases) by `stop`.
struct Embedded {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    fn start(args: Vec<String>) -> (Self, String) {
        use clap::Parser as _;
        let cli = silo_control_plane::config::Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("silo {args:?}: {e}"));
        let silo_control_plane::config::Command::Serve(serve) = cli.command else {
            panic!("not a serve command: {args:?}");
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let app = match silo_control_plane::app::Application::build(*serve).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let addr = app.local_addr().expect("address");
                let _ = addr_tx.send(Ok(format!("http://{addr}")));
                if let Err(e) = app
                    .run_until(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                {
                    eprintln!("in-process silo stopped with: {e:#}");
                }
            });
        });
        let base = match addr_rx.recv() {
            Ok(Ok(base)) => base,
            Ok(Err(e)) => panic!("silo did not start: {e}"),
            Err(_) => panic!("silo did not start (its thread ended)"),
        };
        (
            Embedded {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            base,
        )
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl TestApp {
    pub fn spawn() -> Self {
        Self::spawn_with(&[])
    }

    /// The real `silo` binary, for tests that need a process (see the module doc).
    pub fn spawn_process() -> Self {
        Self::spawn_process_with(&[])
    }

    /// The real `silo` binary with extra `serve` arguments.
    pub fn spawn_process_with(extra_args: &[&str]) -> Self {
        let mut app = Self::unstarted(extra_args);
        app.process = true;
        app.start();
        app
    }

    #[track_caller]
    fn require_process(&self, what: &str) {
        assert!(
            self.process,
            "{what} needs the silo binary: start this test's server with TestApp::spawn_process*"
        );
    }

    /// Runs `silo init` on a fresh data dir, then starts the server. Returns the app and
    /// the admin token `init` printed (alone on its last line).
    pub fn spawn_initialized(extra_args: &[&str]) -> (Self, String) {
        Self::initialized(extra_args, false)
    }

    /// As [`Self::spawn_initialized`], with the server as the real `silo` binary.
    pub fn spawn_initialized_process(extra_args: &[&str]) -> (Self, String) {
        Self::initialized(extra_args, true)
    }

    fn initialized(extra_args: &[&str], process: bool) -> (Self, String) {
        let mut app = Self::unstarted(extra_args);
        app.process = process;
        // The key the server will run with: the catalog is encrypted under it.
        let out = Command::new(silo_bin())
            .arg("init")
            .arg("--data-dir")
            .arg(app.data_dir())
            .env("SILO_MASTER_KEY", &app.master_key)
            .output()
            .expect("run silo init");
        assert!(
            out.status.success(),
            "silo init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let token = stdout
            .lines()
            .last()
            .expect("a last line")
            .trim()
            .to_owned();
        assert!(token.starts_with("silo_admin_"), "{stdout}");
        app.start();
        (app, token)
    }

    /// Runs the `silo` CLI against this server with `token` (exit code, stdout, stderr).
    pub fn cli(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(silo_bin())
            .args(args)
            .env("SILO_SERVER", &self.base)
            .env("SILO_ADMIN_TOKEN", token)
            .output()
            .expect("run the silo CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI with `--json`, expects success, returns the parsed output.
    #[track_caller]
    pub fn cli_json(&self, token: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.cli(token, &all);
        assert_eq!(code, 0, "silo {args:?}: {err}\n{out}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("silo {args:?} printed no JSON ({e}): {out}"))
    }

    /// The tenant's DB token in clear, recovered as silo does it, from the catalog row.
    pub fn db_token(&self, tenant_id: &str) -> Vec<u8> {
        use secrecy::ExposeSecret;
        let (db_id, sealed): (String, Vec<u8>) = self
            .catalog()
            .query_row(
                "SELECT db_id, db_token FROM tenants WHERE id = ?1",
                [tenant_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("tenant row");
        let ring = silo_crypto::Keyring::new(
            silo_crypto::MasterKey::from_base64(&self.master_key).expect("key"),
            vec![],
        );
        let ctx = silo_crypto::EnvelopeContext {
            tenant: tenant_id,
            purpose: "db-token",
            binding: &db_id,
        };
        ring.open(ctx, &sealed)
            .expect("envelope opens")
            .expose_secret()
            .clone()
    }

    /// Starts silo under an open-files limit of `limit` (soft and hard: silo cannot raise it).
    pub fn spawn_with_open_files_limit(limit: u64, extra_args: &[&str]) -> Self {
        let mut app = Self::unstarted(extra_args);
        app.process = true;
        app.open_files = Some(limit);
        app.start();
        app
    }

    /// Starts silo with extra `serve` arguments.
    pub fn spawn_with(extra_args: &[&str]) -> Self {
        let mut app = Self::unstarted(extra_args);
        app.start();
        app
    }

    fn unstarted(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let master_key =
            base64::engine::general_purpose::STANDARD.encode(silo_crypto::random_bytes::<32>());
        TestApp {
            base: String::new(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .user_agent("silo-e2e")
                .build()
                .expect("http client"),
            dir,
            master_key,
            child: None,
            embedded: None,
            process: false,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            open_files: None,
        }
    }

    /// The server's process id (to count its open file descriptors).
    #[track_caller]
    pub fn pid(&self) -> u32 {
        self.require_process("pid()");
        self.child.as_ref().expect("server running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("silo.log")
    }

    #[track_caller]
    pub fn logs(&self) -> Vec<u8> {
        self.require_process("logs()");
        std::fs::read(self.log_path()).unwrap_or_default()
    }

    /// The log once it holds `needle` (logs are written by a background thread, a moment
    /// after the event); panics with the log after 10 s without it.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = String::from_utf8_lossy(&self.logs()).into_owned();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn tenant_db_path(&self, tenant_id: &str) -> PathBuf {
        self.data_dir()
            .join("tenants")
            .join(format!("{tenant_id}.db"))
    }

    /// Starts (or restarts) the server on the same data dir and waits for its address.
    pub fn start(&mut self) {
        self.start_with(&self.extra_args.clone());
    }

    pub fn start_with(&mut self, args: &[String]) {
        // The suite signs up and signs in hundreds of times from 127.0.0.1: the
        // per-address limits are off unless a test sets them.
        let mut args = args.to_vec();
        for flag in ["--auth-rate-limit", "--signup-rate-limit"] {
            if !args.iter().any(|a| a == flag) {
                args.extend([flag.to_owned(), "0".to_owned()]);
            }
        }
        let args = &args[..];
        if !self.process {
            let mut all: Vec<String> = ["silo", "serve", "--listen", "127.0.0.1:0", "--data-dir"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            all.push(self.data_dir().display().to_string());
            all.push("--master-key".to_owned());
            all.push(self.master_key.clone());
            all.extend(args.iter().cloned());
            let (embedded, base) = Embedded::start(all);
            self.embedded = Some(embedded);
            self.base = base;
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        // prlimit sets the limit and then execs silo: same process, same pid.
        let mut command = match self.open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(silo_bin());
                c
            }
            None => Command::new(silo_bin()),
        };
        let mut child = command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .args(args)
            .env("SILO_MASTER_KEY", &self.master_key)
            .env(
                "SILO_LOG",
                "info,silo_control_plane=debug,silo_tenant_runtime=debug",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start silo");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read silo's stdout");
        let Some(addr) = line.trim().strip_prefix("silo listening on ") else {
            let _ = child.kill();
            panic!(
                "silo did not start: {line:?}\n{}",
                String::from_utf8_lossy(&self.logs())
            );
        };
        self.base = addr.to_owned();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up, as in a crash or power loss of the process.
    #[track_caller]
    pub fn kill9(&mut self) {
        self.require_process("kill9()");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut embedded) = self.embedded.take() {
            embedded.stop();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().expect("send request");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// POSTs raw bytes, for malformed-input tests.
    pub fn post_raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().expect("send request");
        let status = resp.status().as_u16();
        Resp {
            status,
            body: serde_json::from_str(&resp.text().unwrap_or_default()).unwrap_or(Value::Null),
        }
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::POST, path, token, Some(&body))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, token, None)
    }

    pub fn try_signup(&self, org: &str, email: &str, password: &str) -> Resp {
        self.post(
            "/v1/signup",
            None,
            json!({ "org": org, "email": email, "password": password }),
        )
    }

    pub fn signup(&self, org: &str) -> Tenant {
        let email = format!(
            "owner-{}@{}.example.com",
            hex::encode(silo_crypto::random_bytes::<4>()),
            org.to_lowercase()
        );
        let password = format!("pw-{}", hex::encode(silo_crypto::random_bytes::<8>()));
        let body = self.try_signup(org, &email, &password).expect(201);
        // Read as the API's type: a renamed or retyped field fails here.
        let answer: silo_api::SignupAnswer =
            serde_json::from_value(body).expect("signup answers a SignupAnswer");
        Tenant {
            id: answer.tenant.id,
            user_id: answer.user.id,
            email,
            password,
            access_token: answer.tokens.access_token,
            refresh_token: answer.tokens.refresh_token,
        }
    }

    /// Invites a new person with `role` into the tenant of `inviter` and accepts: returns
    /// them signed in.
    pub fn add_member(&self, inviter: &Tenant, role: &str) -> Tenant {
        let email = format!(
            "{role}-{}@example.com",
            hex::encode(silo_crypto::random_bytes::<4>())
        );
        let invite = self
            .post(
                "/v1/invites",
                Some(&inviter.access_token),
                json!({ "email": email, "role": role }),
            )
            .expect(201);
        let password = format!("pw-{}", hex::encode(silo_crypto::random_bytes::<8>()));
        let tokens = self
            .post(
                "/v1/invites/accept",
                None,
                json!({ "invite_token": invite["invite_token"], "password": password }),
            )
            .expect(201);
        let me = self
            .get("/v1/me", tokens["access_token"].as_str())
            .expect(200);
        assert_eq!(me["role"], json!(role));
        Tenant {
            id: inviter.id.clone(),
            user_id: me["user"]["id"].as_str().expect("user id").to_owned(),
            email,
            password,
            access_token: tokens["access_token"].as_str().expect("access").to_owned(),
            refresh_token: tokens["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// Creates an API key with `scopes` (and any extra fields) as `user`; returns (id, key).
    pub fn create_key(&self, user: &Tenant, scopes: &[&str], extra: Value) -> (String, String) {
        let mut body = json!({ "name": "test key", "scopes": scopes });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let created = self
            .post("/v1/api-keys", Some(&user.access_token), body)
            .expect(201);
        (
            created["id"].as_str().expect("id").to_owned(),
            created["key"].as_str().expect("key").to_owned(),
        )
    }

    /// `GET /metrics`, as text (the server runs without a metrics token unless told).
    #[track_caller]
    pub fn metrics(&self) -> String {
        self.require_process("metrics()");
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .and_then(|r| r.text())
            .expect("metrics")
    }

    pub fn query(&self, token: &str, sql: &str) -> Resp {
        self.post("/v1/db/query", Some(token), json!({ "sql": sql }))
    }

    pub fn query_with(&self, token: &str, sql: &str, params: Value) -> Resp {
        self.post(
            "/v1/db/query",
            Some(token),
            json!({ "sql": sql, "params": params }),
        )
    }

    pub fn batch(&self, token: &str, statements: Value) -> Resp {
        self.post(
            "/v1/db/batch",
            Some(token),
            json!({ "statements": statements }),
        )
    }

    /// Opens the catalog directly (the server should be stopped for writes), keyed as the
    /// server keys it: SQLCipher, under a key derived from the master key.
    pub fn catalog(&self) -> rusqlite::Connection {
        let conn =
            rusqlite::Connection::open(self.data_dir().join("catalog.db")).expect("open catalog");
        let keyring = silo_crypto::Keyring::new(
            silo_crypto::MasterKey::from_base64(&self.master_key).expect("key"),
            vec![],
        );
        let key = keyring
            .derive_key(keyring.primary_id(), "catalog-db")
            .expect("catalog key");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\";",
            hex::encode(secrecy::ExposeSecret::expose_secret(&key))
        ))
        .expect("key the catalog");
        conn
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut embedded) = self.embedded.take() {
            embedded.stop();
        }
        if self.process && std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&self.logs()));
        }
    }
}

/// True if `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
