//! Content safety end to end (SPEC "Content safety"): real bounces and auto-replies from
//! `fixtures/bounces/` typed and parsed in the event and routed by `traffic_types`; forwards of
//! them that nobody can answer back; and spam scoring by a real rspamd (Debian's, started here on
//! a loopback port with a config of its own and no Redis): GTUBE and a clean message, the inbox
//! spam actions, and `temperror` with the mail delivered when rspamd is gone or slow.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::smarthost::Aiosmtpd;
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually, fixture, simple_message,
};

/// Sends `raw` from `from` (empty: the null sender) to `to` and asserts the reply code.
async fn send(gateway: &TestGateway, from: &str, to: &[&str], raw: &[u8], code: u16) -> String {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (got, text) = client.send_message(from, to, raw).await;
    assert_eq!(got, code, "{text}");
    text
}

/// Asserts that `event` matches the `MailReceivedEvent` schema of the gateway's OpenAPI document.
async fn documented(gateway: &TestGateway, event: &Value) {
    let (status, document) = gateway.api("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let schema = json!({"$ref": "#/components/schemas/MailReceivedEvent"});
    let found = crate::openapi::check_against_schema(&document, &schema, event);
    assert!(found.errors.is_empty(), "{:?}\n{event}", found.errors);
}

fn types(event: &Value) -> Vec<&str> {
    event["traffic_types"]
        .as_array()
        .expect("traffic_types")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
async fn bounces_and_auto_replies_are_typed_parsed_and_routed() {
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut bounces_only = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(inbox_hook.url())).await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(
                json!([{"name": "bounces", "filters": {"traffic_types": ["bounce"]},
                "channels": {"webhook": {"url": bounces_only.url()}}}]),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Postfix's report, from the null sender as every bounce comes.
    send(
        &gateway,
        "",
        &["agent@example.com"],
        &fixture("bounces/postfix.eml"),
        250,
    )
    .await;
    let event = inbox_hook.recv().await.json();
    assert_eq!(types(&event), ["automated", "bounce"], "{event}");
    assert_eq!(
        event["bounce"],
        json!({"original_message_id": "1761564505.xxxx@xxxx.com", "recipients": [{
            "address": "xxxx@xxxx.com", "action": "failed", "status": "5.1.0",
            "diagnostic": "550-5.1.0 MXIN506 MailFrom domain is listed in Spamhaus. To request removal from this list see https: 550 5.1.0 //www.spamhaus.org/query/lookup/ ;id=DLOkvMxsVeZooDLOkv7hl0;sid=DLOkvMxsVeZoo;mta=mx12-prd-nl1-vmo;d=20251027;t=122826[CET];ipsrc=#.#.#.#;"
        }]})
    );
    let routed = bounces_only.recv().await.json();
    assert_eq!(routed["event_id"], event["event_id"]);
    documented(&gateway, &event).await;
    let mut ui = crate::ui::Ui::new(&gateway);
    ui.login(crate::support::gateway::API_KEY).await;
    let page = ui
        .get(&format!(
            "/ui/messages/{}",
            event["message_id"].as_str().expect("id")
        ))
        .await;
    assert!(
        page.body.contains("xxxx@xxxx.com: failed 5.1.0"),
        "{}",
        page.body
    );

    // qmail's notice has no report part: read from its text, from the null sender only.
    send(
        &gateway,
        "",
        &["agent@example.com"],
        &fixture("bounces/qmail.eml"),
        250,
    )
    .await;
    let event = inbox_hook.recv().await.json();
    assert!(types(&event).contains(&"bounce"), "{event}");
    assert_eq!(
        event["bounce"]["original_message_id"],
        "20240624084801.44371.qmail@nq.example.jp"
    );
    assert_eq!(event["bounce"]["recipients"][0]["status"], "5.4.4");
    bounces_only.recv().await;
    // The same text sent by a person (quoted, forwarded) is no bounce.
    send(
        &gateway,
        "kijitora@nq.example.jp",
        &["agent@example.com"],
        &fixture("bounces/qmail.eml"),
        250,
    )
    .await;
    let event = inbox_hook.recv().await.json();
    assert!(!types(&event).contains(&"bounce"), "{event}");
    assert!(event.get("bounce").is_none(), "{event}");

    // Out-of-office replies: RFC 3834's header, and Exchange's, which has none of it.
    for (from, file) in [
        ("nyaan@neko.example.org", "bounces/autoreply_rfc3834.eml"),
        ("", "bounces/autoreply_exchange_oof.eml"),
        (
            "kijitora@apple.example.com",
            "bounces/autoreply_icloud_vacation.eml",
        ),
    ] {
        send(&gateway, from, &["agent@example.com"], &fixture(file), 250).await;
        let event = inbox_hook.recv().await.json();
        assert_eq!(
            types(&event),
            ["automated", "auto_reply"],
            "{file}: {event}"
        );
        assert!(event.get("bounce").is_none(), "{event}");
    }
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &simple_message("ann@sender.example", "agent@example.com", "hi", "hello"),
        250,
    )
    .await;
    let event = inbox_hook.recv().await.json();
    assert_eq!(types(&event), ["human"]);
    bounces_only.assert_silent(Duration::from_millis(300)).await;
    gateway.stop().await;
}

#[tokio::test]
async fn forwards_of_bounces_and_auto_replies_cannot_be_answered_back() {
    let smarthost = Aiosmtpd::start().await;
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = format!("[forward]\nsmarthost = \"smtp://{}\"\n", smarthost.addr);
    let gateway = TestGateway::start(options).await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(json!([{"name": "to ops",
                "channels": {"email": {"recipients": ["ops@elsewhere.example"]}}}])),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    send(
        &gateway,
        "",
        &["agent@example.com"],
        &fixture("bounces/autoreply_exchange_oof.eml"),
        250,
    )
    .await;
    send(
        &gateway,
        "",
        &["agent@example.com"],
        &fixture("bounces/exim_text.eml"),
        250,
    )
    .await;
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &simple_message(
            "ann@sender.example",
            "agent@example.com",
            "a question",
            "hi",
        ),
        250,
    )
    .await;
    let delivered = eventually("three forwards at the smarthost", || async {
        let all = smarthost.delivered_with_senders();
        (all.len() == 3).then_some(all)
    })
    .await;
    for (sender, raw) in delivered {
        let message = mail_parser::MessageParser::default()
            .parse(&raw)
            .expect("a forward");
        let subject = message.subject().unwrap_or_default().to_owned();
        let reply_to = message
            .reply_to()
            .and_then(|list| list.first())
            .and_then(|address| address.address())
            .map(str::to_owned);
        assert_eq!(
            message.header("Auto-Submitted").and_then(|v| v.as_text()),
            Some("auto-forwarded")
        );
        if subject == "Fwd: a question" {
            assert_eq!(sender, "mxhook@mx.test.example");
            assert_eq!(reply_to.as_deref(), Some("ann@sender.example"));
        } else {
            // The auto-reply and the bounce: nothing to answer to, neither the envelope nor a
            // Reply-To, so no responder at the recipient can start a loop.
            assert!(
                subject.starts_with("Fwd: Automatic reply") || subject.contains("delivery failed"),
                "{subject}"
            );
            assert_eq!(sender, "<>", "{subject}: the null sender");
            assert_eq!(reply_to, None, "{subject}");
        }
    }
    gateway.stop().await;
}

/// A real rspamd (Debian's package) on a loopback port, with the packaged rules, no Redis, no
/// DNS (a dead nameserver, short timeouts) and the `http_headers` module on, so the gateway's
/// authentication results are used.
struct Rspamd {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // The compiled expression cache is kept between runs: compiling it takes rspamd most of
        // a minute, loading it a second.
        let cache: PathBuf = std::env::temp_dir().join("mxhook-test-rspamd-cache");
        std::fs::create_dir_all(&cache).expect("cache dir");
        std::fs::create_dir_all(dir.path().join("local.d")).expect("local.d");
        std::fs::write(
            dir.path().join("local.d/http_headers.conf"),
            "enabled = true;\n",
        )
        .expect("http_headers.conf");
        let conf = dir.path().join("rspamd.conf");
        std::fs::write(
            &conf,
            format!(
                r#".include "$CONFDIR/common.conf"
options {{
    pidfile = "{run}/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "console"; level = "error"; }}
worker "normal" {{
    bind_socket = "{addr}";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}}
"#,
                run = dir.path().display(),
            ),
        )
        .expect("rspamd.conf");
        let child = Command::new("rspamd")
            .args(["-f", "-u", "root", "-g", "root", "-c"])
            .arg(&conf)
            .arg("--var")
            .arg(format!("LOCAL_CONFDIR={}", dir.path().display()))
            .arg("--var")
            .arg(format!("RUNDIR={}", dir.path().display()))
            .arg("--var")
            .arg(format!("DBDIR={}", cache.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rspamd is installed (scripts/test installs it)");
        let rspamd = Self {
            child: Some(child),
            addr,
            _dir: dir,
        };
        let ping = format!("http://{addr}/ping");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let answer = reqwest::get(&ping).await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rspamd did not answer /ping"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rspamd
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM, so the main process takes its workers down with it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            if tokio::task::block_in_place(|| {
                for _ in 0..100 {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            }) {
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// The GTUBE test string: rspamd gives it the action `reject`.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_scores_every_message_and_the_inbox_policy_acts_on_it() {
    let mut rspamd = Rspamd::start().await;
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut spam_rule = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.extra_toml = format!(
        "[spam]\nrspamd_url = \"{}\"\ntimeout_s = 10\n",
        rspamd.url()
    );
    options.other_toml = "spam_action = \"quarantine\"\n".to_owned();
    let gateway = TestGateway::start(options).await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/agent/notifications",
            Some(
                json!([{"name": "spam", "filters": {"spam_actions": ["reject"]},
                "channels": {"webhook": {"url": spam_rule.url()}}}]),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A clean message: scored, not spam, delivered.
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &simple_message(
            "ann@sender.example",
            "agent@example.com",
            "lunch",
            "Shall we meet at noon?",
        ),
        250,
    )
    .await;
    let clean = inbox_hook.recv().await.json();
    let spam = &clean["spam"];
    assert_ne!(spam["action"], "reject", "{spam}");
    assert_ne!(spam["action"], "temperror", "{spam}");
    let score = spam["score"].as_f64().expect("score");
    let required = spam["required_score"].as_f64().expect("required_score");
    assert!(score < required, "{spam}");
    assert!(
        spam["symbols"]
            .as_array()
            .is_some_and(|symbols| symbols.iter().any(|s| s == "MIME_GOOD")),
        "{spam}"
    );

    // GTUBE: rspamd says reject; the agent inbox tags it (the default) and a rule routes on it.
    let gtube = simple_message("ann@sender.example", "agent@example.com", "offer", GTUBE);
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &gtube,
        250,
    )
    .await;
    let tagged = inbox_hook.recv().await.json();
    assert_eq!(tagged["spam"]["action"], "reject", "{}", tagged["spam"]);
    assert!(
        tagged["spam"]["symbols"]
            .as_array()
            .is_some_and(|symbols| symbols.iter().any(|s| s == "GTUBE")),
        "{}",
        tagged["spam"]
    );
    assert_eq!(tagged["quarantined"], false);
    let routed = spam_rule.recv().await.json();
    assert_eq!(routed["event_id"], tagged["event_id"]);
    documented(&gateway, &tagged).await;
    // The dashboard's message page shows the verdict.
    let mut ui = crate::ui::Ui::new(&gateway);
    ui.login(crate::support::gateway::API_KEY).await;
    let page = ui
        .get(&format!(
            "/ui/messages/{}",
            tagged["message_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"spam-verdict\""), "{}", page.body);
    assert!(
        page.body.contains(">reject</span> score 15"),
        "{}",
        page.body
    );
    assert!(page.body.contains("GTUBE"), "{}", page.body);

    // The other inbox quarantines spam: stored, not delivered.
    let to_other = simple_message("ann@sender.example", "other@example.com", "offer", GTUBE);
    send(
        &gateway,
        "ann@sender.example",
        &["other@example.com"],
        &to_other,
        250,
    )
    .await;
    let held = eventually("the quarantined copy", || async {
        gateway
            .messages("other")
            .await
            .into_iter()
            .find(|message| message["quarantined"] == true)
    })
    .await;
    assert_eq!(held["subject"], "offer", "{held}");

    // Reject: refused at the end of DATA when every inbox rejects; held where another accepts.
    let (status, body) = gateway
        .api(
            "PATCH",
            "/v1/inboxes/agent",
            Some(json!({"spam_action": "reject", "spam_score_threshold": 12.5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["spam_action"], &body["spam_score_threshold"]),
        (&json!("reject"), &json!(12.5))
    );
    let text = send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &gtube,
        550,
    )
    .await;
    assert!(text.contains("5.7.1") && text.contains("spam"), "{text}");
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com", "other@example.com"],
        &simple_message("ann@sender.example", "agent@example.com", "both", GTUBE),
        250,
    )
    .await;
    let agent_copy = eventually("the agent copy held", || async {
        gateway
            .messages("agent")
            .await
            .into_iter()
            .find(|message| message["subject"] == "both")
    })
    .await;
    assert_eq!(agent_copy["quarantined"], true, "{agent_copy}");
    inbox_hook.assert_silent(Duration::from_millis(300)).await;

    // rspamd gone: the verdict is temperror and the mail is delivered all the same.
    rspamd.stop();
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &simple_message("ann@sender.example", "agent@example.com", "later", GTUBE),
        250,
    )
    .await;
    let unscored = inbox_hook.recv().await.json();
    assert_eq!(unscored["spam"], json!({"action": "temperror"}));
    assert_eq!(unscored["quarantined"], false);
    documented(&gateway, &unscored).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_slow_rspamd_is_a_temperror_within_the_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut inbox_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(inbox_hook.url());
    options.extra_toml = format!("[spam]\nrspamd_url = \"http://{addr}\"\ntimeout_s = 0.5\n");
    let gateway = TestGateway::start(options).await;
    let started = std::time::Instant::now();
    send(
        &gateway,
        "ann@sender.example",
        &["agent@example.com"],
        &simple_message("ann@sender.example", "agent@example.com", "hi", "hello"),
        250,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let event = inbox_hook.recv().await.json();
    assert_eq!(event["spam"], json!({"action": "temperror"}));
    hold.abort();
    gateway.stop().await;
}
