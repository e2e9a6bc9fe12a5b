//! Domains (admin only): `GET /v1/domains`, `GET/PUT/DELETE /v1/domains/{name}` — whole mail
//! domains with their catch-all inbox and the template of the inboxes made on first mail (SPEC
//! "Domains, catch-all and inboxes created on first mail").
//!
//! The template is checked by the same code as `[domain.template]` in the config file
//! ([`crate::config::domain::template_inbox`]); its `webhook_secret` is write-only: answers say
//! `has_webhook_secret`, and a PUT whose template leaves the key out keeps the stored secret (so
//! a read-modify-write does not drop it; `"webhook_secret": null` removes it). A domain the
//! config file declares is read-only here (409). Every change refreshes the RCPT directory
//! before it answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::InboxConfig;
use crate::config::domain::{
    DEFAULT_AUTO_CREATE_PER_MINUTE, DEFAULT_MAX_AUTO_INBOXES, normalize_domain, template_inbox,
};
use crate::db::{DomainChange, DomainRow};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::rfc3339;

/// A domain as the API shows it. Every field is sent, `null` when unset.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DomainView {
    /// Lowercase, without a trailing dot.
    name: String,
    /// config (declared in the config file, read-only here) or api.
    source: String,
    /// The inbox that receives mail for local parts no inbox claims.
    #[schema(required)]
    catch_all: Option<String>,
    /// Whether the first mail to an unknown local part makes inbox `<local>` from the template.
    auto_create: bool,
    /// Past this many auto-created inboxes, RCPT for a new local part gets 452 4.2.2.
    max_auto_inboxes: u64,
    /// Inboxes auto-created in any 60 seconds; above it RCPT gets 451 4.7.1.
    auto_create_per_minute: u64,
    /// Inboxes auto-created for this domain so far.
    auto_inboxes: u64,
    template: TemplateView,
    created_at: String,
    updated_at: String,
}

/// The settings of every inbox auto-create makes, with the defaults of unset keys filled in;
/// never the secret.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TemplateView {
    #[schema(required)]
    webhook_url: Option<String>,
    /// Whether the template has a `webhook_secret` (write-only).
    has_webhook_secret: bool,
    signature: String,
    payload: String,
    #[schema(required)]
    signature_header: Option<String>,
    signature_format: String,
    verify_tls: bool,
    ordered: bool,
    /// The event types the webhook receives.
    events: Vec<String>,
    custom_headers: BTreeMap<String, String>,
    #[schema(required)]
    timeout_s: Option<u32>,
    #[schema(required)]
    max_retries: Option<u32>,
    spf_pass_required: bool,
    dkim_pass_required: bool,
    dmarc_pass_required: bool,
    allow_senders: Vec<String>,
    block_senders: Vec<String>,
    /// tag, reject or quarantine.
    policy_action: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DomainList {
    domains: Vec<DomainView>,
}

/// The whole domain: what is left out takes its default (`webhook_secret` excepted, see the
/// module documentation).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutDomain {
    /// An inbox id; it must exist.
    catch_all: Option<String>,
    auto_create: Option<bool>,
    /// Default 10000.
    max_auto_inboxes: Option<u64>,
    /// Default 60.
    auto_create_per_minute: Option<u64>,
    /// The keys of a config `[[inbox]]` except `id`, `addresses` and `calendar_event_types`:
    /// `webhook_url`, `webhook_secret`, `signature`, `payload`, `events`, the sender policy, …
    #[schema(value_type = Option<Object>)]
    template: Option<Map<String, Value>>,
}

fn unprocessable(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("{field}: {message}"),
    }
}

/// The template as an inbox, for the view; a stored template that no longer reads shows its
/// defaults rather than failing the listing.
fn template_view(domain: &DomainRow) -> TemplateView {
    let address = format!("template@{}", domain.name);
    let inbox = template_inbox(&domain.template, "template", &address, true)
        .ok()
        .or_else(|| template_inbox(&Map::new(), "template", &address, true).ok());
    let Some(inbox) = inbox else {
        // Unreachable: the empty template always reads.
        return empty_template_view();
    };
    let policy = inbox.sender_policy();
    TemplateView {
        has_webhook_secret: inbox.webhook_secret.is_some(),
        webhook_url: inbox.webhook_url.clone(),
        signature: inbox.signature.as_str().to_owned(),
        payload: inbox.payload.as_str().to_owned(),
        signature_header: inbox.signature_header.clone(),
        signature_format: inbox.signature_format.as_str().to_owned(),
        verify_tls: inbox.verify_tls,
        ordered: inbox.ordered,
        events: inbox.events().names(),
        custom_headers: inbox.custom_headers.clone(),
        timeout_s: inbox.timeout_s,
        max_retries: inbox.max_retries,
        spf_pass_required: policy.spf_pass_required,
        dkim_pass_required: policy.dkim_pass_required,
        dmarc_pass_required: policy.dmarc_pass_required,
        allow_senders: policy.allow_senders,
        block_senders: policy.block_senders,
        policy_action: policy_action_name(&inbox),
    }
}

fn policy_action_name(inbox: &InboxConfig) -> String {
    serde_json::to_value(inbox.policy_action)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn empty_template_view() -> TemplateView {
    TemplateView {
        webhook_url: None,
        has_webhook_secret: false,
        signature: String::new(),
        payload: String::new(),
        signature_header: None,
        signature_format: String::new(),
        verify_tls: true,
        ordered: false,
        events: Vec::new(),
        custom_headers: BTreeMap::new(),
        timeout_s: None,
        max_retries: None,
        spf_pass_required: false,
        dkim_pass_required: false,
        dmarc_pass_required: false,
        allow_senders: Vec::new(),
        block_senders: Vec::new(),
        policy_action: String::new(),
    }
}

fn domain_view(domain: &DomainRow, counts: &std::collections::HashMap<String, u64>) -> DomainView {
    DomainView {
        name: domain.name.clone(),
        source: domain.source.clone(),
        catch_all: domain.catch_all.clone(),
        auto_create: domain.auto_create,
        max_auto_inboxes: domain.max_auto_inboxes,
        auto_create_per_minute: domain.auto_create_per_minute,
        auto_inboxes: counts.get(&domain.name).copied().unwrap_or(0),
        template: template_view(domain),
        created_at: rfc3339(domain.created_at),
        updated_at: rfc3339(domain.updated_at),
    }
}

/// The domain named in the path, normalized; one that is no domain at all is unknown.
fn path_domain(name: &str) -> Result<String, ApiError> {
    normalize_domain(name).ok_or(ApiError::NotFound("domain"))
}

async fn view_of(state: &HttpState, name: &str) -> Result<DomainView, ApiError> {
    let domain = state
        .db
        .get_domain(name)
        .await?
        .ok_or(ApiError::NotFound("domain"))?;
    Ok(domain_view(&domain, &state.db.auto_inbox_counts().await?))
}

#[utoipa::path(
    get,
    path = "/v1/domains",
    tag = "domains",
    summary = "Every domain (admin)",
    responses(
        (status = 200, description = "The domains", body = DomainList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
    ),
)]
pub(crate) async fn list_domains(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<DomainList>, ApiError> {
    caller.require_admin()?;
    let counts = state.db.auto_inbox_counts().await?;
    let domains = state.db.list_domains().await?;
    Ok(Json(DomainList {
        domains: domains
            .iter()
            .map(|domain| domain_view(domain, &counts))
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/domains/{name}",
    tag = "domains",
    summary = "One domain (admin)",
    params(("name" = String, Path, description = "Domain name")),
    responses(
        (status = 200, description = "The domain", body = DomainView),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such domain", body = ErrorBody),
    ),
)]
pub(crate) async fn get_domain(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(view_of(&state, &path_domain(&name)?).await?))
}

#[utoipa::path(
    put,
    path = "/v1/domains/{name}",
    tag = "domains",
    summary = "Create or replace a domain (admin)",
    params(("name" = String, Path, description = "Domain name")),
    request_body = PutDomain,
    responses(
        (status = 200, description = "Replaced", body = DomainView),
        (status = 201, description = "Created", body = DomainView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types, unknown fields or an invalid value (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 409, description = "The config file declares the domain", body = ErrorBody),
    ),
)]
pub(crate) async fn put_domain(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<PutDomain>, JsonRejection>,
) -> Result<(StatusCode, Json<DomainView>), ApiError> {
    caller.require_admin()?;
    let Json(body) = body?;
    let name = normalize_domain(&name).ok_or_else(|| unprocessable("name", "is not a domain"))?;
    let existing = state.db.get_domain(&name).await?;
    if existing
        .as_ref()
        .is_some_and(|domain| domain.source == "config")
    {
        return Err(ApiError::Conflict(format!(
            "domain `{name}` is declared in the config file; change it there"
        )));
    }
    if let Some(catch_all) = &body.catch_all
        && state.db.get_inbox_row(catch_all).await?.is_none()
    {
        return Err(unprocessable(
            "catch_all",
            format!("there is no inbox `{catch_all}`"),
        ));
    }
    let max_auto_inboxes = body.max_auto_inboxes.unwrap_or(DEFAULT_MAX_AUTO_INBOXES);
    if max_auto_inboxes == 0 {
        return Err(unprocessable("max_auto_inboxes", "must be at least 1"));
    }
    let auto_create_per_minute = body
        .auto_create_per_minute
        .unwrap_or(DEFAULT_AUTO_CREATE_PER_MINUTE);
    if auto_create_per_minute == 0 {
        return Err(unprocessable(
            "auto_create_per_minute",
            "must be at least 1",
        ));
    }
    let mut template = body.template.unwrap_or_default();
    match template.get("webhook_secret") {
        Some(Value::Null) => {
            template.remove("webhook_secret");
        }
        Some(_) => {}
        None => {
            if let Some(secret) = existing
                .as_ref()
                .and_then(|domain| domain.template.get("webhook_secret"))
            {
                template.insert("webhook_secret".to_owned(), secret.clone());
            }
        }
    }
    template_inbox(
        &template,
        "template",
        &format!("template@{name}"),
        state.delivery.allow_http,
    )
    .map_err(|(field, message)| {
        let field = if field.is_empty() {
            "template".to_owned()
        } else {
            format!("template.{field}")
        };
        unprocessable(&field, message)
    })?;
    let change = state
        .db
        .put_domain(&DomainRow {
            name: name.clone(),
            source: "api".to_owned(),
            catch_all: body.catch_all,
            auto_create: body.auto_create.unwrap_or(false),
            max_auto_inboxes,
            auto_create_per_minute,
            template,
            created_at: 0,
            updated_at: 0,
        })
        .await?;
    let status = match change {
        DomainChange::Created => StatusCode::CREATED,
        DomainChange::ConfigOwned => {
            return Err(ApiError::Conflict(format!(
                "domain `{name}` is declared in the config file; change it there"
            )));
        }
        _ => StatusCode::OK,
    };
    state.refresh_directory().await?;
    Ok((status, Json(view_of(&state, &name).await?)))
}

#[utoipa::path(
    delete,
    path = "/v1/domains/{name}",
    tag = "domains",
    summary = "Delete a domain (admin); its inboxes stay",
    params(("name" = String, Path, description = "Domain name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
        (status = 404, description = "No such domain", body = ErrorBody),
        (status = 409, description = "The config file declares the domain", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_domain(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = path_domain(&name)?;
    match state.db.delete_domain(&name).await? {
        DomainChange::NotFound => Err(ApiError::NotFound("domain")),
        DomainChange::ConfigOwned => Err(ApiError::Conflict(format!(
            "domain `{name}` is declared in the config file; remove it there"
        ))),
        _ => {
            state.refresh_directory().await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
