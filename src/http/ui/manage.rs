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

/// The environment variable the verification snippets read the signing secret from: the page
/// never shows the secret itself.
const SECRET_VAR: &str = "MXHOOK_WEBHOOK_SECRET";

/// The inbox page's "Try it" section: the commands that send this inbox a test mail (to its
/// first address, at this node's SMTP listener) and the code that verifies its webhook's
/// signature in Python and Node, written for its scheme, header and format.
pub(super) fn try_it(state: &crate::http::HttpState, inbox: &crate::db::InboxRow) -> Value {
    let address = inbox.addresses.first();
    let send = match (state.smtp_addr, address) {
        (Some(smtp), Some(address)) => json!({
            "address": address,
            "swaks": crate::first_run::swaks_test_mail(smtp, address),
            "python": crate::first_run::python_test_mail(smtp, address),
        }),
        _ => Value::Null,
    };
    let verify = inbox
        .webhook
        .as_ref()
        .filter(|webhook| webhook.secret.is_some())
        .map(|webhook| {
            let header = webhook
                .signature_header
                .clone()
                .unwrap_or_else(|| crate::model::DEFAULT_HMAC_HEADER.to_owned())
                .to_ascii_lowercase();
            let (python, node) =
                verify_snippets(webhook.signature, &header, webhook.signature_format);
            json!({
                "scheme": webhook.signature.as_str(),
                "secret_var": SECRET_VAR,
                "python": python,
                "node": node,
            })
        });
    json!({ "send": send, "verify": verify })
}

/// A Python and a Node function `verify(body, headers)` for a scheme: `body` the exact request
/// bytes, `headers` with lower-case names (Node's `req.headers`; Flask's case-insensitive
/// `request.headers` works too). Each mirrors [`crate::signature::sign`].
fn verify_snippets(
    scheme: crate::model::SignatureScheme,
    header: &str,
    format: crate::model::SignatureFormat,
) -> (String, String) {
    use crate::model::{SignatureFormat, SignatureScheme};
    let var = SECRET_VAR;
    match scheme {
        SignatureScheme::Agentmail => (
            format!(
                "import hashlib, hmac, os\n\n\
                 def verify(body: bytes, headers) -> bool:\n    \
                 secret = os.environ[\"{var}\"].encode()\n    \
                 signed = headers[\"x-agentmail-timestamp\"].encode() + b\".\" + body\n    \
                 expected = \"v1=\" + hmac.new(secret, signed, hashlib.sha256).hexdigest()\n    \
                 return any(hmac.compare_digest(expected, candidate)\n               \
                 for candidate in headers[\"x-agentmail-signature\"].split(\" \"))\n"
            ),
            format!(
                "const crypto = require(\"node:crypto\");\n\n\
                 function verify(body, headers) {{\n  \
                 const signed = Buffer.concat([Buffer.from(headers[\"x-agentmail-timestamp\"] + \".\"), body]);\n  \
                 const expected = Buffer.from(\"v1=\" + crypto.createHmac(\"sha256\", process.env.{var}).update(signed).digest(\"hex\"));\n  \
                 return headers[\"x-agentmail-signature\"].split(\" \").some((candidate) => {{\n    \
                 const given = Buffer.from(candidate);\n    \
                 return given.length === expected.length && crypto.timingSafeEqual(given, expected);\n  \
                 }});\n\
                 }}\n"
            ),
        ),
        SignatureScheme::Standard => (
            format!(
                "import base64, hashlib, hmac, os\n\n\
                 def verify(body: bytes, headers) -> bool:\n    \
                 key = base64.b64decode(os.environ[\"{var}\"].removeprefix(\"whsec_\"))\n    \
                 signed = (headers[\"webhook-id\"] + \".\" + headers[\"webhook-timestamp\"] + \".\").encode() + body\n    \
                 expected = \"v1,\" + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()\n    \
                 return any(hmac.compare_digest(expected, candidate)\n               \
                 for candidate in headers[\"webhook-signature\"].split(\" \"))\n"
            ),
            format!(
                "const crypto = require(\"node:crypto\");\n\n\
                 function verify(body, headers) {{\n  \
                 const key = Buffer.from(process.env.{var}.replace(/^whsec_/, \"\"), \"base64\");\n  \
                 const signed = Buffer.concat([Buffer.from(headers[\"webhook-id\"] + \".\" + headers[\"webhook-timestamp\"] + \".\"), body]);\n  \
                 const expected = Buffer.from(\"v1,\" + crypto.createHmac(\"sha256\", key).update(signed).digest(\"base64\"));\n  \
                 return headers[\"webhook-signature\"].split(\" \").some((candidate) => {{\n    \
                 const given = Buffer.from(candidate);\n    \
                 return given.length === expected.length && crypto.timingSafeEqual(given, expected);\n  \
                 }});\n\
                 }}\n"
            ),
        ),
        SignatureScheme::Botmailroom | SignatureScheme::HmacSha256 => {
            let header = if scheme == SignatureScheme::Botmailroom {
                "x-signature"
            } else {
                header
            };
            let prefix =
                if scheme == SignatureScheme::HmacSha256 && format == SignatureFormat::Sha256Hex {
                    "sha256="
                } else {
                    ""
                };
            (
                format!(
                    "import hashlib, hmac, os\n\n\
                     def verify(body: bytes, headers) -> bool:\n    \
                     secret = os.environ[\"{var}\"].encode()\n    \
                     expected = \"{prefix}\" + hmac.new(secret, body, hashlib.sha256).hexdigest()\n    \
                     return hmac.compare_digest(expected, headers[\"{header}\"])\n"
                ),
                format!(
                    "const crypto = require(\"node:crypto\");\n\n\
                     function verify(body, headers) {{\n  \
                     const expected = Buffer.from(\"{prefix}\" + crypto.createHmac(\"sha256\", process.env.{var}).update(body).digest(\"hex\"));\n  \
                     const given = Buffer.from(headers[\"{header}\"] || \"\");\n  \
                     return given.length === expected.length && crypto.timingSafeEqual(given, expected);\n\
                     }}\n"
                ),
            )
        }
    }
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
