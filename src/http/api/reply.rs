//! `POST /v1/messages/{id}/reply`: the agent answers a received message through the gateway.
//! The reply is built ([`crate::reply`]), stored in the message's thread as an outbound message
//! and queued for the smarthost ([`crate::intake::Intake::accept_reply`]); the answer names
//! the stored reply, whose delivery shows like any other.
//!
//! Guard rails before anything is stored: no reply to a bounce, an auto-reply or the null
//! sender unless forced (RFC 3834: automatic mail must not be answered, or agents loop with
//! responders); the inbox's replies per hour (`replies.max_per_hour`, counted across nodes);
//! never to one of the gateway's own inboxes. An `Idempotency-Key` header makes a retried
//! request answer the first one's reply instead of sending twice.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::messages::visible_message;
use crate::db::KeyReservation;
use crate::event::{Event, MailEvent};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::intake::Outcome;
use crate::model::{new_id, now_ms};
use crate::reply::{self, ReplyAttachment, ReplyRequest};

/// A reservation older than this whose reply never got stored was left by a request that died
/// (a crash between reserving and storing); a retry may take the key over.
const STALE_RESERVATION_MS: i64 = 120_000;
/// Longest Idempotency-Key taken.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Traffic types that are automatic mail, which a reply would answer into a loop.
const AUTOMATIC: [&str; 2] = ["bounce", "auto_reply"];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplyBody {
    /// The plain-text body. Also the HTML part, rendered as markdown, when `html` is not given.
    text: String,
    /// The HTML part, as given.
    #[serde(default)]
    html: Option<String>,
    /// Also to the original's To and Cc (never the gateway's own inboxes).
    #[serde(default)]
    reply_all: bool,
    #[serde(default)]
    attachments: Vec<ReplyAttachmentBody>,
    /// Answer even a bounce, an auto-reply or a null-sender message.
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplyAttachmentBody {
    filename: String,
    content_type: String,
    content_base64: String,
}

/// The stored reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplySent {
    /// The gateway id of the stored reply (`GET /v1/messages/{id}`); its delivery is listed
    /// under the inbox's deliveries with channel `reply`.
    message_id: String,
}

#[utoipa::path(
    post,
    path = "/v1/messages/{id}/reply",
    tag = "messages",
    summary = "Reply to a received message: stored in its thread (direction outbound) and sent through the smarthost with retries",
    params(
        ("id" = String, Path, description = "Message id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Requests with the same key for the same inbox make one reply; a repeat answers the first one's message_id"),
    ),
    request_body = ReplyBody,
    responses(
        (status = 200, description = "The reply is stored and queued", body = ReplySent),
        (status = 400, description = "Malformed Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 409, description = "The message is automatic mail (bounce, auto-reply, null sender) and `force` is not set, is not a received mail, no smarthost is configured, or a request with the same Idempotency-Key is still being made", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields, an empty text, an attachment that cannot be used, or nobody to send to; the message names the field", body = ErrorBody),
        (status = 429, description = "The inbox sent replies.max_per_hour replies in the last hour", body = ErrorBody),
        (status = 503, description = "Storing the reply failed; nothing was sent", body = ErrorBody),
    ),
)]
pub(crate) async fn reply(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ReplyBody>, JsonRejection>,
) -> Result<Json<ReplySent>, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    let Json(body) = body?;
    let idempotency_key = idempotency_key(&headers)?;
    let original = match Event::from_json(&message.event_json) {
        Ok(Event::Mail(mail)) if mail.direction.is_none_or(|way| !way.is_outbound()) => mail,
        Ok(Event::Mail(_)) => {
            return Err(ApiError::Conflict(
                "this message is a reply the inbox sent; reply to the mail it received".into(),
            ));
        }
        Ok(_) => {
            return Err(ApiError::Conflict(
                "only received mail can be answered".into(),
            ));
        }
        Err(err) => return Err(ApiError::Internal(format!("stored event: {err}"))),
    };
    if !body.force {
        refuse_automatic(&original)?;
    }
    let request = request_of(body)?;
    if !state.replier.can_send() {
        return Err(ApiError::Conflict(
            "no smarthost is configured (forward.smarthost): replies cannot be sent".into(),
        ));
    }
    let inbox_id = message.inbox_id.clone();
    let reply_id = new_id("msg");
    if let Some(key) = &idempotency_key
        && let Some(earlier) = reserve(&state, &inbox_id, key, &reply_id).await?
    {
        return Ok(Json(ReplySent {
            message_id: earlier,
        }));
    }
    let result = send(&state, &original, &inbox_id, &reply_id, &request).await;
    if result.is_err()
        && let Some(key) = &idempotency_key
        && let Err(err) = state.db.release_reply_key(&inbox_id, key, &reply_id).await
    {
        tracing::warn!(error = %err, "giving back an Idempotency-Key failed");
    }
    result?;
    let key_kind = match &caller {
        Caller::Admin => "admin",
        Caller::Inbox(_) => "inbox",
    };
    tracing::info!(inbox = %inbox_id, answered = %id, reply = %reply_id, key = key_kind, "reply stored and queued");
    Ok(Json(ReplySent {
        message_id: reply_id,
    }))
}

/// Holds the inbox to its rate, builds the reply and hands it to intake.
async fn send(
    state: &HttpState,
    original: &MailEvent,
    inbox_id: &str,
    reply_id: &str,
    request: &ReplyRequest,
) -> Result<(), ApiError> {
    let limit = state.replier.max_per_hour();
    let sent = state
        .db
        .count_replies_since(inbox_id, now_ms() - 3_600_000)
        .await?;
    if sent >= i64::from(limit) {
        return Err(ApiError::RateLimited(format!(
            "this inbox sent {sent} replies in the last hour (replies.max_per_hour = {limit})"
        )));
    }
    let from = from_address(state, original, inbox_id)?;
    let built = state
        .replier
        .build(original, &from, reply_id, request, |address| {
            state.directory.lookup(address).is_some()
        })
        .map_err(|err| match err {
            reply::Error::Sign(_) | reply::Error::Key { .. } => ApiError::Internal(err.to_string()),
            other => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: other.to_string(),
            },
        })?;
    match state
        .intake
        .accept_reply(inbox_id, reply_id, original.thread_id.as_str(), &built)
        .await
    {
        Outcome::Accepted { .. } => Ok(()),
        Outcome::TempFail { reason } | Outcome::Reject { reason } => Err(ApiError::Rejected {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the reply was not stored ({reason}); nothing was sent"),
        }),
    }
}

/// The address the mail reached the inbox at (as the sender wrote it, tag included), or the
/// inbox's first address.
fn from_address(
    state: &HttpState,
    original: &MailEvent,
    inbox_id: &str,
) -> Result<String, ApiError> {
    let reached = original.recipient.trim();
    if !reached.is_empty()
        && state
            .directory
            .lookup(&reached.to_ascii_lowercase())
            .as_deref()
            == Some(inbox_id)
    {
        return Ok(reached.to_owned());
    }
    state
        .directory
        .inbox(inbox_id)
        .and_then(|inbox| inbox.addresses.into_iter().next())
        .ok_or_else(|| {
            ApiError::Conflict("the inbox has no address to send from (is it disabled?)".into())
        })
}

fn refuse_automatic(original: &MailEvent) -> Result<(), ApiError> {
    if let Some(kind) = original
        .traffic_types
        .iter()
        .find(|kind| AUTOMATIC.contains(&kind.as_str()))
    {
        return Err(ApiError::Conflict(format!(
            "the message is automatic mail ({kind}); answering it could loop: set `force` to reply anyway"
        )));
    }
    if original.envelope_from.is_empty() {
        return Err(ApiError::Conflict(
            "the message came from the null sender (a bounce or notification); set `force` to reply anyway".into(),
        ));
    }
    Ok(())
}

fn request_of(body: ReplyBody) -> Result<ReplyRequest, ApiError> {
    let invalid = |message: String| ApiError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message,
    };
    if body.text.trim().is_empty() {
        return Err(invalid("text: must not be empty".into()));
    }
    let mut attachments = Vec::with_capacity(body.attachments.len());
    for (idx, attachment) in body.attachments.into_iter().enumerate() {
        let field = |name: &str| format!("attachments[{idx}].{name}");
        let filename = attachment.filename.trim();
        if filename.is_empty() || filename.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{}: must be a name without control characters",
                field("filename")
            )));
        }
        if lettre::message::header::ContentType::parse(&attachment.content_type).is_err() {
            return Err(invalid(format!(
                "{}: `{}` is not a MIME type",
                field("content_type"),
                attachment.content_type
            )));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(attachment.content_base64.trim())
            .map_err(|err| invalid(format!("{}: not base64 ({err})", field("content_base64"))))?;
        attachments.push(ReplyAttachment {
            filename: filename.to_owned(),
            content_type: attachment.content_type,
            content,
        });
    }
    Ok(ReplyRequest {
        text: body.text,
        html: body.html,
        reply_all: body.reply_all,
        attachments,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| {
            !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic() || byte == b' ')
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Takes the key for this request. `Some(id)`: an earlier request with the key made reply `id`,
/// which answers this one too.
async fn reserve(
    state: &HttpState,
    inbox_id: &str,
    key: &str,
    reply_id: &str,
) -> Result<Option<String>, ApiError> {
    for _ in 0..2 {
        let now = now_ms();
        match state
            .db
            .reserve_reply_key(inbox_id, key, reply_id, now)
            .await?
        {
            KeyReservation::Reserved => return Ok(None),
            KeyReservation::Taken { message_id, .. }
                if !message_id.is_empty() && state.db.get_message(&message_id).await?.is_some() =>
            {
                return Ok(Some(message_id));
            }
            KeyReservation::Taken {
                message_id,
                created_at,
            } if created_at < now - STALE_RESERVATION_MS || message_id.is_empty() => {
                state
                    .db
                    .release_reply_key(inbox_id, key, &message_id)
                    .await?;
            }
            KeyReservation::Taken { .. } => break,
        }
    }
    Err(ApiError::Conflict(
        "a reply with this Idempotency-Key is being made; retry in a moment".into(),
    ))
}
