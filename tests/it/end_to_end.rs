//! Mail in through real SMTP clients, signed webhook out to a real HTTP server: every payload
//! field, the signature checked by an independent implementation, the stored bytes.

use lettre::message::{Attachment, MultiPart, SinglePart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::support::gateway::SECRET;
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, python_verifies_agentmail,
    simple_message,
};

#[tokio::test]
async fn lettre_message_arrives_signed_with_every_field() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;

    let email = lettre::Message::builder()
        .from("Ada Lovelace <ada@sender.example>".parse().expect("from"))
        .to("Agent <agent@example.com>".parse().expect("to"))
        .cc("watcher@elsewhere.example".parse().expect("cc"))
        .reply_to("replies@sender.example".parse().expect("reply-to"))
        .subject("Quarterly planning notes ✓")
        .message_id(Some("<lettre-1@sender.example>".to_owned()))
        // The Cc is a person elsewhere; only the agent is an envelope recipient here.
        .envelope(
            lettre::address::Envelope::new(
                Some("ada@sender.example".parse().expect("sender")),
                vec!["agent@example.com".parse().expect("recipient")],
            )
            .expect("envelope"),
        )
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain("Plain body line".to_owned()))
                        .singlepart(SinglePart::html("<p>HTML <b>body</b></p>".to_owned())),
                )
                .singlepart(
                    Attachment::new("notes.txt".to_owned())
                        .body(b"attached text".to_vec(), ContentType::TEXT_PLAIN),
                ),
        )
        .expect("build message");
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(gateway.smtp.port())
        .build();
    let response = transport.send(email).await.expect("lettre sends");
    assert!(response.is_positive());

    let request = receiver.recv().await;
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        request.header("user-agent"),
        Some(format!("mxhook/{}", env!("CARGO_PKG_VERSION")))
    );
    let timestamp = request
        .header("x-agentmail-timestamp")
        .expect("timestamp header");
    let signature = request
        .header("x-agentmail-signature")
        .expect("signature header");
    assert!(signature.starts_with("v1="), "{signature}");
    assert!(python_verifies_agentmail(
        SECRET,
        &timestamp,
        &request.body,
        &signature
    ));
    assert!(!python_verifies_agentmail(
        "wrong-secret",
        &timestamp,
        &request.body,
        &signature
    ));
    let now = chrono::Utc::now().timestamp();
    let ts: i64 = timestamp.parse().expect("unix seconds");
    assert!((now - ts).abs() < 60, "timestamp {ts} far from now {now}");
    assert!(request.header("x-agentmail-unsigned").is_none());

    let event = request.json();
    assert_eq!(
        request.header("webhook-id").as_deref(),
        event["event_id"].as_str()
    );
    assert_eq!(event["type"], "mail.received");
    assert!(
        event["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_"))
    );
    assert!(
        event["message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_"))
    );
    assert_eq!(event["agent_id"], "agent");
    assert_eq!(event["sender"], "ada@sender.example");
    assert_eq!(event["envelope_from"], "ada@sender.example");
    assert_eq!(
        event["envelope_to"],
        serde_json::json!(["agent@example.com"])
    );
    assert_eq!(event["subject"], "Quarterly planning notes ✓");
    assert!(chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().expect("ts")).is_ok());
    assert_eq!(event["sender_verified"], false);
    assert_eq!(event["peer_trust_tier"], "unverified");
    assert_eq!(event["rate_limited"], false);
    assert_eq!(event["is_duplicate"], false);
    assert_eq!(event["s3_bucket"], "test-bucket");
    let message_id = event["message_id"].as_str().expect("message id");
    assert_eq!(event["s3_key"], format!("inbound/agent/{message_id}.eml"));
    assert_eq!(event["auth"]["checked"], false);
    assert_eq!(event["traffic_types"], serde_json::json!(["human"]));
    assert_eq!(event["remote_ip"], "127.0.0.1");
    assert_eq!(event["warnings"], serde_json::json!([]));
    assert_eq!(event["extracted_text"], "Plain body line");
    let thread_id = event["thread_id"].as_str().expect("thread id");
    assert!(thread_id.starts_with("thr_"), "{thread_id}");

    let email = &event["email"];
    assert_eq!(email["id"], event["message_id"]);
    assert_eq!(email["inbox_id"], "agent");
    assert_eq!(email["from_address"]["address"], "ada@sender.example");
    assert_eq!(email["from_address"]["name"], "Ada Lovelace");
    assert_eq!(email["to_addresses"][0]["address"], "agent@example.com");
    assert_eq!(email["to_addresses"][0]["name"], "Agent");
    assert_eq!(
        email["cc_addresses"][0]["address"],
        "watcher@elsewhere.example"
    );
    assert_eq!(email["bcc_addresses"], serde_json::json!([]));
    assert_eq!(
        email["reply_to_addresses"][0]["address"],
        "replies@sender.example"
    );
    assert_eq!(email["subject"], "Quarterly planning notes ✓");
    assert_eq!(
        email["plain_text"].as_str().map(str::trim),
        Some("Plain body line")
    );
    assert_eq!(
        email["html"].as_str().map(str::trim),
        Some("<p>HTML <b>body</b></p>")
    );
    assert_eq!(email["alternative_content"], true);
    assert_eq!(email["message_id"], "lettre-1@sender.example");
    assert_eq!(email["in_reply_to_id"], serde_json::Value::Null);
    assert_eq!(email["references"], serde_json::Value::Null);
    assert_eq!(email["previous_emails"], serde_json::Value::Null);
    assert_eq!(email["thread_id"], thread_id);
    assert_eq!(email["extracted_text"], "Plain body line");
    assert_eq!(email["attachments"].as_array().map(Vec::len), Some(1));
    let attachment = &email["attachments"][0];
    assert_eq!(attachment["id"], "att_0");
    assert_eq!(attachment["filename"], "notes.txt");
    assert_eq!(attachment["content_type"], "text/plain");
    assert_eq!(attachment["content_encoding"], "7bit");
    assert_eq!(attachment["content_id"], serde_json::Value::Null);
    assert_eq!(attachment["size"], 13);
    let prompt = email["prompt"].as_str().expect("prompt");
    assert!(
        prompt.contains("**From:** Ada Lovelace <ada@sender.example>"),
        "{prompt}"
    );
    assert!(
        prompt.contains("Plain body line") && prompt.contains("notes.txt"),
        "{prompt}"
    );
    // A thread of one: the thread prompt holds just this email.
    let thread_prompt = email["thread_prompt"].as_str().expect("thread prompt");
    assert!(
        thread_prompt.contains(prompt.trim_end())
            && thread_prompt.contains("Emails in this thread: 1,"),
        "{thread_prompt}"
    );
    assert_eq!(email["timestamp"], event["timestamp"]);

    // The API serves the same event and the raw bytes from the store.
    let (status, stored_event) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stored_event, event);
    let (status, raw) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    let on_disk = std::fs::read(
        gateway
            .dir
            .path()
            .join("mail")
            .join(format!("inbound/agent/{message_id}.eml")),
    )
    .expect("stored file");
    assert_eq!(raw, on_disk);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("Subject: "));
    // email.date is the Date header lettre wrote, as the same instant in ISO 8601.
    let date_header = raw
        .lines()
        .find_map(|line| line.strip_prefix("Date: "))
        .expect("lettre writes a Date header");
    let sent = chrono::DateTime::parse_from_rfc2822(date_header.trim()).expect("RFC 2822 date");
    let date = chrono::DateTime::parse_from_rfc3339(email["date"].as_str().expect("date"))
        .expect("ISO 8601 date");
    assert_eq!(date, sent, "{date_header}");
}

#[tokio::test]
async fn stored_bytes_are_exactly_the_bytes_sent() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let message = b"From: dots@sender.example\r\nTo: agent@example.com\r\nSubject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\n\xff\xfe raw 8bit\r\n".to_vec();
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("dots@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    let key = event["s3_key"].as_str().expect("key");
    let stored = std::fs::read(gateway.dir.path().join("mail").join(key)).expect("stored");
    assert_eq!(stored, message);
    assert_eq!(event["size"], message.len());
}

#[tokio::test]
async fn python_smtplib_and_swaks_deliver() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let port = gateway.smtp.port().to_string();

    let script = r#"
import smtplib, sys
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "Py Thon <py@sender.example>"
msg["To"] = "alias@example.com"
msg["Subject"] = "Grüße aus Python"
msg.set_content("Hallo from smtplib")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as smtp:
    code, _ = smtp.ehlo()
    assert code == 250
    assert smtp.has_extn("size") and smtp.has_extn("pipelining") and smtp.has_extn("smtputf8")
    refused = smtp.send_message(msg)
    assert not refused, refused
"#;
    let port_for_python = port.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port_for_python)
            .status()
            .expect("python3 runs")
    })
    .await
    .expect("join");
    assert!(status.success(), "smtplib failed");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "Grüße aus Python");
    assert_eq!(event["agent_id"], "agent");
    assert_eq!(
        event["email"]["plain_text"].as_str().map(str::trim),
        Some("Hallo from smtplib")
    );

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--from",
                "swaks@sender.example",
                "--to",
                "other@example.com",
                "--header",
                "Subject: sent by swaks",
                "--body",
                "swaks body",
                "--helo",
                "swaks.test",
            ])
            .output()
            .expect("swaks is installed (.ci/run installs it)")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "swaks failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "sent by swaks");
    assert_eq!(event["agent_id"], "other");
    assert_eq!(event["helo"], "swaks.test");
}

#[tokio::test]
async fn one_message_to_two_inboxes_becomes_two_events_and_bcc_is_reported() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", "to both", "hello");
    let (code, text) = client
        .send_message(
            "a@sender.example",
            &["agent@example.com", "other@example.com"],
            &message,
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let first = receiver.recv().await.json();
    let second = receiver.recv().await.json();
    let mut agents = [first["agent_id"].clone(), second["agent_id"].clone()];
    agents.sort_by_key(|v| v.to_string());
    assert_eq!(
        agents,
        [serde_json::json!("agent"), serde_json::json!("other")]
    );
    assert_ne!(first["event_id"], second["event_id"]);
    assert_ne!(first["message_id"], second["message_id"]);
    let other = if first["agent_id"] == "other" {
        &first
    } else {
        &second
    };
    assert_eq!(
        other["email"]["bcc_addresses"][0]["address"],
        "other@example.com"
    );
}

#[tokio::test]
async fn inbox_without_secret_sends_unsigned_marker() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.secret = None;
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", "unsigned", "x");
    assert_eq!(
        client
            .send_message("a@sender.example", &["agent@example.com"], &message)
            .await
            .0,
        250
    );
    let request = receiver.recv().await;
    assert_eq!(request.header("x-agentmail-unsigned").as_deref(), Some("1"));
    assert!(request.header("x-agentmail-signature").is_none());
}

#[tokio::test]
async fn botmailroom_payload_and_signature() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.agent_toml = "signature = \"botmailroom\"\npayload = \"botmailroom\"\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "b@sender.example",
        "agent@example.com",
        "bmr",
        "botmailroom body",
    );
    assert_eq!(
        client
            .send_message("b@sender.example", &["agent@example.com"], &message)
            .await
            .0,
        250
    );
    let request = receiver.recv().await;
    let body = request.json();
    assert!(
        body.get("event_id").is_none(),
        "botmailroom payload is the email object"
    );
    assert_eq!(body["inbox_id"], "agent");
    assert_eq!(body["subject"], "bmr");
    assert!(body["timestamp"].is_string());
    let expected = {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(&request.body);
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(request.header("x-signature"), Some(expected));
}
