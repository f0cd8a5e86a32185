//! The JSON error answers of the edge functions and the one place gRPC statuses become HTTP
//! statuses.
//!
//! Body: `{"error":{"status":<http>,"code":"<snake_case>","message":"..."}}`.

use spin_sdk::http::Response;
use tonic::{Code, Status};

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra response headers (`www-authenticate`, `retry-after`, `allow`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 401 with the `WWW-Authenticate: Bearer` challenge (RFC 6750).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let message = message.into();
        let challenge = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            message.replace(['"', '\\'], "'")
        );
        Self::new(401, "unauthenticated", message).with_header("www-authenticate", challenge)
    }

    /// A mesh call's failure, as seen by the function's caller. `call` names the call in the
    /// message (e.g. `catalog GetProduct`).
    pub fn from_status(call: &str, status: &Status) -> Self {
        let message = format!("{call}: {}", status.message());
        let retry_after = crate::retry_after(status);
        let error = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::new(400, "invalid_argument", message),
            Code::Unauthenticated => Self::unauthorized(message),
            Code::PermissionDenied => Self::new(403, "forbidden", message),
            Code::NotFound => Self::new(404, "not_found", message),
            Code::AlreadyExists => Self::new(409, "already_exists", message),
            Code::FailedPrecondition => Self::new(409, "failed_precondition", message),
            Code::Aborted => Self::new(409, "conflict", message),
            Code::ResourceExhausted => Self::new(429, "rate_limited", message),
            Code::Unavailable | Code::Cancelled => Self::new(503, "mesh_unavailable", message),
            Code::DeadlineExceeded => Self::new(504, "mesh_timeout", message),
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                Self::new(502, "bad_gateway", message)
            }
        };
        match retry_after {
            Some(seconds) => error.with_header("retry-after", seconds),
            None => error,
        }
    }

    /// Whether the event dispatcher should retry a delivery answered with this error (see
    /// `storemesh-delivery`: 408, 429 and 5xx are retried, other 4xx are final).
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 408 | 429) || self.status >= 500
    }

    pub fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "status": self.status, "code": self.code, "message": self.message }
        });
        let mut builder = Response::builder();
        builder
            .status(self.status)
            .header("content-type", "application/json");
        for (name, value) in self.headers {
            builder.header(name, value);
        }
        builder.body(body.to_string()).build()
    }
}

/// A component's answer: the response, or the error as JSON. Server-side failures (5xx) are
/// also written to stderr, which the runtime records per component, as
/// `{component}: {status} {code}: {message}`.
pub fn respond(component: &str, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(response) => response,
        Err(error) => {
            if error.status >= 500 {
                eprintln!(
                    "{component}: {} {}: {}",
                    error.status, error.code, error.message
                );
            }
            error.into_response()
        }
    }
}

/// A JSON answer.
pub fn json_response(
    status: u16,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> Response {
    let mut builder = Response::builder();
    builder
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder.header(*name, value.as_str());
    }
    builder.body(body.to_string()).build()
}
