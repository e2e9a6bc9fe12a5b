//! Deliveries and their attempt logs, and resend: `GET /v1/deliveries`, `GET
//! /v1/deliveries/{id}`, `GET /v1/deliveries/{id}/attempts`, the request an attempt sent (`GET
//! /v1/deliveries/{id}/attempts/{attempt}/request` and its `/body`), `POST
//! /v1/deliveries/{id}/resend`.
//! A per-inbox key sees only its own inbox's deliveries; any other answers 404.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::db::{AttemptRow, DeliveryRow};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::{AttemptOutcome, Channel, DeliveryStatus, rfc3339};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryQuery {
    /// pending, delivered or dead (the dead-letter queue).
    #[param(value_type = Option<DeliveryStatus>)]
    pub(crate) status: Option<String>,
    pub(crate) inbox_id: Option<String>,
    /// Default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    summary = "Deliveries, newest first",
    params(DeliveryQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn list_deliveries(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(mut query) = query?;
    if let Caller::Inbox(own) = &caller {
        if query.inbox_id.as_ref().is_some_and(|asked| asked != own) {
            return Err(ApiError::NotFound("inbox"));
        }
        query.inbox_id = Some(own.clone());
    }
    list_deliveries_of(&state, query).await
}

pub(crate) async fn list_deliveries_of(
    state: &HttpState,
    query: DeliveryQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|value| {
            DeliveryStatus::parse(value).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status must be one of pending, delivered, dead; got `{value}`"
                ))
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".to_owned(),
        ));
    }
    let deliveries = state
        .db
        .list_deliveries(status, query.inbox_id.as_deref(), limit)
        .await?
        .iter()
        .map(DeliveryView::from)
        .collect();
    Ok(Json(DeliveryList { deliveries }))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    summary = "One delivery with its attempt_log",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryWithAttempts),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_delivery(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryWithAttempts>, ApiError> {
    let delivery = visible_delivery(&state, &caller, &id).await?;
    let attempt_log = attempt_views(state.db.list_attempts(&id).await?);
    Ok(Json(DeliveryWithAttempts {
        delivery: DeliveryView::from(&delivery),
        attempt_log,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}/attempts",
    tag = "deliveries",
    summary = "Every attempt of one delivery",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The attempts, oldest first", body = AttemptList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn list_attempts(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AttemptList>, ApiError> {
    visible_delivery(&state, &caller, &id).await?;
    let attempts = attempt_views(state.db.list_attempts(&id).await?);
    Ok(Json(AttemptList { attempts }))
}

#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/resend",
    tag = "deliveries",
    summary = "Queue a delivery again now, same event_id",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued", body = Resent),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn resend_delivery(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Resent>), ApiError> {
    visible_delivery(&state, &caller, &id).await?;
    if !state.db.resend(&id).await? {
        return Err(ApiError::NotFound("delivery"));
    }
    state.dispatcher_wakeup.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            id,
            status: "pending".to_owned(),
        }),
    ))
}

/// One delivery as the API shows it (`GET /v1/deliveries`, `GET /v1/deliveries/{id}`).
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryView {
    pub(crate) id: String,
    pub(crate) message_id: String,
    pub(crate) inbox_id: String,
    /// The event's id: the same on every attempt and resend (the idempotency key).
    pub(crate) event_id: String,
    pub(crate) channel: Channel,
    /// Where it goes: the webhook URL or the forward recipients.
    pub(crate) target: String,
    /// pending, delivered or dead (the dead-letter queue).
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: i64,
    #[schema(required)]
    pub(crate) next_attempt_at: Option<String>,
    #[schema(required)]
    pub(crate) last_status_code: Option<i64>,
    #[schema(required)]
    pub(crate) last_error: Option<String>,
    pub(crate) created_at: String,
    #[schema(required)]
    pub(crate) delivered_at: Option<String>,
}

impl From<&DeliveryRow> for DeliveryView {
    fn from(row: &DeliveryRow) -> Self {
        Self {
            id: row.id.clone(),
            message_id: row.message_id.clone(),
            inbox_id: row.inbox_id.clone(),
            event_id: row.event_id.clone(),
            channel: row.channel,
            target: row.target.clone(),
            status: row.status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at_ms.map(rfc3339),
            last_status_code: row.last_status_code,
            last_error: row.last_error.clone(),
            created_at: rfc3339(row.created_at_ms),
            delivered_at: row.delivered_at_ms.map(rfc3339),
        }
    }
}

/// One delivery attempt as the API shows it (`GET /v1/deliveries/{id}/attempts`).
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptView {
    pub(crate) attempt: i64,
    pub(crate) started_at: String,
    pub(crate) latency_ms: i64,
    /// The endpoint's HTTP status; null when no response came (or for an email forward).
    #[schema(required)]
    pub(crate) status_code: Option<i64>,
    /// What the attempt came to: delivered, http_error, error or not_sent for a webhook;
    /// forwarded or error for an email forward.
    pub(crate) outcome: AttemptOutcome,
    #[schema(required)]
    pub(crate) error: Option<String>,
    #[schema(required)]
    pub(crate) response_excerpt: Option<String>,
    /// The request this attempt sent is logged: see `GET
    /// /v1/deliveries/{id}/attempts/{attempt}/request`. False for email forwards, attempts
    /// that sent nothing and attempts made before the log existed.
    pub(crate) request_logged: bool,
}

pub(crate) fn attempt_views(rows: Vec<AttemptRow>) -> Vec<AttemptView> {
    rows.into_iter()
        .map(|row| AttemptView {
            attempt: row.attempt,
            started_at: rfc3339(row.started_at_ms),
            latency_ms: row.latency_ms,
            status_code: row.status_code,
            outcome: row.outcome,
            error: row.error,
            response_excerpt: row.response_excerpt,
            request_logged: row.request_logged,
        })
        .collect()
}

/// The request one webhook attempt sent, for comparing with what a receiver verified.
///
/// The body is exactly the bytes sent and signed. Headers are the ones mxhook set, in order;
/// custom header values read `[hidden]` (they may be the receiver's credentials). Signature
/// headers are shown: they are HMACs and timestamps, not secrets. The HTTP client's transport
/// headers (`Host`, `Content-Length`, `Accept`) are not listed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptRequestView {
    /// `[name, value]` pairs in the order set.
    #[schema(value_type = Vec<Vec<String>>)]
    pub(crate) headers: Vec<(String, String)>,
    /// The body as sent; null when it was larger than the log keeps (1 MiB).
    #[schema(required)]
    pub(crate) body: Option<String>,
    /// Length of the body sent, in bytes.
    pub(crate) body_bytes: usize,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AttemptPath {
    /// Delivery id
    pub(crate) id: String,
    /// Attempt number, from 1
    pub(crate) attempt: i64,
}

/// The logged request of an attempt the caller may see.
async fn visible_request(
    state: &HttpState,
    caller: &Caller,
    path: &AttemptPath,
) -> Result<crate::db::AttemptRequest, ApiError> {
    visible_delivery(state, caller, &path.id).await?;
    state
        .db
        .attempt_request(&path.id, path.attempt)
        .await?
        .ok_or(ApiError::NotFound("attempt request"))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}/attempts/{attempt}/request",
    tag = "deliveries",
    summary = "The headers and body one webhook attempt sent",
    params(AttemptPath),
    responses(
        (status = 200, description = "The request as sent", body = AttemptRequestView),
        (status = 400, description = "Bad attempt number", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such attempt visible to this key, or it sent no request", body = ErrorBody),
    ),
)]
pub(crate) async fn get_attempt_request(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<AttemptPath>, PathRejection>,
) -> Result<Json<AttemptRequestView>, ApiError> {
    let Path(path) = path.map_err(bad_attempt)?;
    let request = visible_request(&state, &caller, &path).await?;
    Ok(Json(AttemptRequestView {
        headers: request.headers,
        // Bodies are JSON text; a byte that is not UTF-8 would show as U+FFFD here and is
        // exact in `/request/body`.
        body: request
            .body
            .map(|body| String::from_utf8_lossy(&body).into_owned()),
        body_bytes: request.body_bytes,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}/attempts/{attempt}/request/body",
    tag = "deliveries",
    summary = "The exact body bytes one webhook attempt sent and signed",
    params(AttemptPath),
    responses(
        (status = 200, description = "The body, byte for byte, with the Content-Type it was sent with (the payload's JSON, whatever its format)", content_type = "application/json", body = serde_json::Value),
        (status = 400, description = "Bad attempt number", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such attempt visible to this key, it sent no request, or its body was too large to keep", body = ErrorBody),
    ),
)]
pub(crate) async fn get_attempt_request_body(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<AttemptPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(path) = path.map_err(bad_attempt)?;
    let request = visible_request(&state, &caller, &path).await?;
    let body = request.body.ok_or(ApiError::NotFound(
        "request body (it was too large to keep)",
    ))?;
    let content_type = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map_or_else(|| "application/json".to_owned(), |(_, value)| value.clone());
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-attempt-{}.json\"",
                    path.id, path.attempt
                ),
            ),
        ],
        body,
    )
        .into_response())
}

fn bad_attempt(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("attempt must be a number from 1: {rejection}"))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

/// One delivery with every attempt made so far.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryWithAttempts {
    #[serde(flatten)]
    delivery: DeliveryView,
    /// The attempts, oldest first (as `GET /v1/deliveries/{id}/attempts`).
    attempt_log: Vec<AttemptView>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptList {
    attempts: Vec<AttemptView>,
}

/// A delivery queued again.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Resent {
    id: String,
    /// Always pending: the dispatcher picks it up at once.
    status: String,
}

/// A delivery the caller may see; another inbox's delivery does not exist for it.
async fn visible_delivery(
    state: &HttpState,
    caller: &Caller,
    id: &str,
) -> Result<DeliveryRow, ApiError> {
    state
        .db
        .get_delivery(id)
        .await?
        .filter(|delivery| caller.sees(&delivery.inbox_id))
        .ok_or(ApiError::NotFound("delivery"))
}
