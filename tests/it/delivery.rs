//! Retries, the dead-letter queue, resend, the durability promise when storage fails, and the
//! SSRF guard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::gateway::config_toml;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};
use crate::support::{files_ending_with, threaded_mail};

async fn send_one(gateway: &TestGateway, subject: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", "agent@example.com", subject, "body");
    client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await
}

#[tokio::test]
async fn failure_then_success_is_delivered_once_with_two_attempts_logged() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    assert_eq!(send_one(&gateway, "retry me").await.0, 250);

    let first = receiver.recv().await;
    let second = receiver.recv().await;
    assert_eq!(first.body, second.body, "a retry sends the same event");
    assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
    receiver.assert_silent(Duration::from_millis(500)).await;

    let delivered = eventually("the delivery to be marked delivered", || async {
        let list = gateway.deliveries("delivered").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(delivered.len(), 1);
    let id = delivered[0]["id"].as_str().expect("id");
    let (status, body) = gateway
        .api("GET", &format!("/v1/deliveries/{id}/attempts"), None)
        .await;
    assert_eq!(status, 200);
    let attempts = body["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{body}");
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[0]["outcome"], "http_error");
    assert_eq!(attempts[0]["response_excerpt"], "ok");
    assert_eq!(attempts[1]["status_code"], 200);
    assert_eq!(attempts[1]["outcome"], "delivered");
    assert!(attempts[0]["latency_ms"].as_i64().is_some());
    assert!(gateway.deliveries("pending").await.is_empty());
    assert!(gateway.deliveries("dead").await.is_empty());
}

#[tokio::test]
async fn always_failing_receiver_dead_letters_and_resend_delivers_with_the_same_event_id() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); 50]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 2;
    let gateway = TestGateway::start(options).await;
    assert_eq!(send_one(&gateway, "doomed").await.0, 250);

    for _ in 0..3 {
        receiver.recv().await;
    }
    let dead = eventually("the delivery to be dead-lettered", || async {
        let list = gateway.deliveries("dead").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    receiver.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_status_code"], 500);
    let id = dead[0]["id"].as_str().expect("id").to_owned();
    let event_id = dead[0]["event_id"].as_str().expect("event id").to_owned();

    receiver.set_script(vec![]);
    let (status, body) = gateway
        .api("POST", &format!("/v1/deliveries/{id}/resend"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    let resent = receiver.recv().await;
    assert_eq!(
        resent.header("webhook-id").as_deref(),
        Some(event_id.as_str())
    );
    assert_eq!(resent.json()["event_id"], event_id.as_str());
    eventually("the resent delivery to be delivered", || async {
        let (_, body) = gateway
            .api("GET", &format!("/v1/deliveries/{id}"), None)
            .await;
        (body["status"] == "delivered").then_some(())
    })
    .await;
    let (_, body) = gateway
        .api("GET", &format!("/v1/deliveries/{id}"), None)
        .await;
    assert_eq!(body["attempt_log"].as_array().map(Vec::len), Some(4));

    let (status, body) = gateway
        .api("POST", "/v1/deliveries/dlv_unknown/resend", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn retry_after_on_503_is_honoured() {
    let mut receiver = WebhookReceiver::start(vec![Reply::StatusRetryAfter(503, 1)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    assert_eq!(send_one(&gateway, "slow down").await.0, 250);
    let first_at = {
        receiver.recv().await;
        tokio::time::Instant::now()
    };
    receiver.recv().await;
    let waited = first_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, before Retry-After"
    );
}

#[tokio::test]
async fn unwritable_store_answers_451_and_nothing_is_delivered() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let blocker = tempfile::NamedTempFile::new().expect("temp file");
    let mut options = GatewayOptions::webhook(receiver.url());
    // A path below a regular file can never be created, even by root.
    options.storage_path = Some(blocker.path().join("mail"));
    let gateway = TestGateway::start(options).await;
    let (code, text) = send_one(&gateway, "cannot store").await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    receiver.assert_silent(Duration::from_millis(700)).await;
    assert_eq!(
        gateway.all_deliveries().await,
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        gateway.messages("agent").await,
        Vec::<serde_json::Value>::new()
    );
}

#[tokio::test]
async fn private_webhook_targets_are_refused_unless_allowed() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.allow_private_targets = false;
    let gateway = TestGateway::start(options).await;
    assert_eq!(send_one(&gateway, "ssrf").await.0, 250);
    let dead = eventually("the blocked delivery to be dead-lettered", || async {
        let list = gateway.deliveries("dead").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(error.contains("127.0.0.1"), "{error}");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.all_deliveries().await.len(),
        1,
        "only the dead letter"
    );
}

#[tokio::test]
async fn localhost_name_is_refused_at_connect_time() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let mut options = GatewayOptions::webhook(url);
    options.allow_private_targets = false;
    let gateway = TestGateway::start(options).await;
    assert_eq!(send_one(&gateway, "rebinding").await.0, 250);
    let dead = eventually("the blocked delivery to be dead-lettered", || async {
        let list = gateway.deliveries("dead").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(error.contains("private, loopback or link-local"), "{error}");
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.all_deliveries().await.len(),
        1,
        "only the dead letter"
    );
}

#[tokio::test]
async fn api_requires_a_key_and_answers_json_errors() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", gateway.http);
    let response = client
        .get(format!("{base}/v1/deliveries"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let response = client
        .get(format!("{base}/v1/deliveries"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let (status, body) = gateway
        .api("GET", "/v1/deliveries?status=bogus", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = gateway.api("GET", "/v1/messages/msg_nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = gateway.api("GET", "/nope", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn gone_410_dead_letters_and_disables_the_endpoint() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(410)]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    assert_eq!(send_one(&gateway, "gone").await.0, 250);
    receiver.recv().await;
    let dead = eventually("the 410 delivery to be dead-lettered", || async {
        let list = gateway.deliveries("dead").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(dead[0]["attempts"], 1, "410 is not retried");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("disabled")),
        "{}",
        dead[0]
    );

    // The endpoint is off: the next message is stored but makes no delivery job.
    assert_eq!(send_one(&gateway, "after gone").await.0, 250);
    receiver.assert_silent(Duration::from_millis(500)).await;
    let (_, body) = gateway.api("GET", "/v1/deliveries", None).await;
    assert_eq!(
        body["deliveries"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
}

/// A gateway whose `agent` inbox keeps the default `verify_tls = true` and whose `other` inbox
/// has `verify_tls = false`, both posting to `url`.
async fn gateway_with_unverified_other_inbox(url: String) -> TestGateway {
    let mut options = GatewayOptions::webhook(url);
    options.other_toml = "verify_tls = false\n".to_owned();
    TestGateway::start(options).await
}

async fn send_to(gateway: &TestGateway, to: &str, subject: &str) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message("a@sender.example", to, subject, "body");
    let (code, text) = client
        .send_message("a@sender.example", &[to], &message)
        .await;
    assert_eq!(code, 250, "{text}");
}

#[tokio::test]
async fn verify_tls_is_honoured_per_endpoint() {
    let mut receiver = WebhookReceiver::start_tls(vec![]).await;
    let gateway = gateway_with_unverified_other_inbox(receiver.url()).await;

    send_to(&gateway, "agent@example.com", "verified").await;
    let failing = eventually(
        "the verified endpoint to fail twice on the certificate",
        || async {
            let (_, body) = gateway
                .api("GET", "/v1/inboxes/agent/deliveries", None)
                .await;
            let delivery = body["deliveries"].get(0)?.clone();
            (delivery["attempts"].as_i64()? >= 2).then_some(delivery)
        },
    )
    .await;
    assert_eq!(
        failing["status"], "pending",
        "a TLS failure is retried: {failing}"
    );
    let error = failing["last_error"].as_str().expect("error");
    assert!(error.contains("certificate"), "{error}");

    send_to(&gateway, "other@example.com", "unverified").await;
    let request = receiver.recv().await;
    assert_eq!(
        request.json()["agent_id"],
        "other",
        "only the unverified endpoint gets through"
    );
    eventually("the unverified delivery to be delivered", || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/other/deliveries?status=delivered", None)
            .await;
        (body["deliveries"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let (_, body) = gateway
        .api("GET", "/v1/inboxes/agent/deliveries?status=delivered", None)
        .await;
    assert_eq!(body["deliveries"], serde_json::json!([]));
}

#[tokio::test]
async fn redirects_are_failures_and_never_followed() {
    let mut elsewhere = WebhookReceiver::start(vec![]).await;
    let mut receiver = WebhookReceiver::start(vec![Reply::Redirect(302, elsewhere.url())]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    assert_eq!(send_one(&gateway, "moved").await.0, 250);

    let first = receiver.recv().await;
    let retry = receiver.recv().await;
    assert_eq!(
        first.body, retry.body,
        "the 302 was retried at the same URL"
    );
    let delivered = eventually("the retry to be delivered", || async {
        let list = gateway.deliveries("delivered").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    let id = delivered[0]["id"].as_str().expect("id");
    let attempts = gateway.attempts(id).await;
    assert_eq!(attempts[0]["status_code"], 302, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "http_error", "{attempts:?}");
    assert_eq!(attempts[1]["status_code"], 200, "{attempts:?}");
    elsewhere.assert_silent(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn an_endpoint_failing_for_the_whole_period_is_disabled_with_a_reason() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); 200]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 10;
    options.delivery_toml = "disable_after_s = 2\n".to_owned();
    let gateway = TestGateway::start(options).await;
    assert_eq!(send_one(&gateway, "first").await.0, 250);
    assert_eq!(send_one(&gateway, "second").await.0, 250);
    receiver.recv().await;

    let dead = eventually("both deliveries to be dead-lettered", || async {
        let list = gateway.deliveries("dead").await;
        (list.len() == 2).then_some(list)
    })
    .await;
    for delivery in &dead {
        let error = delivery["last_error"].as_str().expect("error");
        assert!(error.contains("disabled"), "{delivery}");
        assert!(
            error.contains("failing without a success since"),
            "{delivery}"
        );
    }
    let (status, webhook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 200);
    assert_eq!(webhook["enabled"], false, "{webhook}");
    let reason = webhook["disabled_reason"].as_str().expect("a reason");
    assert!(reason.contains("HTTP 500"), "{reason}");

    // Disabled: the next message makes no job; the other inbox's webhook is untouched.
    while receiver
        .recv_timeout(Duration::from_millis(300))
        .await
        .is_some()
    {}
    let jobs_before = gateway.all_deliveries().await.len();
    let (code, _) = send_one(&gateway, "after").await;
    assert_eq!(code, 250);
    receiver.assert_silent(Duration::from_millis(500)).await;
    let stored = gateway.messages("agent").await;
    assert_eq!(
        stored[0]["subject"], "after",
        "the message is stored all the same"
    );
    assert_eq!(
        gateway.all_deliveries().await.len(),
        jobs_before,
        "and makes no job"
    );
    let (_, other) = gateway.api("GET", "/v1/inboxes/other/webhook", None).await;
    assert_eq!(other["enabled"], true, "{other}");
    assert_eq!(other["disabled_reason"], serde_json::Value::Null);

    // Setting the webhook again enables it and clears the reason.
    let (status, webhook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(serde_json::json!({"url": receiver.url()})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(webhook["enabled"], true, "{webhook}");
    assert_eq!(webhook["disabled_reason"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_ordered_endpoint_gets_a_reply_only_after_the_message_it_answers() {
    let mut receiver = WebhookReceiver::start(vec![Reply::StatusRetryAfter(503, 2)]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.agent_toml = "ordered = true\n".to_owned();
    let gateway = TestGateway::start(options).await;
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
    let refused = receiver.recv().await.json();
    assert_eq!(refused["subject"], "Plan");

    // The first delivery now waits out Retry-After; the reply is accepted meanwhile.
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

    let second = receiver.recv().await.json();
    let third = receiver.recv().await.json();
    assert_eq!(
        second["subject"], "Plan",
        "the retry of the first message comes first"
    );
    assert_eq!(third["subject"], "Re: Plan");
    assert_eq!(second["thread_id"], third["thread_id"]);
    eventually("both deliveries delivered", || async {
        let list = gateway.deliveries("delivered").await;
        (list.iter().filter(|d| d["inbox_id"] == "agent").count() == 2).then_some(())
    })
    .await;
}

/// A receiver that holds every request until [`GatedReceiver::release`], counting the requests
/// in flight and the most it ever had at once.
struct GatedReceiver {
    url: String,
    state: std::sync::Arc<GateState>,
    _server: tokio::task::JoinHandle<()>,
}

struct GateState {
    received: AtomicUsize,
    current: AtomicUsize,
    max: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

/// Counts a request out of flight however its handler ends (answered or dropped).
struct InFlight(std::sync::Arc<GateState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GatedReceiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let state = std::sync::Arc::new(GateState {
            received: AtomicUsize::new(0),
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            open: tokio::sync::watch::Sender::new(false),
        });
        let shared = std::sync::Arc::clone(&state);
        let app = axum::Router::new().fallback(move || {
            let state = std::sync::Arc::clone(&shared);
            async move {
                state.received.fetch_add(1, Ordering::SeqCst);
                let now = state.current.fetch_add(1, Ordering::SeqCst) + 1;
                state.max.fetch_max(now, Ordering::SeqCst);
                let _in_flight = InFlight(std::sync::Arc::clone(&state));
                let mut open = state.open.subscribe();
                let _ = open.wait_for(|open| *open).await;
                "ok"
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            state,
            _server: server,
        }
    }

    fn release(&self) {
        self.state.open.send_replace(true);
    }
}

#[tokio::test]
async fn a_hanging_endpoint_holds_only_its_own_slots_and_never_delays_another_inbox() {
    const LIMIT: usize = 2;
    const TO_SLOW: usize = 5;
    let slow = GatedReceiver::start().await;
    let mut fast = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(slow.url.clone());
    // Fewer workers than messages to the slow endpoint: without the per-endpoint limit its
    // hanging requests would take every worker. Its requests never time out during the test.
    options.delivery_timeout_s = 120;
    options.lease_s = 300;
    options.delivery_toml = format!("workers = 3\nmax_in_flight_per_endpoint = {LIMIT}\n");
    options.other_webhook_url = Some(fast.url());
    let gateway = TestGateway::start(options).await;

    for idx in 0..TO_SLOW {
        send_to(&gateway, "agent@example.com", &format!("slow {idx}")).await;
    }
    eventually(
        "the slow endpoint to hold its limit of requests",
        || async { (slow.state.current.load(Ordering::SeqCst) >= LIMIT).then_some(()) },
    )
    .await;

    send_to(&gateway, "other@example.com", "fast").await;
    let request = fast.recv().await;
    assert_eq!(request.json()["agent_id"], "other");
    assert_eq!(
        slow.state.received.load(Ordering::SeqCst),
        LIMIT,
        "the slow endpoint got no request past its limit while the others hang"
    );

    slow.release();
    eventually("every message to the slow endpoint delivered", || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/agent/deliveries?status=delivered", None)
            .await;
        (body["deliveries"].as_array()?.len() == TO_SLOW).then_some(())
    })
    .await;
    assert_eq!(slow.state.received.load(Ordering::SeqCst), TO_SLOW);
    assert!(
        slow.state.max.load(Ordering::SeqCst) <= LIMIT,
        "at most {LIMIT} requests at once, saw {}",
        slow.state.max.load(Ordering::SeqCst)
    );
    gateway.stop().await;
}

/// Jobs handed over in memory while their endpoint has every slot in flight wait parked on this
/// node, still leased to it, and start as slots free: giving each back to the database and
/// claiming it again cost two writes a job, and under load turned a receiver's brief pause into
/// seconds of lag (BENCHMARKS.md).
#[tokio::test]
async fn jobs_waiting_for_a_busy_endpoint_stay_leased_in_memory_and_are_all_sent() {
    const WAITING: usize = 3;
    let slow = GatedReceiver::start().await;
    let mut options = GatewayOptions::webhook(slow.url.clone());
    options.delivery_timeout_s = 120;
    options.lease_s = 300;
    // Workers to spare: only the endpoint's limit holds the jobs back.
    options.delivery_toml = "workers = 8\nmax_in_flight_per_endpoint = 1\n".to_owned();
    let gateway = TestGateway::start(options).await;

    for idx in 0..=WAITING {
        send_to(&gateway, "agent@example.com", &format!("busy {idx}")).await;
    }
    eventually("the endpoint to hold its one request", || async {
        (slow.state.current.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The dispatcher takes each handed-over job as it is queued; given back, a job would be
    // unleased in its row within milliseconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let database_url = crate::support::gateway::test_database_url(gateway.dir.path());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url)
        .await
        .expect("open the database");
    let (jobs, leased): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(locked_by) FROM deliveries WHERE status = 'pending'",
    )
    .fetch_one(&pool)
    .await
    .expect("count jobs");
    pool.close().await;
    assert_eq!(jobs, i64::try_from(WAITING + 1).expect("count"));
    assert_eq!(leased, jobs, "a waiting job was given back to the database");

    slow.release();
    eventually("every message delivered", || async {
        let (_, body) = gateway
            .api("GET", "/v1/inboxes/agent/deliveries?status=delivered", None)
            .await;
        (body["deliveries"].as_array()?.len() == WAITING + 1).then_some(())
    })
    .await;
    assert_eq!(slow.state.received.load(Ordering::SeqCst), WAITING + 1);
    assert_eq!(
        slow.state.max.load(Ordering::SeqCst),
        1,
        "one request at a time"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_failed_commit_after_the_raw_file_was_written_is_451_and_leaves_nothing() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let database_url = crate::support::gateway::test_database_url(gateway.dir.path());
    let store = gateway.dir.path().join("mail");
    crate::support::db::refuse_message_inserts(&database_url, true).await;

    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "a@sender.example",
        "agent@example.com",
        "commit fails",
        "body",
    );
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    assert!(
        store.join("inbound/agent").is_dir(),
        "the raw file was never written, so its undo is not tested"
    );
    let left = files_ending_with(&store, &[".eml", ".tmp"]);
    assert!(left.is_empty(), "half-stored: {left:?}");
    receiver.assert_silent(Duration::from_millis(700)).await;
    let (_, body) = gateway.api("GET", "/v1/deliveries", None).await;
    assert_eq!(body["deliveries"], serde_json::json!([]));
    let (_, body) = gateway.api("GET", "/v1/inboxes/agent/messages", None).await;
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");

    // The sender retries the same message once the database takes inserts again.
    crate::support::db::refuse_message_inserts(&database_url, false).await;
    client.expect("RSET", 250).await;
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let (code, text) = client.data(&message).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(receiver.recv().await.json()["subject"], "commit fails");
    receiver.assert_silent(Duration::from_millis(700)).await;
    assert_eq!(files_ending_with(&store, &[".eml"]).len(), 1);
    assert_eq!(
        files_ending_with(&store, &[".tmp"]),
        Vec::<std::path::PathBuf>::new()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_webhook_that_times_out_is_retried_and_delivered_once() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Hang]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.delivery_timeout_s = 1;
    let gateway = TestGateway::start(options).await;
    assert_eq!(send_one(&gateway, "hung first").await.0, 250);

    let hung = receiver.recv().await;
    let retried = receiver.recv().await;
    assert_eq!(hung.header("webhook-id"), retried.header("webhook-id"));
    let delivered = eventually("the retry to be recorded as delivered", || async {
        let list = gateway.deliveries("delivered").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    receiver.assert_silent(Duration::from_millis(700)).await;
    assert_eq!(delivered.len(), 1);
    let id = delivered[0]["id"].as_str().expect("id");
    let (_, body) = gateway
        .api("GET", &format!("/v1/deliveries/{id}/attempts"), None)
        .await;
    let attempts = body["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{body}");
    assert_eq!(attempts[0]["outcome"], "error", "{body}");
    assert_eq!(
        attempts[0]["status_code"],
        serde_json::Value::Null,
        "{body}"
    );
    assert_eq!(attempts[0]["error"], "request timed out", "{body}");
    assert_eq!(attempts[1]["outcome"], "delivered", "{body}");
    assert_eq!(attempts[1]["status_code"], 200, "{body}");
    gateway.stop().await;
}

/// A TCP proxy to PostgreSQL that lets the first `COMMIT` following an `INSERT INTO messages`
/// through, waits for the server to confirm it, and then drops the connection instead of
/// passing the confirmation on: the commit happened, and the gateway sees a lost connection.
/// Returns its address and a flag that turns false once it has dropped a commit's reply.
async fn postgres_losing_the_first_commit_reply(
    upstream: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let contains = |haystack: &[u8], needle: &[u8]| {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let armed = Arc::new(AtomicBool::new(true));
    let still_armed = Arc::clone(&armed);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let armed = Arc::clone(&armed);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut from_server) = (vec![0u8; 65536], vec![0u8; 65536]);
                let (mut inserted, mut committing) = (false, false);
                loop {
                    tokio::select! {
                        read = client.read(&mut from_client) => {
                            let Ok(n @ 1..) = read else { return };
                            let chunk = &from_client[..n];
                            inserted |= contains(chunk, b"INSERT INTO messages");
                            committing |= inserted
                                && contains(chunk, b"COMMIT\0")
                                && armed.load(Ordering::SeqCst);
                            if server.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                        read = server.read(&mut from_server) => {
                            let Ok(n @ 1..) = read else { return };
                            let chunk = &from_server[..n];
                            if committing && contains(chunk, b"COMMIT\0") {
                                armed.store(false, Ordering::SeqCst);
                                return;
                            }
                            if client.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, still_armed)
}

/// The connection is lost while the database commits: the commit happened, so the raw file
/// must stay, and the sender is told `250` (it would otherwise resend a message that is
/// already delivered). Always on PostgreSQL: only a network database loses a reply.
#[tokio::test]
async fn a_commit_whose_reply_is_lost_keeps_the_raw_file_of_the_committed_message() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let database =
        url::Url::parse(&crate::support::gateway::postgres_database_url()).expect("database URL");
    let upstream = format!(
        "{}:{}",
        database.host_str().expect("host"),
        database.port().unwrap_or(5432)
    );
    let (proxy, armed) = postgres_losing_the_first_commit_reply(upstream).await;
    let mut proxied = database.clone();
    proxied.set_ip_host(proxy.ip()).expect("ip host");
    proxied.set_port(Some(proxy.port())).expect("port");
    proxied.set_query(Some("sslmode=disable"));

    let mut options = GatewayOptions::webhook(receiver.url());
    options.database_url = Some(proxied.to_string());
    let gateway = TestGateway::start(options).await;

    let message = simple_message(
        "a@sender.example",
        "agent@example.com",
        "lost reply",
        "body",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert!(
        !armed.load(Ordering::SeqCst),
        "no commit reply was lost, so nothing is tested"
    );
    assert_eq!(code, 250, "the commit happened: {text}");
    let event = receiver.recv().await.json();
    assert_eq!(event["subject"], "lost reply");
    let message_id = event["message_id"].as_str().expect("message id");
    let (status, raw) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200, "the committed message lost its raw file");
    assert!(raw == message, "raw differs from the bytes sent");
    receiver.assert_silent(Duration::from_millis(500)).await;
    // The commit happened once: one message, one delivery, and it is delivered.
    assert_eq!(gateway.messages("agent").await.len(), 1);
    let delivered = eventually("the delivery to be recorded as delivered", || async {
        let all = gateway.all_deliveries().await;
        all.iter()
            .all(|delivery| delivery["status"] == "delivered")
            .then_some(all)
    })
    .await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    gateway.stop().await;
}

/// A job intake hands to the dispatcher in memory is leased to the node from the moment it is
/// committed. One still waiting for a worker when the node stops must be given back, not left
/// to wait out its lease (here ten minutes) before the restarted node may send it.
#[tokio::test]
async fn a_handed_over_job_not_started_at_shutdown_is_sent_at_once_after_restart() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Hang]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::webhook(receiver.url());
    options.delivery_timeout_s = 2;
    options.lease_s = 600;
    options.delivery_toml = "workers = 1\nmax_in_flight_per_endpoint = 1\n".to_owned();
    let toml = config_toml(data.path(), &options);
    let config = || mxhook::config::Config::from_toml_str(&toml).expect("config");

    let gateway = TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config()).await;
    assert_eq!(send_one(&gateway, "first, hangs").await.0, 250);
    let hung = receiver.recv().await;
    assert_eq!(hung.json()["subject"], "first, hangs");
    // The only worker is held by the hanging attempt, so this job waits in the hand-off queue.
    assert_eq!(send_one(&gateway, "second, queued").await.0, 250);
    gateway.stop().await;

    let restarted = TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config()).await;
    let next = tokio::time::timeout(Duration::from_secs(5), receiver.recv_any())
        .await
        .expect("the queued job is sent at once, not after its ten-minute lease");
    assert_eq!(next.json()["subject"], "second, queued");
    // The hung attempt timed out before the stop finished and was recorded for a retry.
    let retried = receiver.recv().await;
    assert_eq!(retried.json()["subject"], "first, hangs");
    assert_eq!(retried.header("webhook-id"), hung.header("webhook-id"));
    receiver.assert_silent(Duration::from_millis(500)).await;
    let delivered = eventually("both deliveries to be recorded as delivered", || async {
        let all = restarted.all_deliveries().await;
        all.iter()
            .all(|delivery| delivery["status"] == "delivered")
            .then_some(all)
    })
    .await;
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    restarted.stop().await;
}

/// Each event is stored compressed (migration 0013), on SQLite and on PostgreSQL alike, and
/// the API serves exactly the event that was delivered.
#[tokio::test]
async fn the_stored_event_reads_back_as_the_delivered_one_in_either_storage_form() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let (code, text) = send_one(&gateway, "stored form").await;
    assert_eq!(code, 250, "{text}");
    let delivered = receiver.recv().await.json();
    let message_id = delivered["message_id"]
        .as_str()
        .expect("message_id")
        .to_owned();

    let database_url = crate::support::gateway::test_database_url(gateway.dir.path());
    let select = "SELECT event_json, event_lz4 FROM messages WHERE id = $1";
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url)
        .await
        .expect("open the database");
    let (event_json, event_lz4): (String, Option<Vec<u8>>) = sqlx::query_as(select)
        .bind(&message_id)
        .fetch_one(&pool)
        .await
        .expect("row");
    pool.close().await;
    assert_eq!(
        event_json, "",
        "the text is not stored beside the compressed event"
    );
    let compressed = event_lz4.expect("event_lz4 is set");
    let json = lz4_flex::block::decompress_size_prepended(&compressed).expect("LZ4");
    assert!(
        compressed.len() < json.len(),
        "{} bytes stored",
        compressed.len()
    );
    let stored: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(stored, delivered);
    let (status, served) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, delivered);
}
