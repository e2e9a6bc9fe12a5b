//! The management HTTP API (axum): health, readiness and metrics, inboxes with their webhook,
//! notification rules and API keys, messages and their raw bytes, deliveries with their attempt
//! logs, and resend.
//!
//! Every `/v1` route needs `Authorization: Bearer <key>`: an admin key from the config (compared
//! in constant time) reaches everything; a per-inbox key reaches only its own inbox, and anything
//! of another inbox answers 404, as if it did not exist. Responses never contain signing secrets
//! (except the one response that creates or rotates one) or internal error detail.

mod error;
pub(crate) mod inboxes;
mod metrics;
mod openapi;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;

pub use error::{ApiError, ErrorBody};

use crate::config::DeliveryConfig;
use crate::db::{AttemptView, Db, DeliveryView};
use crate::directory::Directory;
use crate::intake::Intake;
use crate::model::DeliveryStatus;
use crate::store::Store;

/// Largest request body the API reads; inbox settings and rules are small.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ApiState {
    /// Per-node counts of refusals, which leave no row in the database.
    pub counters: Arc<crate::counters::Counters>,
    pub db: Db,
    pub store: Store,
    pub admin_keys: Vec<String>,
    pub dispatcher_wakeup: Arc<Notify>,
    /// Refreshed after every inbox change, so RCPT on this node sees it at once.
    pub directory: Directory,
    /// Webhook URLs set through the API obey the same policy as configured ones.
    pub delivery: DeliveryConfig,
    /// Test events go through the same pre-250 sequence as received mail.
    pub intake: Arc<Intake>,
    /// The documentation of the routes mounted beside the API on the same listener (provider
    /// ingress), served in `/openapi.json` with the API's own.
    pub mounted_docs: utoipa::openapi::OpenApi,
}

impl ApiState {
    /// Reloads the routable inboxes into the RCPT directory. Other nodes see the change at
    /// their next poll of the change marker ([`Directory::follow`]).
    async fn refresh_directory(&self) -> Result<(), ApiError> {
        self.directory.reload(&self.db).await?;
        Ok(())
    }
}

/// Who is calling, as the Bearer key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A per-inbox key: only this inbox exists for it.
    Inbox(String),
}

impl Caller {
    pub(crate) fn sees(&self, inbox_id: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Inbox(own) => own == inbox_id,
        }
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Inbox(_) => Err(ApiError::Forbidden("this needs an admin key")),
        }
    }
}

pub fn router(state: Arc<ApiState>) -> axum::Router {
    let v1 = axum::Router::new()
        .merge(inboxes::routes())
        .route("/metrics", get(metrics::metrics))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/messages/{id}/raw", get(get_raw_message))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/attempts", get(list_attempts))
        .route("/v1/deliveries/{id}/resend", post(resend_delivery))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody::new("method_not_allowed", "method not allowed")),
            )
        })
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = caller_for_key(&state, bearer_token(&headers)?).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Who a presented key is: the one check behind both the Bearer header and the dashboard login.
///
/// # Errors
/// [`ApiError::Unauthorized`] for an unknown key; [`ApiError::Internal`] when the lookup fails.
pub(crate) async fn caller_for_key(state: &ApiState, presented: &str) -> Result<Caller, ApiError> {
    if is_admin_key(&state.admin_keys, presented) {
        Ok(Caller::Admin)
    } else if presented.starts_with(inboxes::INBOX_KEY_PREFIX) {
        // Looked up by hash: the database never holds a usable key, and the lookup reveals
        // nothing about keys that do not hash alike.
        let inbox_id = state
            .db
            .inbox_for_key_hash(&inboxes::hash_key(presented))
            .await?
            .ok_or(ApiError::Unauthorized("invalid API key"))?;
        Ok(Caller::Inbox(inbox_id))
    } else {
        Err(ApiError::Unauthorized("invalid API key"))
    }
}

/// Checks `Authorization: Bearer <key>` against the admin keys, for routes outside this
/// router (provider ingress secrets).
///
/// # Errors
/// [`ApiError::Unauthorized`] when the header is missing or the key is not an admin key.
pub fn authorize_admin(admin_keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if is_admin_key(admin_keys, bearer_token(headers)?) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid API key"))
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized("missing Bearer token"))
}

/// Every key is compared, matched or not, so timing reveals neither which key nor how much of
/// it matched.
fn is_admin_key(admin_keys: &[String], presented: &str) -> bool {
    admin_keys.iter().fold(false, |found, key| {
        found | bool::from(key.as_bytes().ct_eq(presented.as_bytes()))
    })
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// ok, or unavailable (with status 503) when the database does not answer.
    status: String,
}

impl Health {
    fn answer(status: StatusCode, word: &str) -> Response {
        (
            status,
            Json(Self {
                status: word.to_owned(),
            }),
        )
            .into_response()
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    summary = "Liveness and database reachability",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "Database unreachable", body = Health),
    ),
)]
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    // A database that does not answer at all (its port refusing, its host gone) would hold the
    // check for the pool's whole acquire timeout (30 s), longer than any probe waits.
    match tokio::time::timeout(HEALTH_DEADLINE, state.db.ping()).await {
        Ok(Ok(())) => Health::answer(StatusCode::OK, "ok"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            Health::answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        Err(_) => {
            tracing::warn!(
                deadline_s = HEALTH_DEADLINE.as_secs_f64(),
                "health check: the database did not answer in time"
            );
            Health::answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// How long `/healthz` and `/readyz` wait for the database before answering 503.
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable", body = Health),
    ),
)]
async fn readyz(state: State<Arc<ApiState>>) -> Response {
    healthz(state).await
}

#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    summary = "The stored mail.received event",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "The stored event, as delivered with `payload = \"mxhook\"`", body = StoredEvent),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn get_message(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let message = state
        .db
        .get_message(&id)
        .await?
        .filter(|message| caller.sees(&message.inbox_id))
        .ok_or(ApiError::NotFound("message"))?;
    // Served as stored, the very bytes a `payload = "mxhook"` endpoint receives: checked to be
    // JSON, not built and written again.
    serde_json::from_str::<serde::de::IgnoredAny>(&message.event_json)
        .map_err(|err| ApiError::Internal(format!("stored event of {id} is not JSON: {err}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        message.event_json,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/messages/{id}/raw",
    tag = "messages",
    summary = "The raw .eml, byte for byte",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "message/rfc822 bytes", content_type = "message/rfc822", body = String),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn get_raw_message(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let message = state
        .db
        .get_message(&id)
        .await?
        .filter(|message| caller.sees(&message.inbox_id))
        .ok_or(ApiError::NotFound("message"))?;
    let bytes = state
        .store
        .get(&message.storage_key)
        .await
        .map_err(|err| match err {
            crate::store::Error::NotFound { .. } => ApiError::NotFound("raw message"),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.eml\"", message.id),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    /// pending, delivered or dead (the dead-letter queue).
    status: Option<String>,
    inbox_id: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    summary = "Deliveries, newest first",
    params(DeliveryQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(mut query) = query?;
    if let Caller::Inbox(own) = &caller {
        if query.inbox_id.as_ref().is_some_and(|asked| asked != own) {
            return Err(ApiError::NotFound("inbox"));
        }
        query.inbox_id = Some(own.clone());
    }
    list_deliveries_of(&state, query).await
}

async fn list_deliveries_of(
    state: &ApiState,
    query: DeliveryQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|value| {
            DeliveryStatus::parse(value).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status must be one of pending, delivered, dead; got `{value}`"
                ))
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".to_owned(),
        ));
    }
    let deliveries = state
        .db
        .list_deliveries(status, query.inbox_id.as_deref(), limit)
        .await?;
    Ok(Json(DeliveryList { deliveries }))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    summary = "One delivery with its attempt_log",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryWithAttempts),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryWithAttempts>, ApiError> {
    let delivery = visible_delivery(&state, &caller, &id).await?;
    let attempt_log = state.db.list_attempts(&id).await?;
    Ok(Json(DeliveryWithAttempts {
        delivery,
        attempt_log,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}/attempts",
    tag = "deliveries",
    summary = "Every attempt of one delivery",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The attempts, oldest first", body = AttemptList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
async fn list_attempts(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AttemptList>, ApiError> {
    visible_delivery(&state, &caller, &id).await?;
    let attempts = state.db.list_attempts(&id).await?;
    Ok(Json(AttemptList { attempts }))
}

#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/resend",
    tag = "deliveries",
    summary = "Queue a delivery again now, same event_id",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued", body = Resent),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 404, description = "No such object visible to this key", body = ErrorBody),
    ),
)]
pub(crate) async fn resend_delivery(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Resent>), ApiError> {
    visible_delivery(&state, &caller, &id).await?;
    if !state.db.resend(&id).await? {
        return Err(ApiError::NotFound("delivery"));
    }
    state.dispatcher_wakeup.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            id,
            status: "pending".to_owned(),
        }),
    ))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

/// One delivery with every attempt made so far.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct DeliveryWithAttempts {
    #[serde(flatten)]
    delivery: DeliveryView,
    /// The attempts, oldest first (as `GET /v1/deliveries/{id}/attempts`).
    attempt_log: Vec<AttemptView>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct AttemptList {
    attempts: Vec<AttemptView>,
}

/// A delivery queued again.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Resent {
    id: String,
    /// Always pending: the dispatcher picks it up at once.
    status: String,
}

/// A stored event, as `GET /v1/messages/{id}` returns it.
///
/// For mail this is the `mail.received` event of SPEC.md "The `mail.received` event"; an
/// event from calendar provider ingress has `type` `booking.*` with `provider`, `booking` and
/// `payload` instead of the mail fields. The event is served as stored (it is the very payload
/// delivered), so this type only documents it: `email` and `auth` with the event's own types,
/// `booking` and `payload` free-form (`additionalProperties: true`; SPEC.md gives their shape in
/// prose), and the OpenAPI test compares every field of a real event with this schema.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only; the handler returns the stored JSON as is
struct StoredEvent {
    /// mail.received, or booking.* for a calendar event.
    r#type: String,
    /// Stable across retries and resends: the idempotency key.
    event_id: String,
    /// The inbox id.
    agent_id: String,
    /// The gateway's id of this message.
    message_id: String,
    timestamp: String,
    s3_bucket: String,
    s3_key: String,
    /// The From address.
    sender: Option<String>,
    envelope_from: Option<String>,
    envelope_to: Option<Vec<String>>,
    subject: Option<String>,
    thread_id: Option<String>,
    extracted_text: Option<String>,
    /// DMARC pass: aligned SPF or DKIM for the From domain.
    sender_verified: Option<bool>,
    /// trusted, verified, unverified or suspicious.
    peer_trust_tier: Option<String>,
    traffic_types: Option<Vec<String>>,
    rate_limited: Option<bool>,
    is_duplicate: Option<bool>,
    quarantined: Option<bool>,
    /// Which sender-policy rules the message broke.
    policy_violations: Option<Vec<String>>,
    /// Size of the raw message in bytes.
    size: Option<u64>,
    remote_ip: Option<String>,
    helo: Option<String>,
    /// Structured verdicts: checked, spf, dkim[], dmarc, arc.
    auth: Option<crate::event::Auth>,
    warnings: Option<Vec<String>>,
    /// Set when bodies were left out past the payload cap; names them and the raw URL.
    omitted_reason: Option<String>,
    /// The full content: the BotMailRoom fields of SPEC.md.
    email: Option<crate::event::Email>,
    /// Calendar events: cal.com or calendly.
    provider: Option<String>,
    /// Calendar events: the booking, normalised.
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>, additional_properties)]
    booking: Option<serde_json::Value>,
    /// Calendar events: the provider's payload as received.
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>, additional_properties)]
    payload: Option<serde_json::Value>,
}

/// A delivery the caller may see; another inbox's delivery does not exist for it.
async fn visible_delivery(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<crate::db::DeliveryView, ApiError> {
    state
        .db
        .get_delivery(id)
        .await?
        .filter(|delivery| caller.sees(&delivery.inbox_id))
        .ok_or(ApiError::NotFound("delivery"))
}
