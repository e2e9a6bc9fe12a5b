//! Every signature scheme of SPEC, checked byte-exact by implementations that share no code with
//! the gateway: Python's `hmac` for agentmail, botmailroom and hmac-sha256, and the published
//! Standard Webhooks library (PyPI `standardwebhooks`) for `standard`, including the two
//! signatures sent while a secret is rotated.

use std::process::Command;

use mxhook::config::SignatureScheme;
use mxhook::deliver::signature::{SigningInput, sign};

use crate::support::gateway::config_toml;
use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, simple_message};

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_STANDARD_SECRET: &str = "whsec_dGhlIG5leHQgc2VjcmV0IGFmdGVyIHJvdGF0aW9u";

/// Runs a Python verifier with the body on stdin and headers as JSON in argv; true when it
/// accepts.
fn python_accepts(script: &str, secret: &str, headers: &[(String, String)], body: &[u8]) -> bool {
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

const HMAC_VERIFIER: &str = r#"
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

/// Sends one mail through a gateway whose inbox uses `scheme` and returns the request.
async fn delivered_with(scheme: &str, secret: &str) -> crate::support::Received {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let options = GatewayOptions::webhook(receiver.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), &options).replacen(
        "webhook_secret = \"test-signing-secret\"\n",
        &format!("webhook_secret = \"{secret}\"\nsignature = \"{scheme}\"\n"),
        1,
    );
    let config = mxhook::config::Config::from_toml_str(&toml).expect("valid config");
    let gateway = TestGateway::start_with(dir, config).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "s@sender.example",
        "agent@example.com",
        scheme,
        "signed body ✓",
    );
    let (code, text) = client
        .send_message("s@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    receiver.recv().await
}

fn headers_of(request: &crate::support::Received) -> Vec<(String, String)> {
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
