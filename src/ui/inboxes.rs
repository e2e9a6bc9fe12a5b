//! Inbox pages: the list with its "Configured" badges and endpoint statistics, and one inbox with
//! its webhook settings, secret rotation (the new secret shown once), notification rules editor
//! and test event. Every action calls the JSON API's own handler, so both behave alike.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Auth, Error, UiState, render, when};
use crate::api::inboxes as api;
use crate::db::{EndpointStats, InboxRow};
use crate::ingress::provider::Provider;

const SIGNATURES: &[&str] = &["agentmail", "standard", "botmailroom", "hmac-sha256"];
const PAYLOADS: &[&str] = &["mxhook", "botmailroom"];

/// The statistics of one endpoint as the pages show them.
fn stats_view(stats: &EndpointStats) -> Value {
    json!({
        "endpoint": stats.endpoint_ref,
        "channel": stats.channel,
        "attempts": stats.attempts,
        "delivered": stats.delivered,
        "success_rate": stats.success_rate.map(|rate| format!("{:.0}%", rate * 100.0)),
        "last_triggered": stats.last_triggered_ms.map(when),
        "last_status": match (stats.last_status_code, stats.last_outcome.as_deref()) {
            (Some(code), _) => Some(code.to_string()),
            (None, outcome) => outcome.map(str::to_owned),
        },
        "last_ok": stats.last_outcome.as_deref() == Some("delivered"),
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
        "providers": Provider::ALL.iter().map(|provider| json!({
            "name": provider.as_str(),
            "configured": providers.iter().any(|name| name == provider.as_str()),
        })).collect::<Vec<_>>(),
        "stats": inbox_stats,
    })
}

pub(super) async fn list(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, Error> {
    let db = &state.api.db;
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
        None,
        None,
    )
    .await
}

/// The inbox page; after a refused form, with the reason and what was typed.
async fn detail_page(
    state: &UiState,
    auth: &Auth,
    id: &str,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
    rules_text: Option<String>,
) -> Result<Response, Error> {
    let inbox = api::visible_inbox(&state.api, &auth.caller, id).await?;
    let stats = state.api.db.endpoint_stats(Some(id)).await?;
    let providers = state.api.db.ingress_providers(id).await?;
    let rules_text = match rules_text {
        Some(text) => text,
        None => {
            let Json(rules) = api::get_notifications(
                State(Arc::clone(&state.api)),
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
            "rules_text": rules_text,
            "signatures": SIGNATURES,
            "payloads": PAYLOADS,
            "notice": notice,
            "error": error,
        }),
    )?;
    Ok((status, html).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct WebhookForm {
    url: String,
    #[serde(default)]
    enabled: Option<String>,
    signature: String,
    payload: String,
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
    let body: api::PutWebhook =
        serde_json::from_value(body).map_err(|err| Error::BadRequest(err.to_string()))?;
    match api::put_webhook(
        State(Arc::clone(&state.api)),
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
    let body = json!({
        "url": form.url.trim(),
        "enabled": form.enabled.is_some(),
        "signature": form.signature,
        "payload": form.payload,
    });
    match put_webhook(&state, &auth, &id, body).await? {
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
                Some(refused.to_string()),
                None,
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
    let inbox = api::visible_inbox(&state.api, &auth.caller, &id).await?;
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
    api::visible_inbox(&state.api, &auth.caller, &id).await?;
    let text = form.rules.trim();
    let text = if text.is_empty() { "[]" } else { text };
    let refused = match serde_json::from_str::<Value>(text)
        .map(|rules| json!({ "rules": rules }))
        .and_then(serde_json::from_value::<api::Notifications>)
    {
        Err(err) => Some(format!("rules: {err}")),
        Ok(rules) => match api::put_notifications(
            State(Arc::clone(&state.api)),
            Extension(auth.caller.clone()),
            Path(id.clone()),
            Ok(Json(api::NotificationsBody::Wrapped(rules))),
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
                Some(message),
                Some(form.rules),
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
    match api::send_test_event(
        State(Arc::clone(&state.api)),
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
                    Some(message),
                    None,
                )
                .await
            }
            other => Err(other),
        },
    }
}
