//! Recovery after `kill -9` in seconds, not `delivery.lease_s`: the lease of an attempt the
//! dead process had in flight is released (at start on SQLite, by a surviving node that sees the
//! heartbeat stop on PostgreSQL), so the accepted message is delivered at once.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::gateway::{config_toml, postgres_database_url};
use crate::support::process::{Process, free_addr};
use crate::support::{GatewayOptions, Reply, SmtpClient, WebhookReceiver, simple_message};

/// Long enough that waiting it out would fail every bound below.
const LEASE_S: u64 = 330;

async fn send(process: &Process, subject: &str) {
    let mut client = SmtpClient::connect(process.smtp).await;
    let message = simple_message("k@sender.example", "agent@example.com", subject, "body");
    let (code, text) = client
        .send_message("k@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
}

fn write_config(dir: &Path, options: &GatewayOptions) -> std::path::PathBuf {
    let path = dir.join("mxhook.toml");
    std::fs::write(&path, config_toml(dir, options)).expect("write config");
    path
}

/// One node: killed while an attempt hangs, restarted, and the message arrives within seconds
/// of the restart (SQLite releases at start; PostgreSQL after the old heartbeat is seen dead).
#[tokio::test]
async fn a_restarted_node_delivers_what_its_killed_predecessor_held_within_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let receiver_addr = listener.local_addr().expect("addr");
    let mut receiver = WebhookReceiver::serve(listener, vec![Reply::Hang]);
    let mut options = GatewayOptions::webhook(format!("http://{receiver_addr}/hook"));
    options.lease_s = LEASE_S;
    let config = write_config(dir.path(), &options);
    let (smtp, http) = (free_addr(), free_addr());

    let process = Process::start(dir.path(), Some(&config), smtp, http).await;
    send(&process, "in flight at the kill").await;
    let hung = receiver.recv().await;
    process.kill_9();

    let restarted = Instant::now();
    let process = Process::start(dir.path(), Some(&config), smtp, http).await;
    let delivered = receiver
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("delivered within 10 s of the restart, not after the lease");
    assert_eq!(delivered.json()["event_id"], hung.json()["event_id"]);
    let took = restarted.elapsed();
    if std::env::var("MXTEST_DB_BACKEND").as_deref() != Ok("postgres") {
        assert!(
            took < Duration::from_secs(5),
            "SQLite releases at start, yet it took {took:?}"
        );
    }
    receiver.assert_silent(Duration::from_millis(500)).await;
    process.kill_9();
}

/// Two nodes on one PostgreSQL database: the one holding the attempt is killed, and the
/// survivor, which keeps running, delivers within 10 s.
#[tokio::test]
async fn a_surviving_node_takes_over_a_killed_nodes_attempt_within_seconds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let receiver_addr = listener.local_addr().expect("addr");
    let mut receiver = WebhookReceiver::serve(listener, vec![Reply::Hang]);
    let mut options = GatewayOptions::webhook(format!("http://{receiver_addr}/hook"));
    options.lease_s = LEASE_S;
    options.database_url = Some(postgres_database_url());
    let shared = tempfile::tempdir().expect("tempdir");
    options.storage_path = Some(shared.path().join("mail"));
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let config_a = write_config(dir_a.path(), &options);
    let config_b = write_config(dir_b.path(), &options);
    let node_a = Process::start(dir_a.path(), Some(&config_a), free_addr(), free_addr()).await;
    let node_b = Process::start(dir_b.path(), Some(&config_b), free_addr(), free_addr()).await;

    // Accepted by A, which hands the job to itself and hangs on the attempt.
    send(&node_a, "held by the node that dies").await;
    let hung = receiver.recv().await;
    let killed = Instant::now();
    node_a.kill_9();

    let delivered = receiver
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("the survivor delivers within 10 s, not after the lease");
    assert_eq!(delivered.json()["event_id"], hung.json()["event_id"]);
    assert!(killed.elapsed() < Duration::from_secs(10));
    receiver.assert_silent(Duration::from_millis(500)).await;
    node_b.kill_9();
}
