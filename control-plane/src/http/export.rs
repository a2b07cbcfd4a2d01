//! `GET /v1/export?format=sqlite|sql|csv` and the operator's export: the tenant's whole
//! database, streamed from the file [`crate::service::export`] built.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use silo_tenant_runtime::TenantId;

use crate::audit::RequestMeta;
use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::exports::InFlight;
use crate::http::extract::ApiQuery;
use crate::service::export::{self, Export, Format};
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct ExportQuery {
    format: Option<String>,
}

pub(crate) async fn handle_export(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    principal.require_scope(Scope::Export)?;
    principal.require_step_up()?;
    let format = Format::parse(q.format.as_deref())?;
    Ok(send(
        export::by_member(&state, &principal, &meta, format).await?,
    ))
}

/// Streams an export as it is written.
fn send(export: Export) -> Response {
    let (content_type, ext) = export.format.media();
    let disposition = format!("attachment; filename=\"{}.{ext}\"", export.tenant);
    let body = Body::from_stream(futures_guard(
        super::ChannelBody(export.payload),
        export.in_flight,
    ));
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// Keeps `guard` alive until the stream is dropped (sent or abandoned).
fn futures_guard<S>(stream: S, guard: InFlight) -> impl guarded::Stream<Item = S::Item>
where
    S: guarded::Stream + Unpin,
{
    guarded::Guarded {
        stream,
        _guard: guard,
    }
}

/// A stream that holds a value (a guard) for as long as it lives. Written here because it
/// is ten lines; no stream utility crate is otherwise needed.
mod guarded {
    pub(super) use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Guarded<S, G> {
        pub(super) stream: S,
        pub(super) _guard: G,
    }

    impl<S: Stream + Unpin, G: Unpin> Stream for Guarded<S, G> {
        type Item = S::Item;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.stream).poll_next(cx)
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct AdminExportQuery {
    format: Option<String>,
    reason: Option<String>,
}

/// `GET /admin/v1/tenants/{id}/export?format=&reason=`: an operator's export of a tenant's
/// data, which needs a stated reason and is recorded in the tenant's audit log with it.
pub(crate) async fn handle_admin_export(
    State(state): State<AppState>,
    admin: crate::http::admin::Admin,
    meta: RequestMeta,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<AdminExportQuery>,
) -> ApiResult<Response> {
    let tenant: TenantId = id
        .parse()
        .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))?;
    let format = Format::parse(q.format.as_deref())?;
    let built = export::by_operator(
        &state,
        admin.actor(),
        &meta,
        tenant,
        format,
        q.reason.as_deref(),
    )
    .await?;
    Ok(send(built))
}
