//! A full disk under the raw-mail store or the SQLite database (issue #22): a tiny tmpfs
//! mounted by the test (the suite runs as root) and filled with a filler file. New mail gets
//! `451 4.3.0` over a real SMTP session, mail accepted before keeps being delivered, the gateway
//! takes mail again by itself once the filler is gone, and nothing is corrupted: no partial
//! object is left in the store, every message that got `250` is in the database and delivered,
//! and SQLite's own integrity check passes after the gateway stopped.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection as _;

use crate::support::{
    GatewayOptions, Reply, SmtpClient, TestGateway, WebhookReceiver, eventually, files_ending_with,
    simple_message,
};

/// A tmpfs of `size_kib` mounted on a fresh directory, unmounted when dropped. Mounting needs
/// root, which the suite has (locally and in CI): a failed mount fails the test, so a disk-full
/// test never passes by testing nothing.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_kib: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a {size_kib} KiB tmpfs on {} failed (the disk-full tests need root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills every free byte with a file of its own; [`Filler::remove`] gives the space back.
    fn fill(&self) -> Filler {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        // Big steps first, then pages: tmpfs hands out space by the page, so when a page-sized
        // write fails nothing is left.
        for chunk in [1 << 20, 4096] {
            let bytes = vec![0x5a_u8; chunk];
            loop {
                match file.write_all(&bytes) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc_enospc()) => break,
                    Err(err) => panic!("filling the tmpfs: {err}"),
                }
            }
        }
        let free = free_bytes(self.path());
        assert_eq!(free, 0, "the tmpfs still has {free} bytes free");
        Filler { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file the stopped gateway's runtime has not closed yet must not keep the
        // mount (and its memory) alive after the test.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// ENOSPC on Linux, without a libc dependency for one constant.
fn libc_enospc() -> i32 {
    28
}

/// Free bytes of the filesystem at `path`, as `df` reports them.
fn free_bytes(path: &Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    assert!(output.status.success(), "df failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes")
}

struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Gives `bytes` back, so that a larger write starts and then runs out of space.
    fn leave_free(&self, bytes: u64) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open the filler");
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(bytes))
            .expect("shorten the filler");
    }

    fn remove(self) {
        std::fs::remove_file(&self.path).expect("remove the filler");
    }
}

/// Sends one message to `agent` over a real SMTP session: the final reply and, on `250`, the
/// message id from `queued as`.
async fn send(gateway: &TestGateway, subject: &str) -> (u16, String, Option<String>) {
    send_lines(gateway, subject, 40).await
}

/// [`send`] with a body of `lines` lines (23 bytes each).
async fn send_lines(
    gateway: &TestGateway,
    subject: &str,
    lines: usize,
) -> (u16, String, Option<String>) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let message = simple_message(
        "jane@client.example",
        "agent@example.com",
        subject,
        &format!("{subject}\r\n{}", "some text of the body\r\n".repeat(lines)),
    );
    let (code, text) = client
        .send_message("jane@client.example", &["agent@example.com"], &message)
        .await;
    client.expect("QUIT", 221).await;
    let id = (code == 250).then(|| {
        text.rsplit(' ')
            .next()
            .expect("queued as <id>")
            .trim()
            .to_owned()
    });
    (code, text, id)
}

/// Sends one message and requires the exact temporary failure.
async fn send_refused(gateway: &TestGateway, subject: &str) {
    send_refused_lines(gateway, subject, 40).await;
}

async fn send_refused_lines(gateway: &TestGateway, subject: &str, lines: usize) {
    let (code, text, _) = send_lines(gateway, subject, lines).await;
    assert_eq!(
        (code, text.as_str()),
        (
            451,
            "4.3.0 Requested action aborted: local error in processing, try again later"
        ),
        "a full disk must ask the sender to retry"
    );
}

async fn send_accepted(gateway: &TestGateway, subject: &str) -> String {
    let (code, text, id) = send(gateway, subject).await;
    assert_eq!(code, 250, "{text}");
    id.expect("message id")
}

/// The message ids the webhook requests carried, from `requests`.
fn delivered_ids(requests: &[crate::support::Received]) -> BTreeSet<String> {
    requests
        .iter()
        .map(|request| {
            let body = request.json();
            body["message_id"]
                .as_str()
                .unwrap_or_else(|| panic!("webhook body without message_id: {body}"))
                .to_owned()
        })
        .collect()
}

/// Answers the webhook requests held at `gate` and waits until the gateway lists a delivered
/// delivery for each of `ids`. The gate is opened repeatedly: a request recorded by the
/// receiver may not be waiting on the gate yet when it is first opened.
async fn release_until_delivered(
    gateway: &TestGateway,
    receiver: &WebhookReceiver,
    gate: &tokio::sync::Notify,
    ids: &BTreeSet<String>,
) {
    receiver.set_script(Vec::new());
    eventually("every accepted message to be delivered", || async {
        gate.notify_waiters();
        let delivered: BTreeSet<String> = gateway
            .all_deliveries()
            .await
            .iter()
            .filter(|delivery| delivery["status"] == "delivered")
            .filter_map(|delivery| delivery["message_id"].as_str().map(str::to_owned))
            .collect();
        ids.is_subset(&delivered).then_some(())
    })
    .await;
}

/// Receives `count` webhook requests (held or answered).
async fn receive(receiver: &mut WebhookReceiver, count: usize) -> Vec<crate::support::Received> {
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        requests.push(receiver.recv().await);
    }
    requests
}

fn message_ids(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|message| message["id"].as_str().expect("message id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_full_store_disk_answers_451_keeps_delivering_and_recovers_by_itself() {
    let store = Tmpfs::mount(512);
    let gate = Arc::new(tokio::sync::Notify::new());
    // The first messages' webhook requests are held, so that they are still being delivered
    // while the disk is full.
    let mut receiver = WebhookReceiver::start(vec![
        Reply::Wait(Arc::clone(&gate)),
        Reply::Wait(Arc::clone(&gate)),
        Reply::Wait(Arc::clone(&gate)),
    ])
    .await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_path = Some(store.path().join("mail"));
    options.delivery_timeout_s = 30;
    options.lease_s = 40;
    let gateway = TestGateway::start(options).await;

    let mut accepted = BTreeSet::new();
    for n in 0..3 {
        accepted.insert(send_accepted(&gateway, &format!("before {n}")).await);
    }
    let held = receive(&mut receiver, 3).await;
    assert_eq!(delivered_ids(&held), accepted);

    let filler = store.fill();
    for n in 0..3 {
        send_refused(&gateway, &format!("while full {n}")).await;
    }
    // A message larger than the space left starts to be written and then runs out.
    filler.leave_free(64 * 1024);
    send_refused_lines(&gateway, "larger than the space left", 10_000).await;
    // Nothing half-written stays behind: one object per accepted message, each whole.
    let objects = files_ending_with(store.path(), &[".eml", ".tmp"]);
    assert_eq!(objects.len(), accepted.len(), "{objects:?}");
    // The held deliveries complete while the store is still full: delivery reads no object.
    release_until_delivered(&gateway, &receiver, &gate, &accepted).await;

    filler.remove();
    // No restart: the next message is taken.
    let after = send_accepted(&gateway, "after").await;
    let request = receiver.recv().await;
    assert_eq!(request.json()["message_id"], after.as_str());
    accepted.insert(after);
    release_until_delivered(&gateway, &receiver, &gate, &accepted).await;

    assert_eq!(message_ids(&gateway.messages("agent").await), accepted);
    let objects = files_ending_with(store.path(), &[".eml", ".tmp"]);
    assert_eq!(objects.len(), accepted.len(), "{objects:?}");
    for id in &accepted {
        let (status, raw) = gateway.api_bytes(&format!("/v1/messages/{id}/raw")).await;
        assert_eq!(status, 200, "raw of {id}");
        assert!(
            String::from_utf8_lossy(&raw).contains("some text of the body"),
            "raw of {id} is not the message sent"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_full_sqlite_disk_answers_451_without_losing_or_corrupting_anything() {
    // The database disk of a PostgreSQL server is not the gateway's to fill: this test is about
    // the SQLite file, which it places itself, so the PostgreSQL pass would only repeat it.
    if std::env::var("MXTEST_DB_BACKEND").as_deref() == Ok("postgres") {
        eprintln!("the SQLite disk-full test ran in the SQLite pass; nothing to repeat");
        return;
    }
    let database = Tmpfs::mount(4096);
    let database_path = database.path().join("mxhook.db");
    let database_url = format!("sqlite://{}", database_path.display());
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut receiver = WebhookReceiver::start(vec![
        Reply::Wait(Arc::clone(&gate)),
        Reply::Wait(Arc::clone(&gate)),
        Reply::Wait(Arc::clone(&gate)),
    ])
    .await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.database_url = Some(database_url.clone());
    // A delivery whose attempt could not be recorded on the full disk is tried again when its
    // lease runs out: short, so the test does not wait long for it. A held request that times
    // out first is retried like any failed one.
    options.delivery_timeout_s = 5;
    options.lease_s = 6;
    let gateway = TestGateway::start(options).await;

    let mut accepted = BTreeSet::new();
    for n in 0..3 {
        accepted.insert(send_accepted(&gateway, &format!("before {n}")).await);
    }
    let held = receive(&mut receiver, 3).await;
    assert_eq!(delivered_ids(&held), accepted);

    let filler = database.fill();
    for n in 0..3 {
        send_refused(&gateway, &format!("while full {n}")).await;
    }
    // The held requests are answered while the disk is full: the webhook has them, whether or
    // not their attempts could be recorded yet.
    receiver.set_script(Vec::new());
    gate.notify_waiters();
    // Reads go on: the API still lists what was accepted.
    assert_eq!(message_ids(&gateway.messages("agent").await), accepted);

    filler.remove();
    // No restart: the committer took the failures and commits again.
    let after = send_accepted(&gateway, "after").await;
    accepted.insert(after);
    release_until_delivered(&gateway, &receiver, &gate, &accepted).await;
    assert_eq!(message_ids(&gateway.messages("agent").await), accepted);
    // Every message of the test, in the webhook (some more than once: at-least-once).
    let mut seen = BTreeSet::new();
    while let Some(request) = receiver.recv_timeout(Duration::from_millis(300)).await {
        seen.insert(request.json()["message_id"].as_str().map(str::to_owned));
    }
    let seen: BTreeSet<String> = delivered_ids(&held)
        .into_iter()
        .chain(seen.into_iter().flatten())
        .collect();
    assert!(
        accepted.is_subset(&seen),
        "{accepted:?} not all in {seen:?}"
    );
    // The objects of the refused messages were removed again: one per accepted message.
    let objects = files_ending_with(&gateway.dir.path().join("mail"), &[".eml", ".tmp"]);
    assert_eq!(objects.len(), accepted.len(), "{objects:?}");
    gateway.stop().await;

    // The file after the gateway closed it: intact, and holding every accepted message.
    let mut conn = sqlx::SqliteConnection::connect(&database_url)
        .await
        .expect("open the database");
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .expect("integrity check");
    assert_eq!(integrity, vec!["ok".to_owned()]);
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM messages")
        .fetch_all(&mut conn)
        .await
        .expect("read messages");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), accepted);
    conn.close().await.expect("close");
}
