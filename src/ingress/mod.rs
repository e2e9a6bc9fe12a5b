//! Ingress from providers: verified webhooks from mail providers (MailerSend inbound routes,
//! SendGrid Inbound Parse) and calendar tools (Cal.com, Calendly) enter the same pipeline as SMTP
//! mail: durable store, event, delivery jobs.
//!
//! Order per request: read the body (bounded) → find the inbox (the exact envelope recipient
//! address, or the calendar event type's mapping in the database) → verify the signature with
//! that inbox's secret for the provider → skip a replay of an event id that inbox already
//! processed → intake. Nothing unverified is processed or acknowledged: a bad or missing
//! signature, and a target no inbox owns, are the same 401, counted in `/metrics`.
//! This module never writes SQL (see `db::ingress`) and never reaches into `smtp`.

pub mod provider;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{ApiError, ErrorBody};
use crate::config::{Config, IngressConfig};
use crate::db::Db;
use crate::directory::Directory;
use crate::event::CalendarEvent;
use crate::intake::{Intake, Outcome};
use crate::model::{Envelope, Recipient, now_ms, rfc3339};
use provider::{CalendarRequest, Provider};

pub struct IngressState {
    pub counters: Arc<crate::counters::Counters>,
    pub db: Db,
    pub intake: Arc<Intake>,
    pub directory: Directory,
    pub config: IngressConfig,
    pub admin_keys: Vec<String>,
    /// When this node last pruned old replay keys (ms); pruning rides on accepted requests, at
    /// most once per [`REPLAY_PRUNE_EVERY_MS`].
    pub last_replay_prune: AtomicI64,
}

/// How often accepted requests prune replay keys past `ingress.replay_retention_s`.
const REPLAY_PRUNE_EVERY_MS: i64 = 60_000;

/// The ingress routes' part of `/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    mailersend,
    sendgrid,
    calcom,
    calendly,
    list_secrets,
    set_secret,
    delete_secret,
    get_event_types,
    put_event_types,
    delete_event_types,
))]
pub struct IngressApi;

/// The config file's calendar event types as `(event type, inbox id)`, seeded into the database
/// at start (see [`Db::seed_config_event_types`]).
pub fn config_event_types(config: &Config) -> Vec<(String, String)> {
    config
        .inboxes
        .iter()
        .flat_map(|inbox| {
            inbox
                .calendar_event_types
                .iter()
                .map(|event_type| (event_type.clone(), inbox.id.clone()))
        })
        .collect()
}

/// Provider webhooks (authenticated by signature) and the secret and event-type management
/// routes (authenticated by admin key).
pub fn router(state: Arc<IngressState>) -> axum::Router {
    let limit = state.config.max_body_bytes;
    axum::Router::new()
        .route("/v1/ingress/mailersend/inbound", post(mailersend))
        .route("/api/v1/webhooks/mailersend/inbound", post(mailersend))
        .route("/v1/ingress/sendgrid/inbound", post(sendgrid))
        .route("/v1/ingress/calcom", post(calcom))
        .route("/v1/ingress/calendly", post(calendly))
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
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn header_reader(headers: &HeaderMap) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }
}

/// Why a provider request was refused; each maps to one status.
enum Refusal {
    Unauthorized(String),
    BadPayload(String),
    /// The inbox's sender policy refuses the message; retrying will not help.
    Rejected(String),
    Unavailable,
    Internal(String),
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

impl From<crate::db::Error> for Refusal {
    fn from(err: crate::db::Error) -> Self {
        Self::Internal(err.to_string())
    }
}

/// Whether a request is authentic for one inbox.
enum Check {
    Authentic,
    /// Why not, for the log; the client only hears "unauthorized".
    Refused(String),
}

/// What a 401 tells the client: the same for an unknown target, a missing secret and a bad
/// signature, so refusals do not reveal which addresses or event types exist.
const UNAUTHORIZED: &str = "the request is not signed with a secret mxhook holds for its target";

impl IngressState {
    /// Checks a request against an inbox's current secrets for `provider`. Counts nothing: a
    /// multi-recipient request that verifies for one inbox is not an attack on the others.
    async fn check(
        &self,
        provider: Provider,
        inbox_id: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Check, Refusal> {
        let now = now_ms();
        let secrets = self
            .db
            .ingress_secrets(inbox_id, provider.as_str(), now)
            .await?;
        if secrets.is_empty() {
            return Ok(if self.config.allow_unsigned {
                Check::Authentic
            } else {
                Check::Refused(format!("no {} secret is configured", provider.as_str()))
            });
        }
        let reader = header_reader(headers);
        Ok(
            match provider::verify(
                provider,
                &reader,
                body,
                &secrets,
                now / 1000,
                self.config.timestamp_tolerance_s,
            ) {
                Ok(()) => Check::Authentic,
                Err(err) => Check::Refused(err.to_string()),
            },
        )
    }

    /// The refusal of a request that verified for no inbox: logged and counted once.
    fn unauthorized(&self, provider: Provider, inbox_id: Option<&str>, reason: &str) -> Refusal {
        tracing::warn!(
            provider = provider.as_str(),
            inbox_id,
            reason,
            "ingress refused: unauthenticated"
        );
        self.counters.unauthorized(provider);
        Refusal::Unauthorized(UNAUTHORIZED.to_owned())
    }

    /// The inbox that owns exactly this (lowercase) address. No `+tag` fallback: a provider
    /// route names the inbox address itself, and a near miss must not reach another inbox.
    fn inbox_with_address(&self, address: &str) -> Option<String> {
        let inbox_id = self.directory.lookup(address)?;
        let inbox = self.directory.inbox(&inbox_id)?;
        inbox
            .addresses
            .iter()
            .any(|known| known.to_lowercase() == address)
            .then_some(inbox_id)
    }

    async fn mail(
        &self,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
        mail: provider::InboundMail,
        helo: &str,
    ) -> Result<Response, Refusal> {
        let recipients: Vec<Recipient> = mail
            .recipients
            .iter()
            .filter_map(|address| {
                Some(Recipient {
                    address: address.clone(),
                    inbox_id: self.inbox_with_address(address)?,
                })
            })
            .collect();
        let mut inbox_ids: Vec<&str> = recipients.iter().map(|r| r.inbox_id.as_str()).collect();
        inbox_ids.sort_unstable();
        inbox_ids.dedup();
        if inbox_ids.is_empty() {
            return Err(self.unauthorized(provider, None, "no inbox has any of the recipients"));
        }
        // Each inbox checks the signature with its own secret; the request goes to those it
        // verifies for, and is refused (and counted) only when it verifies for none.
        let mut verified = Vec::with_capacity(inbox_ids.len());
        let mut first_refusal = None;
        for inbox_id in inbox_ids {
            match self.check(provider, inbox_id, headers, body).await? {
                Check::Authentic => verified.push(inbox_id),
                Check::Refused(reason) => {
                    first_refusal.get_or_insert((inbox_id, reason));
                }
            }
        }
        if verified.is_empty() {
            let (inbox_id, reason) = first_refusal.unwrap_or_default();
            return Err(self.unauthorized(provider, Some(inbox_id), &reason));
        }
        if self.older_than_replay_keys(mail.created_at_s) {
            return Ok(expired(provider));
        }
        let event_key = replay_key(&mail.event_key, body);
        let mut fresh = Vec::with_capacity(verified.len());
        for inbox_id in verified {
            if !self
                .db
                .ingress_seen(provider.as_str(), inbox_id, &event_key)
                .await?
            {
                fresh.push(inbox_id.to_owned());
            }
        }
        if fresh.is_empty() {
            return Ok(duplicate());
        }
        let envelope = Envelope {
            remote_ip: None,
            helo: helo.to_owned(),
            mail_from: mail.mail_from.clone(),
            recipients: recipients
                .iter()
                .filter(|recipient| fresh.contains(&recipient.inbox_id))
                .cloned()
                .collect(),
            smtputf8: true,
        };
        let outcome = self.intake.accept(&envelope, &mail.raw).await;
        self.finish(provider, &fresh, &event_key, outcome).await
    }

    async fn calendar(
        &self,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
        request: CalendarRequest,
    ) -> Result<Response, Refusal> {
        let inbox_id = match request.event_type_key() {
            Some(key) => self
                .db
                .ingress_event_type_inbox(key)
                .await?
                .filter(|inbox_id| self.directory.inbox(inbox_id).is_some()),
            None => None,
        };
        let Some(inbox_id) = inbox_id else {
            let reason = format!(
                "no inbox receives {}",
                request.event_type_key().unwrap_or("(no event type)")
            );
            return Err(self.unauthorized(provider, None, &reason));
        };
        if let Check::Refused(reason) = self.check(provider, &inbox_id, headers, body).await? {
            return Err(self.unauthorized(provider, Some(&inbox_id), &reason));
        }
        let booking = match request {
            // Authentic, but not an event mxhook delivers: acknowledged, nothing stored.
            CalendarRequest::Ignored { .. } => {
                return Ok(IngressAck::status("ignored"));
            }
            CalendarRequest::Booking(booking) => booking,
        };
        if self.older_than_replay_keys(booking.created_at_s) {
            return Ok(expired(provider));
        }
        let event_key = replay_key(&booking.event_key, body);
        if self
            .db
            .ingress_seen(provider.as_str(), &inbox_id, &event_key)
            .await?
        {
            return Ok(duplicate());
        }
        let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let outcome = self
            .intake
            .accept_event(&inbox_id, body, |ids| CalendarEvent {
                agent_id: inbox_id.as_str().into(),
                booking: *booking.booking,
                event_id: ids.event_id.into(),
                message_id: ids.message_id.into(),
                payload,
                provider,
                s3_bucket: ids.s3_bucket.to_owned(),
                s3_key: ids.s3_key.to_owned(),
                timestamp: rfc3339(ids.received_at_ms),
                change: booking.change,
            })
            .await;
        self.finish(
            provider,
            std::slice::from_ref(&inbox_id),
            &event_key,
            outcome,
        )
        .await
    }

    async fn finish(
        &self,
        provider: Provider,
        inbox_ids: &[String],
        event_key: &str,
        outcome: Outcome,
    ) -> Result<Response, Refusal> {
        match outcome {
            Outcome::Accepted { message_ids } => {
                // Marked only after the commit, so a failed attempt can be retried by the
                // provider; a rare concurrent duplicate is delivered twice, never lost.
                for inbox_id in inbox_ids {
                    self.db
                        .mark_ingress_seen(provider.as_str(), inbox_id, event_key)
                        .await?;
                }
                self.prune_replay_keys().await;
                Ok(Json(IngressAck {
                    status: "accepted".to_owned(),
                    message_ids: Some(message_ids),
                })
                .into_response())
            }
            Outcome::TempFail { .. } => Err(Refusal::Unavailable),
            Outcome::Reject { reason } => Err(Refusal::Rejected(reason)),
        }
    }

    /// Whether an event was created before the oldest replay key kept: its key may have been
    /// pruned, so it cannot be told from a replay. MailerSend and Cal.com sign no timestamp
    /// header, and this keeps pruning from reopening replays of their old requests.
    fn older_than_replay_keys(&self, created_at_s: Option<i64>) -> bool {
        let retention_s = self.config.replay_retention_s as i64;
        created_at_s.is_some_and(|created| (now_ms() / 1000).saturating_sub(created) > retention_s)
    }

    /// Forgets replay keys past the retention period, at most once a minute per node. The
    /// request that triggers it is already accepted, so a failure is logged, not answered.
    async fn prune_replay_keys(&self) {
        let now = now_ms();
        let last = self.last_replay_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REPLAY_PRUNE_EVERY_MS
            || self
                .last_replay_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let retention_ms = (self.config.replay_retention_s * 1000.0) as i64;
        match self
            .db
            .prune_ingress_seen(now.saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old ingress replay keys pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning ingress replay keys failed"),
        }
    }
}

fn replay_key(provider_id: &str, body: &[u8]) -> String {
    if provider_id.is_empty() {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
    } else {
        provider_id.to_owned()
    }
}

/// An authentic event older than the replay keys: acknowledged (a retry would not make it
/// younger) and not processed.
fn expired(provider: Provider) -> Response {
    tracing::warn!(
        provider = provider.as_str(),
        "ingress event older than ingress.replay_retention_s not processed"
    );
    IngressAck::status("expired")
}

fn duplicate() -> Response {
    IngressAck::status("duplicate")
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

impl IngressAck {
    fn status(status: &str) -> Response {
        Json(Self {
            status: status.to_owned(),
            message_ids: None,
        })
        .into_response()
    }
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
async fn mailersend(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let payload = parse_json(&body)?;
    let mail = provider::mailersend_mail(&payload, chrono::Utc::now().fixed_offset())
        .map_err(|err| Refusal::BadPayload(err.to_string()))?;
    state
        .mail(Provider::MailerSend, &headers, &body, mail, "mailersend")
        .await
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
async fn sendgrid(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let mail = sendgrid_mail(&headers, body.clone()).await?;
    state
        .mail(Provider::SendGrid, &headers, &body, mail, "sendgrid")
        .await
}

/// Reads SendGrid Inbound Parse's multipart form ("POST the raw, full MIME message" mode: the
/// `email` field holds the message, `envelope` the SMTP envelope as JSON).
async fn sendgrid_mail(headers: &HeaderMap, body: Bytes) -> Result<provider::InboundMail, Refusal> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| Refusal::BadPayload("expected multipart/form-data".to_owned()))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut raw = None;
    let mut envelope = Value::Null;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|err| Refusal::BadPayload(format!("malformed form: {err}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|err| Refusal::BadPayload(format!("malformed form: {err}")))?;
        match name.as_str() {
            "email" => raw = Some(bytes.to_vec()),
            "envelope" => envelope = serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            _ => {}
        }
    }
    let raw = raw.ok_or_else(|| {
        Refusal::BadPayload(
            "no `email` field (enable \"POST the raw, full MIME message\")".to_owned(),
        )
    })?;
    let recipients: Vec<String> = envelope["to"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect();
    if recipients.is_empty() {
        return Err(Refusal::BadPayload("no envelope recipients".to_owned()));
    }
    Ok(provider::InboundMail {
        event_key: String::new(),
        // SendGrid's signed timestamp header bounds its age instead.
        created_at_s: None,
        mail_from: envelope["from"].as_str().map(str::to_owned),
        recipients,
        raw,
    })
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
async fn calcom(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
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
async fn calendly(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
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
    state: &IngressState,
    provider: Provider,
    read: fn(&Value) -> Result<CalendarRequest, provider::Error>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let payload = parse_json(body)?;
    let request = read(&payload).map_err(|err| Refusal::BadPayload(err.to_string()))?;
    state.calendar(provider, headers, body, request).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    secret: String,
}

fn authorize(state: &IngressState, headers: &HeaderMap) -> Result<(), ApiError> {
    crate::api::authorize_admin(&state.admin_keys, headers)
}

fn known_inbox(state: &IngressState, id: &str) -> Result<(), ApiError> {
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
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
async fn list_secrets(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<IngressSecrets>, ApiError> {
    authorize(&state, &headers)?;
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
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
async fn set_secret(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path((id, provider)): Path<(String, String)>,
    body: Result<Json<SecretBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SecretSet>, ApiError> {
    authorize(&state, &headers)?;
    known_inbox(&state, &id)?;
    let provider = known_provider(&provider)?;
    let Json(body) = body.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    if body.secret.trim().is_empty() {
        return Err(ApiError::BadRequest("secret must not be empty".to_owned()));
    }
    let grace_ms = (state.config.rotation_grace_s * 1000.0) as i64;
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
        (status = 404, description = "No such inbox or no secret", body = ErrorBody),
    ),
)]
async fn delete_secret(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path((id, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
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

async fn event_types_reply(state: &IngressState, id: &str) -> Result<Json<EventTypes>, ApiError> {
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
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
async fn get_event_types(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EventTypes>, ApiError> {
    authorize(&state, &headers)?;
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
        (status = 404, description = "No such inbox", body = ErrorBody),
        (status = 409, description = "An event type belongs to another inbox", body = ErrorBody),
    ),
)]
async fn put_event_types(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<EventTypesBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EventTypes>, ApiError> {
    authorize(&state, &headers)?;
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
        (status = 404, description = "No such inbox", body = ErrorBody),
    ),
)]
async fn delete_event_types(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    known_inbox(&state, &id)?;
    state.db.set_ingress_event_types(&id, &[]).await?;
    Ok(StatusCode::NO_CONTENT)
}
