//! The dashboard's parts of issue 19: the inbox webhook form's delivery settings (custom
//! headers, timeout, retries) round-trip through the API, and the message page's "Send to URL"
//! POSTs the message once and shows what the receiver answered.

use std::time::Duration;

use serde_json::json;

use crate::support::gateway::API_KEY;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};
use crate::ui::Ui;

#[tokio::test]
async fn webhook_form_sets_custom_headers_timeout_and_retries() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let csrf = ui.get("/ui/inboxes/agent").await.csrf();
    let url = receiver.url();
    let form = |headers: &'static str, timeout: &'static str, retries: &'static str| {
        let csrf = csrf.clone();
        let url = url.clone();
        move || {
            vec![
                ("csrf".to_owned(), csrf.clone()),
                ("url".to_owned(), url.clone()),
                ("enabled".to_owned(), "1".to_owned()),
                ("custom_headers".to_owned(), headers.to_owned()),
                ("timeout_s".to_owned(), timeout.to_owned()),
                ("max_retries".to_owned(), retries.to_owned()),
            ]
        }
    };
    let post = |fields: Vec<(String, String)>| {
        let ui = &ui;
        async move {
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            ui.post("/ui/inboxes/agent/webhook", &fields).await
        }
    };

    let saved = post(form("X-Team: ops\r\nX-Env:  staging \r\n", "7", "2")()).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(
        webhook["custom_headers"],
        json!({"X-Team": "ops", "X-Env": "staging"})
    );
    assert_eq!(
        (&webhook["timeout_s"], &webhook["max_retries"]),
        (&json!(7), &json!(2))
    );
    let page = ui.get("/ui/inboxes/agent").await;
    assert!(
        page.body.contains("X-Env: staging\nX-Team: ops"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("name=\"timeout_s\" type=\"number\" min=\"1\" max=\"300\" value=\"7\"")
    );

    // Refused input comes back with the reason naming the field, and is not stored.
    for (fields, field) in [
        (
            form("Content-Type: text/plain", "7", "2")(),
            "custom_headers",
        ),
        (form("no colon here", "7", "2")(), "custom_headers"),
        (form("", "301", "2")(), "timeout_s"),
        (form("", "7", "11")(), "max_retries"),
    ] {
        let refused = post(fields).await;
        assert_eq!(refused.status, 400, "{field}");
        assert!(refused.body.contains(field), "{field}: {}", refused.body);
    }
    let (_, kept) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(
        (&kept["timeout_s"], &kept["max_retries"]),
        (&json!(7), &json!(2))
    );

    // Empty fields go back to the defaults.
    let saved = post(form("", "", "")()).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, cleared) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(cleared["custom_headers"], json!({}));
    assert_eq!(
        (&cleared["timeout_s"], &cleared["max_retries"]),
        (&json!(null), &json!(null))
    );
}

#[tokio::test]
async fn message_page_sends_to_a_url_once_and_shows_the_answer() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut target = WebhookReceiver::start(vec![Reply::Status(202)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", "try me", "body");
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    inbox_hook.recv().await;
    let id = eventually("the message to be listed", || async {
        let messages = gateway.messages("agent").await;
        messages.first()?["id"].as_str().map(str::to_owned)
    })
    .await;
    let mut ui = Ui::new(&gateway);
    ui.login(API_KEY).await;
    let page = ui.get(&format!("/ui/messages/{id}")).await;
    assert!(page.body.contains("Send to URL"), "{}", page.body);
    let csrf = page.csrf();

    let url = target.url();
    let sent = ui
        .post(
            &format!("/ui/messages/{id}/send-to"),
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("signature", ""),
                ("payload", "event-data-ts"),
            ],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains("id=\"send-to-result\""), "{}", sent.body);
    assert!(sent.body.contains("HTTP 202"), "{}", sent.body);
    let request = target.recv().await;
    assert_eq!(request.json()["event"], "mail.received");
    assert!(request.header("x-agentmail-signature").is_some());
    target.assert_silent(Duration::from_millis(300)).await;

    let refused = ui
        .post(
            &format!("/ui/messages/{id}/send-to"),
            &[("csrf", &csrf), ("url", "ftp://example.com/")],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("id=\"send-to-error\""),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("url: "), "{}", refused.body);
    assert_eq!(
        gateway.all_deliveries().await.len(),
        1,
        "send-to queued nothing"
    );
}
