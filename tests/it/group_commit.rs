//! Group commit (`db/write/mod.rs`, `db/write/sqlite.rs`) on the real binary: when the one
//! transaction of a batch of accepted messages fails because of one of them, every write of the
//! batch is committed again alone, so only that message is refused.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::db::{REFUSAL, WriteLock, refuse_messages_with_subject};
use crate::support::files_ending_with;
use crate::support::gateway::{API_KEY, config_toml, test_database_url};
use crate::support::process::{Process, free_addr};
use crate::support::{
    GatewayOptions, SmtpClient, WebhookReceiver, api_at, eventually, simple_message,
};

/// What the committer logs when a batch failed and its writes are committed each alone.
const RETRYING_ALONE: &str = "group commit failed; committing each write alone";

/// How long the step from a raw file's stored answer to its write in the committer's queue is
/// given. That step is CPU only (no I/O, no lock) and shows nowhere, so it is waited out; the
/// log check below fails the test if a write still missed its batch.
const TO_THE_QUEUE: Duration = Duration::from_millis(300);

/// A session with the envelope accepted and the whole message sent but for the final dot.
async fn all_but_the_dot(smtp: std::net::SocketAddr, subject: &str) -> SmtpClient {
    let mut client = SmtpClient::connect(smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<g@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    client.expect("DATA", 354).await;
    let message = simple_message("g@sender.example", "agent@example.com", subject, "body");
    client.send_raw(&message).await;
    client
}

/// Waits until the store holds `count` raw files: the messages got past storing.
async fn until_stored(store: &std::path::Path, count: usize) {
    eventually(&format!("{count} raw files in the store"), || async {
        (files_ending_with(store, &[".eml"]).len() == count).then_some(())
    })
    .await;
}

/// A blocker's insert holds the committer on the test's lock while four more messages queue
/// behind it, one of which a trigger refuses. Their batch fails as a whole; committed each
/// alone, the three others are accepted and delivered, and the refused one gets `451` and
/// leaves nothing.
#[tokio::test]
async fn one_refused_write_in_a_batch_fails_only_its_own_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The store on tmpfs where there is one: its sync then costs nothing, so the wait for the
    // queued writes does not race a disk flush of the whole machine.
    let shm = PathBuf::from("/dev/shm");
    let store_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir_in(dir.path())
    }
    .expect("store tempdir");
    let store = store_dir.path().to_owned();
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_path = Some(store.clone());
    options.smtp_toml = "greet_pause_s = 0".to_owned();
    // Rate counting is a committed write too, taken before the message is stored: with the
    // limits off, a message's only write on the committer is its own insert.
    options.extra_toml = "[rate_limit]\nsender_soft = 0\nsender_hard = 0\ndomain_soft = 0\n\
                          domain_hard = 0\ninbox_soft = 0\ninbox_hard = 0\n"
        .to_owned();
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let process =
        Process::start_logged(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let database_url = test_database_url(dir.path());
    refuse_messages_with_subject(&database_url, "poison").await;

    let mut blocker = all_but_the_dot(process.smtp, "blocker").await;
    let mut batch = Vec::new();
    for subject in ["companion 1", "poison", "companion 2", "companion 3"] {
        batch.push((subject, all_but_the_dot(process.smtp, subject).await));
    }

    let mut lock = WriteLock::hold(&database_url).await;
    blocker.send_raw(b".\r\n").await;
    until_stored(&store, 1).await;
    lock.until_an_insert_waits().await;
    // On SQLite the committer's wait shows nowhere; the blocker was answered by the store
    // before any of the batch was stored, and only CPU work is left before its write.
    tokio::time::sleep(TO_THE_QUEUE).await;
    for (_, client) in &mut batch {
        client.send_raw(b".\r\n").await;
    }
    until_stored(&store, 1 + batch.len()).await;
    tokio::time::sleep(TO_THE_QUEUE).await;
    lock.release().await;

    let (code, text) = blocker.read_reply().await;
    assert_eq!(code, 250, "blocker: {text}");
    for (subject, client) in &mut batch {
        let (code, text) = client.read_reply().await;
        if *subject == "poison" {
            assert!(
                code == 451 && text.starts_with("4.3.0"),
                "{subject}: {code} {text}"
            );
        } else {
            assert_eq!(code, 250, "{subject}: {text}");
        }
    }

    // The batch path ran, on a batch that held the refused write and its three companions.
    let retried = eventually("the committer's log line", || async {
        let lines: Vec<String> = process
            .log_lines()
            .into_iter()
            .filter(|line| line.contains(RETRYING_ALONE))
            .collect();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(retried.len(), 1, "{retried:#?}");
    assert!(retried[0].contains(REFUSAL), "{}", retried[0]);
    let writes: usize = retried[0]
        .split_once("writes=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no write count in {}", retried[0]));
    assert!(writes >= batch.len(), "{}", retried[0]);

    let accepted: BTreeSet<&str> = ["blocker", "companion 1", "companion 2", "companion 3"].into();
    let mut delivered = BTreeSet::new();
    let mut stored_keys = BTreeSet::new();
    while delivered.len() < accepted.len() {
        let event = receiver.recv().await.json();
        let subject = event["subject"].as_str().expect("subject").to_owned();
        assert!(
            delivered.insert(subject.clone()),
            "{subject} delivered twice"
        );
        stored_keys.insert(store.join(event["s3_key"].as_str().expect("s3_key")));
    }
    assert_eq!(
        delivered
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        accepted
    );
    let (_, body) = api_at(
        process.http,
        API_KEY,
        "GET",
        "/v1/inboxes/agent/messages",
        None,
    )
    .await;
    let listed: BTreeSet<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(listed, accepted, "{body}");
    eventually("every delivery recorded as delivered", || async {
        let (_, body) = api_at(process.http, API_KEY, "GET", "/v1/deliveries", None).await;
        let list = body["deliveries"].as_array()?.clone();
        (list.len() == accepted.len()
            && list
                .iter()
                .all(|delivery| delivery["status"] == "delivered"))
        .then_some(())
    })
    .await;
    // The refused message's raw file was removed again: the store holds the others' only.
    let files: BTreeSet<PathBuf> = files_ending_with(&store, &[".eml"]).into_iter().collect();
    assert_eq!(files, stored_keys);
    let temporary = files_ending_with(&store, &[".tmp"]);
    assert!(temporary.is_empty(), "{temporary:?}");
    process.kill_9();
}
