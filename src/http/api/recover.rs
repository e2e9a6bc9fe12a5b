//! `POST /v1/inboxes/{id}/deliveries/recover`: requeues an inbox's finished deliveries of one
//! window of acceptance times (Svix's recover), the dead ones or every finished one, of one
//! endpoint or all. One call requeues at most [`MAX_RECOVER`]; a wider match is refused whole,
//! so a caller never wonders which part of its window went back in the queue.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::inboxes::visible_inbox;
use crate::db::{Recover, Recovered};
use crate::http::{ApiError, Caller, ErrorBody, HttpState};

/// The most deliveries one recover call requeues (stated as 1000 in the OpenAPI description
/// and the README). Past it the call is refused and nothing is requeued: each requeued delivery is a webhook request at once, and an unbounded window could
/// flood the receiver that just came back.
pub(crate) const MAX_RECOVER: usize = 1000;

/// What to requeue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoverRequest {
    /// RFC 3339: deliveries accepted at or after this time.
    pub(crate) since: String,
    /// RFC 3339: deliveries accepted before this time; no upper bound when absent.
    #[serde(default)]
    pub(crate) until: Option<String>,
    /// `dead` (the default) or `any`: dead and delivered ones. Pending ones are never touched.
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// `inbox` (the inbox webhook) or `rule:<id>`: only this endpoint's deliveries.
    #[serde(default)]
    pub(crate) endpoint: Option<String>,
}

/// How many deliveries went back in the queue.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RecoverResult {
    pub(crate) requeued: usize,
}

#[utoipa::path(
    post,
    path = "/v1/inboxes/{id}/deliveries/recover",
    tag = "deliveries",
    summary = "Queue an inbox's dead (or every finished) delivery of a time window again",
    description = "Requeues the inbox's deliveries accepted in [since, until), dead ones or with \
                   status `any` also delivered ones (never pending ones), of one endpoint when \
                   `endpoint` is given, each with a fresh retry budget and in acceptance order \
                   (an ordered endpoint still gets one thread's events in order). At most 1000 \
                   deliveries per call: when more match, the answer is 400 `too_many_deliveries` \
                   and nothing is requeued; narrow the window.",
    params(("id" = String, Path, description = "Inbox id")),
    request_body = RecoverRequest,
    responses(
        (status = 202, description = "How many were queued", body = RecoverResult),
        (status = 400, description = "Invalid field, or more than 1000 deliveries match (`too_many_deliveries`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types, missing or unknown fields", body = ErrorBody),
    ),
)]
pub(crate) async fn recover(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<RecoverRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RecoverResult>), ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let Json(body) = body?;
    let recover = body.checked(id)?;
    match state.db.recover(&recover, MAX_RECOVER).await? {
        Recovered::TooMany => Err(ApiError::TooMany(format!(
            "more than {MAX_RECOVER} deliveries match; nothing was requeued: narrow the window \
             (since, until) or choose an endpoint"
        ))),
        Recovered::Requeued(requeued) => {
            state.dispatcher_wakeup.notify_one();
            Ok((StatusCode::ACCEPTED, Json(RecoverResult { requeued })))
        }
    }
}

impl RecoverRequest {
    /// The request as the database reads it; the error names the field.
    fn checked(self, inbox_id: String) -> Result<Recover, ApiError> {
        let since_ms = instant("since", &self.since)?;
        let until_ms = self
            .until
            .as_deref()
            .map(|until| instant("until", until))
            .transpose()?;
        if until_ms.is_some_and(|until| until <= since_ms) {
            return Err(ApiError::BadRequest(
                "until: must be after since".to_owned(),
            ));
        }
        let include_delivered = match self.status.as_deref() {
            None | Some("dead") => false,
            Some("any") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "status: must be dead or any; got `{other}`"
                )));
            }
        };
        let endpoint_ref = self
            .endpoint
            .map(|endpoint| {
                if is_endpoint_ref(&endpoint) {
                    Ok(endpoint)
                } else {
                    Err(ApiError::BadRequest(format!(
                        "endpoint: must be `inbox` or `rule:<id>`; got `{endpoint}`"
                    )))
                }
            })
            .transpose()?;
        Ok(Recover {
            inbox_id,
            since_ms,
            until_ms,
            include_delivered,
            endpoint_ref,
        })
    }
}

/// An RFC 3339 time in ms since the epoch; the error names the field.
fn instant(field: &str, value: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|time| time.timestamp_millis())
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{field}: must be an RFC 3339 time such as 2026-01-31T09:00:00Z; got `{value}`"
            ))
        })
}

/// `inbox`, or `rule:` and a rule id as rules take them (1 to 64 characters, no blanks).
fn is_endpoint_ref(endpoint: &str) -> bool {
    endpoint == "inbox"
        || endpoint.strip_prefix("rule:").is_some_and(|rule| {
            !rule.is_empty()
                && rule.len() <= 64
                && !rule.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(since: &str, until: Option<&str>) -> RecoverRequest {
        RecoverRequest {
            since: since.to_owned(),
            until: until.map(str::to_owned),
            status: None,
            endpoint: None,
        }
    }

    fn refusal(request: RecoverRequest) -> String {
        match request.checked("agent".to_owned()) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_window_reads_as_ms_and_defaults_to_dead_of_every_endpoint() {
        let recover = request("2026-01-01T00:00:00Z", Some("2026-01-01T02:00:00+01:00"))
            .checked("agent".to_owned())
            .map_err(|err| err.to_string())
            .expect("valid");
        assert_eq!(recover.since_ms, 1_767_225_600_000);
        // Written with another offset: an hour after since.
        assert_eq!(recover.until_ms, Some(1_767_229_200_000));
        assert!(!recover.include_delivered);
        assert_eq!(recover.endpoint_ref, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(refusal(request("yesterday", None)).starts_with("since:"));
        assert!(refusal(request("2026-01-01T00:00:00Z", Some("x"))).starts_with("until:"));
        assert!(
            refusal(request(
                "2026-01-02T00:00:00Z",
                Some("2026-01-01T00:00:00Z")
            ))
            .starts_with("until:")
        );
        // The same instant, written with another offset, is not after since.
        assert!(
            refusal(request(
                "2026-01-01T00:00:00Z",
                Some("2026-01-01T01:00:00+01:00")
            ))
            .starts_with("until:")
        );
        let mut bad_status = request("2026-01-01T00:00:00Z", None);
        bad_status.status = Some("delivered".to_owned());
        assert!(refusal(bad_status).starts_with("status:"));
        for endpoint in ["rule:", "webhook", "rule:a b", "Inbox"] {
            let mut bad_endpoint = request("2026-01-01T00:00:00Z", None);
            bad_endpoint.endpoint = Some(endpoint.to_owned());
            assert!(refusal(bad_endpoint).starts_with("endpoint:"), "{endpoint}");
        }
    }

    #[test]
    fn the_documented_bound_is_the_enforced_one() {
        // The OpenAPI description and the README state the bound as a number.
        assert_eq!(MAX_RECOVER, 1000);
    }

    #[test]
    fn endpoint_refs_are_the_inbox_or_a_rule() {
        assert!(is_endpoint_ref("inbox"));
        assert!(is_endpoint_ref("rule:vip-alerts"));
        assert!(!is_endpoint_ref(&format!("rule:{}", "x".repeat(65))));
    }
}
