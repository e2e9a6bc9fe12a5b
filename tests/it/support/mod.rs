//! Test support: fixtures, the in-process gateway, a line-level SMTP client, a webhook receiver
//! and an API client. Every wait has a timeout.

pub mod db;
pub mod dns;
pub mod gateway;
pub mod ingress;
mod mail;
pub mod process;
pub mod receiver;
pub mod s3;
pub mod smarthost;
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

/// A plain-text reply from Jane to the `agent` inbox, with the threading `headers` given
/// (Subject, Message-ID, In-Reply-To, References).
pub fn threaded_mail(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{headers}\r\nFrom: Jane <jane@client.example>\r\nTo: agent@example.com\r\n\
         Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Every file under `root` whose name ends with one of `suffixes` (`.eml`, `.tmp`), recursively.
pub fn files_ending_with(root: &std::path::Path, suffixes: &[&str]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if suffixes
                .iter()
                .any(|suffix| path.to_string_lossy().ends_with(suffix))
            {
                found.push(path);
            }
        }
    }
    found
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

/// The HTTP client every test request goes through (one connection pool for the run).
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// One API call to the gateway whose HTTP listener is `http`: the status and the JSON body
/// (`Null` when the body is not JSON). Panics when the request cannot be made.
pub async fn api_at(
    http: std::net::SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    try_api_at(http, key, method, path, body)
        .await
        .unwrap_or_else(|err| panic!("API request {method} {path}: {err}"))
}

/// [`api_at`], with a connection failure returned instead of panicking (a gateway starting up).
pub async fn try_api_at(
    http: std::net::SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut request = http_client()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    ))
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

/// Text as the dashboard's templates escape it (minijinja also escapes `/`).
pub fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}
