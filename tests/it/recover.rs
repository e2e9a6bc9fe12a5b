//! `POST /v1/inboxes/{id}/deliveries/recover`: the window, status and endpoint filters, fresh
//! retry budgets, acceptance order on an ordered endpoint, the per-call bound, the inbox scope
//! and the answers to bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
    threaded_mail,
};

fn recover_path(inbox: &str) -> String {
    format!("/v1/inboxes/{inbox}/deliveries/recover")
}

/// Drops the requests a receiver recorded so far, once none has come for a while.
async fn drain(receiver: &mut WebhookReceiver) {
    while receiver
        .recv_timeout(Duration::from_millis(200))
        .await
        .is_some()
    {}
}

/// The gateway message id of each of the next `n` requests, in arrival order.
async fn next_message_ids(receiver: &mut WebhookReceiver, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let event = receiver.recv().await.json();
        ids.push(event["message_id"].as_str().expect("message_id").to_owned());
    }
    ids
}

/// The deliveries of one inbox whose target is `url`, oldest accepted first.
async fn deliveries_to(gateway: &TestGateway, inbox: &str, url: &str) -> Vec<Value> {
    let (status, body) = gateway
        .api(
            "GET",
            &format!("/v1/inboxes/{inbox}/deliveries?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut list: Vec<Value> = body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|delivery| delivery["target"] == url)
        .cloned()
        .collect();
    list.sort_by_key(|delivery| {
        delivery["created_at"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    list
}

fn field<'a>(delivery: &'a Value, name: &str) -> &'a str {
    delivery[name].as_str().expect("a string field")
}

#[tokio::test]
async fn recover_requeues_exactly_the_matching_dead_deliveries_in_acceptance_order() {
    let mut inbox_hook = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut rule_hook = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.agent_toml = "ordered = true\n".to_owned();
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;
    let rules = json!([{"name": "copy",
                        "channels": {"webhook": {"url": rule_hook.url(), "max_retries": 1}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");
    let rule_ref = format!("rule:{}", body[0]["id"].as_str().expect("rule id"));

    // One thread of six messages: the ordered inbox webhook takes them one after another.
    let token = crate::support::rand_token();
    let root = format!("<root-{token}@client.example>");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    for n in 0..6 {
        let headers = if n == 0 {
            format!("Subject: Plan\r\nMessage-ID: {root}")
        } else {
            format!(
                "Subject: Re: Plan\r\nMessage-ID: <reply-{n}-{token}@client.example>\r\n\
                 In-Reply-To: {root}\r\nReferences: {root}"
            )
        };
        let (code, text) = client
            .send_message(
                "jane@client.example",
                &["agent@example.com"],
                &threaded_mail(&headers, &format!("message {n}")),
            )
            .await;
        assert_eq!(code, 250, "{text}");
    }
    let (inbox_url, rule_url) = (inbox_hook.url(), rule_hook.url());
    let dead = eventually("all twelve deliveries dead", || async {
        let inbox = deliveries_to(&gateway, "agent", &inbox_url).await;
        let rule = deliveries_to(&gateway, "agent", &rule_url).await;
        let all_dead =
            |list: &[Value]| list.len() == 6 && list.iter().all(|d| d["status"] == "dead");
        (all_dead(&inbox) && all_dead(&rule)).then_some(inbox)
    })
    .await;
    drain(&mut inbox_hook).await;
    drain(&mut rule_hook).await;
    let message = |n: usize| field(&dead[n], "message_id").to_owned();

    // The inbox webhook's second to fourth, each failing once more before it goes through:
    // the retry budget is fresh (max_retries = 1 was spent before).
    inbox_hook.set_script(vec![Reply::Status(500)]);
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(json!({
                "since": field(&dead[1], "created_at"),
                "until": field(&dead[4], "created_at"),
                "endpoint": "inbox",
            })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"requeued": 3}));
    let arrived = next_message_ids(&mut inbox_hook, 4).await;
    assert_eq!(
        arrived,
        [message(1), message(1), message(2), message(3)],
        "in acceptance order, the refused one retried before the next"
    );
    rule_hook.assert_silent(Duration::from_millis(300)).await;
    let after = eventually("the three recovered deliveries delivered", || async {
        let list = deliveries_to(&gateway, "agent", &inbox_url).await;
        (list[1..4].iter().all(|d| d["status"] == "delivered")).then_some(list)
    })
    .await;
    for (n, delivery) in after.iter().enumerate() {
        let expected = if (1..4).contains(&n) {
            "delivered"
        } else {
            "dead"
        };
        assert_eq!(delivery["status"], expected, "{delivery}");
        assert_eq!(delivery["event_id"], dead[n]["event_id"], "same event");
    }
    assert_eq!(after[1]["attempts"], 4, "{}", after[1]);
    assert_eq!(after[2]["attempts"], 3, "{}", after[2]);
    let rules_still_dead = deliveries_to(&gateway, "agent", &rule_url).await;
    assert!(rules_still_dead.iter().all(|d| d["status"] == "dead"));
    inbox_hook.assert_silent(Duration::from_millis(300)).await;

    // status "any": dead and delivered ones of the inbox webhook, all six, oldest first.
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(
                json!({"since": field(&dead[0], "created_at"), "status": "any",
                        "endpoint": "inbox"}),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["requeued"], 6);
    let arrived = next_message_ids(&mut inbox_hook, 6).await;
    assert_eq!(arrived, (0..6).map(message).collect::<Vec<_>>());
    rule_hook.assert_silent(Duration::from_millis(300)).await;
    eventually("the inbox webhook's six delivered", || async {
        let list = deliveries_to(&gateway, "agent", &inbox_url).await;
        list.iter()
            .all(|d| d["status"] == "delivered")
            .then_some(())
    })
    .await;

    // The rule's endpoint alone; nothing of the inbox webhook is dead any more.
    rule_hook.set_script(Vec::new());
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(json!({"since": "2000-01-01T00:00:00Z", "endpoint": rule_ref})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["requeued"], 6);
    let arrived: BTreeSet<String> = next_message_ids(&mut rule_hook, 6)
        .await
        .into_iter()
        .collect();
    assert_eq!(arrived, (0..6).map(message).collect::<BTreeSet<_>>());
    inbox_hook.assert_silent(Duration::from_millis(300)).await;
    eventually("the rule's six delivered", || async {
        let list = deliveries_to(&gateway, "agent", &rule_url).await;
        list.iter()
            .all(|d| d["status"] == "delivered")
            .then_some(())
    })
    .await;
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((status, body), (202, json!({"requeued": 0})));
}

#[tokio::test]
async fn recover_refuses_a_window_too_wide_bad_input_and_other_inboxes() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let mut hanging = WebhookReceiver::start(vec![Reply::Hang]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.other_webhook_url = Some(hanging.url());
    let gateway = TestGateway::start(options).await;
    // Twenty rules beside the inbox webhook: 48 messages make 1008 deliveries, past the bound
    // of 1000 per call.
    let rules: Vec<Value> = (0..20)
        .map(|n| json!({"name": format!("copy {n}"), "channels": {"webhook": {"url": receiver.url()}}}))
        .collect();
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(json!(rules)))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    for n in 0..48 {
        let message = simple_message(
            "a@sender.example",
            "agent@example.com",
            &format!("bulk {n}"),
            "body",
        );
        let (code, text) = client
            .send_message("a@sender.example", &["agent@example.com"], &message)
            .await;
        assert_eq!(code, 250, "{text}");
    }
    for _ in 0..1008 {
        receiver.recv().await;
    }
    eventually("nothing pending", || async {
        gateway.deliveries("pending").await.is_empty().then_some(())
    })
    .await;

    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(json!({"since": "2000-01-01T00:00:00Z", "status": "any"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_deliveries", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("1000") && message.contains("narrow"),
        "{message}"
    );
    assert!(gateway.deliveries("pending").await.is_empty());
    receiver.assert_silent(Duration::from_millis(300)).await;

    // Narrowed to one endpoint, the same window goes through.
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("agent"),
            Some(json!({"since": "2000-01-01T00:00:00Z", "status": "any", "endpoint": "inbox"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["requeued"], 48);
    let mut subjects = BTreeSet::new();
    while subjects.len() < 48 {
        let event = receiver.recv().await.json();
        subjects.insert(event["subject"].as_str().expect("subject").to_owned());
    }

    // A pending delivery (its request hangs) is never touched.
    let mut other = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "other@example.com", "held", "body");
    let (code, text) = other
        .send_message("a@sender.example", &["other@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    hanging.recv().await;
    let (status, body) = gateway
        .api(
            "POST",
            &recover_path("other"),
            Some(json!({"since": "2000-01-01T00:00:00Z", "status": "any"})),
        )
        .await;
    assert_eq!((status, body), (202, json!({"requeued": 0})));

    // An inbox key reaches its own inbox only; an unknown inbox is not found either.
    let (status, created) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key");
    let since = json!({"since": "2000-01-01T00:00:00Z", "endpoint": "inbox"});
    let (status, body) = gateway
        .api_as(key, "POST", &recover_path("other"), Some(since.clone()))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gateway
        .api("POST", &recover_path("nobody"), Some(since.clone()))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gateway
        .api_as(key, "POST", &recover_path("agent"), Some(since))
        .await;
    assert_eq!((status, body), (202, json!({"requeued": 0})));

    // Bad input: a 4xx whose message names the field.
    for (request, expected_status, field) in [
        (json!({"since": "yesterday"}), 400, "since"),
        (
            json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
            400,
            "until",
        ),
        (
            json!({"since": "2026-01-01T00:00:00Z", "until": "noon"}),
            400,
            "until",
        ),
        (
            json!({"since": "2026-01-01T00:00:00Z", "status": "delivered"}),
            400,
            "status",
        ),
        (
            json!({"since": "2026-01-01T00:00:00Z", "endpoint": "rule:"}),
            400,
            "endpoint",
        ),
        (
            json!({"since": "2026-01-01T00:00:00Z", "endpoint": "webhook"}),
            400,
            "endpoint",
        ),
        (json!({"until": "2026-01-01T00:00:00Z"}), 422, "since"),
        (
            json!({"since": "2026-01-01T00:00:00Z", "window": 1}),
            422,
            "window",
        ),
    ] {
        let (status, body) = gateway
            .api("POST", &recover_path("agent"), Some(request.clone()))
            .await;
        assert_eq!(status, expected_status, "{request}: {body}");
        let message = body["error"]["message"].as_str().expect("an error message");
        assert!(message.contains(field), "{request}: {message}");
    }
    assert!(gateway.deliveries("dead").await.is_empty());
}
