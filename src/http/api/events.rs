//! `GET /v1/inboxes/{id}/events`: an inbox's events as Server-Sent Events (SPEC "Agents without
//! a public URL"), for agents with no public URL to take a webhook at.
//!
//! Each event is `id:` its `event_id`, `event:` its type and `data:` the event as the inbox
//! webhook's `mxhook` payload carries it, in the stream order `db::stream` keeps. A reconnect
//! with `Last-Event-ID` resumes just after that event, read from the database, so a disconnect,
//! a restart or another node loses nothing. A stream waits on the node's one
//! [`Arrivals`](crate::notify::Arrivals) signal and reads the database only when its inbox was
//! announced, so an idle stream costs a parked task and a socket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::inboxes::visible_inbox;
use super::keys::hash_key;
use crate::db::{Db, StreamEvent, StreamPosition};
use crate::http::{ApiError, Caller, ErrorBody, HttpState, auth};
use crate::model::Subscription;
use crate::notify::Listener;

/// Events read from the database at a time; a stream reads again at once while it gets full
/// pages, so a long backlog streams in bounded memory.
const PAGE: i64 = 100;

/// The open event streams of this node, counted per key, and what every stream shares.
#[derive(Debug)]
pub struct EventStreams {
    per_key: usize,
    heartbeat: Duration,
    open: Mutex<HashMap<String, usize>>,
    /// Cancelled at shutdown: every stream ends, so the graceful HTTP shutdown is not held
    /// open by them.
    shutdown: CancellationToken,
}

impl EventStreams {
    pub fn new(per_key: usize, heartbeat: Duration, shutdown: CancellationToken) -> Self {
        Self {
            per_key,
            heartbeat,
            open: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// A slot for one more stream (or long wait) of this key, or 429 past the bound.
    pub(crate) fn admit(self: &Arc<Self>, key: &str) -> Result<StreamSlot, ApiError> {
        let key = hash_key(key);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(key.clone()).or_default();
        if *count >= self.per_key {
            return Err(ApiError::Rejected {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "this key has {} event streams open, the most http.event_streams_per_key allows",
                    self.per_key
                ),
            });
        }
        *count += 1;
        Ok(StreamSlot {
            streams: Arc::clone(self),
            key,
        })
    }

    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Streams open now, over all keys.
    pub fn open_count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

/// One admitted stream; dropping it (the client went away, the stream ended) frees the slot.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<EventStreams>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Comma-separated event types or patterns, as in subscriptions (`mail.*`, `*`); the
    /// default is `mail.received,calendar.*`, what an inbox webhook gets by default.
    types: Option<String>,
}

/// Reads `?types=` as a subscription.
pub(crate) fn parse_types(types: Option<&str>) -> Result<Subscription, ApiError> {
    let Some(types) = types else {
        return Ok(Subscription::default());
    };
    let patterns: Vec<&str> = types.split(',').map(str::trim).collect();
    Subscription::parse(&patterns).map_err(|err| ApiError::BadRequest(format!("types: {err}")))
}

#[utoipa::path(
    get,
    path = "/v1/inboxes/{id}/events",
    tag = "messages",
    summary = "The inbox's events as a Server-Sent Events stream, resumable with Last-Event-ID",
    description = "Each event: `id:` the event_id, `event:` the type, `data:` the event JSON as the \
        inbox webhook receives it with `payload = \"mxhook\"`. Without `Last-Event-ID` the stream \
        starts with the next event; with it, just after that event (an id this inbox does not \
        have starts with the next event). Comment lines every `http.event_stream_heartbeat_s` \
        keep it open. At most `http.event_streams_per_key` streams per key.",
    params(
        ("id" = String, Path, description = "Inbox id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event_id received"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
        (status = 429, description = "This key has the most streams open", body = ErrorBody),
    ),
)]
pub(crate) async fn stream_events(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    visible_inbox(&state, &caller, &id).await?;
    let Query(query) = query?;
    let types = parse_types(query.types.as_deref())?;
    let slot = state.event_streams.admit(auth::bearer_token(&headers)?)?;
    // Listening before the start is read: a commit between the two still wakes the stream.
    let listener = state.db.arrivals().listen();
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let start = match last_event_id {
        Some(event_id) => state.db.stream_position(&id, event_id).await?,
        None => None,
    };
    let start = match start {
        Some(position) => position,
        None => state.db.stream_end(&id).await?,
    };
    let stream = EventFeed {
        db: state.db.clone(),
        inbox_id: id,
        types,
        position: start,
        pending: std::collections::VecDeque::new(),
        listener,
        shutdown: state.event_streams.shutdown().clone(),
        _slot: slot,
    }
    .into_stream();
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(state.event_streams.heartbeat)
                .text("heartbeat"),
        )
        .into_response())
}

/// One open stream's state: where it is, what it has read but not yet sent, and its wake-ups.
pub(crate) struct EventFeed {
    pub(crate) db: Db,
    pub(crate) inbox_id: String,
    pub(crate) types: Subscription,
    pub(crate) position: StreamPosition,
    pub(crate) pending: std::collections::VecDeque<StreamEvent>,
    pub(crate) listener: Listener,
    pub(crate) shutdown: CancellationToken,
    pub(crate) _slot: StreamSlot,
}

impl EventFeed {
    /// The next event of the inbox that matches the types, waiting for one to arrive; `None`
    /// at shutdown. A database error ends the stream too (the client resumes from its last id).
    pub(crate) async fn next(&mut self) -> Option<Result<StreamEvent, crate::db::Error>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            let page = match self
                .db
                .stream_after(&self.inbox_id, &self.position, PAGE)
                .await
            {
                Ok(page) => page,
                Err(err) => return Some(Err(err)),
            };
            if let Some(last) = page.last() {
                self.position = last.position.clone();
                self.pending.extend(
                    page.into_iter()
                        .filter(|event| self.types.matches(&event.event_type)),
                );
                continue;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = self.listener.changed(&self.inbox_id) => {}
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures_util::stream::unfold(self, |mut feed| async move {
            match feed.next().await? {
                Ok(event) => {
                    let sse = SseEvent::default()
                        .id(event.event_id)
                        .event(event.event_type)
                        .data(event.json);
                    Some((Ok(sse), feed))
                }
                Err(err) => {
                    tracing::warn!(inbox = %feed.inbox_id, error = %err, "event stream read failed");
                    None
                }
            }
        })
    }
}
