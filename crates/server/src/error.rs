//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param),
            retry_after: None,
        }
    }

    /// 400 about the body as a whole (malformed JSON, wrong types).
    pub fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError {
            param: None,
            ..ApiError::invalid(message, "")
        }
    }

    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            retry_after: Some(1),
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key (send `Authorization: Bearer KEY`)".into(),
            kind: "authentication_error",
            param: None,
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// An engine error found while checking a request: the client's fault.
impl From<engine::EngineError> for ApiError {
    fn from(e: engine::EngineError) -> ApiError {
        ApiError::bad_body(e.to_string())
    }
}
