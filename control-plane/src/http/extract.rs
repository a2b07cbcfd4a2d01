//! A JSON body extractor whose every failure is the contract's error shape: 413 past the
//! body limit, 400 with a useful message for anything else. Values the client sent are not
//! echoed back (a misplaced password must not come back in an error).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The whole request body, within the configured limit (413 past it). Every route reads
/// its body here, so the limit needs no layer (one cost a hash-map insert per request).
pub(crate) async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let limit = state.max_body_bytes;
    let too_large = || ApiError::PayloadTooLarge(limit);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::InvalidInput(
            "the request body could not be read".to_owned(),
        )),
    }
}

/// A JSON body read as `T`, or a 400 that says where it went wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // An empty body is read as `{}`: routes whose fields are all optional need none, and
    // the others answer with the field that is missing.
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // Well-formed bodies are the rule: read them without tracking the path (half the cost
    // of parsing a small body, measured), and read again, tracking it, only to say where
    // a bad one went wrong.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = describe(&inner);
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::InvalidInput(format!("the request body is not valid: {what}"))
        } else {
            ApiError::InvalidInput(format!("field `{path}`: {what}"))
        }
    })
}

/// serde's message without the offending value: "invalid type: string \"hunter2\",
/// expected …" becomes "invalid type, expected …".
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if msg.starts_with(kind) {
            if let Some(i) = msg.find(", expected") {
                return format!("{kind}{}", &msg[i..]);
            }
            return kind.to_owned();
        }
    }
    if e.is_syntax() || e.is_eof() {
        return format!("malformed JSON at line {} column {}", e.line(), e.column());
    }
    msg
}

/// Query-string parameters; a malformed query gets the contract's 400, not axum's text.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::InvalidInput(format!("the query string is not valid: {}", e.body_text()))
            })
    }
}

/// The address of the client, from the connection (not from headers a client can set).
/// `None` only when the server runs without connection info (in-process tests).
pub(crate) struct ClientIp(pub(crate) Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Every route that needs a caller takes a [`Principal`]: the request's credential, checked.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.authority().authenticate(parts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_do_not_echo_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            password: String,
        }
        let err = serde_json::from_str::<Body>(r#"{"password": 12345678901}"#)
            .err()
            .map(|e| describe(&e))
            .unwrap_or_default();
        assert!(err.contains("expected a string"), "{err}");
        assert!(!err.contains("12345678901"), "{err}");
    }
}
