//! The dashboard at `/ui`: server-rendered HTML pages over the same handlers and database
//! functions as the JSON API, behind a login with an admin or inbox key.
//!
//! Login checks the key exactly as the API's Bearer check does ([`crate::http::auth::caller_for_key`])
//! (after [`throttle`]: ten failures from one client in a minute block it for a minute) and
//! starts a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie, mapped in memory
//! to the caller and a CSRF token. On a first run, `GET /ui/login?token=…` with the terminal
//! banner's single-use token ([`crate::first_run::LoginToken`]) starts an admin session instead.
//! Sessions live in this process only, so a restart (or another node behind a load balancer)
//! logs users out. Every POST is checked for the session's CSRF token
//! in one middleware before any handler runs, so no form can forget it. An inbox key sees only its
//! inbox; anything else answers 404, as in the API.
//!
//! Mail content is escaped by the template engine (auto-escape for `.html`); HTML bodies are shown
//! only in an `<iframe sandbox srcdoc>` without `allow-scripts`, and every page carries a strict
//! Content-Security-Policy: scripts and styles only from `/ui/static`, which is embedded in the
//! binary like the templates.

mod chart;
mod domains;
mod explain;
mod inboxes;
mod manage;
mod messages;
mod throttle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use super::auth::caller_for_key;
use super::{ApiError, Caller, HttpState};
use throttle::{Client, LoginThrottle};

/// The session cookie; scoped to `/ui`.
const SESSION_COOKIE: &str = "mxhook_session";
/// The double-submit token of the login form, which runs before there is a session.
const LOGIN_CSRF_COOKIE: &str = "mxhook_login_csrf";
/// A session unused this long is gone.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 60 * 60);
/// Bounds the memory sessions take; the oldest is dropped past it.
const MAX_SESSIONS: usize = 10_000;
/// Largest form body read; the rules editor is the biggest form.
const MAX_FORM_BYTES: usize = 256 * 1024;

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

const APP_CSS: &str = include_str!("../../../templates/ui/static/app.css");
const APP_JS: &str = include_str!("../../../templates/ui/static/app.js");
const ICON_SVG: &str = include_str!("../../../templates/ui/static/icon.svg");

/// The templates, embedded so the binary works without the repository.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../../templates/ui/base.html")),
    (
        "login.html",
        include_str!("../../../templates/ui/login.html"),
    ),
    (
        "error.html",
        include_str!("../../../templates/ui/error.html"),
    ),
    (
        "inboxes.html",
        include_str!("../../../templates/ui/inboxes.html"),
    ),
    (
        "inbox.html",
        include_str!("../../../templates/ui/inbox.html"),
    ),
    (
        "secret.html",
        include_str!("../../../templates/ui/secret.html"),
    ),
    (
        "messages.html",
        include_str!("../../../templates/ui/messages.html"),
    ),
    (
        "message_rows.html",
        include_str!("../../../templates/ui/message_rows.html"),
    ),
    (
        "message.html",
        include_str!("../../../templates/ui/message.html"),
    ),
    ("dead.html", include_str!("../../../templates/ui/dead.html")),
    (
        "inbox_fields.html",
        include_str!("../../../templates/ui/inbox_fields.html"),
    ),
    (
        "inbox_try.html",
        include_str!("../../../templates/ui/inbox_try.html"),
    ),
    (
        "inbox_new.html",
        include_str!("../../../templates/ui/inbox_new.html"),
    ),
    (
        "inbox_settings.html",
        include_str!("../../../templates/ui/inbox_settings.html"),
    ),
    (
        "domains.html",
        include_str!("../../../templates/ui/domains.html"),
    ),
];

static TEMPLATE_ENV: LazyLock<Result<minijinja::Environment<'static>, minijinja::Error>> =
    LazyLock::new(|| {
        let mut env = minijinja::Environment::new();
        // `.html` names turn auto-escaping on; mail content is never marked safe.
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(env)
    });

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many failed logins from your address; try again in {0} s")]
    TooManyLogins(u64),
    #[error("internal error")]
    Internal(String),
}

impl From<ApiError> for Error {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::NotFound(what) => Self::NotFound(what),
            ApiError::Forbidden(why) => Self::Forbidden(why),
            ApiError::Unauthorized(why) => Self::Forbidden(why),
            ApiError::BadRequest(message)
            | ApiError::Conflict(message)
            | ApiError::TooMany(message)
            | ApiError::BadGateway(message)
            | ApiError::RateLimited(message) => Self::BadRequest(message),
            ApiError::Rejected { message, .. } => Self::BadRequest(message),
            ApiError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<crate::db::Error> for Error {
    fn from(err: crate::db::Error) -> Self {
        ApiError::from(err).into()
    }
}

impl From<minijinja::Error> for Error {
    fn from(err: minijinja::Error) -> Self {
        Self::Internal(format!("template: {err:#}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooManyLogins(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "dashboard request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = self.to_string();
        let mut response = match render(
            "error.html",
            json!({ "status": status.as_u16(), "message": message }),
        ) {
            Ok(html) => (status, html).into_response(),
            Err(_) => (status, message).into_response(),
        };
        if let Self::TooManyLogins(seconds) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Renders a template into an HTML response body.
fn render(name: &str, context: serde_json::Value) -> Result<axum::response::Html<String>, Error> {
    let env = TEMPLATE_ENV
        .as_ref()
        .map_err(|err| Error::Internal(format!("templates: {err:#}")))?;
    Ok(axum::response::Html(env.get_template(name)?.render(
        minijinja::Value::from(minijinja::value::Serde(context)),
    )?))
}

/// A logged-in caller, as the session middleware hands it to the pages.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    caller: Caller,
    csrf: String,
}

impl Auth {
    /// What every page's layout needs: who is logged in and the token for its forms.
    fn base(&self) -> serde_json::Value {
        json!({
            "csrf": self.csrf,
            "who": match &self.caller {
                Caller::Admin => "admin".to_owned(),
                Caller::Inbox(id) => format!("inbox {id}"),
            },
            "is_admin": self.caller == Caller::Admin,
        })
    }

    /// The only inbox this caller may see, or `None` for every inbox.
    fn only(&self) -> Option<&str> {
        match &self.caller {
            Caller::Admin => None,
            Caller::Inbox(own) => Some(own),
        }
    }
}

struct Session {
    auth: Auth,
    last_seen: Instant,
}

#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(&self, caller: Caller) -> String {
        let id = random_token();
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, session| now.duration_since(session.last_seen) < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.last_seen)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                auth: Auth {
                    caller,
                    csrf: random_token(),
                },
                last_seen: now,
            },
        );
        id
    }

    fn get(&self, id: &str) -> Option<Auth> {
        let mut sessions = self.lock();
        let now = Instant::now();
        let session = sessions.get_mut(id)?;
        if now.duration_since(session.last_seen) >= SESSION_IDLE {
            sessions.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(session.auth.clone())
    }

    fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

pub(crate) struct UiState {
    http: Arc<HttpState>,
    sessions: Sessions,
    login_throttle: LoginThrottle,
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn same_token(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a `/ui` cookie; `max_age` 0 deletes it.
fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|seconds| format!("; Max-Age={seconds}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Path=/ui"))
}

pub(super) fn router(http: Arc<HttpState>) -> Router {
    let state = Arc::new(UiState {
        http,
        sessions: Sessions::default(),
        login_throttle: LoginThrottle::default(),
    });
    let pages = Router::new()
        .route("/ui", get(inboxes::list))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/inboxes", post(manage::create))
        .route("/ui/inboxes/{id}", get(inboxes::detail))
        .route(
            "/ui/inboxes/{id}/settings",
            get(manage::settings).post(manage::save_settings),
        )
        .route("/ui/inboxes/{id}/delete", post(manage::delete))
        .route("/ui/inboxes/{id}/webhook", post(inboxes::save_webhook))
        .route("/ui/inboxes/{id}/rotate", post(inboxes::rotate_secret))
        .route("/ui/inboxes/{id}/rules", post(inboxes::save_rules))
        .route("/ui/inboxes/{id}/test-event", post(inboxes::test_event))
        .route("/ui/messages", get(messages::list))
        .route("/ui/messages/rows", get(messages::rows))
        .route("/ui/messages/{id}", get(messages::detail))
        .route("/ui/messages/{id}/raw", get(messages::raw))
        .route("/ui/messages/{id}/send-to", post(messages::send_to))
        .route("/ui/messages/{id}/reply", post(messages::reply))
        .route("/ui/messages/{id}/release", post(messages::release))
        .route(
            "/ui/messages/{id}/attachments/{attachment_id}",
            get(messages::attachment),
        )
        .route("/ui/deliveries/{id}/resend", post(messages::resend))
        .route(
            "/ui/deliveries/{id}/attempts/{attempt}/body",
            get(messages::attempt_body),
        )
        .route("/ui/domains", get(domains::list))
        .route("/ui/dead", get(messages::dead))
        .route("/ui/dead/resend-all", post(messages::resend_all))
        .route("/ui/dead/recover", post(messages::recover))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_session,
        ));
    Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/static/app.css", get(app_css))
        .route("/ui/static/app.js", get(app_js))
        .route("/ui/static/icon.svg", get(icon_svg))
        // Unknown dashboard paths answer an HTML page, not the API's JSON 404.
        .route(
            "/ui/{*rest}",
            get(|| async { Error::NotFound("page") }).post(|| async { Error::NotFound("page") }),
        )
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Resolves the session cookie into [`Auth`], or sends the browser to the login page; and on
/// every POST checks the form's `csrf` field against the session's token before the handler
/// sees the request.
async fn require_session(
    State(state): State<Arc<UiState>>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let Some(auth) =
        cookie(request.headers(), SESSION_COOKIE).and_then(|id| state.sessions.get(id))
    else {
        return Ok(if request.method() == Method::GET {
            Redirect::to("/ui/login").into_response()
        } else {
            Error::Forbidden("not logged in").into_response()
        });
    };
    let (mut parts, body) = request.into_parts();
    let body = if parts.method == Method::POST {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| Error::BadRequest("form too large".to_owned()))?;
        if !form_csrf(&bytes).is_some_and(|token| same_token(&token, &auth.csrf)) {
            return Err(Error::Forbidden(
                "the form's CSRF token is missing or wrong; reload the page and try again",
            ));
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(auth);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The `csrf` field of a urlencoded form.
fn form_csrf(body: &Bytes) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(key, _)| key == "csrf")
        .map(|(_, value)| value.into_owned())
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    error: Option<String>,
    /// The first run's single-use login link ([`crate::first_run::LoginToken`]).
    #[serde(default)]
    token: Option<String>,
}

async fn login_page(
    State(state): State<Arc<UiState>>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, Error> {
    // A GET that logs in is safe here only because the token is secret, single-use and
    // short-lived: a forged link cannot carry it, and a replayed one finds it spent.
    if let Some(presented) = &query.token
        && state.http.login_token.redeem(presented)
    {
        return Ok(logged_in(&state, Caller::Admin));
    }
    let token = random_token();
    let html = render(
        "login.html",
        json!({
            "login_csrf": token,
            "failed": query.error.is_some(),
            "link_spent": query.token.is_some(),
        }),
    )?;
    Ok((
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_CSRF_COOKIE, &token, None),
        )],
        html,
    )
        .into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    csrf: String,
}

async fn login(
    State(state): State<Arc<UiState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Error> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(expected, &form.csrf) {
        return Err(Error::Forbidden(
            "the login form expired; reload the page and try again",
        ));
    }
    let client = Client::from_ip(peer.map(|Extension(ConnectInfo(addr))| addr.ip()));
    // Checked before the key, so that a blocked client learns nothing about its guesses.
    if let Some(wait) = state.login_throttle.blocked(client, Instant::now()) {
        return Err(Error::TooManyLogins(wait.as_secs().max(1)));
    }
    let caller = match caller_for_key(&state.http, form.key.trim()).await {
        Ok(caller) => caller,
        Err(ApiError::Unauthorized(_)) => {
            state.login_throttle.failed(client, Instant::now());
            return Ok(Redirect::to("/ui/login?error=1").into_response());
        }
        Err(other) => return Err(other.into()),
    };
    state.login_throttle.succeeded(client);
    Ok(logged_in(&state, caller))
}

/// Starts a session for `caller` and sends the browser to the dashboard.
fn logged_in(state: &UiState, caller: Caller) -> Response {
    let session = state.sessions.start(caller);
    let mut response = Redirect::to("/ui").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, None),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, "", Some(0)),
    );
    response
}

async fn logout(State(state): State<Arc<UiState>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.end(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    response
}

async fn app_css() -> Response {
    static_file("text/css; charset=utf-8", APP_CSS)
}

async fn app_js() -> Response {
    static_file("text/javascript; charset=utf-8", APP_JS)
}

async fn icon_svg() -> Response {
    static_file("image/svg+xml", ICON_SVG)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A time in ms since the epoch as the pages show it.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// An RFC 3339 time from the API views as the pages show it.
fn when_text(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|time| when(time.timestamp_millis()))
        .unwrap_or_else(|_| rfc3339.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = TEMPLATE_ENV.as_ref().expect("templates compile");
        for (name, _) in TEMPLATES {
            env.get_template(name).expect("template loads");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mxhook_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn csrf_field_is_read_from_a_form() {
        let body = Bytes::from_static(b"url=x&csrf=tok%20en&other=1");
        assert_eq!(form_csrf(&body).as_deref(), Some("tok en"));
        assert_eq!(form_csrf(&Bytes::from_static(b"url=x")), None);
    }
}
