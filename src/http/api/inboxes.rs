//! Inbox routes: create, list, change and delete inboxes; their webhook (with the signing secret
//! shown only when created or rotated), notification rules, per-inbox API keys, messages,
//! deliveries, bulk resend of the dead-letter queue and test events.
//!
//! Every route looks the inbox up through [`visible_inbox`], so a per-inbox key meets a 404 for
//! any other inbox. Every change refreshes the RCPT directory before it answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

use super::deliveries::{DeliveryList, DeliveryQuery, list_deliveries_of};
use crate::db::{ApiKeyRow, InboxRow, InboxUpdate, MessageFilter, NewInbox, WebhookSettings};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::intake::Outcome;
use crate::model::{Envelope, Recipient, new_id, now_ms, rfc3339};
use crate::model::{PayloadFormat, PolicyAction, SenderPolicy, SignatureFormat, SignatureScheme};

/// Per-inbox keys start with this, so the middleware knows to look one up.
pub const INBOX_KEY_PREFIX: &str = "mxk_";

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/inboxes", get(list_inboxes).post(create_inbox))
        .route(
            "/v1/inboxes/{id}",
            get(get_inbox).patch(update_inbox).delete(delete_inbox),
        )
        .route(
            "/v1/inboxes/{id}/webhook",
            get(get_webhook).put(put_webhook).delete(delete_webhook),
        )
        .route(
            "/v1/inboxes/{id}/notifications",
            get(get_notifications).put(put_notifications),
        )
        .route("/v1/inboxes/{id}/endpoints", get(list_endpoints))
        .route("/v1/inboxes/{id}/keys", get(list_keys).post(create_key))
        .route("/v1/inboxes/{id}/keys/{key_id}", delete(delete_key))
        .route("/v1/inboxes/{id}/messages", get(list_messages))
        .route("/v1/inboxes/{id}/deliveries", get(list_deliveries))
        .route("/v1/inboxes/{id}/deliveries/resend-dead", post(resend_dead))
        .route("/v1/inboxes/{id}/test-event", post(send_test_event))
}

/// The SHA-256 (hex) a per-inbox key is stored and looked up as.
pub fn hash_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// The inbox, if it exists and the caller may see it; otherwise 404 either way.
pub(crate) async fn visible_inbox(
    state: &HttpState,
    caller: &Caller,
    id: &str,
) -> Result<InboxRow, ApiError> {
    if !caller.sees(id) {
        return Err(ApiError::NotFound("inbox"));
    }
    state
        .db
        .get_inbox_row(id)
        .await?
        .ok_or(ApiError::NotFound("inbox"))
}

/// An inbox as the API shows it: settings and sender policy, never a secret.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InboxView {
    id: String,
    #[schema(required)]
    name: Option<String>,
    /// enabled or disabled.
    status: String,
    /// config (declared in the config file) or api.
    source: String,
    addresses: Vec<String>,
    #[schema(required)]
    webhook: Option<WebhookView>,
    spf_pass_required: bool,
    dkim_pass_required: bool,
    dmarc_pass_required: bool,
    allow_senders: Vec<String>,
    block_senders: Vec<String>,
    /// tag, reject or quarantine.
    #[schema(value_type = String)]
    policy_action: PolicyAction,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InboxList {
    inboxes: Vec<InboxView>,
}

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
    /// delivered, forwarded, http_error, error or not_sent.
    #[schema(required)]
    last_outcome: Option<String>,
}

/// The statistics of one endpoint of an inbox: `inbox`, or `rule:<id>` with its channel.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointView {
    endpoint_ref: String,
    channel: String,
    #[serde(flatten)]
    stats: StatsView,
}

fn inbox_view(inbox: &InboxRow) -> InboxView {
    let policy = &inbox.sender_policy;
    InboxView {
        id: inbox.id.clone(),
        name: inbox.name.clone(),
        status: inbox.status.clone(),
        source: inbox.source.clone(),
        addresses: inbox.addresses.clone(),
        webhook: inbox.webhook.as_ref().map(webhook_view),
        spf_pass_required: policy.spf_pass_required,
        dkim_pass_required: policy.dkim_pass_required,
        dmarc_pass_required: policy.dmarc_pass_required,
        allow_senders: policy.allow_senders.clone(),
        block_senders: policy.block_senders.clone(),
        policy_action: policy.policy_action,
        created_at: rfc3339(inbox.created_at),
        updated_at: rfc3339(inbox.updated_at),
    }
}

/// The webhook without its secrets: only whether one is set and until when the old one signs.
fn webhook_view(webhook: &WebhookSettings) -> WebhookView {
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
        has_secret: webhook.secret.is_some(),
        previous_secret_expires_at: webhook
            .previous_secret_expires_at
            .filter(|at| *at > now_ms() && webhook.previous_secret.is_some())
            .map(rfc3339),
        stats: None,
        signing_secret: None,
    }
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum InboxStatus {
    Enabled,
    Disabled,
}

impl InboxStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateInbox {
    id: Option<String>,
    name: Option<String>,
    addresses: Vec<String>,
    status: Option<InboxStatus>,
    spf_pass_required: Option<bool>,
    dkim_pass_required: Option<bool>,
    dmarc_pass_required: Option<bool>,
    /// Addresses or domains; when set, only these senders (with a DMARC pass) meet the policy.
    allow_senders: Option<Vec<String>>,
    /// Addresses or domains that never meet the policy.
    block_senders: Option<Vec<String>>,
    /// What happens to mail that breaks the policy: tag (default), reject or quarantine.
    #[schema(value_type = Option<String>)]
    policy_action: Option<PolicyAction>,
}

/// Every field is optional; what is left out stays as it is.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchInbox {
    name: Option<String>,
    addresses: Option<Vec<String>>,
    status: Option<InboxStatus>,
    spf_pass_required: Option<bool>,
    dkim_pass_required: Option<bool>,
    dmarc_pass_required: Option<bool>,
    /// Addresses or domains; when set, only these senders (with a DMARC pass) meet the policy.
    allow_senders: Option<Vec<String>>,
    /// Addresses or domains that never meet the policy.
    block_senders: Option<Vec<String>>,
    /// What happens to mail that breaks the policy: tag, reject or quarantine.
    #[schema(value_type = Option<String>)]
    policy_action: Option<PolicyAction>,
}

/// The policy fields of a create or patch body; `None` keeps what `base` has.
struct PolicyChange {
    spf_pass_required: Option<bool>,
    dkim_pass_required: Option<bool>,
    dmarc_pass_required: Option<bool>,
    allow_senders: Option<Vec<String>>,
    block_senders: Option<Vec<String>>,
    policy_action: Option<PolicyAction>,
}

impl PolicyChange {
    fn is_empty(&self) -> bool {
        self.spf_pass_required.is_none()
            && self.dkim_pass_required.is_none()
            && self.dmarc_pass_required.is_none()
            && self.allow_senders.is_none()
            && self.block_senders.is_none()
            && self.policy_action.is_none()
    }

    fn applied_to(self, base: SenderPolicy) -> Result<SenderPolicy, ApiError> {
        Ok(SenderPolicy {
            spf_pass_required: self.spf_pass_required.unwrap_or(base.spf_pass_required),
            dkim_pass_required: self.dkim_pass_required.unwrap_or(base.dkim_pass_required),
            dmarc_pass_required: self.dmarc_pass_required.unwrap_or(base.dmarc_pass_required),
            allow_senders: match self.allow_senders {
                Some(entries) => sender_entries("allow_senders", &entries)?,
                None => base.allow_senders,
            },
            block_senders: match self.block_senders {
                Some(entries) => sender_entries("block_senders", &entries)?,
                None => base.block_senders,
            },
            policy_action: self.policy_action.unwrap_or(base.policy_action),
        })
    }
}

/// Allow or block list entries, lowercased and without repeats.
fn sender_entries(key: &str, entries: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries {
        let normalized = crate::model::normalize_sender_entry(entry).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{key}: `{entry}` is neither an address nor a domain"
            ))
        })?;
        if !out.contains(&normalized) {
            out.push(normalized);
        }
    }
    Ok(out)
}

fn normalized_addresses(addresses: &[String]) -> Result<Vec<String>, ApiError> {
    if addresses.is_empty() {
        return Err(ApiError::BadRequest(
            "addresses: an inbox needs at least one address".to_owned(),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(addresses.len());
    for address in addresses {
        let normalized = crate::model::normalize_address(address).ok_or_else(|| {
            ApiError::BadRequest(format!("addresses: `{address}` is not a routable address"))
        })?;
        if !out.contains(&normalized) {
            out.push(normalized);
        }
    }
    Ok(out)
}

#[utoipa::path(
    get,
    path = "/v1/inboxes",
    tag = "inboxes",
    summary = "Inboxes the key can see",
    responses(
        (status = 200, description = "The inboxes", body = InboxList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
    ),
)]
async fn list_inboxes(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<InboxList>, ApiError> {
    let only = match &caller {
        Caller::Admin => None,
        Caller::Inbox(own) => Some(own.as_str()),
    };
    let inboxes = state.db.list_inbox_rows(only).await?;
    Ok(Json(InboxList {
        inboxes: inboxes.iter().map(inbox_view).collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/inboxes",
    tag = "inboxes",
    summary = "Create an inbox (admin)",
    request_body = CreateInbox,
    responses(
        (status = 201, description = "The inbox", body = InboxView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 409, description = "Id or address taken", body = ErrorBody),
    ),
)]
async fn create_inbox(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CreateInbox>, JsonRejection>,
) -> Result<(StatusCode, Json<InboxView>), ApiError> {
    caller.require_admin()?;
    let Json(body) = body?;
    let id = body.id.unwrap_or_else(|| new_id("inb"));
    if !crate::model::is_valid_inbox_id(&id) {
        return Err(ApiError::BadRequest(
            "id: 1 to 64 of a-z A-Z 0-9 . _ -, not starting with `.`".to_owned(),
        ));
    }
    let addresses = normalized_addresses(&body.addresses)?;
    let sender_policy = PolicyChange {
        spf_pass_required: body.spf_pass_required,
        dkim_pass_required: body.dkim_pass_required,
        dmarc_pass_required: body.dmarc_pass_required,
        allow_senders: body.allow_senders,
        block_senders: body.block_senders,
        policy_action: body.policy_action,
    }
    .applied_to(SenderPolicy::default())?;
    state
        .db
        .create_inbox(&NewInbox {
            id: id.clone(),
            name: body.name,
            status: body
                .status
                .unwrap_or(InboxStatus::Enabled)
                .as_str()
                .to_owned(),
            addresses,
            sender_policy,
        })
        .await?;
    state.refresh_directory().await?;
    let inbox = visible_inbox(&state, &caller, &id).await?;
    Ok((StatusCode::CREATED, Json(inbox_view(&inbox))))
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}",
    tag = "inboxes",
    summary = "One inbox",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "The inbox", body = InboxView),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn get_inbox(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InboxView>, ApiError> {
    Ok(Json(inbox_view(
        &visible_inbox(&state, &caller, &id).await?,
    )))
}

#[utoipa::path(
    patch,
    path = "/v1/inboxes/{id}",
    tag = "inboxes",
    summary = "Change name, addresses (admin), status or sender policy",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = PatchInbox,
    responses(
        (status = 200, description = "The inbox", body = InboxView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 409, description = "Address taken", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn update_inbox(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<PatchInbox>, JsonRejection>,
) -> Result<Json<InboxView>, ApiError> {
    let current = visible_inbox(&state, &caller, &id).await?;
    let Json(body) = body?;
    if body.addresses.is_some() {
        // Addresses decide which mail the gateway accepts for whom: an inbox key must not
        // claim addresses for itself.
        caller.require_admin()?;
    }
    let policy_change = PolicyChange {
        spf_pass_required: body.spf_pass_required,
        dkim_pass_required: body.dkim_pass_required,
        dmarc_pass_required: body.dmarc_pass_required,
        allow_senders: body.allow_senders,
        block_senders: body.block_senders,
        policy_action: body.policy_action,
    };
    let sender_policy = if policy_change.is_empty() {
        None
    } else {
        Some(policy_change.applied_to(current.sender_policy)?)
    };
    let update = InboxUpdate {
        sender_policy,
        name: body.name.map(Some),
        status: body.status.map(|status| status.as_str().to_owned()),
        addresses: body
            .addresses
            .as_deref()
            .map(normalized_addresses)
            .transpose()?,
    };
    if !state.db.update_inbox(&id, &update).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    state.refresh_directory().await?;
    Ok(Json(inbox_view(
        &visible_inbox(&state, &caller, &id).await?,
    )))
}

#[utoipa::path(
    delete,
    path = "/v1/inboxes/{id}",
    tag = "inboxes",
    summary = "Delete an inbox (admin)",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn delete_inbox(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    caller.require_admin()?;
    if !state.db.delete_inbox(&id).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    state.refresh_directory().await?;
    Ok(StatusCode::NO_CONTENT)
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
async fn get_webhook(
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
        last_outcome: stats.and_then(|stats| stats.last_outcome.clone()),
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
async fn list_endpoints(
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
            channel: stats.channel.clone(),
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
    /// mxhook (default) or botmailroom.
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
                // Validated at startup to at most 30 days, so the cast cannot overflow.
                Some(now + (state.delivery.secret_rotation_grace_s * 1000.0) as i64),
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
    let settings = WebhookSettings {
        url: body.url,
        enabled: body.enabled,
        signature,
        payload,
        signature_header: body.signature_header.or_else(|| {
            existing
                .as_ref()
                .and_then(|webhook| webhook.signature_header.clone())
        }),
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
async fn delete_webhook(
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

/// One notification rule, in the shape SPEC.md gives. Stored and returned; the dispatcher does
/// not act on rules yet.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    filters: RuleFilters,
    #[serde(default)]
    channels: RuleChannels,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    traffic_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sender_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trust_tiers: Vec<TrustTier>,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum TrustTier {
    Trusted,
    Verified,
    Unverified,
    Suspicious,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleChannels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<RuleWebhook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<RuleEmail>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleWebhook {
    #[serde(default = "yes")]
    enabled: bool,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    signature: Option<SignatureScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    payload: Option<PayloadFormat>,
    /// The hmac-sha256 scheme's header (default X-Webhook-Signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature_header: Option<String>,
    /// The hmac-sha256 scheme's value: sha256=hex (default) or hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    signature_format: Option<SignatureFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custom_headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verify_tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordered: Option<bool>,
    /// Set by the gateway when it switches the channel off (410 Gone, failing too long);
    /// dropped when the channel is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RuleEmail {
    #[serde(default = "yes")]
    enabled: bool,
    recipients: Vec<String>,
}

#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Notifications {
    rules: Vec<Rule>,
}

/// What PUT takes: the bare list SPEC describes, or the list wrapped as `{"rules": [...]}`.
///
/// Read by hand rather than as an untagged enum: serde's untagged enums answer every mistake
/// with "data did not match any variant", while this names the field (`rules[0].filters.x`).
#[derive(Debug, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum NotificationsBody {
    List(Vec<Rule>),
    Wrapped(Notifications),
}

impl<'de> Deserialize<'de> for NotificationsBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        let at_path = |err: serde_path_to_error::Error<serde_json::Error>, base: &str| {
            let path = err.path().to_string();
            let path = match path.as_str() {
                "." => base.to_owned(),
                path if path.starts_with('[') => format!("{base}{path}"),
                path => path.to_owned(),
            };
            D::Error::custom(format!("{path}: {}", err.inner()))
        };
        match value {
            Value::Array(_) => serde_path_to_error::deserialize(value)
                .map(Self::List)
                .map_err(|err| at_path(err, "rules")),
            Value::Object(_) => serde_path_to_error::deserialize(value)
                .map(Self::Wrapped)
                .map_err(|err| at_path(err, "body")),
            _ => Err(D::Error::custom(
                "expected a list of rules or {\"rules\": [...]}",
            )),
        }
    }
}

fn validate_rules(state: &HttpState, rules: &mut [Rule]) -> Result<(), ApiError> {
    for (idx, rule) in rules.iter_mut().enumerate() {
        if rule.id.is_none() {
            rule.id = Some(new_id("rule"));
        }
        // The dispatcher reads rules as `route::Rule`; its checks (reserved custom headers
        // among them) apply to what is stored.
        let routed: crate::model::Rule = serde_json::to_value(&*rule)
            .and_then(serde_json::from_value)
            .map_err(|err| ApiError::BadRequest(format!("rules[{idx}]: {err}")))?;
        routed
            .validate(state.delivery.allow_http)
            .map_err(|message| ApiError::BadRequest(format!("rules[{idx}].{message}")))?;
        if let Some(webhook) = rule.channels.webhook.as_mut()
            && webhook.enabled
        {
            webhook.disabled_reason = None;
        }
        if let Some(webhook) = &rule.channels.webhook {
            crate::model::validate_webhook_url(&webhook.url, state.delivery.allow_http).map_err(
                |reason| {
                    ApiError::BadRequest(format!("rules[{idx}].channels.webhook.url: {reason}"))
                },
            )?;
            if webhook.timeout_s.is_some_and(|t| !(1..=300).contains(&t)) {
                return Err(ApiError::BadRequest(format!(
                    "rules[{idx}].channels.webhook.timeout_s: must be 1 to 300"
                )));
            }
            if webhook.max_retries.is_some_and(|n| n > 10) {
                return Err(ApiError::BadRequest(format!(
                    "rules[{idx}].channels.webhook.max_retries: at most 10"
                )));
            }
        }
        if let Some(email) = &rule.channels.email {
            for recipient in &email.recipients {
                if crate::model::normalize_address(recipient).is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "rules[{idx}].channels.email.recipients: `{recipient}` is not an address"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/notifications",
    tag = "notifications",
    summary = "Notification rules",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "The rules, as a list", body = Vec<Rule>),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_notifications(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Rule>>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let stored = state
        .db
        .get_notifications(&id)
        .await?
        .ok_or(ApiError::NotFound("inbox"))?;
    // Read back as the documented type: stored rules were written from it (and the
    // dispatcher's auto-disable sets only fields it has), so what is sent is what is documented.
    let rules: Vec<Rule> = match stored {
        Some(text) => serde_json::from_str(&text)
            .map_err(|err| ApiError::Internal(format!("stored rules of {id}: {err}")))?,
        None => Vec::new(),
    };
    Ok(Json(rules))
}

#[utoipa::path(
    put,
    path = "/v1/inboxes/{id}/notifications",
    tag = "notifications",
    summary = "Replace the notification rules: a list, or {rules: [...]}",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = NotificationsBody,
    responses(
        (status = 200, description = "The stored rules, as a list, ids filled in", body = Vec<Rule>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn put_notifications(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<NotificationsBody>, JsonRejection>,
) -> Result<Json<Vec<Rule>>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let Json(body) = body?;
    let mut rules = match body {
        NotificationsBody::List(rules) | NotificationsBody::Wrapped(Notifications { rules }) => {
            rules
        }
    };
    validate_rules(&state, &mut rules)?;
    let text = serde_json::to_string(&rules).map_err(|err| ApiError::Internal(err.to_string()))?;
    if !state.db.set_notifications(&id, &text).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    // The rules route the next message at once.
    state.refresh_directory().await?;
    Ok(Json(rules))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: Option<String>,
}

/// A per-inbox key as listed: never the key itself, nor its hash.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKeyView {
    id: String,
    inbox_id: String,
    #[schema(required)]
    name: Option<String>,
    /// The key's first characters (`mxk_` and 8 hex digits); null for keys made before
    /// prefixes were recorded.
    #[schema(required)]
    prefix: Option<String>,
    created_at: String,
}

impl From<ApiKeyRow> for ApiKeyView {
    fn from(row: ApiKeyRow) -> Self {
        Self {
            id: row.id,
            inbox_id: row.inbox_id,
            name: row.name,
            prefix: row.prefix,
            created_at: rfc3339(row.created_at),
        }
    }
}

/// How many characters of a key its listing shows: the `mxk_` prefix and 32 of its 256 bits.
const SHOWN_KEY_CHARS: usize = INBOX_KEY_PREFIX.len() + 8;

#[utoipa::path(
    post,
    path = "/v1/inboxes/{id}/keys",
    tag = "keys",
    summary = "Create a per-inbox API key (admin); the key is returned once",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = Option<CreateKey>,
    responses(
        (status = 201, description = "The key, shown this once", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn create_key(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    caller.require_admin()?;
    // The body is optional, so it is read by hand; its errors still split the way axum's Json
    // splits them: malformed JSON is 400, well-formed JSON of the wrong shape 422.
    let request: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        let value: Value = serde_json::from_slice(&body).map_err(|err| ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            message: format!("malformed JSON body: {err}"),
        })?;
        let shape_error = |message: String| ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        };
        if !value.is_object() {
            // serde would otherwise read a struct from an array of its fields.
            return Err(shape_error("the body must be a JSON object".to_owned()));
        }
        serde_json::from_value(value)
            .map_err(|err| shape_error(format!("invalid JSON body: {err}")))?
    };
    let secret_bytes: [u8; 32] = rand::random();
    let key = format!("{INBOX_KEY_PREFIX}{}", hex::encode(secret_bytes));
    let row = ApiKeyRow {
        id: new_id("key"),
        inbox_id: id,
        name: request.name,
        prefix: key.get(..SHOWN_KEY_CHARS).map(str::to_owned),
        created_at: now_ms(),
    };
    state.db.create_api_key(&row, &hash_key(&key)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view: ApiKeyView::from(row),
            key,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/keys",
    tag = "keys",
    summary = "The per-inbox API keys (admin): ids, names, prefixes and creation times, never the keys",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn list_keys(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    caller.require_admin()?;
    let keys = state.db.list_api_keys(&id).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// A key as created: the listing's fields and the key itself, shown this once.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedKey {
    #[serde(flatten)]
    view: ApiKeyView,
    key: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<ApiKeyView>,
}

#[utoipa::path(
    delete,
    path = "/v1/inboxes/{id}/keys/{key_id}",
    tag = "keys",
    summary = "Revoke a per-inbox API key (admin); it is refused from the next request on",
    params(
        ("id" = String, Path, description = "Inbox id"),
        ("key_id" = String, Path, description = "Key id (`key_…`)"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn delete_key(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    caller.require_admin()?;
    if !state.db.delete_api_key(&id, &key_id).await? {
        return Err(ApiError::NotFound("key"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
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
    messages: Vec<crate::db::MessageSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required)]
    next_cursor: Option<String>,
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
async fn list_messages(
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
    let messages = state.db.list_messages(&id, &filter).await?;
    let next_cursor = (i64::try_from(messages.len()).ok() == Some(limit))
        .then(|| messages.last().map(|message| message.id.clone()))
        .flatten();
    Ok(Json(MessageList {
        messages,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InboxDeliveriesQuery {
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/deliveries",
    operation_id = "list_inbox_deliveries",
    tag = "deliveries",
    summary = "Deliveries of an inbox, by status",
    params(("id" = String, Path, description = "Inbox id"), InboxDeliveriesQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn list_deliveries(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<InboxDeliveriesQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let Query(query) = query?;
    list_deliveries_of(
        &state,
        DeliveryQuery {
            status: query.status,
            inbox_id: Some(id),
            limit: query.limit,
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/inboxes/{id}/deliveries/resend-dead",
    tag = "deliveries",
    summary = "Queue every dead delivery of an inbox again",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 202, description = "How many were queued", body = Requeued),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn resend_dead(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let requeued = state.db.resend_dead(&id).await?;
    state.dispatcher_wakeup.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

/// The answer to a bulk resend of the dead-letter queue.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Requeued {
    /// Dead deliveries queued again.
    requeued: u64,
}

/// The answer to a test event.
///
/// Every field is sent, `null` when unset, so each is `required` in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TestEventSent {
    /// The stored test message (`GET /v1/messages/{id}`); its deliveries run as for real mail.
    #[schema(required)]
    message_id: Option<String>,
}

/// Sends a synthetic message through intake, so the test event is stored, signed, retried and
/// logged exactly like one from real mail.
#[utoipa::path(
    post,
    path = "/v1/inboxes/{id}/test-event",
    tag = "webhook",
    summary = "Send a test mail.received event through the delivery path",
    params(("id" = String, Path, description = "Inbox id")),
    responses(
        (status = 202, description = "Accepted and queued", body = TestEventSent),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 409, description = "No enabled webhook", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn send_test_event(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestEventSent>), ApiError> {
    let inbox = visible_inbox(&state, &caller, &id).await?;
    if inbox.status != "enabled"
        || !inbox
            .webhook
            .as_ref()
            .is_some_and(|webhook| webhook.enabled)
    {
        return Err(ApiError::Conflict(
            "the inbox is disabled or has no enabled webhook".to_owned(),
        ));
    }
    let address = inbox
        .addresses
        .first()
        .cloned()
        .unwrap_or_else(|| format!("{id}@mxhook.invalid"));
    let raw = format!(
        "From: mxhook <test@mxhook.invalid>\r\nTo: <{address}>\r\n\
         Subject: mxhook test event\r\nDate: {date}\r\n\
         Message-ID: <{token}@mxhook.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test event sent by mxhook to check the webhook of inbox {id}.\r\n",
        date = chrono::Utc::now().to_rfc2822(),
        token = new_id("test"),
    );
    let envelope = Envelope {
        remote_ip: None,
        helo: "mxhook-test-event".to_owned(),
        mail_from: Some("test@mxhook.invalid".to_owned()),
        recipients: vec![Recipient {
            address,
            inbox_id: id,
        }],
        smtputf8: false,
    };
    match state.intake.accept(&envelope, raw.as_bytes()).await {
        Outcome::Accepted { message_ids } => Ok((
            StatusCode::ACCEPTED,
            Json(TestEventSent {
                message_id: message_ids.into_iter().next(),
            }),
        )),
        Outcome::TempFail { reason } => Err(ApiError::Internal(format!(
            "test event not accepted: {reason}"
        ))),
        // The inbox's own sender policy refuses the synthetic sender: say so plainly.
        Outcome::Reject { reason } => Err(ApiError::Conflict(format!(
            "the inbox policy rejects the test event: {reason}"
        ))),
    }
}
