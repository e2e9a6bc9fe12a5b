//! Every real `.eml` fixture through SMTP: stored byte-exact, and its event carries the facts
//! read off the file by hand (fixtures/eml/EXPECTED.md).

use std::collections::HashMap;

use serde_json::Value;

use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, fixture};

struct Expected {
    file: &'static str,
    from: &'static str,
    subject: &'static str,
    attachments: usize,
    plain_text: Option<bool>,
    html: Option<bool>,
    message_id: Option<&'static str>,
}

const EXPECTED: &[Expected] = &[
    Expected {
        file: "plain_text.eml",
        from: "bbb@ddd.com",
        subject: "This is a test message",
        attachments: 0,
        plain_text: Some(true),
        html: Some(false),
        message_id: Some("15090.61304.110929.45684@aaa.zzz.org"),
    },
    Expected {
        file: "html_only.eml",
        from: "test@example.com",
        subject: "23 HTML",
        attachments: 0,
        plain_text: Some(false),
        html: Some(true),
        message_id: Some("8259dd8e-2293-8765-e720-61dfcd10a6f3@example.com"),
    },
    Expected {
        file: "multipart_alternative.eml",
        from: "sender@example.com",
        subject: "Multipart Email Example",
        attachments: 0,
        plain_text: Some(true),
        html: Some(true),
        message_id: None,
    },
    Expected {
        file: "multipart_mixed_attachment.eml",
        from: "barry@digicool.com",
        subject: "Here is your dingus fish",
        attachments: 1,
        plain_text: Some(true),
        html: Some(false),
        message_id: None,
    },
    Expected {
        file: "non_utf8_koi8r.eml",
        from: "new@thunderbird.bug",
        subject: "Алфавит\n",
        attachments: 0,
        plain_text: Some(true),
        html: Some(false),
        message_id: Some("04.eml@mime.sample"),
    },
    Expected {
        file: "encoded_words_subject_from.eml",
        from: "noreply@ggg.com",
        subject: "Быстрее вкладывайте в золото!",
        attachments: 4,
        plain_text: Some(false),
        html: Some(true),
        message_id: Some("20170715091841.33B7F81021@smtp11.ggg.com"),
    },
    Expected {
        file: "encoded_words_addresses.eml",
        from: "comma.name@example.com",
        subject: "Test for Comma and Name Bugs",
        attachments: 0,
        plain_text: Some(true),
        html: Some(false),
        message_id: None,
    },
    Expected {
        file: "reply_in_reply_to.eml",
        from: "xxxxxxxx@xxx.org",
        subject: "Re: Test reply email",
        attachments: 0,
        plain_text: Some(true),
        html: Some(false),
        message_id: Some("473FFE27.20003@xxx.org"),
    },
    Expected {
        file: "cc_reply_to.eml",
        from: "bob@example.com",
        subject: "Test email with email address as display name",
        attachments: 0,
        plain_text: Some(true),
        html: Some(false),
        message_id: Some("test-email-as-name@example.com"),
    },
    Expected {
        file: "nested_multipart.eml",
        from: "test@example.com",
        subject: "30 plaintext + (HTML + embedded image) + attachment",
        attachments: 2,
        plain_text: Some(true),
        html: Some(true),
        message_id: Some("1e58c8f2-3a15-96e7-76b7-046cf6e1ce1e@example.com"),
    },
    Expected {
        file: "forwarded_rfc822.eml",
        from: "vice-president@whitehouse.gov",
        subject: "[Fwd: Map of Argentina with Description]",
        attachments: 1,
        plain_text: Some(true),
        html: Some(false),
        message_id: None,
    },
    Expected {
        file: "odd_date.eml",
        from: "arthur@example.example",
        subject: "",
        attachments: 0,
        plain_text: None,
        html: None,
        message_id: None,
    },
    Expected {
        file: "malformed_no_header_separator.eml",
        from: "aperson@dom.ain",
        subject: "here's something interesting",
        attachments: 0,
        plain_text: None,
        html: None,
        message_id: None,
    },
    Expected {
        file: "malformed_missing_boundary_end.eml",
        from: "test@example.com",
        subject: "test multipart, related first, with image",
        attachments: 1,
        plain_text: None,
        html: None,
        message_id: None,
    },
    Expected {
        file: "bounce_dsn.eml",
        from: "postmaster@ucla.edu",
        subject: "Delivery Notification: Delivery has failed",
        attachments: 2,
        plain_text: Some(true),
        html: Some(false),
        message_id: Some("0GK500B04D0B8X@cougar.noc.ucla.edu"),
    },
];

#[tokio::test]
async fn every_fixture_is_stored_exactly_and_its_event_matches_the_file() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO fixtures.test", 250).await;

    let mut sent: HashMap<String, (&Expected, Vec<u8>)> = HashMap::new();
    for expected in EXPECTED {
        let bytes = fixture(&format!("eml/{}", expected.file));
        client
            .expect("MAIL FROM:<fixtures@sender.example>", 250)
            .await;
        client.expect("RCPT TO:<agent@example.com>", 250).await;
        let (code, text) = client.data(&bytes).await;
        assert_eq!(code, 250, "{}: {text}", expected.file);
        let message_id = text.rsplit(' ').next().expect("queued id").to_owned();
        assert!(message_id.starts_with("msg_"), "{text}");
        sent.insert(message_id, (expected, bytes));
    }

    for _ in 0..EXPECTED.len() {
        let event = receiver.recv().await.json();
        let message_id = event["message_id"].as_str().expect("message id").to_owned();
        let (expected, bytes) = sent
            .remove(&message_id)
            .expect("event for a message we sent");
        check_event(expected, &event);
        let stored = std::fs::read(
            gateway
                .dir
                .path()
                .join("mail")
                .join(event["s3_key"].as_str().expect("key")),
        )
        .expect("stored file");
        let mut wire = bytes.clone();
        // SMTP can only carry a message that ends in CRLF; the client adds one when missing.
        if !wire.ends_with(b"\r\n") {
            wire.extend_from_slice(b"\r\n");
        }
        assert_eq!(stored, wire, "{} not stored byte-exact", expected.file);
    }
    assert!(sent.is_empty());
}

fn check_event(expected: &Expected, event: &Value) {
    let file = expected.file;
    let email = &event["email"];
    assert_eq!(event["sender"], expected.from, "{file}: sender");
    assert_eq!(
        email["from_address"]["address"], expected.from,
        "{file}: from_address"
    );
    assert_eq!(event["subject"], expected.subject, "{file}: subject");
    assert_eq!(
        email["attachments"].as_array().map(Vec::len),
        Some(expected.attachments),
        "{file}: attachments {}",
        email["attachments"]
    );
    if let Some(has_plain) = expected.plain_text {
        assert_eq!(
            email["plain_text"].is_string(),
            has_plain,
            "{file}: plain_text"
        );
    }
    if let Some(has_html) = expected.html {
        assert_eq!(email["html"].is_string(), has_html, "{file}: html");
    }
    let message_id = expected.message_id.map_or(Value::Null, Value::from);
    assert_eq!(email["message_id"], message_id, "{file}: message_id");
    let prompt = email["prompt"].as_str().expect("prompt");
    assert!(
        prompt.contains(expected.from),
        "{file}: prompt lacks sender: {prompt}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(email["date"].as_str().expect("date")).is_ok(),
        "{file}: date"
    );
}

#[test]
fn reply_fixture_threading_headers() {
    let parsed = mxhook::parse::parse(&fixture("eml/reply_in_reply_to.eml"));
    assert!(parsed.in_reply_to.is_some());
    assert_eq!(parsed.references.len(), 2);
}

#[test]
fn koi8r_body_is_decoded_to_utf8() {
    let parsed = mxhook::parse::parse(&fixture("eml/non_utf8_koi8r.eml"));
    let text = parsed.plain_text.expect("plain text");
    assert!(text.chars().any(|c| ('А'..='я').contains(&c)), "{text}");
}
