//! The management HTTP API (axum): health, messages and their raw bytes, deliveries with their
//! attempt logs, and resend.
//!
//! Every `/v1` route needs `Authorization: Bearer <admin key>`, compared in constant time.
//! Responses never contain signing secrets or internal error detail.

mod error;

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;

pub use error::ApiError;

use crate::db::Db;
use crate::model::DeliveryStatus;
use crate::store::Store;

pub struct ApiState {
    pub db: Db,
    pub store: Store,
    pub admin_keys: Vec<String>,
    pub dispatcher_wakeup: Arc<Notify>,
}

pub fn router(state: Arc<ApiState>) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/messages/{id}/raw", get(get_raw_message))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/attempts", get(list_attempts))
        .route("/v1/deliveries/{id}/resend", post(resend_delivery))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error": {"code": "method_not_allowed", "message": "method not allowed"}})),
            )
        })
        .with_state(state)
}

async fn require_admin(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize_admin(&state.admin_keys, &headers)?;
    Ok(next.run(request).await)
}

/// Checks `Authorization: Bearer <key>` against the admin keys.
///
/// # Errors
/// [`ApiError::Unauthorized`] when the header is missing or the key is not an admin key.
pub fn authorize_admin(admin_keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized("missing Bearer token"))?;
    // Every key is compared, matched or not, so timing reveals neither which key nor how much
    // of it matched.
    let matched = admin_keys.iter().fold(false, |found, key| {
        found | bool::from(key.as_bytes().ct_eq(presented.as_bytes()))
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid API key"))
    }
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    match state.db.ping().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

async fn get_message(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let message = state
        .db
        .get_message(&id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    let event: Value = serde_json::from_str(&message.event_json)
        .map_err(|err| ApiError::Internal(format!("stored event of {id} is not JSON: {err}")))?;
    Ok(Json(event))
}

async fn get_raw_message(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let message = state
        .db
        .get_message(&id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    let bytes = state
        .store
        .get(&message.storage_key)
        .await
        .map_err(|err| match err {
            crate::store::Error::NotFound { .. } => ApiError::NotFound("raw message"),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.eml\"", message.id),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    status: Option<String>,
    inbox_id: Option<String>,
    limit: Option<i64>,
}

async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::BadRequest(err.body_text()))?;
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
    Ok(Json(json!({ "deliveries": deliveries })))
}

async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let delivery = state
        .db
        .get_delivery(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let attempts = state.db.list_attempts(&id).await?;
    let mut body =
        serde_json::to_value(delivery).map_err(|err| ApiError::Internal(err.to_string()))?;
    body["attempt_log"] = json!(attempts);
    Ok(Json(body))
}

async fn list_attempts(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .db
        .get_delivery(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let attempts = state.db.list_attempts(&id).await?;
    Ok(Json(json!({ "attempts": attempts })))
}

async fn resend_delivery(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.db.resend(&id).await? {
        return Err(ApiError::NotFound("delivery"));
    }
    state.dispatcher_wakeup.notify_waiters();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "status": "pending" })),
    ))
}
