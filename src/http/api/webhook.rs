//! The inbox webhook: `GET`/`PUT`/`DELETE /v1/inboxes/{id}/webhook` (the signing secret shown only
//! when created or rotated) and `GET /v1/inboxes/{id}/endpoints` (delivery stats per endpoint).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use super::inboxes::visible_inbox;
use crate::db::WebhookSettings;
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::{
    AttemptOutcome, Channel, EndpointSettings, PayloadFormat, SignatureFormat, SignatureScheme,
};
use crate::model::{duration_ms, now_ms, rfc3339};

/// The inbox webhook as the API shows it: whether a secret is set, never the secret, except
/// `signing_secret` in the one answer that created it.
///
/// The fields without `skip_serializing_if` are always sent, `null` when unset, so each is
/// `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookView {
    url: String,
    enabled: bool,
    #[schema(value_type = String)]
    signature: SignatureScheme,
    #[schema(value_type = String)]
    payload: PayloadFormat,
    signature_header: String,
    #[schema(value_type = String)]
    signature_format: SignatureFormat,
    verify_tls: bool,
    /// Why the gateway switched the webhook off (410 Gone, or failing too long).
    #[schema(required)]
    disabled_reason: Option<String>,
    ordered: bool,
    /// The event types it receives: types, `prefix.*` patterns and `*`.
    #[schema(example = json!(["mail.received", "calendar.*"]))]
    events: Vec<String>,
    /// Extra request headers of every delivery.
    custom_headers: std::collections::BTreeMap<String, String>,
    /// Request timeout in whole seconds; null is `delivery.timeout_s`.
    #[schema(required)]
    timeout_s: Option<u32>,
    /// Retries before the delivery is dead-lettered; null is `delivery.max_retries`.
    #[schema(required)]
    max_retries: Option<u32>,
    has_secret: bool,
    /// Until when the secret a rotation replaced still signs beside the new one.
    #[schema(required)]
    previous_secret_expires_at: Option<String>,
    /// Delivery statistics (GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<StatsView>,
    /// Only in the answer that created or rotated the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_secret: Option<String>,
}

/// One endpoint's delivery statistics.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct StatsView {
    attempts: i64,
    delivered: i64,
    /// Share of attempts the endpoint accepted, 0 to 1; null before the first attempt.
    #[schema(required)]
    success_rate: Option<f64>,
    #[schema(required)]
    last_triggered: Option<String>,
    #[schema(required)]
    last_status_code: Option<i64>,
    #[schema(required)]
    last_outcome: Option<AttemptOutcome>,
}

/// The statistics of one endpoint of an inbox: `inbox`, or `rule:<id>` with its channel.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointView {
    endpoint_ref: String,
    channel: Channel,
    #[serde(flatten)]
    stats: StatsView,
}

/// The webhook without its secrets: only whether one is set and until when the old one signs.
pub(crate) fn webhook_view(webhook: &WebhookSettings) -> WebhookView {
    WebhookView {
        url: webhook.url.clone(),
        enabled: webhook.enabled,
        signature: webhook.signature,
        payload: webhook.payload,
        signature_header: webhook
            .signature_header
            .as_deref()
            .unwrap_or(crate::model::DEFAULT_HMAC_HEADER)
            .to_owned(),
        signature_format: webhook.signature_format,
        verify_tls: webhook.verify_tls,
        disabled_reason: webhook.disabled_reason.clone(),
        ordered: webhook.ordered,
        events: webhook.events.names(),
        custom_headers: webhook.endpoint.custom_headers.clone(),
        timeout_s: webhook.endpoint.timeout_s,
        max_retries: webhook.endpoint.max_retries,
        has_secret: webhook.secret.is_some(),
        previous_secret_expires_at: webhook
            .previous_secret_expires_at
            .filter(|at| *at > now_ms() && webhook.previous_secret.is_some())
            .map(rfc3339),
        stats: None,
        signing_secret: None,
    }
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/webhook",
    tag = "webhook",
    summary = "The inbox webhook, without secrets, with its delivery stats (attempts, delivered, success_rate, last_triggered, last_status_code, last_outcome)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "The webhook with stats", body = WebhookView),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_webhook(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let inbox = visible_inbox(&state, &caller, &id).await?;
    let webhook = inbox.webhook.ok_or(ApiError::NotFound("webhook"))?;
    let stats = state
        .db
        .endpoint_stats(Some(&id))
        .await?
        .into_iter()
        .find(|stats| stats.endpoint_ref == "inbox");
    let mut view = webhook_view(&webhook);
    view.stats = Some(stats_view(stats.as_ref()));
    Ok(Json(view))
}

/// One endpoint's delivery statistics as the API shows them.
fn stats_view(stats: Option<&crate::db::EndpointStats>) -> StatsView {
    StatsView {
        attempts: stats.map_or(0, |stats| stats.attempts),
        delivered: stats.map_or(0, |stats| stats.delivered),
        success_rate: stats.and_then(|stats| stats.success_rate),
        last_triggered: stats.and_then(|stats| stats.last_triggered_ms).map(rfc3339),
        last_status_code: stats.and_then(|stats| stats.last_status_code),
        last_outcome: stats.and_then(|stats| stats.last_outcome),
    }
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/endpoints",
    tag = "webhook",
    summary = "Delivery stats of every endpoint of the inbox that has been attempted: the inbox webhook (`inbox`) and each rule's channels (`rule:<id>`)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "`[{endpoint_ref, channel, attempts, delivered, success_rate, last_triggered, last_status_code, last_outcome}]`", body = Vec<EndpointView>),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn list_endpoints(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EndpointView>>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let endpoints = state
        .db
        .endpoint_stats(Some(&id))
        .await?
        .iter()
        .map(|stats| EndpointView {
            endpoint_ref: stats.endpoint_ref.clone(),
            channel: stats.channel,
            stats: stats_view(Some(stats)),
        })
        .collect();
    Ok(Json(endpoints))
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutWebhook {
    url: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    rotate_secret: bool,
    /// agentmail (default), standard, botmailroom or hmac-sha256.
    #[schema(value_type = Option<String>)]
    signature: Option<SignatureScheme>,
    /// mxhook (default), botmailroom, event-data or event-data-ts.
    #[schema(value_type = Option<String>)]
    payload: Option<PayloadFormat>,
    /// The hmac-sha256 scheme's header (default X-Webhook-Signature; unchanged when left out).
    signature_header: Option<String>,
    /// The hmac-sha256 scheme's value: sha256=hex (default) or hex; unchanged when left out.
    #[schema(value_type = Option<String>)]
    signature_format: Option<SignatureFormat>,
    /// Whether the receiver's certificate must verify (default true; unchanged when left out).
    verify_tls: Option<bool>,
    /// Deliver one thread's events in acceptance order (default false; unchanged when left out).
    ordered: Option<bool>,
    /// The event types it receives: types, `prefix.*` patterns and `*` (default
    /// `["mail.received", "calendar.*"]`; unchanged when left out). An unknown one is a 422.
    #[schema(example = json!(["mail.*", "delivery.dead"]))]
    events: Option<Vec<String>>,
    /// Extra request headers (replace the stored ones; `{}` removes them; unchanged when left
    /// out). Reserved names and the signature header cannot be set.
    custom_headers: Option<std::collections::BTreeMap<String, String>>,
    /// Request timeout in whole seconds, 1-300; null goes back to `delivery.timeout_s`
    /// (unchanged when left out).
    #[serde(default, deserialize_with = "set_or_null")]
    #[schema(value_type = Option<u32>)]
    timeout_s: Option<Option<u32>>,
    /// Retries before dead-lettering, at most 10; null goes back to `delivery.max_retries`
    /// (unchanged when left out).
    #[serde(default, deserialize_with = "set_or_null")]
    #[schema(value_type = Option<u32>)]
    max_retries: Option<Option<u32>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn set_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Whether a secret can sign under this scheme (`standard` needs `whsec_<base64>`).
fn secret_fits(scheme: SignatureScheme, secret: &str) -> bool {
    scheme != SignatureScheme::Standard || crate::signature::decode_standard_secret(secret).is_ok()
}

/// 32 random bytes, written the way the scheme expects them.
fn generate_secret(scheme: SignatureScheme) -> String {
    let bytes: [u8; 32] = rand::random();
    match scheme {
        SignatureScheme::Standard => format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        _ => hex::encode(bytes),
    }
}

#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/webhook",
    tag = "webhook",
    summary = "Set the inbox webhook; signing_secret is returned on first setup or rotation only",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = PutWebhook,
    responses(
        (status = 200, description = "The webhook, with signing_secret when one was created", body = WebhookView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn put_webhook(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<PutWebhook>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let inbox = visible_inbox(&state, &caller, &id).await?;
    let Json(body) = body?;
    crate::model::validate_webhook_url(&body.url, state.delivery.allow_http)
        .map_err(|reason| ApiError::BadRequest(format!("url: {reason}")))?;
    if let Some(header) = &body.signature_header {
        crate::model::validate_signature_header(header)
            .map_err(|reason| ApiError::BadRequest(format!("signature_header: {reason}")))?;
    }
    let events = body
        .events
        .as_deref()
        .map(crate::model::Subscription::parse)
        .transpose()
        .map_err(|reason| ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("events: {reason}"),
        })?;
    let existing = inbox.webhook;
    let signature = body
        .signature
        .or(existing.as_ref().map(|webhook| webhook.signature))
        .unwrap_or(SignatureScheme::Agentmail);
    let payload = body
        .payload
        .or(existing.as_ref().map(|webhook| webhook.payload))
        .unwrap_or(PayloadFormat::Mxhook);
    let now = now_ms();
    let current = existing
        .as_ref()
        .and_then(|webhook| webhook.secret.clone())
        .filter(|secret| secret_fits(signature, secret));
    let (secret, previous_secret, previous_secret_expires_at, revealed) = match current {
        Some(current) if body.rotate_secret => {
            let fresh = generate_secret(signature);
            (
                fresh.clone(),
                Some(current),
                Some(now + duration_ms(state.delivery.secret_rotation_grace())),
                Some(fresh),
            )
        }
        Some(current) => {
            let kept = existing.as_ref().and_then(|webhook| {
                webhook
                    .previous_secret
                    .clone()
                    .filter(|secret| secret_fits(signature, secret))
                    .zip(webhook.previous_secret_expires_at)
                    .filter(|(_, until)| *until > now)
            });
            (
                current,
                kept.as_ref().map(|(secret, _)| secret.clone()),
                kept.map(|(_, until)| until),
                None,
            )
        }
        None => {
            let fresh = generate_secret(signature);
            (fresh.clone(), None, None, Some(fresh))
        }
    };
    let stored = existing
        .as_ref()
        .map(|webhook| webhook.endpoint.clone())
        .unwrap_or_default();
    let endpoint = EndpointSettings {
        custom_headers: body.custom_headers.unwrap_or(stored.custom_headers),
        timeout_s: body.timeout_s.unwrap_or(stored.timeout_s),
        max_retries: body.max_retries.unwrap_or(stored.max_retries),
    };
    let signature_header = body.signature_header.or_else(|| {
        existing
            .as_ref()
            .and_then(|webhook| webhook.signature_header.clone())
    });
    endpoint
        .validate(signature, signature_header.as_deref())
        .map_err(|(field, reason)| ApiError::BadRequest(format!("{field}: {reason}")))?;
    let settings = WebhookSettings {
        url: body.url,
        enabled: body.enabled,
        signature,
        payload,
        signature_header,
        signature_format: body
            .signature_format
            .or(existing.as_ref().map(|webhook| webhook.signature_format))
            .unwrap_or_default(),
        secret: Some(secret),
        previous_secret,
        previous_secret_expires_at,
        verify_tls: body
            .verify_tls
            .or(existing.as_ref().map(|webhook| webhook.verify_tls))
            .unwrap_or(true),
        disabled_reason: None,
        ordered: body
            .ordered
            .or(existing.as_ref().map(|webhook| webhook.ordered))
            .unwrap_or(false),
        events: events
            .or_else(|| existing.as_ref().map(|webhook| webhook.events.clone()))
            .unwrap_or_default(),
        endpoint,
    };
    if !state.db.set_webhook(&id, Some(&settings)).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    state.refresh_directory().await?;
    let mut view = webhook_view(&settings);
    view.signing_secret = revealed;
    // A Value, because the dashboard reads this answer too.
    serde_json::to_value(view)
        .map(Json)
        .map_err(|err| ApiError::Internal(err.to_string()))
}

#[utoipa::path(
    delete,
    path = "/v1/inboxes/{id}/webhook",
    tag = "webhook",
    summary = "Remove the inbox webhook",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_webhook(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let inbox = visible_inbox(&state, &caller, &id).await?;
    if inbox.webhook.is_none() {
        return Err(ApiError::NotFound("webhook"));
    }
    state.db.set_webhook(&id, None).await?;
    state.refresh_directory().await?;
    Ok(StatusCode::NO_CONTENT)
}
