//! The envelope payloads of SPEC "Event types and subscriptions": `event-data` and
//! `event-data-ts`, on the inbox webhook and on a rule webhook, read field by field off a real
//! receiver, and signed the way the receivers they copy check: the agent-platform seed
//! (`X-Webhook-Signature`, bare hex HMAC-SHA256 of the raw body) and Bookbag
//! (`X-Bookbag-Signature: sha256=<hex>`), verified in Python over the exact bytes received.

use serde_json::{Value, json};

use crate::signatures::{headers_of, python_accepts};
use crate::support::gateway::SECRET;
use crate::support::{
    GatewayOptions, Received, SmtpClient, TestGateway, WebhookReceiver, simple_message,
};

/// The agent-platform seed's check, transcribed from Node's
/// `crypto.createHmac('sha256', secret).update(rawBody).digest('hex')` compared to the
/// `X-Webhook-Signature` header.
const AGENT_PLATFORM_VERIFIER: &str = r#"
import sys, json, hmac, hashlib
secret = sys.argv[1].encode()
headers = {k.lower(): v for k, v in json.loads(sys.argv[2]).items()}
raw_body = sys.stdin.buffer.read()
expected = hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
sys.exit(0 if hmac.compare_digest(expected, headers.get("x-webhook-signature", "")) else 1)
"#;

/// Bookbag's check: `X-Bookbag-Signature: sha256=<hex HMAC-SHA256(secret, raw_body)>`.
const BOOKBAG_VERIFIER: &str = r#"
import sys, json, hmac, hashlib
secret = sys.argv[1].encode()
headers = {k.lower(): v for k, v in json.loads(sys.argv[2]).items()}
raw_body = sys.stdin.buffer.read()
expected = "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
sys.exit(0 if hmac.compare_digest(expected, headers.get("x-bookbag-signature", "")) else 1)
"#;

/// Sends one mail to the `agent` inbox.
async fn send_mail(gateway: &TestGateway) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "ann@sender.example",
        "agent@example.com",
        "shapes",
        "body ✓",
    );
    let (code, text) = client
        .send_message("ann@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
}

/// Sets the `agent` inbox's rules and answers the stored rules (with their ids).
async fn set_rules(gateway: &TestGateway, rules: Value) -> Vec<Value> {
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().expect("the stored rules").clone()
}

fn rule_id(rules: &[Value], name: &str) -> String {
    rules
        .iter()
        .find(|rule| rule["name"] == name)
        .and_then(|rule| rule["id"].as_str())
        .expect("the rule has an id")
        .to_owned()
}

/// `timestamp` is ISO 8601 UTC with exactly six fraction digits and `Z`, close to now.
fn assert_microsecond_timestamp(timestamp: &str) {
    let (seconds, fraction) = timestamp
        .strip_suffix('Z')
        .and_then(|rest| rest.split_once('.'))
        .unwrap_or_else(|| panic!("`{timestamp}` has no fraction or no Z"));
    assert_eq!(fraction.len(), 6, "`{timestamp}`: microseconds");
    assert!(
        fraction.bytes().all(|b| b.is_ascii_digit()),
        "`{timestamp}`"
    );
    assert!(
        chrono::NaiveDateTime::parse_from_str(seconds, "%Y-%m-%dT%H:%M:%S").is_ok(),
        "`{timestamp}`"
    );
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(
        age.num_seconds().abs() < 300,
        "`{timestamp}` is not the send time"
    );
}

/// `ts` is unix milliseconds, taken at send time: not after it was received, and not long
/// before.
fn assert_send_time_ms(ts: &Value, received_at_ms: i64) {
    let ts = ts
        .as_i64()
        .unwrap_or_else(|| panic!("ts {ts} is not an integer"));
    assert!(
        ts <= received_at_ms,
        "ts {ts} is after the receive time {received_at_ms}"
    );
    assert!(received_at_ms - ts < 60_000, "ts {ts} is seconds, or stale");
}

/// The mxhook event the envelopes wrap, from a rule that sends it as it is.
async fn plain_event(receiver: &mut WebhookReceiver) -> Value {
    receiver.recv().await.json()
}

/// Every key of an envelope, and no other.
fn keys(body: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn accepts(script: &str, secret: &str, request: &Received) -> bool {
    python_accepts(script, secret, &headers_of(request), &request.body)
}

#[tokio::test]
async fn event_data_on_the_inbox_webhook_and_a_rule_is_the_agent_platform_shape_and_signature() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![]).await;
    let mut plain_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.agent_toml = "payload = \"event-data\"\nsignature = \"hmac-sha256\"\n\
                          signature_format = \"hex\"\n"
        .to_owned();
    let gateway = TestGateway::start(options).await;
    let rules = set_rules(
        &gateway,
        json!({"rules": [
            {"name": "Platform agent", "channels": {"webhook": {
                "name": "the webhook's own label", "description": "not the envelope's name",
                "url": rule_hook.url(), "payload": "event-data", "signature": "hmac-sha256",
                "signature_format": "hex"}}},
            {"name": "plain", "channels": {"webhook": {"url": plain_hook.url()}}}
        ]}),
    )
    .await;
    let rule = rule_id(&rules, "Platform agent");
    send_mail(&gateway).await;

    let event = plain_event(&mut plain_hook).await;
    for (request, id, name) in [
        (inbox_hook.recv().await, "inbox".to_owned(), "agent"),
        (
            rule_hook.recv().await,
            format!("rule:{rule}"),
            "Platform agent",
        ),
    ] {
        // Fields in the order SPEC lists them.
        assert!(
            request
                .body
                .starts_with(br#"{"event":"mail.received","webhook":{"id":"#),
            "{}",
            String::from_utf8_lossy(&request.body)
        );
        let body = request.json();
        assert_eq!(
            keys(&body),
            ["data", "event", "timestamp", "webhook"],
            "{body}"
        );
        assert_eq!(body["event"], "mail.received");
        assert_eq!(body["webhook"], json!({"id": id, "name": name}));
        assert_eq!(body["data"], event, "data is the mxhook event");
        assert_microsecond_timestamp(body["timestamp"].as_str().expect("timestamp"));
        assert!(accepts(AGENT_PLATFORM_VERIFIER, SECRET, &request), "{id}");
        assert!(!accepts(AGENT_PLATFORM_VERIFIER, "other", &request), "{id}");
        let mut tampered = request.clone();
        tampered.body = [&request.body[..], b" "].concat().into();
        assert!(!accepts(AGENT_PLATFORM_VERIFIER, SECRET, &tampered), "{id}");
    }
}

#[tokio::test]
async fn event_data_ts_on_the_inbox_webhook_and_a_rule_verifies_as_bookbag_does() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![]).await;
    let mut plain_hook = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    // The inbox webhook set over the API; the secret it answers is what receivers check with.
    let (status, webhook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": inbox_hook.url(), "payload": "event-data-ts",
                        "signature": "hmac-sha256", "signature_header": "X-Bookbag-Signature"})),
        )
        .await;
    assert_eq!(status, 200, "{webhook}");
    assert_eq!(webhook["payload"], "event-data-ts");
    let secret = webhook["signing_secret"]
        .as_str()
        .expect("a new webhook answers its secret")
        .to_owned();
    let (status, shown) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!((status, &shown["payload"]), (200, &json!("event-data-ts")));
    set_rules(
        &gateway,
        json!({"rules": [
            {"name": "bookbag", "channels": {"webhook": {
                "url": rule_hook.url(), "payload": "event-data-ts", "signature": "hmac-sha256",
                "signature_header": "X-Bookbag-Signature", "signature_format": "sha256=hex"}}},
            {"name": "plain", "channels": {"webhook": {"url": plain_hook.url()}}}
        ]}),
    )
    .await;
    send_mail(&gateway).await;

    let event = plain_event(&mut plain_hook).await;
    for (label, request) in [
        ("inbox", inbox_hook.recv().await),
        ("rule", rule_hook.recv().await),
    ] {
        let received_at_ms = chrono::Utc::now().timestamp_millis();
        let body = request.json();
        assert_eq!(keys(&body), ["data", "event", "ts"], "{label}: {body}");
        assert!(
            request
                .body
                .starts_with(br#"{"event":"mail.received","data":{"#),
            "{label}: {}",
            String::from_utf8_lossy(&request.body)
        );
        assert_eq!(body["data"], event, "{label}: data is the mxhook event");
        assert_send_time_ms(&body["ts"], received_at_ms);
        assert!(accepts(BOOKBAG_VERIFIER, &secret, &request), "{label}");
        assert!(!accepts(BOOKBAG_VERIFIER, SECRET, &request), "{label}");
        assert!(
            request.header("x-webhook-signature").is_none(),
            "{label}: one signature header, the configured one"
        );
    }
}
