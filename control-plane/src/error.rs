//! The one error type every handler returns, named by HTTP meaning, and its JSON shape:
//! `{"error": {"code": "<snake_case>", "message": "<what a person should do>"}}`.
//!
//! Policy: a 4xx says what was wrong with the request, in words meant for the caller. A 5xx
//! says nothing internal: its cause is logged once, here, with the request's span (request
//! id, route, tenant), and the body carries only a generic sentence.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use silo_tenant_runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("email or password is wrong")]
    InvalidCredentials,
    /// 2FA is on: send a current code from the authenticator app (or a recovery code).
    #[error("{0}")]
    TotpRequired(&'static str),
    #[error(
        "this needs a recent second-factor check: POST /v1/auth/2fa/verify with a current code, then retry"
    )]
    StepUpRequired,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this tenant is suspended; its data cannot be reached until an operator resumes it")]
    TenantSuspended,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests; retry after {} seconds", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The route exists, the method does not.
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// A write past the tenant's storage quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The server's disk is full.
    #[error("{0}")]
    StorageFull(String),
    /// The request was not answered in time (a slow upload, or work past the limit).
    #[error("the request did not complete within {} seconds", .0.as_secs())]
    RequestTimeout(Duration),
    /// The tenant's own SQL failed (syntax, constraint, …).
    #[error("{0}")]
    Sql(String),
    #[error("{0}")]
    SqlForbidden(String),
    #[error("{0}")]
    QueryTimeout(String),
    #[error("{0}")]
    ResultTooLarge(String),
    #[error("{0}")]
    Busy(String),
    /// The tenant's database cannot be opened (its stored DB token does not open it, or the
    /// file is missing). Logged as an error; the caller is told to retry later.
    #[error("this tenant's database cannot be opened right now; the operator has been alerted")]
    TenantUnavailable(anyhow::Error),
    /// Our fault. The payload is logged, never sent.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// Status and contract code. Exhaustive on purpose: a new variant must choose both.
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::TotpRequired(_) => (StatusCode::UNAUTHORIZED, "totp_required"),
            ApiError::StepUpRequired => (StatusCode::FORBIDDEN, "step_up_required"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TenantSuspended => (StatusCode::FORBIDDEN, "tenant_suspended"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            ApiError::Sql(_) => (StatusCode::UNPROCESSABLE_ENTITY, "sql_error"),
            ApiError::SqlForbidden(_) => (StatusCode::FORBIDDEN, "sql_forbidden"),
            ApiError::QueryTimeout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "query_timeout"),
            ApiError::ResultTooLarge(_) => (StatusCode::UNPROCESSABLE_ENTITY, "result_too_large"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::TenantUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl ApiError {
    /// The contract's code (`invalid_input`, `rate_limited`, …).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// What the client is told. An internal cause is logged here, never told.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                "something went wrong on our side; it has been logged with this request's id \
                 (x-request-id header)"
                    .to_owned()
            }
            ApiError::TenantUnavailable(cause) => {
                tracing::error!(error = format!("{cause:#}"), "tenant database unavailable");
                format!("{self} (request id in the x-request-id header)")
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = self.public_message();
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited(wait) = self {
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let message = e.to_string();
        match e.root() {
            RuntimeError::InvalidInput(_) => ApiError::InvalidInput(message),
            RuntimeError::Sql { .. } => ApiError::Sql(message),
            RuntimeError::Forbidden(_) => {
                metrics::counter!("silo_sandbox_refusals_total").increment(1);
                ApiError::SqlForbidden(message)
            }
            RuntimeError::Timeout => ApiError::QueryTimeout(message),
            RuntimeError::ResultTooLarge => ApiError::ResultTooLarge(message),
            RuntimeError::QuotaExceeded => ApiError::QuotaExceeded(message),
            RuntimeError::ReadersBusy => ApiError::RateLimited(std::time::Duration::from_secs(1)),
            RuntimeError::WritesPaused => ApiError::StorageFull(message),
            RuntimeError::Full => {
                tracing::error!("a tenant write failed: the disk is full");
                ApiError::StorageFull(message)
            }
            RuntimeError::Busy | RuntimeError::Exhausted | RuntimeError::TooManyOpen => {
                ApiError::Busy(message)
            }
            RuntimeError::WrongKey | RuntimeError::Missing => {
                ApiError::TenantUnavailable(anyhow::anyhow!("tenant database: {message}"))
            }
            RuntimeError::Internal(_) | RuntimeError::WritesNotInline => {
                ApiError::Internal(anyhow::anyhow!("tenant database: {message}"))
            }
            RuntimeError::InStatement { .. } => {
                ApiError::Internal(anyhow::anyhow!("unreachable nesting: {message}"))
            }
        }
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        use crate::catalog::CatalogError as C;
        match e {
            C::EmailTaken => ApiError::Conflict(e.to_string()),
            C::Conflict(m) => ApiError::Conflict(m),
            C::NotFound(m) => ApiError::NotFound(m.to_owned()),
            C::Forbidden(m) => ApiError::Forbidden(m),
            C::Sqlite(_) | C::Migration(_) | C::Corrupt(_) | C::Join(_) | C::Key(_) => {
                ApiError::internal(e)
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
