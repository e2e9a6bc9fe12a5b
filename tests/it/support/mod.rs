//! Test support: fixtures, the in-process gateway, a line-level SMTP client, a webhook receiver
//! and an API client. Every wait has a timeout.

pub mod gateway;
pub mod receiver;
pub mod s3;
pub mod smtp_client;

use std::path::PathBuf;
use std::time::Duration;

pub use gateway::{GatewayOptions, TestGateway};
pub use receiver::{Received, Reply, WebhookReceiver};
pub use smtp_client::SmtpClient;

/// Generous bound for anything that should happen "soon" on a loaded 2-core CI machine.
pub const SOON: Duration = Duration::from_secs(20);

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A fixture's bytes, exactly as stored in the repository.
pub fn fixture(relative: &str) -> Vec<u8> {
    let path = repo_path("fixtures").join(relative);
    std::fs::read(&path).unwrap_or_else(|err| panic!("reading fixture {}: {err}", path.display()))
}

/// A small, well-formed message with a unique Message-ID.
pub fn simple_message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender Name <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nMessage-ID: <{}@test.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        rand_token()
    )
    .into_bytes()
}

pub fn rand_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}.{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `check` until it returns `Some`, or panics after [`SOON`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks an AgentMail signature with Python's hmac module: an implementation that shares no
/// code with the gateway.
pub fn python_verifies_agentmail(secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).expect("write body");
    let script = r#"
import hmac, hashlib, sys
secret, ts, body_path, header = sys.argv[1:5]
body = open(body_path, "rb").read()
expected = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
sys.exit(0 if any(hmac.compare_digest(expected, h) for h in header.split(" ")) else 1)
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret)
        .arg(timestamp)
        .arg(&body_path)
        .arg(header)
        .status()
        .expect("python3 runs");
    status.success()
}
