//! Several nodes, one PostgreSQL database and one S3 bucket: real `mxhook` processes on
//! different loopback ports take mail concurrently, none sends a job twice, one is killed with
//! SIGKILL mid-run, and every message that got a 250 is still delivered, twice only if the killed
//! node held it; a hung attempt's job passes to another node once its lease runs out; replicas
//! with one config keep apart; duplicates and rate limits count every node's
//! mail; an inbox created or deleted through one node's API reaches the other nodes' RCPT
//! answers and deliveries. The process tests run on PostgreSQL whatever the suite's backend.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Mutex;

use mxhook::db::{AttemptRecord, Db, JobUpdate, NewDelivery, NewFingerprint, NewMessage};
use mxhook::model::{new_id, now_ms};

use crate::support::gateway::{API_KEY, config_toml, postgres_database_url};
use crate::support::process::{Process, free_addr};
use crate::support::s3::TestS3;
use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, simple_message,
};

const NODES: usize = 3;
const SENDERS: usize = 6;
/// Per sender and phase: a calm phase, then one with a SIGKILL; 3,000 messages in all.
const MESSAGES_PER_SENDER: usize = 250;
/// SIGKILL node 1 once this many messages of the second phase have been accepted.
const KILL_AFTER: usize = 500;

/// The config every node of one test shares: `storage` is the body of its `[storage]` section,
/// `soft` and `hard` every soft and hard rate limit (per hour).
/// `delivery.timeout_s` and `delivery.lease_s` of a node.
struct Timing {
    attempt_timeout_s: u64,
    lease_s: u64,
}

/// Well above the attempt timeout, so on a loaded machine no live node's lease runs out: a
/// duplicate can then only come from a killed node.
const USUAL_TIMING: Timing = Timing {
    attempt_timeout_s: 1,
    lease_s: 10,
};

fn node_config(
    storage: &str,
    database_url: &str,
    webhook_url: &str,
    soft: u64,
    hard: u64,
    timing: &Timing,
) -> String {
    format!(
        r#"
[smtp]
hostname = "mx.test.example"
# Every message is a new connection; the greeting pause would dominate the run.
greet_pause_s = 0
[http]
admin_keys = ["{API_KEY}"]
[storage]
{storage}
[database]
url = "{database_url}"
max_connections = 4
# Inbox changes made through one node reach the others within this; short, so tests wait little.
directory_refresh_s = 0.2
[auth]
enabled = false
[rate_limit]
sender_soft = {soft}
sender_hard = {hard}
domain_soft = {soft}
domain_hard = {hard}
inbox_soft = {soft}
inbox_hard = {hard}
[delivery]
allow_http = true
allow_private_targets = true
retry_base_s = 0.2
timeout_s = {timeout_s}
lease_s = {lease_s}
[[inbox]]
id = "agent"
addresses = ["agent@example.com"]
webhook_url = "{webhook_url}"
webhook_secret = "scale-out-secret"
"#,
        timeout_s = timing.attempt_timeout_s,
        lease_s = timing.lease_s,
    )
}

/// The `[storage]` body of a local folder (each test's nodes share one).
fn folder_storage(path: &std::path::Path) -> String {
    format!("path = \"{}\"", path.display())
}

/// Sends one message to the first node that answers 250, like a sending MTA with several MX
/// hosts; returns the gateway's message id from the 250 reply.
async fn send_anywhere(
    nodes: &[std::net::SocketAddr],
    start: usize,
    sequence: usize,
) -> Option<String> {
    for offset in 0..nodes.len() {
        let addr = nodes[(start + offset) % nodes.len()];
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(addr.port())
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let message = lettre::Message::builder()
            .from("load@sender.example".parse().ok()?)
            .to("agent@example.com".parse().ok()?)
            .subject(format!("load {sequence}"))
            .body(format!("message number {sequence}"))
            .ok()?;
        if let Ok(response) = transport.send(message).await {
            let text: Vec<&str> = response.message().collect();
            return text.join(" ").split_whitespace().last().map(str::to_owned);
        }
    }
    None
}

/// Sends `MESSAGES_PER_SENDER` messages from each of `SENDERS` concurrent senders, spread over
/// the nodes; the gateway's ids of the accepted ones go into `accepted`.
fn send_phase(
    nodes: &[std::net::SocketAddr],
    phase: usize,
    accepted: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|sender| {
            let accepted = Arc::clone(accepted);
            let nodes = nodes.to_vec();
            tokio::spawn(async move {
                for n in 0..MESSAGES_PER_SENDER {
                    let sequence = (phase * SENDERS + sender) * MESSAGES_PER_SENDER + n;
                    if let Some(id) = send_anywhere(&nodes, sequence, sequence).await {
                        accepted.lock().await.push(id);
                    }
                }
            })
        })
        .collect()
}

/// Waits until every job in the database is finished, then counts the webhook requests per
/// message. A request is recorded before its attempt commits, so none is still on its way.
async fn deliveries_once_settled(
    pool: &sqlx::AnyPool,
    receiver: &mut WebhookReceiver,
    accepted: &HashSet<String>,
) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
                .fetch_one(pool)
                .await
                .expect("count pending");
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} jobs still pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    while let Ok(request) =
        tokio::time::timeout(Duration::from_millis(500), receiver.recv_any()).await
    {
        let id = request.json()["message_id"]
            .as_str()
            .expect("message id")
            .to_owned();
        *deliveries.entry(id).or_default() += 1;
    }
    let missing = accepted
        .iter()
        .filter(|id| !deliveries.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "accepted messages never delivered");
    deliveries
}

/// The messages whose jobs the node started with `HOSTNAME=host` holds a lease on.
async fn leased_by(pool: &sqlx::AnyPool, host: &str) -> HashSet<String> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM deliveries WHERE status = 'pending' AND locked_by LIKE $1",
    )
    .bind(format!("{host}/%"))
    .fetch_all(pool)
    .await
    .expect("read leases");
    rows.into_iter().collect()
}

#[tokio::test]
async fn three_nodes_share_the_queue_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let database_url = postgres_database_url();
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(
        &config_path,
        node_config(
            &s3.storage_toml(10.0),
            &database_url,
            &receiver.url(),
            1_000_000,
            1_000_000,
            &USUAL_TIMING,
        ),
    )
    .expect("write config");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url)
        .await
        .expect("open the shared database");

    let mut processes = Vec::new();
    for node in 0..NODES {
        let host = format!("node-{node}");
        processes.push(Some(
            Process::start_with_env(
                dir.path(),
                Some(&config_path),
                free_addr(),
                free_addr(),
                &[("HOSTNAME", &host)],
            )
            .await,
        ));
    }
    let smtp_addrs: Vec<_> = processes.iter().flatten().map(|p| p.smtp).collect();
    let surviving_http = processes[0].as_ref().map(|p| p.http).expect("node 0");

    // Calm phase: every node claims from the one queue, and no job is sent twice.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    for sender in send_phase(&smtp_addrs, 0, &accepted) {
        tokio::time::timeout(Duration::from_secs(300), sender)
            .await
            .expect("senders finish")
            .expect("sender task");
    }
    let calm: HashSet<String> = accepted.lock().await.drain(..).collect();
    assert!(
        calm.len() >= SENDERS * MESSAGES_PER_SENDER * 9 / 10,
        "only {} accepted",
        calm.len()
    );
    let deliveries = deliveries_once_settled(&pool, &mut receiver, &calm).await;
    let repeated: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "sent twice without a kill: {repeated:?}"
    );

    // Node 1 is killed mid-run.
    let senders = send_phase(&smtp_addrs, 1, &accepted);
    eventually("enough messages accepted to kill a node mid-run", || {
        let accepted = Arc::clone(&accepted);
        async move { (accepted.lock().await.len() >= KILL_AFTER).then_some(()) }
    })
    .await;
    let mut held_by_killed = leased_by(&pool, "node-1").await;
    processes[1].take().expect("node 1").kill_9();
    // Leases taken between that read and the kill are still there: its leases last 10 s.
    held_by_killed.extend(leased_by(&pool, "node-1").await);

    for sender in senders {
        tokio::time::timeout(Duration::from_secs(300), sender)
            .await
            .expect("senders finish")
            .expect("sender task");
    }
    let accepted: HashSet<String> = accepted.lock().await.iter().cloned().collect();
    assert!(
        accepted.len() >= SENDERS * MESSAGES_PER_SENDER * 9 / 10,
        "only {} accepted",
        accepted.len()
    );
    let deliveries = deliveries_once_settled(&pool, &mut receiver, &accepted).await;
    // Only a job the killed node had sent but not yet recorded is sent again.
    for (message, count) in &deliveries {
        assert!(
            *count == 1 || held_by_killed.contains(message),
            "{message} delivered {count} times, not leased by the killed node"
        );
    }

    let client = reqwest::Client::new();
    let body: serde_json::Value = client
        .get(format!(
            "http://{surviving_http}/v1/deliveries?status=pending&limit=1000"
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["deliveries"],
        serde_json::json!([]),
        "jobs left pending"
    );
    // Every node wrote to the one bucket.
    let stored = std::fs::read_dir(s3.root.path().join(crate::support::s3::BUCKET))
        .expect("bucket")
        .count();
    assert!(stored > 0, "nothing in the S3 bucket");
    pool.close().await;
    for process in processes.into_iter().flatten() {
        process.kill_9();
    }
}

/// Duplicate detection and rate limits live in the shared database, so they hold across nodes:
/// the same Message-ID through a second node is flagged, and a sender's soft and hard limits
/// count what every node accepted.
#[tokio::test]
async fn duplicates_and_rate_limits_are_shared_across_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(
        &config_path,
        node_config(
            &folder_storage(&dir.path().join("store")),
            &postgres_database_url(),
            &receiver.url(),
            2,
            4,
            &USUAL_TIMING,
        ),
    )
    .expect("write config");
    let first = Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let second = Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await;

    let message =
        crate::support::simple_message("dup@sender.example", "agent@example.com", "twice", "same");
    let mut client = crate::support::SmtpClient::connect(first.smtp).await;
    assert_eq!(
        client
            .send_message("dup@sender.example", &["agent@example.com"], &message)
            .await
            .0,
        250
    );
    let mut client = crate::support::SmtpClient::connect(second.smtp).await;
    assert_eq!(
        client
            .send_message("dup@sender.example", &["agent@example.com"], &message)
            .await
            .0,
        250
    );
    let first_two = [receiver.recv().await.json(), receiver.recv().await.json()];
    let mut flags: Vec<_> = first_two
        .iter()
        .map(|event| event["is_duplicate"].clone())
        .collect();
    flags.sort_by_key(|flag| flag.to_string());
    assert_eq!(flags, [serde_json::json!(false), serde_json::json!(true)]);
    for event in &first_two {
        assert_eq!(
            event["rate_limited"], false,
            "within the soft limit: {event}"
        );
    }

    // Two messages per hour for this sender before events say `rate_limited`, four before 451,
    // across the cluster: two more pass, flagged, then 451. The first of them is only the
    // second message node A took, so its flag counts node B's mail too.
    let mut codes = Vec::new();
    for (n, node) in [&first, &second, &first].iter().enumerate() {
        let mut client = crate::support::SmtpClient::connect(node.smtp).await;
        client.expect("EHLO limits.test", 250).await;
        client.expect("MAIL FROM:<dup@sender.example>", 250).await;
        let (code, text) = client.cmd("RCPT TO:<agent@example.com>").await;
        if code == 250 {
            let body = crate::support::simple_message(
                "dup@sender.example",
                "agent@example.com",
                &format!("n{n}"),
                "x",
            );
            assert_eq!(client.data(&body).await.0, 250);
        } else {
            assert!(text.starts_with("4.7.1"), "{text}");
        }
        codes.push(code);
    }
    assert_eq!(
        codes,
        [250, 250, 451],
        "the hard limit counts both nodes' mail"
    );
    for _ in 0..2 {
        let event = receiver.recv().await.json();
        assert_eq!(
            event["rate_limited"], true,
            "the soft limit counts both nodes' mail: {event}"
        );
    }
    first.kill_9();
    second.kill_9();
}

/// RCPT's answer from the node at `smtp` for `address`.
async fn rcpt(smtp: std::net::SocketAddr, address: &str) -> (u16, String) {
    let mut client = crate::support::SmtpClient::connect(smtp).await;
    client.expect("EHLO sync.test", 250).await;
    client
        .expect("MAIL FROM:<someone@sender.example>", 250)
        .await;
    client.cmd(&format!("RCPT TO:<{address}>")).await
}

/// Each node answers RCPT from its own snapshot of the inboxes; an inbox created, given its
/// webhook and deleted through node A's API reaches node B's snapshot without a restart.
#[tokio::test]
async fn inbox_changes_through_one_node_reach_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configured = WebhookReceiver::start(vec![]).await;
    let mut hook = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(
        &config_path,
        node_config(
            &folder_storage(&dir.path().join("store")),
            &postgres_database_url(),
            &configured.url(),
            1_000_000,
            1_000_000,
            &USUAL_TIMING,
        ),
    )
    .expect("write config");
    let a = Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let b = Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let address = "synced@example.com";
    assert_eq!(
        rcpt(b.smtp, address).await.0,
        550,
        "unknown before it exists"
    );

    // Created disabled and enabled last, so once B routes the address its snapshot holds the
    // webhook too: B's intake builds the delivery job from it.
    let (status, body) = crate::support::api_at(
        a.http,
        API_KEY,
        "POST",
        "/v1/inboxes",
        Some(serde_json::json!({"id": "synced", "addresses": [address], "status": "disabled"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = crate::support::api_at(
        a.http,
        API_KEY,
        "PUT",
        "/v1/inboxes/synced/webhook",
        Some(serde_json::json!({"url": hook.url(), "enabled": true, "rotate_secret": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = crate::support::api_at(
        a.http,
        API_KEY,
        "PATCH",
        "/v1/inboxes/synced",
        Some(serde_json::json!({"status": "enabled"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    eventually(
        "node B to accept RCPT for the inbox created on node A",
        || async { (rcpt(b.smtp, address).await.0 == 250).then_some(()) },
    )
    .await;
    let message = crate::support::simple_message(
        "someone@sender.example",
        address,
        "through node B",
        "hello",
    );
    let mut client = crate::support::SmtpClient::connect(b.smtp).await;
    let (code, text) = client
        .send_message("someone@sender.example", &[address], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let event = hook.recv().await.json();
    assert_eq!(event["agent_id"], "synced", "{event}");
    assert_eq!(event["subject"], "through node B", "{event}");

    let (status, body) =
        crate::support::api_at(a.http, API_KEY, "DELETE", "/v1/inboxes/synced", None).await;
    assert_eq!(status, 204, "{body}");
    let (code, text) = eventually("node B to refuse the inbox deleted on node A", || async {
        let (code, text) = rcpt(b.smtp, address).await;
        (code != 250).then_some((code, text))
    })
    .await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.1.1"), "{text}");
    a.kill_9();
    b.kill_9();
}

/// Who holds the lease on each pending delivery, read straight from the gateway's database.
async fn lease_holders(database_url: &str) -> Vec<(String, Option<String>)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url)
        .await
        .expect("open the test database");
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, locked_by FROM deliveries WHERE status = 'pending'")
            .fetch_all(&pool)
            .await
            .expect("read leases");
    pool.close().await;
    rows
}

/// Replicas share one config, so the same hostname and listen address. A second node starting
/// must not take the first node's live lease for its own: the job would be sent twice.
#[tokio::test]
async fn a_replica_with_the_same_config_leaves_a_live_lease_alone() {
    let mut receiver = WebhookReceiver::start(vec![Reply::Hang]).await;
    let first_dir = tempfile::tempdir().expect("tempdir");
    let mut config = mxhook::config::Config::from_toml_str(&config_toml(
        first_dir.path(),
        &GatewayOptions::webhook(receiver.url()),
    ))
    .expect("test config");
    // The first attempt hangs for the whole test, inside its lease.
    config.delivery.timeout_s = 120.0;
    config.delivery.lease_s = 120.0;
    let database_url = config.database.url.clone();
    let first = TestGateway::start_with(first_dir, config.clone()).await;

    let message = simple_message("a@sender.example", "agent@example.com", "once", "body");
    let mut client = SmtpClient::connect(first.smtp).await;
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let hanging = receiver.recv().await.json();
    let holders = lease_holders(&database_url).await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = holders[0]
        .1
        .clone()
        .expect("the first node holds the lease");

    let second = TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config).await;
    assert_eq!(
        lease_holders(&database_url).await,
        [(holders[0].0.clone(), Some(holder))],
        "the second node's start changed the first node's lease"
    );
    // The second node is up and claiming, yet the job is not sent a second time.
    let other = simple_message("a@sender.example", "agent@example.com", "second", "body");
    let mut client = SmtpClient::connect(second.smtp).await;
    assert_eq!(
        client
            .send_message("a@sender.example", &["agent@example.com"], &other)
            .await
            .0,
        250
    );
    let next = receiver.recv().await.json();
    assert_eq!(next["subject"], "second", "{next} after {hanging}");
}

/// A node whose lease passed to another node cannot finish that node's job or spend its retry
/// budget; the holder's record counts.
#[tokio::test]
async fn only_the_lease_holder_records_an_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mxhook::config::Config::from_toml_str(&config_toml(
        dir.path(),
        &GatewayOptions::webhook("http://127.0.0.1:9/hook".to_owned()),
    ))
    .expect("test config");
    let db = Db::connect(&config.database).await.expect("connect");
    db.migrate().await.expect("migrate");
    db.upsert_config_inbox(&config.inboxes[0])
        .await
        .expect("inbox");
    let delivery_id = new_id("dlv");
    db.commit_accepted(vec![new_message(&delivery_id, None)])
        .await
        .expect("commit");

    let now = now_ms();
    let claimed = db
        .claim_due("node-a", now, now + 60_000, 10, &[])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    // Node A's lease ran out and node B took the job.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&config.database.url)
        .await
        .expect("open");
    sqlx::query("UPDATE deliveries SET locked_by = 'node-b' WHERE id = $1")
        .bind(&delivery_id)
        .execute(&pool)
        .await
        .expect("take over");

    let record = |worker: &str, next: JobUpdate| AttemptRecord {
        delivery_id: delivery_id.clone(),
        worker: worker.to_owned(),
        started_at: now,
        latency_ms: 1,
        status_code: Some(200),
        outcome: mxhook::model::AttemptOutcome::Delivered,
        error: None,
        response_excerpt: None,
        request: None,
        next,
    };
    db.record_attempt(&record("node-a", JobUpdate::Dead))
        .await
        .expect("late record");
    let view = db
        .get_delivery(&delivery_id)
        .await
        .expect("read")
        .expect("delivery");
    assert_eq!((view.status.as_str(), view.attempts), ("pending", 0));
    assert!(
        db.list_attempts(&delivery_id)
            .await
            .expect("attempts")
            .is_empty()
    );

    db.record_attempt(&record("node-b", JobUpdate::Delivered))
        .await
        .expect("holder's record");
    let view = db
        .get_delivery(&delivery_id)
        .await
        .expect("read")
        .expect("delivery");
    assert_eq!((view.status.as_str(), view.attempts), ("delivered", 1));
    pool.close().await;
    db.close().await;
}

/// One accepted message for inbox `agent` with one webhook job, and a fingerprint if given.
fn new_message(delivery_id: &str, fingerprint: Option<&str>) -> NewMessage {
    let now = now_ms();
    NewMessage {
        id: new_id("msg"),
        inbox_id: "agent".to_owned(),
        event_id: new_id("evt"),
        storage_bucket: "test-bucket".to_owned(),
        storage_key: "k".to_owned(),
        size: 1,
        envelope_from: None,
        envelope_to: vec!["agent@example.com".to_owned()],
        remote_ip: None,
        helo: "test".to_owned(),
        header_message_id: None,
        sender: None,
        subject: None,
        received_at: now,
        event_json: r#"{"is_duplicate":false}"#.to_owned(),
        deliveries: vec![NewDelivery {
            id: delivery_id.to_owned(),
            channel: mxhook::model::Channel::Webhook,
            endpoint_ref: "inbox".to_owned(),
            target: "http://127.0.0.1:9/hook".to_owned(),
            ordered: false,
            lease: None,
        }],
        thread_id: new_id("thr"),
        subject_key: None,
        participants: Vec::new(),
        direction: mxhook::model::Direction::Inbound,
        attachment_parts: None,
        quarantined: false,
        fingerprint: fingerprint.map(|fingerprint| NewFingerprint {
            fingerprint: fingerprint.to_owned(),
            forget_before: now - 60_000,
        }),
    }
}

/// Two nodes committing the same message at once each looked the fingerprint up before the
/// other committed; the commit itself decides, so exactly one copy is the first seen and the
/// other is flagged, whichever commits first.
#[tokio::test]
async fn one_fingerprint_committed_twice_at_once_is_first_seen_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mxhook::config::Config::from_toml_str(&config_toml(
        dir.path(),
        &GatewayOptions::webhook("http://127.0.0.1:9/hook".to_owned()),
    ))
    .expect("test config");
    // Two handles, two pools, two group committers: two nodes.
    let node_a = Db::connect(&config.database).await.expect("connect");
    node_a.migrate().await.expect("migrate");
    node_a
        .upsert_config_inbox(&config.inboxes[0])
        .await
        .expect("inbox");
    let node_b = Db::connect(&config.database).await.expect("connect");

    for round in 0..5 {
        let fingerprint = format!("<same-{round}@sender.example>");
        // Both intakes found nothing yet, so both events say "not a duplicate".
        let first = new_message(&new_id("dlv"), Some(&fingerprint));
        let second = new_message(&new_id("dlv"), Some(&fingerprint));
        let (a, b) = tokio::join!(
            node_a.commit_accepted(vec![first.clone()]),
            node_b.commit_accepted(vec![second.clone()]),
        );
        a.expect("commit on node A");
        b.expect("commit on node B");
        let mut flags = Vec::new();
        for id in [&first.id, &second.id] {
            let stored = node_a
                .get_message(id)
                .await
                .expect("read")
                .expect("message");
            let event: serde_json::Value =
                serde_json::from_str(&stored.event_json).expect("event JSON");
            flags.push(event["is_duplicate"].clone());
        }
        flags.sort_by_key(|flag| flag.to_string());
        assert_eq!(
            flags,
            [serde_json::json!(false), serde_json::json!(true)],
            "round {round}"
        );
    }
    node_a.close().await;
    node_b.close().await;
}

/// A node that dies mid-attempt leaves its lease behind; once it runs out another node sends
/// the job, with the dead node never coming back.
#[tokio::test]
async fn a_job_whose_node_died_mid_attempt_is_sent_by_another_after_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![Reply::Hang]).await;
    let database_url = postgres_database_url();
    let config = node_config(
        &folder_storage(&dir.path().join("store")),
        &database_url,
        &receiver.url(),
        1_000_000,
        1_000_000,
        // A short lease, so the takeover comes soon; the attempt timeout must stay below it,
        // and node A is killed well inside it.
        &Timing {
            attempt_timeout_s: 5,
            lease_s: 6,
        },
    );
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config).expect("write config");
    let a = Process::start_with_env(
        dir.path(),
        Some(&config_path),
        free_addr(),
        free_addr(),
        &[("HOSTNAME", "node-a")],
    )
    .await;

    let message = simple_message("a@sender.example", "agent@example.com", "taken over", "x");
    let mut client = SmtpClient::connect(a.smtp).await;
    let (code, text) = client
        .send_message("a@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let hung = receiver.recv().await.json();

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url)
        .await
        .expect("open the shared database");
    let message_id = hung["message_id"].as_str().expect("message id").to_owned();
    assert_eq!(
        leased_by(&pool, "node-a").await,
        HashSet::from([message_id.clone()]),
        "node A holds the job while its attempt hangs"
    );

    let b = Process::start_with_env(
        dir.path(),
        Some(&config_path),
        free_addr(),
        free_addr(),
        &[("HOSTNAME", "node-b")],
    )
    .await;
    a.kill_9();
    let retried = tokio::time::timeout(Duration::from_secs(60), receiver.recv_any())
        .await
        .expect("another node sends the job once the dead node's lease ran out")
        .json();
    assert_eq!(retried["message_id"], message_id.as_str(), "{retried}");
    assert_eq!(retried["event_id"], hung["event_id"], "the same event");
    let delivered = eventually("the job to be recorded as delivered", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM deliveries WHERE message_id = $1")
                .bind(&message_id)
                .fetch_one(&pool)
                .await
                .ok()?;
        (status == "delivered").then_some(status)
    })
    .await;
    assert_eq!(delivered, "delivered");
    // Node A died before recording its attempt: node B's is the only one.
    let attempts: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
         WHERE d.message_id = $1",
    )
    .bind(&message_id)
    .fetch_one(&pool)
    .await
    .expect("count attempts");
    assert_eq!(
        attempts, 1,
        "node A recorded its hung attempt before it died"
    );
    pool.close().await;
    b.kill_9();
}
