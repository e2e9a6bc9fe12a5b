//! Messages: `GET /v1/messages/{id}` (the stored event, as delivered), `GET
//! /v1/messages/{id}/raw` (the raw .eml, byte for byte) and `GET /v1/inboxes/{id}/messages` (an
//! inbox's messages, filtered).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::inboxes::visible_inbox;
use crate::db::{MessageFilter, MessageRow, MessageSummaryRow};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::rfc3339;

#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    summary = "The stored mail.received event",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "The stored event, as delivered with `payload = \"mxhook\"`", body = StoredEvent),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_message(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    // Served as stored, the very bytes a `payload = "mxhook"` endpoint receives: checked to be
    // JSON, not built and written again.
    serde_json::from_str::<serde::de::IgnoredAny>(&message.event_json)
        .map_err(|err| ApiError::Internal(format!("stored event of {id} is not JSON: {err}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        message.event_json,
    )
        .into_response())
}

/// A message the caller may see; another inbox's message does not exist for it.
pub(crate) async fn visible_message(
    state: &HttpState,
    caller: &Caller,
    id: &str,
) -> Result<MessageRow, ApiError> {
    state
        .db
        .get_message(id)
        .await?
        .filter(|message| caller.sees(&message.inbox_id))
        .ok_or(ApiError::NotFound("message"))
}

#[utoipa::path(
    get,
    path = "/v1/messages/{id}/raw",
    tag = "messages",
    summary = "The raw .eml, byte for byte",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "message/rfc822 bytes", content_type = "message/rfc822", body = String),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_raw_message(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
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

/// A stored event, as `GET /v1/messages/{id}` returns it.
///
/// For mail this is the `mail.received` event of SPEC.md "The `mail.received` event"; an
/// event from calendar provider ingress has `type` `booking.*` with `provider`, `booking` and
/// `payload` instead of the mail fields. The event is served as stored (it is the very payload
/// delivered), so this type only documents it: `email` and `auth` with the event's own types,
/// `booking` and `payload` free-form (`additionalProperties: true`; SPEC.md gives their shape in
/// prose), and the OpenAPI test compares every field of a real event with this schema.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only; the handler returns the stored JSON as is
pub(crate) struct StoredEvent {
    /// mail.received, or booking.* for a calendar event.
    r#type: String,
    /// Stable across retries and resends: the idempotency key.
    event_id: String,
    /// The inbox id.
    agent_id: String,
    /// The gateway's id of this message.
    message_id: String,
    timestamp: String,
    s3_bucket: String,
    s3_key: String,
    /// The From address.
    sender: Option<String>,
    envelope_from: Option<String>,
    envelope_to: Option<Vec<String>>,
    /// The envelope address that reached this inbox, as sent; the first in RCPT order.
    recipient: Option<String>,
    /// The text after `+` in the recipient's local part.
    recipient_tag: Option<String>,
    subject: Option<String>,
    thread_id: Option<String>,
    extracted_text: Option<String>,
    /// DMARC pass: aligned SPF or DKIM for the From domain.
    sender_verified: Option<bool>,
    /// trusted, verified, unverified or suspicious.
    peer_trust_tier: Option<String>,
    traffic_types: Option<Vec<String>>,
    rate_limited: Option<bool>,
    is_duplicate: Option<bool>,
    quarantined: Option<bool>,
    /// Which sender-policy rules the message broke.
    policy_violations: Option<Vec<String>>,
    /// Size of the raw message in bytes.
    size: Option<u64>,
    remote_ip: Option<String>,
    /// The TLS the message came over (`version`, `cipher`); null for a plaintext session.
    tls: Option<crate::model::TlsFacts>,
    helo: Option<String>,
    /// Structured verdicts: checked, spf, dkim[], dmarc, arc.
    auth: Option<crate::event::Auth>,
    warnings: Option<Vec<String>>,
    /// Set when bodies were left out past the payload cap; names them and the raw URL.
    omitted_reason: Option<String>,
    /// The full content: the BotMailRoom fields of SPEC.md.
    email: Option<crate::event::Email>,
    /// Calendar events: cal.com or calendly.
    provider: Option<String>,
    /// Calendar events: the booking, normalised.
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>, additional_properties)]
    booking: Option<serde_json::Value>,
    /// Calendar events: the provider's payload as received.
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>, additional_properties)]
    payload: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessagesQuery {
    /// Default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    sender: Option<String>,
    subject: Option<String>,
    received_after: Option<String>,
    received_before: Option<String>,
    /// true: only messages the inbox policy quarantined; false: only the others.
    quarantined: Option<bool>,
}

/// A page of an inbox's messages, newest first.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MessageList {
    messages: Vec<MessageSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required)]
    next_cursor: Option<String>,
}

/// One message in an inbox listing.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MessageSummary {
    id: String,
    inbox_id: String,
    event_id: String,
    #[schema(required)]
    sender: Option<String>,
    #[schema(required)]
    envelope_from: Option<String>,
    #[schema(required)]
    subject: Option<String>,
    #[schema(required)]
    header_message_id: Option<String>,
    size: i64,
    received_at: String,
    /// The inbox policy held it back: stored, not delivered.
    quarantined: bool,
    /// `inbound` for mail the inbox received, `outbound` for a reply it sent.
    direction: crate::model::Direction,
}

impl From<MessageSummaryRow> for MessageSummary {
    fn from(row: MessageSummaryRow) -> Self {
        Self {
            id: row.id,
            inbox_id: row.inbox_id,
            event_id: row.event_id,
            sender: row.sender,
            envelope_from: row.envelope_from,
            subject: row.subject,
            header_message_id: row.header_message_id,
            size: row.size,
            received_at: rfc3339(row.received_at_ms),
            quarantined: row.quarantined,
            direction: row.direction,
        }
    }
}

fn parse_time(key: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|time| time.timestamp_millis())
                .map_err(|_| ApiError::BadRequest(format!("{key}: expected an RFC 3339 time")))
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/messages",
    tag = "messages",
    summary = "Messages of an inbox, newest first, paged",
    params(("id" = String, Path, description = "Inbox id"), MessagesQuery),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn list_messages(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".to_owned(),
        ));
    }
    let filter = MessageFilter {
        before: query.cursor,
        sender: query.sender,
        subject_contains: query.subject,
        received_after_ms: parse_time("received_after", query.received_after.as_deref())?,
        received_before_ms: parse_time("received_before", query.received_before.as_deref())?,
        quarantined: query.quarantined,
        limit,
    };
    let messages: Vec<MessageSummary> = state
        .db
        .list_messages(&id, &filter)
        .await?
        .into_iter()
        .map(MessageSummary::from)
        .collect();
    let next_cursor = (i64::try_from(messages.len()).ok() == Some(limit))
        .then(|| messages.last().map(|message| message.id.clone()))
        .flatten();
    Ok(Json(MessageList {
        messages,
        next_cursor,
    }))
}
