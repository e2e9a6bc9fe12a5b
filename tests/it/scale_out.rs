//! Several nodes, one PostgreSQL database and one shared store: real `mxhook` processes on
//! different loopback ports take mail concurrently, one is killed with SIGKILL mid-run, and every
//! message that got a 250 is still delivered; duplicates and rate limits count every node's
//! mail; an inbox created or deleted through one node's API reaches the other nodes' RCPT
//! answers and deliveries. Runs on PostgreSQL whatever the suite's backend.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Mutex;

use crate::process::{Process, free_addr};
use crate::support::gateway::{API_KEY, postgres_database_url};
use crate::support::{SOON, WebhookReceiver, eventually};

const NODES: usize = 3;
const SENDERS: usize = 6;
const MESSAGES_PER_SENDER: usize = 250;
/// SIGKILL node 1 once this many messages have been accepted in all.
const KILL_AFTER: usize = 500;

/// The config every node of one test shares; `rate` is every rate limit (per hour).
fn node_config(
    storage: &std::path::Path,
    database_url: &str,
    webhook_url: &str,
    rate: u64,
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
path = "{storage}"
[database]
url = "{database_url}"
max_connections = 4
# Inbox changes made through one node reach the others within this; short, so tests wait little.
directory_refresh_s = 0.2
[auth]
enabled = false
[rate_limit]
sender_soft = {rate}
sender_hard = {rate}
domain_soft = {rate}
domain_hard = {rate}
inbox_soft = {rate}
inbox_hard = {rate}
[delivery]
allow_http = true
allow_private_targets = true
retry_base_s = 0.2
timeout_s = 1
lease_s = 2
[[inbox]]
id = "agent"
addresses = ["agent@example.com"]
webhook_url = "{webhook_url}"
webhook_secret = "scale-out-secret"
"#,
        storage = storage.display(),
    )
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

#[tokio::test]
async fn three_nodes_share_the_queue_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("shared-store");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(
        &config_path,
        node_config(
            &storage,
            &postgres_database_url(),
            &receiver.url(),
            1_000_000,
        ),
    )
    .expect("write config");

    let mut processes = Vec::new();
    for _ in 0..NODES {
        processes.push(Some(
            Process::start(dir.path(), Some(&config_path), free_addr(), free_addr()).await,
        ));
    }
    let smtp_addrs: Vec<_> = processes.iter().flatten().map(|p| p.smtp).collect();
    let surviving_http = processes[0].as_ref().map(|p| p.http).expect("node 0");

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let accepted = Arc::clone(&accepted);
        let nodes = smtp_addrs.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..MESSAGES_PER_SENDER {
                let sequence = sender * MESSAGES_PER_SENDER + n;
                if let Some(id) = send_anywhere(&nodes, sequence, sequence).await {
                    accepted.lock().await.push(id);
                }
            }
        }));
    }

    eventually("enough messages accepted to kill a node mid-run", || {
        let accepted = Arc::clone(&accepted);
        async move { (accepted.lock().await.len() >= KILL_AFTER).then_some(()) }
    })
    .await;
    processes[1].take().expect("node 1").kill_9();

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

    let mut deliveries: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !accepted.iter().all(|id| deliveries.contains_key(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} accepted messages never delivered",
            accepted
                .iter()
                .filter(|id| !deliveries.contains_key(*id))
                .count(),
            accepted.len()
        );
        if let Ok(request) = tokio::time::timeout(SOON, receiver.recv_any()).await {
            let event = request.json();
            let id = event["message_id"].as_str().expect("message id").to_owned();
            *deliveries.entry(id).or_default() += 1;
        }
    }
    // Let retries of the killed node's in-flight attempts land before counting duplicates.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(request) =
        tokio::time::timeout(Duration::from_millis(200), receiver.recv_any()).await
    {
        let id = request.json()["message_id"]
            .as_str()
            .expect("message id")
            .to_owned();
        *deliveries.entry(id).or_default() += 1;
    }
    let duplicates: usize = deliveries.values().map(|n| n - 1).sum();
    // Only attempts in flight on the killed node can repeat: at most its worker count.
    assert!(duplicates <= 16, "{duplicates} duplicate deliveries");

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
    for process in processes.into_iter().flatten() {
        process.kill_9();
    }
}

/// Duplicate detection and rate limits live in the shared database, so they hold across nodes:
/// the same Message-ID through a second node is flagged, and a sender's hard limit counts what
/// every node accepted.
#[tokio::test]
async fn duplicates_and_rate_limits_are_shared_across_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(
        &config_path,
        node_config(
            &dir.path().join("store"),
            &postgres_database_url(),
            &receiver.url(),
            4,
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
    let mut flags = vec![
        receiver.recv().await.json()["is_duplicate"].clone(),
        receiver.recv().await.json()["is_duplicate"].clone(),
    ];
    flags.sort_by_key(|flag| flag.to_string());
    assert_eq!(flags, [serde_json::json!(false), serde_json::json!(true)]);

    // Four messages per hour for this sender across the cluster: two more pass, then 451.
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

/// Sends an admin request to a node's API; returns the status and the JSON body (null if none).
async fn admin(
    http: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(API_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("api answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_default())
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
            &dir.path().join("store"),
            &postgres_database_url(),
            &configured.url(),
            1_000_000,
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
    let (status, body) = admin(
        a.http,
        reqwest::Method::POST,
        "/v1/inboxes",
        Some(serde_json::json!({"id": "synced", "addresses": [address], "status": "disabled"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(
        a.http,
        reqwest::Method::PUT,
        "/v1/inboxes/synced/webhook",
        Some(serde_json::json!({"url": hook.url(), "enabled": true, "rotate_secret": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(
        a.http,
        reqwest::Method::PATCH,
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

    let (status, body) = admin(a.http, reqwest::Method::DELETE, "/v1/inboxes/synced", None).await;
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
