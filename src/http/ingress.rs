//! Provider ingress over HTTP: the MailerSend, SendGrid, Cal.com and Calendly webhooks. Each
//! handler reads its request (the JSON body, or SendGrid's multipart form) into the provider's
//! parsed form and hands it to the ingress stage ([`crate::ingress::Ingress`]), which verifies,
//! routes, replay-checks and takes it in; this module only turns the stage's [`Ack`] or
//! [`Refusal`] into the answer. Routed under `ingress.max_body_bytes`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

use super::{ErrorBody, HttpState};
use crate::ingress::provider::{self, CalendarRequest, Provider};
use crate::ingress::{Ack, Refusal};

/// The provider webhooks, authenticated by their signatures (not by API key).
pub(super) fn routes() -> axum::Router<Arc<HttpState>> {
    axum::Router::new()
        .route("/v1/ingress/mailersend/inbound", post(mailersend))
        .route("/api/v1/webhooks/mailersend/inbound", post(mailersend))
        .route("/v1/ingress/sendgrid/inbound", post(sendgrid))
        .route("/v1/ingress/calcom", post(calcom))
        .route("/v1/ingress/calendly", post(calendly))
}

/// The request's headers as the provider parsers read them.
fn header_reader(headers: &HeaderMap) -> impl Fn(&str) -> Option<String> + Sync + '_ {
    move |name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Unauthorized(message) => (StatusCode::UNAUTHORIZED, "unauthorized", message),
            Self::BadPayload(message) => (StatusCode::BAD_REQUEST, "bad_request", message),
            Self::Rejected(reason) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected", reason),
            // 503 asks the provider to retry, like 451 asks an SMTP sender.
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "temporarily unavailable, retry later".to_owned(),
            ),
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "ingress request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}

/// The 200 answer to a provider webhook: the provider stops retrying on it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IngressAck {
    /// accepted; duplicate (that event was processed already); ignored (authentic, but not an
    /// event mxhook delivers); expired (older than the replay keys kept, not processed).
    status: String,
    /// The stored messages, one per recipient inbox; only when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_ids: Option<Vec<String>>,
}

impl From<Ack> for IngressAck {
    fn from(ack: Ack) -> Self {
        let (status, message_ids) = match ack {
            Ack::Accepted { message_ids } => ("accepted", Some(message_ids)),
            Ack::Duplicate => ("duplicate", None),
            Ack::Ignored => ("ignored", None),
            Ack::Expired => ("expired", None),
        };
        Self {
            status: status.to_owned(),
            message_ids,
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|err| Refusal::BadPayload(format!("body is not JSON: {err}")))
}

/// A MailerSend inbound route's webhook.
#[utoipa::path(
    post,
    path = "/v1/ingress/mailersend/inbound",
    tag = "ingress",
    summary = "MailerSend inbound route (also at /api/v1/webhooks/mailersend/inbound)",
    security(()),
    params(("Signature" = String, Header, description = "hex HMAC-SHA256 of the body with the inbox's mailersend secret")),
    request_body(content = serde_json::Value, description = "MailerSend `inbound.message` payload"),
    responses(
        (status = 200, description = "Acknowledged; `status` says what was done", body = IngressAck),
        (status = 400, description = "Not a MailerSend payload", body = ErrorBody),
        (status = 401, description = "Not verified for any recipient inbox (counted)", body = ErrorBody),
        (status = 422, description = "The inbox's sender policy rejects it", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable; retry", body = ErrorBody),
    ),
)]
pub(crate) async fn mailersend(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngressAck>, Refusal> {
    let payload = parse_json(&body)?;
    let mail = provider::mailersend_mail(&payload, chrono::Utc::now().fixed_offset())
        .map_err(|err| Refusal::BadPayload(err.to_string()))?;
    let headers = header_reader(&headers);
    let ack = state
        .ingress
        .mail(Provider::MailerSend, &headers, &body, mail, "mailersend")
        .await?;
    Ok(Json(ack.into()))
}

/// A SendGrid Inbound Parse POST.
#[utoipa::path(
    post,
    path = "/v1/ingress/sendgrid/inbound",
    tag = "ingress",
    summary = "SendGrid Inbound Parse (raw, full MIME mode)",
    security(()),
    params(
        ("X-Twilio-Email-Event-Webhook-Signature" = String, Header, description = "base64 ECDSA P-256 signature over timestamp + body"),
        ("X-Twilio-Email-Event-Webhook-Timestamp" = String, Header, description = "Unix seconds, within ingress.timestamp_tolerance_s"),
    ),
    request_body(content = String, content_type = "multipart/form-data", description = "`email` (raw MIME) and `envelope` fields"),
    responses(
        (status = 200, description = "Acknowledged; `status` says what was done", body = IngressAck),
        (status = 400, description = "Not an Inbound Parse form", body = ErrorBody),
        (status = 401, description = "Not verified for any recipient inbox (counted)", body = ErrorBody),
        (status = 422, description = "The inbox's sender policy rejects it", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable; retry", body = ErrorBody),
    ),
)]
pub(crate) async fn sendgrid(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngressAck>, Refusal> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let mail = provider::sendgrid_mail(content_type, body.clone())
        .await
        .map_err(|err| Refusal::BadPayload(bad_payload_text(err)))?;
    let headers = header_reader(&headers);
    let ack = state
        .ingress
        .mail(Provider::SendGrid, &headers, &body, mail, "sendgrid")
        .await?;
    Ok(Json(ack.into()))
}

/// A Cal.com webhook.
#[utoipa::path(
    post,
    path = "/v1/ingress/calcom",
    tag = "ingress",
    summary = "Cal.com booking webhooks",
    security(()),
    params(("X-Cal-Signature-256" = String, Header, description = "hex HMAC-SHA256 of the body with the inbox's calcom secret")),
    request_body(content = serde_json::Value, description = "Cal.com webhook payload"),
    responses(
        (status = 200, description = "Acknowledged; `status` says what was done", body = IngressAck),
        (status = 400, description = "Not a Cal.com payload", body = ErrorBody),
        (status = 401, description = "Unverified or unmapped event type (counted)", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable; retry", body = ErrorBody),
    ),
)]
pub(crate) async fn calcom(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngressAck>, Refusal> {
    calendar(
        &state,
        Provider::CalCom,
        provider::calcom_booking,
        &headers,
        &body,
    )
    .await
}

/// A Calendly webhook.
#[utoipa::path(
    post,
    path = "/v1/ingress/calendly",
    tag = "ingress",
    summary = "Calendly invitee webhooks",
    security(()),
    params(("Calendly-Webhook-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">")),
    request_body(content = serde_json::Value, description = "Calendly webhook payload"),
    responses(
        (status = 200, description = "Acknowledged; `status` says what was done", body = IngressAck),
        (status = 400, description = "Not a Calendly payload", body = ErrorBody),
        (status = 401, description = "Unverified, stale or unmapped event type (counted)", body = ErrorBody),
        (status = 503, description = "Temporarily unavailable; retry", body = ErrorBody),
    ),
)]
pub(crate) async fn calendly(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngressAck>, Refusal> {
    calendar(
        &state,
        Provider::Calendly,
        provider::calendly_booking,
        &headers,
        &body,
    )
    .await
}

/// A calendar webhook: its JSON read by the provider's `read`, then the booking flow.
async fn calendar(
    state: &HttpState,
    provider: Provider,
    read: fn(&Value) -> Result<CalendarRequest, provider::Error>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<IngressAck>, Refusal> {
    let payload = parse_json(body)?;
    let request = read(&payload).map_err(|err| Refusal::BadPayload(err.to_string()))?;
    let headers = header_reader(headers);
    let ack = state
        .ingress
        .calendar(provider, &headers, body, request)
        .await?;
    Ok(Json(ack.into()))
}

/// The refusal text of a payload error: the detail alone, as the handlers answer it.
fn bad_payload_text(err: provider::Error) -> String {
    match err {
        provider::Error::BadPayload(detail) => detail,
        other => other.to_string(),
    }
}
