//! `POST /v1/messages/{id}/send-to`: one signed POST of a stored message to a URL, answered
//! with the receiver's status, latency and response excerpt; no delivery or attempt is made of
//! it; the webhook URL policy refuses private targets by `url`; and an inbox key reaches only
//! its own inbox's messages.

use std::time::Duration;

use serde_json::{Value, json};

use crate::signatures::{HMAC_VERIFIER, headers_of, python_accepts};
use crate::support::gateway::SECRET;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};

/// Sends one mail to `agent` and answers its message id once its inbox webhook delivery (if
/// any) has settled.
async fn stored_message(gateway: &TestGateway) -> String {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "a@sender.example",
        "agent@example.com",
        "again",
        "resend me",
    );
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let messages = eventually("the message to be listed", || async {
        let messages = gateway.messages("agent").await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    messages[0]["id"].as_str().expect("message id").to_owned()
}

/// Every delivery and its attempts, to show send-to adds none.
async fn delivery_record(gateway: &TestGateway) -> Vec<(Value, usize)> {
    let mut record = Vec::new();
    for delivery in gateway.all_deliveries().await {
        let attempts = gateway
            .attempts(delivery["id"].as_str().expect("delivery id"))
            .await;
        record.push((delivery, attempts.len()));
    }
    record
}

#[tokio::test]
async fn send_to_posts_once_signed_and_answers_what_the_receiver_said() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut target = WebhookReceiver::start(vec![Reply::Status(200), Reply::Status(418)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;
    let id = stored_message(&gateway).await;
    inbox_hook.recv().await;
    let before = eventually("the inbox webhook delivery to settle", || async {
        let record = delivery_record(&gateway).await;
        (record.len() == 1 && record[0].0["status"] == "delivered").then_some(record)
    })
    .await;
    let path = format!("/v1/messages/{id}/send-to");

    let (status, answer) = gateway
        .api("POST", &path, Some(json!({"url": target.url()})))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status_code"], 200, "{answer}");
    assert_eq!(answer["response_excerpt"], "ok", "{answer}");
    assert!(answer["latency_ms"].is_u64(), "{answer}");
    let request = target.recv().await;
    // The inbox webhook's scheme (agentmail) and secret, over the stored event as it is.
    let (_, stored) = gateway.api_bytes(&format!("/v1/messages/{id}")).await;
    assert_eq!(
        &request.body[..],
        &stored[..],
        "the mxhook event, byte for byte"
    );
    assert!(python_accepts(
        HMAC_VERIFIER,
        SECRET,
        &headers_of(&request),
        &request.body
    ));
    assert!(!python_accepts(
        HMAC_VERIFIER,
        "other",
        &headers_of(&request),
        &request.body
    ));

    // Another scheme and payload on request; a non-2xx answer is still an answer.
    let (status, answer) = gateway
        .api(
            "POST",
            &path,
            Some(json!({"url": target.url(), "signature": "hmac-sha256", "payload": "event-data"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status_code"], 418, "{answer}");
    let request = target.recv().await;
    let body = request.json();
    assert_eq!(body["event"], "mail.received", "{body}");
    assert_eq!(body["data"]["message_id"], json!(id), "{body}");
    assert!(request.header("x-webhook-signature").is_some());
    assert!(python_accepts(
        HMAC_VERIFIER,
        SECRET,
        &headers_of(&request),
        &request.body
    ));

    // One attempt each, nothing queued, retried or recorded.
    target.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(delivery_record(&gateway).await, before);

    // No receiver at all: a clear error, 502.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (status, answer) = gateway
        .api(
            "POST",
            &path,
            Some(json!({"url": format!("http://{closed}/hook")})),
        )
        .await;
    assert_eq!(status, 502, "{answer}");
    let message = answer["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("connection failed"), "{message}");
    assert_eq!(delivery_record(&gateway).await, before);
}

#[tokio::test]
async fn send_to_refuses_private_targets_and_other_inboxes() {
    let mut target = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::no_webhook();
    options.allow_private_targets = false;
    let gateway = TestGateway::start(options).await;
    let id = stored_message(&gateway).await;
    let path = format!("/v1/messages/{id}/send-to");

    let port = target.addr.port();
    for url in [
        target.url(),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        "ftp://example.com/hook".to_owned(),
    ] {
        let (status, answer) = gateway.api("POST", &path, Some(json!({"url": url}))).await;
        assert_eq!(status, 400, "{url}: {answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.starts_with("url: "), "{url}: {message}");
    }
    target.assert_silent(Duration::from_millis(300)).await;

    // An inbox key sees its own inbox's messages only; another inbox's is not there.
    let (status, other_key) = gateway.api("POST", "/v1/inboxes/other/keys", None).await;
    assert_eq!(status, 201, "{other_key}");
    let other_key = other_key["key"].as_str().expect("key");
    let (status, answer) = gateway
        .api_as(
            other_key,
            "POST",
            &path,
            Some(json!({"url": "https://example.com/"})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, agent_key) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{agent_key}");
    let (status, answer) = gateway
        .api_as(
            agent_key["key"].as_str().expect("key"),
            "POST",
            &path,
            Some(json!({"url": target.url()})),
        )
        .await;
    assert_eq!(
        status, 400,
        "its own inbox's message reaches the URL check: {answer}"
    );
    assert!(gateway.all_deliveries().await.is_empty(), "nothing queued");
}
