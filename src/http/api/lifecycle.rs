//! Keeping and removing mail, per message: `DELETE /v1/messages/{id}` (erasure), `GET
//! /v1/messages/{id}/attachments/{attachment_id}` (one attachment's decoded bytes) and `POST
//! /v1/messages/{id}/release` (a quarantined message delivered now). Erasure and release are
//! logged with the id of the key that asked.
//!
//! An attachment is streamed: its body's byte range, recorded at intake (see
//! [`crate::parse::part`]), is read from the store chunk by chunk and decoded on the way, so a
//! download holds a chunk or two whatever the attachment's size, and is sent with its exact
//! Content-Length. Only a message stored without that record (before migration 0024, or a part
//! whose streamed bytes would not be the parser's) is read whole and decoded in memory.

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
    attachment_response(&state, &message, &attachment_id).await
}

fn store_error(err: crate::store::Error) -> ApiError {
    match err {
        crate::store::Error::NotFound { .. } => ApiError::NotFound("attachment"),
        other => ApiError::Internal(other.to_string()),
    }
}

/// The headers of an attachment response: the part's type when well formed, a safe
/// attachment filename, and nothing that lets it run as a page of this origin.
fn attachment_headers(
    content_type: &str,
    filename: Option<&str>,
    attachment_id: &str,
) -> [(header::HeaderName, String); 5] {
    [
        (header::CONTENT_TYPE, safe_content_type(content_type)),
        (
            header::CONTENT_DISPOSITION,
            content_disposition(filename, attachment_id),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        // Whatever the part claims to be, it never runs as a page of this origin.
        (
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'".to_owned(),
        ),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ]
}

/// The response of one attachment of `message`: streamed when intake recorded where the
/// attachment lies, else read from the whole message.
pub(crate) async fn attachment_response(
    state: &HttpState,
    message: &crate::db::MessageRow,
    attachment_id: &str,
) -> Result<Response, ApiError> {
    if let Some(response) = streamed_attachment(state, message, attachment_id).await? {
        return Ok(response);
    }
    let raw = state
        .store
        .get(&message.storage_key)
        .await
        .map_err(store_error)?;
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
        attachment_headers(&part.content_type, part.filename.as_deref(), &attachment_id),
        part.bytes,
    )
        .into_response())
}

/// The attachment streamed from its recorded byte range, or `None` when the message has no
/// record of it (or its event does not list it) and the whole message must be read.
async fn streamed_attachment(
    state: &HttpState,
    message: &crate::db::MessageRow,
    attachment_id: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(span) = message
        .attachment_parts
        .as_deref()
        .and_then(|stored| crate::parse::part::span_in(stored, attachment_id))
    else {
        return Ok(None);
    };
    let Ok(Event::Mail(mail)) = Event::from_json(&message.event_json) else {
        return Ok(None);
    };
    let Some(listed) = mail
        .email
        .attachments
        .iter()
        .find(|listed| listed.id == attachment_id)
    else {
        return Ok(None);
    };
    let chunks = state
        .store
        .get_range(&message.storage_key, span.start, span.end)
        .await
        .map_err(store_error)?;
    let body = decoded_stream(chunks, span, message.id.clone());
    let mut response = (
        attachment_headers(
            &listed.content_type,
            listed.filename.as_deref(),
            attachment_id,
        ),
        axum::body::Body::from_stream(body),
    )
        .into_response();
    // Checked at intake to be exactly what the range decodes to; a stream that comes out
    // otherwise ends in an error, and the client sees a cut download, not wrong bytes.
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(span.size));
    Ok(Some(response))
}

/// A streamed attachment on its way: the raw body still to come, and what was decoded.
struct Decoding {
    chunks: crate::store::ByteChunks,
    /// The rest of the raw chunk the store gave last.
    pending: bytes::Bytes,
    /// `None` once the stream ended or failed.
    decoder: Option<crate::parse::transfer::Decoder>,
    produced: u64,
    span: crate::parse::part::PartSpan,
    message_id: String,
}

impl Decoding {
    fn fail(&mut self, what: &str) -> std::io::Error {
        self.decoder = None;
        tracing::error!(message_id = %self.message_id, error = %what, "streaming an attachment failed; the download was cut");
        std::io::Error::other(what.to_owned())
    }

    /// The next piece of decoded content; `None` at the end.
    async fn next(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        use futures_util::StreamExt as _;

        self.decoder.as_ref()?;
        while self.pending.is_empty() {
            match self.chunks.next().await {
                Some(Ok(raw)) => self.pending = raw,
                Some(Err(err)) => return Some(Err(self.fail(&err.to_string()))),
                None => {
                    let decoder = self.decoder.take()?;
                    let mut out = Vec::new();
                    decoder.finish(&mut out);
                    self.produced += out.len() as u64;
                    if self.produced != self.span.size {
                        let what = format!(
                            "decoded {} bytes, {} recorded",
                            self.produced, self.span.size
                        );
                        return Some(Err(self.fail(&what)));
                    }
                    return (!out.is_empty()).then(|| Ok(bytes::Bytes::from(out)));
                }
            }
        }
        // An S3 body's chunks can be hundreds of KiB; the response holds several of what it
        // is given, so each is decoded and passed on in pieces of a bounded size.
        let piece = self
            .pending
            .split_to(self.pending.len().min(crate::store::RANGE_CHUNK));
        let mut out = Vec::with_capacity(piece.len());
        let decoded = self.decoder.as_mut()?.feed(&piece, &mut out);
        if let Err(err) = decoded {
            return Some(Err(self.fail(&err.to_string())));
        }
        self.produced += out.len() as u64;
        if self.produced > self.span.size {
            let what = format!("decoded past the recorded {} bytes", self.span.size);
            return Some(Err(self.fail(&what)));
        }
        Some(Ok(bytes::Bytes::from(out)))
    }
}

/// The decoded content of a stream of a part's raw body, in pieces of at most
/// [`crate::store::RANGE_CHUNK`] raw bytes. Ends with an error when the store fails, the body
/// does not decode, or it decodes to another length than recorded.
fn decoded_stream(
    chunks: crate::store::ByteChunks,
    span: crate::parse::part::PartSpan,
    message_id: String,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let decoding = Decoding {
        chunks,
        pending: bytes::Bytes::new(),
        decoder: Some(crate::parse::transfer::Decoder::new(span.encoding)),
        produced: 0,
        span,
        message_id,
    };
    futures_util::stream::unfold(decoding, |mut decoding| async move {
        let item = decoding.next().await?;
        Some((item, decoding))
    })
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
    attachment_response(&state, &message, &attachment_id).await
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

    /// What `decoded_stream` makes of `raw` given in `pieces`, for a span recorded as `size`
    /// decoded bytes of base64.
    async fn stream_of(pieces: &[&[u8]], size: u64) -> Vec<Result<bytes::Bytes, String>> {
        use futures_util::StreamExt as _;

        let chunks: Vec<Result<bytes::Bytes, crate::store::Error>> = pieces
            .iter()
            .map(|piece| Ok(bytes::Bytes::copy_from_slice(piece)))
            .collect();
        let span = crate::parse::part::PartSpan {
            start: 0,
            end: 0,
            encoding: crate::parse::transfer::TransferEncoding::Base64,
            size,
        };
        decoded_stream(
            Box::pin(futures_util::stream::iter(chunks)),
            span,
            "msg_test".to_owned(),
        )
        .map(|item| item.map_err(|err| err.to_string()))
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_streamed_body_is_decoded_in_bounded_pieces_and_cut_with_an_error_when_wrong() {
        use base64::Engine as _;

        let data: Vec<u8> = (0..300_000u32).map(|n| (n % 253) as u8).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        // One chunk far larger than a piece, as S3 may give, then a small one.
        let (big, small) = encoded.as_bytes().split_at(encoded.len() - 10);
        let items = stream_of(&[big, small], data.len() as u64).await;
        let mut decoded = Vec::new();
        for item in &items {
            let piece = item.as_ref().expect("decodes");
            assert!(piece.len() <= crate::store::RANGE_CHUNK, "{}", piece.len());
            decoded.extend_from_slice(piece);
        }
        assert_eq!(decoded, data);
        assert!(items.len() > 4, "{} pieces", items.len());

        // Shorter or longer than recorded, or not base64: the stream ends in an error.
        for (pieces, size) in [
            (vec![&b"QUJD"[..]], 4),
            (vec![&b"QUJD"[..], b"QUJD"], 5),
            (vec![&b"QUJD*"[..]], 3),
        ] {
            let items = stream_of(&pieces, size).await;
            assert!(
                items.last().is_some_and(Result::is_err),
                "{pieces:?} {size}: {items:?}"
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
