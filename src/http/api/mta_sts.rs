//! `GET /.well-known/mta-sts.txt`: the MTA-STS policy of `[mta_sts]` (RFC 8461), for the TLS
//! proxy that answers `https://mta-sts.<domain>/` to pass through.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::http::{ApiError, ErrorBody, HttpState};

#[utoipa::path(
    get,
    path = "/.well-known/mta-sts.txt",
    tag = "health",
    security(()),
    summary = "The MTA-STS policy (RFC 8461) from [mta_sts]",
    responses(
        (status = 200, description = "The policy file", content_type = "text/plain", body = String),
        (status = 404, description = "No [mta_sts] section is configured", body = ErrorBody),
    )
)]
pub(crate) async fn policy(State(state): State<Arc<HttpState>>) -> Response {
    match &state.mta_sts_policy {
        Some(policy) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            policy.clone(),
        )
            .into_response(),
        None => ApiError::NotFound("MTA-STS policy").into_response(),
    }
}
