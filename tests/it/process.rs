//! The real `mxhook` binary as a process: embedded defaults, config errors at startup, and
//! `kill -9` at the worst moments followed by a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::gateway::{API_KEY, config_toml};
use crate::support::{
    GatewayOptions, Reply, SmtpClient, WebhookReceiver, eventually, simple_message,
};

pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

pub(crate) struct Process {
    child: Child,
    pub(crate) smtp: SocketAddr,
    pub(crate) http: SocketAddr,
}

impl Process {
    pub(crate) async fn start(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
    ) -> Self {
        Self::start_with_env(cwd, config, smtp, http, &[]).await
    }

    pub(crate) async fn start_with_env(
        cwd: &Path,
        config: Option<&Path>,
        smtp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxhook"));
        command.envs(env.iter().copied());
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .current_dir(cwd)
            .env("MXHOOK_SMTP__LISTEN", smtp.to_string())
            .env("MXHOOK_HTTP__LISTEN", http.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mxhook");
        let process = Self { child, smtp, http };
        let client = reqwest::Client::new();
        eventually("the binary to answer /healthz", || {
            let client = client.clone();
            async move {
                let response = client
                    .get(format!("http://{http}/healthz"))
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await;
        process
    }

    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn runs_on_embedded_defaults_with_data_under_the_working_directory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let process = Process::start(cwd.path(), None, free_addr(), free_addr()).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    assert_eq!(client.greeting.0, 220);
    client.expect("EHLO defaults.test", 250).await;
    client.expect("MAIL FROM:<a@sender.example>", 250).await;
    // No inbox is configured, so nothing is accepted: never an open relay by default.
    client.expect("RCPT TO:<anyone@example.com>", 550).await;
    assert!(
        cwd.path().join("data/mxhook.db").exists(),
        "SQLite database not under ./data"
    );
    process.kill_9();
}

#[test]
fn a_broken_config_fails_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nretry_base_s = \"soon\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run mxhook");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("delivery.retry_base_s"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .arg("check-config")
        .env("MXHOOK_SMTP__LISTEN", "not-an-address")
        .output()
        .expect("run mxhook");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("smtp.listen"), "{stderr}");
}

/// Accepted mail survives `kill -9` at two moments: while its delivery is pending (the receiver
/// is down) and while an attempt is in flight (the receiver hangs). Each restart delivers it.
#[tokio::test]
async fn kill_9_after_250_and_mid_delivery_then_restart_delivers_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver_addr = free_addr();
    let mut options = GatewayOptions::webhook(format!("http://{receiver_addr}/hook"));
    options.retry_base_s = 0.2;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());

    // 1. Receiver down: the message is accepted, its delivery stays pending, then SIGKILL.
    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    let message = simple_message(
        "k@sender.example",
        "agent@example.com",
        "survives kill",
        "body",
    );
    let (code, text) = client
        .send_message("k@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    process.kill_9();

    // 2. Receiver up but hanging on its first request: SIGKILL while the attempt is in flight.
    let listener = tokio::net::TcpListener::bind(receiver_addr)
        .await
        .expect("bind receiver");
    let mut receiver = WebhookReceiver::serve(listener, vec![Reply::Hang]);
    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let hung = receiver.recv().await;
    assert_eq!(hung.json()["subject"], "survives kill");
    process.kill_9();

    // 3. Restart: the job held by the dead process is released and delivered.
    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let delivered = receiver.recv().await;
    assert_eq!(delivered.json()["event_id"], hung.json()["event_id"]);
    let client = reqwest::Client::new();
    eventually("the delivery to be recorded as delivered", || {
        let client = client.clone();
        async move {
            let body: serde_json::Value = client
                .get(format!(
                    "http://{}/v1/deliveries?status=delivered",
                    process.http
                ))
                .bearer_auth(API_KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["deliveries"].as_array()?.len() == 1).then_some(())
        }
    })
    .await;
    receiver.assert_silent(Duration::from_millis(500)).await;
    process.kill_9();
}

#[tokio::test]
async fn kill_9_in_the_middle_of_data_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    let options = GatewayOptions::webhook(receiver.url());
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<k@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client
        .send_raw(b"Subject: cut short\r\n\r\nhalf of the body\r\n")
        .await;
    process.kill_9();

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    receiver.assert_silent(Duration::from_millis(800)).await;
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/deliveries?status=pending",
            process.http
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("API request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["deliveries"], serde_json::json!([]));
    process.kill_9();
}

/// Thousands of messages from concurrent retrying senders while the binary is SIGKILLed and
/// restarted several times: every message that got a `250` is delivered (at least once).
#[tokio::test]
async fn under_load_with_repeated_kill_9_no_accepted_message_is_lost() {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    const MESSAGES: usize = 2000;
    const SENDERS: usize = 8;
    const KILL_AFTER: [usize; 4] = [300, 700, 1100, 1500];

    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let config_path = dir.path().join("mxhook.toml");
    let mut options = GatewayOptions::webhook(receiver.url());
    options.retry_base_s = 0.2;
    // One sender sends all the load; the default per-sender rate limit would refuse most of it.
    options.extra_toml = "[rate_limit]\nsender_soft = 1000000\nsender_hard = 1000000\n\
                          domain_soft = 1000000\ndomain_hard = 1000000\n\
                          inbox_soft = 1000000\ninbox_hard = 1000000\n"
        .to_owned();
    // Each send is a new connection (as from many MTAs); the greeting pause would dominate.
    options.smtp_toml = "greet_pause_s = 0".to_owned();
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let accepted = Arc::clone(&accepted);
        senders.spawn(async move {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(smtp.port())
                .timeout(Some(Duration::from_secs(10)))
                .build();
            let mut sent = Vec::new();
            for n in (sender..MESSAGES).step_by(SENDERS) {
                let subject = format!("load-{n}");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                // An MTA's retry loop: a 4xx, a reset or a refused connection means try again.
                loop {
                    let email = lettre::Message::builder()
                        .from("load@sender.example".parse().expect("from"))
                        .to("agent@example.com".parse().expect("to"))
                        .subject(subject.clone())
                        .body(format!("message {n}\r\n"))
                        .expect("message");
                    match transport.send(email).await {
                        Ok(response) if response.is_positive() => break,
                        _ => {
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "{subject} never accepted"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                sent.push(subject);
            }
            sent
        });
    }

    let mut process = process;
    for threshold in KILL_AFTER {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while accepted.load(Ordering::SeqCst) < threshold {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {threshold} messages accepted",
                accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process.kill_9();
        process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    }

    let mut accepted_subjects = HashSet::new();
    while let Some(sent) = senders.join_next().await {
        accepted_subjects.extend(sent.expect("sender task"));
    }
    assert_eq!(accepted_subjects.len(), MESSAGES);

    let mut delivered = HashSet::new();
    while !accepted_subjects.is_subset(&delivered) {
        let event = receiver.recv().await.json();
        if let Some(subject) = event["subject"].as_str() {
            delivered.insert(subject.to_owned());
        }
    }
    process.kill_9();
}

/// `storage.backend = "s3"` in the real binary with no keys in the config: the default AWS
/// credential chain finds them in the environment, and S3 rejects a wrong one.
#[tokio::test]
async fn s3_backend_in_the_binary_takes_credentials_from_the_default_chain() {
    use crate::support::s3::{ACCESS_KEY, SECRET_KEY, TestS3};

    let s3 = TestS3::start().await;
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("mxhook.toml");
    let storage: String = s3
        .storage_toml(10.0)
        .lines()
        .filter(|line| !line.starts_with("access_key_id") && !line.starts_with("secret_access_key"))
        .map(|line| format!("{line}\n"))
        .collect();
    let toml = config_toml(dir.path(), &GatewayOptions::webhook(receiver.url())).replacen(
        "bucket = \"test-bucket\"\n",
        &storage,
        1,
    );
    std::fs::write(&config_path, toml).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let home = dir.path().to_string_lossy().into_owned();
    let chain_env = |secret: &'static str| {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", secret),
            // Nothing from the machine's own ~/.aws, and no instance-metadata probing.
            ("HOME", home.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    };
    let message = simple_message("c@sender.example", "agent@example.com", "chain", "body");

    let env = chain_env("not-the-secret");
    let process = Process::start_with_env(dir.path(), Some(&config_path), smtp, http, &env).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    let (code, text) = client
        .send_message("c@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 451, "a wrong secret must not store anything: {text}");
    process.kill_9();

    let env = chain_env(SECRET_KEY);
    let process = Process::start_with_env(dir.path(), Some(&config_path), smtp, http, &env).await;
    let mut client = SmtpClient::connect(process.smtp).await;
    let (code, text) = client
        .send_message("c@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    let key = event["s3_key"].as_str().expect("s3_key");
    let stored = std::fs::read(s3.object_path(key)).expect("object in the bucket");
    assert!(
        stored == message,
        "stored object differs from the bytes sent"
    );
    process.kill_9();
}
