//! Who is calling: passwords (argon2id), access tokens (JWT), refresh tokens, and the
//! [`Principal`] extractor that turns a bearer credential into exactly one tenant.
//!
//! The tenant of a request comes from its credential and nothing else: no route takes a
//! tenant id from the URL, the body or a header for tenant data.

use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::MatchedPath;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use silo_crypto::Keyring;
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::{AccessLevel, TenantId};

use crate::catalog::{Catalog, now_unix};
use crate::error::ApiError;

use crate::FastHash;

/// Access tokens live 15 minutes (the contract's figure).
pub const ACCESS_TOKEN_TTL_SECS: i64 = 15 * 60;
/// Refresh tokens live 7 days after their session's last use.
pub const REFRESH_TOKEN_TTL_SECS: i64 = 7 * 24 * 60 * 60;
/// Clock skew tolerated when checking `exp` and `nbf` (jsonwebtoken's default is 60 s).
const JWT_LEEWAY_SECS: u64 = 30;
const JWT_ISSUER: &str = "silo";
const JWT_AUDIENCE: &str = "silo-api";
const JWT_TYPE_ACCESS: &str = "access";
/// Prefix of refresh tokens, so a leaked one is recognisable (e.g. by secret scanners).
pub const REFRESH_TOKEN_PREFIX: &str = "silo_rt_";

/// Defined in `silo-types`; re-exported where the control plane has always found them.
pub use silo_types::{Role, Scope};

// --- passwords ---

/// argon2id with the OWASP-recommended parameters (19 MiB, 2 passes, 1 lane), which are
/// the crate's defaults. Slow on purpose (~30 ms): call on a blocking thread.
pub fn hash_password(password: &SecretString) -> anyhow::Result<String> {
    let hash = Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map_err(|e| anyhow::anyhow!("hash password: {e}"))?;
    Ok(hash.to_string())
}

/// Checks a password against a stored hash. For an unknown account pass `None`: the same
/// work is done against a fixed dummy hash, so the answer takes as long whether or not the
/// email exists.
pub fn verify_password(stored_hash: Option<&str>, password: &SecretString) -> bool {
    let candidate: &str = match stored_hash {
        Some(h) => h,
        None => dummy_hash(),
    };
    let ok = Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), candidate)
        .is_ok();
    ok && stored_hash.is_some()
}

/// The hash unknown accounts are checked against. Computed once; call [`warm_up`] at
/// start-up so the first unknown-email login is not the one that pays for it.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&SecretString::from("silo-dummy-password".to_owned())).unwrap_or_default()
    })
}

/// Precomputes what login needs. Blocking (one argon2 hash).
pub fn warm_up() {
    dummy_hash();
}

// --- access tokens ---

/// The claims of an access token. Everything a request needs to find its session again;
/// the role is informative only (it is re-read from the catalog on every request).
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Session id (revocation by session).
    pub sid: String,
    /// The user's session version when the session began.
    pub sv: i64,
    pub role: Role,
    /// Token id.
    pub jti: String,
    pub typ: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Signs and verifies access tokens: HS256 with keys derived from the master keys, one per
/// master key, named by `kid`. The primary master key's signs; every configured one
/// verifies, so rotating the master key does not sign anybody out.
pub struct TokenKeys {
    primary_kid: String,
    keys: Vec<(String, EncodingKey, DecodingKey)>,
    validation: Validation,
    /// Tokens whose signature, header and claims checked out, with their claims. The keys
    /// are fixed for the life of the process, so a token that verified once verifies again:
    /// only the clock checks (`exp`, `nbf`) are redone on each use. Without it, every request
    /// decodes the header twice and the claims twice, and computes an HMAC. Only tokens we
    /// signed can enter, and each leaves when it expires.
    verified: moka::sync::Cache<String, Arc<VerifiedToken>, FastHash>,
}

/// An access token that checked out, as the cache keeps it.
pub struct VerifiedToken {
    pub claims: AccessClaims,
    /// `claims.tid`, read once.
    pub tenant: TenantId,
    /// The token's session row as last read: a request with the same token while the row's
    /// stamp is current needs no other lookup (see [`CredentialCache`] for why that changes
    /// no answer).
    session: parking_lot::Mutex<Option<Arc<crate::catalog::SessionRow>>>,
}

impl VerifiedToken {
    fn new(claims: AccessClaims) -> Option<Self> {
        Some(VerifiedToken {
            tenant: claims.tid.parse().ok()?,
            claims,
            session: parking_lot::Mutex::new(None),
        })
    }

    fn current_session(
        &self,
        catalog: &crate::catalog::Catalog,
    ) -> Option<Arc<crate::catalog::SessionRow>> {
        let slot = self.session.lock();
        slot.as_ref()
            .filter(|row| catalog.is_current(&row.stamp))
            .cloned()
    }

    fn remember_session(&self, row: Arc<crate::catalog::SessionRow>) {
        *self.session.lock() = Some(row);
    }
}

impl TokenKeys {
    pub fn from_keyring(keyring: &Keyring) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for id in keyring.key_ids() {
            let secret = keyring.derive_key(id, "jwt-signing/hs256")?;
            keys.push((
                format!("k-{id}"),
                EncodingKey::from_secret(secret.expose_secret()),
                DecodingKey::from_secret(secret.expose_secret()),
            ));
        }
        // Pinned: only HS256 is accepted, whatever the token's header says.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[JWT_ISSUER]);
        validation.set_audience(&[JWT_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        Ok(TokenKeys {
            primary_kid: format!("k-{}", keyring.primary_id()),
            keys,
            validation,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(
                    ACCESS_TOKEN_TTL_SECS.unsigned_abs() + JWT_LEEWAY_SECS,
                ))
                .build_with_hasher(FastHash::default()),
        })
    }

    pub fn issue(
        &self,
        user_id: &str,
        tenant: TenantId,
        session_id: &str,
        sv: i64,
        role: Role,
    ) -> anyhow::Result<SecretString> {
        let now = now_unix();
        let claims = AccessClaims {
            iss: JWT_ISSUER.to_owned(),
            aud: JWT_AUDIENCE.to_owned(),
            sub: user_id.to_owned(),
            tid: tenant.to_string(),
            sid: session_id.to_owned(),
            sv,
            role,
            jti: hex::encode(silo_crypto::random_bytes::<16>()),
            typ: JWT_TYPE_ACCESS.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ACCESS_TOKEN_TTL_SECS,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.primary_kid.clone());
        let key = &self
            .keys
            .iter()
            .find(|(kid, ..)| *kid == self.primary_kid)
            .expect("the primary key is always in the list")
            .1;
        Ok(jsonwebtoken::encode(&header, &claims, key)?.into())
    }

    /// Checks signature, algorithm, `kid`, `exp`/`nbf` (30 s leeway), issuer, audience and
    /// token type. Says only "expired" or "invalid": details help attackers, not users.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, ApiError> {
        if let Some(verified) = self.verified.get(token) {
            let claims = &verified.claims;
            // What jsonwebtoken checks of the clock, with the same leeway.
            let now = now_unix();
            let leeway = JWT_LEEWAY_SECS.cast_signed();
            if claims.exp < now - leeway {
                return Err(expired_token());
            }
            if claims.nbf > now + leeway {
                return Err(invalid_token());
            }
            return Ok(verified);
        }
        let verified =
            Arc::new(VerifiedToken::new(self.verify_uncached(token)?).ok_or_else(invalid_token)?);
        self.verified.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let invalid = ApiError::Unauthenticated("the access token is not valid; sign in again");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid);
        }
        let kid = header.kid.ok_or_else(invalid_token)?;
        let key = &self
            .keys
            .iter()
            .find(|(k, ..)| *k == kid)
            .ok_or_else(invalid_token)?
            .2;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => expired_token(),
                _ => invalid_token(),
            },
        )?;
        if data.claims.typ != JWT_TYPE_ACCESS {
            return Err(invalid_token());
        }
        Ok(data.claims)
    }
}

fn expired_token() -> ApiError {
    ApiError::Unauthenticated("the access token has expired; get a new one from /v1/auth/refresh")
}

fn invalid_token() -> ApiError {
    ApiError::Unauthenticated("the access token is not valid; sign in again")
}

// --- API keys ---

/// Keys look like `silo_<8-char prefix>_<secret>`: the prefix finds the row, the hash of
/// the whole key is compared in constant time.
pub const API_KEY_PREFIX_LEN: usize = 8;

/// Splits a presented key into its prefix, or `None` if it is not shaped like a key.
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("silo_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == API_KEY_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && secret.len() >= 43)
        .then_some(prefix)
}

/// A new key: its public prefix and the whole key (shown once).
pub fn new_api_key() -> (String, SecretString) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let prefix: String = silo_crypto::random_bytes::<API_KEY_PREFIX_LEN>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    let secret = silo_crypto::random_token("");
    let key = format!("silo_{prefix}_{}", secret.expose_secret());
    (prefix, key.into())
}

// --- the caller ---

/// Who is acting: a signed-in user (one session), or a program holding an API key.
#[derive(Debug, Clone)]
pub enum Actor {
    User {
        session_id: String,
        /// 2FA is on for this user.
        two_factor: bool,
        /// When this session last proved the second factor (unix seconds).
        verified_at: Option<i64>,
    },
    ApiKey {
        key_id: String,
        scopes: Vec<Scope>,
    },
}

/// Routes a member may still use when the tenant requires 2FA and they have none yet.
const ROUTES_WITHOUT_2FA: &[&str] = &[
    "/v1/auth/2fa/enroll",
    "/v1/auth/2fa/confirm",
    "/v1/auth/logout",
    "/v1/me",
];

/// Proof that a request carries a valid credential for exactly one tenant. Handlers that
/// touch tenant data take this, and take the tenant from it alone.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    /// The user, or for an API key the user who made it.
    pub user_id: String,
    pub email: String,
    /// Read fresh from the catalog on this request.
    pub role: Role,
    pub actor: Actor,
}

impl Principal {
    /// Refuses callers below `min`. The first line of every handler that needs a role.
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role does not allow this"))
        }
    }

    /// Sensitive routes (API key creation, role changes, member removal, 2FA removal, and
    /// later export and tenant deletion): a user with 2FA must have proved it within the
    /// last five minutes. Users without 2FA and API keys pass (keys cannot reach these
    /// routes anyway).
    pub fn require_step_up(&self) -> Result<(), ApiError> {
        match &self.actor {
            Actor::User {
                two_factor: true,
                verified_at,
                ..
            } if verified_at
                .is_none_or(|v| now_unix() - v > crate::two_factor::STEP_UP_WINDOW_SECS) =>
            {
                Err(ApiError::StepUpRequired)
            }
            _ => Ok(()),
        }
    }

    /// How this caller is named in the audit log.
    pub fn actor(&self) -> String {
        match &self.actor {
            Actor::User { .. } => format!("user:{}", self.user_id),
            Actor::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
        }
    }

    /// For routes only a person may use (managing members, keys, the session itself).
    pub fn require_user(&self) -> Result<&str, ApiError> {
        match &self.actor {
            Actor::User { session_id, .. } => Ok(session_id),
            Actor::ApiKey { .. } => Err(ApiError::Forbidden(
                "API keys cannot do this; sign in as a user",
            )),
        }
    }

    /// API keys must hold `scope` (users are limited by their role alone).
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        match &self.actor {
            Actor::User { .. } => Ok(()),
            Actor::ApiKey { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Actor::ApiKey { .. } => Err(ApiError::Forbidden(
                "this API key does not have the scope this route needs",
            )),
        }
    }

    /// What the caller's SQL may do: the role's level, and for a key no more than its
    /// strongest `db:*` scope. `None` when a key has no database scope at all.
    pub fn access_level(&self) -> Option<AccessLevel> {
        let by_role = match self.role {
            Role::Viewer => AccessLevel::ReadOnly,
            Role::Member => AccessLevel::ReadWrite,
            Role::Admin | Role::Owner => AccessLevel::Schema,
        };
        match &self.actor {
            Actor::User { .. } => Some(by_role),
            Actor::ApiKey { scopes, .. } => scopes
                .iter()
                .filter_map(|s| match s {
                    Scope::DbAdmin => Some(AccessLevel::Schema),
                    Scope::DbWrite => Some(AccessLevel::ReadWrite),
                    Scope::DbRead => Some(AccessLevel::ReadOnly),
                    Scope::Export | Scope::AuditRead => None,
                })
                .max()
                .map(|by_scope| by_scope.min(by_role)),
        }
    }
}

/// What authenticating a request reads: the token keys, the catalog and the credential
/// cache. Borrowed from the server's state by the HTTP extractor (`http::extract`), so that
/// this module knows nothing of the state.
#[derive(Clone, Copy)]
pub struct Authority<'a> {
    pub tokens: &'a TokenKeys,
    pub catalog: &'a Catalog,
    pub credentials: &'a CredentialCache,
}

impl Authority<'_> {
    /// The principal the request's bearer credential (an access token or an API key)
    /// proves, checked against the catalog (or the cache of it). The tenant is the
    /// credential's; nothing else of the request names it.
    pub async fn authenticate(self, parts: &Parts) -> Result<Principal, ApiError> {
        // Read in place: the credential is not copied (nor left behind in a copy).
        let token = bearer(&parts.headers)?;
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let route = parts.extensions.get::<axum::extract::MatchedPath>();
        self.authenticate_token(token, ip, route.map(MatchedPath::as_str))
            .await
    }

    /// The principal `token` (an access token or an API key) proves, for a request from
    /// `ip` to `route`: the bearer header's, or a WebSocket's `hello`.
    pub async fn authenticate_token(
        self,
        token: &str,
        ip: Option<std::net::IpAddr>,
        route: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let principal = if api_key_prefix(token).is_some() {
            principal_from_api_key(self, token, ip).await?
        } else {
            principal_from_access_token(self, token, route).await?
        };
        tracing::Span::current().record("tenant_id", principal.tenant.hex().as_str());
        Ok(principal)
    }
}

/// A request made with a live platform admin token. Every admin action is attributed to it.
#[derive(Debug, Clone)]
pub struct Admin {
    pub token_id: String,
    pub name: String,
}

impl Admin {
    /// The actor name admin actions are recorded under.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.token_id)
    }

    /// The log line of every admin action (the audit log has the event).
    pub fn log_action(&self, action: silo_types::AuditAction) {
        tracing::info!(admin = %self.token_id, admin_name = %self.name, %action, "admin action");
    }
}

/// Every admin token starts so: told apart from tenant credentials at a glance.
pub const ADMIN_TOKEN_PREFIX: &str = "silo_admin_";

/// The platform admin a request's bearer token proves, or 401. Only `silo_admin_` tokens
/// are looked up; the catalog holds their hashes.
pub async fn authenticate_admin(catalog: &Catalog, parts: &Parts) -> Result<Admin, ApiError> {
    let refused = || {
        ApiError::Unauthenticated(
            "the admin API needs a platform admin token (silo init, silo admin-token create)",
        )
    };
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| t.starts_with(ADMIN_TOKEN_PREFIX))
        .ok_or_else(refused)?;
    let hash = silo_crypto::hash_token(token);
    let (token_id, name) = catalog
        .blocking(move |c| c.admin_token_by_hash(&hash))
        .await?
        .ok_or_else(refused)?;
    tracing::Span::current().record("admin", tracing::field::display(&token_id));
    Ok(Admin { token_id, name })
}

/// Whether a request may read `/metrics`: always without a configured token, else only its
/// bearer (compared in constant time).
pub fn metrics_allowed(expected: Option<&SecretString>, headers: &axum::http::HeaderMap) -> bool {
    match expected {
        None => true,
        Some(expected) => {
            let presented = bearer(headers).unwrap_or("");
            silo_crypto::constant_time_eq(presented.as_bytes(), expected.expose_secret().as_bytes())
        }
    }
}

async fn principal_from_access_token(
    auth: Authority<'_>,
    token: &str,
    route: Option<&str>,
) -> Result<Principal, ApiError> {
    let verified = auth.tokens.verify(token)?;
    let (claims, tenant) = (&verified.claims, verified.tenant);
    let row = match verified.current_session(auth.catalog) {
        Some(row) => row,
        None => {
            metrics::counter!("silo_credential_cache_misses_total", "kind" => "session")
                .increment(1);
            let (sid, sub) = (claims.sid.clone(), claims.sub.clone());
            // Boxed: the catalog's way is rare, and every request's future would otherwise
            // be as large as it.
            let row = Box::pin(
                auth.catalog
                    .blocking(move |c| c.session(&sid, &sub, tenant)),
            )
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(invalid_token)?;
            let row = Arc::new(row);
            // Only what exists is kept: unknown sessions cannot fill the cache.
            verified.remember_session(row.clone());
            row
        }
    };
    if row.revoked
        || row.user_session_version != claims.sv
        || row.session_session_version != claims.sv
        || row.expires_at <= now_unix()
    {
        return Err(ApiError::Unauthenticated(
            "this session has ended; sign in again",
        ));
    }
    tenant_serves(row.tenant_status)?;
    if row.tenant_requires_2fa
        && !row.totp_enabled
        && !route.is_some_and(|r| ROUTES_WITHOUT_2FA.contains(&r))
    {
        return Err(ApiError::Forbidden(
            "this tenant requires two-factor authentication: enroll at /v1/auth/2fa/enroll first",
        ));
    }
    Ok(Principal {
        tenant,
        user_id: claims.sub.clone(),
        email: row.email.clone(),
        role: row.role,
        actor: Actor::User {
            session_id: claims.sid.clone(),
            two_factor: row.totp_enabled,
            verified_at: row.verified_at,
        },
    })
}

/// What the catalog said of recently used credentials, kept only while what it was read
/// from is unchanged: API keys here, and sessions with their access tokens in the
/// verified-token cache ([`VerifiedToken`]). An entry carries the catalog's [`Stamp`] of its
/// read, and any catalog write since that could have changed it (a logout, a role change, a
/// revoked key, a suspension of its tenant; any change to a user, who may belong to several
/// tenants; or any write not known to touch less) makes it stale. So the cache changes no
/// answer: a demotion or revocation still applies to the very next request. What depends on
/// the clock (expiry, the step-up window) is checked on every request, from the cached row.
/// Without it, every request would take a trip to a blocking thread and the catalog's one
/// connection.
///
/// [`Stamp`]: crate::catalog::Stamp
pub struct CredentialCache {
    keys: moka::sync::Cache<String, Arc<CachedKey>, FastHash>,
}

/// An API key as the cache keeps it.
struct CachedKey {
    row: crate::catalog::ApiKeyAuth,
    /// When this process last wrote the key's `last_used_at`. That write makes nothing
    /// stale (no cached fact is read from it), so the row's own copy stays as it was read,
    /// and this says when the next write is due.
    touched: TouchClock,
}

/// When a key's `last_used_at` was last written (unix seconds), and whose turn the next
/// write is.
struct TouchClock(std::sync::atomic::AtomicI64);

impl TouchClock {
    fn new(last_written: Option<i64>) -> Self {
        TouchClock(last_written.unwrap_or(i64::MIN).into())
    }

    /// If a write is due at `now`, claims it for the caller (the others at the same moment
    /// do not wait for it) and answers when the last one was, for
    /// [`TouchClock::unclaim`] should the write fail.
    fn claim(&self, now: i64) -> Option<i64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.0.load(Relaxed);
        (now.saturating_sub(last) >= API_KEY_TOUCH_INTERVAL_SECS
            && self.0.compare_exchange(last, now, Relaxed, Relaxed).is_ok())
        .then_some(last)
    }

    /// The claimed write did not happen: the next request tries again.
    fn unclaim(&self, last: i64) {
        self.0.store(last, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for CredentialCache {
    fn default() -> Self {
        const CAPACITY: u64 = 100_000;
        const TTL: std::time::Duration = std::time::Duration::from_secs(60);
        CredentialCache {
            keys: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build_with_hasher(FastHash::default()),
        }
    }
}

impl CredentialCache {
    async fn api_key(
        &self,
        catalog: &crate::catalog::Catalog,
        prefix: &str,
    ) -> Result<Option<Arc<CachedKey>>, ApiError> {
        if let Some(key) = self.keys.get(prefix)
            && catalog.is_current(&key.row.stamp)
        {
            return Ok(Some(key));
        }
        metrics::counter!("silo_credential_cache_misses_total", "kind" => "api_key").increment(1);
        let lookup = prefix.to_owned();
        let row = Box::pin(catalog.blocking(move |c| c.api_key_by_prefix(&lookup)))
            .await
            .map_err(ApiError::internal)?
            .map(|row| {
                Arc::new(CachedKey {
                    touched: TouchClock::new(row.last_used_at),
                    row,
                })
            });
        if let Some(r) = &row {
            self.keys.insert(prefix.to_owned(), r.clone());
        }
        Ok(row)
    }
}

/// `last_used_at` is written at most this often per key, not on every request.
const API_KEY_TOUCH_INTERVAL_SECS: i64 = 60;

async fn principal_from_api_key(
    auth: Authority<'_>,
    key: &str,
    ip: Option<std::net::IpAddr>,
) -> Result<Principal, ApiError> {
    let invalid =
        || ApiError::Unauthenticated("the API key is not valid, was revoked or has expired");
    let prefix = api_key_prefix(key).ok_or_else(invalid)?;
    let cached = auth.credentials.api_key(auth.catalog, prefix).await?;
    // Hash and compare even when no row matched, so timing does not tell prefixes apart.
    let presented = silo_crypto::hash_token(key);
    let stored = cached
        .as_ref()
        .map_or(&[0u8; 32][..], |k| k.row.key_hash.as_slice());
    let matches = silo_crypto::constant_time_eq(&presented, stored);
    let cached = cached.filter(|_| matches).ok_or_else(invalid)?;
    let row = &cached.row;
    let now = now_unix();
    if row.revoked || row.expires_at.is_some_and(|e| e <= now) {
        return Err(invalid());
    }
    let role = row.role.ok_or_else(invalid)?;
    tenant_serves(row.tenant_status)?;
    if row.blocked_by_2fa_rule {
        return Err(ApiError::Forbidden(
            "this tenant requires two-factor authentication, and the key's maker has none",
        ));
    }
    if let Some(list) = &row.allowed_ips {
        let nets: Vec<ipnet::IpNet> = serde_json::from_str(list)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("stored allowed_ips: {e}")))?;
        if !ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) {
            return Err(ApiError::Forbidden(
                "this API key may not be used from this address",
            ));
        }
    }
    // Scopes beyond the maker's current role are dropped, not kept for later.
    let scopes: Vec<Scope> = row
        .scopes
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .filter(|s: &Scope| role >= s.min_role())
        .collect();
    if let Some(last) = cached.touched.claim(now) {
        let id = row.id.clone();
        if let Err(e) = Box::pin(auth.catalog.blocking(move |c| c.touch_api_key(&id, now))).await {
            cached.touched.unclaim(last);
            return Err(ApiError::internal(e));
        }
    }
    Ok(Principal {
        tenant: row.tenant,
        user_id: row.user_id.clone(),
        email: row.email.clone(),
        role,
        actor: Actor::ApiKey {
            key_id: row.id.clone(),
            scopes,
        },
    })
}

fn tenant_serves(status: TenantStatus) -> Result<(), ApiError> {
    match status {
        TenantStatus::Active => Ok(()),
        TenantStatus::Suspended | TenantStatus::Deleting => Err(ApiError::TenantSuspended),
        TenantStatus::Provisioning | TenantStatus::Deleted => Err(invalid_token()),
    }
}

/// The bearer credential of a request, borrowed from its header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated(
            "send a credential: Authorization: Bearer <access token or API key>",
        ))?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not valid"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthenticated(
        "use Authorization: Bearer <access token or API key>",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthenticated(
            "use Authorization: Bearer <access token or API key>",
        ));
    }
    Ok(token.trim())
}

/// Shared token machinery, cheap to clone into the state.
pub type SharedTokenKeys = Arc<TokenKeys>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use silo_crypto::MasterKey;

    #[test]
    fn roles_order_from_viewer_to_owner() {
        assert!(
            Role::Owner > Role::Admin && Role::Admin > Role::Member && Role::Member > Role::Viewer
        );
        for r in [Role::Owner, Role::Admin, Role::Member, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
    }

    #[test]
    fn api_keys_have_the_documented_shape() {
        let (prefix, key) = new_api_key();
        assert_eq!(api_key_prefix(key.expose_secret()), Some(prefix.as_str()));
        assert!(key.expose_secret().len() >= "silo_".len() + 8 + 1 + 43);
        for not_a_key in [
            "silo_rt_abc",
            "silo_ABCDEFGH_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "eyJ.x.y",
            "silo_abcdefgh_short",
        ] {
            assert_eq!(api_key_prefix(not_a_key), None, "{not_a_key}");
        }
    }

    #[test]
    fn scopes_parse_and_need_a_role() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert_eq!(Scope::DbRead.min_role(), Role::Viewer);
        assert_eq!(Scope::DbWrite.min_role(), Role::Member);
        assert_eq!(Scope::Export.min_role(), Role::Admin);
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let pw = SecretString::from("correct horse battery".to_owned());
        let hash = hash_password(&pw).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Some(&hash), &pw));
        assert!(!verify_password(
            Some(&hash),
            &SecretString::from("wrong".to_owned())
        ));
        assert!(!verify_password(None, &pw));
    }

    #[test]
    fn verified_tokens_are_remembered_but_the_clock_is_checked_every_time() {
        let keys = TokenKeys::from_keyring(&Keyring::new(MasterKey::generate(), vec![])).unwrap();
        let token = keys
            .issue("u", TenantId::generate(), "s", 1, Role::Owner)
            .unwrap();
        let token = token.expose_secret();
        let first = keys.verify(token).unwrap();
        let again = keys.verify(token).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second use is answered from the cache"
        );
        // A token that differs only in its signature is checked for itself.
        let mut forged = token.to_owned();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.verify(&forged).is_err());
        // The cached claims expire like the token: past `exp` plus the leeway, refused.
        let mut stale = first.claims.clone_for_test();
        stale.exp = now_unix() - JWT_LEEWAY_SECS.cast_signed() - 1;
        let stale = VerifiedToken::new(stale).unwrap();
        keys.verified.insert(token.to_owned(), Arc::new(stale));
        let Err(ApiError::Unauthenticated(msg)) = keys.verify(token) else {
            panic!("an expired token was accepted from the cache")
        };
        assert!(msg.contains("expired"), "{msg}");
        let mut early = first.claims.clone_for_test();
        early.nbf = now_unix() + JWT_LEEWAY_SECS.cast_signed() + 60;
        let early = VerifiedToken::new(early).unwrap();
        keys.verified.insert(token.to_owned(), Arc::new(early));
        assert!(keys.verify(token).is_err());
    }

    impl AccessClaims {
        fn clone_for_test(&self) -> AccessClaims {
            serde_json::from_value(serde_json::to_value(self).unwrap()).unwrap()
        }
    }

    #[test]
    fn tokens_signed_under_a_previous_master_key_still_verify() {
        let old = [3u8; 32];
        let old_ring = Keyring::new(MasterKey::from_bytes(old), vec![]);
        let token = TokenKeys::from_keyring(&old_ring)
            .unwrap()
            .issue("u", TenantId::generate(), "s", 1, Role::Owner)
            .unwrap();
        let rotated = Keyring::new(MasterKey::generate(), vec![MasterKey::from_bytes(old)]);
        assert!(
            TokenKeys::from_keyring(&rotated)
                .unwrap()
                .verify(token.expose_secret())
                .is_ok()
        );
        let unrelated = Keyring::new(MasterKey::generate(), vec![]);
        assert!(
            TokenKeys::from_keyring(&unrelated)
                .unwrap()
                .verify(token.expose_secret())
                .is_err()
        );
    }

    /// A key's last use is written once per interval, by one caller, and again at once if
    /// that write failed.
    #[test]
    fn a_keys_last_use_is_written_once_an_interval() {
        let never = TouchClock::new(None);
        let last = never.claim(1_000).expect("never written: due");
        assert_eq!(never.claim(1_000), None, "claimed already");
        assert_eq!(never.claim(1_000 + API_KEY_TOUCH_INTERVAL_SECS - 1), None);
        never.unclaim(last);
        assert!(
            never.claim(1_001).is_some(),
            "the failed write is due again"
        );
        let read = TouchClock::new(Some(5_000));
        assert_eq!(read.claim(5_030), None, "written 30 s ago, as read");
        assert_eq!(read.claim(5_000 + API_KEY_TOUCH_INTERVAL_SECS), Some(5_000));
    }
}
