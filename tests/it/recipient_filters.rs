//! Which envelope address reached an inbox, end to end: the event's `recipient` and
//! `recipient_tag`, and the rule filters that route on them, on the subject and on attachments.

use std::time::Duration;

use serde_json::json;

use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, simple_message};

/// A message with one attachment.
fn with_attachment(to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: ann@sender.example\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@sender.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n%PDF\r\n--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn events_name_the_recipient_and_rules_route_on_it_the_subject_and_attachments() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut by_tag = WebhookReceiver::start(vec![]).await;
    let mut by_subject = WebhookReceiver::start(vec![]).await;
    let mut by_attachment = WebhookReceiver::start(vec![]).await;
    let mut by_address = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;

    let rules = json!([
        {"name": "billing", "filters": {"recipients": ["agent+*@example.com"], "recipient_tags": ["billing"]},
         "channels": {"webhook": {"url": by_tag.url()}}},
        {"name": "invoices", "filters": {"subject_matches": "(?i)^invoice #\\d+$"},
         "channels": {"webhook": {"url": by_subject.url()}}},
        {"name": "attached", "filters": {"has_attachments": true},
         "channels": {"webhook": {"url": by_attachment.url()}}},
        {"name": "plain address", "filters": {"recipients": ["AGENT@example.com"]},
         "channels": {"webhook": {"url": by_address.url()}}}
    ]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, echoed) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(status, 200, "{echoed}");
    let filters: Vec<_> = echoed
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| rule["filters"].clone())
        .collect();
    assert_eq!(
        filters,
        [
            json!({"recipients": ["agent+*@example.com"], "recipient_tags": ["billing"]}),
            json!({"subject_matches": "(?i)^invoice #\\d+$"}),
            json!({"has_attachments": true}),
            json!({"recipients": ["AGENT@example.com"]}),
        ]
    );

    // The tag's case is kept as sent; the tag filter ignores it. Of two addresses of one
    // inbox, the first in RCPT order is the recipient, so the plain-address rule stays out.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let tagged = simple_message(
        "ann@sender.example",
        "agent+Billing@example.com",
        "Invoice #42",
        "due",
    );
    let (code, text) = client
        .send_message(
            "ann@sender.example",
            &["agent+Billing@example.com", "agent@example.com"],
            &tagged,
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let event = inbox_hook.recv().await.json();
    assert_eq!(event["recipient"], "agent+Billing@example.com", "{event}");
    assert_eq!(event["recipient_tag"], "Billing", "{event}");
    assert_eq!(
        event["envelope_to"],
        json!(["agent+billing@example.com", "agent@example.com"]),
        "{event}"
    );

    let attached = with_attachment("agent@example.com", "the contract");
    let (code, text) = client
        .send_message("ann@sender.example", &["agent@example.com"], &attached)
        .await;
    assert_eq!(code, 250, "{text}");
    let event = inbox_hook.recv().await.json();
    assert_eq!(event["recipient"], "agent@example.com", "{event}");
    assert_eq!(event["recipient_tag"], serde_json::Value::Null, "{event}");

    for (hook, subject) in [
        (&mut by_tag, "Invoice #42"),
        (&mut by_subject, "Invoice #42"),
        (&mut by_attachment, "the contract"),
        (&mut by_address, "the contract"),
    ] {
        assert_eq!(hook.recv().await.json()["subject"], subject);
        hook.assert_silent(Duration::from_millis(300)).await;
    }
    assert_eq!(
        gateway.all_deliveries().await.len(),
        6,
        "each mail has its inbox webhook and two rules"
    );
}

#[tokio::test]
async fn a_subject_pattern_that_does_not_compile_is_a_422_naming_it() {
    let hook = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(hook.url())).await;
    for pattern in ["(unclosed", "\\w{1000}{1000}"] {
        let rules = json!([
            {"name": "fine", "channels": {"webhook": {"url": hook.url()}}},
            {"name": "broken", "filters": {"subject_matches": pattern},
             "channels": {"webhook": {"url": hook.url()}}}
        ]);
        let (status, body) = gateway
            .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
            .await;
        assert_eq!(status, 422, "{pattern}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("rules[1].filters.subject_matches: "),
            "{pattern}: {body}"
        );
    }
    let (status, body) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([]), "nothing of a refused PUT is kept");
}
