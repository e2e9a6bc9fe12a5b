//! Inbox pages: the list with its "Configured" badges and endpoint statistics, and one inbox with
//! the delivery-health chart of each endpoint (drawn by [`super::chart`]), its webhook settings,
//! secret rotation (the new secret shown once), notification rules editor and test event. Every
//! action calls the JSON API's own handler, so both behave alike.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Auth, Error, UiState, chart, render, when};
use crate::db::{EndpointStats, InboxRow, WebhookSettings};
use crate::http::api::{inboxes, notifications, webhook};
use crate::model::Provider;
use crate::model::{DEFAULT_HMAC_HEADER, EVENT_TYPES, Subscription};

pub(super) const SIGNATURES: &[&str] = &["agentmail", "standard", "botmailroom", "hmac-sha256"];
pub(super) const PAYLOADS: &[&str] = &["mxhook", "botmailroom", "event-data", "event-data-ts"];
const SIGNATURE_FORMATS: &[&str] = &["sha256=hex", "hex"];
/// The only scheme that reads `signature_header` and `signature_format`.
const HMAC_SCHEME: &str = "hmac-sha256";

/// The statistics of one endpoint as the pages show them.
fn stats_view(stats: &EndpointStats) -> Value {
    json!({
        "endpoint": stats.endpoint_ref,
        "channel": stats.channel,
        "attempts": stats.attempts,
        "delivered": stats.delivered,
        "success_rate": stats.success_rate.map(|rate| format!("{:.0}%", rate * 100.0)),
        "last_triggered": stats.last_triggered_ms.map(when),
        "last_status": match (stats.last_status_code, stats.last_outcome) {
            (Some(code), _) => Some(code.to_string()),
            (None, outcome) => outcome.map(|outcome| outcome.as_str().to_owned()),
        },
        "last_ok": stats.last_succeeded(),
    })
}

fn inbox_view(inbox: &InboxRow, stats: &[EndpointStats], providers: &[String]) -> Value {
    let webhook = inbox.webhook.as_ref();
    let inbox_stats = stats
        .iter()
        .find(|stats| stats.inbox_id == inbox.id && stats.endpoint_ref == "inbox")
        .map(stats_view);
    json!({
        "id": inbox.id,
        "name": inbox.name,
        "status": inbox.status,
        "source": inbox.source,
        "addresses": inbox.addresses,
        "webhook_url": webhook.map(|webhook| webhook.url.clone()),
        "webhook_enabled": webhook.is_some_and(|webhook| webhook.enabled),
        "signature": webhook.map(|webhook| webhook.signature.as_str()),
        "payload": webhook.map(|webhook| webhook.payload.as_str()),
        "has_secret": webhook.is_some_and(|webhook| webhook.secret.is_some()),
        "disabled_reason": webhook.and_then(|webhook| webhook.disabled_reason.clone()),
        "providers": Provider::ALL.iter().map(|provider| json!({
            "name": provider.as_str(),
            "configured": providers.iter().any(|name| name == provider.as_str()),
        })).collect::<Vec<_>>(),
        "stats": inbox_stats,
        "retention_days": inbox.retention_days,
    })
}

pub(super) async fn list(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, Error> {
    let db = &state.http.db;
    let inboxes = db.list_inbox_rows(auth.only()).await?;
    let stats = db.endpoint_stats(auth.only()).await?;
    let mut views = Vec::with_capacity(inboxes.len());
    for inbox in &inboxes {
        let providers = db.ingress_providers(&inbox.id).await?;
        views.push(inbox_view(inbox, &stats, &providers));
    }
    Ok(render(
        "inboxes.html",
        json!({ "base": auth.base(), "inboxes": views, "page": "inboxes" }),
    )?
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DetailQuery {
    #[serde(default)]
    done: Option<String>,
}

/// What a finished action says on the page it returns to.
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "webhook" => Some("Webhook settings saved."),
        "rules" => Some("Notification rules saved."),
        "test-event" => Some("Test event queued: watch it on the messages page."),
        _ => None,
    }
}

pub(super) async fn detail(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Result<Response, Error> {
    detail_page(
        &state,
        &auth,
        &id,
        StatusCode::OK,
        notice(query.done.as_deref()),
        Refusal::default(),
    )
    .await
}

/// What a refused form brings back to the inbox page: the reason, the form it belongs next to,
/// and what the user typed, so nothing has to be typed twice.
#[derive(Debug, Default)]
struct Refusal {
    /// `webhook`, `rules` or `page`.
    section: &'static str,
    message: Option<String>,
    rules_text: Option<String>,
    webhook: Option<WebhookFields>,
}

/// The webhook form's fields, from the stored settings or from what was typed.
#[derive(Debug, Serialize)]
struct WebhookFields {
    url: String,
    enabled: bool,
    signature: String,
    payload: String,
    signature_header: String,
    signature_format: String,
    verify_tls: bool,
    ordered: bool,
    /// `Name: value` lines.
    custom_headers: String,
    /// Empty: the `[delivery]` default.
    timeout_s: String,
    max_retries: String,
    /// The catalogue's types the webhook receives (its patterns expanded), checked in the form.
    events: Vec<&'static str>,
}

/// The types of `events` among the catalogue, for the form's checkboxes.
fn checked_types(events: &Subscription) -> Vec<&'static str> {
    EVENT_TYPES
        .into_iter()
        .filter(|event_type| events.matches(event_type))
        .collect()
}

/// The checked types as a subscription: every type is `*`, and all of a prefix's types are its
/// `prefix.*`, so the default reads back as the default.
fn subscription_of(checked: &[&str]) -> Vec<String> {
    if EVENT_TYPES.iter().all(|known| checked.contains(known)) {
        return vec!["*".to_owned()];
    }
    let calendar: Vec<&str> = EVENT_TYPES
        .into_iter()
        .filter(|known| known.starts_with("calendar."))
        .collect();
    let all_calendar = calendar.iter().all(|known| checked.contains(known));
    let mut out = Vec::new();
    for known in EVENT_TYPES {
        if !checked.contains(&known) {
            continue;
        }
        if known.starts_with("calendar.") && all_calendar {
            if !out.iter().any(|pattern| pattern == "calendar.*") {
                out.push("calendar.*".to_owned());
            }
        } else {
            out.push(known.to_owned());
        }
    }
    out
}

impl WebhookFields {
    /// The API's defaults when the inbox has no webhook yet.
    fn stored(webhook: Option<&WebhookSettings>) -> Self {
        Self {
            url: webhook
                .map(|webhook| webhook.url.clone())
                .unwrap_or_default(),
            enabled: webhook.is_none_or(|webhook| webhook.enabled),
            signature: webhook
                .map_or("agentmail", |webhook| webhook.signature.as_str())
                .to_owned(),
            payload: webhook
                .map_or("mxhook", |webhook| webhook.payload.as_str())
                .to_owned(),
            signature_header: webhook
                .and_then(|webhook| webhook.signature_header.clone())
                .unwrap_or_else(|| DEFAULT_HMAC_HEADER.to_owned()),
            signature_format: webhook
                .map_or("sha256=hex", |webhook| webhook.signature_format.as_str())
                .to_owned(),
            verify_tls: webhook.is_none_or(|webhook| webhook.verify_tls),
            ordered: webhook.is_some_and(|webhook| webhook.ordered),
            events: checked_types(
                &webhook
                    .map(|webhook| webhook.events.clone())
                    .unwrap_or_default(),
            ),
            custom_headers: webhook
                .map(|webhook| {
                    webhook
                        .endpoint
                        .custom_headers
                        .iter()
                        .map(|(name, value)| format!("{name}: {value}\n"))
                        .collect()
                })
                .unwrap_or_default(),
            timeout_s: webhook
                .and_then(|webhook| webhook.endpoint.timeout_s)
                .map(|seconds| seconds.to_string())
                .unwrap_or_default(),
            max_retries: webhook
                .and_then(|webhook| webhook.endpoint.max_retries)
                .map(|retries| retries.to_string())
                .unwrap_or_default(),
        }
    }

    fn typed(form: &WebhookForm) -> Self {
        Self {
            url: form.url.clone(),
            enabled: form.enabled.is_some(),
            signature: form.signature.clone(),
            payload: form.payload.clone(),
            signature_header: form.signature_header.clone(),
            signature_format: form.signature_format.clone(),
            verify_tls: form.verify_tls.is_some(),
            ordered: form.ordered.is_some(),
            events: form.checked_events(),
            custom_headers: form.custom_headers.clone(),
            timeout_s: form.timeout_s.clone(),
            max_retries: form.max_retries.clone(),
        }
    }
}

/// What an agent without a public URL needs for this inbox: its event stream's path and an
/// MCP host's config for it (README "Use it from an MCP host"). The dashboard does not know the
/// address its users reach the gateway at, so the snippet names a placeholder for it.
fn agent_access(id: &str) -> serde_json::Value {
    let mcp = json!({"mcpServers": {format!("mxhook-{id}"): {
        "command": "mxhook",
        "args": ["mcp", "--api-url", "https://GATEWAY", "--api-key", format!("mxk_… (a key of inbox {id})")],
    }}});
    json!({
        "stream_path": format!("/v1/inboxes/{id}/events"),
        "mcp_snippet": serde_json::to_string_pretty(&mcp).unwrap_or_default(),
    })
}

/// The inbox page; after a refused form, with the reason next to that form and what was typed.
async fn detail_page(
    state: &UiState,
    auth: &Auth,
    id: &str,
    status: StatusCode,
    notice: Option<&str>,
    refusal: Refusal,
) -> Result<Response, Error> {
    let inbox = inboxes::visible_inbox(&state.http, &auth.caller, id).await?;
    let stats = state.http.db.endpoint_stats(Some(id)).await?;
    let providers = state.http.db.ingress_providers(id).await?;
    let health_charts = health_charts(state, id, &stats).await?;
    let webhook = refusal
        .webhook
        .unwrap_or_else(|| WebhookFields::stored(inbox.webhook.as_ref()));
    let rules_text = match refusal.rules_text {
        Some(text) => text,
        None => {
            let Json(rules) = notifications::get_notifications(
                State(Arc::clone(&state.http)),
                Extension(auth.caller.clone()),
                Path(id.to_owned()),
            )
            .await?;
            serde_json::to_string_pretty(&rules).map_err(|err| Error::Internal(err.to_string()))?
        }
    };
    let html = render(
        "inbox.html",
        json!({
            "base": auth.base(),
            "page": "inboxes",
            "inbox": inbox_view(&inbox, &stats, &providers),
            "endpoints": stats.iter().map(stats_view).collect::<Vec<_>>(),
            "health_charts": health_charts,
            "rules_text": rules_text,
            "webhook": webhook,
            "try_it": super::manage::try_it(&state.http, &inbox),
            "agent_access": agent_access(id),
            "signatures": SIGNATURES,
            "payloads": PAYLOADS,
            "signature_formats": SIGNATURE_FORMATS,
            "event_types": EVENT_TYPES,
            "hmac_scheme": HMAC_SCHEME,
            "notice": notice,
            "error": refusal.message,
            "error_at": refusal.section,
        }),
    )?;
    Ok((status, html).into_response())
}

/// The newest attempt latencies one inbox page reads for its percentiles: enough for every
/// attempt of a busy day of a few endpoints, and a bound on the page's work past that (the
/// percentiles then describe the newest attempts of the window).
const MAX_CHART_LATENCIES: i64 = 50_000;

/// The delivery-health chart of each endpoint that has ever had an attempt (one idle for the
/// last day shows an empty chart rather than vanishing), as SVG markup.
async fn health_charts(
    state: &UiState,
    id: &str,
    stats: &[EndpointStats],
) -> Result<Vec<String>, Error> {
    let now = crate::model::now_ms();
    // Whole hours, so a bar always means the same clock hour; the last is the current one.
    let start_ms = now
        - now.rem_euclid(chart::HOUR_MS)
        - (i64::try_from(chart::HOURS).unwrap_or(24) - 1) * chart::HOUR_MS;
    let health = state
        .http
        .db
        .delivery_health(id, start_ms, MAX_CHART_LATENCIES)
        .await?;
    Ok(stats
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let mine = |endpoint_ref: &str, channel| {
                endpoint_ref == endpoint.endpoint_ref && channel == endpoint.channel
            };
            let chart = chart::EndpointHealth::from_rows(
                format!("{} ({})", endpoint.endpoint_ref, endpoint.channel.as_str()),
                start_ms,
                health
                    .outcomes
                    .iter()
                    .filter(|row| mine(&row.endpoint_ref, row.channel))
                    .map(|row| (row.hour, row.outcome, row.attempts)),
                health
                    .latencies
                    .iter()
                    .filter(|row| mine(&row.endpoint_ref, row.channel))
                    .map(|row| (row.hour, row.latency_ms)),
            );
            chart::svg(&chart, &format!("health-{index}"))
        })
        .collect())
}

/// The webhook form. Every field is optional so that a tampered form gets the API's reason on
/// the page rather than a bare extractor rejection; unchecked boxes are simply absent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WebhookForm {
    url: String,
    enabled: Option<String>,
    /// The "re-enable" button of a webhook the gateway switched off.
    reenable: Option<String>,
    signature: String,
    payload: String,
    signature_header: String,
    signature_format: String,
    verify_tls: Option<String>,
    ordered: Option<String>,
    /// Set by the form that shows the event checkboxes, so a form without them (an older page)
    /// leaves `events` unchanged instead of unsubscribing from everything.
    events_shown: Option<String>,
    /// One checkbox per type of the catalogue, in its order; the value is the type.
    event_0: Option<String>,
    event_1: Option<String>,
    event_2: Option<String>,
    event_3: Option<String>,
    event_4: Option<String>,
    event_5: Option<String>,
    event_6: Option<String>,
    custom_headers: String,
    timeout_s: String,
    max_retries: String,
}

/// A number field: empty is `null` (the default); anything else goes as typed, a number or
/// the text the API's types then refuse by name.
fn number_field(text: &str) -> Value {
    let text = text.trim();
    if text.is_empty() {
        return Value::Null;
    }
    text.parse::<u64>()
        .map_or_else(|_| json!(text), |number| json!(number))
}

impl WebhookForm {
    /// The checked types of the catalogue; anything else a tampered form sends is dropped.
    fn checked_events(&self) -> Vec<&'static str> {
        let boxes = [
            &self.event_0,
            &self.event_1,
            &self.event_2,
            &self.event_3,
            &self.event_4,
            &self.event_5,
            &self.event_6,
        ];
        EVENT_TYPES
            .into_iter()
            .filter(|known| boxes.iter().any(|value| value.as_deref() == Some(*known)))
            .collect()
    }

    /// The `PUT /v1/inboxes/{id}/webhook` body: the form always holds every setting, so each is
    /// sent; the hmac-only ones only with that scheme, which leaves them unchanged otherwise.
    ///
    /// # Errors
    /// A `custom_headers` line that is not `Name: value`.
    fn api_body(&self) -> Result<Value, String> {
        let mut headers = serde_json::Map::new();
        for line in self
            .custom_headers
            .lines()
            .filter(|line| !line.trim().is_empty())
        {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("custom_headers: `{}` is not `Name: value`", line.trim()))?;
            headers.insert(name.trim().to_owned(), json!(value.trim()));
        }
        let mut body = json!({
            "url": self.url.trim(),
            "enabled": self.enabled.is_some() || self.reenable.is_some(),
            "verify_tls": self.verify_tls.is_some(),
            "ordered": self.ordered.is_some(),
            "custom_headers": headers,
            "timeout_s": number_field(&self.timeout_s),
            "max_retries": number_field(&self.max_retries),
        });
        if self.events_shown.is_some() {
            body["events"] = json!(subscription_of(&self.checked_events()));
        }
        if !self.signature.is_empty() {
            body["signature"] = json!(self.signature);
        }
        if !self.payload.is_empty() {
            body["payload"] = json!(self.payload);
        }
        if self.signature == HMAC_SCHEME {
            let header = self.signature_header.trim();
            body["signature_header"] = json!(if header.is_empty() {
                DEFAULT_HMAC_HEADER
            } else {
                header
            });
            if !self.signature_format.is_empty() {
                body["signature_format"] = json!(self.signature_format);
            }
        }
        Ok(body)
    }
}

/// The page that shows a new signing secret, once: it is not stored anywhere it can be read
/// back, and the response is not cached.
fn secret_page(auth: &Auth, id: &str, secret: &str) -> Result<Response, Error> {
    Ok(render(
        "secret.html",
        json!({ "base": auth.base(), "page": "inboxes", "inbox_id": id, "secret": secret }),
    )?
    .into_response())
}

/// Sets the webhook through the API's handler; a refusal goes back to the form with the reason.
async fn put_webhook(
    state: &UiState,
    auth: &Auth,
    id: &str,
    body: Value,
) -> Result<Result<Value, Error>, Error> {
    // A value the API's types refuse (an unknown scheme) is a form error like any other.
    let body: webhook::PutWebhook = match serde_json::from_value(body) {
        Ok(body) => body,
        Err(err) => return Ok(Err(Error::BadRequest(err.to_string()))),
    };
    match webhook::put_webhook(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id.to_owned()),
        Ok(Json(body)),
    )
    .await
    {
        Ok(Json(view)) => Ok(Ok(view)),
        Err(err) => match Error::from(err) {
            refused @ Error::BadRequest(_) => Ok(Err(refused)),
            other => Err(other),
        },
    }
}

pub(super) async fn save_webhook(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<WebhookForm>,
) -> Result<Response, Error> {
    let answer = match form.api_body() {
        Ok(body) => put_webhook(&state, &auth, &id, body).await?,
        Err(reason) => Err(Error::BadRequest(reason)),
    };
    match answer {
        Ok(view) => match view.get("signing_secret").and_then(Value::as_str) {
            // The first webhook of an inbox gets a secret: this is the one time to show it.
            Some(secret) => secret_page(&auth, &id, secret),
            None => Ok(Redirect::to(&format!("/ui/inboxes/{id}?done=webhook")).into_response()),
        },
        Err(refused) => {
            detail_page(
                &state,
                &auth,
                &id,
                StatusCode::BAD_REQUEST,
                None,
                Refusal {
                    section: "webhook",
                    message: Some(refused.to_string()),
                    webhook: Some(WebhookFields::typed(&form)),
                    ..Refusal::default()
                },
            )
            .await
        }
    }
}

pub(super) async fn rotate_secret(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let inbox = inboxes::visible_inbox(&state.http, &auth.caller, &id).await?;
    let webhook = inbox
        .webhook
        .ok_or_else(|| Error::BadRequest("set a webhook URL first".to_owned()))?;
    let body = json!({
        "url": webhook.url,
        "enabled": webhook.enabled,
        "rotate_secret": true,
    });
    let view = put_webhook(&state, &auth, &id, body).await??;
    let secret = view
        .get("signing_secret")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Internal("rotation returned no secret".to_owned()))?;
    secret_page(&auth, &id, secret)
}

#[derive(Debug, Deserialize)]
pub(super) struct RulesForm {
    rules: String,
}

pub(super) async fn save_rules(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<RulesForm>,
) -> Result<Response, Error> {
    inboxes::visible_inbox(&state.http, &auth.caller, &id).await?;
    let text = form.rules.trim();
    let text = if text.is_empty() { "[]" } else { text };
    let refused = match serde_json::from_str::<Value>(text)
        .map(|rules| json!({ "rules": rules }))
        .and_then(serde_json::from_value::<notifications::Notifications>)
    {
        Err(err) => Some(format!("rules: {err}")),
        Ok(rules) => match notifications::put_notifications(
            State(Arc::clone(&state.http)),
            Extension(auth.caller.clone()),
            Path(id.clone()),
            Ok(Json(notifications::NotificationsBody::Wrapped(rules))),
        )
        .await
        {
            Ok(_) => None,
            Err(err) => match Error::from(err) {
                Error::BadRequest(message) => Some(message),
                other => return Err(other),
            },
        },
    };
    match refused {
        None => Ok(Redirect::to(&format!("/ui/inboxes/{id}?done=rules")).into_response()),
        Some(message) => {
            detail_page(
                &state,
                &auth,
                &id,
                StatusCode::BAD_REQUEST,
                None,
                Refusal {
                    section: "rules",
                    message: Some(message),
                    rules_text: Some(form.rules),
                    ..Refusal::default()
                },
            )
            .await
        }
    }
}

pub(super) async fn test_event(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    match inboxes::send_test_event(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id.clone()),
    )
    .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/ui/inboxes/{id}?done=test-event")).into_response()),
        Err(err) => match Error::from(err) {
            Error::BadRequest(message) => {
                detail_page(
                    &state,
                    &auth,
                    &id,
                    StatusCode::CONFLICT,
                    None,
                    Refusal {
                        section: "page",
                        message: Some(message),
                        ..Refusal::default()
                    },
                )
                .await
            }
            other => Err(other),
        },
    }
}
