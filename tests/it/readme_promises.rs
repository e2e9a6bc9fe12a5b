//! Promises the README makes that no other test checked: the config rewriting the inboxes it
//! declares at every start, `auth.verify_timeout_s` against a DNS server that never answers,
//! `/readyz` while the database is gone, `reject` for a transaction with several recipients,
//! the 30-day window of subject threading, and the `received_before` filter of the message list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mxhook::config::Config;
use serde_json::{Value, json};

use crate::support::gateway::{SECRET, config_toml};
use crate::support::ingress::{calcom_booking, post_calcom};
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually,
    python_verifies_agentmail, simple_message,
};

/// The gateway on a data directory the test keeps, so that a second start finds the first's
/// database (SQLite file or PostgreSQL database, both named after the directory).
async fn start_on(data: &std::path::Path, options: &GatewayOptions) -> TestGateway {
    let config = Config::from_toml_str(&config_toml(data, options)).expect("test config is valid");
    TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config).await
}

async fn send(gateway: &TestGateway, from: &str, to: &[&str], raw: &[u8]) -> (u16, String) {
    SmtpClient::connect(gateway.smtp)
        .await
        .send_message(from, to, raw)
        .await
}

/// The message id a `250` reply names (`… queued as msg_…`).
fn queued_id(reply: &(u16, String)) -> String {
    assert_eq!(reply.0, 250, "{}", reply.1);
    reply.1.rsplit(' ').next().expect("queued as id").to_owned()
}

/// Waits until the gateway has recorded `count` deliveries, all delivered, and returns them: a
/// job still pending when a test restarts the gateway would be sent again after the restart.
async fn delivered(gateway: &TestGateway, count: usize) -> Vec<Value> {
    eventually("the deliveries to be recorded as delivered", || async {
        let deliveries = gateway.all_deliveries().await;
        let settled = deliveries.len() == count
            && deliveries
                .iter()
                .all(|delivery| delivery["status"] == "delivered");
        settled.then_some(deliveries)
    })
    .await
}

/// Whether the AgentMail signature of a delivered webhook verifies with `secret`.
fn signed_with(request: &crate::support::Received, secret: &str) -> bool {
    python_verifies_agentmail(
        secret,
        &request
            .header("x-agentmail-timestamp")
            .expect("timestamp header"),
        &request.body,
        &request
            .header("x-agentmail-signature")
            .expect("signature header"),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. "at each start the config rewrites the webhook settings and the sender policy of the
//    inboxes it declares"; "calendar_event_types … written at every start … entries removed
//    from the file are removed".

#[tokio::test]
async fn the_config_takes_back_the_webhook_and_sender_policy_the_api_changed_at_the_next_start() {
    let mut from_config = WebhookReceiver::start(vec![]).await;
    let mut from_api = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::webhook(from_config.url());
    options.agent_toml = "block_senders = [\"spam.test\"]\npolicy_action = \"reject\"\n".to_owned();
    let spam = || simple_message("promo@spam.test", "agent@example.com", "Deal", "Buy");

    let gateway = start_on(data.path(), &options).await;
    let reply = send(&gateway, "promo@spam.test", &["agent@example.com"], &spam()).await;
    assert_eq!(reply.0, 550, "the config's policy rejects: {}", reply.1);

    // Through the API: another webhook with a fresh secret, and a policy that lets spam in.
    let (status, hook) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/webhook",
            Some(json!({"url": from_api.url(), "rotate_secret": true, "ordered": true})),
        )
        .await;
    assert_eq!(status, 200, "{hook}");
    let api_secret = hook["signing_secret"]
        .as_str()
        .expect("a rotation reveals the new secret")
        .to_owned();
    let (status, inbox) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/agent",
            Some(json!({"policy_action": "tag", "block_senders": [], "dkim_pass_required": true})),
        )
        .await;
    assert_eq!(status, 200, "{inbox}");
    let tagged =
        queued_id(&send(&gateway, "promo@spam.test", &["agent@example.com"], &spam()).await);
    let request = from_api.recv().await;
    assert_eq!(request.json()["message_id"], tagged.as_str());
    assert!(signed_with(&request, &api_secret), "the API's secret signs");
    delivered(&gateway, 1).await;
    gateway.stop().await;

    let gateway = start_on(data.path(), &options).await;
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/agent", None).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["source"], "config", "{inbox}");
    assert_eq!(inbox["policy_action"], "reject", "{inbox}");
    assert_eq!(inbox["block_senders"], json!(["spam.test"]), "{inbox}");
    assert_eq!(inbox["dkim_pass_required"], false, "{inbox}");
    let (status, hook) = gateway.api("GET", "/v1/inboxes/agent/webhook", None).await;
    assert_eq!(status, 200, "{hook}");
    assert_eq!(hook["url"], from_config.url(), "{hook}");
    assert_eq!(hook["ordered"], false, "{hook}");

    // The rewritten policy refuses again, and mail goes to the config's webhook, signed with
    // the config's secret rather than the one the API rotated in.
    let reply = send(&gateway, "promo@spam.test", &["agent@example.com"], &spam()).await;
    assert_eq!(reply.0, 550, "the config's policy is back: {}", reply.1);
    assert!(reply.1.starts_with("5.7.1"), "{}", reply.1);
    let fine = simple_message(
        "a@sender.example",
        "agent@example.com",
        "After restart",
        "hi",
    );
    let accepted =
        queued_id(&send(&gateway, "a@sender.example", &["agent@example.com"], &fine).await);
    let request = from_config.recv().await;
    assert_eq!(request.json()["message_id"], accepted.as_str());
    assert!(signed_with(&request, SECRET), "the config's secret signs");
    assert!(
        !signed_with(&request, &api_secret),
        "the secret the API set no longer signs"
    );
    // Of the spam, only the copy the API's policy let in was kept.
    let (status, listed) = gateway
        .api(
            "GET",
            "/v1/inboxes/agent/messages?sender=promo@spam.test",
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&Value> = listed["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| &message["id"])
        .collect();
    assert_eq!(ids, [&json!(tagged)], "{listed}");
    gateway.stop().await;
}

/// A Cal.com booking of `event_type_id`, created now (older ones expire).
fn booking_now(event_type_id: u64, uid: &str) -> Vec<u8> {
    calcom_booking(
        "BOOKING_CREATED",
        event_type_id,
        uid,
        &chrono::Utc::now().to_rfc3339(),
    )
}

#[tokio::test]
async fn a_calendar_event_type_removed_from_the_config_is_unmapped_at_the_next_start() {
    const CAL_SECRET: &str = "cal-secret";
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::webhook(receiver.url());
    options.other_toml = "calendar_event_types = [\"calcom:42\", \"calcom:43\"]\n".to_owned();
    let path = "/v1/inboxes/other/ingress/event-types";

    let gateway = start_on(data.path(), &options).await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/ingress/calcom",
            Some(json!({"secret": CAL_SECRET})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // One mapping set through the API, which a start must leave alone.
    let (status, body) = gateway
        .api("PUT", path, Some(json!({"event_types": ["calcom:77"]})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        post_calcom(&gateway, CAL_SECRET, booking_now(43, "bk_before"))
            .await
            .0,
        200
    );
    let event = receiver.recv().await.json();
    assert_eq!(event["agent_id"], "other", "{event}");
    assert_eq!(event["booking"]["event_type_id"], "43", "{event}");
    delivered(&gateway, 1).await;
    gateway.stop().await;

    options.other_toml = "calendar_event_types = [\"calcom:42\"]\n".to_owned();
    let gateway = start_on(data.path(), &options).await;
    let (status, body) = gateway.api("GET", path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["event_types"],
        json!([
            {"event_type": "calcom:42", "source": "config"},
            {"event_type": "calcom:77", "source": "api"}
        ]),
        "calcom:43 left the file, so it left the database"
    );
    // Refused like any unknown event type, and nothing was made of it.
    assert_eq!(
        post_calcom(&gateway, CAL_SECRET, booking_now(43, "bk_after"))
            .await
            .0,
        401
    );
    assert_eq!(
        post_calcom(&gateway, CAL_SECRET, booking_now(42, "bk_kept"))
            .await
            .0,
        200
    );
    let event = receiver.recv().await.json();
    assert_eq!(event["booking"]["event_type_id"], "42", "{event}");
    // One job per accepted booking, none for the refused one.
    delivered(&gateway, 2).await;
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. "Verification never fails a message: resolver trouble, or running past
//    `auth.verify_timeout_s`, is `temperror` in the verdict."

/// A DNS server on a loopback port, UDP and TCP, that reads every query and never answers: a
/// resolver hanging, not one refusing (a closed port answers at once with an ICMP error).
struct SilentDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SilentDns {
    async fn start() -> Self {
        let queries = Arc::new(AtomicUsize::new(0));
        // The UDP port is picked free; the TCP one may be taken on that number, then try again.
        for _ in 0..10 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind UDP");
            let addr = udp.local_addr().expect("UDP addr");
            let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                continue;
            };
            let counted = Arc::clone(&queries);
            let udp_task = tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while udp.recv_from(&mut buffer).await.is_ok() {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
            let counted = Arc::clone(&queries);
            let tcp_task = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = tcp.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    // Kept open and never read from or written to.
                    held.push(stream);
                }
            });
            return Self {
                addr,
                queries,
                tasks: vec![udp_task, tcp_task],
            };
        }
        panic!("no loopback port free for both UDP and TCP");
    }
}

impl Drop for SilentDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_hanging_dns_server_is_temperror_at_the_verify_timeout_and_the_mail_is_delivered() {
    const VERIFY_TIMEOUT: Duration = Duration::from_secs(1);
    let dns = SilentDns::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    // One query may wait far longer than the whole check: only the verification deadline can
    // end it in time (and the SMTP client gives up after 20 s).
    options.auth_toml = format!(
        "[auth]\nnameservers = [\"{}\"]\ndns_timeout_s = 60\nverify_timeout_s = {}\n",
        dns.addr,
        VERIFY_TIMEOUT.as_secs_f64()
    );
    let gateway = TestGateway::start(options).await;

    let raw = simple_message(
        "alice@sender.example",
        "agent@example.com",
        "Hanging DNS",
        "hi",
    );
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.sender.example", 250).await;
    client.expect("MAIL FROM:<alice@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    client.expect("DATA", 354).await;
    let started = Instant::now();
    client
        .send_raw(&crate::support::smtp_client::dot_stuff(&raw))
        .await;
    let reply = client.read_reply().await;
    let took = started.elapsed();
    let message_id = queued_id(&reply);
    assert!(
        dns.queries.load(Ordering::SeqCst) > 0,
        "the gateway asked the silent server"
    );
    assert!(
        took >= VERIFY_TIMEOUT - Duration::from_millis(50),
        "the reply waited for the checks until the deadline, {took:?}"
    );
    assert!(
        took < VERIFY_TIMEOUT + Duration::from_secs(3),
        "the reply came about the verify timeout after the end of DATA, not {took:?}"
    );

    let event = receiver.recv().await.json();
    assert_eq!(event["message_id"], message_id.as_str());
    let auth = &event["auth"];
    assert_eq!(auth["checked"], true, "{auth}");
    assert_eq!(auth["dmarc"]["result"], "temperror", "{auth}");
    // Nothing finished, so no other verdict may claim a result.
    assert!(
        auth["spf"].is_null() || auth["spf"]["result"] == "temperror",
        "{auth}"
    );
    assert!(
        auth["dkim"]
            .as_array()
            .is_none_or(|dkim| dkim.iter().all(|verdict| verdict["result"] == "temperror")),
        "{auth}"
    );
    assert_eq!(event["sender_verified"], false, "{event}");
    assert_eq!(
        delivered(&gateway, 1).await[0]["message_id"],
        message_id.as_str()
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. "`GET /healthz`, `GET /readyz`: liveness / readiness: the database answers".

/// `/readyz` without a key, bounded: a probe that gets no answer in time counts as not ready,
/// so an answer that takes longer is not the promised one.
async fn readyz(gateway: &TestGateway) -> (u16, Value) {
    const PROBE_BOUND: Duration = Duration::from_secs(5);
    let response = tokio::time::timeout(
        PROBE_BOUND,
        crate::support::http_client()
            .get(format!("http://{}/readyz", gateway.http))
            .send(),
    )
    .await
    .expect("/readyz answers within the probe's bound")
    .expect("/readyz request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// On SQLite the database is the file at `database.url`: once it is gone from there (deleted,
/// or its volume gone), what the open connections still read is a file nothing will find again,
/// so the node is not ready; it is again once the file is back.
#[tokio::test]
async fn readyz_is_not_ready_while_the_sqlite_file_is_gone_and_ready_when_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("ready.db");
    let mut options = GatewayOptions::no_webhook();
    options.database_url = Some(format!("sqlite://{}", database.display()));
    let gateway = TestGateway::start_in(dir, options).await;
    assert_eq!(readyz(&gateway).await.0, 200);

    let away = database.with_extension("away");
    std::fs::rename(&database, &away).expect("move the database file away");
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");

    std::fs::rename(&away, &database).expect("put the database file back");
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    gateway.stop().await;
}

/// A TCP proxy in front of PostgreSQL that can be taken down (its port closed and every
/// connection through it cut, as when the server goes away) and brought back on the same port.
struct PostgresLink {
    addr: SocketAddr,
    upstream: String,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl PostgresLink {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mut link = Self {
            addr,
            upstream,
            serving: None,
        };
        link.serve(listener);
        link
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream.clone();
        self.serving = Some(tokio::spawn(async move {
            // Owned by this task, so aborting it drops the listener and every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { return };
                        let upstream = upstream.clone();
                        connections.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }

    async fn take_down(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            let _ = serving.await;
        }
    }

    async fn bring_back(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the proxy's port again");
        self.serve(listener);
    }
}

#[tokio::test]
async fn readyz_is_not_ready_while_postgres_is_unreachable_and_ready_when_it_is_back() {
    let database =
        url::Url::parse(&crate::support::gateway::postgres_database_url()).expect("database URL");
    let upstream = format!(
        "{}:{}",
        database.host_str().expect("host"),
        database.port().unwrap_or(5432)
    );
    let mut link = PostgresLink::start(upstream).await;
    let mut proxied = database.clone();
    proxied.set_ip_host(link.addr.ip()).expect("ip host");
    proxied.set_port(Some(link.addr.port())).expect("port");
    proxied.set_query(Some("sslmode=disable"));
    let mut options = GatewayOptions::no_webhook();
    options.database_url = Some(proxied.to_string());
    let gateway = TestGateway::start(options).await;
    assert_eq!(readyz(&gateway).await.0, 200);

    link.take_down().await;
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");

    link.bring_back().await;
    eventually("/readyz to be ready again", || async {
        let (status, body) = readyz(&gateway).await;
        (status == 200 && body["status"] == "ok").then_some(())
    })
    .await;
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. "`reject` answers `550 5.7.1` at the end of DATA and stores nothing (for every recipient
//    of that transaction)".

#[tokio::test]
async fn a_rejecting_inbox_refuses_the_whole_transaction_and_nothing_is_kept_for_any_recipient() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml = format!(
        "[[inbox]]\nid = \"strict\"\naddresses = [\"strict@example.com\"]\nwebhook_url = \"{}\"\n\
         block_senders = [\"spam.test\"]\npolicy_action = \"reject\"\n",
        receiver.url()
    );
    let gateway = TestGateway::start(options).await;
    let raw = simple_message("promo@spam.test", "agent@example.com", "Deal", "Buy");

    // Two inboxes that tag (`agent` by two of its addresses, `other`) and, last, the one that
    // rejects: every RCPT is accepted, the one answer to DATA refuses them all.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<promo@spam.test>", 250).await;
    for rcpt in [
        "agent@example.com",
        "alias@example.com",
        "other@example.com",
        "strict@example.com",
    ] {
        client.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
    }
    let (code, text) = client.data(&raw).await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1"), "{text}");
    // The session goes on: the next transaction, without the rejecting inbox, is accepted.
    client.expect("MAIL FROM:<promo@spam.test>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    let (code, text) = client.data(&raw).await;
    let accepted = queued_id(&(code, text));

    for inbox in ["agent", "other", "strict"] {
        let ids: Vec<Value> = gateway
            .messages(inbox)
            .await
            .iter()
            .map(|message| message["id"].clone())
            .collect();
        let expected = if inbox == "agent" {
            vec![json!(accepted)]
        } else {
            vec![]
        };
        assert_eq!(ids, expected, "messages of {inbox}");
    }
    let event = receiver.recv().await.json();
    assert_eq!(event["message_id"], accepted.as_str());
    // Not even a duplicate fingerprint was kept of the refused copy.
    assert_eq!(event["is_duplicate"], false, "{event}");
    // Nor its raw bytes: the store, written while the message was checked, holds only the
    // accepted message's object.
    let stored = gateway.stored_messages();
    let accepted_object = gateway
        .dir
        .path()
        .join("mail")
        .join(event["s3_key"].as_str().expect("s3_key"));
    assert_eq!(stored, vec![accepted_object], "objects in the store");
    let deliveries = delivered(&gateway, 1).await;
    let for_messages: Vec<&Value> = deliveries
        .iter()
        .map(|delivery| &delivery["message_id"])
        .collect();
    assert_eq!(for_messages, [&json!(accepted)], "{deliveries:?}");
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. "Only a mail with neither header falls back to its subject, and only when … the earlier
//    mail arrived within 30 days".

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Moves the arrival time of stored messages `days` into the past, as if they had been
/// received that long ago: the window counts from when a mail arrived (not its Date header).
async fn age_messages(gateway: &TestGateway, message_ids: &[&str], days: i64) {
    sqlx::any::install_default_drivers();
    let url = crate::support::gateway::test_database_url(gateway.dir.path());
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .expect("open the database");
    let now = chrono::Utc::now().timestamp_millis();
    for id in message_ids {
        let updated = sqlx::query("UPDATE messages SET received_at = $1 WHERE id = $2")
            .bind(now - days * DAY_MS)
            .bind(*id)
            .execute(&pool)
            .await
            .expect("age the message");
        assert_eq!(updated.rows_affected(), 1, "message {id} is stored");
    }
    pool.close().await;
}

fn jane_mail(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Jane <jane@client.example>\r\nTo: Agent <agent@example.com>\r\n{headers}\r\n\
         Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Sends to `agent` and returns the delivered event.
async fn thread_event(gateway: &TestGateway, receiver: &mut WebhookReceiver, raw: &[u8]) -> Value {
    let id = queued_id(&send(gateway, "jane@client.example", &["agent@example.com"], raw).await);
    let event = receiver.recv().await.json();
    assert_eq!(event["message_id"], id.as_str());
    event
}

#[tokio::test]
async fn a_reply_without_threading_headers_joins_by_subject_within_30_days_and_not_after() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let root = thread_event(
        &gateway,
        &mut receiver,
        &jane_mail(
            "Subject: Budget\r\nMessage-ID: <budget-root@client.example>",
            "Here is the budget.",
        ),
    )
    .await;
    let thread_id = root["thread_id"].as_str().expect("thread id").to_owned();
    let root_id = root["message_id"].as_str().expect("message id").to_owned();

    // 29 days ago: inside the window, so a headerless reply by subject joins the thread.
    age_messages(&gateway, &[&root_id], 29).await;
    let inside = thread_event(
        &gateway,
        &mut receiver,
        &jane_mail("Subject: Re: Budget", "One more line."),
    )
    .await;
    assert_eq!(inside["thread_id"], thread_id.as_str(), "{inside}");
    let inside_id = inside["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();

    // 31 days ago, both: the same reply starts a thread of its own.
    age_messages(&gateway, &[&root_id, &inside_id], 31).await;
    let outside = thread_event(
        &gateway,
        &mut receiver,
        &jane_mail("Subject: Re: Budget", "Still about the budget."),
    )
    .await;
    assert_ne!(outside["thread_id"], thread_id.as_str(), "{outside}");
    assert!(outside["email"]["previous_emails"].is_null(), "{outside}");

    // The window is the subject fallback's only: a reply that names the root joins it at any age.
    let named = thread_event(
        &gateway,
        &mut receiver,
        &jane_mail(
            "Subject: Re: Budget\r\nIn-Reply-To: <budget-root@client.example>",
            "Answering the first mail.",
        ),
    )
    .await;
    assert_eq!(named["thread_id"], thread_id.as_str(), "{named}");
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. "`GET /v1/inboxes/{id}/messages?limit=&cursor=&…&received_after=&received_before=…`:
//    newest first …; pass `next_cursor` as `cursor` for the next page".

/// Every page of an inbox's message list for this query, following `next_cursor`: the ids in
/// the order listed.
async fn all_pages(gateway: &TestGateway, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/inboxes/agent/messages?{query}&cursor={cursor}"),
            None => format!("/v1/inboxes/agent/messages?{query}"),
        };
        let (status, page) = gateway.api("GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {page}");
        ids.extend(
            page["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|message| message["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
    panic!("paging {query} did not end");
}

/// RFC 3339 in UTC with a `Z` (a `+` would need escaping in a query string).
fn query_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn the_message_list_keeps_only_mail_received_before_the_given_time_across_pages() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    for n in 0..5 {
        let raw = simple_message(
            "a@sender.example",
            "agent@example.com",
            &format!("m{n}"),
            "hi",
        );
        queued_id(&send(&gateway, "a@sender.example", &["agent@example.com"], &raw).await);
    }
    let (status, listed) = gateway
        .api("GET", "/v1/inboxes/agent/messages?limit=50", None)
        .await;
    assert_eq!(status, 200, "{listed}");
    // Newest first, with the time each arrived.
    let all: Vec<(String, i64)> = listed["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| {
            let at = message["received_at"].as_str().expect("received_at");
            let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
            (
                message["id"].as_str().expect("id").to_owned(),
                at.timestamp_millis(),
            )
        })
        .collect();
    assert_eq!(all.len(), 5, "{listed}");
    let oldest_first: Vec<i64> = all.iter().rev().map(|(_, at)| *at).collect();
    let fourth = oldest_first[3];
    let before_fourth: Vec<String> = all
        .iter()
        .filter(|(_, at)| *at < fourth)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !before_fourth.is_empty() && before_fourth.len() <= 3,
        "the boundary splits the mail: {all:?}"
    );

    let before = format!("received_before={}", query_time(fourth));
    assert_eq!(
        all_pages(&gateway, &format!("{before}&limit=50")).await,
        before_fourth,
        "one page"
    );
    assert_eq!(
        all_pages(&gateway, &format!("{before}&limit=1")).await,
        before_fourth,
        "page by page, the cursor keeps the filter"
    );

    gateway.stop().await;
}
