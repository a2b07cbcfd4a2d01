//! A JSON body extractor whose every failure is the contract's error shape: 413 past the
//! body limit, 400 with a useful message for anything else. Values the client sent are not
//! echoed back (a misplaced password must not come back in an error).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::InvalidInput("the request body could not be read".to_owned())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::InvalidInput(
                "send a JSON object as the request body".to_owned(),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let what = describe(&inner);
            if inner.is_syntax() || inner.is_eof() || path == "." {
                ApiError::InvalidInput(format!("the request body is not valid: {what}"))
            } else {
                ApiError::InvalidInput(format!("field `{path}`: {what}"))
            }
        })?;
        Ok(ApiJson(value))
    }
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
