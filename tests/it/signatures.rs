//! Every signature scheme of SPEC, checked byte-exact by implementations that share no code with
//! the gateway: Python's `hmac` for agentmail, botmailroom and hmac-sha256, and the published
//! Standard Webhooks library (PyPI `standardwebhooks`) for `standard`, including the two
//! signatures sent while a secret is rotated.

use std::process::Command;

use mxhook::model::SignatureScheme;
use mxhook::signature::{SigningInput, sign};

use serde_json::json;

use crate::support::gateway::SECRET;
use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, simple_message};

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_STANDARD_SECRET: &str = "whsec_dGhlIG5leHQgc2VjcmV0IGFmdGVyIHJvdGF0aW9u";

/// Runs a Python verifier with the body on stdin and headers as JSON in argv; true when it
/// accepts.
pub(crate) fn python_accepts(
    script: &str,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    use std::io::Write as _;
    let headers_json = serde_json::to_string(
        &headers
            .iter()
            .cloned()
            .collect::<std::collections::BTreeMap<String, String>>(),
    )
    .expect("headers json");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret)
        .arg(headers_json)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write body");
    child.wait().expect("python exits").success()
}

const STANDARD_VERIFIER: &str = r#"
import sys, json
from standardwebhooks import Webhook
secret, headers = sys.argv[1], json.loads(sys.argv[2])
Webhook(secret).verify(sys.stdin.buffer.read(), headers)
"#;

pub(crate) const HMAC_VERIFIER: &str = r#"
import sys, json, hmac, hashlib
secret, headers = sys.argv[1].encode(), {k.lower(): v for k, v in json.loads(sys.argv[2]).items()}
body = sys.stdin.buffer.read()
digest = lambda data: hmac.new(secret, data, hashlib.sha256).hexdigest()
if "x-agentmail-signature" in headers:
    expected = "v1=" + digest(headers["x-agentmail-timestamp"].encode() + b"." + body)
    ok = expected in headers["x-agentmail-signature"].split(" ")
elif "x-signature" in headers:
    ok = hmac.compare_digest(digest(body), headers["x-signature"])
else:
    ok = hmac.compare_digest("sha256=" + digest(body), headers["x-webhook-signature"])
sys.exit(0 if ok else 1)
"#;

/// Checks `hmac-sha256` with a configured header (argv 3) and value format (argv 4): exactly
/// one signature header, the configured one, whose value is the HMAC of the raw body.
const CONFIGURED_HMAC_VERIFIER: &str = r#"
import sys, json, hmac, hashlib
secret, headers = sys.argv[1].encode(), {k.lower(): v for k, v in json.loads(sys.argv[2]).items()}
header, fmt = sys.argv[3].lower(), sys.argv[4]
digest = hmac.new(secret, sys.stdin.buffer.read(), hashlib.sha256).hexdigest()
expected = digest if fmt == "hex" else "sha256=" + digest
others = {"x-webhook-signature", "x-signature", "x-agentmail-signature"} - {header}
ok = header in headers and not (others & headers.keys())
sys.exit(0 if ok and hmac.compare_digest(expected, headers[header]) else 1)
"#;

fn python_accepts_configured(
    secret: &str,
    header: &str,
    format: &str,
    request: &crate::support::Received,
) -> bool {
    let script =
        format!("import sys\nsys.argv[3:] = [{header:?}, {format:?}]\n{CONFIGURED_HMAC_VERIFIER}");
    python_accepts(&script, secret, &headers_of(request), &request.body)
}

/// Sends one mail through a gateway whose inbox uses `scheme` and returns the request.
async fn delivered_with(scheme: &str, secret: &str) -> crate::support::Received {
    delivered_with_lines(&format!("signature = \"{scheme}\"\n"), secret).await
}

/// Sends one mail through a gateway whose `agent` inbox has `lines` and `secret`, and returns
/// the request.
async fn delivered_with_lines(lines: &str, secret: &str) -> crate::support::Received {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.secret = Some(secret.to_owned());
    options.agent_toml = lines.to_owned();
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "s@sender.example",
        "agent@example.com",
        "signed",
        "signed body ✓",
    );
    let (code, text) = client
        .send_message("s@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    receiver.recv().await
}

pub(crate) fn headers_of(request: &crate::support::Received) -> Vec<(String, String)> {
    request
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn standard_scheme_verifies_with_the_standard_webhooks_library() {
    let request = delivered_with("standard", STANDARD_SECRET).await;
    let headers = headers_of(&request);
    assert_eq!(
        request.header("webhook-id").as_deref(),
        request.json()["event_id"].as_str()
    );
    assert!(python_accepts(
        STANDARD_VERIFIER,
        STANDARD_SECRET,
        &headers,
        &request.body
    ));
    assert!(!python_accepts(
        STANDARD_VERIFIER,
        OTHER_STANDARD_SECRET,
        &headers,
        &request.body
    ));
    let mut tampered = request.body.to_vec();
    tampered.push(b' ');
    assert!(!python_accepts(
        STANDARD_VERIFIER,
        STANDARD_SECRET,
        &headers,
        &tampered
    ));
}

#[tokio::test]
async fn hmac_schemes_verify_with_python_hmac() {
    for (scheme, header) in [
        ("agentmail", "x-agentmail-signature"),
        ("botmailroom", "x-signature"),
        ("hmac-sha256", "x-webhook-signature"),
    ] {
        let request = delivered_with(scheme, "plain-secret").await;
        assert!(
            request.header(header).is_some(),
            "{scheme} sent no {header}"
        );
        let headers = headers_of(&request);
        assert!(
            python_accepts(HMAC_VERIFIER, "plain-secret", &headers, &request.body),
            "{scheme}"
        );
        assert!(
            !python_accepts(HMAC_VERIFIER, "other-secret", &headers, &request.body),
            "{scheme}"
        );
    }
}

#[test]
fn rotation_sends_a_signature_each_secret_verifies() {
    let body = br#"{"type":"mail.received","event_id":"evt_rotation"}"#;
    let secrets = vec![OTHER_STANDARD_SECRET.to_owned(), STANDARD_SECRET.to_owned()];
    let timestamp = chrono::Utc::now().timestamp();
    let mut headers = sign(&SigningInput {
        scheme: SignatureScheme::Standard,
        secrets: &secrets,
        webhook_id: "evt_rotation",
        timestamp,
        body,
        hmac_header: None,
        hmac_format: mxhook::model::SignatureFormat::Sha256Hex,
    })
    .expect("sign");
    headers.push(("webhook-id".to_owned(), "evt_rotation".to_owned()));
    let signature = headers
        .iter()
        .find(|(name, _)| name == "webhook-signature")
        .expect("signature");
    assert_eq!(signature.1.split(' ').count(), 2, "{}", signature.1);
    assert!(python_accepts(
        STANDARD_VERIFIER,
        STANDARD_SECRET,
        &headers,
        body
    ));
    assert!(python_accepts(
        STANDARD_VERIFIER,
        OTHER_STANDARD_SECRET,
        &headers,
        body
    ));
    assert!(!python_accepts(
        STANDARD_VERIFIER,
        "whsec_bm90IGEgcm90YXRlZCBzZWNyZXQ=",
        &headers,
        body
    ));
}

#[tokio::test]
async fn hmac_sha256_header_and_format_from_toml_verify_with_python_hmac() {
    let request = delivered_with_lines(
        "signature = \"hmac-sha256\"\nsignature_header = \"X-Hub-Signature-256\"\n\
         signature_format = \"hex\"\n",
        "plain-secret",
    )
    .await;
    let value = request
        .header("x-hub-signature-256")
        .expect("configured header");
    assert_eq!(value.len(), 64, "bare hex: {value}");
    assert!(request.header("x-webhook-signature").is_none());
    assert!(python_accepts_configured(
        "plain-secret",
        "X-Hub-Signature-256",
        "hex",
        &request
    ));
    assert!(!python_accepts_configured(
        "other-secret",
        "X-Hub-Signature-256",
        "hex",
        &request
    ));
    assert!(!python_accepts_configured(
        "plain-secret",
        "X-Hub-Signature-256",
        "sha256=hex",
        &request
    ));
}

#[tokio::test]
async fn hmac_sha256_settings_through_the_api_for_the_webhook_and_a_rule() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;

    for (header, why) in [
        ("Bad Header", "not a header name"),
        ("X-Sig:", "not a header name"),
        ("", "empty"),
        ("Content-Type", "reserved"),
        ("user-agent", "reserved"),
        ("webhook-id", "reserved"),
        ("Host", "reserved"),
    ] {
        let (status, body) = gateway
            .api(
                "PUT",
                "/v1/inboxes/agent/webhook",
                Some(
                    json!({"url": inbox_hook.url(), "signature": "hmac-sha256",
                    "signature_header": header})
                    .clone(),
                ),
            )
            .await;
        assert_eq!(status, 400, "`{header}` ({why}): {body}");
        let message = body["error"]["message"].as_str().expect("JSON error");
        assert!(message.contains("signature_header"), "{message}");
    }
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(
                json!({"url": inbox_hook.url(), "signature": "hmac-sha256",
                "signature_format": "base64"})
                .clone(),
            ),
        )
        .await;
    assert_eq!(status, 422, "an unknown format is refused: {body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    // The config secret fits the new scheme and is kept (and not shown).
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(
                json!({"url": inbox_hook.url(), "signature": "hmac-sha256",
                "signature_header": "X-Hub-Signature-256", "signature_format": "hex"})
                .clone(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("signing_secret").is_none(), "{body}");
    let (_, view) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(view["signature_header"], "X-Hub-Signature-256", "{view}");
    assert_eq!(view["signature_format"], "hex", "{view}");

    let bad_rule = json!([{"name": "x", "channels": {"webhook": {"url": rule_hook.url(),
        "signature": "hmac-sha256", "signature_header": "Content-Length"}}}]);
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(bad_rule.clone()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("JSON error");
    assert!(
        message.contains("channels.webhook.signature_header"),
        "{message}"
    );
    let clash = json!([{"name": "x", "channels": {"webhook": {"url": rule_hook.url(),
        "signature": "hmac-sha256", "signature_header": "X-Rule-Sig",
        "custom_headers": {"x-rule-sig": "forged"}}}}]);
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(clash.clone()),
        )
        .await;
    assert_eq!(
        status, 400,
        "a custom header cannot shadow the signature: {body}"
    );

    let rule = json!([{"name": "signed", "channels": {"webhook": {"url": rule_hook.url(),
        "signature": "hmac-sha256", "signature_header": "X-Rule-Sig"}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rule.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["channels"]["webhook"]["signature_header"],
        "X-Rule-Sig"
    );

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("s@sender.example", "agent@example.com", "api", "body ✓");
    let (code, text) = client
        .send_message("s@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");

    let to_inbox = inbox_hook.recv().await;
    assert!(python_accepts_configured(
        SECRET,
        "X-Hub-Signature-256",
        "hex",
        &to_inbox
    ));
    // The rule signs with the inbox secret, in its own header and the default format.
    let to_rule = rule_hook.recv().await;
    assert!(python_accepts_configured(
        SECRET,
        "X-Rule-Sig",
        "sha256=hex",
        &to_rule
    ));
    assert!(!python_accepts_configured(
        "other-secret",
        "X-Rule-Sig",
        "sha256=hex",
        &to_rule
    ));
}
