//! The operator side of the `silo` command: `init` (offline, on the data dir), and the admin
//! subcommands, which call the admin API over HTTP.
//!
//! Output is an aligned table for people, `--json` for scripts. Exit codes: 0 done, 1 the
//! operation failed (the message says what to do), 2 usage error (from clap).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use silo_api as api;

use crate::catalog::Catalog;

/// How the admin subcommands reach the server.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the silo server.
    #[arg(
        long,
        env = "SILO_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Platform admin token (from `silo init` or `silo admin-token create`).
    #[arg(long, env = "SILO_ADMIN_TOKEN", hide_env_values = true, global = true, value_parser = parse_secret)]
    pub token: Option<SecretString>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

#[derive(Args)]
pub struct InitArgs {
    /// The data directory to initialise (the server must not be running on it).
    #[arg(long, env = "SILO_DATA_DIR", default_value = "./silo-data")]
    pub data_dir: PathBuf,
    /// A name for the first admin token.
    #[arg(long, default_value = "initial")]
    pub name: String,
    /// Master key (base64), as `silo serve` will be given it: the catalog is encrypted
    /// under a key derived from it. Without it (nor a file), one is generated into the data
    /// directory, as `silo serve` would (development only).
    #[arg(long, env = "SILO_MASTER_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub master_key: Option<SecretString>,
    /// File holding the master key.
    #[arg(long, env = "SILO_MASTER_KEY_FILE", conflicts_with = "master_key")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AdminTokenCommand {
    /// Create another platform admin token (printed once, alone on the last line).
    Create {
        /// What the token is for, e.g. "ci" or a person's name.
        #[arg(long)]
        name: String,
    },
    /// List live admin tokens (never the tokens themselves).
    List,
    /// Revoke an admin token by id (the last one cannot be revoked).
    Revoke {
        /// The token's id, from `silo admin-token list`.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and its database.
    Create {
        /// The tenant's name (organisation).
        name: String,
        /// Invite this person as the tenant's owner (the invitation token is printed).
        #[arg(long)]
        owner_email: Option<String>,
        /// Plan name.
        #[arg(long)]
        plan: Option<String>,
    },
    /// List tenants, oldest id first.
    List {
        /// Only tenants with this status (active, suspended, deleting, deleted).
        #[arg(long)]
        status: Option<String>,
        /// Most tenants per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// Show one tenant: placement, size, schema version, last activity.
    Show {
        /// Tenant id.
        id: String,
    },
    /// Suspend a tenant: its users and keys are refused at once.
    Suspend {
        /// Tenant id.
        id: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// Tenant id.
        id: String,
    },
    /// Schedule a tenant for deletion (suspends it at once).
    Delete {
        /// Tenant id.
        id: String,
    },
    /// Export a tenant's data (audited as an admin action, with the reason).
    Export {
        /// Tenant id.
        id: String,
        /// sqlite, sql or csv.
        #[arg(long, default_value = "sql")]
        format: String,
        /// Why (e.g. a support ticket); recorded in the tenant's audit log.
        #[arg(long)]
        reason: String,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Undo a scheduled deletion within its grace period.
    Restore {
        /// Tenant id.
        id: String,
    },
    /// Re-key a tenant's database with a new DB token; the old one stops opening it.
    RotateToken {
        /// Tenant id.
        id: String,
    },
    /// Rebuild a tenant's database without its free pages: deleted data's space goes back to
    /// the disk (reads no rows; audited in the tenant's log).
    Vacuum {
        /// Tenant id.
        id: String,
    },
    /// Put a tenant on another plan (`free`, `pro`, `enterprise`, or one of `--plans`); its
    /// limits apply at once.
    SetPlan {
        /// Tenant id.
        id: String,
        /// The plan's name.
        plan: String,
    },
}

#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Show the tenant migrations and how many tenants each would run on.
    Plan,
    /// Bring every tenant up to the latest migration.
    Apply {
        /// Tenants migrated at once.
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
        /// Migrate this many tenants first, one by one, and stop if any fails.
        #[arg(long, default_value_t = 0)]
        canary: u32,
        /// Start the job and return without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// How many tenants are at each version, the current job, and failures.
    Status,
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Forget an account's failed sign-ins, from every address: its owner can sign in at
    /// once. Recorded in the audit log.
    Unlock {
        /// The account's email address.
        email: String,
    },
}

/// `silo accounts unlock <email>`.
pub fn accounts(args: &ClientArgs, cmd: &AccountsCommand) -> CliResult {
    let c = Client::new(args)?;
    let AccountsCommand::Unlock { email } = cmd;
    let (raw, out): (Value, api::AccountUnlocked) = c.call_as(
        reqwest::Method::POST,
        "/accounts/unlock",
        Some(json!({ "email": email })),
    )?;
    if args.json {
        print_json(&raw);
    } else if out.cleared == 0 {
        println!("{} had no failed sign-ins to forget", out.email);
    } else {
        println!(
            "{}: {} failed sign-in(s) forgotten; it can sign in now",
            out.email, out.cleared
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chains and signed heads: every chain, or one tenant's.
    Verify {
        /// Only this tenant's chain.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `silo audit verify`: exit 0 when every chain checks out, 1 otherwise.
pub fn audit(args: &ClientArgs, cmd: &AuditCommand) -> CliResult {
    let c = Client::new(args)?;
    let AuditCommand::Verify { tenant } = cmd;
    let path = match tenant {
        Some(t) => format!("/audit/verify?tenant={t}"),
        None => "/audit/verify".to_owned(),
    };
    let (raw, out): (Value, api::AuditVerification) =
        c.call_as(reqwest::Method::GET, &path, None)?;
    if args.json {
        print_json(&raw);
    } else {
        let rows: Vec<Vec<String>> = out
            .chains
            .iter()
            .map(|r| {
                vec![
                    r.chain.clone(),
                    if r.ok { "ok" } else { "TAMPERED" }.to_owned(),
                    r.checked.to_string(),
                    opt(r.first_bad_id),
                    opt(r.reason.as_ref()),
                ]
            })
            .collect();
        table(
            &["chain", "result", "events", "first_bad_id", "reason"],
            &rows,
        );
    }
    if out.ok {
        Ok(())
    } else {
        Err(CliError("the audit log failed verification".to_owned()))
    }
}

/// `silo verify-certificate FILE`: checks a deletion certificate's signature with the
/// master key(s) (offline).
#[derive(Args)]
pub struct VerifyCertificateArgs {
    /// The certificate document (JSON, as POST /v1/deletion-certificate returned it).
    pub file: PathBuf,
    /// Data directory (for a generated development master key).
    #[arg(long, env = "SILO_DATA_DIR", default_value = "./silo-data")]
    pub data_dir: PathBuf,
    /// Master key (base64), as given to `silo serve`.
    #[arg(long, env = "SILO_MASTER_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub master_key: Option<SecretString>,
    /// File holding the master key.
    #[arg(long, env = "SILO_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, comma-separated base64.
    #[arg(long, env = "SILO_PREVIOUS_MASTER_KEYS", hide_env_values = true, value_parser = parse_secret)]
    pub previous_master_keys: Option<SecretString>,
}

pub fn verify_certificate(args: &VerifyCertificateArgs) -> CliResult {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError(format!("cannot read {}: {e}", args.file.display())))?;
    let document: Value = serde_json::from_str(&text).map_err(|e| {
        CliError(format!(
            "{} is not a JSON certificate: {e}",
            args.file.display()
        ))
    })?;
    let (keyring, _) = crate::keys::load_keys(
        &args.data_dir,
        args.master_key.as_ref(),
        args.master_key_file.as_deref(),
        args.previous_master_keys.as_ref(),
        false,
    )
    .map_err(|e| CliError(format!("{e:#}")))?;
    if crate::deletion::verify_certificate(&keyring, &document)
        .map_err(|e| CliError(format!("{e:#}")))?
    {
        println!(
            "valid: tenant {} ({}) deleted at {}",
            text_of(&document["certificate"]["tenant_id"]),
            text_of(&document["certificate"]["tenant_name"]),
            text_of(&document["certificate"]["completed_at"])
        );
        Ok(())
    } else {
        Err(CliError(
            "INVALID: the certificate does not match its signature (altered or forged)".to_owned(),
        ))
    }
}

fn text_of(v: &Value) -> String {
    text(v)
}

/// A failed operation: the message for the operator.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

type CliResult<T = ()> = Result<T, CliError>;

/// `silo init`: the first admin token, printed once, alone on the last line.
pub fn init(args: &InitArgs) -> CliResult {
    std::fs::create_dir_all(&args.data_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(args.data_dir.join("silo.lock"))?;
    lock.try_lock().map_err(|_| {
        CliError(format!(
            "a silo server is running on {}: stop it, or use `silo admin-token create` against it",
            args.data_dir.display()
        ))
    })?;
    // A catalog already here is encrypted under its server's key: generating one now would
    // re-encrypt it under a key that server does not have.
    if args.data_dir.join(crate::keys::CATALOG_FILE).exists()
        && args.master_key.is_none()
        && args.master_key_file.is_none()
        && !args.data_dir.join(crate::keys::GENERATED_KEY_FILE).exists()
    {
        return Err(CliError(
            "this data directory already has a catalog, encrypted under the master key its \
             server runs with: give `silo init` that key (SILO_MASTER_KEY or --master-key-file)"
                .to_owned(),
        ));
    }
    let (keyring, _) = crate::keys::load_keys(
        &args.data_dir,
        args.master_key.as_ref(),
        args.master_key_file.as_deref(),
        None,
        true,
    )
    .map_err(|e| CliError(format!("{e:#}")))?;
    let keys = crate::catalog::CatalogKeys::from_keyring(&keyring)?;
    let catalog = Catalog::open(&args.data_dir.join(crate::keys::CATALOG_FILE), &keys)?;
    if catalog.admin_token_count()? > 0 {
        return Err(CliError(
            "this data directory is already initialised; create more tokens with `silo admin-token create`".to_owned(),
        ));
    }
    let (id, token) = crate::service::admin_tokens::mint(&catalog, &args.name)?;
    println!("silo initialised {}", args.data_dir.display());
    println!(
        "admin token {id} ({}) — shown once, keep it in a secret manager:",
        args.name
    );
    println!("{}", token.expose_secret());
    Ok(())
}

/// A small blocking client for the admin API.
struct Client {
    http: reqwest::blocking::Client,
    server: String,
    token: SecretString,
}

impl Client {
    fn new(args: &ClientArgs) -> CliResult<Self> {
        let token = args.token.clone().ok_or_else(|| {
            CliError(
                "no admin token: pass --token or set SILO_ADMIN_TOKEN (from `silo init`)"
                    .to_owned(),
            )
        })?;
        Ok(Client {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            server: args.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// GETs a binary body and copies it to `out`, streaming. Returns the bytes written.
    fn download(&self, path: &str, query: &[(&str, &str)], out: &mut dyn Write) -> CliResult<u64> {
        let url = format!("{}/admin/v1{path}", self.server);
        let mut resp = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(self.token.expose_secret())
            .send()
            .map_err(|e| CliError(format!("cannot reach {}: {e}", self.server)))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: Value =
                serde_json::from_str(&resp.text().unwrap_or_default()).unwrap_or(Value::Null);
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            return Err(CliError(format!("{message} (HTTP {status})")));
        }
        resp.copy_to(out)
            .map_err(|e| CliError(format!("download interrupted: {e}")))
    }

    /// The answer as the server sent it (printed as is by `--json`) and read as its API type
    /// (for tables and exit codes).
    fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> CliResult<(Value, T)> {
        let raw = self.call(method, path, body)?;
        let typed = serde_json::from_value(raw.clone()).map_err(|e| {
            CliError(format!(
                "the server's answer to {path} is not what this CLI reads ({e}); are the server and the CLI the same version?"
            ))
        })?;
        Ok((raw, typed))
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> CliResult<Value> {
        let url = format!("{}/admin/v1{path}", self.server);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .map_err(|e| CliError(format!("cannot reach {}: {e}", self.server)))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"].as_str().unwrap_or(text.as_str());
        let code = body["error"]["code"].as_str().unwrap_or("error");
        Err(CliError(format!(
            "{message} ({code}, HTTP {})",
            status.as_u16()
        )))
    }
}

/// Prints rows as an aligned table: upper-case headers, columns two spaces apart, no
/// borders (easy to read, and to cut with `awk`).
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = std::io::stdout().lock();
    for line in t.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// An optional value as a table cell: `-` when absent.
fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn tenant_row(t: &api::TenantView) -> Vec<String> {
    vec![
        t.id.clone(),
        t.name.clone(),
        t.status.to_string(),
        t.plan.clone(),
        t.db.schema_version.to_string(),
    ]
}

fn tenant_list_rows(tenants: &[api::TenantListItem]) -> Vec<Vec<String>> {
    tenants
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.status.to_string(),
                t.plan.clone(),
                t.schema_version.to_string(),
            ]
        })
        .collect()
}

const TENANT_HEADERS: [&str; 5] = ["id", "name", "status", "plan", "schema"];

pub fn admin_token(args: &ClientArgs, cmd: &AdminTokenCommand) -> CliResult {
    let c = Client::new(args)?;
    match cmd {
        AdminTokenCommand::Create { name } => {
            let (raw, out): (Value, api::AdminTokenCreated) = c.call_as(
                reqwest::Method::POST,
                "/admin-tokens",
                Some(json!({ "name": name })),
            )?;
            if args.json {
                print_json(&raw);
            } else {
                println!("admin token {} ({}) — shown once:", out.id, out.name);
                println!("{}", out.token);
            }
        }
        AdminTokenCommand::List => {
            let (raw, out): (Value, api::AdminTokenList) =
                c.call_as(reqwest::Method::GET, "/admin-tokens", None)?;
            if args.json {
                print_json(&raw);
            } else {
                let rows: Vec<Vec<String>> = out
                    .admin_tokens
                    .iter()
                    .map(|t| vec![t.id.clone(), t.name.clone(), t.created_at.clone()])
                    .collect();
                table(&["id", "name", "created"], &rows);
            }
        }
        AdminTokenCommand::Revoke { id } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/admin-tokens/{id}"),
                None,
            )?;
            if args.json {
                print_json(&json!({ "revoked": id }));
            } else {
                println!("admin token {id} revoked");
            }
        }
    }
    Ok(())
}

pub fn tenants(args: &ClientArgs, cmd: &TenantsCommand) -> CliResult {
    let c = Client::new(args)?;
    let show = |(raw, view): &(Value, api::TenantView)| {
        if args.json {
            print_json(raw);
        } else {
            table(&TENANT_HEADERS, &[tenant_row(view)]);
        }
    };
    match cmd {
        TenantsCommand::Create {
            name,
            owner_email,
            plan,
        } => {
            let out: (Value, api::TenantView) = c.call_as(
                reqwest::Method::POST,
                "/tenants",
                Some(json!({ "name": name, "owner_email": owner_email, "plan": plan })),
            )?;
            show(&out);
            if !args.json
                && let Some(t) = &out.1.owner_invite_token
            {
                println!(
                    "owner invitation token (shown once; the owner accepts it at POST /v1/invites/accept):"
                );
                println!("{t}");
            }
        }
        TenantsCommand::List { status, limit, all } => {
            let mut tenants = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/tenants?limit={limit}");
                if let Some(s) = status {
                    path.push_str(&format!("&status={s}"));
                }
                if let Some(a) = &after {
                    path.push_str(&format!("&after={a}"));
                }
                let (_, page): (Value, api::TenantList) =
                    c.call_as(reqwest::Method::GET, &path, None)?;
                tenants.extend(page.tenants);
                after = page.next;
                if !*all || after.is_none() {
                    break;
                }
            }
            if args.json {
                print_json(&json!({ "tenants": tenants, "next": after }));
            } else {
                table(&TENANT_HEADERS, &tenant_list_rows(&tenants));
                if let Some(a) = after {
                    println!("(more: --all, or the next page starts after {a})");
                }
            }
        }
        TenantsCommand::Show { id } => {
            let (raw, out): (Value, api::TenantView) =
                c.call_as(reqwest::Method::GET, &format!("/tenants/{id}"), None)?;
            if args.json {
                print_json(&raw);
            } else {
                let rows = [
                    ("id", out.id.clone()),
                    ("name", out.name.clone()),
                    ("status", out.status.to_string()),
                    ("plan", out.plan.clone()),
                    ("placement", out.db.placement.clone()),
                    ("size_bytes", opt(out.db.size_bytes)),
                    ("schema_version", out.db.schema_version.to_string()),
                    ("members", out.members.to_string()),
                    ("last_activity", opt(out.last_activity_at.as_ref())),
                    ("created", out.created_at.clone()),
                    (
                        "migration_failure",
                        opt(out.migration_failure.as_ref().map(|f| &f.error)),
                    ),
                ];
                table(
                    &["field", "value"],
                    &rows
                        .iter()
                        .map(|(k, v)| vec![(*k).to_owned(), v.clone()])
                        .collect::<Vec<_>>(),
                );
            }
        }
        TenantsCommand::Suspend { id } => show(&c.call_as(
            reqwest::Method::POST,
            &format!("/tenants/{id}/suspend"),
            None,
        )?),
        TenantsCommand::Resume { id } => show(&c.call_as(
            reqwest::Method::POST,
            &format!("/tenants/{id}/resume"),
            None,
        )?),
        TenantsCommand::Delete { id } => {
            let out: (Value, api::TenantView) =
                c.call_as(reqwest::Method::DELETE, &format!("/tenants/{id}"), None)?;
            show(&out);
            if !args.json {
                println!(
                    "scheduled for deletion after unix time {}; certificate token (shown once; POST /v1/deletion-certificate):",
                    opt(out.1.delete_after)
                );
                println!("{}", opt(out.1.certificate_token.as_ref()));
            }
        }
        TenantsCommand::Export {
            id,
            format,
            reason,
            output,
        } => {
            let query = [("format", format.as_str()), ("reason", reason.as_str())];
            let path = format!("/tenants/{id}/export");
            let written = match output {
                Some(file) => {
                    let mut f = std::fs::File::create(file)
                        .map_err(|e| CliError(format!("cannot create {}: {e}", file.display())))?;
                    c.download(&path, &query, &mut f)?
                }
                None => c.download(&path, &query, &mut std::io::stdout().lock())?,
            };
            if output.is_some() {
                eprintln!("exported {written} bytes");
            }
        }
        TenantsCommand::Vacuum { id } => {
            let (raw, out): (Value, api::Vacuumed) = c.call_as(
                reqwest::Method::POST,
                &format!("/tenants/{id}/vacuum"),
                None,
            )?;
            if args.json {
                print_json(&raw);
            } else {
                println!(
                    "tenant {id}: {} bytes -> {} bytes",
                    out.size_bytes_before, out.size_bytes_after
                );
            }
        }
        TenantsCommand::SetPlan { id, plan } => show(&c.call_as(
            reqwest::Method::POST,
            &format!("/tenants/{id}/plan"),
            Some(json!({ "plan": plan })),
        )?),
        TenantsCommand::Restore { id } => show(&c.call_as(
            reqwest::Method::POST,
            &format!("/tenants/{id}/restore"),
            None,
        )?),
        TenantsCommand::RotateToken { id } => {
            let out = c.call(
                reqwest::Method::POST,
                &format!("/tenants/{id}/rotate-db-token"),
                None,
            )?;
            if args.json {
                print_json(&out);
            } else {
                println!(
                    "tenant {id}: DB token rotated; the old token no longer opens the database"
                );
            }
        }
    }
    Ok(())
}

fn versions_rows(versions: &std::collections::BTreeMap<String, i64>) -> Vec<Vec<String>> {
    versions
        .iter()
        .map(|(v, n)| vec![v.clone(), n.to_string()])
        .collect()
}

fn print_failures(failures: &[api::MigrationFailure]) {
    if !failures.is_empty() {
        println!();
        println!("failed tenants (left at their previous version):");
        table(
            &["tenant", "version", "error"],
            &failures
                .iter()
                .map(|f| vec![f.tenant_id.clone(), f.version.to_string(), f.error.clone()])
                .collect::<Vec<_>>(),
        );
    }
}

pub fn migrate(args: &ClientArgs, cmd: &MigrateCommand) -> CliResult {
    let c = Client::new(args)?;
    match cmd {
        MigrateCommand::Plan => {
            let (raw, out): (Value, api::MigrationPlan) =
                c.call_as(reqwest::Method::GET, "/migrations/plan", None)?;
            if args.json {
                print_json(&raw);
            } else {
                println!("latest tenant migration: {}", out.latest_version);
                let rows: Vec<Vec<String>> = out
                    .pending
                    .iter()
                    .map(|p| vec![p.version.to_string(), p.name.clone(), p.tenants.to_string()])
                    .collect();
                if rows.is_empty() {
                    println!("every tenant is up to date");
                } else {
                    table(&["version", "migration", "tenants"], &rows);
                }
            }
        }
        MigrateCommand::Status => {
            let (raw, out): (Value, api::MigrationStatus) =
                c.call_as(reqwest::Method::GET, "/migrations/status", None)?;
            if args.json {
                print_json(&raw);
            } else {
                println!("latest tenant migration: {}", out.latest_version);
                table(&["version", "tenants"], &versions_rows(&out.versions));
                print_failures(&out.failures);
            }
            if !out.failures.is_empty() {
                return Err(CliError(
                    "some tenants failed their last migration".to_owned(),
                ));
            }
        }
        MigrateCommand::Apply {
            concurrency,
            canary,
            no_wait,
        } => {
            let (raw, started): (Value, api::MigrationStarted) = c.call_as(
                reqwest::Method::POST,
                "/migrations/apply",
                Some(json!({ "concurrency": concurrency, "canary": canary })),
            )?;
            if *no_wait {
                if args.json {
                    print_json(&raw);
                } else {
                    println!(
                        "migration job {} started for {} tenants",
                        started.job.id, started.job.total
                    );
                }
                return Ok(());
            }
            let job_id = started.job.id;
            let total = u64::try_from(started.job.total).unwrap_or(u64::MAX);
            // A bar for people at a terminal; nothing for scripts and logs.
            let bar = if !args.json && std::io::stderr().is_terminal() {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (raw, status, job) = loop {
                let (raw, status): (Value, api::MigrationStatus) =
                    c.call_as(reqwest::Method::GET, "/migrations/status", None)?;
                let Some(job) = status.job.clone().filter(|j| j.id == job_id) else {
                    return Err(CliError(
                        "another migration job replaced this one".to_owned(),
                    ));
                };
                bar.set_position(u64::try_from(job.done + job.failed).unwrap_or(u64::MAX));
                bar.set_message(format!(
                    "done {}, failed {}, remaining {}",
                    job.done, job.failed, job.remaining
                ));
                if job.state != "running" {
                    break (raw, status, job);
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            bar.finish_and_clear();
            if args.json {
                print_json(&raw);
            } else {
                println!(
                    "migration {}: {} tenants, {} done, {} failed, {} not attempted (target version {})",
                    job.state, job.total, job.done, job.failed, job.remaining, job.target_version,
                );
                print_failures(&status.failures);
            }
            if job.state == "canary_failed" {
                return Err(CliError(
                    "a canary tenant failed; nothing else was migrated".to_owned(),
                ));
            }
            if job.failed > 0 {
                return Err(CliError(
                    "some tenants failed; fix them and run `silo migrate apply` again".to_owned(),
                ));
            }
        }
    }
    Ok(())
}
