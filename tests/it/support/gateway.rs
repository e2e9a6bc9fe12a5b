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
    /// `delivery.allow_http` (true in nearly every test: the receivers speak plain http).
    pub allow_http: bool,
    /// Extra `key = value` lines of the `[smtp]` section (limits, timeouts, TLS).
    pub smtp_toml: String,
    /// Appended to the generated config.
    pub extra_toml: String,
    /// The `[auth]` section. Verification is off by default so that no test asks a DNS server
    /// it did not start; the verification tests point it at their own.
    pub auth_toml: String,
    /// `delivery.timeout_s`.
    pub delivery_timeout_s: u64,
    /// `delivery.lease_s`.
    pub lease_s: u64,
    /// Extra `key = value` lines of the `[delivery]` section.
    pub delivery_toml: String,
    /// Extra `key = value` lines of the `agent` inbox.
    pub agent_toml: String,
    /// Extra `key = value` lines of the `other` inbox.
    pub other_toml: String,
    /// The `other` inbox's webhook, when it is not `webhook_url`.
    pub other_webhook_url: Option<String>,
    /// Replaces the `[storage]` section's `path` and `bucket` lines (an S3 store).
    pub storage_toml: Option<String>,
    /// Replaces the test database (a proxy in front of it, a database shared by nodes).
    pub database_url: Option<String>,
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
            allow_http: true,
            smtp_toml: String::new(),
            extra_toml: String::new(),
            auth_toml: "[auth]\nenabled = false\n".to_owned(),
            delivery_timeout_s: 5,
            lease_s: 10,
            delivery_toml: String::new(),
            agent_toml: String::new(),
            other_toml: String::new(),
            other_webhook_url: None,
            storage_toml: None,
            database_url: None,
        }
    }

    /// Inboxes with no webhook and no secret.
    pub fn no_webhook() -> Self {
        Self {
            webhook_url: None,
            secret: None,
            ..Self::webhook(String::new())
        }
    }
}

pub struct TestGateway {
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
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
    let storage = options.storage_toml.clone().unwrap_or_else(|| {
        let path = options
            .storage_path
            .clone()
            .unwrap_or_else(|| dir.join("mail"));
        format!("path = \"{}\"\nbucket = \"test-bucket\"\n", path.display())
    });
    let webhook = |url: Option<&String>| {
        url.map(|url| format!("webhook_url = \"{url}\"\n"))
            .unwrap_or_default()
    };
    let secret = options
        .secret
        .as_ref()
        .map(|secret| format!("webhook_secret = \"{secret}\"\n"))
        .unwrap_or_default();
    let database = options
        .database_url
        .clone()
        .unwrap_or_else(|| test_database_url(dir));
    format!(
        r#"
[smtp]
hostname = "mx.test.example"
max_message_size = {max_size}
{smtp}
[http]
admin_keys = ["{API_KEY}"]
[storage]
{storage}
[database]
url = "{database}"
[delivery]
allow_http = {allow_http}
allow_private_targets = {allow_private}
retry_base_s = {retry}
max_retries = {max_retries}
timeout_s = {timeout}
lease_s = {lease}
{delivery}
[[inbox]]
id = "agent"
addresses = ["agent@example.com", "alias@example.com"]
{agent_webhook}{secret}{agent}
[[inbox]]
id = "other"
addresses = ["other@example.com"]
{other_webhook}{secret}{other}
{auth}
{extra}
"#,
        max_size = options.max_message_size,
        smtp = options.smtp_toml,
        allow_private = options.allow_private_targets,
        allow_http = options.allow_http,
        retry = options.retry_base_s,
        max_retries = options.max_retries,
        timeout = options.delivery_timeout_s,
        lease = options.lease_s,
        delivery = options.delivery_toml,
        agent_webhook = webhook(options.webhook_url.as_ref()),
        agent = options.agent_toml,
        other_webhook = webhook(
            options
                .other_webhook_url
                .as_ref()
                .or(options.webhook_url.as_ref())
        ),
        other = options.other_toml,
        auth = options.auth_toml,
        extra = options.extra_toml,
    )
}

impl TestGateway {
    pub async fn start(options: GatewayOptions) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), options).await
    }

    /// Starts on a data directory of the test's own (a restart finds its data again).
    pub async fn start_in(dir: tempfile::TempDir, options: GatewayOptions) -> Self {
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
        };
        super::eventually("the API to answer /healthz", || async {
            gateway
                .try_api(API_KEY, "GET", "/healthz", None)
                .await
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .await;
        gateway
    }

    /// One API call with the admin key and an optional JSON body: the status and the JSON
    /// body (`Null` when the body is not JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(API_KEY, method, path, body).await
    }

    /// [`Self::api`] with another key (an inbox key, a wrong one).
    pub async fn api_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_api(key, method, path, body)
            .await
            .unwrap_or_else(|err| panic!("API request {method} {path}: {err}"))
    }

    async fn try_api(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        super::try_api_at(self.http, key, method, path, body).await
    }

    /// A GET with the admin key whose body is read as bytes (raw mail, metrics).
    pub async fn api_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = super::http_client()
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("API request");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// The value of one series of `/metrics` (`name{labels}` as printed). A scrape that is not
    /// 200, or a series that is not there, fails the test: a missing series never reads as 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.api_bytes("/metrics").await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "/metrics answered {status}: {text}");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no series `{series}` in /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("series `{series}` is not a number: {err}"))
    }

    /// The array `field` of a GET's JSON answer. A status other than 200, or an answer without
    /// that array, fails the test: a renamed field never reads as an empty list.
    async fn list(&self, path: &str, field: &str) -> Vec<Value> {
        let (code, body) = self.api("GET", path, None).await;
        assert_eq!(code, 200, "GET {path}: {body}");
        body[field]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("GET {path} has no `{field}` list: {body}"))
    }

    /// The messages the API lists for an inbox (up to 500, newest first).
    pub async fn messages(&self, inbox: &str) -> Vec<Value> {
        self.list(
            &format!("/v1/inboxes/{inbox}/messages?limit=500"),
            "messages",
        )
        .await
    }

    /// Every delivery the API lists, whatever its status (up to 1000).
    pub async fn all_deliveries(&self) -> Vec<Value> {
        self.list("/v1/deliveries?limit=1000", "deliveries").await
    }

    /// The attempts recorded for one delivery.
    pub async fn attempts(&self, delivery_id: &str) -> Vec<Value> {
        self.list(
            &format!("/v1/deliveries/{delivery_id}/attempts"),
            "attempts",
        )
        .await
    }

    /// The deliveries the API lists with this status.
    pub async fn deliveries(&self, status: &str) -> Vec<Value> {
        self.list(&format!("/v1/deliveries?status={status}"), "deliveries")
            .await
    }

    /// The `.eml` files in the gateway's local store, sorted.
    pub fn stored_messages(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.path().join("mail")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|extension| extension == "eml") {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
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
