//! `storage.backend = "s3"` against a real S3 protocol server (s3s over s3s-fs) on loopback:
//! the stored object is the exact bytes, the event points at it, the API reads it back, and an
//! S3 that is down, failing or slow at end of DATA turns into `451 4.3.0` with nothing delivered,
//! after which a retrying client gets exactly one event through.

use std::time::Duration;

use crate::support::s3::{BUCKET, Behaviour, TestS3};
use crate::support::{
    GatewayOptions, SOON, SmtpClient, TestGateway, WebhookReceiver, fixture, simple_message,
};

async fn gateway_on(s3: &TestS3, receiver: &WebhookReceiver, timeout_s: f64) -> TestGateway {
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_toml = Some(s3.storage_toml(timeout_s));
    TestGateway::start(options).await
}

async fn send(gateway: &TestGateway, message: &[u8]) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client
        .send_message("sender@elsewhere.example", &["agent@example.com"], message)
        .await
}

#[tokio::test]
async fn accepted_mail_is_in_the_bucket_byte_exact_and_readable_through_the_api() {
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 10.0).await;
    // A real message with attachments, CRLF and 8-bit bytes, exactly as the fixture holds it.
    let message = fixture("eml/multipart_mixed_attachment.eml");

    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 250, "{text}");

    let event = receiver.recv().await.json();
    let message_id = event["message_id"].as_str().expect("message id");
    let key = format!("inbound/agent/{message_id}.eml");
    assert_eq!(event["s3_bucket"], BUCKET);
    assert_eq!(event["s3_key"], key);
    assert_eq!(s3.keys(), vec![key.clone()]);
    let stored = std::fs::read(s3.object_path(&key)).expect("object in the bucket");
    assert!(
        stored == message,
        "stored object differs from the bytes sent"
    );

    let (status, raw) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    assert!(raw == message, "raw endpoint differs from the bytes sent");
    let (status, _) = gateway.api_bytes("/v1/messages/msg_doesnotexist/raw").await;
    assert_eq!(status, 404);
    gateway.stop().await;
}

#[tokio::test]
async fn s3_down_at_end_of_data_is_451_and_a_retrying_client_gets_exactly_one_event() {
    let mut s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 5.0).await;
    let message = simple_message(
        "sender@elsewhere.example",
        "agent@example.com",
        "while S3 is down",
        "hello",
    );

    s3.stop().await;
    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    assert!(gateway.deliveries("pending").await.is_empty());
    assert!(gateway.deliveries("delivered").await.is_empty());

    // A sending MTA's queue, in miniature: retry on 4xx until a 250, with S3 coming back while
    // it is retrying.
    let mut attempts = 0;
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        attempts += 1;
        let (code, text) = send(&gateway, &message).await;
        if code == 250 {
            break;
        }
        assert_eq!(code, 451, "{text}");
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
        if attempts == 3 && !restarted {
            s3.restart().await;
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restarted && attempts > 3, "accepted while S3 was down");

    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "while S3 is down");
    receiver.assert_silent(Duration::from_millis(800)).await;
    assert_eq!(s3.keys().len(), 1, "one object for one accepted message");
    assert_eq!(gateway.deliveries("delivered").await.len(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn s3_answering_5xx_is_451_and_nothing_is_delivered() {
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 10.0).await;

    s3.set_behaviour(Behaviour::ServiceUnavailable);
    let message = simple_message("a@elsewhere.example", "agent@example.com", "5xx", "x");
    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    receiver.assert_silent(Duration::from_millis(500)).await;
    assert!(s3.keys().is_empty());
    assert!(gateway.messages("agent").await.is_empty());
    assert!(gateway.all_deliveries().await.is_empty());

    s3.set_behaviour(Behaviour::Normal);
    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(receiver.recv().await.json()["subject"], "5xx");
    gateway.stop().await;
}

#[tokio::test]
async fn s3_hanging_past_the_deadline_is_451() {
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 0.5).await;

    s3.set_behaviour(Behaviour::Hang);
    let message = simple_message("a@elsewhere.example", "agent@example.com", "slow", "x");
    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    receiver.assert_silent(Duration::from_millis(500)).await;
    assert!(gateway.deliveries("pending").await.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn every_put_carries_the_sha256_of_the_stored_bytes_and_an_altered_body_is_refused() {
    use base64::Engine as _;
    use sha2::Digest as _;

    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 10.0).await;
    let message = fixture("eml/multipart_mixed_attachment.eml");

    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    let key = event["s3_key"].as_str().expect("s3_key");
    let stored = std::fs::read(s3.object_path(key)).expect("object in the bucket");
    let puts: Vec<_> = s3
        .seen()
        .into_iter()
        .filter(|request| request.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].path, format!("/{BUCKET}/{key}"));
    let sent = puts[0]
        .headers
        .get("x-amz-checksum-sha256")
        .and_then(|value| value.to_str().ok())
        .expect("the PUT carries x-amz-checksum-sha256");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&stored));
    assert_eq!(
        sent, expected,
        "the checksum is not that of the stored bytes"
    );
    // The body is hashed once: the signature leaves the payload unsigned and covers the
    // checksum header instead, so the body is still bound to the signed request.
    let header = |name: &str| {
        puts[0]
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-amz-content-sha256"), "UNSIGNED-PAYLOAD");
    let authorization = header("authorization");
    let signed_headers = authorization
        .split(", ")
        .find_map(|part| part.strip_prefix("SignedHeaders="))
        .expect("a SigV4 Authorization header");
    assert!(
        signed_headers
            .split(';')
            .any(|name| name == "x-amz-checksum-sha256"),
        "the signature does not cover the checksum: {authorization}"
    );

    s3.set_behaviour(Behaviour::CorruptPutBody);
    let altered = simple_message("a@elsewhere.example", "agent@example.com", "altered", "x");
    let (code, text) = send(&gateway, &altered).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    // The SDK may retry the refused PUT; each try is refused, and the key is undone after.
    let methods = s3.methods();
    let (last, tries) = methods[1..]
        .split_last()
        .expect("requests after the first PUT");
    assert!(
        !tries.is_empty() && tries.iter().all(|method| method == "PUT") && last == "DELETE",
        "the altered PUT was not refused and undone: {methods:?}"
    );
    assert_eq!(
        s3.keys(),
        vec![key.to_owned()],
        "an altered body was stored"
    );
    receiver.assert_silent(Duration::from_millis(500)).await;

    s3.set_behaviour(Behaviour::Normal);
    let (code, text) = send(&gateway, &altered).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(receiver.recv().await.json()["subject"], "altered");
    assert_eq!(s3.keys().len(), 2);
    gateway.stop().await;
}

#[tokio::test]
async fn a_put_stored_but_never_acknowledged_is_451_and_leaves_no_orphan() {
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = gateway_on(&s3, &receiver, 1.0).await;

    s3.set_behaviour(Behaviour::HangAfterStoringPut);
    let message = simple_message("a@elsewhere.example", "agent@example.com", "lost ack", "x");
    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    let methods = s3.methods();
    assert_eq!(
        methods,
        ["PUT", "DELETE"],
        "the timed-out PUT was not undone"
    );
    assert!(s3.keys().is_empty(), "orphan left: {:?}", s3.keys());
    receiver.assert_silent(Duration::from_millis(500)).await;
    assert!(gateway.deliveries("pending").await.is_empty());
    gateway.stop().await;
}

#[tokio::test]
async fn another_storage_prefix_is_where_objects_go_and_what_the_event_names() {
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_toml = Some(s3.storage_toml_with_prefix(10.0, "mail/2026/"));
    let gateway = TestGateway::start(options).await;
    let message = simple_message("a@elsewhere.example", "agent@example.com", "prefixed", "x");

    let (code, text) = send(&gateway, &message).await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    let message_id = event["message_id"].as_str().expect("message id");
    let key = format!("mail/2026/agent/{message_id}.eml");
    assert_eq!(event["s3_key"], key);
    assert_eq!(s3.keys(), vec![key.clone()]);
    let (status, raw) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    assert!(raw == message, "raw endpoint differs from the bytes sent");
    gateway.stop().await;
}

#[tokio::test]
async fn a_message_the_policy_refuses_leaves_no_object_in_the_bucket() {
    // The raw bytes go to S3 while the message is checked; a refusal removes them again.
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_toml = Some(s3.storage_toml(10.0));
    options.agent_toml = "block_senders = [\"spam.test\"]\npolicy_action = \"reject\"\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let refused = simple_message("promo@spam.test", "agent@example.com", "Deal", "Buy");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("promo@spam.test", &["agent@example.com"], &refused)
        .await;
    assert_eq!(code, 550, "{text}");
    let methods = s3.methods();
    assert_eq!(methods, ["PUT", "DELETE"], "requests to S3");
    assert!(s3.keys().is_empty(), "objects left: {:?}", s3.keys());
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert!(gateway.messages("agent").await.is_empty());

    let accepted = simple_message("a@elsewhere.example", "agent@example.com", "fine", "x");
    let (code, text) = send(&gateway, &accepted).await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    assert_eq!(
        s3.keys(),
        vec![event["s3_key"].as_str().expect("s3_key").to_owned()]
    );
    gateway.stop().await;
}
