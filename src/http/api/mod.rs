//! The management API's routes, one file per resource: health and readiness, metrics, inboxes
//! with their webhook, notification rules and API keys, messages and their raw bytes, deliveries
//! with their attempt logs, resend and recover, and the provider-ingress secrets and event types.
//!
//! Every `/v1` route needs `Authorization: Bearer <key>` ([`crate::http::auth`]): an admin key
//! reaches everything; a per-inbox key reaches only its own inbox, and anything of another inbox
//! answers 404, as if it did not exist. Responses never contain signing secrets (except the one
//! response that creates or rotates one) or internal error detail.

pub(crate) mod deliveries;
pub(crate) mod domains;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod inboxes;
pub(crate) mod ingress;
pub(crate) mod keys;
pub(crate) mod lifecycle;
pub(crate) mod messages;
pub(crate) mod metrics;
pub(crate) mod mta_sts;
pub(crate) mod notifications;
pub(crate) mod recover;
pub(crate) mod reply;
pub(crate) mod send_to;
pub(crate) mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, post};

use super::{HttpState, auth, openapi};

/// The API routes under the API's body limit: health, the document, and the `/v1` group behind
/// the Bearer check.
pub(super) fn routes(state: &Arc<HttpState>) -> Router<Arc<HttpState>> {
    let v1 = Router::new()
        .route(
            "/v1/inboxes",
            get(inboxes::list_inboxes).post(inboxes::create_inbox),
        )
        .route(
            "/v1/inboxes/{id}",
            get(inboxes::get_inbox)
                .patch(inboxes::update_inbox)
                .delete(lifecycle::delete_inbox_route),
        )
        .route(
            "/v1/inboxes/{id}/webhook",
            get(webhook::get_webhook)
                .put(webhook::put_webhook)
                .delete(webhook::delete_webhook),
        )
        .route(
            "/v1/inboxes/{id}/notifications",
            get(notifications::get_notifications).put(notifications::put_notifications),
        )
        .route("/v1/inboxes/{id}/endpoints", get(webhook::list_endpoints))
        .route(
            "/v1/inboxes/{id}/keys",
            get(keys::list_keys).post(keys::create_key),
        )
        .route("/v1/inboxes/{id}/keys/{key_id}", delete(keys::delete_key))
        .route("/v1/inboxes/{id}/messages", get(messages::list_messages))
        .route("/v1/inboxes/{id}/events", get(events::stream_events))
        .route("/v1/inboxes/{id}/deliveries", get(inboxes::list_deliveries))
        .route(
            "/v1/inboxes/{id}/deliveries/resend-dead",
            post(inboxes::resend_dead),
        )
        .route(
            "/v1/inboxes/{id}/deliveries/recover",
            post(recover::recover),
        )
        .route(
            "/v1/inboxes/{id}/test-event",
            post(inboxes::send_test_event),
        )
        .route("/v1/domains", get(domains::list_domains))
        .route(
            "/v1/domains/{name}",
            get(domains::get_domain)
                .put(domains::put_domain)
                .delete(domains::delete_domain),
        )
        .route("/metrics", get(metrics::metrics))
        .route(
            "/v1/messages/{id}",
            get(messages::get_message).delete(lifecycle::erase_message),
        )
        .route(
            "/v1/messages/{id}/attachments/{attachment_id}",
            get(lifecycle::get_attachment),
        )
        .route(
            "/v1/messages/{id}/release",
            post(lifecycle::release_message),
        )
        .route(
            "/v1/attachments/url-key/rotate",
            post(lifecycle::rotate_url_key),
        )
        .route("/v1/messages/{id}/raw", get(messages::get_raw_message))
        .route("/v1/messages/{id}/send-to", post(send_to::send_to))
        .route("/v1/messages/{id}/reply", post(reply::reply))
        .route("/v1/deliveries", get(deliveries::list_deliveries))
        .route("/v1/deliveries/{id}", get(deliveries::get_delivery))
        .route(
            "/v1/deliveries/{id}/attempts",
            get(deliveries::list_attempts),
        )
        .route(
            "/v1/deliveries/{id}/attempts/{attempt}/request",
            get(deliveries::get_attempt_request),
        )
        .route(
            "/v1/deliveries/{id}/attempts/{attempt}/request/body",
            get(deliveries::get_attempt_request_body),
        )
        .route(
            "/v1/deliveries/{id}/resend",
            post(deliveries::resend_delivery),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(state),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/.well-known/mta-sts.txt", get(mta_sts::policy))
        .route(
            "/attachments/{id}/{attachment_id}",
            get(lifecycle::get_signed_attachment),
        )
        .merge(v1)
}
