//! Ingress from providers: verified webhooks from mail providers (MailerSend inbound routes,
//! SendGrid Inbound Parse) and calendar tools (Cal.com, Calendly) enter the same pipeline as SMTP
//! mail: durable store, event, delivery jobs.
//!
//! Order per request: read the body (bounded) → find the inbox (recipient address, or calendar
//! event type) → verify the signature with that inbox's secret for the provider → skip a replay
//! of an event id already processed → intake. Nothing unverified is processed: a bad or missing
//! signature is 401, counted in the log, and the request is dropped before intake.

pub mod provider;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::config::{Config, IngressConfig};
use crate::db::Db;
use crate::directory::Directory;
use crate::intake::{Intake, Outcome};
use crate::model::{Envelope, Recipient, now_ms, rfc3339};
use provider::{Booking, Provider};

pub struct IngressState {
    pub counters: Arc<crate::counters::Counters>,
    pub db: Db,
    pub intake: Arc<Intake>,
    pub directory: Directory,
    pub config: IngressConfig,
    pub admin_keys: Vec<String>,
    /// `calcom:<id>` / `calendly:<uri>` → inbox id, from the inboxes' `calendar_event_types`.
    pub calendar_types: HashMap<String, String>,
}

impl IngressState {
    pub fn calendar_types(config: &Config) -> HashMap<String, String> {
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
}

/// Provider webhooks (authenticated by signature) and the secret management routes
/// (authenticated by admin key).
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
    UnknownTarget(String),
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
            Self::UnknownTarget(message) => (StatusCode::NOT_FOUND, "not_found", message),
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
        (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    }
}

impl From<crate::db::Error> for Refusal {
    fn from(err: crate::db::Error) -> Self {
        Self::Internal(err.to_string())
    }
}

impl IngressState {
    /// Verifies a request for `inbox_id` against its current secrets for `provider`.
    async fn authenticate(
        &self,
        provider: Provider,
        inbox_id: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let now = now_ms();
        let secrets = self
            .db
            .ingress_secrets(inbox_id, provider.as_str(), now)
            .await?;
        if secrets.is_empty() {
            if self.config.allow_unsigned {
                return Ok(());
            }
            tracing::warn!(
                provider = provider.as_str(),
                inbox_id,
                "ingress refused: no secret configured"
            );
            self.counters.unauthorized(provider);
            return Err(Refusal::Unauthorized(format!(
                "no {} secret is configured for this inbox",
                provider.as_str()
            )));
        }
        let reader = header_reader(headers);
        provider::verify(provider, &reader, body, &secrets, now / 1000, self.config.timestamp_tolerance_s).map_err(|err| {
            tracing::warn!(provider = provider.as_str(), inbox_id, error = %err, "ingress refused: signature");
            self.counters.unauthorized(provider);
            Refusal::Unauthorized(err.to_string())
        })
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
                let inbox_id = self.directory.lookup(address)?;
                Some(Recipient {
                    address: address.clone(),
                    inbox_id,
                })
            })
            .collect();
        let Some(first) = recipients.first() else {
            return Err(Refusal::UnknownTarget(
                "no inbox has any of the recipients".to_owned(),
            ));
        };
        self.authenticate(provider, &first.inbox_id, headers, body)
            .await?;
        // Other inboxes among the recipients must accept this provider's signature too.
        let mut verified = Vec::with_capacity(recipients.len());
        for recipient in &recipients {
            if recipient.inbox_id == first.inbox_id
                || self
                    .authenticate(provider, &recipient.inbox_id, headers, body)
                    .await
                    .is_ok()
            {
                verified.push(recipient.clone());
            }
        }
        let event_key = replay_key(&mail.event_key, body);
        if self.db.ingress_seen(provider.as_str(), &event_key).await? {
            return Ok(duplicate());
        }
        let envelope = Envelope {
            remote_ip: None,
            helo: helo.to_owned(),
            mail_from: mail.mail_from.clone(),
            recipients: verified,
            smtputf8: true,
        };
        self.finish(
            provider,
            &event_key,
            self.intake.accept(&envelope, &mail.raw).await,
        )
        .await
    }

    async fn booking(
        &self,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
        booking: Option<Booking>,
    ) -> Result<Response, Refusal> {
        let Some(booking) = booking else {
            // Authentic or not, an event type we do not deliver is acknowledged and dropped;
            // nothing is stored, so nothing is lost.
            return Ok((StatusCode::OK, Json(json!({"status": "ignored"}))).into_response());
        };
        let inbox_id = self
            .calendar_types
            .get(&booking.event_type_key)
            .cloned()
            .ok_or_else(|| {
                Refusal::UnknownTarget(format!("no inbox receives {}", booking.event_type_key))
            })?;
        self.authenticate(provider, &inbox_id, headers, body)
            .await?;
        let event_key = replay_key(&booking.event_key, body);
        if self.db.ingress_seen(provider.as_str(), &event_key).await? {
            return Ok(duplicate());
        }
        let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let outcome = self
            .intake
            .accept_event(&inbox_id, body, |ids| {
                json!({
                    "type": booking.change.event_type(),
                    "event_id": ids.event_id,
                    "agent_id": inbox_id,
                    "message_id": ids.message_id,
                    "timestamp": rfc3339(ids.received_at_ms),
                    "provider": provider.as_str(),
                    "booking": booking.booking,
                    "s3_bucket": ids.s3_bucket,
                    "s3_key": ids.s3_key,
                    "payload": payload,
                })
            })
            .await;
        self.finish(provider, &event_key, outcome).await
    }

    async fn finish(
        &self,
        provider: Provider,
        event_key: &str,
        outcome: Outcome,
    ) -> Result<Response, Refusal> {
        match outcome {
            Outcome::Accepted { message_ids } => {
                // Marked only after the commit, so a failed attempt can be retried by the
                // provider; a rare concurrent duplicate is delivered twice, never lost.
                self.db
                    .mark_ingress_seen(provider.as_str(), event_key)
                    .await?;
                Ok((
                    StatusCode::OK,
                    Json(json!({"status": "accepted", "message_ids": message_ids})),
                )
                    .into_response())
            }
            Outcome::TempFail { .. } => Err(Refusal::Unavailable),
            Outcome::Reject { reason } => Err(Refusal::Rejected(reason)),
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

fn duplicate() -> Response {
    (StatusCode::OK, Json(json!({"status": "duplicate"}))).into_response()
}

fn parse_json(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|err| Refusal::BadPayload(format!("body is not JSON: {err}")))
}

async fn mailersend(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let payload = parse_json(&body)?;
    let mail =
        provider::mailersend_mail(&payload).map_err(|err| Refusal::BadPayload(err.to_string()))?;
    state
        .mail(Provider::MailerSend, &headers, &body, mail, "mailersend")
        .await
}

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
        mail_from: envelope["from"].as_str().map(str::to_owned),
        recipients,
        raw,
    })
}

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
    read: fn(&Value) -> Result<Option<Booking>, provider::Error>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let payload = parse_json(body)?;
    let booking = read(&payload).map_err(|err| Refusal::BadPayload(err.to_string()))?;
    state.booking(provider, headers, body, booking).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
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
async fn list_secrets(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    known_inbox(&state, &id)?;
    let configured = state.db.ingress_providers(&id).await?;
    let flags: serde_json::Map<String, Value> = Provider::ALL
        .iter()
        .map(|provider| {
            let name = provider.as_str();
            (
                name.to_owned(),
                json!({"configured": configured.iter().any(|c| c == name)}),
            )
        })
        .collect();
    Ok(Json(json!({"inbox_id": id, "providers": flags})))
}

async fn set_secret(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    Path((id, provider)): Path<(String, String)>,
    body: Result<Json<SecretBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        json!({"inbox_id": id, "provider": provider.as_str(), "configured": true}),
    ))
}

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
