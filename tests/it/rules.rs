//! Notification rules through the whole pipeline: rules set over the API route each event to
//! extra webhooks (with their custom headers, signed with the inbox's secret) and email forwards
//! (through a real SMTP server), only when every filter matches.

use std::time::Duration;

use serde_json::json;

use crate::support::gateway::SECRET;
use crate::support::smarthost::Aiosmtpd;
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually,
    python_verifies_agentmail, simple_message,
};

#[tokio::test]
async fn rules_add_webhook_and_email_routes_when_their_filters_match() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![]).await;
    let mut unmatched_hook = WebhookReceiver::start(vec![]).await;
    let smarthost = Aiosmtpd::start().await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    let gateway = TestGateway::start(options).await;

    let rules = json!({"rules": [
        {"name": "to ops", "filters": {"sender_domains": ["sender.example"]},
         "channels": {"webhook": {"url": rule_hook.url(), "custom_headers": {"X-Team": "ops"}},
                      "email": {"recipients": ["ops@elsewhere.example"]}}},
        {"name": "never", "filters": {"sender_domains": ["nomatch.example"]},
         "channels": {"webhook": {"url": unmatched_hook.url()}}}
    ]});
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");

    let bad = json!({"rules": [{"name": "x", "channels": {"webhook": {"url": rule_hook.url(), "custom_headers": {"webhook-id": "forged"}}}}]});
    let (status, _) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(bad))
        .await;
    assert_eq!(status, 400, "a reserved custom header must be refused");

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "ann@sender.example",
        "agent@example.com",
        "routed",
        "for the rules",
    );
    let (code, text) = client
        .send_message("ann@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");

    let to_inbox = inbox_hook.recv().await;
    let to_rule = rule_hook.recv().await;
    assert_eq!(to_rule.header("x-team").as_deref(), Some("ops"));
    assert_eq!(to_rule.json()["event_id"], to_inbox.json()["event_id"]);
    let timestamp = to_rule.header("x-agentmail-timestamp").expect("signed");
    let signature = to_rule.header("x-agentmail-signature").expect("signed");
    assert!(python_verifies_agentmail(
        SECRET,
        &timestamp,
        &to_rule.body,
        &signature
    ));
    unmatched_hook
        .assert_silent(Duration::from_millis(500))
        .await;

    let forwards = eventually("the forward at the smarthost", || async {
        let all = smarthost.delivered();
        (!all.is_empty()).then_some(all)
    })
    .await;
    let forward = mail_parser::MessageParser::default()
        .parse(&forwards[0])
        .expect("forward parses");
    assert_eq!(forward.subject(), Some("Fwd: routed"));
    assert_eq!(
        forward
            .to()
            .and_then(|to| to.first())
            .and_then(|a| a.address()),
        Some("ops@elsewhere.example")
    );

    let delivered = eventually("all three deliveries recorded", || async {
        let list = gateway.deliveries("delivered").await;
        (list.len() == 3).then_some(list)
    })
    .await;
    let mut channels: Vec<String> = delivered
        .iter()
        .map(|d| d["channel"].as_str().unwrap_or_default().to_owned())
        .collect();
    channels.sort();
    assert_eq!(channels, ["email", "webhook", "webhook"]);
    assert_eq!(
        gateway.all_deliveries().await.len(),
        3,
        "the rule that did not match has no job"
    );

    // Every endpoint that was attempted has its own statistics.
    let (status, endpoints) = gateway
        .api("GET", "/v1/inboxes/agent/endpoints", None)
        .await;
    assert_eq!(status, 200, "{endpoints}");
    let mut seen: Vec<(String, String)> = endpoints
        .as_array()
        .expect("a list")
        .iter()
        .map(|endpoint| {
            assert_eq!(endpoint["attempts"], 1, "{endpoint}");
            assert_eq!(endpoint["success_rate"], 1.0, "{endpoint}");
            assert!(endpoint["last_triggered"].is_string(), "{endpoint}");
            (
                endpoint["endpoint_ref"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                endpoint["channel"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{endpoints}");
    assert_eq!(seen[0], ("inbox".to_owned(), "webhook".to_owned()));
    assert!(
        seen[1].0.starts_with("rule:") && seen[1].1 == "email",
        "{seen:?}"
    );
    assert!(
        seen[2].0.starts_with("rule:") && seen[2].1 == "webhook",
        "{seen:?}"
    );
}
