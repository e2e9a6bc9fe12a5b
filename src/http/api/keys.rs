//! Per-inbox API keys: `POST`/`GET /v1/inboxes/{id}/keys` and `DELETE
//! /v1/inboxes/{id}/keys/{key_id}` (admin). A key is shown once, when created; the database holds
//! only its SHA-256, which the Bearer check looks keys up by.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

use super::inboxes::visible_inbox;
use crate::db::ApiKeyRow;
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::{new_id, now_ms, rfc3339};

/// Per-inbox keys start with this, so the middleware knows to look one up.
pub(crate) const INBOX_KEY_PREFIX: &str = "mxk_";

/// The SHA-256 (hex) a per-inbox key is stored and looked up as.
pub(crate) fn hash_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
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
pub(crate) async fn create_key(
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
pub(crate) async fn list_keys(
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
pub(crate) async fn delete_key(
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
