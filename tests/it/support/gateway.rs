//! The gateway running in-process on port-0 loopback listeners, with its own temporary data
//! directory, plus a small client for its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use mxhook::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const API_KEY: &str = "test-admin-key";
pub const SECRET: &str = "test-signing-secret";

/// What a test changes from the standard test setup.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub webhook_url: Option<String>,
    pub secret: Option<String>,
    pub retry_base_s: f64,
    pub max_retries: u32,
    pub max_message_size: u64,
    /// Overrides `storage.path` (to make the store fail).
    pub storage_path: Option<PathBuf>,
    /// Whether private targets are allowed (true in nearly every test).
    pub allow_private_targets: bool,
    /// Extra `key = value` lines of the `[smtp]` section (limits, timeouts, TLS).
    pub smtp_toml: String,
    /// Appended to the generated config.
    pub extra_toml: String,
    /// The `[auth]` section. Verification is off by default so that no test asks a DNS server
    /// it did not start; the verification tests point it at their own.
    pub auth_toml: String,
}

impl GatewayOptions {
    pub fn webhook(url: String) -> Self {
        Self {
            webhook_url: Some(url),
            secret: Some(SECRET.to_owned()),
            retry_base_s: 0.05,
            max_retries: 6,
            max_message_size: 1 << 20,
            storage_path: None,
            allow_private_targets: true,
            smtp_toml: String::new(),
            extra_toml: String::new(),
            auth_toml: "[auth]\nenabled = false\n".to_owned(),
        }
    }
}

pub struct TestGateway {
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http_client: reqwest::Client,
}

/// The database a test gateway uses: a SQLite file in its directory, or, when
/// `MXTEST_DB_BACKEND=postgres`, a fresh database on the PostgreSQL at 127.0.0.1:5432
/// (`MXTEST_PG_URL` overrides the server URL), so the same tests run on both backends.
pub fn test_database_url(dir: &std::path::Path) -> String {
    if std::env::var("MXTEST_DB_BACKEND").as_deref() == Ok("postgres") {
        // One database per data directory, so a gateway restarted on the same directory finds
        // its data again, as it does with SQLite.
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(dir.display().to_string().as_bytes()));
        postgres_database(&format!("mxhook_t_{}", &digest[..24]))
    } else {
        format!("sqlite://{}", dir.join("mxhook.db").display())
    }
}

/// A new, empty database on the test PostgreSQL server.
pub fn postgres_database_url() -> String {
    let name = format!(
        "mxhook_t_{}",
        super::rand_token().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    postgres_database(&name)
}

/// The URL of database `name` on the test PostgreSQL server, created if it does not exist.
fn postgres_database(name: &str) -> String {
    let server = std::env::var("MXTEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let psql = |sql: String| {
        std::process::Command::new("psql")
            .arg(format!("{server}/test"))
            .args(["-v", "ON_ERROR_STOP=1", "-tAqc"])
            .arg(sql)
            .output()
            .expect("psql runs")
    };
    let exists = psql(format!(
        "SELECT 1 FROM pg_database WHERE datname = '{name}'"
    ));
    if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
        let output = psql(format!("CREATE DATABASE {name}"));
        assert!(
            output.status.success(),
            "creating test database: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    format!("{server}/{name}")
}

/// The config file the tests run with; also used by the process tests.
pub fn config_toml(dir: &std::path::Path, options: &GatewayOptions) -> String {
    let storage = options
        .storage_path
        .clone()
        .unwrap_or_else(|| dir.join("mail"));
    let webhook = options
        .webhook_url
        .as_ref()
        .map(|url| format!("webhook_url = \"{url}\"\n"))
        .unwrap_or_default();
    let secret = options
        .secret
        .as_ref()
        .map(|secret| format!("webhook_secret = \"{secret}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[smtp]
hostname = "mx.test.example"
max_message_size = {max_size}
{smtp}
[http]
admin_keys = ["{API_KEY}"]
[storage]
path = "{storage}"
bucket = "test-bucket"
[database]
url = "{db}"
[delivery]
allow_http = true
allow_private_targets = {allow_private}
retry_base_s = {retry}
max_retries = {max_retries}
timeout_s = 5
lease_s = 10

[[inbox]]
id = "agent"
addresses = ["agent@example.com", "alias@example.com"]
{webhook}{secret}
[[inbox]]
id = "other"
addresses = ["other@example.com"]
{webhook}{secret}
{auth}
{extra}
"#,
        max_size = options.max_message_size,
        smtp = options.smtp_toml,
        storage = storage.display(),
        db = test_database_url(dir),
        allow_private = options.allow_private_targets,
        retry = options.retry_base_s,
        max_retries = options.max_retries,
        auth = options.auth_toml,
        extra = options.extra_toml,
    )
}

impl TestGateway {
    pub async fn start(options: GatewayOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_toml_str(&config_toml(dir.path(), &options))
            .expect("test config is valid");
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: Config) -> Self {
        let smtp_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let smtp = smtp_listener.local_addr().expect("smtp addr");
        let http = http_listener.local_addr().expect("http addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(mxhook::app::run_with_listeners(
            config,
            smtp_listener,
            http_listener,
            async move {
                let _ = rx.await;
            },
        ));
        let gateway = Self {
            smtp,
            http,
            dir,
            shutdown: Some(tx),
            task: Some(task),
            http_client: reqwest::Client::new(),
        };
        super::eventually("the API to answer /healthz", || async {
            gateway
                .api_get("/healthz")
                .await
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .await;
        gateway
    }

    pub async fn api_get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let response = self
            .http_client
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn api_post(&self, path: &str) -> (u16, Value) {
        let response = self
            .http_client
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("API request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn api_get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .http_client
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("API request");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// The deliveries the API lists with this status.
    pub async fn deliveries(&self, status: &str) -> Vec<Value> {
        let (code, body) = self
            .api_get(&format!("/v1/deliveries?status={status}"))
            .await
            .expect("API request");
        assert_eq!(code, 200, "{body}");
        body["deliveries"].as_array().cloned().unwrap_or_default()
    }

    /// Asks the gateway to stop and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(super::SOON, task)
                .await
                .expect("gateway stops in time")
                .expect("gateway task joins")
                .expect("gateway exits cleanly");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
