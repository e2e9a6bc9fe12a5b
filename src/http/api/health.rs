//! `GET /healthz` and `GET /readyz`: the database answers, within a deadline.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::http::HttpState;

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// ok, or unavailable (with status 503) when the database does not answer.
    status: String,
}

impl Health {
    fn answer(status: StatusCode, word: &str) -> Response {
        (
            status,
            Json(Self {
                status: word.to_owned(),
            }),
        )
            .into_response()
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    summary = "Liveness and database reachability",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "Database unreachable", body = Health),
    ),
)]
pub(crate) async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    // A database that does not answer at all (its port refusing, its host gone) would hold the
    // check for the pool's whole acquire timeout (30 s), longer than any probe waits.
    match tokio::time::timeout(HEALTH_DEADLINE, state.db.ping()).await {
        Ok(Ok(())) => Health::answer(StatusCode::OK, "ok"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            Health::answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        Err(_) => {
            tracing::warn!(
                deadline_s = HEALTH_DEADLINE.as_secs_f64(),
                "health check: the database did not answer in time"
            );
            Health::answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// How long `/healthz` and `/readyz` wait for the database before answering 503.
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable", body = Health),
    ),
)]
pub(crate) async fn readyz(state: State<Arc<HttpState>>) -> Response {
    healthz(state).await
}
