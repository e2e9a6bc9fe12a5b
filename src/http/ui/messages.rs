//! Message pages: the list (newest first, filtered by flag, trust tier and webhook status, with a
//! rows fragment the page polls for new mail), one message with its prompt, thread, verdicts in
//! words, attachments and delivery timeline, and the dead-letter queue with resend and recover (a
//! window of an inbox's deliveries requeued). Both call the JSON API's own handlers.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Auth, Error, UiState, explain, render, when, when_text};
use crate::db::MessageListing;
use crate::event::{Event, MailEvent, TrustTier};
use crate::http::ApiError;
use crate::http::api::deliveries::{DeliveryView, attempt_views};
use crate::model::DeliveryStatus;

/// Messages a page shows unless `per_page` says otherwise, and the most it may ask for.
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 200;
/// The flag and tier filters read the stored event, so a page is found by reading messages in
/// batches; past this many read, the page stops short and its "older" link goes on from there,
/// which bounds the work a rare filter costs one request.
const SCAN_BATCH: i64 = 200;
const SCAN_BUDGET: usize = 2_000;
/// The rows fragment's link to the next older page; empty when there is none.
const OLDER_HEADER: &str = "x-older-url";

const FLAGS: &[(&str, &str)] = &[
    ("verified", "Sender verified"),
    ("unverified", "Sender not verified"),
    ("duplicate", "Duplicate"),
    ("rate_limited", "Rate limited"),
    ("quarantined", "Quarantined"),
];
const TIERS: &[&str] = &["trusted", "verified", "unverified", "suspicious"];
const STATUSES: &[&str] = &["pending", "delivered", "dead", "none"];

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    inbox: Option<String>,
    #[serde(default)]
    flag: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    status: Option<String>,
    /// Paging cursors: message ids.
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    per_page: Option<String>,
}

impl ListQuery {
    /// Empty form fields mean "any".
    fn normalized(self) -> Self {
        let keep = |value: Option<String>| value.filter(|value| !value.is_empty());
        Self {
            inbox: keep(self.inbox),
            flag: keep(self.flag),
            tier: keep(self.tier),
            status: keep(self.status),
            before: keep(self.before),
            after: keep(self.after),
            per_page: keep(self.per_page),
        }
    }

    /// Page size; a value that is not a number is the default rather than an error page.
    fn per_page(&self) -> usize {
        self.per_page
            .as_deref()
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(PER_PAGE)
            .clamp(1, MAX_PER_PAGE)
    }

    /// The filters (and page size) as a query string, without the cursor: what every link of
    /// the list keeps.
    fn query_string(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("inbox", &self.inbox),
            ("flag", &self.flag),
            ("tier", &self.tier),
            ("status", &self.status),
            ("per_page", &self.per_page),
        ] {
            if let Some(value) = value {
                out.append_pair(key, value);
            }
        }
        out.finish()
    }

    /// This list's URL at a cursor (`before` or `after` a message id), or its first page.
    fn url(&self, path: &str, cursor: Option<(&str, &str)>) -> String {
        let mut query = self.query_string();
        if let Some((key, id)) = cursor {
            let pair = url::form_urlencoded::Serializer::new(String::new())
                .append_pair(key, id)
                .finish();
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&pair);
        }
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        }
    }
}

/// The flags of a stored event, read without the rest of it (a list page reads hundreds of
/// events). A calendar event, or one that does not read, has none.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Listed {
    sender_verified: bool,
    is_duplicate: bool,
    rate_limited: bool,
    quarantined: bool,
    peer_trust_tier: Option<TrustTier>,
}

impl Listed {
    fn read(stored: &str) -> Self {
        serde_json::from_str(stored).unwrap_or_default()
    }

    fn of(event: &MailEvent) -> Self {
        Self {
            sender_verified: event.sender_verified,
            is_duplicate: event.is_duplicate,
            rate_limited: event.rate_limited,
            quarantined: event.quarantined.unwrap_or(false),
            peer_trust_tier: Some(event.peer_trust_tier),
        }
    }

    /// The flags as short labels.
    fn labels(&self) -> Vec<&'static str> {
        [
            (self.sender_verified, "verified"),
            (self.is_duplicate, "duplicate"),
            (self.rate_limited, "rate limited"),
            (self.quarantined, "quarantined"),
        ]
        .into_iter()
        .filter_map(|(set, label)| set.then_some(label))
        .collect()
    }
}

fn matches(query: &ListQuery, message: &MessageListing, flags: &Listed) -> bool {
    let flag_ok = match query.flag.as_deref() {
        None => true,
        Some("verified") => flags.sender_verified,
        Some("unverified") => !flags.sender_verified,
        Some("duplicate") => flags.is_duplicate,
        Some("rate_limited") => flags.rate_limited,
        Some("quarantined") => flags.quarantined,
        Some(_) => false,
    };
    let tier_ok = query
        .tier
        .as_deref()
        .is_none_or(|tier| flags.peer_trust_tier.map(TrustTier::as_str) == Some(tier));
    let status_ok = match query.status.as_deref() {
        None => true,
        Some("none") => message.delivery_status.is_none(),
        Some(status) => message.delivery_status.as_deref() == Some(status),
    };
    flag_ok && tier_ok && status_ok
}

fn row_view(message: &MessageListing, flags: &Listed) -> Value {
    json!({
        "id": message.id,
        "inbox_id": message.inbox_id,
        "sender": message.sender,
        "subject": message.subject,
        "received": when(message.received_at),
        "tier": flags.peer_trust_tier.map(TrustTier::as_str),
        "flags": flags.labels(),
        "delivery_id": message.delivery_id,
        "delivery_status": message.delivery_status,
        "delivery_code": message.delivery_status_code,
    })
}

/// One page of the list: its rows, newest first, and the links to the pages on either side.
struct MessagePage {
    rows: Vec<Value>,
    older: Option<String>,
    newer: Option<String>,
}

/// What a scan from a cursor found.
struct Scan {
    /// Matching messages in scan order.
    found: Vec<(MessageListing, Listed)>,
    /// Every message past the cursor was read.
    exhausted: bool,
    /// The last message read, when the scan budget ran out before `want` matched.
    stopped_at: Option<String>,
}

/// Reads messages from a cursor (`after` goes forward in time, otherwise back) until `want`
/// match the filters, the messages run out, or the budget is spent.
async fn scan(
    state: &UiState,
    only: Option<&str>,
    query: &ListQuery,
    before: Option<&str>,
    after: Option<&str>,
    want: usize,
) -> Result<Scan, Error> {
    let forward = after.is_some();
    let mut cursor = before.or(after).map(str::to_owned);
    let mut found = Vec::new();
    let mut read = 0;
    loop {
        let (before, after) = if forward {
            (None, cursor.as_deref())
        } else {
            (cursor.as_deref(), None)
        };
        let batch = state
            .http
            .db
            .recent_messages(only, before, after, SCAN_BATCH)
            .await?;
        let exhausted = i64::try_from(batch.len()).map_or(true, |len| len < SCAN_BATCH);
        for message in batch {
            read += 1;
            cursor = Some(message.id.clone());
            // A stored event that is not JSON still lists, without flags.
            let flags = Listed::read(&message.event_json);
            if matches(query, &message, &flags) {
                found.push((message, flags));
                if found.len() == want {
                    return Ok(Scan {
                        found,
                        exhausted: false,
                        stopped_at: None,
                    });
                }
            }
        }
        if exhausted {
            return Ok(Scan {
                found,
                exhausted: true,
                stopped_at: None,
            });
        }
        if read >= SCAN_BUDGET {
            return Ok(Scan {
                found,
                exhausted: false,
                stopped_at: cursor,
            });
        }
    }
}

/// The page this query asks for: the newest, the one just before `before`, or the one just
/// after `after`. One more match than the page holds is looked for, to know whether a link
/// onwards leads anywhere.
async fn page_for(state: &UiState, auth: &Auth, query: &ListQuery) -> Result<MessagePage, Error> {
    let only = match (auth.only(), query.inbox.as_deref()) {
        (Some(own), Some(asked)) if own != asked => return Err(Error::NotFound("inbox")),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let per_page = query.per_page();
    let link = |key: &str, id: &str| Some(query.url("/ui/messages", Some((key, id))));
    if let Some(after) = query.after.as_deref() {
        let scan = scan(state, only, query, None, Some(after), per_page + 1).await?;
        // Nothing newer beyond this page: it is the first page, shown as such so it fills up.
        if !(scan.exhausted && scan.found.len() <= per_page) {
            let mut found = scan.found;
            found.truncate(per_page);
            let newer = match (found.last(), scan.stopped_at) {
                (_, Some(stopped)) => link("after", &stopped),
                (Some((newest, _)), None) => link("after", &newest.id),
                (None, None) => None,
            };
            let older = found
                .first()
                .and_then(|(oldest, _)| link("before", &oldest.id));
            found.reverse();
            return Ok(MessagePage {
                rows: found.iter().map(|(m, e)| row_view(m, e)).collect(),
                older,
                newer,
            });
        }
        return older_page(state, only, query, None).await;
    }
    older_page(state, only, query, query.before.as_deref()).await
}

/// The page just before `before` (or the newest), newest first.
async fn older_page(
    state: &UiState,
    only: Option<&str>,
    query: &ListQuery,
    before: Option<&str>,
) -> Result<MessagePage, Error> {
    let per_page = query.per_page();
    let scan = scan(state, only, query, before, None, per_page + 1).await?;
    let full = scan.found.len() > per_page;
    let mut found = scan.found;
    found.truncate(per_page);
    let older = match (full, scan.stopped_at, found.last()) {
        (true, _, Some((oldest, _))) => Some(("before", oldest.id.clone())),
        (_, Some(stopped), _) => Some(("before", stopped)),
        _ => None,
    };
    let newer = match (before, found.first()) {
        (None, _) => None,
        (Some(_), Some((newest, _))) => {
            Some(query.url("/ui/messages", Some(("after", &newest.id))))
        }
        // Nothing matched down here: newer is the first page.
        (Some(_), None) => Some(query.url("/ui/messages", None)),
    };
    Ok(MessagePage {
        rows: found.iter().map(|(m, e)| row_view(m, e)).collect(),
        older: older.map(|(key, id)| query.url("/ui/messages", Some((key, &id)))),
        newer,
    })
}

pub(super) async fn list(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Query(query): Query<ListQuery>,
) -> Result<Response, Error> {
    let query = query.normalized();
    let page = page_for(&state, &auth, &query).await?;
    let inboxes: Vec<String> = match auth.only() {
        Some(own) => vec![own.to_owned()],
        None => state
            .http
            .db
            .list_inbox_rows(None)
            .await?
            .into_iter()
            .map(|inbox| inbox.id)
            .collect(),
    };
    let cursor = current_cursor(&query);
    let first_page = cursor.is_none();
    Ok(render(
        "messages.html",
        json!({
            "base": auth.base(),
            "page": "messages",
            "rows": page.rows,
            // Only the first page follows new mail; an older page stays where it is.
            "rows_url": first_page.then(|| query.url("/ui/messages/rows", None)),
            "back": query.url("/ui/messages", cursor),
            "older": page.older,
            "newer": page.newer,
            "first_page": query.url("/ui/messages", None),
            "per_page": query.per_page,
            "inboxes": inboxes,
            "flags": FLAGS,
            "tiers": TIERS,
            "statuses": STATUSES,
            "selected": json!({
                "inbox": query.inbox, "flag": query.flag,
                "tier": query.tier, "status": query.status,
            }),
        }),
    )?
    .into_response())
}

/// The table rows alone, for the script that refreshes the list when mail arrives.
pub(super) async fn rows(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Query(query): Query<ListQuery>,
) -> Result<Response, Error> {
    let query = query.normalized();
    let page = page_for(&state, &auth, &query).await?;
    let back = query.url("/ui/messages", current_cursor(&query));
    let html = render(
        "message_rows.html",
        json!({ "base": auth.base(), "rows": page.rows, "back": back }),
    )?;
    // New mail pushes rows off the first page, so its "older" link moves too; the script reads
    // it here rather than from a second request.
    Ok(([(OLDER_HEADER, page.older.unwrap_or_default())], html).into_response())
}

/// The cursor of the page asked for, so that actions come back to the same page.
fn current_cursor(query: &ListQuery) -> Option<(&'static str, &str)> {
    match (query.after.as_deref(), query.before.as_deref()) {
        (Some(after), _) => Some(("after", after)),
        (None, Some(before)) => Some(("before", before)),
        (None, None) => None,
    }
}

fn delivery_view(delivery: &DeliveryView, attempts: Vec<Value>) -> Value {
    json!({
        "id": delivery.id,
        "message_id": delivery.message_id,
        "inbox_id": delivery.inbox_id,
        "channel": delivery.channel,
        "target": delivery.target,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created": when_text(&delivery.created_at),
        "next_attempt": delivery.next_attempt_at.as_deref().map(when_text),
        "delivered": delivery.delivered_at.as_deref().map(when_text),
        "log": attempts,
    })
}

pub(super) async fn detail(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    detail_page(&state, &auth, id, StatusCode::OK, None).await
}

/// The "Send to URL" form of the message page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SendToForm {
    url: String,
    /// Empty: the inbox webhook's.
    signature: String,
    payload: String,
}

/// One POST of the message to the URL typed (`POST /v1/messages/{id}/send-to`), and the
/// message page again with what the receiver answered, or why nothing was sent.
pub(super) async fn send_to(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<SendToForm>,
) -> Result<Response, Error> {
    let mut body = json!({ "url": form.url.trim() });
    if !form.signature.is_empty() {
        body["signature"] = json!(form.signature);
    }
    if !form.payload.is_empty() {
        body["payload"] = json!(form.payload);
    }
    let answer = match serde_json::from_value(body) {
        Ok(body) => {
            crate::http::api::send_to::send_to(
                State(Arc::clone(&state.http)),
                Extension(auth.caller.clone()),
                Path(id.clone()),
                Ok(axum::Json(body)),
            )
            .await
        }
        // A value the API's types refuse (an unknown scheme) is shown like any refusal.
        Err(err) => Err(ApiError::BadRequest(err.to_string())),
    };
    let (status, sent) = match answer {
        Ok(axum::Json(result)) => (
            StatusCode::OK,
            json!({ "url": form.url.trim(), "result": result }),
        ),
        Err(ApiError::NotFound(what)) => return Err(Error::NotFound(what)),
        Err(refused) => (
            StatusCode::BAD_REQUEST,
            json!({ "url": form.url.trim(), "error": refused.to_string() }),
        ),
    };
    detail_page(&state, &auth, id, status, Some(json!({ "sent": sent }))).await
}

/// The reply box of the message page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ReplyForm {
    text: String,
    /// A checkbox: present ("on") when ticked.
    reply_all: Option<String>,
    force: Option<String>,
}

/// The agent's answer typed into the message page (`POST /v1/messages/{id}/reply`), and the
/// page again with the queued reply or why it was refused.
pub(super) async fn reply(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<ReplyForm>,
) -> Result<Response, Error> {
    let body = json!({
        "text": form.text,
        "reply_all": form.reply_all.is_some(),
        "force": form.force.is_some(),
    });
    let answer = match serde_json::from_value(body) {
        Ok(body) => {
            crate::http::api::reply::reply(
                State(Arc::clone(&state.http)),
                Extension(auth.caller.clone()),
                Path(id.clone()),
                axum::http::HeaderMap::new(),
                Ok(axum::Json(body)),
            )
            .await
        }
        Err(err) => Err(ApiError::BadRequest(err.to_string())),
    };
    let (status, replied) = match answer {
        Ok(axum::Json(sent)) => (StatusCode::OK, json!({ "result": sent })),
        Err(ApiError::NotFound(what)) => return Err(Error::NotFound(what)),
        Err(refused) => (
            StatusCode::BAD_REQUEST,
            json!({ "error": refused.to_string(), "text": form.text }),
        ),
    };
    detail_page(
        &state,
        &auth,
        id,
        status,
        Some(json!({ "replied": replied })),
    )
    .await
}

/// The message page; `done` is what a form of it just did: `{"sent": …}` for "Send to URL",
/// `{"replied": …}` for the reply box.
async fn detail_page(
    state: &UiState,
    auth: &Auth,
    id: String,
    status: StatusCode,
    done: Option<Value>,
) -> Result<Response, Error> {
    let db = &state.http.db;
    let message = db
        .get_message(&id)
        .await?
        .filter(|message| auth.caller.sees(&message.inbox_id))
        .ok_or(Error::NotFound("message"))?;
    let event = Event::from_json(&message.event_json)
        .map_err(|err| Error::Internal(format!("stored event of {id} is not JSON: {err}")))?;
    let mail = event.as_mail();
    let thread_id = mail.map_or("", |mail| mail.thread_id.as_str());
    let thread: Vec<Value> = if thread_id.is_empty() {
        Vec::new()
    } else {
        /// What the thread list shows of an event, read without the rest of it.
        #[derive(Deserialize)]
        struct Headline {
            message_id: Option<String>,
            sender: Option<String>,
            subject: Option<String>,
            timestamp: Option<String>,
            direction: Option<crate::model::Direction>,
        }
        db.thread_history(&message.inbox_id, thread_id, 50)
            .await?
            .iter()
            .filter_map(|text| serde_json::from_str::<Headline>(text).ok())
            .map(|other| {
                json!({
                    "current": other.message_id.as_deref() == Some(id.as_str()),
                    "id": other.message_id,
                    "sender": other.sender,
                    "subject": other.subject,
                    "timestamp": other.timestamp.as_deref().map(when_text),
                    "outbound": other.direction.is_some_and(|way| way.is_outbound()),
                })
            })
            .collect()
    };
    let mut deliveries = Vec::new();
    for delivery in db.message_deliveries(&id).await? {
        let mut attempts = Vec::new();
        for attempt in attempt_views(db.list_attempts(&delivery.id).await?) {
            // What was signed and sent, so a verifier can be checked against it byte for byte.
            let request = if attempt.request_logged {
                db.attempt_request(&delivery.id, attempt.attempt)
                    .await?
                    .map(|request| {
                        json!({
                            "headers": request.headers,
                            "body": request.body.map(|body| String::from_utf8_lossy(&body).into_owned()),
                            "body_bytes": request.body_bytes,
                            "download": format!("/ui/deliveries/{}/attempts/{}/body", delivery.id, attempt.attempt),
                        })
                    })
            } else {
                None
            };
            attempts.push(json!({
                "attempt": attempt.attempt,
                "started": when_text(&attempt.started_at),
                "latency_ms": attempt.latency_ms,
                "status_code": attempt.status_code,
                "outcome": attempt.outcome,
                "error": attempt.error,
                "response_excerpt": attempt.response_excerpt,
                "request": request,
            }));
        }
        deliveries.push(delivery_view(&DeliveryView::from(&delivery), attempts));
    }
    // A calendar event has no verdicts: it reads as unchecked.
    let unchecked = crate::event::Auth::default();
    let auth_lines = explain::auth_in_words(mail.map_or(&unchecked, |mail| &mail.auth));
    let flags = mail.map(Listed::of).unwrap_or_default();
    let html = render(
        "message.html",
        json!({
            "base": auth.base(),
            "page": "messages",
            "id": id,
            "back": format!("/ui/messages/{id}"),
            "inbox_id": message.inbox_id,
            "email": mail.map(|mail| &mail.email),
            "flags": flags.labels(),
            "event": event,
            "auth_lines": auth_lines,
            "thread": thread,
            "deliveries": deliveries,
            "sent": done.as_ref().and_then(|done| done.get("sent")),
            "replied": done.as_ref().and_then(|done| done.get("replied")),
            "outbound": mail.is_some_and(|mail| mail.direction.is_some_and(|way| way.is_outbound())),
            "signatures": super::inboxes::SIGNATURES,
            "payloads": super::inboxes::PAYLOADS,
        }),
    )?;
    Ok((status, html).into_response())
}

/// The exact body one attempt sent, as a download for feeding to a verifier.
pub(super) async fn attempt_body(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    path: Result<Path<crate::http::api::deliveries::AttemptPath>, PathRejection>,
) -> Result<Response, Error> {
    Ok(crate::http::api::deliveries::get_attempt_request_body(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        path,
    )
    .await?)
}

pub(super) async fn raw(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    Ok(crate::http::api::messages::get_raw_message(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id),
    )
    .await?)
}

/// The release button of a quarantined message's page: delivers it now, then shows the page.
pub(super) async fn release(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let message =
        crate::http::api::messages::visible_message(&state.http, &auth.caller, &id).await?;
    crate::http::api::lifecycle::release(&state.http, &message).await?;
    tracing::info!(message_id = %id, inbox_id = %message.inbox_id, key_id = "dashboard", "quarantined message released");
    Ok(Redirect::to(&format!("/ui/messages/{id}")).into_response())
}

/// One attachment, as the API serves it.
pub(super) async fn attachment(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path((id, attachment_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    let message =
        crate::http::api::messages::visible_message(&state.http, &auth.caller, &id).await?;
    Ok(
        crate::http::api::lifecycle::attachment_response(&state.http, &message, &attachment_id)
            .await?,
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct BackForm {
    #[serde(default)]
    back: Option<String>,
}

/// Where to go after an action: a page of the dashboard, never elsewhere.
fn back_to(back: Option<&str>, default: &str) -> String {
    back.filter(|path| {
        path.starts_with("/ui") && !path.starts_with("//") && !path.contains(['\\', '\r', '\n'])
    })
    .unwrap_or(default)
    .to_owned()
}

pub(super) async fn resend(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Form(form): Form<BackForm>,
) -> Result<Response, Error> {
    let _queued = crate::http::api::deliveries::resend_delivery(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(id),
    )
    .await?;
    Ok(Redirect::to(&back_to(form.back.as_deref(), "/ui/dead")).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DeadQuery {
    /// How many the recover form just requeued.
    #[serde(default)]
    requeued: Option<usize>,
}

pub(super) async fn dead(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Query(query): Query<DeadQuery>,
) -> Result<Response, Error> {
    let deliveries = state
        .http
        .db
        .list_deliveries(Some(DeliveryStatus::Dead), auth.only(), 200)
        .await?;
    let ids: Vec<&str> = deliveries
        .iter()
        .map(|delivery| delivery.message_id.as_str())
        .collect();
    let headlines = state.http.db.message_headlines(&ids).await?;
    let views: Vec<Value> = deliveries
        .iter()
        .map(|delivery| {
            let mut view = delivery_view(&DeliveryView::from(delivery), Vec::new());
            if let Some(headline) = headlines.get(&delivery.message_id) {
                view["sender"] = json!(headline.sender);
                view["subject"] = json!(headline.subject);
            }
            view
        })
        .collect();
    let inboxes: Vec<String> = state
        .http
        .db
        .list_inbox_rows(auth.only())
        .await?
        .into_iter()
        .map(|inbox| inbox.id)
        .collect();
    Ok(render(
        "dead.html",
        json!({
            "base": auth.base(),
            "page": "dead",
            "deliveries": views,
            "back": "/ui/dead",
            "inboxes": inboxes,
            "requeued": query.requeued,
            "max_recover": crate::http::api::recover::MAX_RECOVER,
        }),
    )?
    .into_response())
}

/// The recover form of the dead-letter page. Times come from `datetime-local` fields, which
/// carry no offset: the page says they are UTC.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RecoverForm {
    inbox: String,
    since: String,
    until: String,
    endpoint: String,
    status: String,
}

/// A form time as RFC 3339: a `datetime-local` value (`2026-01-31T09:00`, seconds optional)
/// read as UTC, or an RFC 3339 time as typed; anything else goes to the API as typed, whose
/// answer names the field.
fn form_time(value: &str) -> String {
    let value = value.trim();
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(value, format) {
            return time
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        }
    }
    value.to_owned()
}

/// Requeues one inbox's deliveries of a window through the API's recover, then shows how many.
pub(super) async fn recover(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
    Form(form): Form<RecoverForm>,
) -> Result<Response, Error> {
    let optional = |value: &str| {
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_owned())
    };
    let request = crate::http::api::recover::RecoverRequest {
        since: form_time(&form.since),
        until: optional(&form.until).map(|until| form_time(&until)),
        status: optional(&form.status),
        endpoint: optional(&form.endpoint),
    };
    let (_, Json(answer)) = crate::http::api::recover::recover(
        State(Arc::clone(&state.http)),
        Extension(auth.caller.clone()),
        Path(form.inbox),
        Ok(Json(request)),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/dead?requeued={}", answer.requeued)).into_response())
}

/// Requeues the whole dead-letter queue the caller can see, inbox by inbox through the API's
/// bulk resend.
pub(super) async fn resend_all(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, Error> {
    let inboxes = state.http.db.list_inbox_rows(auth.only()).await?;
    for inbox in inboxes {
        let _requeued = crate::http::api::inboxes::resend_dead(
            State(Arc::clone(&state.http)),
            Extension(auth.caller.clone()),
            Path(inbox.id),
        )
        .await?;
    }
    Ok(Redirect::to("/ui/dead").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_links_stay_inside_the_dashboard() {
        assert_eq!(back_to(Some("/ui/messages?x=1"), "/ui"), "/ui/messages?x=1");
        assert_eq!(back_to(Some("https://evil.example"), "/ui"), "/ui");
        assert_eq!(back_to(Some("//evil.example"), "/ui"), "/ui");
        assert_eq!(back_to(None, "/ui/dead"), "/ui/dead");
    }

    #[test]
    fn form_times_are_utc() {
        assert_eq!(form_time("2026-01-31T09:00"), "2026-01-31T09:00:00Z");
        assert_eq!(form_time(" 2026-01-31T09:00:30 "), "2026-01-31T09:00:30Z");
        assert_eq!(
            form_time("2026-01-31T09:00:00+02:00"),
            "2026-01-31T09:00:00+02:00"
        );
        assert_eq!(form_time("soon"), "soon");
    }
}
