//! Notification rules: `GET`/`PUT /v1/inboxes/{id}/notifications`. The API takes, stores and
//! answers [`Rule`], the type routing and the dispatcher read, checked by its one validation.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::inboxes::visible_inbox;
use crate::http::{ApiError, Caller, ErrorBody, HttpState};
use crate::model::{Rule, new_id};

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
        let rules = match &value {
            Value::Array(rules) => Some(rules),
            Value::Object(body) => body.get("rules").and_then(Value::as_array),
            _ => None,
        };
        if let Some(rules) = rules {
            objects_where_expected(rules).map_err(D::Error::custom)?;
        }
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

/// Serde reads a struct from a JSON array too (its fields in order), so `"channels": [null]`
/// would be taken as no channels. The document says objects; anything else is refused here,
/// with the path, before serde sees it.
fn objects_where_expected(rules: &[Value]) -> Result<(), String> {
    let object_or_null = |value: Option<&Value>, path: String| match value {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(_) => Err(format!("{path}: expected an object")),
    };
    for (idx, rule) in rules.iter().enumerate() {
        let Value::Object(rule) = rule else {
            return Err(format!("rules[{idx}]: expected an object"));
        };
        object_or_null(rule.get("filters"), format!("rules[{idx}].filters"))?;
        object_or_null(rule.get("channels"), format!("rules[{idx}].channels"))?;
        if let Some(Value::Object(channels)) = rule.get("channels") {
            for channel in ["webhook", "email"] {
                object_or_null(
                    channels.get(channel),
                    format!("rules[{idx}].channels.{channel}"),
                )?;
            }
        }
    }
    Ok(())
}

fn validate_rules(state: &HttpState, rules: &mut [Rule]) -> Result<(), ApiError> {
    for (idx, rule) in rules.iter_mut().enumerate() {
        if rule.id.is_empty() {
            rule.id = new_id("rule");
        }
        // An unknown event type is a 422, as the webhook's `events` (SPEC "Event types and
        // subscriptions"); `validate` checks it too, for the dashboard.
        crate::model::Subscription::parse(&rule.filters.event_types).map_err(|message| {
            ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("rules[{idx}].filters.event_types: {message}"),
            }
        })?;
        if let Some(message) = rule.filters.subject_pattern_error() {
            return Err(ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("rules[{idx}].filters.subject_matches: {message}"),
            });
        }
        rule.validate(state.delivery.allow_http)
            .map_err(|message| ApiError::BadRequest(format!("rules[{idx}].{message}")))?;
        if let Some(webhook) = rule.channels.webhook.as_mut()
            && webhook.enabled
        {
            webhook.disabled_reason = None;
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
    // Stored rules were written as this type (the dispatcher's auto-disable sets only fields
    // it has), so what is sent is what is documented.
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

#[cfg(test)]
mod tests {
    use super::NotificationsBody;

    #[test]
    fn arrays_where_the_document_says_objects_are_refused_with_their_path() {
        for (body, path) in [
            (
                r#"[{"name": "a", "channels": [null, null]}]"#,
                "rules[0].channels",
            ),
            (
                r#"{"rules": [{"name": "a", "filters": []}]}"#,
                "rules[0].filters",
            ),
            (
                r#"[{"name": "a"}, {"name": "b", "channels": {"webhook": ["https://x"]}}]"#,
                "rules[1].channels.webhook",
            ),
            (r#"[["a", "b"]]"#, "rules[0]"),
        ] {
            let err = serde_json::from_str::<NotificationsBody>(body)
                .expect_err("an array taken for an object");
            assert!(err.to_string().starts_with(path), "{body}: {err}");
        }
        let taken: NotificationsBody =
            serde_json::from_str(r#"[{"name": "a", "channels": {}, "filters": {}}]"#)
                .expect("objects are taken");
        assert!(matches!(taken, NotificationsBody::List(rules) if rules.len() == 1));
    }
}
