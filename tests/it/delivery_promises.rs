//! Delivery promises of the README that the other delivery tests leave out: per-thread ordering
//! past a dead letter and on API-set and rule webhooks, `disable_after_s = 0`, the fresh retry
//! budget of a resend, a rule webhook's own `timeout_s` and `max_retries`, and plain-http URLs
//! when `delivery.allow_http` is off.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::gateway::config_toml;
use crate::support::threaded_mail;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};

async fn send_to(gateway: &TestGateway, to: &str, subject: &str) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", to, subject, "body");
    let (code, text) = client
        .send_message("a@sender.example", &[to], &message)
        .await;
    assert_eq!(code, 250, "{text}");
}

/// Sends a root message to the agent inbox, waits until `receiver` has had its first delivery
/// (which the test's script refuses, so it waits for a retry), then sends a reply to it, and
/// returns the subjects of that first request and of the next two, in the order they came.
async fn root_then_reply(gateway: &TestGateway, receiver: &mut WebhookReceiver) -> Vec<String> {
    let token = crate::support::rand_token();
    let root_id = format!("<root-{token}@client.example>");
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let root = threaded_mail(
        &format!("Subject: Plan\r\nMessage-ID: {root_id}"),
        "Shall we plan?",
    );
    let (code, text) = client
        .send_message("jane@client.example", &["agent@example.com"], &root)
        .await;
    assert_eq!(code, 250, "{text}");
    let subject = |request: crate::support::Received| {
        request.json()["subject"]
            .as_str()
            .expect("a subject")
            .to_owned()
    };
    let mut subjects = vec![subject(receiver.recv().await)];

    // The root's delivery is now pending a retry; the reply is accepted meanwhile.
    let reply = threaded_mail(
        &format!(
            "Subject: Re: Plan\r\nMessage-ID: <reply-{token}@client.example>\r\nIn-Reply-To: {root_id}"
        ),
        "Yes.",
    );
    let (code, text) = client
        .send_message("jane@client.example", &["agent@example.com"], &reply)
        .await;
    assert_eq!(code, 250, "{text}");
    subjects.push(subject(receiver.recv().await));
    subjects.push(subject(receiver.recv().await));
    subjects
}

/// The deliveries of the agent inbox to `url` (an inbox's and a rule's webhook differ by URL).
async fn deliveries_to(gateway: &TestGateway, url: &str) -> Vec<Value> {
    let (status, body) = gateway
        .api("GET", "/v1/inboxes/agent/deliveries", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|delivery| delivery["target"] == url)
        .cloned()
        .collect()
}

/// Waits until the agent inbox has `count` deliveries to `url` and all of them have `status`.
async fn all_to_have_status(
    gateway: &TestGateway,
    url: &str,
    count: usize,
    status: &str,
) -> Vec<Value> {
    eventually(
        &format!("{count} deliveries to {url} to be {status}"),
        || async {
            let list = deliveries_to(gateway, url).await;
            (list.len() == count && list.iter().all(|delivery| delivery["status"] == status))
                .then_some(list)
        },
    )
    .await
}

/// The attempt records of one delivery.
async fn attempts_of(gateway: &TestGateway, delivery: &Value) -> Vec<Value> {
    gateway
        .attempts(delivery["id"].as_str().expect("delivery id"))
        .await
}

/// The subject of the message a delivery carries.
async fn subject_of(gateway: &TestGateway, delivery: &Value) -> String {
    let message_id = delivery["message_id"].as_str().expect("message id");
    let (status, event) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(status, 200, "{event}");
    event["subject"].as_str().expect("a subject").to_owned()
}

#[tokio::test]
async fn a_dead_lettered_delivery_no_longer_holds_its_thread_back() {
    // The root is refused twice (its whole budget with max_retries = 1); Retry-After keeps it
    // pending long enough for the reply to be accepted behind it.
    let mut receiver =
        WebhookReceiver::start(vec![Reply::StatusRetryAfter(503, 2), Reply::Status(500)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.agent_toml = "ordered = true\n".to_owned();
    options.max_retries = 1;
    let gateway = TestGateway::start(options).await;

    let subjects = root_then_reply(&gateway, &mut receiver).await;
    assert_eq!(
        subjects,
        ["Plan", "Plan", "Re: Plan"],
        "the reply waits for the root's last attempt, then goes"
    );
    let url = receiver.url();
    let (root, reply) = eventually("the root dead and the reply delivered", || async {
        let list = deliveries_to(&gateway, &url).await;
        let dead = list.iter().find(|delivery| delivery["status"] == "dead")?;
        let delivered = list
            .iter()
            .find(|delivery| delivery["status"] == "delivered")?;
        Some((dead.clone(), delivered.clone()))
    })
    .await;
    assert_eq!(subject_of(&gateway, &root).await, "Plan");
    assert_eq!(subject_of(&gateway, &reply).await, "Re: Plan");
    assert_eq!(attempts_of(&gateway, &root).await.len(), 2, "{root}");
    assert_eq!(attempts_of(&gateway, &reply).await.len(), 1, "{reply}");
    receiver.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_ordered_webhook_set_through_the_api_holds_a_reply_back() {
    let mut receiver = WebhookReceiver::start(vec![Reply::StatusRetryAfter(503, 2)]).await;
    // The config's webhook is not ordered; the API turns ordering on.
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, webhook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": receiver.url(), "ordered": true})),
        )
        .await;
    assert_eq!(status, 200, "{webhook}");
    assert_eq!(webhook["ordered"], true, "{webhook}");

    let subjects = root_then_reply(&gateway, &mut receiver).await;
    assert_eq!(
        subjects,
        ["Plan", "Plan", "Re: Plan"],
        "the root's retry comes before the reply"
    );
    all_to_have_status(&gateway, &receiver.url(), 2, "delivered").await;
}

#[tokio::test]
async fn an_ordered_rule_webhook_holds_a_reply_back() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut rule_hook = WebhookReceiver::start(vec![Reply::StatusRetryAfter(503, 2)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;
    let rules = json!([{"name": "ordered copy",
                        "channels": {"webhook": {"url": rule_hook.url(), "ordered": true}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["channels"]["webhook"]["ordered"], true, "{body}");

    let subjects = root_then_reply(&gateway, &mut rule_hook).await;
    assert_eq!(
        subjects,
        ["Plan", "Plan", "Re: Plan"],
        "the root's retry comes before the reply"
    );
    all_to_have_status(&gateway, &rule_hook.url(), 2, "delivered").await;
    // The inbox webhook, not ordered and never refused, had both at once.
    for _ in 0..2 {
        inbox_hook.recv().await;
    }
    all_to_have_status(&gateway, &inbox_hook.url(), 2, "delivered").await;
}

#[tokio::test]
async fn disable_after_zero_never_disables_a_failing_endpoint() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 2;
    options.delivery_toml = "disable_after_s = 0\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let url = receiver.url();
    let attempts_each = 3;

    send_to(&gateway, "agent@example.com", "first").await;
    all_to_have_status(&gateway, &url, 1, "dead").await;
    // The second message comes after the endpoint has failed for a while: it still gets a
    // job, and the job gets its whole budget.
    send_to(&gateway, "agent@example.com", "second").await;
    let dead = all_to_have_status(&gateway, &url, 2, "dead").await;
    for delivery in &dead {
        let attempts = attempts_of(&gateway, delivery).await;
        assert_eq!(attempts.len(), attempts_each, "{delivery}");
        for attempt in &attempts {
            assert_eq!(attempt["outcome"], "http_error", "{attempt}");
            assert_eq!(attempt["error"], "HTTP 500", "{attempt}");
        }
        assert_eq!(delivery["last_error"], "HTTP 500", "{delivery}");
    }
    for _ in 0..2 * attempts_each {
        receiver.recv().await;
    }
    receiver.assert_silent(Duration::from_millis(300)).await;

    let (status, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 200, "{webhook}");
    assert_eq!(webhook["enabled"], true, "{webhook}");
    assert_eq!(webhook["disabled_reason"], Value::Null, "{webhook}");
    assert_eq!(webhook["stats"]["attempts"], 2 * attempts_each, "{webhook}");
    assert_eq!(webhook["stats"]["delivered"], 0, "{webhook}");
}

#[tokio::test]
async fn a_resent_dead_letter_gets_the_full_retry_budget_again() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 2;
    let budget = 3_usize;
    let gateway = TestGateway::start(options).await;

    send_to(&gateway, "agent@example.com", "doomed twice").await;
    let dead = all_to_have_status(&gateway, &receiver.url(), 1, "dead").await;
    assert_eq!(attempts_of(&gateway, &dead[0]).await.len(), budget);
    let id = dead[0]["id"].as_str().expect("id").to_owned();

    let (status, body) = gateway
        .api("POST", &format!("/v1/deliveries/{id}/resend"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    let resent = eventually("the resent delivery to be dead again", || async {
        let (_, delivery) = gateway
            .api("GET", &format!("/v1/deliveries/{id}"), None)
            .await;
        (delivery["status"] == "dead" && delivery["attempts"].as_u64()? > budget as u64)
            .then_some(delivery)
    })
    .await;
    let attempts = attempts_of(&gateway, &resent).await;
    assert_eq!(
        attempts.len(),
        2 * budget,
        "the resend had a whole budget of its own: {attempts:?}"
    );
    assert_eq!(resent["attempts"], 2 * budget, "{resent}");
    for _ in 0..2 * budget {
        receiver.recv().await;
    }
    receiver.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_rule_webhook_dead_letters_after_its_own_max_retries() {
    let mut inbox_hook = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut rule_hook = WebhookReceiver::start(vec![Reply::Status(500); 1000]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.max_retries = 3;
    let gateway = TestGateway::start(options).await;
    let rules = json!([{"name": "short budget",
                        "channels": {"webhook": {"url": rule_hook.url(), "max_retries": 1}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");

    send_to(&gateway, "agent@example.com", "fails everywhere").await;
    let rule_dead = all_to_have_status(&gateway, &rule_hook.url(), 1, "dead").await;
    let inbox_dead = all_to_have_status(&gateway, &inbox_hook.url(), 1, "dead").await;
    assert_eq!(
        attempts_of(&gateway, &rule_dead[0]).await.len(),
        2,
        "the rule's max_retries = 1: one attempt and one retry"
    );
    assert_eq!(
        attempts_of(&gateway, &inbox_dead[0]).await.len(),
        4,
        "the inbox webhook keeps delivery.max_retries = 3"
    );
    for _ in 0..2 {
        rule_hook.recv().await;
    }
    for _ in 0..4 {
        inbox_hook.recv().await;
    }
    rule_hook.assert_silent(Duration::from_millis(300)).await;
    inbox_hook.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_rule_webhook_times_out_after_its_own_timeout() {
    const DELIVERY_TIMEOUT_S: u64 = 10;
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut hanging = WebhookReceiver::start(vec![Reply::Hang]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.delivery_timeout_s = DELIVERY_TIMEOUT_S;
    options.lease_s = 30;
    let gateway = TestGateway::start(options).await;
    let rules = json!([{"name": "impatient",
                        "channels": {"webhook": {"url": hanging.url(), "timeout_s": 1,
                                                 "max_retries": 0}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 200, "{body}");

    send_to(&gateway, "agent@example.com", "hangs at the rule").await;
    inbox_hook.recv().await;
    hanging.recv().await;
    let dead = all_to_have_status(&gateway, &hanging.url(), 1, "dead").await;
    let attempts = attempts_of(&gateway, &dead[0]).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "error", "{attempts:?}");
    assert_eq!(attempts[0]["error"], "request timed out", "{attempts:?}");
    let latency = attempts[0]["latency_ms"].as_i64().expect("latency");
    assert!(
        (900..5_000).contains(&latency),
        "timed out after {latency} ms, not after the rule's 1 s (the delivery default is {DELIVERY_TIMEOUT_S} s)"
    );
}

#[test]
fn check_config_refuses_a_plain_http_webhook_when_allow_http_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |allow_http: bool| {
        let mut options = GatewayOptions::webhook("http://hooks.example.com/hook".to_owned());
        options.allow_http = allow_http;
        let path = dir.path().join(format!("allow-http-{allow_http}.toml"));
        std::fs::write(&path, config_toml(dir.path(), &options)).expect("write config");
        std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run mxhook")
    };
    let refused = check(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`inbox[0].webhook_url`") && stderr.contains("must be https"),
        "{stderr}"
    );
    // The same file with allow_http on passes: the scheme was the only fault.
    let allowed = check(true);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[tokio::test]
async fn the_api_refuses_plain_http_webhooks_when_allow_http_is_off() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::no_webhook();
    options.allow_http = false;
    let gateway = TestGateway::start(options).await;

    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": receiver.url()})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("url:") && message.contains("must be https"),
        "{message}"
    );
    let rules = json!([{"name": "plain", "channels": {"webhook": {"url": receiver.url()}}}]);
    let (status, body) = gateway
        .api("PUT", "/v1/inboxes/agent/notifications", Some(rules))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("rules[0].channels.webhook.url:") && message.contains("must be https"),
        "{message}"
    );

    // Nothing was stored, so a message makes no delivery job.
    let (status, _) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 404);
    let (_, rules) = gateway
        .api("GET", "/v1/inboxes/agent/notifications", None)
        .await;
    assert_eq!(rules, json!([]));
    send_to(&gateway, "agent@example.com", "no webhook").await;
    assert_eq!(gateway.messages("agent").await.len(), 1);
    // Jobs are committed with their message, so this read sees any there are.
    assert_eq!(gateway.all_deliveries().await, Vec::<Value>::new());
    receiver.assert_silent(Duration::from_millis(300)).await;
}

/// An http webhook stored while `allow_http` was on (an API-created inbox, which the config
/// does not rewrite) is never posted to once it is off: the job dead-letters saying why.
#[tokio::test]
async fn a_stored_plain_http_webhook_is_not_sent_to_once_allow_http_is_off() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = |allow_http: bool| {
        let mut options = GatewayOptions::no_webhook();
        options.allow_http = allow_http;
        mxhook::config::Config::from_toml_str(&config_toml(data.path(), &options)).expect("config")
    };

    let gateway =
        TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config(true)).await;
    let (status, body) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "api", "addresses": ["api@example.com"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/api/webhook",
            Some(json!({"url": receiver.url()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    gateway.stop().await;

    let gateway =
        TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config(false)).await;
    send_to(&gateway, "api@example.com", "over plain http").await;
    let done = eventually("the http delivery to be settled", || async {
        let (_, body) = gateway.api("GET", "/v1/inboxes/api/deliveries", None).await;
        let delivery = body["deliveries"].get(0)?.clone();
        (delivery["status"] != "pending").then_some(delivery)
    })
    .await;
    assert_eq!(done["status"], "dead", "{done}");
    let attempts = attempts_of(&gateway, &done).await;
    assert_eq!(attempts.len(), 1, "not retried: {attempts:?}");
    assert_eq!(attempts[0]["status_code"], Value::Null, "{attempts:?}");
    let error = attempts[0]["error"].as_str().expect("error");
    assert!(error.contains("delivery.allow_http is off"), "{error}");
    receiver.assert_silent(Duration::from_millis(300)).await;
    gateway.stop().await;
}
