//! The one mapping from API failures to HTTP responses: `{"error": {"code", "message"}}` with a
//! stable machine code. Internal failures are logged here and answered with a generic 500 that
//! carries no internal detail.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The body of every error response. Responses serialize this type, so the OpenAPI document
/// describes the very bytes sent.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code: unauthorized, forbidden, not_found, bad_request, conflict,
    /// payload_too_large, unsupported_media_type, invalid_body, method_not_allowed, internal,
    /// too_many_deliveries (a recover window matching more than one call requeues),
    /// rate_limited (429: an inbox's replies per hour);
    /// provider ingress also answers rejected (422) and unavailable (503, retry).
    code: String,
    /// For people; no internal detail.
    message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A bulk action that matched more than one call may change: nothing was changed.
    #[error("{0}")]
    TooMany(String),
    /// A rate the caller is held to was reached (an inbox's replies per hour).
    #[error("{0}")]
    RateLimited(String),
    /// The upstream a request was to reach gave no answer (send-to's one attempt).
    #[error("{0}")]
    BadGateway(String),
    /// A request body or query axum could not take: its status (400, 413, 415, 422) is kept.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooMany(_) => (StatusCode::BAD_REQUEST, "too_many_deliveries"),
            Self::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Rejected { status, .. } => (
                *status,
                match status.as_u16() {
                    413 => "payload_too_large",
                    415 => "unsupported_media_type",
                    422 => "invalid_body",
                    _ => "bad_request",
                },
            ),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::db::Error> for ApiError {
    fn from(err: crate::db::Error) -> Self {
        match err {
            crate::db::Error::Conflict(message) => Self::Conflict(message),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        Self::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "API request failed");
        }
        let body = Json(ErrorBody::new(code, self.to_string()));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// axum refuses a path it cannot decode (percent-encoded bytes that are not UTF-8) with a
/// plain-text 400 before any handler runs. The API answers every error with [`ErrorBody`], so
/// such an answer is rewritten into one, its text kept as the message.
pub(super) async fn json_rejection(response: Response) -> Response {
    let plain_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/plain"));
    if response.status() != StatusCode::BAD_REQUEST || !plain_text {
        return response;
    }
    // The rejection texts are one short line; anything longer is cut, never read whole.
    let text = match axum::body::to_bytes(response.into_body(), 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => "malformed request".to_owned(),
    };
    ApiError::BadRequest(text).into_response()
}
