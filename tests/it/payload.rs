//! The event builder over real and hostile mail: every message of two public corpora and a set
//! of generated attacks go through parse and event building without a panic and give a valid
//! event; and a golden snapshot of the event of every fixture in `fixtures/eml/`.

use std::path::{Path, PathBuf};

use mxhook::event::{self, Email, Event, EventContext};
use mxhook::model::PayloadFormat;
use mxhook::model::{Envelope, Recipient};
use mxhook::prompt::Templates;
use mxhook::thread::Thread;
use serde_json::Value;

const BOTMAILROOM_FIELDS: &[&str] = &[
    "id",
    "inbox_id",
    "from_address",
    "to_addresses",
    "cc_addresses",
    "bcc_addresses",
    "reply_to_addresses",
    "subject",
    "date",
    "plain_text",
    "html",
    "alternative_content",
    "message_id",
    "in_reply_to_id",
    "references",
    "previous_emails",
    "attachments",
    "prompt",
    "thread_prompt",
    "timestamp",
];

/// The event of `raw` with a fixed context, so the result depends on the bytes alone.
fn build(raw: &[u8], thread: &Thread, max_payload_bytes: usize) -> Value {
    let envelope = Envelope {
        remote_ip: Some("192.0.2.1".parse().expect("ip")),
        helo: "client.example".to_owned(),
        mail_from: Some("sender@client.example".to_owned()),
        recipients: vec![Recipient {
            address: "agent@example.com".to_owned(),
            as_sent: "agent@example.com".to_owned(),
            inbox_id: "agent".to_owned(),
        }],
        smtputf8: false,
        tls: None,
    };
    let parsed = mxhook::parse::parse(raw);
    let event = event::build(
        &EventContext {
            event_id: "evt_fixed",
            message_id: "msg_fixed",
            agent_id: "agent",
            received_at_ms: 1_776_340_800_000,
            envelope: &envelope,
            inbox_recipients: &["agent@example.com".to_owned()],
            s3_bucket: "mxhook",
            s3_key: "inbound/agent/msg_fixed.eml",
            size: raw.len(),
            max_payload_bytes,
            thread,
            templates: &Templates::default(),
            direction: mxhook::model::Direction::Inbound,
        },
        &parsed,
    );
    serde_json::to_value(event).expect("an event is JSON")
}

/// The BotMailRoom payload of `event`, as an endpoint with `payload = "botmailroom"` receives it.
fn botmailroom_of(event: &Value) -> Value {
    let event = Event::from_json(&event.to_string()).expect("an event");
    serde_json::to_value(event::payload_for(&event, PayloadFormat::Botmailroom))
        .expect("a payload is JSON")
}

/// An email object as a thread's earlier email.
fn email(value: Value) -> Email {
    serde_json::from_value(value).expect("an email")
}

/// What every event must satisfy, whatever the input.
#[track_caller]
fn check_valid(name: &str, event: &Value, max_payload_bytes: usize) {
    assert_eq!(event["type"], "mail.received", "{name}");
    let email = &event["email"];
    for field in BOTMAILROOM_FIELDS {
        assert!(email.get(*field).is_some(), "{name}: email.{field} missing");
    }
    assert!(email["from_address"]["address"].is_string(), "{name}");
    for list in [
        "to_addresses",
        "cc_addresses",
        "bcc_addresses",
        "reply_to_addresses",
        "attachments",
    ] {
        assert!(email[list].is_array(), "{name}: {list}");
    }
    assert!(
        chrono::DateTime::parse_from_rfc3339(email["date"].as_str().expect("date")).is_ok(),
        "{name}: date {}",
        email["date"]
    );
    let bytes = serde_json::to_vec(event).expect("serialize");
    if event.get("omitted_reason").is_none() {
        assert!(email["prompt"].is_string(), "{name}: prompt");
        assert!(email["thread_prompt"].is_string(), "{name}: thread_prompt");
    }
    assert!(
        bytes.len() <= max_payload_bytes || event.get("omitted_reason").is_some(),
        "{name}: {} bytes over the cap without omitted_reason",
        bytes.len()
    );
    let reparsed: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    assert_eq!(&reparsed, event, "{name}: JSON round trip");
    let botmailroom = botmailroom_of(event);
    let mut keys: Vec<&str> = botmailroom
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .filter(|key| *key != "omitted_reason")
        .collect();
    keys.sort_unstable();
    let mut expected = BOTMAILROOM_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{name}: botmailroom fields");
    check_botmailroom_types(
        name,
        &botmailroom,
        event.get("omitted_reason").is_some(),
        false,
    );
}

/// The JSON type of every BotMailRoom field, as a BotMailRoom handler reads it: a wrong type
/// breaks a typed handler as surely as a missing key.
#[track_caller]
fn check_botmailroom_types(name: &str, email: &Value, omitted: bool, nested: bool) {
    let string_or_null = |field: &str| {
        assert!(
            email[field].is_string() || email[field].is_null(),
            "{name}: {field} is {}",
            email[field]
        );
    };
    for field in ["id", "inbox_id", "subject", "date", "timestamp"] {
        assert!(
            email[field].is_string(),
            "{name}: {field} is {}",
            email[field]
        );
    }
    for field in ["plain_text", "html", "message_id", "in_reply_to_id"] {
        string_or_null(field);
    }
    // BotMailRoom's client types these as `str`, never null: a null fails its validation.
    for field in ["prompt", "thread_prompt"] {
        let text = email[field]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {field} is {}", email[field]));
        assert!(
            omitted || nested || !text.is_empty(),
            "{name}: {field} empty"
        );
    }
    assert!(email["alternative_content"].is_boolean(), "{name}");
    let address = |value: &Value, what: &str| {
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{name}: {what} is {value}"));
        assert!(object["address"].is_string(), "{name}: {what}: {value}");
        assert!(
            object["name"].is_string() || object["name"].is_null(),
            "{name}: {what}: {value}"
        );
        assert_eq!(object.len(), 2, "{name}: {what}: {value}");
    };
    address(&email["from_address"], "from_address");
    for list in [
        "to_addresses",
        "cc_addresses",
        "bcc_addresses",
        "reply_to_addresses",
    ] {
        let entries = email[list]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {list} is {}", email[list]));
        for entry in entries {
            address(entry, list);
        }
    }
    match &email["references"] {
        Value::Null => {}
        Value::Array(ids) => assert!(
            !ids.is_empty() && ids.iter().all(Value::is_string),
            "{name}: references {ids:?}"
        ),
        other => panic!("{name}: references is {other}"),
    }
    for attachment in email["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: attachments is {}", email["attachments"]))
    {
        let object = attachment.as_object().expect("attachment object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "content_encoding",
                "content_id",
                "content_type",
                "filename",
                "id",
                "size"
            ],
            "{name}: {attachment}"
        );
        for field in ["id", "filename", "content_type"] {
            assert!(object[field].is_string(), "{name}: {attachment}");
        }
        for field in ["content_encoding", "content_id"] {
            assert!(
                object[field].is_string() || object[field].is_null(),
                "{name}: {attachment}"
            );
        }
        assert!(object["size"].is_u64(), "{name}: {attachment}");
    }
    match &email["previous_emails"] {
        Value::Null => {}
        Value::Array(previous) => {
            assert!(!previous.is_empty(), "{name}: empty previous_emails");
            for earlier in previous {
                // Each earlier email is the same shape, without a thread of its own.
                assert!(earlier["previous_emails"].is_null(), "{name}: {earlier}");
                assert_eq!(earlier["thread_prompt"], "", "{name}: {earlier}");
                let mut keys: Vec<&str> = earlier
                    .as_object()
                    .expect("earlier email object")
                    .keys()
                    .map(String::as_str)
                    .collect();
                keys.sort_unstable();
                let mut expected = BOTMAILROOM_FIELDS.to_vec();
                expected.sort_unstable();
                assert_eq!(keys, expected, "{name}: earlier email fields");
                check_botmailroom_types(&format!("{name} (earlier email)"), earlier, true, true);
            }
        }
        other => panic!("{name}: previous_emails is {other}"),
    }
}

/// CPython's email test messages, from the Python installed here.
fn cpython_corpus() -> PathBuf {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import test, os; print(os.path.dirname(test.__file__))",
        ])
        .output()
        .expect("python3 runs (scripts/test requires it)");
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("test_email/data");
    assert!(
        dir.is_dir(),
        "CPython's test_email data not found at {} (python3 with its `test` package is needed)",
        dir.display()
    );
    dir
}

/// The mail-parser crate's own test messages, from the cargo registry this build used (the
/// version Cargo.lock pins, so an upgrade reads the new crate's messages).
fn mail_parser_corpus() -> PathBuf {
    let lock =
        std::fs::read_to_string(crate::support::repo_path("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|package| package.contains("name = \"mail-parser\""))
        .and_then(|package| {
            package
                .lines()
                .find_map(|line| line.strip_prefix("version = "))
        })
        .map(|version| version.trim_matches('"').to_owned())
        .expect("mail-parser in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry/src");
    let crate_dir = format!("mail-parser-{version}/resources/eml");
    let found = std::fs::read_dir(&registry)
        .unwrap_or_else(|err| panic!("reading {}: {err}", registry.display()))
        .filter_map(Result::ok)
        .map(|index| index.path().join(&crate_dir))
        .find(|dir| dir.is_dir());
    found.unwrap_or_else(|| panic!("{crate_dir} not found under {}", registry.display()))
}

/// SpamScope's mail-parser test messages (real, partly malformed mail, one Outlook `.msg`),
/// unpacked by scripts/test from the PyPI sdist it pins by hash.
fn spamscope_corpus() -> PathBuf {
    let cache = std::env::var_os("MXTEST_CORPUS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/mxhook-corpus"))
        })
        .expect("MXTEST_CORPUS_DIR or HOME");
    let dir = cache.join("mail_parser-4.8.0/tests/mails");
    assert!(
        dir.is_dir(),
        "SpamScope's corpus not found at {} (scripts/test fetches it)",
        dir.display()
    );
    dir
}

fn files(dir: &Path, accept: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            files(&path, accept, out);
        } else if accept(&path) {
            out.push(path);
        }
    }
}

#[test]
fn every_corpus_message_gives_a_valid_event_alone_and_in_a_thread() {
    let mut messages = Vec::new();
    let cpython = cpython_corpus();
    files(
        &cpython,
        &|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("msg_") && name.ends_with(".txt"))
        },
        &mut messages,
    );
    let from_cpython = messages.len();
    assert!(
        from_cpython >= 40,
        "only {from_cpython} CPython messages in {}",
        cpython.display()
    );
    let mail_parser = mail_parser_corpus();
    files(
        &mail_parser,
        &|path| path.extension().is_some_and(|ext| ext == "eml"),
        &mut messages,
    );
    assert!(
        messages.len() - from_cpython >= 100,
        "only {} mail-parser messages in {}",
        messages.len() - from_cpython,
        mail_parser.display()
    );
    let before_spamscope = messages.len();
    let spamscope = spamscope_corpus();
    files(&spamscope, &|_| true, &mut messages);
    assert!(
        messages.len() - before_spamscope >= 20,
        "only {} SpamScope messages in {}",
        messages.len() - before_spamscope,
        spamscope.display()
    );
    messages.sort();

    // Each message is built alone, then as the reply to the one before it, so the thread path
    // (previous_emails, thread_prompt) sees every shape too; and once under a tight cap.
    let mut previous: Option<Value> = None;
    for path in &messages {
        let name = path.display().to_string();
        let raw = std::fs::read(path).expect("read corpus message");
        let alone = build(&raw, &Thread::default(), 10 << 20);
        check_valid(&name, &alone, 10 << 20);
        let thread = Thread {
            thread_id: "thr_corpus".to_owned(),
            previous_emails: previous.take().into_iter().map(email).collect(),
            ..Thread::default()
        };
        let in_thread = build(&raw, &thread, 10 << 20);
        check_valid(&name, &in_thread, 10 << 20);
        assert_eq!(in_thread["thread_id"], "thr_corpus");
        let capped = build(&raw, &thread, 4096);
        check_valid(&format!("{name} (4 KiB cap)"), &capped, 4096);
        let mut email = alone["email"].clone();
        email["previous_emails"] = Value::Null;
        email["thread_prompt"] = Value::Null;
        previous = Some(email);
    }
}

/// Generated attacks on the parser and the renderers. Each must give a valid event on an
/// ordinary test thread (so within its default stack); none may panic.
#[test]
fn hostile_messages_give_valid_events() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let depth = 5_000;
    let mut deep = String::from("From: a@example.org\r\nSubject: deep\r\n");
    for level in 0..depth {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n"
        ));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
    for level in (0..depth).rev() {
        deep.push_str(&format!("--b{level}--\r\n"));
    }
    cases.push(("deep MIME nesting", deep.into_bytes()));

    let mut many = String::from(
        "From: a@example.org\r\nSubject: many\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n",
    );
    for part in 0..20_000 {
        many.push_str(&format!(
            "--x\r\nContent-Type: application/octet-stream; name=f{part}.bin\r\n\
             Content-Disposition: attachment; filename=f{part}.bin\r\n\r\ndata{part}\r\n"
        ));
    }
    many.push_str("--x--\r\n");
    cases.push(("20000 parts", many.into_bytes()));

    let long_header = format!(
        "From: a@example.org\r\nSubject: {}\r\nX-Long: {}\r\n\r\nbody\r\n",
        "s".repeat(1 << 20),
        "h ".repeat(1 << 20)
    );
    cases.push(("megabyte headers", long_header.into_bytes()));

    let mut header_flood = String::from("From: a@example.org\r\n");
    for idx in 0..100_000 {
        header_flood.push_str(&format!("X-H{idx}: v\r\n"));
    }
    header_flood.push_str("To: ");
    header_flood.push_str(&"x@example.org, ".repeat(50_000));
    header_flood.push_str("\r\nReferences: ");
    header_flood.push_str(&"<r@example.org> ".repeat(50_000));
    header_flood.push_str("\r\n\r\nbody\r\n");
    cases.push((
        "100000 headers, 50000 recipients and references",
        header_flood.into_bytes(),
    ));

    cases.push((
        "invalid charsets",
        b"From: =?x-unknown?B?////?= <a@example.org>\r\nSubject: =?utf-7?Q?+AGEAYgBj-?= =?koi8-r?B?\xff\xfe?=\r\n\
Content-Type: text/plain; charset=\"no-such-charset\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
!!!not base64!!!\xff\xfe\x00\r\n"
            .to_vec(),
    ));

    let html_bomb = format!(
        "From: a@example.org\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n{}{}{}",
        "<div><table><tr><td>".repeat(30_000),
        "<b><i><a href=x>".repeat(30_000),
        "<script>".repeat(10_000)
    );
    cases.push(("hostile HTML", html_bomb.into_bytes()));

    let quotes = format!(
        "From: a@example.org\r\nSubject: quotes\r\n\r\n{}{}",
        "On Mon, 1 Jan 2024, x@y wrote:\r\n".repeat(20_000),
        "> > > quoted\r\nFrom: x\r\n".repeat(20_000)
    );
    cases.push(("attribution flood", quotes.into_bytes()));

    // A fixed-seed xorshift: the same garbage every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut garbage = Vec::with_capacity(1 << 20);
    for _ in 0..(1 << 20) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        garbage.push((state >> 24) as u8);
    }
    cases.push(("binary garbage", garbage.clone()));
    let mut headed =
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"\"\r\n\r\n".to_vec();
    headed.extend_from_slice(&garbage);
    cases.push(("garbage under headers", headed));
    cases.push(("empty", Vec::new()));
    cases.push(("only CRLF", b"\r\n\r\n\r\n".to_vec()));

    for (name, raw) in &cases {
        let event = build(raw, &Thread::default(), 10 << 20);
        check_valid(name, &event, 10 << 20);
    }
}

/// The event of every fixture, reviewed by eye once and then held still: a change to parsing,
/// rendering or the payload shape shows up as a diff of these files. The context is fixed
/// (ids, times, object key), so nothing in them varies between runs and nothing needs redacting.
#[test]
fn fixture_events_match_their_snapshots() {
    insta::glob!("../../fixtures/eml", "*.eml", |path| {
        let raw = std::fs::read(path).expect("fixture");
        let thread = Thread {
            thread_id: "thr_fixed".to_owned(),
            ..Thread::default()
        };
        let event = build(&raw, &thread, 10 << 20);
        insta::assert_json_snapshot!(event);
    });
}

/// The BotMailRoom payload (`payload = "botmailroom"`) of a plain mail, a mail with an
/// attachment, and a reply carrying its thread: the exact body a BotMailRoom handler receives.
#[test]
fn botmailroom_payloads_match_their_snapshots() {
    let fixture = |name: &str| {
        std::fs::read(crate::support::repo_path(&format!("fixtures/eml/{name}"))).expect("fixture")
    };
    let alone = Thread {
        thread_id: "thr_fixed".to_owned(),
        ..Thread::default()
    };
    for name in ["plain_text.eml", "multipart_mixed_attachment.eml"] {
        let event = build(&fixture(name), &alone, 10 << 20);
        insta::assert_json_snapshot!(
            format!("botmailroom_{}", name.trim_end_matches(".eml")),
            botmailroom_of(&event)
        );
    }

    // A reply after two earlier emails, as intake hands them over: each the stored `email`
    // without a thread of its own.
    let earlier: Vec<Value> = [
        &b"From: Jane <jane@client.example>\r\nTo: agent@example.com\r\nSubject: Launch plan\r\n\
Date: Thu, 16 Apr 2026 09:00:00 +0200\r\nMessage-ID: <plan-1@client.example>\r\n\r\n\
Shall we launch on Monday?\r\n"[..],
        b"From: Bob <bob@client.example>\r\nTo: agent@example.com\r\nCc: jane@client.example\r\n\
Subject: Re: Launch plan\r\nDate: Thu, 16 Apr 2026 10:30:00 +0200\r\n\
Message-ID: <plan-2@client.example>\r\nIn-Reply-To: <plan-1@client.example>\r\n\
References: <plan-1@client.example>\r\n\r\nMonday works.\r\n\r\n\
On Thu, 16 Apr 2026 at 09:00, Jane <jane@client.example> wrote:\r\n> Shall we launch on Monday?\r\n",
    ]
    .iter()
    .enumerate()
    .map(|(position, raw)| {
        let mut email = build(raw, &alone, 10 << 20)["email"].clone();
        email["id"] = format!("msg_earlier_{position}").into();
        email["previous_emails"] = Value::Null;
        email["thread_prompt"] = Value::Null;
        email
    })
    .collect();
    let thread = Thread {
        thread_id: "thr_fixed".to_owned(),
        previous_emails: earlier.into_iter().map(email).collect(),
        earlier_left_out: false,
    };
    let reply = b"From: Jane <jane@client.example>\r\nTo: agent@example.com\r\n\
Subject: Re: Launch plan\r\nDate: Thu, 16 Apr 2026 11:00:00 +0200\r\n\
Message-ID: <plan-3@client.example>\r\nIn-Reply-To: <plan-2@client.example>\r\n\
References: <plan-1@client.example> <plan-2@client.example>\r\n\r\nGreat, Monday it is.\r\n";
    let event = build(reply, &thread, 10 << 20);
    check_valid("threaded reply", &event, 10 << 20);
    insta::assert_json_snapshot!("botmailroom_threaded_reply", botmailroom_of(&event));
}

/// Past `delivery.max_payload_bytes` the webhook still arrives, its bodies left out and named
/// in `omitted_reason`, which points at the raw message; that serves the bytes sent, exactly.
#[tokio::test]
async fn an_event_over_the_payload_cap_arrives_without_its_bodies_and_the_raw_mail_stays_whole() {
    use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver};

    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.delivery_toml = "max_payload_bytes = 4096\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let paragraph = "The quarterly numbers are attached below in full detail. ".repeat(40);
    let html = format!("<p>{paragraph}</p>").repeat(5);
    let text = format!("{paragraph}\r\n").repeat(5);
    let raw = format!(
        "From: Big Sender <big@sender.example>\r\nTo: agent@example.com\r\nSubject: large\r\n\
         Message-ID: <large-1@sender.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\
         --b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b--\r\n"
    )
    .into_bytes();
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let (code, reply) = client
        .send_message("big@sender.example", &["agent@example.com"], &raw)
        .await;
    assert_eq!(code, 250, "{reply}");

    let request = receiver.recv().await;
    assert!(request.body.len() <= 4096, "{} bytes", request.body.len());
    let event = request.json();
    let message_id = event["message_id"].as_str().expect("message id");
    let reason = event["omitted_reason"].as_str().expect("omitted_reason");
    let email = &event["email"];
    for field in [
        "html",
        "thread_prompt",
        "prompt",
        "plain_text",
        "extracted_text",
    ] {
        assert!(email[field].is_null(), "email.{field} kept: {event}");
        assert!(reason.contains(field), "{field} not named: {reason}");
    }
    assert!(event["extracted_text"].is_null(), "{event}");
    assert!(
        reason.ends_with(&format!("fetch GET /v1/messages/{message_id}/raw")),
        "{reason}"
    );
    // What is small stays, so a handler can still route the mail.
    assert_eq!(event["subject"], "large");
    assert_eq!(email["from_address"]["address"], "big@sender.example");
    assert_eq!(email["message_id"], "large-1@sender.example");

    let (status, stored) = gateway
        .api_bytes(&format!("/v1/messages/{message_id}/raw"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(stored, raw);
    gateway.stop().await;
}

/// `templates.dir` replaces the embedded prompt templates (a file left out keeps its default),
/// and a template naming a field that does not exist stops startup with the key in the message.
#[tokio::test]
async fn templates_dir_replaces_the_prompt_and_a_broken_one_stops_startup() {
    use crate::support::{
        GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, simple_message,
    };

    let templates = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        templates.path().join("prompt.md"),
        "NEW TEXT FROM {{from}}: {{extracted_text}}\n",
    )
    .expect("write template");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.extra_toml = format!("[templates]\ndir = \"{}\"\n", templates.path().display());
    let gateway = TestGateway::start(options.clone()).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let raw = simple_message(
        "jane@client.example",
        "agent@example.com",
        "Hi",
        "Hello agent",
    );
    let (code, text) = client
        .send_message("jane@client.example", &["agent@example.com"], &raw)
        .await;
    assert_eq!(code, 250, "{text}");
    let event = receiver.recv().await.json();
    let expected = "NEW TEXT FROM Sender Name <jane@client.example>: Hello agent\n";
    assert_eq!(event["email"]["prompt"], expected);
    let thread_prompt = event["email"]["thread_prompt"]
        .as_str()
        .expect("thread prompt");
    assert!(
        thread_prompt.starts_with("# Thread: Hi") && thread_prompt.contains(expected),
        "{thread_prompt}"
    );
    gateway.stop().await;

    std::fs::write(
        templates.path().join("thread_entry.md"),
        "{{no_such_field}}\n",
    )
    .expect("write template");
    let data = tempfile::tempdir().expect("tempdir");
    let config = mxhook::config::Config::from_toml_str(&crate::support::gateway::config_toml(
        data.path(),
        &options,
    ))
    .expect("config");
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let started = tokio::time::timeout(
        crate::support::SOON,
        mxhook::app::run_with_listeners(config, smtp, http, std::future::pending::<()>()),
    )
    .await
    .expect("startup fails promptly");
    let message = format!(
        "{:#}",
        started.expect_err("a broken template stops startup")
    );
    assert!(
        message.contains("templates.dir")
            && message.contains("thread_entry.md")
            && message.contains("no_such_field"),
        "{message}"
    );
}
