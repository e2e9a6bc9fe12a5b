//! Deliveries and their attempt logs, and resend: `GET /v1/deliveries`, `GET
//! /v1/deliveries/{id}`, `GET /v1/deliveries/{id}/attempts`, `POST /v1/deliveries/{id}/resend`.
//! A per-inbox key sees only its own inbox's deliveries; any other answers 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use crate::db::{AttemptView, DeliveryView};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::DeliveryStatus;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryQuery {
    /// pending, delivered or dead (the dead-letter queue).
    pub(crate) status: Option<String>,
    pub(crate) inbox_id: Option<String>,
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
        .await?;
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
    let attempt_log = state.db.list_attempts(&id).await?;
    Ok(Json(DeliveryWithAttempts {
        delivery,
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
    let attempts = state.db.list_attempts(&id).await?;
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
) -> Result<crate::db::DeliveryView, ApiError> {
    state
        .db
        .get_delivery(id)
        .await?
        .filter(|delivery| caller.sees(&delivery.inbox_id))
        .ok_or(ApiError::NotFound("delivery"))
}
