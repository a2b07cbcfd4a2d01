//! The admin API for platform operators: `/admin/v1/*`. Authenticated with platform admin
//! tokens only. Operators manage tenants; no route here returns a tenant's rows. Thin: the
//! work is in [`crate::service::tenants`], [`crate::service::admin_tokens`] and
//! [`crate::service::migrations`].

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use silo_api as api;
use silo_provisioner::TenantStatus;
use silo_types::AuditAction;

use crate::audit::RequestMeta;
pub use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::service::accounts::validate_org;
use crate::service::tenants::parse_tenant;
use crate::service::{admin_tokens, migrations, tenants};
use crate::state::AppState;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        crate::auth::authenticate_admin(&state.catalog, parts).await
    }
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
    Ok(Json(
        tenants::list(&state, q.status.as_deref(), q.limit, q.after).await?,
    ))
}

/// `POST /admin/v1/tenants`: a tenant and its database; with `owner_email`, an owner
/// invitation (`owner_invite_token`, shown once) for that person.
pub(crate) async fn handle_admin_tenant_create(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::CreateTenant>,
) -> ApiResult<(StatusCode, Json<api::TenantView>)> {
    let view = tenants::create(&state, &admin, &meta, req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /admin/v1/tenants/{id}`: placement, size, schema version, last activity.
pub(crate) async fn handle_admin_tenant_show(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    Ok(Json(tenants::view(&state, parse_tenant(&id)?).await?))
}

/// `POST /admin/v1/tenants/{id}/suspend`: every user and key of the tenant gets 403
/// `tenant_suspended` from the next request on.
pub(crate) async fn handle_admin_tenant_suspend(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    let tenant = parse_tenant(&id)?;
    Ok(Json(
        tenants::set_status(&state, &admin, &meta, tenant, TenantStatus::Suspended).await?,
    ))
}

/// `POST /admin/v1/tenants/{id}/resume`.
pub(crate) async fn handle_admin_tenant_resume(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    let tenant = parse_tenant(&id)?;
    Ok(Json(
        tenants::set_status(&state, &admin, &meta, tenant, TenantStatus::Active).await?,
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
    let view = tenants::schedule_deletion(&state, &admin, &meta, tenant).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `POST /admin/v1/tenants/{id}/plan`: another plan; its limits apply at once.
pub(crate) async fn handle_admin_tenant_plan(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<api::PlanChange>,
) -> ApiResult<Json<api::TenantView>> {
    let tenant = parse_tenant(&id)?;
    Ok(Json(
        tenants::set_plan(&state, &admin, &meta, tenant, req).await?,
    ))
}

/// `POST /admin/v1/tenants/{id}/vacuum`: gives a tenant's deleted data's space back (an
/// operator making room on a full disk). Reads no rows.
pub(crate) async fn handle_admin_tenant_vacuum(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Vacuumed>> {
    let tenant = parse_tenant(&id)?;
    admin.log_action(AuditAction::Vacuumed);
    Ok(Json(
        crate::service::tenant::vacuum(
            &state,
            tenant,
            admin.actor(),
            &meta,
            crate::service::tenant::VacuumBy::Operator,
        )
        .await?,
    ))
}

/// `POST /admin/v1/tenants/{id}/restore`: undoes a scheduled deletion within its grace period.
pub(crate) async fn handle_admin_tenant_restore(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TenantView>> {
    let tenant = parse_tenant(&id)?;
    Ok(Json(tenants::restore(&state, &admin, &meta, tenant).await?))
}

/// `POST /admin/v1/tenants/{id}/rotate-db-token`: re-keys the database; the old token no
/// longer opens it.
pub(crate) async fn handle_admin_tenant_rotate(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<Json<api::DbTokenRotated>> {
    let tenant = parse_tenant(&id)?;
    Ok(Json(
        tenants::rotate_db_token(&state, &admin, &meta, tenant).await?,
    ))
}

/// `POST /admin/v1/admin-tokens`: another platform admin token (shown once).
pub(crate) async fn handle_admin_token_create(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::NewAdminToken>,
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

/// `POST /admin/v1/accounts/unlock`: forgets an account's failed sign-ins.
pub(crate) async fn handle_admin_unlock(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::UnlockAccount>,
) -> ApiResult<Json<api::AccountUnlocked>> {
    Ok(Json(
        crate::service::accounts::unlock(&state, &admin, &meta, req).await?,
    ))
}

/// `GET /admin/v1/migrations/plan`: what `apply` would run, and where.
pub(crate) async fn handle_admin_migrations_plan(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<api::MigrationPlan>> {
    Ok(Json(migrations::plan(&state).await?))
}

/// `POST /admin/v1/migrations/apply`: starts a background job (202); 409 while one runs.
pub(crate) async fn handle_admin_migrations_apply(
    State(state): State<AppState>,
    admin: Admin,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::ApplyMigrations>,
) -> ApiResult<(StatusCode, Json<api::MigrationStarted>)> {
    let started = migrations::apply(&state, &admin, &meta, req).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

/// `GET /admin/v1/migrations/status`: tenants per schema version, the job, and failures.
pub(crate) async fn handle_admin_migrations_status(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<api::MigrationStatus>> {
    Ok(Json(migrations::status(&state).await?))
}
