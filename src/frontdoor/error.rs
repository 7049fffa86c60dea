//! Errors of the front door, answered in OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`) with the HTTP status OpenAI uses
//! for the same case. A failed job's [`ErrorKind`] maps to its status here, in one place.

use crate::job::{ErrorBody, ErrorKind};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One answer of the front door that is not a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// OpenAI's `code`: `model_not_found`, `invalid_api_key`, … (or a switchyard error kind).
    pub code: Option<String>,
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code: code.map(str::to_string),
            param: None,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            message,
        )
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some(code),
            message,
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("service_unavailable"),
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("internal"),
            message,
        )
    }

    /// The error of a failed job, as OpenAI would answer the same failure.
    pub fn from_job(e: &ErrorBody) -> Self {
        let (status, kind, code) = job_error_status(e.kind);
        Self::new(status, kind, Some(code), e.message.clone())
    }

    /// The JSON body (also the `error` of a batch output line).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// HTTP status, OpenAI `type` and `code` of each error kind.
pub fn job_error_status(kind: ErrorKind) -> (StatusCode, &'static str, &'static str) {
    use ErrorKind as K;
    match kind {
        K::MalformedJob | K::InvalidJob => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            kind.as_str(),
        ),
        K::UnknownModel => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        K::NoRoute => (StatusCode::BAD_REQUEST, "invalid_request_error", "no_route"),
        K::ContextTooLong => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        K::CostCapExceeded => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "cost_cap_exceeded",
        ),
        K::ProviderRejected => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "provider_rejected",
        ),
        // Screening refused the request's content (before any call).
        K::Refused => (StatusCode::BAD_REQUEST, "invalid_request_error", "refused"),
        K::BudgetExceeded => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        K::Expired => (StatusCode::GATEWAY_TIMEOUT, "timeout", "expired"),
        K::ProvidersExhausted => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "providers_exhausted",
        ),
        K::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_4xx_or_5xx_and_the_openai_codes_where_openai_has_one() {
        for k in ErrorKind::ALL {
            let (s, _, _) = job_error_status(k);
            assert!(s.is_client_error() || s.is_server_error(), "{k}");
        }
        assert_eq!(
            job_error_status(ErrorKind::UnknownModel).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            job_error_status(ErrorKind::UnknownModel).2,
            "model_not_found"
        );
        assert_eq!(
            job_error_status(ErrorKind::ContextTooLong).2,
            "context_length_exceeded"
        );
        assert_eq!(
            job_error_status(ErrorKind::BudgetExceeded).0,
            StatusCode::TOO_MANY_REQUESTS
        );
        let e = ApiError::from_job(&ErrorBody::new(ErrorKind::InvalidJob, "messages: empty"));
        assert_eq!(e.body()["error"]["message"], "messages: empty");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.body()["error"]["param"], serde_json::Value::Null);
    }
}
