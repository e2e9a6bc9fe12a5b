//! The inbox webhook's own endpoint settings (SPEC "Delivery": `custom_headers`, `timeout_s`,
//! `max_retries`), set in the config file and over the API, honoured by the dispatcher: the
//! header arrives, a receiver slower than `timeout_s` is an error attempt, and the delivery is
//! dead-lettered after `max_retries` retries, whatever the `[delivery]` defaults say.

use serde_json::{Value, json};

use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};

/// `[delivery]` defaults the inbox webhook's settings must override.
const DELIVERY_TIMEOUT_S: u64 = 10;
const DELIVERY_MAX_RETRIES: u32 = 4;

fn options(webhook_url: Option<String>) -> GatewayOptions {
    let mut options = match webhook_url {
        Some(url) => GatewayOptions::webhook(url),
        None => GatewayOptions::no_webhook(),
    };
    options.delivery_timeout_s = DELIVERY_TIMEOUT_S;
    options.max_retries = DELIVERY_MAX_RETRIES;
    options.lease_s = 30;
    options
}

/// The receiver hangs on the first request and refuses the others.
async fn hang_then_refuse() -> WebhookReceiver {
    let mut script = vec![Reply::Hang];
    script.extend(std::iter::repeat_n(Reply::Status(500), 100));
    WebhookReceiver::start(script).await
}

/// Sends one mail to `agent` and checks what its inbox webhook (on `receiver`) got: the custom
/// header on every attempt, a timed-out first attempt after about 1 s, and dead after one retry.
async fn assert_settings_honoured(
    gateway: &TestGateway,
    receiver: &mut WebhookReceiver,
    team: &str,
) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", "settings", "body");
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");

    let dead = eventually("the inbox webhook's delivery to be dead", || async {
        let deliveries = gateway.deliveries("dead").await;
        (deliveries.len() == 1).then_some(deliveries)
    })
    .await;
    let attempts = gateway
        .attempts(dead[0]["id"].as_str().expect("delivery id"))
        .await;
    assert_eq!(
        attempts.len(),
        2,
        "max_retries = 1: one attempt and one retry (delivery.max_retries is {DELIVERY_MAX_RETRIES}): {attempts:?}"
    );
    assert_eq!(attempts[0]["outcome"], "error", "{attempts:?}");
    assert_eq!(attempts[0]["error"], "request timed out", "{attempts:?}");
    let latency = attempts[0]["latency_ms"].as_i64().expect("latency");
    assert!(
        latency < 5_000,
        "timed out after {latency} ms, not after timeout_s = 1 (delivery.timeout_s is {DELIVERY_TIMEOUT_S})"
    );
    assert_eq!(attempts[1]["status_code"], 500, "{attempts:?}");
    for _ in 0..2 {
        let request = receiver.recv().await;
        assert_eq!(request.header("x-team").as_deref(), Some(team));
    }
}

#[tokio::test]
async fn the_inbox_webhook_honours_its_config_settings() {
    let mut receiver = hang_then_refuse().await;
    let mut options = options(Some(receiver.url()));
    options.agent_toml =
        "custom_headers = { X-Team = \"config\" }\ntimeout_s = 1\nmax_retries = 1\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let (status, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 200, "{webhook}");
    assert_eq!(webhook["custom_headers"], json!({"X-Team": "config"}));
    assert_eq!(
        (&webhook["timeout_s"], &webhook["max_retries"]),
        (&json!(1), &json!(1))
    );
    // The other inbox set none: the `[delivery]` defaults, shown as null.
    let (_, other) = gateway.api("GET", "/v1/inboxes/other/webhook", None).await;
    assert_eq!(other["custom_headers"], json!({}), "{other}");
    assert_eq!(
        (&other["timeout_s"], &other["max_retries"]),
        (&Value::Null, &Value::Null)
    );

    assert_settings_honoured(&gateway, &mut receiver, "config").await;
}

#[tokio::test]
async fn the_inbox_webhook_honours_its_api_settings_and_refuses_bad_ones_by_name() {
    let mut receiver = hang_then_refuse().await;
    let gateway = TestGateway::start(options(None)).await;
    let url = receiver.url();
    let put = |body: Value| {
        let gateway = &gateway;
        async move {
            gateway
                .api("PUT", "/v1/inboxes/agent/webhook", Some(body))
                .await
        }
    };

    for (body, field) in [
        (json!({"url": url, "timeout_s": 301}), "timeout_s"),
        (json!({"url": url, "timeout_s": 0}), "timeout_s"),
        (json!({"url": url, "max_retries": 11}), "max_retries"),
        (
            json!({"url": url, "custom_headers": {"webhook-id": "forged"}}),
            "custom_headers",
        ),
        (
            json!({"url": url, "custom_headers": {"Content-Type": "text/plain"}}),
            "custom_headers",
        ),
        (
            json!({"url": url, "signature": "hmac-sha256",
                   "custom_headers": {"x-webhook-signature": "forged"}}),
            "custom_headers",
        ),
    ] {
        let (status, answer) = put(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{body} -> {message}"
        );
    }
    let (status, answer) = put(json!({"url": url, "max_retries": -1})).await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 404, "nothing refused was stored");

    let (status, webhook) = put(json!({"url": url, "custom_headers": {"X-Team": "api"},
                                       "timeout_s": 1, "max_retries": 1}))
    .await;
    assert_eq!(status, 200, "{webhook}");
    assert_eq!(webhook["custom_headers"], json!({"X-Team": "api"}));
    let (_, shown) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(shown["custom_headers"], json!({"X-Team": "api"}), "{shown}");
    assert_eq!(
        (&shown["timeout_s"], &shown["max_retries"]),
        (&json!(1), &json!(1))
    );

    assert_settings_honoured(&gateway, &mut receiver, "api").await;

    // Left out keeps a setting; null goes back to the default; `{}` removes the headers.
    let (status, kept) = put(json!({"url": url, "max_retries": null})).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["custom_headers"], json!({"X-Team": "api"}), "{kept}");
    assert_eq!(
        (&kept["timeout_s"], &kept["max_retries"]),
        (&json!(1), &Value::Null)
    );
    let (_, cleared) = put(json!({"url": url, "custom_headers": {}})).await;
    assert_eq!(cleared["custom_headers"], json!({}), "{cleared}");
}

#[tokio::test]
async fn a_rule_webhook_keeps_its_name_and_description() {
    let gateway = TestGateway::start(options(None)).await;
    let webhook = json!({"url": "https://hooks.example.com/in", "name": "Ops hook",
                         "description": "pages the on-call engineer"});
    let (status, stored) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!([{"name": "ops", "channels": {"webhook": webhook}}])),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let (_, rules) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    let shown = &rules[0]["channels"]["webhook"];
    assert_eq!(shown["name"], "Ops hook", "{rules}");
    assert_eq!(
        shown["description"], "pages the on-call engineer",
        "{rules}"
    );

    let long = "x".repeat(1001);
    let (status, answer) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!([{"name": "ops", "channels": {"webhook": {
                "url": "https://hooks.example.com/in", "description": long}}}])),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("rules[0].channels.webhook.description:"),
        "{message}"
    );
}
