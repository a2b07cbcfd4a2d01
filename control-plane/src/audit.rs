//! The audit log as the HTTP layer meets it: where a request came from ([`RequestMeta`],
//! [`LazyMeta`]), taken from the request by extractors. The chains themselves (records,
//! hashing, signed heads, verification) are the catalog's: `catalog::chain`, re-exported
//! here.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use silo_types::AuditAction;

pub use crate::catalog::chain::{
    AuditRecord, GENESIS, Outcome, RequestMeta, VerifyReport, chain_of, event_hash, head_mac,
    verify_chain,
};

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let lazy = LazyMeta::from_request_parts(parts, state).await?;
        Ok(lazy.resolve())
    }
}

/// [`RequestMeta`] as the request carried it, turned into text only if an audit event
/// needs it: for the data routes, where most requests write no event and every one would
/// otherwise pay for three strings.
#[derive(Debug, Clone, Default)]
pub struct LazyMeta {
    ip: Option<std::net::IpAddr>,
    user_agent: Option<axum::http::HeaderValue>,
    request_id: Option<axum::http::HeaderValue>,
}

impl LazyMeta {
    pub fn resolve(&self) -> RequestMeta {
        // Bounded: a header is the client's to fill.
        let text = |v: &Option<axum::http::HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect::<String>())
        };
        RequestMeta {
            ip: self.ip.map(|ip| ip.to_string()),
            user_agent: text(&self.user_agent),
            request_id: text(&self.request_id),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LazyMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Cloning a header value shares its bytes.
        Ok(LazyMeta {
            ip: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
            user_agent: parts.headers.get(axum::http::header::USER_AGENT).cloned(),
            request_id: parts.headers.get("x-request-id").cloned(),
        })
    }
}
