//! The domains page (admin): every domain with its mode — catch-all (to which inbox),
//! auto-create (with its cap and rate) or none — and how many inboxes have an address in it.
//! Domains are changed in the config file or through `/v1/domains`; the page only shows them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Auth, Error, UiState, render};
use crate::http::Caller;

pub(super) async fn list(
    State(state): State<Arc<UiState>>,
    Extension(auth): Extension<Auth>,
) -> Result<Response, Error> {
    if auth.caller != Caller::Admin {
        // As in the API: what an inbox key may not see does not exist for it.
        return Err(Error::NotFound("page"));
    }
    let db = &state.http.db;
    let domains = db.list_domains().await?;
    let inboxes = db.list_inbox_rows(None).await?;
    let views: Vec<_> = domains
        .iter()
        .map(|domain| {
            let suffix = format!("@{}", domain.name);
            let inbox_count = inboxes
                .iter()
                .filter(|inbox| {
                    inbox
                        .addresses
                        .iter()
                        .any(|address| address.ends_with(&suffix))
                })
                .count();
            let mode = match (&domain.catch_all, domain.auto_create) {
                (Some(_), _) => "catch-all",
                (None, true) => "auto-create",
                (None, false) => "none",
            };
            json!({
                "name": domain.name,
                "source": domain.source,
                "mode": mode,
                "catch_all": domain.catch_all,
                "auto_create": domain.auto_create,
                "max_auto_inboxes": domain.max_auto_inboxes,
                "auto_create_per_minute": domain.auto_create_per_minute,
                "inbox_count": inbox_count,
            })
        })
        .collect();
    Ok(render(
        "domains.html",
        json!({ "base": auth.base(), "domains": views, "page": "domains" }),
    )?
    .into_response())
}
