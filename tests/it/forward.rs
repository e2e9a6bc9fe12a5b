//! The email-forward channel against a real, independent SMTP server (Python's aiosmtpd, keeping
//! every message it receives as a file): what arrives is a well-formed forward with the original attached byte for byte.

use mxhook::config::ForwardConfig;
use mxhook::deliver::forward::{Error, Forwarder};

use crate::support::smarthost::Aiosmtpd;
use crate::support::{eventually, fixture};

fn forwarder(smarthost: Option<String>) -> Forwarder {
    Forwarder::new(
        &ForwardConfig {
            smarthost,
            from_address: None,
        },
        "mx.test.example",
    )
    .expect("forwarder")
}

fn sample_event(raw: &[u8]) -> mxhook::event::Event {
    let parsed = mxhook::parse::parse(raw);
    let envelope = mxhook::model::Envelope::default();
    let event = mxhook::event::build(
        &mxhook::event::EventContext {
            event_id: "evt_forward",
            message_id: "msg_forward",
            agent_id: "agent",
            received_at_ms: 1_776_340_800_000,
            envelope: &envelope,
            inbox_recipients: &[],
            s3_bucket: "b",
            s3_key: "k",
            size: raw.len(),
            max_payload_bytes: 1 << 20,
            thread: &mxhook::thread::Thread {
                thread_id: "thr_forward".to_owned(),
                ..Default::default()
            },
            templates: &mxhook::prompt::Templates::default(),
            direction: mxhook::model::Direction::Inbound,
        },
        &parsed,
    );
    mxhook::event::Event::Mail(event)
}

fn check_forward(delivered: &[u8], original: &[u8]) {
    let message = mail_parser::MessageParser::default()
        .parse(delivered)
        .expect("forward parses");
    let from = message.from().and_then(|f| f.first()).expect("from");
    assert_eq!(from.address(), Some("mxhook@mx.test.example"));
    assert!(
        from.name().is_some_and(|name| name.ends_with("via mxhook")),
        "{:?}",
        from.name()
    );
    assert_eq!(
        message
            .reply_to()
            .and_then(|r| r.first())
            .and_then(|a| a.address()),
        Some("barry@digicool.com")
    );
    assert_eq!(message.subject(), Some("Fwd: Here is your dingus fish"));
    assert_eq!(
        message.header("Auto-Submitted").and_then(|v| v.as_text()),
        Some("auto-forwarded")
    );
    let text = message.body_text(0).expect("text part");
    assert!(
        text.contains("Forwarded by mxhook for inbox **agent**"),
        "{text}"
    );
    assert!(text.contains("dingusfish.gif"), "{text}");
    let html = message.body_html(0).expect("html part");
    assert!(html.contains("<strong>agent</strong>"), "{html}");
    let attachment = message.attachments().next().expect("original attached");
    let Some(inner) = attachment.message() else {
        panic!("attachment is not message/rfc822");
    };
    assert!(
        inner.raw_message() == original,
        "original not attached byte for byte"
    );
}

#[tokio::test]
async fn forward_arrives_with_rewritten_from_reply_to_and_the_original_attached() {
    let server = Aiosmtpd::start().await;
    let original = fixture("eml/multipart_mixed_attachment.eml");
    let event = sample_event(&original);
    forwarder(Some(format!("smtp://{}", server.addr)))
        .forward(
            &event,
            &original,
            &[
                "ops@elsewhere.example".to_owned(),
                "boss@elsewhere.example".to_owned(),
            ],
        )
        .await
        .expect("forward sent");
    let delivered = eventually("the forward in the Maildir", || async {
        let all = server.delivered();
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(delivered.len(), 1, "one message for both recipients");
    check_forward(&delivered[0], &original);
}

#[tokio::test]
async fn forward_failures_say_whether_to_retry() {
    let err = forwarder(None)
        .forward(
            &sample_event(b"From: a@b.example\r\n\r\nx\r\n"),
            b"x",
            &["ops@elsewhere.example".to_owned()],
        )
        .await
        .expect_err("no smarthost");
    assert!(matches!(err, Error::NoSmarthost) && !err.is_transient());

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = forwarder(Some(format!("smtp://{closed}")))
        .forward(
            &sample_event(b"From: a@b.example\r\n\r\nx\r\n"),
            b"x",
            &["ops@elsewhere.example".to_owned()],
        )
        .await
        .expect_err("nobody listens");
    assert!(err.is_transient(), "{err}");
}
