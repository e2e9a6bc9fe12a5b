//! The HTTP layer: one listener, one state, one router. It serves the management API
//! ([`api`], split by resource, behind the Bearer keys of [`auth`]), its one OpenAPI document
//! ([`openapi`]), the `/ui` dashboard ([`ui`], a client of the API's handlers) and the provider
//! webhooks ([`ingress`], over the ingress stage). Every JSON error is an [`ErrorBody`], built in
//! [`error`].
//!
//! Nothing below this layer imports it: the stages it calls (`db`, `store`, `intake`, the
//! `ingress` stage, `directory`) know no HTTP; `app` builds [`HttpState`] and mounts [`router`].

pub(crate) mod api;
pub(crate) mod auth;
mod error;
mod ingress;
pub mod mcp;
mod openapi;
mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Json, Router};
use tokio::sync::Notify;

pub use api::events::EventStreams;
pub use auth::Caller;
pub use error::{ApiError, ErrorBody};

use crate::config::DeliveryConfig;
use crate::db::Db;
use crate::directory::Directory;
use crate::intake::Intake;
use crate::store::Store;

/// Largest request body the API reads; inbox settings and rules are small.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler of the listener reaches.
pub struct HttpState {
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
    /// The provider-ingress stage the provider webhooks hand their requests to.
    pub ingress: Arc<crate::ingress::Ingress>,
    /// The first run's single-use dashboard login link (none on other starts).
    pub login_token: Arc<crate::first_run::LoginToken>,
    /// Erasure, release and retention (see `retention`).
    pub lifecycle: crate::retention::Lifecycle,
    /// Where this node takes SMTP, for the test-mail commands the dashboard shows.
    pub smtp_addr: Option<std::net::SocketAddr>,
    /// Builds the replies agents send through the API.
    pub replier: Arc<crate::reply::Replier>,
    /// The MTA-STS policy file of `[mta_sts]`, served at `/.well-known/mta-sts.txt`.
    pub mta_sts_policy: Option<String>,
    /// The open event streams, bounded per key, and their heartbeat.
    pub event_streams: Arc<api::events::EventStreams>,
}

impl HttpState {
    /// Reloads the routable inboxes into the RCPT directory. Other nodes see the change at
    /// their next poll of the change marker ([`Directory::follow`]).
    pub(crate) async fn refresh_directory(&self) -> Result<(), ApiError> {
        self.directory.reload(&self.db).await?;
        Ok(())
    }
}

/// The whole listener: the API (its body limit, its JSON 404 and 405 for unknown routes), the
/// dashboard (HTML, cookie sessions, its own body limit and headers) and provider ingress with
/// its management routes (under `ingress.max_body_bytes`).
pub fn router(state: Arc<HttpState>) -> Router {
    let api = api::routes(&state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody::new("method_not_allowed", "method not allowed")),
            )
        })
        .layer(axum::middleware::map_response(error::json_rejection))
        .with_state(Arc::clone(&state));
    // MCP tools call the API router in process, with the MCP request's own key.
    let mcp = Router::new()
        .route_service(
            "/mcp",
            mcp::service(api.clone(), state.event_streams.shutdown().clone()),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authenticate,
        ));
    let ingress = ingress::routes()
        .merge(api::ingress::routes())
        .layer(DefaultBodyLimit::max(state.ingress.config.max_body_bytes))
        .layer(axum::middleware::map_response(error::json_rejection))
        .with_state(Arc::clone(&state));
    api.merge(ui::router(state)).merge(ingress).merge(mcp)
}
