//! Inboxes: create, list, change and delete them (with their sender policy), and the
//! inbox-scoped deliveries, bulk resend of the dead-letter queue and test events. The inbox's
//! webhook, rules, keys and messages have files of their own beside this one.
//!
//! Every inbox route looks the inbox up through [`visible_inbox`], so a per-inbox key meets a 404
//! for any other inbox. Every change refreshes the RCPT directory before it answers.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::deliveries::{DeliveryList, DeliveryQuery, list_deliveries_of};
use super::webhook::{WebhookView, webhook_view};
use crate::db::{InboxRow, InboxUpdate, NewInbox};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::intake::Outcome;
use crate::model::{Envelope, Recipient, new_id, rfc3339};
use crate::model::{PolicyAction, SenderPolicy, SpamAction};

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
    /// config (declared in the config file), api, or auto (made by the first mail to a domain).
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
    /// tag, quarantine or reject: what happens to mail rspamd scores as spam.
    #[schema(value_type = String)]
    spam_action: SpamAction,
    /// The score from which mail counts as spam; null is rspamd's required_score.
    #[schema(required)]
    spam_score_threshold: Option<f64>,
    /// Mail for it only over TLS (plaintext sessions get 530 5.7.0 at RCPT).
    require_tls: bool,
    /// Days its messages are kept (fractions allowed, 0 for ever); null is `retention.days`.
    #[schema(required)]
    retention_days: Option<f64>,
    /// Only while the inbox is being erased (`DELETE …?purge=true`): how far it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    purge: Option<super::lifecycle::PurgeProgress>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InboxList {
    inboxes: Vec<InboxView>,
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
        spam_action: policy.spam_action,
        spam_score_threshold: policy.spam_score_threshold,
        require_tls: policy.require_tls,
        purge: None,
        retention_days: inbox.retention_days,
        created_at: rfc3339(inbox.created_at),
        updated_at: rfc3339(inbox.updated_at),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InboxStatus {
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
pub(crate) struct CreateInbox {
    id: Option<String>,
    name: Option<String>,
    #[schema(min_items = 1)]
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
    /// What happens to mail rspamd scores as spam: tag (default), quarantine or reject.
    #[schema(value_type = Option<String>)]
    spam_action: Option<SpamAction>,
    /// The score from which mail counts as spam; unset is rspamd's required_score.
    spam_score_threshold: Option<f64>,
    /// Mail for it only over TLS (plaintext sessions get 530 5.7.0 at RCPT); default false.
    require_tls: Option<bool>,
    /// Days its messages are kept (fractions allowed, 0 for ever); unset is `retention.days`.
    #[schema(minimum = 0, maximum = 36500)]
    retention_days: Option<f64>,
}

/// Every field is optional; what is left out stays as it is.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchInbox {
    name: Option<String>,
    #[schema(min_items = 1)]
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
    /// What happens to mail rspamd scores as spam: tag, quarantine or reject.
    #[schema(value_type = Option<String>)]
    spam_action: Option<SpamAction>,
    /// The score from which mail counts as spam.
    spam_score_threshold: Option<f64>,
    /// Mail for it only over TLS (plaintext sessions get 530 5.7.0 at RCPT).
    require_tls: Option<bool>,
    /// Days its messages are kept (fractions allowed, 0 for ever); null goes back to
    /// `retention.days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 36500)]
    retention_days: Option<Option<f64>>,
}

/// A field that is present, `null` included, as `Some`; left out, it stays `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A retention the API was given, checked like the config key.
fn checked_retention(days: Option<f64>) -> Result<Option<f64>, ApiError> {
    if let Some(days) = days {
        crate::config::retention::retention_days("retention_days", days)
            .map_err(|err| ApiError::BadRequest(err.to_string()))?;
    }
    Ok(days)
}

/// The policy fields of a create or patch body; `None` keeps what `base` has.
pub(crate) struct PolicyChange {
    spf_pass_required: Option<bool>,
    dkim_pass_required: Option<bool>,
    dmarc_pass_required: Option<bool>,
    allow_senders: Option<Vec<String>>,
    block_senders: Option<Vec<String>>,
    policy_action: Option<PolicyAction>,
    spam_action: Option<SpamAction>,
    spam_score_threshold: Option<f64>,
    require_tls: Option<bool>,
}

impl PolicyChange {
    fn is_empty(&self) -> bool {
        self.spf_pass_required.is_none()
            && self.dkim_pass_required.is_none()
            && self.dmarc_pass_required.is_none()
            && self.allow_senders.is_none()
            && self.block_senders.is_none()
            && self.policy_action.is_none()
            && self.spam_action.is_none()
            && self.spam_score_threshold.is_none()
            && self.require_tls.is_none()
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
            spam_action: self.spam_action.unwrap_or(base.spam_action),
            spam_score_threshold: match self.spam_score_threshold {
                Some(threshold) if !threshold.is_finite() => {
                    return Err(ApiError::BadRequest(
                        "spam_score_threshold: must be a number".to_owned(),
                    ));
                }
                Some(threshold) => Some(threshold),
                None => base.spam_score_threshold,
            },
            require_tls: self.require_tls.unwrap_or(base.require_tls),
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
pub(crate) async fn list_inboxes(
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
pub(crate) async fn create_inbox(
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
    let retention_days = checked_retention(body.retention_days)?;
    let sender_policy = PolicyChange {
        spf_pass_required: body.spf_pass_required,
        dkim_pass_required: body.dkim_pass_required,
        dmarc_pass_required: body.dmarc_pass_required,
        allow_senders: body.allow_senders,
        block_senders: body.block_senders,
        policy_action: body.policy_action,
        spam_action: body.spam_action,
        spam_score_threshold: body.spam_score_threshold,
        require_tls: body.require_tls,
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
    if retention_days.is_some() {
        state.db.set_inbox_retention(&id, retention_days).await?;
    }
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
pub(crate) async fn get_inbox(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InboxView>, ApiError> {
    let mut view = inbox_view(&visible_inbox(&state, &caller, &id).await?);
    view.purge = super::lifecycle::purge_progress(&state, &id).await?;
    Ok(Json(view))
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
        (status = 403, description = "Changing addresses needs an admin key", body = ErrorBody),
        (status = 409, description = "Address taken", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn update_inbox(
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
        spam_action: body.spam_action,
        spam_score_threshold: body.spam_score_threshold,
        require_tls: body.require_tls,
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
    let retention_days = body.retention_days.map(checked_retention).transpose()?;
    if !state.db.update_inbox(&id, &update).await? {
        return Err(ApiError::NotFound("inbox"));
    }
    if let Some(days) = retention_days {
        state.db.set_inbox_retention(&id, days).await?;
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
    description = "Its messages stay, unless `purge=true`: then the inbox is disabled at once \
        and erased whole in the background (every message as by `DELETE /v1/messages/{id}`, then \
        the inbox), its GET showing `purge` progress until it is gone.",
    params(
        ("id" = String, Path, description = "Inbox id"),
        super::lifecycle::PurgeQuery,
    ),
    responses(
        (status = 202, description = "Purge started", body = super::lifecycle::PurgeProgress),
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad query (`purge` not true or false)", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_inbox(
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboxDeliveriesQuery {
    /// pending, delivered or dead (the dead-letter queue).
    #[param(value_type = Option<crate::model::DeliveryStatus>)]
    status: Option<String>,
    /// Default 100.
    #[param(minimum = 1, maximum = 1000)]
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
pub(crate) async fn list_deliveries(
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
            as_sent: address.clone(),
            address,
            inbox_id: id,
        }],
        smtputf8: false,
        tls: None,
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
