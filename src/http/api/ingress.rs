//! The provider-ingress management routes (admin key): which providers an inbox has a secret
//! for, setting, rotating and removing a secret (write-only), and the calendar event types whose
//! bookings an inbox receives. Routed beside the provider webhooks, under
//! `ingress.max_body_bytes`, and checked by admin key here rather than by the `/v1` middleware.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use serde::Deserialize;

use crate::http::auth::{bearer_token, caller_for_key};
use crate::http::{ApiError, ErrorBody, HttpState};
use crate::ingress::provider::Provider;
use crate::model::{duration_ms, now_ms};

/// The secret and event-type routes.
pub(crate) fn routes() -> axum::Router<Arc<HttpState>> {
    axum::Router::new()
        .route("/v1/inboxes/{id}/ingress", get(list_secrets))
        .route(
            "/v1/inboxes/{id}/ingress/event-types",
            get(get_event_types)
                .put(put_event_types)
                .delete(delete_event_types),
        )
        .route(
            "/v1/inboxes/{id}/ingress/{provider}",
            put(set_secret).delete(delete_secret),
        )
}

/// Which providers an inbox has a secret for; never the secret.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IngressSecrets {
    inbox_id: String,
    /// Keyed by provider: mailersend, sendgrid, calcom, calendly.
    providers: std::collections::BTreeMap<String, SecretState>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SecretState {
    configured: bool,
}

/// The answer to setting a provider secret; the secret is write-only.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SecretSet {
    inbox_id: String,
    provider: String,
    /// Always true.
    configured: bool,
}

/// The calendar event types whose bookings an inbox receives.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventTypes {
    inbox_id: String,
    event_types: Vec<EventType>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventType {
    /// `calcom:<id>` or `calendly:<event type URI>`.
    event_type: String,
    /// config (from the config file, kept on every start) or api.
    source: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    secret: String,
}

/// Admin only, with the answers of the rest of the API: no key or an unknown one is `401`; a
/// per-inbox key is known but not enough, `403`.
async fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    caller_for_key(state, bearer_token(headers)?)
        .await?
        .require_admin()
}

fn known_inbox(state: &HttpState, id: &str) -> Result<(), ApiError> {
    state
        .directory
        .inbox(id)
        .map(|_| ())
        .ok_or(ApiError::NotFound("inbox"))
}

fn known_provider(name: &str) -> Result<Provider, ApiError> {
    Provider::parse(name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "provider must be one of mailersend, sendgrid, calcom, calendly; got `{name}`"
        ))
    })
}

/// Which providers have a secret: a "configured" flag each, never the secret.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/ingress",
    tag = "ingress",
    summary = "Which providers have a secret (admin; never the secret)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "Which providers have a secret", body = IngressSecrets),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
pub(crate) async fn list_secrets(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<IngressSecrets>, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    let configured = state.db.ingress_providers(&id).await?;
    let providers = Provider::ALL
        .iter()
        .map(|provider| {
            let name = provider.as_str();
            (
                name.to_owned(),
                SecretState {
                    configured: configured.iter().any(|c| c == name),
                },
            )
        })
        .collect();
    Ok(Json(IngressSecrets {
        inbox_id: id,
        providers,
    }))
}

#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/ingress/{provider}",
    tag = "ingress",
    summary = "Set or rotate a provider secret (admin; write-only)",
    params(
        ("id" = String, Path, description = "Inbox id"),
        ("provider" = String, Path, description = "mailersend, sendgrid, calcom or calendly"),
    ),
    request_body = SecretBody,
    responses(
        (status = 200, description = "Set", body = SecretSet),
        (status = 400, description = "Unknown provider or empty secret", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
pub(crate) async fn set_secret(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((id, provider)): Path<(String, String)>,
    body: Result<Json<SecretBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SecretSet>, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    let provider = known_provider(&provider)?;
    let Json(body) = body.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    if body.secret.trim().is_empty() {
        return Err(ApiError::BadRequest("secret must not be empty".to_owned()));
    }
    let grace_ms = duration_ms(state.ingress.config.rotation_grace());
    state
        .db
        .set_ingress_secret(
            &id,
            provider.as_str(),
            body.secret.trim(),
            now_ms() + grace_ms,
        )
        .await?;
    Ok(Json(SecretSet {
        inbox_id: id,
        provider: provider.as_str().to_owned(),
        configured: true,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/inboxes/{id}/ingress/{provider}",
    tag = "ingress",
    summary = "Remove a provider secret (admin)",
    params(
        ("id" = String, Path, description = "Inbox id"),
        ("provider" = String, Path, description = "mailersend, sendgrid, calcom or calendly"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Unknown provider", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox or no secret", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_secret(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((id, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    let provider = known_provider(&provider)?;
    if state
        .db
        .delete_ingress_secret(&id, provider.as_str())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("ingress secret"))
    }
}

/// Most event types one inbox can be given through the API, and longest accepted entry.
const MAX_EVENT_TYPES: usize = 200;
const MAX_EVENT_TYPE_LEN: usize = 512;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypesBody {
    /// `calcom:<eventTypeId>` or `calendly:<event type URI>`; replaces the inbox's API-set list.
    event_types: Vec<String>,
}

async fn event_types_reply(state: &HttpState, id: &str) -> Result<Json<EventTypes>, ApiError> {
    let rows = state.db.ingress_event_types(id).await?;
    let event_types = rows
        .into_iter()
        .map(|row| EventType {
            event_type: row.event_type,
            source: row.source,
        })
        .collect();
    Ok(Json(EventTypes {
        inbox_id: id.to_owned(),
        event_types,
    }))
}

/// The calendar event types whose bookings this inbox receives.
#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/ingress/event-types",
    tag = "ingress",
    summary = "Calendar event types the inbox receives (admin)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "The event types", body = EventTypes),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
pub(crate) async fn get_event_types(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EventTypes>, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    event_types_reply(&state, &id).await
}

/// Replaces the event types set through the API; those the config file gives the inbox stay.
#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/ingress/event-types",
    tag = "ingress",
    summary = "Set the calendar event types the inbox receives (admin)",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = EventTypesBody,
    responses(
        (status = 200, description = "The event types", body = EventTypes),
        (status = 400, description = "Not `calcom:<id>` / `calendly:<URI>`, or too many", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox", body = ErrorBody),
        (status = 409, description = "An event type belongs to another inbox", body = ErrorBody),
    ),
)]
pub(crate) async fn put_event_types(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<EventTypesBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EventTypes>, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    let Json(body) = body.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    if body.event_types.len() > MAX_EVENT_TYPES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_EVENT_TYPES} event types per inbox"
        )));
    }
    let mut event_types: Vec<String> = Vec::with_capacity(body.event_types.len());
    for event_type in body.event_types {
        let event_type = event_type.trim().to_owned();
        let well_formed = event_type.len() <= MAX_EVENT_TYPE_LEN
            && Provider::ALL.iter().any(|provider| {
                provider.is_calendar()
                    && event_type
                        .strip_prefix(provider.as_str())
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|id| !id.is_empty())
            });
        if !well_formed {
            return Err(ApiError::BadRequest(format!(
                "`{event_type}` is not `calcom:<eventTypeId>` or `calendly:<event type URI>`"
            )));
        }
        if !event_types.contains(&event_type) {
            event_types.push(event_type);
        }
    }
    state.db.set_ingress_event_types(&id, &event_types).await?;
    event_types_reply(&state, &id).await
}

/// Removes every event type set through the API (config entries stay).
#[utoipa::path(
    delete,
    path = "/v1/inboxes/{id}/ingress/event-types",
    tag = "ingress",
    summary = "Remove the API-set calendar event types of the inbox (admin)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "A per-inbox key: this needs an admin key", body = ErrorBody),
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_event_types(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers).await?;
    known_inbox(&state, &id)?;
    state.db.set_ingress_event_types(&id, &[]).await?;
    Ok(StatusCode::NO_CONTENT)
}
