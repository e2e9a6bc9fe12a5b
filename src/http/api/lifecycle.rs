//! Keeping and removing mail, per message: `DELETE /v1/messages/{id}` (erasure), `GET
//! /v1/messages/{id}/attachments/{attachment_id}` (one attachment's decoded bytes) and `POST
//! /v1/messages/{id}/release` (a quarantined message delivered now). Erasure and release are
//! logged with the id of the key that asked.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sha2::{Digest as _, Sha256};

use super::keys;
use super::messages::visible_message;
use crate::db::Erasure;
use crate::event::{self, Event};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::now_ms;

/// Longest an erasure waits, beyond the delivery timeout, for an attempt in flight to be
/// recorded.
const ERASE_MARGIN: Duration = Duration::from_secs(5);

/// The key that made a request, as logs name it: a per-inbox key by its id, an admin key by
/// the start of its SHA-256 (the key itself is never logged).
pub(crate) async fn key_id(state: &HttpState, headers: &HeaderMap) -> String {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if presented.starts_with(keys::INBOX_KEY_PREFIX) {
        match state
            .db
            .api_key_id_for_hash(&keys::hash_key(presented))
            .await
        {
            Ok(Some(id)) => return id,
            Ok(None) => return "unknown inbox key".to_owned(),
            Err(err) => {
                tracing::warn!(error = %err, "looking up the key id for the log failed");
                return "inbox key (lookup failed)".to_owned();
            }
        }
    }
    let digest = hex::encode(Sha256::digest(presented.as_bytes()));
    format!("admin:{}", digest.get(..12).unwrap_or_default())
}

#[utoipa::path(
    delete,
    path = "/v1/messages/{id}",
    tag = "messages",
    summary = "Erase a message: its event, raw bytes, deliveries and attempts",
    description = "A pending delivery of it is cancelled first and never sent after the 204; \
        a delivery in flight is waited for. Later reads of the message, its raw bytes and its \
        attachments answer 404.",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 204, description = "Erased"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 409, description = "A delivery of it stayed in flight; try again", body = ErrorBody),
    ),
)]
pub(crate) async fn erase_message(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    let key = key_id(&state, &headers).await;
    let wait = state.delivery.timeout() + ERASE_MARGIN;
    match state
        .lifecycle
        .erase_when_idle(&id, wait)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
    {
        Erasure::Erased { .. } => {
            tracing::info!(message_id = %id, inbox_id = %message.inbox_id, key_id = %key, "message erased on request");
            Ok(StatusCode::NO_CONTENT)
        }
        Erasure::Missing => Err(ApiError::NotFound("message")),
        Erasure::InFlight { leased_until } => Err(ApiError::Conflict(format!(
            "a delivery of this message is in flight (leased until {}); nothing was erased, try again",
            crate::model::rfc3339(leased_until)
        ))),
        Erasure::Pending => Err(ApiError::Internal(
            "an erasure on request kept a pending message".to_owned(),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/messages/{id}/attachments/{attachment_id}",
    tag = "messages",
    summary = "One attachment's decoded bytes",
    description = "Served with the part's Content-Type, a Content-Disposition attachment \
        filename made safe (no path, quotes or control characters; the UTF-8 name as \
        filename*), and X-Content-Type-Options: nosniff.",
    params(
        ("id" = String, Path, description = "Message id"),
        ("attachment_id" = String, Path, description = "The attachment's `id` in the event (`att_<n>`)"),
    ),
    responses(
        (status = 200, description = "The decoded bytes, as the part's own Content-Type", content_type = "*/*", body = String),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_attachment(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path((id, attachment_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    attachment_response(&state, &message.storage_key, &attachment_id).await
}

/// The response of one attachment of the message stored under `storage_key`.
pub(crate) async fn attachment_response(
    state: &HttpState,
    storage_key: &str,
    attachment_id: &str,
) -> Result<Response, ApiError> {
    let raw = state
        .store
        .get(storage_key)
        .await
        .map_err(|err| match err {
            crate::store::Error::NotFound { .. } => ApiError::NotFound("attachment"),
            other => ApiError::Internal(other.to_string()),
        })?;
    let attachment_id = attachment_id.to_owned();
    // Parsing a large message is CPU work; it stays off the async workers.
    let part = tokio::task::spawn_blocking(move || {
        crate::parse::part::attachment(&raw, &attachment_id).map(|part| (part, attachment_id))
    })
    .await
    .map_err(|err| ApiError::Internal(format!("reading an attachment: {err}")))?;
    let Some((part, attachment_id)) = part else {
        return Err(ApiError::NotFound("attachment"));
    };
    Ok((
        [
            (header::CONTENT_TYPE, safe_content_type(&part.content_type)),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(part.filename.as_deref(), &attachment_id),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            // Whatever the part claims to be, it never runs as a page of this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".to_owned(),
            ),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        part.bytes,
    )
        .into_response())
}

/// The part's `type/subtype` when it is one (RFC 2045 tokens), else a download.
fn safe_content_type(content_type: &str) -> String {
    let token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match content_type.split_once('/') {
        Some((kind, subtype)) if token(kind) && token(subtype) => content_type.to_owned(),
        _ => "application/octet-stream".to_owned(),
    }
}

/// `attachment` with the part's own filename (RFC 6266): only its last path segment, without
/// control characters, quotes or backslashes; an ASCII `filename` for old clients and the
/// UTF-8 name as `filename*`. A name that is empty after that becomes the attachment id.
pub(crate) fn content_disposition(filename: Option<&str>, fallback: &str) -> String {
    let name: String = filename
        .and_then(|name| name.rsplit(['/', '\\']).next())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    let name = name.trim().trim_start_matches('.').trim();
    let name = if name.is_empty() { fallback } else { name };
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SignedQuery {
    /// When the link stops working, in Unix seconds.
    expires: i64,
    /// The gateway's signature of the message, the attachment and `expires`.
    sig: String,
}

#[utoipa::path(
    get,
    path = "/attachments/{id}/{attachment_id}",
    tag = "messages",
    summary = "One attachment through the signed link an event carries (no API key)",
    description = "The `download_url` of an attachment in the event: answered like \
        `GET /v1/messages/{id}/attachments/{attachment_id}` until `expires_at`, then 403; an \
        altered link (another message or attachment, another time, a changed signature) is \
        403 too.",
    params(
        ("id" = String, Path, description = "Message id"),
        ("attachment_id" = String, Path, description = "The attachment's `id` in the event"),
        SignedQuery,
    ),
    security(()),
    responses(
        (status = 200, description = "The decoded bytes, as the part's own Content-Type", content_type = "*/*", body = String),
        (status = 403, description = "Expired or altered link", body = ErrorBody),
        (status = 404, description = "The message or attachment is gone", body = ErrorBody),
    ),
)]
pub(crate) async fn get_signed_attachment(
    State(state): State<Arc<HttpState>>,
    Path((id, attachment_id)): Path<(String, String)>,
    query: Result<axum::extract::Query<SignedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let altered = ApiError::Forbidden("this link is not valid");
    let Ok(axum::extract::Query(query)) = query else {
        return Err(altered);
    };
    let Some(urls) = &state.lifecycle.attachment_urls else {
        return Err(altered);
    };
    let now_s = now_ms() / 1000;
    let mut verdict = urls.verify(&id, &attachment_id, query.expires, &query.sig, now_s);
    if verdict == Err(crate::retention::UrlRefusal::Altered) {
        // Another node may have rotated the key since this one read it.
        urls.reload(&state.db)
            .await
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        verdict = urls.verify(&id, &attachment_id, query.expires, &query.sig, now_s);
    }
    match verdict {
        Ok(()) => {}
        Err(crate::retention::UrlRefusal::Expired) => {
            return Err(ApiError::Forbidden("this link has expired"));
        }
        Err(crate::retention::UrlRefusal::Altered) => return Err(altered),
    }
    let message = state
        .db
        .get_message(&id)
        .await?
        .ok_or(ApiError::NotFound("attachment"))?;
    attachment_response(&state, &message.storage_key, &attachment_id).await
}

#[utoipa::path(
    post,
    path = "/v1/attachments/url-key/rotate",
    tag = "messages",
    summary = "Rotate the key that signs attachment links (admin)",
    description = "Links signed with the key before keep working until the next rotation or \
        their expiry; links older than that answer 403.",
    responses(
        (status = 204, description = "Rotated"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "Signed links are off (attachments.url_ttl_s = 0)", body = ErrorBody),
    ),
)]
pub(crate) async fn rotate_url_key(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let urls = state
        .lifecycle
        .attachment_urls
        .as_ref()
        .ok_or(ApiError::NotFound("attachment URL key"))?;
    urls.rotate(&state.db)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let key = key_id(&state, &headers).await;
    tracing::info!(key_id = %key, "attachment URL key rotated");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeQuery {
    /// true: erase the inbox whole, its messages included, in the background.
    pub(crate) purge: Option<bool>,
}

/// How far the erasure of a whole inbox got.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PurgeProgress {
    /// Always `running`: a finished purge leaves no inbox to show it.
    state: &'static str,
    /// Messages erased so far.
    removed: i64,
    /// Messages still to erase.
    remaining: i64,
}

pub(crate) async fn purge_progress(
    state: &HttpState,
    inbox_id: &str,
) -> Result<Option<PurgeProgress>, ApiError> {
    Ok(state
        .db
        .purge_progress(inbox_id)
        .await?
        .map(|(removed, remaining)| PurgeProgress {
            state: "running",
            removed,
            remaining,
        }))
}

/// `DELETE /v1/inboxes/{id}`, documented on [`super::inboxes::delete_inbox`]: with
/// `purge=true` the whole inbox is erased in the background, otherwise it is deleted as before.
pub(crate) async fn delete_inbox_route(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query?;
    if query.purge != Some(true) {
        return super::inboxes::delete_inbox(State(state), Extension(caller), Path(id))
            .await
            .map(IntoResponse::into_response);
    }
    super::inboxes::visible_inbox(&state, &caller, &id).await?;
    caller.require_admin()?;
    purge_inbox(&state, &headers, &id).await
}

/// `DELETE /v1/inboxes/{id}?purge=true`: disables the inbox, records the purge (which the
/// pruner resumes after a restart) and starts it in the background; answers 202 with the
/// progress so far.
pub(crate) async fn purge_inbox(
    state: &HttpState,
    headers: &HeaderMap,
    inbox_id: &str,
) -> Result<Response, ApiError> {
    let key = key_id(state, headers).await;
    if !state.db.start_purge(inbox_id, &key, now_ms()).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    state.refresh_directory().await?;
    tracing::info!(inbox_id, key_id = %key, "inbox purge started");
    let lifecycle = state.lifecycle.clone();
    let id = inbox_id.to_owned();
    tokio::spawn(async move {
        // Not tied to shutdown: a purge cut short is resumed by the next pruner run.
        let never = tokio_util::sync::CancellationToken::new();
        if let Err(err) = lifecycle.purge_inbox(&id, &never).await {
            tracing::error!(error = %err, inbox_id = %id, "purging the inbox failed; the pruner goes on with it");
        }
    });
    let progress = purge_progress(state, inbox_id).await?;
    Ok((StatusCode::ACCEPTED, Json(progress)).into_response())
}

/// What a release did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Released {
    message_id: String,
    /// Always false after a release.
    quarantined: bool,
    /// The delivery jobs created, as the inbox's webhook and rules route the event now.
    delivery_ids: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/v1/messages/{id}/release",
    tag = "messages",
    summary = "Deliver a quarantined message now",
    description = "Creates the delivery jobs the message would have had as accepted mail \
        (inbox webhook and rules), once: `quarantined` becomes false, and a second release \
        answers 409.",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "Released", body = Released),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 409, description = "Not quarantined (or released already)", body = ErrorBody),
    ),
)]
pub(crate) async fn release_message(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Released>, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    let key = key_id(&state, &headers).await;
    let released = release(&state, &message).await?;
    tracing::info!(message_id = %id, inbox_id = %message.inbox_id, key_id = %key, deliveries = released.delivery_ids.len(), "quarantined message released");
    Ok(Json(released))
}

/// Releases a quarantined message; the dashboard's button calls this too.
pub(crate) async fn release(
    state: &HttpState,
    message: &crate::db::MessageRow,
) -> Result<Released, ApiError> {
    let not_quarantined = || ApiError::Conflict("the message is not quarantined".to_owned());
    let Ok(Event::Mail(mut mail)) = Event::from_json(&message.event_json) else {
        return Err(not_quarantined());
    };
    if mail.quarantined != Some(true) {
        return Err(not_quarantined());
    }
    let reduced = event::to_json(&Event::Quarantined(event::QuarantinedEvent::of(&mail)));
    mail.quarantined = Some(false);
    let released = Event::Mail(mail);
    let event_json = event::to_json(&released);
    let deliveries = state.intake.deliveries_of(&message.inbox_id, &released);
    let delivery_ids = deliveries.iter().map(|d| d.id.clone()).collect();
    if !state
        .db
        .release_message(&message.id, &event_json, &reduced, &deliveries, now_ms())
        .await?
    {
        return Err(not_quarantined());
    }
    state.dispatcher_wakeup.notify_one();
    Ok(Released {
        message_id: message.id.clone(),
        quarantined: false,
        delivery_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disposition_filename_is_safe_whatever_the_part_says() {
        assert_eq!(
            content_disposition(Some("report.pdf"), "att_0"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        let hostile = content_disposition(
            Some("../../etc/pa\"ss\r\nSet-Cookie: x=1\\..\\evil.sh"),
            "att_1",
        );
        assert!(!hostile.contains(['\r', '\n']), "{hostile}");
        assert!(!hostile.contains(".."), "{hostile}");
        assert!(
            hostile.starts_with("attachment; filename=\"evil.sh\""),
            "{hostile}"
        );
        assert_eq!(
            content_disposition(Some("Grüße €.txt"), "att_2"),
            "attachment; filename=\"Gr__e _.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%E2%82%AC.txt"
        );
        for empty in [None, Some(""), Some("/"), Some("\r\n"), Some("..")] {
            assert_eq!(
                content_disposition(empty, "att_3"),
                "attachment; filename=\"att_3\"; filename*=UTF-8''att_3",
                "{empty:?}"
            );
        }
    }

    #[test]
    fn only_well_formed_content_types_are_passed_on() {
        assert_eq!(safe_content_type("application/pdf"), "application/pdf");
        for bad in ["text/html\r\nX: y", "image", "/x", "a b/c", ""] {
            assert_eq!(
                safe_content_type(bad),
                "application/octet-stream",
                "{bad:?}"
            );
        }
    }
}
