//! Who is calling: `Authorization: Bearer <key>` is an admin key from the config (compared in
//! constant time, reaching everything) or a per-inbox key (looked up by hash, reaching only its
//! own inbox). The dashboard's login checks a key with the same function.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq as _;

use super::api::keys;
use super::{ApiError, HttpState};

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

    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Inbox(_) => Err(ApiError::Forbidden("this needs an admin key")),
        }
    }
}

pub(super) async fn authenticate(
    State(state): State<Arc<HttpState>>,
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
pub(crate) async fn caller_for_key(state: &HttpState, presented: &str) -> Result<Caller, ApiError> {
    if is_admin_key(&state.admin_keys, presented) {
        Ok(Caller::Admin)
    } else if presented.starts_with(keys::INBOX_KEY_PREFIX) {
        // Looked up by hash: the database never holds a usable key, and the lookup reveals
        // nothing about keys that do not hash alike.
        let inbox_id = state
            .db
            .inbox_for_key_hash(&keys::hash_key(presented))
            .await?
            .ok_or(ApiError::Unauthorized("invalid API key"))?;
        Ok(Caller::Inbox(inbox_id))
    } else {
        Err(ApiError::Unauthorized("invalid API key"))
    }
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
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
