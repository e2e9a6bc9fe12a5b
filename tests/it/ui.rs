//! The dashboard at `/ui` over real HTTP: login and session cookies, CSRF on every form, an inbox
//! key confined to its inbox, hostile mail escaped; and the whole flow in a real browser
//! (headless chromium driven by tests/browser/dashboard.mjs).

use std::time::Duration;

use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::support::gateway::API_KEY;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, escaped, eventually,
    rand_token, repo_path, simple_message,
};

/// A browser-like client: no automatic redirects, cookies carried by hand.
pub(crate) struct Ui {
    base: String,
    http: reqwest::Client,
    session: Option<String>,
}

pub(crate) struct Page {
    pub(crate) status: u16,
    headers: HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect()
    }

    /// The value of the first hidden `csrf` field.
    pub(crate) fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a form with a csrf field") + marker.len();
        let end = self.body[start..].find('"').expect("end of value") + start;
        self.body[start..end].to_owned()
    }
}

fn cookie_value(set_cookie: &[String], name: &str) -> Option<String> {
    set_cookie.iter().find_map(|line| {
        line.split(';')
            .next()
            .and_then(|pair| pair.trim().strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    })
}

impl Ui {
    pub(crate) fn new(gateway: &TestGateway) -> Self {
        Self::from_address(gateway, None)
    }

    /// A client whose connections come from `local` (another loopback address: another client
    /// as far as the gateway can tell).
    fn from_address(gateway: &TestGateway, local: Option<std::net::IpAddr>) -> Self {
        Self {
            base: format!("http://{}", gateway.http),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(local)
                .build()
                .expect("client"),
            session: None,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, cookie: Option<String>) -> Page {
        let cookie = cookie.or_else(|| {
            self.session
                .as_ref()
                .map(|session| format!("mxhook_session={session}"))
        });
        let request = match cookie {
            Some(cookie) => request.header(COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.expect("dashboard request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)), None)
            .await
    }

    /// A GET with the session whose answer is kept whole (a download's bytes and headers).
    pub(crate) async fn get_response(&self, path: &str) -> reqwest::Response {
        let request = self.http.get(format!("{}{path}", self.base));
        let request = match &self.session {
            Some(session) => request.header(COOKIE, format!("mxhook_session={session}")),
            None => request,
        };
        request.send().await.expect("dashboard request")
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(
            form_post(self.http.post(format!("{}{path}", self.base)), form),
            None,
        )
        .await
    }

    /// Logs in through the form; returns the answer to the POST.
    pub(crate) async fn login(&mut self, key: &str) -> Page {
        let form = self.get("/ui/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let login_cookie =
            cookie_value(&form.set_cookies(), "mxhook_login_csrf").expect("login csrf cookie");
        let answer = self
            .send(
                form_post(
                    self.http.post(format!("{}/ui/login", self.base)),
                    &[("key", key), ("csrf", &form.csrf())],
                ),
                Some(format!("mxhook_login_csrf={login_cookie}")),
            )
            .await;
        if let Some(session) = cookie_value(&answer.set_cookies(), "mxhook_session") {
            self.session = Some(session);
        }
        answer
    }
}

/// A urlencoded form body, as a browser posts it.
fn form_post(request: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

async fn send_mail(gateway: &TestGateway, to: &str, message: &[u8]) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("sender@client.example", &[to], message)
        .await;
    assert_eq!(code, 250, "{text}");
}

/// The id of the newest message of an inbox with this subject, once it is listed.
async fn message_id(gateway: &TestGateway, inbox: &str, subject: &str) -> String {
    eventually("the message to be listed", || async {
        let (_, body) = gateway
            .api("GET", &format!("/v1/inboxes/{inbox}/messages"), None)
            .await;
        body["messages"].as_array()?.iter().find_map(|message| {
            (message["subject"].as_str() == Some(subject))
                .then(|| message["id"].as_str().map(str::to_owned))
                .flatten()
        })
    })
    .await
}

#[tokio::test]
async fn dashboard_needs_a_login_and_sets_safe_cookies() {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);

    for path in ["/ui", "/ui/messages", "/ui/inboxes/agent", "/ui/dead"] {
        let page = ui.get(path).await;
        assert_eq!(page.status, 303, "{path} without a session");
        assert_eq!(page.location(), "/ui/login", "{path}");
    }
    // A forged session id is no session.
    let forged = ui
        .send(
            ui.http.get(format!("{}/ui", ui.base)),
            Some("mxhook_session=00".to_owned()),
        )
        .await;
    assert_eq!(forged.status, 303);

    let refused = ui.login("not-a-key").await;
    assert_eq!(refused.status, 303);
    assert_eq!(refused.location(), "/ui/login?error=1");
    assert!(ui.session.is_none(), "a bad key got a session");
    let refused = ui.login("mxk_0000").await;
    assert_eq!(refused.location(), "/ui/login?error=1");
    assert!(ui.session.is_none());

    let accepted = ui.login(API_KEY).await;
    assert_eq!(accepted.status, 303);
    assert_eq!(accepted.location(), "/ui");
    let session_cookie = accepted
        .set_cookies()
        .into_iter()
        .find(|line| line.starts_with("mxhook_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(
            session_cookie.contains(flag),
            "{session_cookie} lacks {flag}"
        );
    }

    let inboxes = ui.get("/ui").await;
    assert_eq!(inboxes.status, 200, "{}", inboxes.body);
    assert!(
        inboxes.body.contains("/ui/inboxes/agent"),
        "{}",
        inboxes.body
    );
    assert!(inboxes.body.contains("/ui/inboxes/other"));
    assert!(inboxes.body.contains("Signing: Configured"));
    let csp = inboxes
        .headers
        .get("content-security-policy")
        .and_then(|value| value.to_str().ok())
        .expect("CSP header");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        inboxes.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    for path in ["/ui/messages", "/ui/inboxes/agent", "/ui/dead"] {
        let page = ui.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
    }
    let missing = ui.get("/ui/no/such/page").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("<!doctype html>"), "{}", missing.body);

    // Logging out ends the session on the server, not only in the browser.
    let csrf = inboxes.csrf();
    let out = ui.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(ui.get("/ui").await.status, 303);
}

#[tokio::test]
async fn every_post_needs_the_session_csrf_token() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);

    // The login form itself: without the cookie that pairs with its token, refused.
    let form = ui.get("/ui/login").await;
    let no_cookie = ui
        .post("/ui/login", &[("key", API_KEY), ("csrf", &form.csrf())])
        .await;
    assert_eq!(no_cookie.status, 403);
    assert!(ui.session.is_none());

    ui.login(API_KEY).await;
    let csrf = ui.get("/ui/inboxes/agent").await.csrf();
    let webhook_before = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    let rules_before = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    for path in [
        "/ui/inboxes/agent/test-event",
        "/ui/inboxes/agent/rotate",
        "/ui/inboxes/agent/rules",
        "/ui/dead/resend-all",
        "/ui/logout",
    ] {
        let missing = ui.post(path, &[("rules", "[]")]).await;
        assert_eq!(missing.status, 403, "{path} without a token");
        let wrong = ui.post(path, &[("csrf", "0123"), ("rules", "[]")]).await;
        assert_eq!(wrong.status, 403, "{path} with a wrong token");
    }
    // Nothing was sent or changed by the refused forms.
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        gateway.api("GET", "/v1/inboxes/agent/webhook", None).await,
        webhook_before,
        "the secret was not rotated"
    );
    assert_eq!(
        gateway
            .api("GET", "/v1/inboxes/agent/notifications", None)
            .await,
        rules_before
    );
    assert!(ui.get("/ui").await.status == 200, "still logged in");

    // Another session's token is no good either.
    let mut other = Ui::new(&gateway);
    other.login(API_KEY).await;
    let theirs = other.get("/ui/inboxes/agent").await.csrf();
    assert_ne!(theirs, csrf);
    let crossed = ui
        .post("/ui/inboxes/agent/test-event", &[("csrf", &theirs)])
        .await;
    assert_eq!(crossed.status, 403);

    let sent = ui
        .post("/ui/inboxes/agent/test-event", &[("csrf", &csrf)])
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    assert_eq!(sent.location(), "/ui/inboxes/agent?done=test-event");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "mxhook test event");

    // The rules editor: invalid JSON comes back with the reason and the text kept.
    let refused = ui
        .post(
            "/ui/inboxes/agent/rules",
            &[("csrf", &csrf), ("rules", "[{\"nme\": 1}]")],
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("rules"), "{}", refused.body);
    assert!(
        refused.body.contains("[{&quot;nme&quot;: 1}]"),
        "{}",
        refused.body
    );
    let rules = r#"[{"name": "verified only", "filters": {"sender_verified": true}}]"#;
    let saved = ui
        .post(
            "/ui/inboxes/agent/rules",
            &[("csrf", &csrf), ("rules", rules)],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, stored) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(stored[0]["name"], "verified only");
    // The editor shows the stored rules again, not an empty box.
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(
        page.body.contains("&quot;verified only&quot;"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn an_inbox_key_sees_only_its_inbox() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let (status, created) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();

    let mine = format!("mine {}", rand_token());
    let theirs = format!("theirs {}", rand_token());
    send_mail(
        &gateway,
        "agent@example.com",
        &simple_message("a@sender.example", "agent@example.com", &mine, "hello"),
    )
    .await;
    send_mail(
        &gateway,
        "other@example.com",
        &simple_message("a@sender.example", "other@example.com", &theirs, "hello"),
    )
    .await;
    receiver.recv().await;
    receiver.recv().await;
    let their_id = message_id(&gateway, "other", &theirs).await;
    let their_delivery = eventually("their delivery to be listed", || async {
        gateway
            .deliveries("delivered")
            .await
            .into_iter()
            .find(|delivery| delivery["message_id"] == json!(their_id))
            .and_then(|delivery| delivery["id"].as_str().map(str::to_owned))
    })
    .await;

    let mut ui = Ui::new(&gateway);
    assert_eq!(ui.login(&key).await.location(), "/ui");
    let inboxes = ui.get("/ui").await;
    assert!(inboxes.body.contains("/ui/inboxes/agent"));
    assert!(
        !inboxes.body.contains("/ui/inboxes/other"),
        "{}",
        inboxes.body
    );
    let messages = ui.get("/ui/messages").await;
    assert!(messages.body.contains(&mine), "{}", messages.body);
    assert!(!messages.body.contains(&theirs));
    let rows = ui.get("/ui/messages/rows").await;
    assert!(rows.body.contains(&mine));
    assert!(!rows.body.contains(&theirs));

    for path in [
        "/ui/inboxes/other".to_owned(),
        "/ui/messages?inbox=other".to_owned(),
        "/ui/messages/rows?inbox=other".to_owned(),
        format!("/ui/messages/{their_id}"),
        format!("/ui/messages/{their_id}/raw"),
    ] {
        let page = ui.get(&path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(!page.body.contains(&theirs), "{path}");
    }
    let csrf = inboxes.csrf();
    for path in [
        format!("/ui/deliveries/{their_delivery}/resend"),
        "/ui/inboxes/other/test-event".to_owned(),
        "/ui/inboxes/other/rotate".to_owned(),
    ] {
        let page = ui.post(&path, &[("csrf", &csrf)]).await;
        assert_eq!(page.status, 404, "{path}: {}", page.body);
    }
    receiver.assert_silent(Duration::from_millis(300)).await;
    // Resend-all touches only the caller's inbox (nothing is dead here, so nothing moves).
    let all = ui.post("/ui/dead/resend-all", &[("csrf", &csrf)]).await;
    assert_eq!(all.status, 303);
}

#[tokio::test]
async fn hostile_mail_is_escaped_and_html_bodies_are_sandboxed() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let token = rand_token();
    let subject = format!(
        "<script>alert('{token}')</script> \"quoted\" {}",
        "long".repeat(80)
    );
    let message = format!(
        "From: \"<b>Evil</b>\" <evil@sender.example>\r\nTo: agent@example.com\r\n\
         Subject: {subject}\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
         Message-ID: <{token}@sender.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n<script>plain()</script>\r\n\
         --b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <p onclick=\"x()\">hi</p><script>html()</script><img src=x onerror=\"y()\">\
         \"></iframe><script>escape()</script>\r\n--b--\r\n"
    );
    send_mail(&gateway, "agent@example.com", message.as_bytes()).await;
    receiver.recv().await;
    let id = eventually("the message to be listed", || async {
        let (_, body) = gateway.api("GET", "/v1/inboxes/agent/messages", None).await;
        body["messages"][0]["id"].as_str().map(str::to_owned)
    })
    .await;

    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    for path in ["/ui/messages".to_owned(), format!("/ui/messages/{id}")] {
        let page = ui.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains("<script>"), "{path}: unescaped script");
        assert!(!page.body.contains("<b>Evil"), "{path}");
        assert!(
            page.body
                .contains(&format!("&lt;script&gt;alert(&#x27;{token}&#x27;)"))
                || page
                    .body
                    .contains(&format!("&lt;script&gt;alert(&#39;{token}&#39;)")),
            "{path}: subject not shown escaped"
        );
    }
    let detail = ui.get(&format!("/ui/messages/{id}")).await;
    // The HTML body is only inside a sandboxed srcdoc, with no allow-scripts anywhere.
    assert!(
        detail.body.contains("<iframe class=\"html-body\" sandbox "),
        "{}",
        detail.body
    );
    assert!(!detail.body.contains("allow-scripts"));
    assert!(!detail.body.contains("</iframe><script>"));
    assert!(detail.body.contains("&lt;script&gt;html()"));
    assert!(detail.body.contains("&lt;script&gt;plain()"));
    assert_eq!(detail.body.matches("<iframe").count(), 1);
    let raw = ui.get(&format!("/ui/messages/{id}/raw")).await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"message/rfc822"[..])
    );
    assert!(
        raw.body
            .contains(&format!("Message-ID: <{token}@sender.example>"))
    );
}

#[tokio::test]
async fn inbox_page_shows_endpoint_statistics_and_the_api_reports_them() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    send_mail(
        &gateway,
        "agent@example.com",
        &simple_message("a@sender.example", "agent@example.com", "stats", "hello"),
    )
    .await;
    receiver.recv().await;
    receiver.recv().await;
    let stats = eventually("both attempts to be recorded", || async {
        let (_, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
        let stats = webhook["stats"].clone();
        (stats["attempts"] == json!(2)).then_some(stats)
    })
    .await;
    assert_eq!(stats["delivered"], 1, "{stats}");
    assert_eq!(stats["success_rate"], 0.5, "{stats}");
    assert_eq!(stats["last_status_code"], 200, "{stats}");
    assert!(stats["last_triggered"].as_str().is_some(), "{stats}");
    let (_, never) = gateway.api("GET", "/v1/inboxes/other/webhook", None).await;
    assert_eq!(never["stats"]["attempts"], 0, "{never}");
    assert_eq!(never["stats"]["last_triggered"], Value::Null);

    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let list = ui.get("/ui").await;
    assert!(list.body.contains("50%"), "{}", list.body);
    let detail = ui.get("/ui/inboxes/agent").await;
    assert!(detail.body.contains("1/2"), "{}", detail.body);
}

/// Whether the page's checkbox `name` is ticked.
fn checked(page: &Page, name: &str) -> bool {
    let marker = format!("name=\"{name}\" value=\"1\"");
    let start = page.body.find(&marker).expect("the checkbox") + marker.len();
    let end = page.body[start..].find('>').expect("end of tag") + start;
    page.body[start..end].contains("checked")
}

/// Whether `<option value="{value}">` is the selected one.
fn selected(page: &Page, value: &str) -> bool {
    page.body
        .contains(&format!("<option value=\"{value}\" selected>"))
}

#[tokio::test]
async fn webhook_form_round_trips_every_setting_and_keeps_refused_input() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(410)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let csrf = ui.get("/ui/inboxes/agent").await.csrf();
    let url = receiver.url();
    let api_webhook = || async {
        let (status, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
        assert_eq!(status, 200, "{webhook}");
        webhook
    };

    // Every setting away from its default at once.
    let saved = ui
        .post(
            "/ui/inboxes/agent/webhook",
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("enabled", "1"),
                ("signature", "hmac-sha256"),
                ("payload", "botmailroom"),
                ("signature_header", "X-Hub-Sig"),
                ("signature_format", "hex"),
                ("ordered", "1"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(saved.location(), "/ui/inboxes/agent?done=webhook");
    let webhook = api_webhook().await;
    for (key, value) in [
        ("enabled", json!(true)),
        ("signature", json!("hmac-sha256")),
        ("payload", json!("botmailroom")),
        ("signature_header", json!("X-Hub-Sig")),
        ("signature_format", json!("hex")),
        ("verify_tls", json!(false)),
        ("ordered", json!(true)),
    ] {
        assert_eq!(webhook[key], value, "{key}: {webhook}");
    }
    let page = ui.get("/ui/inboxes/agent?done=webhook").await;
    assert!(page.body.contains("Webhook settings saved."));
    assert!(page.body.contains("value=\"X-Hub-Sig\""), "{}", page.body);
    for value in ["hmac-sha256", "botmailroom", "hex"] {
        assert!(selected(&page, value), "{value} not selected");
    }
    assert!(checked(&page, "enabled") && checked(&page, "ordered"));
    assert!(!checked(&page, "verify_tls"));

    // And back the other way. The hmac-only fields are left alone under another scheme, even
    // when what they hold would be refused.
    let saved = ui
        .post(
            "/ui/inboxes/agent/webhook",
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("signature", "standard"),
                ("payload", "mxhook"),
                ("signature_header", "Not A Header"),
                ("signature_format", "sha256=hex"),
                ("verify_tls", "1"),
            ],
        )
        .await;
    // A hex secret cannot sign `standard`: the new one is shown once.
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("whsec_"), "{}", saved.body);
    let webhook = api_webhook().await;
    for (key, value) in [
        ("enabled", json!(false)),
        ("signature", json!("standard")),
        ("payload", json!("mxhook")),
        ("signature_header", json!("X-Hub-Sig")),
        ("signature_format", json!("hex")),
        ("verify_tls", json!(true)),
        ("ordered", json!(false)),
    ] {
        assert_eq!(webhook[key], value, "{key}: {webhook}");
    }
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(selected(&page, "standard") && selected(&page, "mxhook"));
    assert!(checked(&page, "verify_tls"));
    assert!(!checked(&page, "enabled") && !checked(&page, "ordered"));

    // Refused values come back next to the form with the reason and everything typed kept;
    // nothing is stored.
    let typed_url = format!("{url}?typed=1");
    for (field, value, reason) in [
        (
            "signature_header",
            "Bad Header",
            "is not a valid HTTP header name",
        ),
        ("signature_header", "Content-Type", "is reserved"),
        ("signature_format", "base64", "unknown variant"),
        ("signature", "rot13", "unknown variant"),
    ] {
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("url", typed_url.as_str()),
            ("enabled", "1"),
            ("signature", "hmac-sha256"),
            ("payload", "botmailroom"),
            ("signature_header", "X-Typed"),
            ("signature_format", "hex"),
            ("ordered", "1"),
        ];
        for pair in &mut form {
            if pair.0 == field {
                pair.1 = value;
            }
        }
        let refused = ui.post("/ui/inboxes/agent/webhook", &form).await;
        assert_eq!(refused.status, 400, "{field}={value}: {}", refused.body);
        let error_at = refused
            .body
            .find("id=\"webhook-error\"")
            .expect("the error next to the webhook form");
        let form_at = refused.body.find("id=\"webhook-form\"").expect("form");
        assert!(error_at < form_at, "the error is not next to the form");
        assert!(
            refused.body[error_at..form_at].contains(reason),
            "{field}: {}",
            refused.body
        );
        assert!(
            refused
                .body
                .contains(&format!("value=\"{}\"", escaped(&typed_url))),
            "{field}: the typed URL was dropped"
        );
        if field == "signature_header" {
            assert!(refused.body.contains(&format!("value=\"{value}\"")));
        } else {
            assert!(refused.body.contains("value=\"X-Typed\""));
        }
        assert!(checked(&refused, "ordered") && !checked(&refused, "verify_tls"));
        assert!(selected(&refused, "botmailroom"));
    }
    let refused = ui
        .post(
            "/ui/inboxes/agent/webhook",
            &[("csrf", &csrf), ("url", "ftp://nowhere.example/<x>")],
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("url: "), "{}", refused.body);
    assert!(
        refused.body.contains(&format!(
            "value=\"{}\"",
            escaped("ftp://nowhere.example/<x>")
        )),
        "{}",
        refused.body
    );
    assert_eq!(
        api_webhook().await["signature"],
        "standard",
        "a refused form changed it"
    );

    // A 410 makes the gateway switch the webhook off; the page says why and re-enables it.
    let saved = ui
        .post(
            "/ui/inboxes/agent/webhook",
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("enabled", "1"),
                ("signature", "standard"),
                ("payload", "mxhook"),
                ("verify_tls", "1"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    send_mail(
        &gateway,
        "agent@example.com",
        &simple_message("a@sender.example", "agent@example.com", "gone", "hello"),
    )
    .await;
    receiver.recv().await;
    eventually("the webhook to be switched off", || async {
        api_webhook().await["disabled_reason"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(
        page.body.contains("switched this webhook off"),
        "{}",
        page.body
    );
    assert!(page.body.contains("410 Gone"), "{}", page.body);
    assert!(!checked(&page, "enabled"));
    assert!(
        page.body
            .contains("form=\"webhook-form\" name=\"reenable\"")
    );
    let again = ui
        .post(
            "/ui/inboxes/agent/webhook",
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("signature", "standard"),
                ("payload", "mxhook"),
                ("verify_tls", "1"),
                ("reenable", "1"),
            ],
        )
        .await;
    assert_eq!(again.status, 303, "{}", again.body);
    let webhook = api_webhook().await;
    assert_eq!(webhook["enabled"], true, "{webhook}");
    assert_eq!(webhook["disabled_reason"], Value::Null, "{webhook}");
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(!page.body.contains("switched this webhook off"));
}

/// An attribute value as the browser reads it.
fn unescaped(text: &str) -> String {
    text.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The `href` of the link with this id, if the page shows it.
fn link(page: &Page, id: &str) -> Option<String> {
    let start = page.body.find(&format!("id=\"{id}\""))?;
    let tag_start = page.body[..start].rfind('<')?;
    let tag_end = page.body[start..].find('>')? + start;
    let tag = &page.body[tag_start..tag_end];
    if tag.contains(" hidden") {
        return None;
    }
    let href = tag.split("href=\"").nth(1)?.split('"').next()?;
    Some(unescaped(href))
}

/// The paging subjects a messages page lists.
fn paged_subjects(page: &Page) -> Vec<String> {
    page.body
        .split("paging-")
        .skip(1)
        .map(|rest| format!("paging-{}", &rest[..2]))
        .collect()
}

#[tokio::test]
async fn messages_page_through_older_and_newer_with_filters_kept() {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    // 30 for the filtered inbox, with mail for another inbox in between that must never show.
    for n in 1..=30 {
        send_mail(
            &gateway,
            "agent@example.com",
            &simple_message(
                "a@sender.example",
                "agent@example.com",
                &format!("paging-{n:02}"),
                "hi",
            ),
        )
        .await;
        if n % 6 == 0 {
            send_mail(
                &gateway,
                "other@example.com",
                &simple_message(
                    "a@sender.example",
                    "other@example.com",
                    &format!("paging-x{}", n / 6),
                    "hi",
                ),
            )
            .await;
        }
    }
    eventually("all 30 to be listed", || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/agent/messages?limit=100", None)
            .await;
        (body["messages"].as_array()?.len() == 30).then_some(())
    })
    .await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;

    let first = ui.get("/ui/messages?inbox=agent&per_page=10").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let page1 = paged_subjects(&first);
    assert_eq!(page1.len(), 10, "{page1:?}");
    assert!(page1.contains(&"paging-30".to_owned()), "{page1:?}");
    assert!(
        link(&first, "newer").is_none(),
        "the first page has nothing newer"
    );
    // Only the first page follows new mail.
    assert!(first.body.contains("data-rows-url="));
    let older = link(&first, "older").expect("an older link");
    for kept in ["inbox=agent", "per_page=10", "before="] {
        assert!(older.contains(kept), "{older} lacks {kept}");
    }

    let second = ui.get(&older).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let page2 = paged_subjects(&second);
    assert_eq!(page2.len(), 10, "{page2:?}");
    assert!(!second.body.contains("data-rows-url="));
    // Resend on page 2 comes back to page 2.
    assert!(
        second
            .body
            .contains(&format!("name=\"back\" value=\"{}\"", escaped(&older))),
        "{}",
        second.body
    );
    let third = ui.get(&link(&second, "older").expect("older again")).await;
    let page3 = paged_subjects(&third);
    assert_eq!(page3.len(), 10, "{page3:?}");
    assert!(page3.contains(&"paging-01".to_owned()), "{page3:?}");
    assert!(
        link(&third, "older").is_none(),
        "nothing is older than the first mail"
    );

    let mut all: Vec<String> = [&page1, &page2, &page3]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "pages overlap or miss mail: {all:?}");
    assert!(
        all.iter().all(|subject| !subject.starts_with("paging-x")),
        "{all:?}"
    );
    // Newest first within each page, and every page older than the one before.
    for pages in [[&page1, &page2], [&page2, &page3]] {
        assert!(pages[0].last() > pages[1].first(), "{pages:?}");
    }
    for page in [&page1, &page2, &page3] {
        assert!(page.windows(2).all(|pair| pair[0] > pair[1]), "{page:?}");
    }

    // And back: "newer" from page 3 is page 2 again, filters kept.
    let newer = link(&third, "newer").expect("a newer link");
    assert!(
        newer.contains("inbox=agent") && newer.contains("after="),
        "{newer}"
    );
    let back = ui.get(&newer).await;
    assert_eq!(paged_subjects(&back), page2);
    let top = ui.get(&link(&back, "newer").expect("newer again")).await;
    assert_eq!(paged_subjects(&top), page1);
    assert!(link(&top, "newer").is_none(), "{}", top.body);

    // A filter that matches nothing older: an empty page that still links back.
    let none = ui
        .get("/ui/messages?inbox=agent&status=dead&per_page=10")
        .await;
    assert!(paged_subjects(&none).is_empty());
    assert!(link(&none, "older").is_none());
    // A page size that is not a number is the default, not an error.
    let junk = ui.get("/ui/messages?per_page=lots").await;
    assert_eq!(junk.status, 200);
    assert_eq!(paged_subjects(&junk).len(), 35);
}

#[tokio::test]
async fn dead_letters_show_the_escaped_subject_and_sender() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    let token = rand_token();
    let subject = format!("<img src=x onerror=alert(1)> dead {token}");
    let message = format!(
        "From: \"<b>Mallory</b>\" <mallory@sender.example>\r\nTo: agent@example.com\r\n\
         Subject: {subject}\r\nDate: Thu, 16 Apr 2026 12:00:00 +0000\r\n\
         Message-ID: <{token}@sender.example>\r\n\r\nhi\r\n"
    );
    send_mail(&gateway, "agent@example.com", message.as_bytes()).await;
    receiver.recv().await;
    receiver.recv().await;
    let id = message_id(&gateway, "agent", &subject).await;
    eventually("the delivery to be dead-lettered", || async {
        (!gateway.deliveries("dead").await.is_empty()).then_some(())
    })
    .await;

    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get("/ui/dead").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let row_at = page
        .body
        .find(&format!("/ui/messages/{id}"))
        .expect("the dead message");
    let row = &page.body[row_at..];
    let row = &row[..row.find("</tr>").expect("end of row")];
    assert!(row.contains(&escaped(&subject)), "{row}");
    assert!(row.contains(&id), "{row}");
    assert!(!page.body.contains("<img"), "{}", page.body);
    let (_, listed) = gateway.api("GET", "/v1/inboxes/agent/messages", None).await;
    let sender = listed["messages"]
        .as_array()
        .and_then(|messages| messages.iter().find(|message| message["id"] == json!(id)))
        .and_then(|message| message["sender"].as_str())
        .expect("the stored sender");
    assert!(sender.contains("mallory@sender.example"), "{sender}");
    assert!(row.contains(&escaped(sender)), "{sender} not in {row}");
    assert!(!page.body.contains("<b>Mallory"));
}

#[tokio::test]
async fn repeated_failed_logins_are_answered_429() {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);
    for attempt in 1..=10 {
        let refused = ui.login(&format!("wrong-{attempt}")).await;
        assert_eq!(refused.status, 303, "attempt {attempt}: {}", refused.body);
        assert_eq!(refused.location(), "/ui/login?error=1", "attempt {attempt}");
    }
    let blocked = ui.login("wrong-11").await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(
        blocked.body.contains("too many failed logins"),
        "{}",
        blocked.body
    );
    let retry: u64 = blocked
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // While blocked even the right key is not checked, so a lucky guess is not confirmed.
    let right = ui.login(API_KEY).await;
    assert_eq!(right.status, 429);
    assert!(ui.session.is_none());
    // The block is per client address: another client still logs in.
    let mut other = Ui::from_address(&gateway, "127.0.0.2".parse().ok());
    let welcomed = other.login(API_KEY).await;
    assert_eq!(welcomed.status, 303, "{}", welcomed.body);
    assert!(other.session.is_some(), "another address is not blocked");
    // The API's Bearer check is not the dashboard's throttle.
    let (status, _) = gateway.api("GET", "/v1/inboxes", None).await;
    assert_eq!(status, 200);
}

/// The whole flow in headless chromium. Fails (never skips) when chromium or playwright-core is
/// missing: scripts/test installs both.
#[tokio::test]
async fn dashboard_works_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let browser_dir = repo_path("tests/browser");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/test does)"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci` in tests/browser (scripts/test does)"
    );

    // Two failures kill the delivery (max_retries 1); the resend then meets a 200.
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    // Hostile and long: it must show as text and must not widen the page at phone width.
    let subject = format!(
        "Browser test {} <b>bold</b> <script>window.__xss=1</script> {}",
        rand_token(),
        "x".repeat(150)
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_path("target"));
    let screenshots = target.join("screenshots");
    // Screenshots left by an earlier run must not pass for this run's.
    match std::fs::remove_dir_all(&screenshots) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            panic!("clearing {}: {err}", screenshots.display())
        }
        _ => {}
    }

    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("MXHOOK_URL", format!("http://{}", gateway.http))
        .env("MXHOOK_KEY", API_KEY)
        .env("MXHOOK_SUBJECT", &subject)
        .env("MXHOOK_RECEIVER", receiver.url())
        .env("MXHOOK_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read node output") {
            if line == "READY_FOR_MAIL" {
                send_mail(
                    &gateway,
                    "agent@example.com",
                    &simple_message("a@sender.example", "agent@example.com", &subject, "hi"),
                )
                .await;
            }
            if line == "READY_FOR_INBOX_MAIL" {
                send_mail(
                    &gateway,
                    "browser-made@example.com",
                    &simple_message(
                        "a@sender.example",
                        "browser-made@example.com",
                        "to the browser-made inbox",
                        "hi",
                    ),
                )
                .await;
            }
            seen.push(line);
        }
        child.wait().await.expect("node exits")
    };
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes within 4 minutes");
    assert!(
        status.success(),
        "the browser test failed (stderr above); its steps:\n{}",
        seen.join("\n")
    );
    assert!(seen.iter().any(|line| line == "BROWSER_TEST_OK"));
    // Two failures, then the resend delivered.
    for _ in 0..3 {
        receiver.recv().await;
    }
    // Then the inbox the browser made got its mail, signed with the secret it was shown.
    let made = receiver.recv().await;
    assert_eq!(made.json()["agent_id"], "browser-made");
    assert!(
        made.header("x-agentmail-signature")
            .is_some_and(|signature| signature.starts_with("v1=")),
        "{:?}",
        made.headers
    );
    for name in [
        "messages-laptop.png",
        "messages-phone.png",
        "secret-laptop.png",
        "inbox-chart-laptop.png",
    ] {
        assert!(screenshots.join(name).exists(), "{name} not saved");
    }
}

/// The chart of one endpoint on the inbox page: its `<svg>` element, whole.
fn chart_of<'p>(page: &'p Page, endpoint: &str) -> &'p str {
    let start = page
        .body
        .find(&format!(
            "<svg class=\"chart\" data-endpoint=\"{endpoint}\""
        ))
        .unwrap_or_else(|| panic!("no chart of {endpoint} in {}", page.body));
    let end = page.body[start..].find("</svg>").expect("end of the chart") + start;
    &page.body[start..end]
}

/// The number written before `label` in `text` (`3 delivered` → 3).
fn count_before(text: &str, label: &str) -> i64 {
    let end = text
        .find(&format!(" {label}"))
        .unwrap_or_else(|| panic!("no {label} in {text}"));
    let start = text[..end].rfind(' ').map_or(0, |at| at + 1);
    text[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {label} in {text}"))
}

/// The text of every `<title>` or `<desc>` element of a chart, in order.
fn chart_texts(chart: &str, element: &str) -> Vec<String> {
    let open = format!("<{element}");
    let close = format!("</{element}>");
    let mut texts = Vec::new();
    let mut rest = chart;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at..];
        let body = rest.find('>').expect("end of tag") + 1;
        let end = rest.find(&close).expect("closing tag");
        texts.push(rest[body..end].to_owned());
        rest = &rest[end..];
    }
    texts
}

/// The nearest-rank percentile, computed here from the API's attempt log.
fn nearest_rank(mut values: Vec<i64>, p: usize) -> i64 {
    values.sort_unstable();
    values[(p * values.len()).div_ceil(100).max(1) - 1]
}

#[tokio::test]
async fn inbox_page_charts_each_endpoints_attempts_by_hour_with_latency() {
    // The inbox webhook refuses twice, then takes everything; the rule's receiver is not there.
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let rules = json!([{"name": "nowhere",
                        "channels": {"webhook": {"url": "http://127.0.0.1:1/hook", "max_retries": 0}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");
    let rule_endpoint = format!(
        "rule:{} (webhook)",
        body[0]["id"].as_str().expect("rule id")
    );
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let before = ui.get("/ui/inboxes/agent").await;
    assert!(
        !before.body.contains("<svg class=\"chart\""),
        "no endpoint has had an attempt yet: {}",
        before.body
    );

    for subject in ["chart one", "chart two"] {
        send_mail(
            &gateway,
            "agent@example.com",
            &simple_message("a@sender.example", "agent@example.com", subject, "hi"),
        )
        .await;
    }
    for _ in 0..4 {
        receiver.recv().await;
    }
    let attempts = eventually("every attempt recorded", || async {
        let all = gateway.all_deliveries().await;
        let mut attempts = Vec::new();
        for delivery in &all {
            let id = delivery["id"].as_str()?;
            for attempt in gateway.attempts(id).await {
                attempts.push((delivery["target"].clone(), attempt));
            }
        }
        let finished = all.len() == 4 && all.iter().all(|d| d["status"] != "pending");
        (finished && attempts.len() == 6).then_some(attempts)
    })
    .await;
    let inbox_latencies: Vec<i64> = attempts
        .iter()
        .filter(|(target, _)| *target == json!(receiver.url()))
        .map(|(_, attempt)| attempt["latency_ms"].as_i64().expect("latency"))
        .collect();
    assert_eq!(inbox_latencies.len(), 4);

    let page = ui.get("/ui/inboxes/agent").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let inbox = chart_of(&page, "inbox (webhook)");
    let titles = chart_texts(inbox, "title");
    assert!(titles[0].starts_with("Attempts per hour"), "{titles:?}");
    assert_eq!(
        titles.len(),
        1 + 24,
        "a title for the chart and one per hour"
    );
    let summary = &chart_texts(inbox, "desc")[0];
    assert_eq!(count_before(summary, "delivered"), 2, "{summary}");
    assert_eq!(count_before(summary, "http_error"), 2, "{summary}");
    assert_eq!(count_before(summary, "error,"), 0, "{summary}");
    assert_eq!(count_before(summary, "not_sent"), 0, "{summary}");
    assert_eq!(
        count_before(summary, "ms, p99"),
        nearest_rank(inbox_latencies.clone(), 50),
        "{summary}"
    );
    assert_eq!(
        count_before(summary, "ms."),
        nearest_rank(inbox_latencies, 99),
        "{summary}"
    );
    // The hours add up to the window (two hours when the test straddles a full hour).
    let hours = &titles[1..];
    let sum = |label: &str| {
        hours
            .iter()
            .map(|hour| count_before(hour, label))
            .sum::<i64>()
    };
    assert_eq!((sum("delivered"), sum("http_error")), (2, 2), "{hours:?}");
    assert!(inbox.contains("<polyline"), "latency lines are drawn");

    let rule = chart_of(&page, &rule_endpoint);
    let summary = &chart_texts(rule, "desc")[0];
    assert_eq!(count_before(summary, "error,"), 2, "{summary}");
    assert_eq!(count_before(summary, "delivered"), 0, "{summary}");
    assert!(page.body.contains("role=\"img\""));
}

#[tokio::test]
async fn dead_letter_page_recovers_a_window_of_an_inbox() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    send_mail(
        &gateway,
        "agent@example.com",
        &simple_message("a@sender.example", "agent@example.com", "recover me", "hi"),
    )
    .await;
    receiver.recv().await;
    receiver.recv().await;
    eventually("the delivery to be dead-lettered", || async {
        (!gateway.deliveries("dead").await.is_empty()).then_some(())
    })
    .await;

    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get("/ui/dead").await;
    assert!(page.body.contains("id=\"recover-form\""), "{}", page.body);
    let csrf = page.csrf();
    let refused = ui
        .post(
            "/ui/dead/recover",
            &[("csrf", &csrf), ("inbox", "agent"), ("since", "last week")],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("since"), "{}", refused.body);
    assert_eq!(gateway.deliveries("dead").await.len(), 1);

    let answer = ui
        .post(
            "/ui/dead/recover",
            &[
                ("csrf", &csrf),
                ("inbox", "agent"),
                ("since", "2000-01-01T00:00"),
                ("until", ""),
                ("endpoint", "inbox"),
                ("status", "dead"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location(), "/ui/dead?requeued=1");
    let shown = ui.get(answer.location()).await;
    assert!(
        shown.body.contains("Requeued 1 delivery."),
        "{}",
        shown.body
    );
    let again = receiver.recv().await.json();
    assert_eq!(again["subject"], "recover me");
    eventually("the recovered delivery delivered", || async {
        (gateway.deliveries("delivered").await.len() == 1).then_some(())
    })
    .await;
}

/// Whether the page's event checkbox for `event_type` is ticked.
fn event_checked(page: &Page, event_type: &str) -> bool {
    let marker = format!("value=\"{event_type}\"");
    let start = page.body.find(&marker).expect("the event checkbox") + marker.len();
    let end = page.body[start..].find('>').expect("end of tag") + start;
    page.body[start..end].contains("checked")
}

#[tokio::test]
async fn webhook_form_sets_the_events_it_receives() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get("/ui/inboxes/agent").await;
    // The default: mail.received and every calendar type.
    for (event_type, ticked) in [
        ("mail.received", true),
        ("mail.quarantined", false),
        ("calendar.booking.created", true),
        ("calendar.booking.rescheduled", true),
        ("delivery.dead", false),
        ("endpoint.disabled", false),
    ] {
        assert_eq!(event_checked(&page, event_type), ticked, "{event_type}");
    }
    let csrf = page.csrf();
    let url = receiver.url();
    let post = |boxes: Vec<(&'static str, &'static str)>| {
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("url", url.as_str()),
            ("enabled", "1"),
            ("verify_tls", "1"),
            ("events_shown", "1"),
        ];
        form.extend(boxes);
        let ui = &ui;
        async move { ui.post("/ui/inboxes/agent/webhook", &form).await }
    };
    let saved = post(vec![
        ("event_1", "mail.quarantined"),
        ("event_5", "delivery.dead"),
    ])
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(
        webhook["events"],
        json!(["mail.quarantined", "delivery.dead"])
    );
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(event_checked(&page, "delivery.dead"));
    assert!(!event_checked(&page, "mail.received"));

    // Every calendar type ticked reads back as the default's `calendar.*`.
    let saved = post(vec![
        ("event_0", "mail.received"),
        ("event_2", "calendar.booking.created"),
        ("event_3", "calendar.booking.cancelled"),
        ("event_4", "calendar.booking.rescheduled"),
    ])
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(webhook["events"], json!(["mail.received", "calendar.*"]));
}

/// An admin creates an inbox from the Inboxes page, sets its webhook on its page, receives a
/// signed delivery, edits its addresses and status, and deletes it (typing its id); an inbox
/// key can do none of the lifecycle.
#[tokio::test]
async fn an_inbox_is_created_edited_and_deleted_from_the_dashboard() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;

    let list = ui.get("/ui").await;
    assert!(
        list.body.contains("action=\"/ui/inboxes\""),
        "{}",
        list.body
    );
    let csrf = list.csrf();
    let created = ui
        .post(
            "/ui/inboxes",
            &[
                ("csrf", &csrf),
                ("id", "made-here"),
                ("name", "Made in the dashboard"),
                ("addresses", "made@ui.test\r\nalso@ui.test"),
                ("status", "enabled"),
                ("policy_action", "tag"),
                ("block_senders", "spam.example"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    assert_eq!(created.location(), "/ui/inboxes/made-here");
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/made-here", None).await;
    assert_eq!(status, 200);
    assert_eq!(inbox["name"], "Made in the dashboard");
    assert_eq!(inbox["addresses"], json!(["also@ui.test", "made@ui.test"]));
    assert_eq!(inbox["block_senders"], json!(["spam.example"]));

    // A refused form says why, and changes nothing.
    let taken = ui
        .post(
            "/ui/inboxes",
            &[
                ("csrf", &csrf),
                ("id", "other-one"),
                ("addresses", "made@ui.test"),
            ],
        )
        .await;
    assert_eq!(taken.status, 400, "{}", taken.body);
    assert_eq!(
        gateway.api("GET", "/v1/inboxes/other-one", None).await.0,
        404
    );

    // Its webhook, set from its page, receives a signed delivery.
    let page = ui.get("/ui/inboxes/made-here").await;
    assert!(page.body.contains("/ui/inboxes/made-here/settings"));
    let secret_page = ui
        .post(
            "/ui/inboxes/made-here/webhook",
            &[
                ("csrf", &page.csrf()),
                ("url", &receiver.url()),
                ("enabled", "1"),
                ("signature", "agentmail"),
                ("payload", "mxhook"),
                ("signature_header", ""),
                ("signature_format", "sha256=hex"),
            ],
        )
        .await;
    assert_eq!(secret_page.status, 200, "{}", secret_page.body);
    send_mail(
        &gateway,
        "made@ui.test",
        &simple_message("a@client.example", "made@ui.test", "to the new inbox", "hi"),
    )
    .await;
    let delivered = receiver.recv().await;
    assert_eq!(delivered.json()["agent_id"], "made-here");
    assert!(
        delivered
            .header("x-agentmail-signature")
            .is_some_and(|signature| !signature.is_empty()),
        "{:?}",
        delivered.headers
    );

    // Edited: other addresses, disabled.
    let settings = ui.get("/ui/inboxes/made-here/settings").await;
    assert_eq!(settings.status, 200, "{}", settings.body);
    assert!(settings.body.contains("also@ui.test"), "{}", settings.body);
    let saved = ui
        .post(
            "/ui/inboxes/made-here/settings",
            &[
                ("csrf", &settings.csrf()),
                ("name", "Renamed"),
                ("addresses", "renamed@ui.test"),
                ("status", "disabled"),
                ("policy_action", "quarantine"),
                ("dmarc_pass_required", "1"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, inbox) = gateway.api("GET", "/v1/inboxes/made-here", None).await;
    assert_eq!(inbox["name"], "Renamed");
    assert_eq!(inbox["status"], "disabled");
    assert_eq!(inbox["addresses"], json!(["renamed@ui.test"]));
    assert_eq!(inbox["policy_action"], "quarantine");
    assert_eq!(inbox["dmarc_pass_required"], true);
    assert_eq!(inbox["block_senders"], json!([]));

    // An inbox key sees no create form and may not delete.
    let (_, key) = gateway
        .api("POST", "/v1/inboxes/made-here/keys", Some(json!({})))
        .await;
    let mut limited = Ui::new(&gateway);
    limited
        .login(key["key"].as_str().expect("an inbox key"))
        .await;
    let own = limited.get("/ui").await;
    assert!(!own.body.contains("action=\"/ui/inboxes\""));
    let refused = limited
        .post(
            "/ui/inboxes/made-here/delete",
            &[("csrf", &own.csrf()), ("confirm", "made-here")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // Deleting needs the id typed again.
    let csrf = ui.get("/ui/inboxes/made-here/settings").await.csrf();
    let unconfirmed = ui
        .post(
            "/ui/inboxes/made-here/delete",
            &[("csrf", &csrf), ("confirm", "made")],
        )
        .await;
    assert_eq!(unconfirmed.status, 400);
    assert_eq!(
        gateway.api("GET", "/v1/inboxes/made-here", None).await.0,
        200
    );
    let deleted = ui
        .post(
            "/ui/inboxes/made-here/delete",
            &[("csrf", &csrf), ("confirm", "made-here")],
        )
        .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    assert_eq!(deleted.location(), "/ui");
    assert_eq!(
        gateway.api("GET", "/v1/inboxes/made-here", None).await.0,
        404
    );
}

/// The text of `<pre id="{id}">` on a page, unescaped as a browser shows it.
fn pre_text(body: &str, id: &str) -> Option<String> {
    let marker = format!("<pre id=\"{id}\">");
    let start = body.find(&marker)? + marker.len();
    let end = body[start..].find("</pre>")? + start;
    Some(
        body[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&#x2f;", "/")
            .replace("&amp;", "&"),
    )
}

/// Runs a page's verification snippet on a received delivery: `true` when it says valid.
fn snippet_says_valid(
    language: &str,
    snippet: &str,
    secret: &str,
    body: &[u8],
    headers: &HeaderMap,
) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).expect("write body");
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(value.to_str().expect("ascii header")),
            )
        })
        .collect();
    let headers_path = dir.path().join("headers.json");
    std::fs::write(&headers_path, Value::Object(headers).to_string()).expect("write headers");
    let (program, script) = match language {
        "python" => (
            "python3",
            format!(
                "{snippet}\nimport json, sys\nprint(verify(open(sys.argv[1], 'rb').read(), json.load(open(sys.argv[2]))))\n"
            ),
        ),
        _ => (
            "node",
            format!(
                "{snippet}\nconst fs = require('node:fs');\nconsole.log(verify(fs.readFileSync(process.argv[2]), JSON.parse(fs.readFileSync(process.argv[3], 'utf8'))) ? 'True' : 'False');\n"
            ),
        ),
    };
    let script_path = dir.path().join("verify");
    std::fs::write(&script_path, script).expect("write script");
    let output = std::process::Command::new(program)
        .arg(&script_path)
        .arg(&body_path)
        .arg(&headers_path)
        .env("MXHOOK_WEBHOOK_SECRET", secret)
        .output()
        .expect("run the snippet");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{language} snippet failed: {}\n{snippet}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim() == "True"
}

/// The inbox page shows the commands that send it a test mail and, for each signature scheme,
/// Python and Node code that accepts the real signed delivery and refuses a changed body.
#[tokio::test]
async fn the_inbox_page_shows_send_commands_and_verification_code_that_works() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    for (scheme, header, format) in [
        ("agentmail", "", "sha256=hex"),
        ("standard", "", "sha256=hex"),
        ("botmailroom", "", "sha256=hex"),
        ("hmac-sha256", "X-Custom-Sig", "hex"),
        ("hmac-sha256", "", "sha256=hex"),
    ] {
        let id = format!("try-{scheme}-{}", rand_token());
        let address = format!("{id}@try.test");
        let (status, _) = gateway
            .api(
                "POST",
                "/v1/inboxes",
                Some(json!({"id": id, "addresses": [address]})),
            )
            .await;
        assert_eq!(status, 201);
        let mut webhook = json!({"url": receiver.url(), "signature": scheme});
        if scheme == "hmac-sha256" {
            webhook["signature_format"] = json!(format);
            if !header.is_empty() {
                webhook["signature_header"] = json!(header);
            }
        }
        let (status, body) = gateway
            .api("PUT", &format!("/v1/inboxes/{id}/webhook"), Some(webhook))
            .await;
        assert_eq!(status, 200, "{body}");
        let secret = body["signing_secret"].as_str().expect("secret").to_owned();

        let page = ui.get(&format!("/ui/inboxes/{id}")).await;
        assert_eq!(page.status, 200);
        assert!(!page.body.contains(&secret), "the page shows the secret");
        let swaks = pre_text(&page.body, "send-swaks").expect("a swaks line");
        assert_eq!(
            swaks,
            format!(
                "swaks --server 127.0.0.1 --port {} --from you@example.com --to {address}",
                gateway.smtp.port()
            )
        );
        let send_python = pre_text(&page.body, "send-python").expect("a Python send line");
        // The page's Python line, run as a shell would, delivers to this inbox.
        // Not a blocking wait: the gateway answering it runs on this test's runtime.
        let sent = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&send_python)
            .output()
            .await
            .expect("run the send line");
        assert!(sent.status.success(), "{sent:?}");
        let delivered = receiver.recv().await;
        assert_eq!(delivered.json()["agent_id"], json!(id));

        for language in ["python", "node"] {
            let snippet = pre_text(&page.body, &format!("verify-{language}"))
                .unwrap_or_else(|| panic!("a {language} snippet for {scheme}"));
            assert!(
                snippet_says_valid(
                    language,
                    &snippet,
                    &secret,
                    &delivered.body,
                    &delivered.headers
                ),
                "{language} {scheme} {header}: the real delivery did not verify\n{snippet}"
            );
            let mut changed = delivered.body.to_vec();
            changed.push(b' ');
            assert!(
                !snippet_says_valid(language, &snippet, &secret, &changed, &delivered.headers),
                "{language} {scheme}: a changed body verified"
            );
        }
    }
}
