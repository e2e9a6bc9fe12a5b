//! Event types and subscriptions (SPEC "Event types and subscriptions") through the whole
//! pipeline: the inbox webhook's `events` (config and API) and rules' `filters.event_types`
//! route each type only where subscribed; unknown types are refused naming the key; a
//! quarantined mail reaches only `mail.quarantined` subscribers, reduced; `delivery.dead` and
//! `endpoint.disabled` reach their subscribers once, never the endpoint they are about, never
//! about another operational event, and across a `kill -9`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::gateway::{API_KEY, config_toml};
use crate::support::ingress::{calcom_booking, post_calcom};
use crate::support::process::{Process, free_addr};
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, api_at, eventually,
    simple_message,
};

const QUIET: Duration = Duration::from_millis(700);

async fn send(gateway: &TestGateway, from: &str, to: &str, subject: &str) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(from, to, subject, "body text");
    let (code, text) = client.send_message(from, &[to], &message).await;
    assert_eq!(code, 250, "{text}");
}

async fn put_rules(gateway: &TestGateway, inbox: &str, rules: Value) {
    let (status, body) = gateway
        .api(
            "PUT",
            &format!("/v1/inboxes/{inbox}/notifications"),
            Some(json!({ "rules": rules })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn recent() -> String {
    chrono::Utc::now().to_rfc3339()
}

#[tokio::test]
async fn inbox_webhook_events_and_rule_event_types_route_each_type_only_where_subscribed() {
    let mut default_hook = WebhookReceiver::start(vec![]).await;
    let mut calendar_hook = WebhookReceiver::start(vec![]).await;
    let mut everything = WebhookReceiver::start(vec![]).await;
    let mut mail_only = WebhookReceiver::start(vec![]).await;
    // `agent` keeps the default; `other` subscribes to calendar events only, in its config.
    let mut options = GatewayOptions::webhook(default_hook.url());
    options.other_webhook_url = Some(calendar_hook.url());
    options.other_toml =
        "events = [\"calendar.*\"]\ncalendar_event_types = [\"calcom:42\"]\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let (status, hook) = gateway.api("GET", "/v1/inboxes/other/webhook", None).await;
    assert_eq!(status, 200, "{hook}");
    assert_eq!(hook["events"], json!(["calendar.*"]));
    let (_, hook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(hook["events"], json!(["mail.received", "calendar.*"]));
    put_rules(
        &gateway,
        "other",
        json!([
            {"name": "all", "filters": {"event_types": ["*"]},
             "channels": {"webhook": {"url": everything.url()}}},
            {"name": "mail", "filters": {"event_types": ["mail.received"]},
             "channels": {"webhook": {"url": mail_only.url()}}}
        ]),
    )
    .await;
    let (_, echoed) = gateway
        .api("GET", "/v1/inboxes/other/notifications", None)
        .await;
    assert_eq!(echoed[0]["filters"]["event_types"], json!(["*"]));
    assert_eq!(
        echoed[1]["filters"]["event_types"],
        json!(["mail.received"])
    );

    // A mail to `other`: not to its calendar-only webhook, to both rules.
    send(
        &gateway,
        "a@sender.example",
        "other@example.com",
        "hello other",
    )
    .await;
    assert_eq!(everything.recv().await.json()["type"], "mail.received");
    assert_eq!(mail_only.recv().await.json()["subject"], "hello other");
    // A booking for `other`: to its webhook and the `*` rule, not the mail rule.
    let (status, _) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/ingress/calcom",
            Some(json!({"secret": "cal-secret"})),
        )
        .await;
    assert_eq!(status, 200);
    let booking = calcom_booking("BOOKING_CREATED", 42, "bk_sub", &recent());
    let (status, reply) = post_calcom(&gateway, "cal-secret", booking).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        calendar_hook.recv().await.json()["type"],
        "calendar.booking.created"
    );
    assert_eq!(
        everything.recv().await.json()["type"],
        "calendar.booking.created"
    );
    calendar_hook.assert_silent(QUIET).await;
    mail_only.assert_silent(QUIET).await;

    // `agent` by default gets mail; switched by the API to calendar only, it gets none.
    send(&gateway, "a@sender.example", "agent@example.com", "default").await;
    assert_eq!(default_hook.recv().await.json()["subject"], "default");
    let (status, hook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": default_hook.url(), "events": ["calendar.booking.*"]})),
        )
        .await;
    assert_eq!(status, 200, "{hook}");
    assert_eq!(hook["events"], json!(["calendar.booking.*"]));
    // Left out of the next PUT, `events` stays.
    let (_, hook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": default_hook.url()})),
        )
        .await;
    assert_eq!(hook["events"], json!(["calendar.booking.*"]));
    send(&gateway, "a@sender.example", "agent@example.com", "not now").await;
    default_hook.assert_silent(QUIET).await;
    let (_, hook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": default_hook.url(), "events": ["mail.*"]})),
        )
        .await;
    assert_eq!(hook["events"], json!(["mail.*"]));
    send(
        &gateway,
        "a@sender.example",
        "agent@example.com",
        "mail again",
    )
    .await;
    assert_eq!(default_hook.recv().await.json()["subject"], "mail again");
}

#[tokio::test]
async fn unknown_event_types_are_refused_naming_the_field() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    for events in [json!(["mail.recieved"]), json!(["cal.*"]), json!(["*.*"])] {
        let (status, body) = gateway
            .api(
                "PUT",
                "/v1/inboxes/agent/webhook",
                Some(json!({"url": receiver.url(), "events": events})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.starts_with("events:"), "{message}");
    }
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!({"rules": [{"name": "x", "filters": {"event_types": ["mail.received", "delivery.deed"]},
                "channels": {"webhook": {"url": receiver.url()}}}]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("rules[0].filters.event_types") && message.contains("delivery.deed"),
        "{message}"
    );
    let (_, hook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(hook["events"], json!(["mail.received", "calendar.*"]));

    // The config file: `mxhook check-config` fails naming the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::webhook("https://hooks.example.com/x".to_owned());
    options.other_toml = "events = [\"mail.received\", \"endpoint.*\", \"bogus\"]\n".to_owned();
    let path = dir.path().join("bad-events.toml");
    std::fs::write(&path, config_toml(dir.path(), &options)).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run mxhook");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`inbox[1].events`") && stderr.contains("bogus"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_quarantined_mail_reaches_only_mail_quarantined_subscribers_without_its_content() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut held_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.agent_toml =
        "block_senders = [\"blocked.test\"]\npolicy_action = \"quarantine\"\n".to_owned();
    let gateway = TestGateway::start(options).await;
    put_rules(
        &gateway,
        "agent",
        json!([{"name": "held", "filters": {"event_types": ["mail.quarantined"]},
                "channels": {"webhook": {"url": held_hook.url()},
                             "email": {"recipients": ["ops@elsewhere.example"]}}}]),
    )
    .await;

    send(
        &gateway,
        "promo@blocked.test",
        "agent@example.com",
        "held back",
    )
    .await;
    let held = held_hook.recv().await;
    let event = held.json();
    assert_eq!(event["type"], "mail.quarantined", "{event}");
    assert_eq!(event["agent_id"], "agent");
    assert_eq!(event["reason"], json!(["sender is blocked"]));
    assert_eq!(event["headers"]["subject"], "held back");
    assert_eq!(
        event["headers"]["from_address"]["address"],
        "promo@blocked.test"
    );
    assert!(event["headers"]["message_id"].is_string(), "{event}");
    assert!(event["headers"]["date"].is_string(), "{event}");
    for content in ["email", "extracted_text", "s3_key", "warnings"] {
        assert!(event.get(content).is_none(), "{content} in {event}");
    }
    let body = String::from_utf8_lossy(&held.body);
    assert!(!body.contains("body text"), "{body}");
    // The message's own event id, the receivers' idempotency key.
    let message_id = event["message_id"].as_str().expect("message id");
    let (_, message) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(message["quarantined"], true, "{message}");
    assert_eq!(
        held.header("webhook-id").as_deref(),
        event["event_id"].as_str()
    );

    // The default inbox webhook gets no quarantined mail; the same rule gets no passing mail,
    // and a quarantined mail is never forwarded by email.
    inbox_hook.assert_silent(QUIET).await;
    send(
        &gateway,
        "friend@sender.example",
        "agent@example.com",
        "fine",
    )
    .await;
    assert_eq!(inbox_hook.recv().await.json()["type"], "mail.received");
    held_hook.assert_silent(QUIET).await;
    let deliveries = gateway.all_deliveries().await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert!(
        deliveries
            .iter()
            .all(|delivery| delivery["channel"] == "webhook"),
        "{deliveries:?}"
    );
}

/// A gateway whose inbox webhook always fails (`max_retries` 1: two attempts) and whose
/// `ops` rule subscribes to `ops_events`.
async fn failing_inbox_with_ops_rule(
    failing: &WebhookReceiver,
    ops: &WebhookReceiver,
    ops_events: Value,
) -> TestGateway {
    let mut options = GatewayOptions::webhook(failing.url());
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    put_rules(
        &gateway,
        "agent",
        json!([{"id": "ops", "name": "ops", "filters": {"event_types": ops_events},
                "channels": {"webhook": {"url": ops.url(), "max_retries": 1}}}]),
    )
    .await;
    gateway
}

#[tokio::test]
async fn delivery_dead_reaches_its_subscriber_once_and_never_the_dead_endpoint() {
    let mut failing = WebhookReceiver::start(vec![Reply::Status(500); 20]).await;
    let mut ops = WebhookReceiver::start(vec![]).await;
    // The inbox webhook subscribes to delivery.dead too: it must not get its own.
    let gateway = failing_inbox_with_ops_rule(&failing, &ops, json!(["delivery.*"])).await;
    let (status, _) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": failing.url(), "events": ["mail.received", "delivery.dead"]})),
        )
        .await;
    assert_eq!(status, 200);

    send(&gateway, "a@sender.example", "agent@example.com", "doomed").await;
    let first = failing.recv().await.json();
    assert_eq!(first["type"], "mail.received");
    failing.recv().await;
    let dead = ops.recv().await;
    let event = dead.json();
    assert_eq!(event["type"], "delivery.dead", "{event}");
    assert_eq!(event["endpoint"], "inbox");
    assert_eq!(event["event_id"], first["event_id"]);
    assert_eq!(event["message_id"], first["message_id"]);
    assert_eq!(event["attempts"], 2);
    assert_eq!(event["last_status_code"], 500);
    assert_eq!(event["last_error"], "HTTP 500");
    let dead_list = gateway.deliveries("dead").await;
    assert_eq!(dead_list.len(), 1, "{dead_list:?}");
    assert_eq!(event["delivery_id"], dead_list[0]["id"]);
    assert_eq!(dead.header("webhook-id").as_deref(), event["id"].as_str());
    assert_ne!(event["id"], event["event_id"]);
    ops.assert_silent(QUIET).await;
    failing.assert_silent(QUIET).await;

    // A resend raises nothing by itself; dead-lettered again, the delivery raises one again.
    let dead_id = dead_list[0]["id"].as_str().expect("id");
    let (status, _) = gateway
        .api("POST", &format!("/v1/deliveries/{dead_id}/resend"), None)
        .await;
    assert_eq!(status, 202);
    failing.recv().await;
    failing.recv().await;
    let again = ops.recv().await.json();
    assert_eq!(again["type"], "delivery.dead");
    assert_eq!(again["delivery_id"], dead_id);
    assert_ne!(again["id"], event["id"]);
    ops.assert_silent(QUIET).await;
    failing.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_dead_operational_delivery_raises_nothing() {
    let mut failing = WebhookReceiver::start(vec![Reply::Status(500); 20]).await;
    let mut ops = WebhookReceiver::start(vec![Reply::Status(500); 20]).await;
    let mut watcher = WebhookReceiver::start(vec![]).await;
    let gateway = failing_inbox_with_ops_rule(&failing, &ops, json!(["*"])).await;
    put_rules(
        &gateway,
        "agent",
        json!([
            {"id": "ops", "name": "ops", "filters": {"event_types": ["*"]},
             "channels": {"webhook": {"url": ops.url(), "max_retries": 1}}},
            {"id": "watch", "name": "watch", "filters": {"event_types": ["delivery.dead"]},
             "channels": {"webhook": {"url": watcher.url()}}}
        ]),
    )
    .await;

    send(&gateway, "a@sender.example", "agent@example.com", "doomed").await;
    // The inbox webhook's mail delivery dies: its delivery.dead goes to `ops` (which fails it
    // twice) and `watch`. The `ops` mail delivery dies: its delivery.dead goes to `watch`
    // only, never to `ops`. The `ops` delivery of the first delivery.dead dies: nothing.
    failing.recv().await;
    failing.recv().await;
    let mut ops_types = Vec::new();
    for _ in 0..4 {
        let event = ops.recv().await.json();
        if event["type"] == "delivery.dead" {
            assert_eq!(event["endpoint"], "inbox", "{event}");
        }
        ops_types.push(event["type"].as_str().expect("type").to_owned());
    }
    ops_types.sort();
    assert_eq!(
        ops_types,
        [
            "delivery.dead",
            "delivery.dead",
            "mail.received",
            "mail.received"
        ]
    );
    let mut about: Vec<String> = Vec::new();
    for _ in 0..2 {
        let event = watcher.recv().await.json();
        assert_eq!(event["type"], "delivery.dead", "{event}");
        assert_eq!(
            event["event_id"].as_str().map(|id| id.starts_with("evt_")),
            Some(true)
        );
        about.push(event["endpoint"].as_str().expect("endpoint").to_owned());
    }
    about.sort();
    assert_eq!(about, ["inbox", "rule:ops"]);
    let deliveries = eventually("the ops delivery of delivery.dead to be dead", || async {
        let dead = gateway.deliveries("dead").await;
        (dead.len() == 3).then_some(dead)
    })
    .await;
    assert_eq!(deliveries.len(), 3);
    watcher.assert_silent(QUIET).await;
    ops.assert_silent(QUIET).await;
    failing.assert_silent(QUIET).await;
    assert_eq!(gateway.all_deliveries().await.len(), 5);
}

#[tokio::test]
async fn endpoint_disabled_on_410_reaches_its_subscriber() {
    let mut gone = WebhookReceiver::start(vec![Reply::Status(410)]).await;
    let mut ops = WebhookReceiver::start(vec![]).await;
    let gateway = failing_inbox_with_ops_rule(&gone, &ops, json!(["endpoint.disabled"])).await;

    send(&gateway, "a@sender.example", "agent@example.com", "gone").await;
    gone.recv().await;
    let event = ops.recv().await.json();
    assert_eq!(event["type"], "endpoint.disabled", "{event}");
    assert_eq!(event["endpoint"], "inbox");
    assert_eq!(event["agent_id"], "agent");
    assert!(
        event["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("410")),
        "{event}"
    );
    let (_, hook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(hook["enabled"], false);
    ops.assert_silent(QUIET).await;
    gone.assert_silent(QUIET).await;
}

/// The gateway is killed while the attempt that dead-letters a delivery is in flight; the
/// restarted one makes that attempt again and raises `delivery.dead` exactly once.
#[tokio::test]
async fn delivery_dead_is_raised_once_across_a_kill_9_at_the_dead_lettering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing_addr = free_addr();
    let mut ops = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(format!("http://{failing_addr}/hook"));
    options.max_retries = 1;
    options.delivery_timeout_s = 1;
    options.lease_s = 2;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let listener = tokio::net::TcpListener::bind(failing_addr)
        .await
        .expect("bind receiver");
    // The first attempt fails, the last one hangs until the gateway is killed, and its
    // repetition after the restart fails.
    let mut failing = WebhookReceiver::serve(
        listener,
        vec![Reply::Status(500), Reply::Hang, Reply::Status(500)],
    );

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let (status, body) = api_at(
        process.http,
        API_KEY,
        "PUT",
        "/v1/inboxes/agent/notifications",
        Some(
            json!({"rules": [{"name": "ops", "filters": {"event_types": ["delivery.dead"]},
                               "channels": {"webhook": {"url": ops.url()}}}]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut client = SmtpClient::connect(process.smtp).await;
    let message = simple_message("k@sender.example", "agent@example.com", "dies", "body");
    let (code, text) = client
        .send_message("k@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    failing.recv().await;
    failing.recv().await;
    process.kill_9();
    ops.assert_silent(QUIET).await;

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    failing.recv().await;
    let event = ops.recv().await.json();
    assert_eq!(event["type"], "delivery.dead", "{event}");
    assert_eq!(
        event["attempts"], 2,
        "the killed attempt was never recorded"
    );
    ops.assert_silent(QUIET).await;
    let (_, all) = api_at(process.http, API_KEY, "GET", "/v1/deliveries", None).await;
    let deliveries = all["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 2, "{all}");
    process.kill_9();
}
