//! Inbox lifecycle in the dashboard: create an inbox from the Inboxes page, edit its id-bound
//! settings (name, status, addresses, sender policy) and delete it. Each form calls the JSON
//! API's own handler (`POST /v1/inboxes`, `PATCH` and `DELETE /v1/inboxes/{id}`), so the
//! dashboard refuses and accepts exactly what the API does; the webhook is then set on the inbox
//! page, through the API's webhook handler as before.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Auth, Error, UiState, render};
use crate::http::api::inboxes;

/// The fields of the create and edit forms. Lists are typed one per line (commas also split);
/// a checkbox is present when ticked.
#[derive(Debug, Deserialize)]
pub(super) struct InboxForm {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    addresses: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    spf_pass_required: Option<String>,
    #[serde(default)]
    dkim_pass_required: Option<String>,
    #[serde(default)]
    dmarc_pass_required: Option<String>,
    #[serde(default)]
    allow_senders: String,
    #[serde(default)]
    block_senders: String,
    #[serde(default)]
    policy_action: Option<String>,
}

fn list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

impl InboxForm {
    /// The API's JSON body: what both `POST /v1/inboxes` and `PATCH /v1/inboxes/{id}` read.
    fn api_body(&self) -> Value {
        let name = self.name.trim();
        let mut body = json!({
            "name": (!name.is_empty()).then_some(name),
            "addresses": list(&self.addresses),
            "spf_pass_required": self.spf_pass_required.is_some(),
            "dkim_pass_required": self.dkim_pass_required.is_some(),
            "dmarc_pass_required": self.dmarc_pass_required.is_some(),
            "allow_senders": list(&self.allow_senders),
            "block_senders": list(&self.block_senders),
        });
        if let Some(status) = self.status.as_deref().filter(|s| !s.is_empty()) {
            body["status"] = json!(status);
        }
        if let Some(action) = self.policy_action.as_deref().filter(|s| !s.is_empty()) {
            body["policy_action"] = json!(action);
        }
        body
    }
}

/// A value the API's types refuse (an unknown status) is a form error like any other.
fn typed<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Error> {
    serde_json::from_value(body).map_err(|err| Error::BadRequest(err.to_string()))
}

pub(super) async fn create(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Form(form): Form<InboxForm>,
) -> Result<Response, Error> {
    let mut body = form.api_body();
    if let Some(id) = form
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        body["id"] = json!(id);
    }
    let (_, Json(view)) = inboxes::create_inbox(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Ok(Json(typed(body)?)),
    )
    .await?;
    let view = serde_json::to_value(view).map_err(|err| Error::Internal(err.to_string()))?;
    let id = view["id"].as_str().unwrap_or_default();
    Ok(Redirect::to(&format!("/ui/inboxes/{}", segment(id))).into_response())
}

pub(super) async fn settings(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let Json(view) = inboxes::get_inbox(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id),
    )
    .await?;
    let view = serde_json::to_value(view).map_err(|err| Error::Internal(err.to_string()))?;
    Ok(render(
        "inbox_settings.html",
        json!({ "base": auth.base(), "page": "inboxes", "inbox": view }),
    )?
    .into_response())
}

pub(super) async fn save_settings(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<InboxForm>,
) -> Result<Response, Error> {
    let Json(_saved) = inboxes::update_inbox(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id.clone()),
        Ok(Json(typed(form.api_body())?)),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/inboxes/{}", segment(&id))).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct DeleteForm {
    /// The inbox id typed again: deleting takes its messages with it.
    #[serde(default)]
    confirm: String,
}

pub(super) async fn delete(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, Error> {
    if form.confirm.trim() != id {
        return Err(Error::BadRequest(format!(
            "type the inbox id `{id}` to confirm the deletion"
        )));
    }
    inboxes::delete_inbox(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id),
    )
    .await?;
    Ok(Redirect::to("/ui").into_response())
}

/// An inbox id as a path segment (ids are a-z A-Z 0-9 . _ -, which need no escaping; anything
/// else is escaped rather than trusted).
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_lines_commas_and_spaces() {
        assert_eq!(
            list("a@x.test\r\nb@x.test, c@x.test\n\n"),
            ["a@x.test", "b@x.test", "c@x.test"]
        );
    }
}
