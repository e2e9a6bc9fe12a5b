//! The real `mxhook` binary as a process: embedded defaults, config errors at startup,
//! `kill -9` at the worst moments followed by a restart, and a clean stop by SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::gateway::{API_KEY, config_toml};
use crate::support::process::{Process, free_addr};
use crate::support::{
    GatewayOptions, Reply, SmtpClient, WebhookReceiver, api_at, eventually, simple_message,
};

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

/// One TCP socket of this machine as `/proc/net/tcp` shows it.
struct SocketState {
    state: u8,
    tx_queue: u64,
    rx_queue: u64,
}

/// The socket whose local end is on `local_port` and remote end on `remote_port`, if any.
fn tcp_socket(local_port: u16, remote_port: u16) -> Option<SocketState> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|port| u16::from_str_radix(port, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, queues) = (fields[1], fields[2], fields[3], fields[4]);
        if port_of(local)? != local_port || port_of(remote)? != remote_port {
            return None;
        }
        let (tx, rx) = queues.split_once(':')?;
        Some(SocketState {
            state: u8::from_str_radix(state, 16).ok()?,
            tx_queue: u64::from_str_radix(tx, 16).ok()?,
            rx_queue: u64::from_str_radix(rx, 16).ok()?,
        })
    })
}

/// Waits until the server has read everything `client` sent it: nothing unacknowledged on the
/// client's side and nothing unread in the server socket's receive queue, so the bytes are in
/// the server process's memory.
async fn until_server_read_everything(client: SocketAddr, server: SocketAddr) {
    eventually("the server to read what the client sent", || async {
        let sent = tcp_socket(client.port(), server.port())?;
        let received = tcp_socket(server.port(), client.port())?;
        (sent.tx_queue == 0 && received.rx_queue == 0).then_some(())
    })
    .await;
}

/// Waits until the server closed its end of the connection from `client`: its socket is gone
/// or past `CLOSE_WAIT` (the state in which the server has not yet noticed the client's close).
async fn until_server_closed(client: SocketAddr, server: SocketAddr) {
    const ESTABLISHED: u8 = 0x01;
    const CLOSE_WAIT: u8 = 0x08;
    eventually("the server to close the connection", || async {
        match tcp_socket(server.port(), client.port()) {
            Some(socket) if [ESTABLISHED, CLOSE_WAIT].contains(&socket.state) => None,
            _ => Some(()),
        }
    })
    .await;
}

/// A connection to `server` in the middle of DATA: the envelope accepted, `354` answered and
/// part of a body sent and read by the server. Returns the stream and its local address.
async fn halfway_through_data(server: SocketAddr) -> (tokio::net::TcpStream, SocketAddr) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .expect("connect to SMTP");
    let local = stream.local_addr().expect("local addr");
    {
        let (read, mut write) = stream.split();
        let mut read = tokio::io::BufReader::new(read);
        let mut expect = async |line: Option<&str>, code: &str| {
            if let Some(line) = line {
                write
                    .write_all(format!("{line}\r\n").as_bytes())
                    .await
                    .expect("write");
            }
            loop {
                let mut reply = String::new();
                read.read_line(&mut reply).await.expect("read reply");
                assert!(reply.starts_with(code), "{line:?} answered {reply:?}");
                if reply.as_bytes().get(3) == Some(&b' ') {
                    break;
                }
            }
        };
        expect(None, "220").await;
        expect(Some("EHLO client.test"), "250").await;
        expect(Some("MAIL FROM:<k@sender.example>"), "250").await;
        expect(Some("RCPT TO:<agent@example.com>"), "250").await;
        expect(Some("DATA"), "354").await;
        write
            .write_all(b"Subject: cut short\r\n\r\nhalf of the body\r\n")
            .await
            .expect("write part of the body");
    }
    until_server_read_everything(local, server).await;
    (stream, local)
}

/// Asserts that nothing of a message is anywhere: no message for the inbox, no delivery job,
/// no `.eml` and no temporary file under the store.
async fn assert_nothing_stored(http: SocketAddr, store: &Path) {
    let client = reqwest::Client::new();
    for (path, list) in [
        ("/v1/inboxes/agent/messages", "messages"),
        ("/v1/deliveries", "deliveries"),
    ] {
        let body: serde_json::Value = client
            .get(format!("http://{http}{path}"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("API request")
            .json()
            .await
            .expect("JSON");
        assert_eq!(body[list], serde_json::json!([]), "{path}: {body}");
    }
    let left = crate::support::files_ending_with(store, &[".eml", ".tmp"]);
    assert!(left.is_empty(), "left under the store: {left:?}");
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
    let (_stream, _) = halfway_through_data(process.smtp).await;
    process.kill_9();

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    receiver.assert_silent(Duration::from_millis(800)).await;
    assert_nothing_stored(process.http, &dir.path().join("mail")).await;
    process.kill_9();
}

#[tokio::test]
async fn a_client_gone_in_the_middle_of_data_leaves_nothing() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let gateway = crate::support::TestGateway::start(GatewayOptions::webhook(receiver.url())).await;

    let (stream, local) = halfway_through_data(gateway.smtp).await;
    drop(stream);
    until_server_closed(local, gateway.smtp).await;

    receiver.assert_silent(Duration::from_millis(500)).await;
    assert_nothing_stored(gateway.http, &gateway.dir.path().join("mail")).await;
    gateway.stop().await;
}

/// The reply lines the server sends on `stream` until it closes the connection.
async fn lines_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(crate::support::SOON, reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("the server never closed; replies so far: {lines:?}"));
        match read {
            Ok(0) | Err(_) => return lines,
            Ok(_) => lines.push(line.trim_end().to_owned()),
        }
    }
}

/// SIGTERM as a service manager sends it, with one delivery attempt in flight, one job handed
/// over but not started and one message in the middle of DATA: an idle session is told
/// `421 4.3.2` and closed, a new connection gets `421 4.3.2` instead of a greeting, the message
/// in DATA finishes with `250`, the attempt finishes, and the process exits 0 by itself. After
/// a restart every message that got a `250` has been delivered, each exactly once.
#[tokio::test]
async fn sigterm_lets_the_message_in_data_finish_refuses_new_sessions_and_loses_nothing() {
    use tokio::io::AsyncWriteExt as _;

    let dir = tempfile::tempdir().expect("tempdir");
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut receiver = WebhookReceiver::start(vec![Reply::Wait(gate.clone())]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = "greet_pause_s = 0".to_owned();
    // One worker: while the first attempt waits at the receiver, the second message's job
    // stays handed over in memory, not started.
    options.delivery_toml = "workers = 1".to_owned();
    // Longer than the test: a job the stopped process left leased (the unstarted one, whose
    // lease a clean shutdown gives back, README) would not be delivered again in time.
    options.lease_s = 60;
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let mut process = Process::start(dir.path(), Some(&config_path), smtp, http).await;

    let mut received = Vec::new();
    let mut client = SmtpClient::connect(process.smtp).await;
    for subject in ["in flight", "handed over"] {
        let message = simple_message("k@sender.example", "agent@example.com", subject, "body");
        let (code, text) = client
            .send_message("k@sender.example", &["agent@example.com"], &message)
            .await;
        assert_eq!(code, 250, "{subject}: {text}");
        client.expect("RSET", 250).await;
        if subject == "in flight" {
            received.push(receiver.recv().await.json());
            assert_eq!(received[0]["subject"], subject);
        }
    }
    client.expect("QUIT", 221).await;
    let mut idle = SmtpClient::connect(process.smtp).await;
    idle.expect("EHLO idle.test", 250).await;
    let (mut in_data, _) = halfway_through_data(process.smtp).await;

    process.terminate();
    // The idle session hears of the shutdown: the signal has been taken.
    let (code, text) = idle.read_reply().await;
    assert!(code == 421 && text.starts_with("4.3.2"), "{code} {text}");
    assert!(idle.is_closed().await, "the idle session was left open");
    // While the session in DATA drains, a new connection is answered, with 421 4.3.2.
    let mut late = SmtpClient::connect(process.smtp).await;
    let (code, text) = &late.greeting;
    assert!(*code == 421 && text.starts_with("4.3.2"), "{code} {text}");
    assert!(late.is_closed().await, "the late connection was left open");

    in_data
        .write_all(b"and the other half\r\n.\r\n")
        .await
        .expect("finish the body");
    let replies = lines_until_closed(&mut in_data).await;
    assert!(
        replies.len() == 2 && replies[0].starts_with("250 ") && replies[1].starts_with("421 4.3.2"),
        "the message in DATA: {replies:?}"
    );
    // With no session left the SMTP port closes (README); the process goes on waiting for the
    // attempt in flight, which gets its answer only now.
    eventually("the SMTP port to close", || async {
        tokio::net::TcpStream::connect(smtp)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(process.is_running(), "exited with an attempt in flight");
    gate.notify_one();
    // app::SHUTDOWN_DEADLINE is 30 s: a drain that only ends when it passes fails here.
    let status = process.exited_within(crate::support::SOON).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    for _ in 0..2 {
        received.push(receiver.recv().await.json());
    }
    let mut subjects: Vec<&str> = received[1..]
        .iter()
        .map(|event| event["subject"].as_str().expect("subject"))
        .collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["cut short", "handed over"]);
    let delivered = eventually("the three deliveries recorded as delivered", || async {
        let (_, body) = api_at(http, API_KEY, "GET", "/v1/deliveries", None).await;
        let list = body["deliveries"].as_array()?.clone();
        (list.len() == 3
            && list
                .iter()
                .all(|delivery| delivery["status"] == "delivered"))
        .then_some(list)
    })
    .await;
    // Each exactly once: one attempt each, the one in flight at SIGTERM included, and no
    // request beyond the three.
    for delivery in &delivered {
        assert_eq!(delivery["attempts"], 1, "{delivery}");
    }
    receiver.assert_silent(Duration::from_millis(300)).await;
    let event_ids = |events: &[serde_json::Value]| {
        let mut ids: Vec<String> = events
            .iter()
            .map(|event| event["event_id"].as_str().expect("event_id").to_owned())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(event_ids(&received), event_ids(&delivered));
    process.kill_9();
}

/// A smarthost address that first accepts connections and never answers (a forward hangs), and
/// once [`HangingThenRelaying::relay`] is called passes new connections on to `target`.
struct HangingThenRelaying {
    addr: SocketAddr,
    relaying: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: tokio::sync::mpsc::UnboundedReceiver<()>,
    _task: tokio::task::JoinHandle<()>,
}

impl HangingThenRelaying {
    async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smarthost");
        let addr = listener.local_addr().expect("addr");
        let relaying = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, held) = tokio::sync::mpsc::unbounded_channel();
        let relay = std::sync::Arc::clone(&relaying);
        let task = tokio::spawn(async move {
            let mut hung = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if relay.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                        }
                    });
                } else {
                    hung.push(socket);
                    let _ = tx.send(());
                }
            }
        });
        Self {
            addr,
            relaying,
            held,
            _task: task,
        }
    }

    async fn until_one_hangs(&mut self) {
        tokio::time::timeout(crate::support::SOON, self.held.recv())
            .await
            .expect("timed out waiting for a forward to connect")
            .expect("smarthost task ended");
    }

    fn relay(&self) {
        self.relaying
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `kill -9` while an inbox webhook, a notification rule's webhook and a rule's email forward
/// of one message all hang: after the restart each of the three is delivered.
#[tokio::test]
async fn kill_9_with_deliveries_in_flight_on_every_channel_then_restart_delivers_each() {
    let mut inbox_hook = WebhookReceiver::start(vec![Reply::Hang]).await;
    let mut rule_hook = WebhookReceiver::start(vec![Reply::Hang]).await;
    let aiosmtpd = crate::support::smarthost::Aiosmtpd::start().await;
    let mut smarthost = HangingThenRelaying::start(aiosmtpd.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.retry_base_s = 0.2;
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let api = reqwest::Client::new();

    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    let rules = serde_json::json!({"rules": [
        {"name": "everything", "channels": {
            "webhook": {"url": rule_hook.url()},
            "email": {"recipients": ["ops@elsewhere.example"]}}}
    ]});
    let response = api
        .put(format!("http://{http}/v1/inboxes/agent/notifications"))
        .bearer_auth(API_KEY)
        .json(&rules)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut client = SmtpClient::connect(process.smtp).await;
    let message = simple_message("k@sender.example", "agent@example.com", "in flight", "body");
    let (code, text) = client
        .send_message("k@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let to_inbox = inbox_hook.recv().await.json();
    let to_rule = rule_hook.recv().await.json();
    smarthost.until_one_hangs().await;
    process.kill_9();

    smarthost.relay();
    let process = Process::start(dir.path(), Some(&config_path), smtp, http).await;
    assert_eq!(
        inbox_hook.recv().await.json()["event_id"],
        to_inbox["event_id"]
    );
    assert_eq!(
        rule_hook.recv().await.json()["event_id"],
        to_rule["event_id"]
    );
    let forwards = eventually("the forward at the smarthost", || async {
        let all = aiosmtpd.delivered();
        (!all.is_empty()).then_some(all)
    })
    .await;
    let forward = mail_parser::MessageParser::default()
        .parse(&forwards[0])
        .expect("forward parses");
    assert_eq!(forward.subject(), Some("Fwd: in flight"));
    let delivered = eventually("all three deliveries recorded as delivered", || {
        let api = api.clone();
        async move {
            let body: serde_json::Value = api
                .get(format!("http://{http}/v1/deliveries?status=delivered"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let list = body["deliveries"].as_array()?.clone();
            (list.len() == 3).then_some(list)
        }
    })
    .await;
    let mut channels: Vec<&str> = delivered
        .iter()
        .filter_map(|delivery| delivery["channel"].as_str())
        .collect();
    channels.sort_unstable();
    assert_eq!(channels, ["email", "webhook", "webhook"]);
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
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_toml = Some(storage);
    let toml = config_toml(dir.path(), &options);
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

/// A port picked by `free_addr` can be taken by someone else before the binary binds it; the
/// start must then fail loudly, never take the other listener's answers for the gateway's.
#[tokio::test]
#[should_panic(expected = "exited before it answered")]
async fn a_start_whose_port_was_taken_fails_instead_of_trusting_another_listener() {
    let impostor = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = impostor.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = impostor.accept().await {
            use tokio::io::AsyncWriteExt as _;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    let cwd = tempfile::tempdir().expect("tempdir");
    Process::start(cwd.path(), None, free_addr(), http).await;
}
