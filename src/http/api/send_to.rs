//! `POST /v1/messages/{id}/send-to`: one signed POST of a stored message to a URL given in the
//! request, answered with what the receiver said (BotMailRoom's one-time resend, for testing a
//! receiver on a developer's machine). Nothing is queued, retried or recorded: no delivery, no
//! attempt. The URL obeys the webhook policy (https, no private targets unless configured), and
//! the SSRF guard of the webhook client applies at connect time.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::inboxes::visible_inbox;
use super::messages::visible_message;
use crate::deliver::webhook::{self, WebhookClient};
use crate::event::{self, Event};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::{PayloadFormat, SignatureFormat, SignatureScheme, WebhookEndpoint};

/// What `webhook.id` of an `event-data` body sent this way says: no endpoint sent it.
const SEND_TO_ENDPOINT_ID: &str = "send-to";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendTo {
    /// Where to POST: https (http only with delivery.allow_http), not a private, loopback or
    /// link-local address (unless delivery.allow_private_targets).
    url: String,
    /// agentmail, standard, botmailroom or hmac-sha256; default the inbox webhook's (agentmail
    /// without one). Signed with the inbox webhook's secret (unsigned, per the scheme, without
    /// one), in its signature header and format, with its custom headers and timeout.
    #[schema(value_type = Option<String>)]
    signature: Option<SignatureScheme>,
    /// mxhook, botmailroom, event-data or event-data-ts; default the inbox webhook's (mxhook
    /// without one).
    #[schema(value_type = Option<String>)]
    payload: Option<PayloadFormat>,
}

/// What the receiver answered to the one attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SendToResult {
    status_code: u16,
    latency_ms: u64,
    /// The start of the response body (at most 1 KiB).
    response_excerpt: String,
}

#[utoipa::path(
    post,
    path = "/v1/messages/{id}/send-to",
    tag = "messages",
    summary = "Send the message once to a URL, signed with the inbox secret, and answer what the receiver said; nothing is queued, retried or recorded",
    params(("id" = String, Path, description = "Message id")),
    request_body = SendTo,
    responses(
        (status = 200, description = "The receiver answered (any status, 2xx or not)", body = SendToResult),
        (status = 400, description = "The URL is refused by the webhook policy (https only, no private targets), or the secret cannot sign with the scheme; the message names the field", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 502, description = "No answer from the receiver (connection refused, TLS, timeout): the message says why", body = ErrorBody),
    ),
)]
pub(crate) async fn send_to(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<SendTo>, JsonRejection>,
) -> Result<Json<SendToResult>, ApiError> {
    let message = visible_message(&state, &caller, &id).await?;
    let Json(body) = body?;
    let url = crate::model::validate_webhook_url(&body.url, state.delivery.allow_http)
        .map_err(|reason| ApiError::BadRequest(format!("url: {reason}")))?;
    if !state.delivery.allow_private_targets {
        refuse_private_names(&url).await?;
    }
    let inbox = visible_inbox(&state, &caller, &message.inbox_id).await?;
    let webhook = inbox.webhook.as_ref();
    let endpoint = WebhookEndpoint {
        url: body.url,
        enabled: true,
        secret: webhook.and_then(|webhook| webhook.secret.clone()),
        previous_secret: None,
        previous_secret_expires_at: None,
        signature: body
            .signature
            .or(webhook.map(|webhook| webhook.signature))
            .unwrap_or(SignatureScheme::Agentmail),
        payload: body
            .payload
            .or(webhook.map(|webhook| webhook.payload))
            .unwrap_or(PayloadFormat::Mxhook),
        signature_header: webhook.and_then(|webhook| webhook.signature_header.clone()),
        signature_format: webhook.map_or(SignatureFormat::default(), |webhook| {
            webhook.signature_format
        }),
        custom_headers: webhook
            .map(|webhook| webhook.endpoint.custom_headers.clone())
            .unwrap_or_default(),
        timeout: webhook.and_then(|webhook| webhook.endpoint.timeout()),
        max_retries: None,
        verify_tls: webhook.is_none_or(|webhook| webhook.verify_tls),
        // One attempt to a URL the caller names: whatever it is, it is sent.
        events: crate::model::Subscription::default(),
        disabled_reason: None,
        ordered: false,
        name: None,
    };
    let stored = Event::from_json(&message.event_json)
        .map_err(|err| ApiError::Internal(format!("stored event of {id} is not JSON: {err}")))?;
    let event_id = match &stored {
        Event::Mail(mail) => mail.event_id.to_string(),
        Event::Calendar(calendar) => calendar.event_id.to_string(),
        // A message stores the event it was accepted with, never one raised about it later.
        other => {
            return Err(ApiError::Internal(format!(
                "message {id} stores a {} event",
                other.event_type()
            )));
        }
    };
    let sent_at = chrono::Utc::now();
    let bytes = match endpoint.payload {
        // The stored event byte for byte, as the dispatcher sends it.
        PayloadFormat::Mxhook => message.event_json.into_bytes(),
        format => {
            let recipient = event::Recipient {
                endpoint_id: SEND_TO_ENDPOINT_ID,
                endpoint_name: &message.inbox_id,
                sent_at,
            };
            event::to_json(&event::payload_for_endpoint(&stored, format, &recipient)).into_bytes()
        }
    };
    let client = WebhookClient::new(
        state.delivery.timeout(),
        state.delivery.allow_http,
        state.delivery.allow_private_targets,
    )
    .map_err(|err| ApiError::Internal(err.to_string()))?;
    match client
        .post(&endpoint, &event_id, bytes, sent_at.timestamp())
        .await
    {
        Ok(response) => Ok(Json(SendToResult {
            status_code: response.status,
            latency_ms: u64::try_from(response.latency.as_millis()).unwrap_or(u64::MAX),
            response_excerpt: response.excerpt,
        })),
        Err(
            err @ (webhook::Error::BadUrl(_)
            | webhook::Error::BlockedAddress(_)
            | webhook::Error::InsecureScheme),
        ) => Err(ApiError::BadRequest(format!("url: {err}"))),
        Err(err @ webhook::Error::Signing(_)) => {
            Err(ApiError::BadRequest(format!("signature: {err}")))
        }
        Err(
            err @ (webhook::Error::Timeout
            | webhook::Error::Connect(_)
            | webhook::Error::Request(_)),
        ) => Err(ApiError::BadGateway(err.to_string())),
    }
}

/// Refuses a host name that resolves to a private, loopback or link-local address, so the
/// caller gets a 400 naming `url` rather than a connection error. The guard in the client's
/// resolver still checks the address it connects to (a name can resolve differently then).
async fn refuse_private_names(url: &url::Url) -> Result<(), ApiError> {
    let blocked = |ip: std::net::IpAddr| {
        ApiError::BadRequest(format!(
            "url: target address {ip} is private, loopback or link-local \
             (delivery.allow_private_targets is off)"
        ))
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !webhook::is_public(ip.into()) => Err(blocked(ip.into())),
        Some(url::Host::Ipv6(ip)) if !webhook::is_public(ip.into()) => Err(blocked(ip.into())),
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            // A name that does not resolve is left to the attempt, which reports it (502).
            let Ok(addresses) = tokio::net::lookup_host((name, port)).await else {
                return Ok(());
            };
            for address in addresses {
                if !webhook::is_public(address.ip()) {
                    return Err(blocked(address.ip()));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
