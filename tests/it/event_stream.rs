//! `GET /v1/inboxes/{id}/events` with an independent client (Python's http.client, see
//! tests/python/sse_client.py): events in order with the stored event as data, resumed with
//! `Last-Event-ID` after a disconnect and after a restart with no gap and no duplicate, on
//! another node's mail (PostgreSQL), type filters, heartbeats, authorization and the bound per key.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::gateway::{API_KEY, config_toml, postgres_database_url};
use crate::support::{GatewayOptions, TestGateway};

/// One run of the Python SSE client, its output read line by line as it comes.
struct SseClient {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl SseClient {
    /// Connects and returns the client with its first line (status and content type).
    async fn open(
        http: SocketAddr,
        path: &str,
        key: &str,
        last_event_id: Option<&str>,
        count: usize,
    ) -> (Self, Value) {
        let mut child = tokio::process::Command::new("python3")
            .arg(crate::support::repo_path("tests/python/sse_client.py"))
            .arg(http.to_string())
            .arg(path)
            .arg(key)
            .arg(last_event_id.unwrap_or(""))
            .arg(count.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut client = Self {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        let first = client.next().await;
        (client, first)
    }

    /// The next line the client printed.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), self.lines.next_line())
            .await
            .expect("the SSE client prints within 15 s")
            .expect("read the client's output")
            .expect("the client printed a line before it exited");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
    }

    /// The next event, skipping heartbeat comments.
    async fn next_event(&mut self) -> Value {
        loop {
            let line = self.next().await;
            if line.get("comment").is_none() {
                return line;
            }
        }
    }

    /// Until the client exits (after its count of events, or the end of the stream).
    async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the client exits")
            .expect("wait for the client");
        assert!(status.success(), "the SSE client failed: {status}");
    }
}

/// The event id of the message with this subject in `inbox`.
async fn event_id_of(gateway: &TestGateway, inbox: &str, subject: &str) -> String {
    gateway
        .messages(inbox)
        .await
        .into_iter()
        .find(|message| message["subject"] == subject)
        .and_then(|message| message["event_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no message `{subject}` in {inbox}"))
}

/// Checks an event line against the stored message: `id` is the event id, `event` the type,
/// `data` the stored event itself.
async fn assert_event_of(gateway: &TestGateway, line: &Value, subject: &str) {
    assert_eq!(line["event"], "mail.received", "{line}");
    let data: Value = serde_json::from_str(line["data"].as_str().expect("data")).expect("JSON");
    assert_eq!(data["subject"], subject, "{line}");
    assert_eq!(line["id"], data["event_id"], "{line}");
    assert_eq!(
        line["id"].as_str().expect("id"),
        event_id_of(gateway, "agent", subject).await
    );
    let message_id = data["message_id"].as_str().expect("message_id");
    let (status, stored) = gateway
        .api("GET", &format!("/v1/messages/{message_id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(data, stored, "data is the event as stored and delivered");
}

fn heartbeat_config(toml: &str, heartbeat_s: u64, per_key: usize) -> mxhook::config::Config {
    let mut config = mxhook::config::Config::from_toml_str(toml).expect("config");
    config.http.event_stream_heartbeat_s = heartbeat_s;
    config.http.event_streams_per_key = per_key;
    config.http.event_stream_poll_ms = 100;
    config
}

const EVENTS: &str = "/v1/inboxes/agent/events";

#[tokio::test]
async fn a_client_resumes_after_a_disconnect_and_a_restart_with_no_gap_or_duplicate() {
    let data = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(data.path(), &GatewayOptions::no_webhook());
    let gateway = TestGateway::start_with(
        tempfile::tempdir().expect("tempdir"),
        heartbeat_config(&toml, 1, 20),
    )
    .await;
    let from = "a@sender.example";
    gateway
        .send_simple("agent@example.com", "before", from)
        .await;

    // A stream without Last-Event-ID starts with the next event.
    let (mut first, head) = SseClient::open(gateway.http, EVENTS, API_KEY, None, 2).await;
    assert_eq!(head["status"], 200, "{head}");
    assert!(
        head["content_type"]
            .as_str()
            .is_some_and(|kind| kind.starts_with("text/event-stream")),
        "{head}"
    );
    // A heartbeat comes while nothing happens: the stream is open before any mail is sent.
    assert!(first.next().await.get("comment").is_some());
    gateway.send_simple("agent@example.com", "one", from).await;
    gateway
        .send_simple("other@example.com", "not this inbox", from)
        .await;
    gateway.send_simple("agent@example.com", "two", from).await;
    let one = first.next_event().await;
    assert_event_of(&gateway, &one, "one").await;
    let two = first.next_event().await;
    assert_event_of(&gateway, &two, "two").await;
    first.finish().await;

    // Mail arrives while nobody listens; the reconnect gets exactly it, then what comes live.
    gateway
        .send_simple("agent@example.com", "three", from)
        .await;
    gateway.send_simple("agent@example.com", "four", from).await;
    let last = two["id"].as_str().expect("id");
    let (mut second, head) = SseClient::open(gateway.http, EVENTS, API_KEY, Some(last), 10).await;
    assert_eq!(head["status"], 200, "{head}");
    assert_event_of(&gateway, &second.next_event().await, "three").await;
    let four = second.next_event().await;
    assert_event_of(&gateway, &four, "four").await;
    gateway.send_simple("agent@example.com", "five", from).await;
    let five = second.next_event().await;
    assert_event_of(&gateway, &five, "five").await;

    // The gateway stops: the stream ends rather than holding the shutdown.
    gateway.stop().await;
    assert_eq!(second.next_event().await, json!({"end": true}));
    second.finish().await;

    let restarted = TestGateway::start_with(
        tempfile::tempdir().expect("tempdir"),
        heartbeat_config(&toml, 1, 20),
    )
    .await;
    restarted
        .send_simple("agent@example.com", "six", from)
        .await;
    let last = five["id"].as_str().expect("id");
    let (mut third, head) = SseClient::open(restarted.http, EVENTS, API_KEY, Some(last), 2).await;
    assert_eq!(head["status"], 200, "{head}");
    assert_event_of(&restarted, &third.next_event().await, "six").await;
    restarted
        .send_simple("agent@example.com", "seven", from)
        .await;
    assert_event_of(&restarted, &third.next_event().await, "seven").await;
    third.finish().await;
    restarted.stop().await;
}

#[tokio::test]
async fn types_filter_and_keys_are_checked_and_streams_per_key_are_bounded() {
    let data = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(data.path(), &GatewayOptions::no_webhook());
    let gateway = TestGateway::start_with(
        tempfile::tempdir().expect("tempdir"),
        heartbeat_config(&toml, 1, 2),
    )
    .await;
    let (status, created) = gateway.api("POST", "/v1/inboxes/agent/keys", None).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();

    let status_of = |path: &'static str, key: &'static str| {
        let http = gateway.http;
        async move {
            let (_, head) = SseClient::open(http, path, key, None, 0).await;
            head["status"].as_u64().expect("status")
        }
    };
    assert_eq!(status_of(EVENTS, "").await, 401);
    assert_eq!(status_of(EVENTS, "wrong").await, 401);
    assert_eq!(status_of("/v1/inboxes/nope/events", API_KEY).await, 404);
    let (_, head) = SseClient::open(gateway.http, "/v1/inboxes/other/events", &key, None, 0).await;
    assert_eq!(
        head["status"], 404,
        "another inbox does not exist for an inbox key: {head}"
    );
    let (_, head) = SseClient::open(
        gateway.http,
        "/v1/inboxes/agent/events?types=mail.recieved",
        &key,
        None,
        0,
    )
    .await;
    assert_eq!(head["status"], 400, "{head}");
    assert!(
        head["body"]
            .as_str()
            .expect("body")
            .contains("mail.recieved"),
        "{head}"
    );

    // Two streams of the inbox key: one for calendar events only, one for mail.
    let (mut calendar, head) = SseClient::open(
        gateway.http,
        "/v1/inboxes/agent/events?types=calendar.*",
        &key,
        None,
        1,
    )
    .await;
    assert_eq!(head["status"], 200, "{head}");
    let (mut mail, head) = SseClient::open(
        gateway.http,
        "/v1/inboxes/agent/events?types=mail.*",
        &key,
        None,
        1,
    )
    .await;
    assert_eq!(head["status"], 200, "{head}");
    // The key's bound is two; the admin key is another key.
    let (_, head) = SseClient::open(gateway.http, EVENTS, &key, None, 0).await;
    assert_eq!(head["status"], 429, "{head}");
    let (mut admin, head) = SseClient::open(gateway.http, EVENTS, API_KEY, None, 1).await;
    assert_eq!(head["status"], 200, "{head}");
    assert!(calendar.next().await.get("comment").is_some());
    assert!(mail.next().await.get("comment").is_some());
    assert!(admin.next().await.get("comment").is_some());

    gateway
        .send_simple("agent@example.com", "filtered", "a@sender.example")
        .await;
    assert_event_of(&gateway, &mail.next_event().await, "filtered").await;
    mail.finish().await;
    assert_event_of(&gateway, &admin.next_event().await, "filtered").await;
    admin.finish().await;
    // The calendar stream got heartbeats only.
    for _ in 0..2 {
        let line = calendar.next().await;
        assert!(line.get("comment").is_some(), "{line}");
    }
    // The mail stream closed, so its slot is free again once the server notices.
    crate::support::eventually("a slot of the key to free up", || {
        let http = gateway.http;
        let key = key.clone();
        async move {
            let (client, head) = SseClient::open(http, EVENTS, &key, None, 0).await;
            drop(client);
            (head["status"] == 200).then_some(())
        }
    })
    .await;
    drop(calendar);
    gateway.stop().await;
}

/// Two nodes on one PostgreSQL database: a stream on one gets the mail the other accepted,
/// through that node's poll of the messages table, and resumes on the other node.
#[tokio::test]
async fn a_stream_gets_the_mail_another_node_accepted_and_resumes_on_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::no_webhook();
    options.database_url = Some(postgres_database_url());
    options.storage_path = Some(data.path().join("mail"));
    let toml = config_toml(data.path(), &options);
    let one = TestGateway::start_with(
        tempfile::tempdir().expect("tempdir"),
        heartbeat_config(&toml, 1, 20),
    )
    .await;
    let two = TestGateway::start_with(
        tempfile::tempdir().expect("tempdir"),
        heartbeat_config(&toml, 1, 20),
    )
    .await;
    let from = "a@sender.example";
    let (mut client, head) = SseClient::open(one.http, EVENTS, API_KEY, None, 1).await;
    assert_eq!(head["status"], 200, "{head}");
    assert!(client.next().await.get("comment").is_some());
    two.send_simple("agent@example.com", "via two", from).await;
    let got = client.next_event().await;
    assert_event_of(&one, &got, "via two").await;
    client.finish().await;

    one.send_simple("agent@example.com", "via one", from).await;
    let last = got["id"].as_str().expect("id");
    let (mut client, head) = SseClient::open(two.http, EVENTS, API_KEY, Some(last), 1).await;
    assert_eq!(head["status"], 200, "{head}");
    assert_event_of(&two, &client.next_event().await, "via one").await;
    client.finish().await;
    one.stop().await;
    two.stop().await;
}
