//! The admin API for platform operators: `/admin/v1/*`. Authenticated with platform admin
//! tokens only. Operators manage tenants; no route here returns a tenant's rows.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use silo_api as api;

use crate::service::admin_tokens;
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Role;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::sessions::{normalize_email, validate_org};
use crate::state::AppState;

/// Prefix of platform admin tokens.
const OWNER_INVITE_TTL_SECS: i64 = 7 * 24 * 60 * 60;

/// A request made with a live platform admin token. Every admin action is attributed to it.
#[derive(Debug, Clone)]
pub struct Admin {
    pub token_id: String,
    pub name: String,
}

impl Admin {
    /// The actor name admin actions are recorded under.
    fn actor(&self) -> String {
        format!("admin:{}", self.token_id)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = || {
            ApiError::Unauthenticated(
                "the admin API needs a platform admin token (silo init, silo admin-token create)",
            )
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| secrecy::SecretString::from(t.trim().to_owned()))
            .ok_or_else(refused)?;
        if !token
            .expose_secret()
            .starts_with(admin_tokens::ADMIN_TOKEN_PREFIX)
        {
            return Err(refused());
        }
        let hash = silo_crypto::hash_token(token.expose_secret());
        let (token_id, name) = state
            .catalog
            .blocking(move |c| c.admin_token_by_hash(&hash))
            .await?
            .ok_or_else(refused)?;
        tracing::Span::current().record("admin", tracing::field::display(&token_id));
        Ok(Admin { token_id, name })
    }
}

fn parse_tenant(id: &str) -> ApiResult<TenantId> {
    id.parse()
        .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))
}

/// An audit record of an admin action, attributed to the admin token.
fn admin_event(
    admin: &Admin,
    meta: &RequestMeta,
    tenant: Option<TenantId>,
    action: AuditAction,
    target: String,
) -> AuditRecord {
    AuditRecord::new(tenant, admin.actor(), action, meta).target(target)
}

/// Records an admin action in the audit log: the tenant's chain, or the platform's.
async fn record(state: &AppState, admin: &Admin, rec: AuditRecord) -> ApiResult<()> {
    admin.log_action(rec.action);
    state.audit(rec).await
}

impl Admin {
    /// The log line of every admin action (the audit log has the event).
    fn log_action(&self, action: AuditAction) {
        tracing::info!(admin = %self.token_id, admin_name = %self.name, %action, "admin action");
    }
}

async fn tenant_view(state: &AppState, tenant: TenantId) -> ApiResult<api::TenantView> {
    let placement = state.provisioner.placement().clone();
    let (summary, (members, last_activity), failures, size) = state
        .catalog
        .blocking(move |c| {
            Ok((
                c.tenant_summary(tenant)?,
                c.tenant_activity(tenant)?,
                c.migration_failures()?,
                placement.size_bytes(tenant),
            ))
        })
        .await?;
    let summary = summary.ok_or_else(|| ApiError::NotFound("no such tenant".to_owned()))?;
    let failure = failures.into_iter().find(|f| f.tenant_id == summary.id);
    Ok(api::TenantView {
        id: summary.id,
        name: summary.name,
        status: summary.status,
        plan: summary.plan,
        created_at: summary.created_at,
        db: api::DbView {
            placement: summary.placement,
            size_bytes: Some(size),
            schema_version: summary.schema_version,
        },
        members,
        last_activity_at: last_activity,
        migration_failure: failure.map(|f| api::MigrationFailure {
            tenant_id: f.tenant_id,
            version: f.version,
            error: f.error,
            at: f.at,
        }),
        owner_invite_token: None,
        delete_after: None,
        certificate_token: None,
    })
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /admin/v1/tenants?status=&limit=&after=`: ordered by id; `next` is the cursor.
pub(crate) async fn handle_admin_tenants_list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<api::TenantList>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TenantStatus>().map_err(|_| {
                ApiError::InvalidInput(
                    "status is one of active, suspended, deleting, deleted".to_owned(),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidInput(
            "limit must be between 1 and 1000".to_owned(),
        ));
    }
    let tenants = state
        .catalog
        .blocking(move |c| c.list_tenants(status, q.after.as_deref(), limit))
        .await?;
    let next = (tenants.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| tenants.last().map(|t| t.id.clone()))
        .flatten();
    Ok(Json(api::TenantList {
        tenants: tenants
            .into_iter()
            .map(|t| api::TenantListItem {
                id: t.id,
                name: t.name,
                status: t.status,
                plan: t.plan,
                placement: t.placement,
                schema_version: t.schema_version,
                created_at: t.created_at,
            })
            .collect(),
        next,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTenant {
    name: String,
    owner_email: Option<String>,
    plan: Option<String>,
}

/// `POST /admin/v1/tenants`: a tenant and its database; with `owner_email`, an owner
/// invitation (`owner_invite_token`, shown once) for that person.
pub(crate) async fn handle_admin_tenant_create(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<api::TenantView>)> {
    let name = validate_org(&req.name)?;
    let plan = req.plan.unwrap_or_else(|| "free".to_owned());
    if plan.is_empty()
        || plan.len() > 32
        || !plan
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ApiError::InvalidInput(
            "plan is 1 to 32 characters of a-z, 0-9, - and _".to_owned(),
        ));
    }
    let owner = req
        .owner_email
        .as_deref()
        .map(normalize_email)
        .transpose()?;
    let (n, p) = (name.clone(), plan.clone());
    let tenant = state
        .provision_tenant(move |catalog, tenant, db_id, sealed| {
            catalog
                .insert_tenant_intent(tenant, &n, &p, db_id, sealed)
                .map_err(ApiError::from)
        })
        .await?;
    let mut body = tenant_view(&state, tenant).await?;
    if let Some(email) = owner {
        let token = silo_crypto::random_token("silo_inv_");
        let hash = silo_crypto::hash_token(token.expose_secret());
        state
            .catalog
            .blocking(move |c| {
                c.create_invite(
                    tenant,
                    &email,
                    Role::Owner,
                    None,
                    &hash,
                    OWNER_INVITE_TTL_SECS,
                )
            })
            .await?;
        body.owner_invite_token = Some(token.expose_secret().to_owned());
    }
    record(
        &state,
        &admin,
        admin_event(
            &admin,
            &meta,
            Some(tenant),
            AuditAction::AdminTenantCreated,
            format!("tenant:{tenant}"),
        )
        .after(json!({ "name": name, "plan": plan })),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /admin/v1/tenants/{id}`: placement, size, schema version, last activity.
pub(crate) async fn handle_admin_tenant_show(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    Ok(Json(tenant_view(&state, parse_tenant(&id)?).await?))
}

async fn change_status(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    id: &str,
    to: TenantStatus,
    action: AuditAction,
) -> ApiResult<api::TenantView> {
    let tenant = parse_tenant(id)?;
    let from = state
        .catalog
        .blocking(move |c| c.set_status(tenant, to))
        .await?;
    if to != TenantStatus::Active {
        // Takes effect at once: the next request reads the status; close the files too.
        state.close_tenant(tenant).await;
    }
    record(
        state,
        admin,
        admin_event(
            admin,
            meta,
            Some(tenant),
            action,
            format!("tenant:{tenant}"),
        )
        .before(json!({ "status": from.as_str() }))
        .after(json!({ "status": to.as_str() })),
    )
    .await?;
    tenant_view(state, tenant).await
}

/// `POST /admin/v1/tenants/{id}/suspend`: every user and key of the tenant gets 403
/// `tenant_suspended` from the next request on.
pub(crate) async fn handle_admin_tenant_suspend(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    Ok(Json(
        change_status(
            &state,
            &admin,
            &meta,
            &id,
            TenantStatus::Suspended,
            AuditAction::TenantSuspended,
        )
        .await?,
    ))
}

/// `POST /admin/v1/tenants/{id}/resume`.
pub(crate) async fn handle_admin_tenant_resume(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    Ok(Json(
        change_status(
            &state,
            &admin,
            &meta,
            &id,
            TenantStatus::Active,
            AuditAction::TenantResumed,
        )
        .await?,
    ))
}

/// `DELETE /admin/v1/tenants/{id}`: the tenant is suspended at once and destroyed after the
/// grace period; `certificate_token` fetches the deletion certificate afterwards.
pub(crate) async fn handle_admin_tenant_delete(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<api::TenantView>)> {
    let tenant = parse_tenant(&id)?;
    let (after, token) = crate::deletion::schedule(&state, tenant).await?;
    record(
        &state,
        &admin,
        admin_event(
            &admin,
            &meta,
            Some(tenant),
            AuditAction::DeletionScheduled,
            format!("tenant:{tenant}"),
        )
        .after(json!({ "delete_after": after })),
    )
    .await?;
    let mut body = tenant_view(&state, tenant).await?;
    body.delete_after = Some(after);
    body.certificate_token = Some(token.expose_secret().to_owned());
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// `POST /admin/v1/tenants/{id}/restore`: undoes a scheduled deletion within its grace period.
pub(crate) async fn handle_admin_tenant_restore(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    let tenant = parse_tenant(&id)?;
    state
        .catalog
        .blocking(move |c| c.restore_tenant(tenant))
        .await?;
    record(
        &state,
        &admin,
        admin_event(
            &admin,
            &meta,
            Some(tenant),
            AuditAction::TenantRestored,
            format!("tenant:{tenant}"),
        ),
    )
    .await?;
    Ok(Json(tenant_view(&state, tenant).await?))
}

/// `POST /admin/v1/tenants/{id}/rotate-db-token`: re-keys the database; the old token no
/// longer opens it.
pub(crate) async fn handle_admin_tenant_rotate(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenant = parse_tenant(&id)?;
    let summary = state
        .catalog
        .blocking(move |c| c.tenant_summary(tenant))
        .await?;
    match summary.as_ref().map(|s| s.status) {
        None => return Err(ApiError::NotFound("no such tenant".to_owned())),
        Some(TenantStatus::Active | TenantStatus::Suspended) => {}
        Some(other) => {
            return Err(ApiError::Conflict(format!(
                "a {other} tenant's token cannot be rotated"
            )));
        }
    }
    state.rotate_db_token(tenant).await?;
    record(
        &state,
        &admin,
        admin_event(
            &admin,
            &meta,
            Some(tenant),
            AuditAction::DbTokenRotated,
            format!("tenant:{tenant}"),
        ),
    )
    .await?;
    Ok(Json(json!({ "id": id, "rotated": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAdminToken {
    name: String,
}

/// `POST /admin/v1/admin-tokens`: another platform admin token (shown once).
pub(crate) async fn handle_admin_token_create(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<NewAdminToken>,
) -> ApiResult<(StatusCode, Json<api::AdminTokenCreated>)> {
    let name = validate_org(&req.name)?;
    let created = admin_tokens::create(&state, &admin.actor(), &meta, name).await?;
    admin.log_action(AuditAction::AdminTokenCreated);
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /admin/v1/admin-tokens`.
pub(crate) async fn handle_admin_token_list(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<api::AdminTokenList>> {
    Ok(Json(admin_tokens::list(&state).await?))
}

/// `DELETE /admin/v1/admin-tokens/{id}`: refused for the last live token.
pub(crate) async fn handle_admin_token_revoke(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    admin_tokens::revoke(&state, &admin.actor(), &meta, id).await?;
    admin.log_action(AuditAction::AdminTokenRevoked);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v1/migrations/plan`: what `apply` would run, and where.
pub(crate) async fn handle_admin_migrations_plan(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<api::MigrationPlan>> {
    let set = state.provisioner.migrations();
    let versions = state.catalog.blocking(|c| c.schema_versions()).await?;
    let pending = set
        .iter()
        .map(|m| api::PendingMigration {
            version: m.version,
            name: m.name.clone(),
            tenants: versions
                .iter()
                .filter(|(v, _)| *v < i64::from(m.version))
                .map(|(_, n)| n)
                .sum(),
        })
        .filter(|p| p.tenants > 0)
        .collect();
    Ok(Json(api::MigrationPlan {
        latest_version: set.latest_version(),
        migrations: set
            .iter()
            .map(|m| api::Migration {
                version: m.version,
                name: m.name.clone(),
                checksum: m.checksum.clone(),
            })
            .collect(),
        versions: versions_map(&versions),
        pending,
    }))
}

/// Tenants per schema version, the version as text (a JSON object's keys).
fn versions_map(versions: &[(i64, i64)]) -> std::collections::BTreeMap<String, i64> {
    versions.iter().map(|(v, n)| (v.to_string(), *n)).collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRequest {
    concurrency: Option<usize>,
    canary: Option<usize>,
}

/// `POST /admin/v1/migrations/apply`: starts a background job (202); 409 while one runs.
pub(crate) async fn handle_admin_migrations_apply(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> ApiResult<(StatusCode, Json<api::MigrationStarted>)> {
    let concurrency = req.concurrency.unwrap_or(8);
    if !(1..=64).contains(&concurrency) {
        return Err(ApiError::InvalidInput(
            "concurrency must be between 1 and 64".to_owned(),
        ));
    }
    let job = crate::fleet::start(&state, concurrency, req.canary.unwrap_or(0)).await?;
    record(&state, &admin, admin_event(&admin, &meta, None, AuditAction::AdminMigrationsStarted, format!("job:{}", job.id)).after(json!({ "target_version": job.target_version, "tenants": job.total, "concurrency": concurrency, "canary": job.canary })))
    .await?;
    Ok((StatusCode::ACCEPTED, Json(api::MigrationStarted { job })))
}

/// `GET /admin/v1/migrations/status`: tenants per schema version, the job, and failures.
pub(crate) async fn handle_admin_migrations_status(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<api::MigrationStatus>> {
    let latest = state.provisioner.migrations().latest_version();
    let (versions, failures) = state
        .catalog
        .blocking(|c| Ok((c.schema_versions()?, c.migration_failures()?)))
        .await?;
    Ok(Json(api::MigrationStatus {
        latest_version: latest,
        versions: versions_map(&versions),
        job: state.jobs.current(),
        failures: failures
            .into_iter()
            .map(|f| api::MigrationFailure {
                tenant_id: f.tenant_id,
                version: f.version,
                error: f.error,
                at: f.at,
            })
            .collect(),
    }))
}
