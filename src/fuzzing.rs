//! Entry points of the fuzz targets in `fuzz/` (one function per target, same name) and of the
//! test that replays what they found (`fuzz/regressions/<target>/`), so a finding stays fixed in
//! the suite CI runs. Not an API: hidden from the docs and never called by the gateway.
//!
//! Each function takes arbitrary bytes, feeds them to one stage the way production does, and
//! panics only where that stage broke: a panic of its own, or an invariant checked here (a reply
//! line a client would misread, a message that does not survive the DATA round trip, a stored
//! event that cannot be read back, a PROXY header that changes with how it was split).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::event::{self, CalendarEvent, Event, EventContext, Thread};
use crate::ingress::provider::{self, CalendarRequest, Provider};
use crate::model::{Direction, Envelope, PayloadFormat, Recipient};
use crate::smtp::proto::{self, DataLine, DataReceiver, RcptTo, Reply, TransferDeadline};
use crate::smtp::proxy;
use crate::smtp::reader::SessionReader;
use crate::smtp::session::{LineRead, read_line};

/// `smtp.max_message_size` of the command parser checks: `SIZE=` above it is refused.
const MAX_SIZE: u64 = 1 << 20;
/// "Now" of the ingress checks: signed timestamps are judged against it.
const NOW_S: i64 = 1_776_340_800;
/// The ingress secret the targets sign with, so the valid-signature path is taken too.
const SECRET: &str = "fuzz-ingress-secret";

// ---------------------------------------------------------------------------------------------
// SMTP command lines

/// One command line (through its LF, as the session reads it) through every parser the session
/// may hand it to: the foreign-protocol and control-byte checks, the verb, MAIL FROM, RCPT TO and
/// the `mailin` engine; every reply built from it must be a well-formed SMTP reply.
pub fn smtp_command(data: &[u8]) {
    let line = match data.iter().position(|b| *b == b'\n') {
        Some(lf) => &data[..=lf],
        None => data,
    };
    // The session's default `smtp.max_command_line`; a longer line never reaches the parsers.
    if line.len() > 512 {
        return;
    }
    if let Some(word) = proto::foreign_command(line) {
        assert!(
            word.bytes().all(|b| b.is_ascii_graphic()),
            "echoed word {word:?} is not printable ASCII"
        );
        check_reply(&proto::replies::foreign_protocol(&word));
    }
    let controls = proto::has_control_bytes(line);
    let verb = proto::verb(line);
    assert!(
        verb.chars().count() <= 16,
        "verb {verb:?} is longer than 16"
    );
    match proto::parse_mail_from(line, MAX_SIZE) {
        Ok(mail) => {
            if let Some(path) = &mail.reverse_path {
                assert!(
                    !path.is_empty()
                        && !path
                            .chars()
                            .any(|c| c.is_control() || matches!(c, ' ' | '<' | '>')),
                    "reverse path {path:?} would break the envelope"
                );
            }
            assert!(mail.declared_size.is_none_or(|size| size <= MAX_SIZE));
        }
        Err(reply) => check_error_reply(&reply),
    }
    match proto::parse_rcpt_to(line) {
        Ok(RcptTo::Mailbox { address, as_sent }) => {
            // The session hands `RCPT TO:<{address}>` to the engine and looks the address up.
            assert!(
                address.contains('@')
                    && !address
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>')),
                "recipient {address:?} would break the engine's RCPT line"
            );
            assert!(!as_sent.contains(['\r', '\n']), "as_sent {as_sent:?}");
        }
        Ok(RcptTo::RelayAttempt(path)) => check_reply(&Reply::new(
            550,
            "5.7.1",
            format!("<{path}>: relay access denied"),
        )),
        Err(reply) => check_error_reply(&reply),
    }
    if controls {
        // The session answers 501 and never hands such a line on.
        return;
    }
    // Lines the session does not parse itself go to the engine, normalised to one CRLF: once in
    // a fresh session, once inside a transaction.
    let mut normalized = line.strip_suffix(b"\n").unwrap_or(line);
    normalized = normalized.strip_suffix(b"\r").unwrap_or(normalized);
    let mut normalized = normalized.trim_ascii_end().to_vec();
    normalized.extend_from_slice(b"\r\n");
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut fresh = mailin::SessionBuilder::new("mx.fuzz.test").build(peer, AcceptAll);
    check_reply(&proto::enhance_engine_reply(
        fresh.process(&normalized).code,
    ));
    let mut busy = mailin::SessionBuilder::new("mx.fuzz.test").build(peer, AcceptAll);
    for setup in [
        &b"EHLO client.example\r\n"[..],
        b"MAIL FROM:<sender@example.org>\r\n",
        b"RCPT TO:<agent@example.com>\r\n",
    ] {
        busy.process(setup);
    }
    check_reply(&proto::enhance_engine_reply(busy.process(&normalized).code));
}

/// The engine's handler when every decision is "yes": what is fuzzed is its parser.
struct AcceptAll;

impl mailin::Handler for AcceptAll {}

fn check_error_reply(reply: &Reply) {
    assert!(reply.is_error(), "a parse error answered {}", reply.code);
    check_reply(reply);
}

fn check_reply(reply: &Reply) {
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    check_reply_lines(&wire);
}

/// Every line is `NNN-text` or `NNN text` ending in CRLF with no CR or LF of its own, and a
/// `-` line is followed by a line of the same code: otherwise a client reads a different reply.
fn check_reply_lines(wire: &[u8]) {
    let text = String::from_utf8_lossy(wire);
    assert!(
        wire.is_empty() || wire.ends_with(b"\r\n"),
        "replies do not end in CRLF: {text:?}"
    );
    let lines: Vec<&[u8]> = wire.split_inclusive(|b| *b == b'\n').collect();
    for (idx, line) in lines.iter().enumerate() {
        let body = line.strip_suffix(b"\r\n").unwrap_or(line);
        let well_formed = line.ends_with(b"\r\n")
            && !body.contains(&b'\r')
            && body.len() >= 4
            && (b'2'..=b'5').contains(&body[0])
            && body[1..3].iter().all(u8::is_ascii_digit)
            && matches!(body[3], b' ' | b'-');
        assert!(well_formed, "malformed reply line {line:?} in {text:?}");
        if body[3] == b'-' {
            let next = lines.get(idx + 1).map(|next| &next[..3]);
            assert_eq!(next, Some(&body[..3]), "continuation cut short in {text:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DATA

/// One DATA transfer read as the session reads it (its line reader over its buffer, the rate
/// deadline, [`DataReceiver`]). The first byte picks the mode: even bytes feed the rest as the
/// client's raw bytes under small limits taken from the next three bytes; odd bytes treat the
/// rest as a message a client sends (dot-stuffed, CRLF) and require it back unchanged, with the
/// command pipelined after the end marker still unread.
pub fn smtp_data(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        let [line_sel, size_sel, header_sel, wire @ ..] = rest else {
            return;
        };
        let limits = DataLimits {
            max_line: 3 + usize::from(*line_sel) * 4,
            max_size: 1 + u64::from(*size_sel) * 64,
            max_header: usize::from(*header_sel) * 16,
        };
        let received = receive_data(wire, chunk, &limits);
        check_received(&received, &limits);
    } else {
        data_round_trip(rest, chunk);
    }
}

struct DataLimits {
    max_line: usize,
    max_size: u64,
    max_header: usize,
}

struct Received {
    /// `None`: the stream ended before the end marker (the session keeps nothing).
    outcome: Option<Result<Vec<u8>, proto::DataRejection>>,
    /// What the line reader left for the next command.
    after: Vec<u8>,
}

fn receive_data(wire: &[u8], chunk: usize, limits: &DataLimits) -> Received {
    runtime().block_on(async {
        // As the session: a small buffer for commands, grown for DATA.
        let mut reader = SessionReader::with_capacity(1024, Wire::new(wire, chunk));
        reader.set_capacity(16 * 1024);
        let mut receiver = DataReceiver::new(limits.max_size, limits.max_line, limits.max_header);
        let mut rate = TransferDeadline::new(
            std::time::Instant::now(),
            std::time::Duration::from_secs(300),
            500,
        );
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let mut line = Vec::new();
        let mut ended = false;
        loop {
            let read = read_line(
                &mut reader,
                &mut line,
                limits.max_line,
                far,
                Some(&mut rate),
            )
            .await
            .expect("the wire never fails")
            .expect("the wire is never slow");
            let end = match read {
                LineRead::Eof => break,
                LineRead::TooLong { ended_crlf } => receiver.push(DataLine::TooLong { ended_crlf }),
                LineRead::Line => {
                    assert!(line.len() <= limits.max_line, "line over the limit kept");
                    receiver.push(DataLine::Complete(&line))
                }
            };
            if end {
                ended = true;
                break;
            }
        }
        reader.set_capacity(1024);
        let mut after = reader.buffer().to_vec();
        let mut rest = reader.into_inner();
        after.extend_from_slice(rest.unread());
        rest.skip_all();
        Received {
            outcome: ended.then(|| receiver.finish()),
            after,
        }
    })
}

fn check_received(received: &Received, limits: &DataLimits) {
    match &received.outcome {
        Some(Ok(message)) => {
            assert!(
                message.len() as u64 <= limits.max_size,
                "message over max_size"
            );
            assert!(
                message.is_empty() || message.ends_with(b"\r\n"),
                "message does not end in CRLF"
            );
            // Every line ending is CRLF and no CR stands alone: a downstream MTA reads the same
            // lines as we did.
            for (idx, byte) in message.iter().enumerate() {
                match byte {
                    b'\r' => assert_eq!(message.get(idx + 1), Some(&b'\n'), "bare CR stored"),
                    b'\n' => assert!(idx > 0 && message[idx - 1] == b'\r', "bare LF stored"),
                    _ => {}
                }
            }
            let header: usize = message
                .split(|b| *b == b'\n')
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                .take_while(|line| !line.is_empty())
                .map(|line| line.len() + 2)
                .sum();
            assert!(
                message.is_empty() || header <= limits.max_header,
                "header section of {header} bytes stored over {}",
                limits.max_header
            );
        }
        Some(Err(rejection)) => check_error_reply(&rejection.reply()),
        None => {}
    }
}

fn data_round_trip(body: &[u8], chunk: usize) {
    // The message a conforming client holds: lines without CR; it sends each dot-stuffed with
    // CRLF, then the end marker, then pipelines its next command.
    let text: Vec<u8> = body.iter().copied().filter(|b| *b != b'\r').collect();
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if text.is_empty() || text.ends_with(b"\n") {
        lines.pop();
    }
    let mut wire = Vec::with_capacity(text.len() * 2 + 16);
    let mut expected = Vec::with_capacity(text.len() * 2);
    for line in &lines {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
        expected.extend_from_slice(line);
        expected.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\nQUIT\r\n");
    let limits = DataLimits {
        max_line: 1 << 20,
        max_size: 1 << 24,
        max_header: 1 << 20,
    };
    let received = receive_data(&wire, chunk, &limits);
    match received.outcome {
        Some(Ok(message)) => assert!(message == expected, "message changed in transit"),
        Some(Err(rejection)) => panic!("a conforming transfer was refused: {rejection:?}"),
        None => panic!("the end marker was missed"),
    }
    assert_eq!(received.after, b"QUIT\r\n", "pipelined command lost");
}

/// A connection's bytes arriving in chunks of one size, and everything written back kept.
struct Wire<'a> {
    input: &'a [u8],
    chunk: usize,
    output: Vec<u8>,
}

impl<'a> Wire<'a> {
    fn new(input: &'a [u8], chunk: usize) -> Self {
        Self {
            input,
            chunk: chunk.max(1),
            output: Vec::new(),
        }
    }

    fn unread(&self) -> &[u8] {
        self.input
    }

    fn skip_all(&mut self) {
        self.input = &[];
    }
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.chunk.min(this.input.len()).min(buf.remaining());
        buf.put_slice(&this.input[..n]);
        this.input = &this.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The one runtime of the pure targets (a current-thread one: libFuzzer runs one input at a
/// time).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// The SMTP session

/// A whole SMTP session ([`crate::smtp::session::run`]) over a connection whose client sends
/// `data[1..]` in chunks of `data[0]` bytes (0: 4096) and then closes, against a real intake:
/// SQLite and the filesystem store in a scratch directory (on tmpfs where there is one), an
/// inbox `agent@example.com`, a TLS-only inbox `secure@example.com` and an auto-creating domain
/// `auto.example`. Without STARTTLS (a handshake with random bytes only fuzzes rustls) and
/// without sender verification (it needs DNS). Every reply the session writes must be
/// well-formed, it may accept at most one message per end-of-data marker sent, and each message
/// it answered `250` for must have its row, a readable event and its raw bytes in the store.
pub fn smtp_session(data: &[u8]) {
    session_replies(data);
}

/// [`smtp_session`], returning what the session wrote.
fn session_replies(data: &[u8]) -> Vec<u8> {
    let Some((&chunk, client)) = data.split_first() else {
        return Vec::new();
    };
    let chunk = if chunk == 0 { 4096 } else { usize::from(chunk) };
    let harness = session_harness();
    let mut wire = Wire::new(client, chunk);
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    harness.runtime.block_on(crate::smtp::session::run(
        &mut wire,
        peer,
        &harness.ctx,
        tokio_util::sync::CancellationToken::new(),
    ));
    check_reply_lines(&wire.output);
    // Replies echo client text (a refused recipient is named), so only whole reply lines count.
    let accepted = wire
        .output
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(b"250 2.0.0 OK queued as "))
        .count();
    let markers = count(client, b"\n.\r\n");
    assert!(
        accepted <= markers,
        "{accepted} messages accepted for {markers} end-of-data markers"
    );
    harness.check_durable(&wire.output);
    harness.after_session();
    wire.output
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

struct SessionHarness {
    runtime: tokio::runtime::Runtime,
    ctx: crate::smtp::SessionContext,
    db: crate::db::Db,
    store: crate::store::Store,
    store_root: PathBuf,
    sessions: std::sync::atomic::AtomicUsize,
}

impl SessionHarness {
    /// 250 means durable: every message the session said it queued has its row, with an event
    /// that reads back, and its raw bytes in the store.
    fn check_durable(&self, output: &[u8]) {
        let text = String::from_utf8_lossy(output);
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("250 2.0.0 OK queued as "))
            .flat_map(|ids| ids.trim_end().split(','))
            .collect();
        self.runtime.block_on(async {
            for id in ids {
                let row = self
                    .db
                    .get_message(id)
                    .await
                    .expect("the harness database answers")
                    .unwrap_or_else(|| panic!("250 for {id}, but it has no row"));
                Event::from_json(&row.event_json).expect("the stored event reads back");
                if let Err(err) = self.store.get(&row.storage_key).await {
                    panic!("250 for {id}, but its raw message is not in the store: {err}");
                }
            }
        });
    }

    /// Empties the store now and then: a long run accepts many messages, and tmpfs is memory.
    /// The database keeps their rows, which only the API would read.
    fn after_session(&self) {
        let sessions = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if sessions % 20_000 == 19_999 {
            let _ = std::fs::remove_dir_all(&self.store_root);
        }
    }
}

fn session_harness() -> &'static SessionHarness {
    static HARNESS: OnceLock<SessionHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = scratch_dir("session");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (ctx, db, store) = runtime.block_on(session_context(&dir));
        SessionHarness {
            runtime,
            ctx,
            db,
            store,
            store_root: dir.join("store"),
            sessions: std::sync::atomic::AtomicUsize::new(0),
        }
    })
}

/// A directory of this process's own, on tmpfs where there is one (the store syncs every
/// message it keeps). `scripts/fuzz` and [`remove_scratch`] remove it.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn scratch_path(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("mxhook-fuzz-{name}-{}", std::process::id()))
}

/// Removes the scratch directories of this process (the regression test calls it when done).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch_path("session"));
}

async fn session_context(
    dir: &Path,
) -> (
    crate::smtp::SessionContext,
    crate::db::Db,
    crate::store::Store,
) {
    let toml = format!(
        r#"
[smtp]
hostname = "mx.fuzz.test"
greet_pause_s = 0.0
max_message_size = 65536
max_header_bytes = 8192
max_text_line = 2000
max_recipients = 4
max_errors = 8

[storage]
backend = "fs"
path = "{dir}/store"

[database]
url = "sqlite://{dir}/mxhook.db"

[[inbox]]
id = "agent"
addresses = ["agent@example.com"]
webhook_url = "https://hooks.example.com/agent"

[[inbox]]
id = "secure"
addresses = ["secure@example.com"]
webhook_url = "https://hooks.example.com/secure"
require_tls = true

[[domain]]
name = "auto.example"
auto_create = true
max_auto_inboxes = 50

[domain.template]
webhook_url = "https://hooks.example.com/auto"
"#,
        dir = dir.display()
    );
    let config = crate::config::Config::from_toml_str(&toml).expect("the harness config");
    let db = crate::db::Db::connect(&config.database)
        .await
        .expect("the harness database");
    db.migrate().await.expect("migrations");
    for inbox in &config.inboxes {
        db.upsert_config_inbox(inbox).await.expect("an inbox");
    }
    db.sync_config_domains(&config.domains)
        .await
        .expect("the domain");
    let directory = crate::directory::Directory::default();
    directory.reload(&db).await.expect("the directory");
    let store = crate::store::Store::from_config(&config.storage).await;
    let intake = crate::intake::Intake::new(
        &config.storage,
        config.delivery.max_payload_bytes,
        store.clone(),
        db.clone(),
        directory.clone(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let ctx = crate::smtp::SessionContext {
        config: config.smtp.clone(),
        directory,
        intake: Arc::new(intake),
        tls: None,
        counters: Arc::new(crate::counters::Counters::default()),
    };
    (ctx, db, store)
}

// ---------------------------------------------------------------------------------------------
// Parsing and events

/// A received message as intake handles it, without the database: [`crate::parse::parse`] (not
/// the guarded version, whose fallback would hide a parser panic), the thread keys, the mail
/// event under a payload cap of `data[0] * 64` bytes (0: 1 MiB), each payload format, the event
/// read back as stored, the next message of the thread built with this one as its history, and
/// every attachment the event lists fetched from the raw message.
pub fn parse_event(data: &[u8]) {
    let Some((&cap, raw)) = data.split_first() else {
        return;
    };
    let max_payload = if cap == 0 {
        1 << 20
    } else {
        usize::from(cap) * 64
    };
    let envelope = Envelope {
        remote_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        helo: "client.example".to_owned(),
        mail_from: Some("sender@example.org".to_owned()),
        recipients: vec![Recipient {
            address: "agent@example.com".to_owned(),
            as_sent: "Agent@Example.com".to_owned(),
            inbox_id: "agent".to_owned(),
        }],
        smtputf8: false,
        tls: None,
    };
    mail_event(raw, &envelope, max_payload);
}

fn mail_event(raw: &[u8], envelope: &Envelope, max_payload: usize) {
    let parsed = crate::parse::parse(raw);
    let _ = crate::thread::keys(&parsed);
    let _ = crate::thread::subject_key(parsed.subject.as_deref());
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|recipient| recipient.address.clone())
        .collect();
    let templates = templates();
    let first = Thread {
        thread_id: "thr_fuzz".to_owned(),
        ..Thread::default()
    };
    let event = Event::Mail(event::build_with_flags(
        &context(raw, envelope, &recipients, &first, max_payload, templates),
        &parsed,
        None,
    ));
    let stored = check_event(&event);
    let _ = crate::thread::is_quarantined(&stored);
    if let Some(flagged) = event::with_duplicate_flag(&stored, true) {
        Event::from_json(&flagged).expect("a flagged event reads back");
    }
    let _ = crate::route::EventFlags::from_event(&event);
    let next = crate::thread::from_history("thr_fuzz".to_owned(), &[stored]);
    let reply = Event::Mail(event::build_with_flags(
        &context(raw, envelope, &recipients, &next, max_payload, templates),
        &parsed,
        None,
    ));
    check_event(&reply);
    for attachment in &parsed.attachments {
        assert!(
            crate::parse::part::attachment(raw, &attachment.id).is_some(),
            "listed attachment {} cannot be fetched",
            attachment.id
        );
    }
}

fn context<'a>(
    raw: &[u8],
    envelope: &'a Envelope,
    recipients: &'a [String],
    thread: &'a Thread,
    max_payload: usize,
    templates: &'a crate::prompt::Templates,
) -> EventContext<'a> {
    EventContext {
        event_id: "evt_fuzz",
        message_id: "msg_fuzz",
        agent_id: "agent",
        received_at_ms: NOW_S * 1000,
        envelope,
        inbox_recipients: recipients,
        s3_bucket: "mxhook",
        s3_key: "inbound/agent/msg_fuzz.eml",
        size: raw.len(),
        max_payload_bytes: max_payload,
        thread,
        templates,
        direction: Direction::Inbound,
    }
}

/// The event as stored must read back as the same event, and every payload format must build.
fn check_event(event: &Event) -> String {
    let stored = event::to_json(event);
    let back = Event::from_json(&stored).expect("a stored event reads back");
    assert_eq!(back.event_type(), event.event_type());
    for format in [
        PayloadFormat::Mxhook,
        PayloadFormat::Botmailroom,
        PayloadFormat::EventData,
        PayloadFormat::EventDataTs,
    ] {
        let _ = event::to_json(&event::payload_for(event, format));
    }
    stored
}

fn templates() -> &'static crate::prompt::Templates {
    static TEMPLATES: OnceLock<crate::prompt::Templates> = OnceLock::new();
    TEMPLATES.get_or_init(crate::prompt::Templates::default)
}

// ---------------------------------------------------------------------------------------------
// Provider ingress

/// The first line of `data` as one header value (`None` without a line break, or when it is not
/// text: such a header value never reaches the handlers), and the rest as the request body.
fn header_and_body(data: &[u8]) -> (Option<String>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(lf) => (
            std::str::from_utf8(&data[..lf]).ok().map(str::to_owned),
            &data[lf + 1..],
        ),
        None => (None, data),
    }
}

fn hmac_hex(parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Checks the request with `header` under `name`, and then with the signature a provider would
/// send, which must verify.
fn verify_both(provider: Provider, name: &str, header: Option<String>, good: String, body: &[u8]) {
    let secrets = [SECRET.to_owned(), "second-secret".to_owned()];
    let fuzzed = |asked: &str| (asked == name).then(|| header.clone()).flatten();
    let _ = provider::verify(provider, &fuzzed, body, &secrets, NOW_S, 300);
    let signed = |asked: &str| (asked == name).then(|| good.clone());
    assert_eq!(
        provider::verify(provider, &signed, body, &secrets, NOW_S, 300),
        Ok(()),
        "a correctly signed {} request was refused",
        provider.as_str()
    );
}

/// A MailerSend `inbound.message` request: `data` is the `Signature` header line, then the body.
/// The signature check, the payload reader, and the message it yields through parsing and the
/// event, as the provider's envelope gives it to intake.
pub fn ingress_mailersend(data: &[u8]) {
    let (header, body) = header_and_body(data);
    verify_both(
        Provider::MailerSend,
        "signature",
        header,
        hmac_hex(&[body]),
        body,
    );
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let received_at = chrono::DateTime::from_timestamp(NOW_S, 0)
        .unwrap_or_default()
        .fixed_offset();
    let Ok(mail) = provider::mailersend_mail(&payload, received_at) else {
        return;
    };
    assert!(!mail.recipients.is_empty(), "a mail without recipients");
    let built = payload["data"]["raw"].as_str().is_none_or(str::is_empty);
    if built {
        // A message built from the fields carries a stable Message-ID (duplicates, threading).
        let parsed = crate::parse::parse(&mail.raw);
        assert!(
            parsed.message_id.is_some(),
            "built message has no Message-ID: {:?}",
            String::from_utf8_lossy(&mail.raw)
        );
    }
    mail_event(&mail.raw, &provider_envelope("mailersend", &mail), 1 << 20);
}

/// A SendGrid Inbound Parse request: `data` is the signature header line, the timestamp
/// header line, then the body. The signature is checked against an ECDSA public key and a key
/// that is not one; the body is read as the multipart form the handler reads, with the boundary
/// its first line names (so the fuzzer reaches both well-formed and broken forms), and a mail
/// read from it goes on into an event.
pub fn ingress_sendgrid(data: &[u8]) {
    let (signature, rest) = header_and_body(data);
    let (timestamp, body) = header_and_body(rest);
    let secrets = [sendgrid_key().to_owned(), "bm90IGEga2V5".to_owned()];
    let headers = |asked: &str| match asked {
        "x-twilio-email-event-webhook-signature" => signature.clone(),
        "x-twilio-email-event-webhook-timestamp" => timestamp.clone(),
        _ => None,
    };
    let _ = provider::verify(Provider::SendGrid, &headers, body, &secrets, NOW_S, 300);
    let first_line = body.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let boundary = String::from_utf8_lossy(first_line.strip_prefix(b"--").unwrap_or(first_line));
    let content_type = format!("multipart/form-data; boundary={}", boundary.trim_end());
    let read = runtime().block_on(provider::sendgrid_mail(
        &content_type,
        bytes::Bytes::copy_from_slice(body),
    ));
    let Ok(mail) = read else {
        return;
    };
    assert!(!mail.recipients.is_empty(), "a mail without recipients");
    assert!(
        mail.recipients
            .iter()
            .all(|address| *address == address.to_ascii_lowercase()),
        "recipients are matched lowercased: {:?}",
        mail.recipients
    );
    mail_event(&mail.raw, &provider_envelope("sendgrid", &mail), 1 << 20);
}

/// The envelope ingress gives a provider's mail: its recipients, all for the one inbox.
fn provider_envelope(helo: &str, mail: &provider::InboundMail) -> Envelope {
    Envelope {
        remote_ip: None,
        helo: helo.to_owned(),
        mail_from: mail.mail_from.clone(),
        recipients: mail
            .recipients
            .iter()
            .map(|address| Recipient {
                address: address.clone(),
                as_sent: address.clone(),
                inbox_id: "agent".to_owned(),
            })
            .collect(),
        smtputf8: true,
        tls: None,
    }
}

/// A P-256 public key in the form SendGrid shows it (base64 DER SubjectPublicKeyInfo).
fn sendgrid_key() -> &'static str {
    // A fixed key: the point of the target is the header and key parsing, not the curve.
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuDKh74J0JQoxshur2ycOkiwCWdHtbKpFizvMPwTAytAd+JncJO+9CCzTHUPFtW+yDS5DHVhBDvf+Zy40qQoEhA=="
}

/// A Cal.com webhook: `data` is the `X-Cal-Signature-256` header line, then the body.
pub fn ingress_calcom(data: &[u8]) {
    let (header, body) = header_and_body(data);
    verify_both(
        Provider::CalCom,
        "x-cal-signature-256",
        header,
        hmac_hex(&[body]),
        body,
    );
    calendar(Provider::CalCom, provider::calcom_booking, body, "calcom:");
}

/// A Calendly webhook: `data` is the `Calendly-Webhook-Signature` header line, then the body.
pub fn ingress_calendly(data: &[u8]) {
    let (header, body) = header_and_body(data);
    let timestamp = NOW_S.to_string();
    let good = format!(
        "t={timestamp},v1={}",
        hmac_hex(&[timestamp.as_bytes(), b".", body])
    );
    verify_both(
        Provider::Calendly,
        "calendly-webhook-signature",
        header,
        good,
        body,
    );
    calendar(
        Provider::Calendly,
        provider::calendly_booking,
        body,
        "calendly:",
    );
}

/// A calendar body through its provider's reader and, for a booking, the event ingress stores
/// (read back as stored, in every payload format).
fn calendar(
    provider: Provider,
    read: fn(&Value) -> Result<CalendarRequest, provider::Error>,
    body: &[u8],
    key_prefix: &str,
) {
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let request = match read(&payload) {
        Ok(request) => request,
        Err(provider::Error::BadPayload(_)) => return,
        Err(other) => panic!("a payload reader answered {other:?}"),
    };
    if let Some(key) = request.event_type_key() {
        assert!(key.starts_with(key_prefix), "event type key {key:?}");
    }
    let CalendarRequest::Booking(booking) = request else {
        return;
    };
    let event = Event::Calendar(CalendarEvent {
        agent_id: "agent".into(),
        booking: *booking.booking,
        event_id: "evt_fuzz".into(),
        message_id: "msg_fuzz".into(),
        payload,
        provider,
        s3_bucket: "mxhook".to_owned(),
        s3_key: "inbound/agent/msg_fuzz.json".to_owned(),
        timestamp: crate::model::rfc3339(NOW_S * 1000),
        change: booking.change,
    });
    check_event(&event);
}

// ---------------------------------------------------------------------------------------------
// PROXY header

/// A PROXY header as [`proxy::read_header`] receives it: `data[0]` picks the versions accepted
/// (by `% 3`) and the size of each read (by `/ 3`, at least 1); the rest is what the balancer
/// sent. Parsing the bytes read so far after each read must give the answer parsing them all at
/// once gives, and a complete header must take more bytes than were consumed before it was
/// (the reader reads `len - consumed` more) and no more than were received.
pub fn proxy_header(data: &[u8]) {
    let Some((&selector, sent)) = data.split_first() else {
        return;
    };
    let versions = match selector % 3 {
        0 => proxy::Versions::V1,
        1 => proxy::Versions::V2,
        _ => proxy::Versions::Any,
    };
    let step = usize::from(selector / 3).max(1);
    let whole = proxy::parse(sent, versions);
    let mut seen = 0;
    loop {
        let consumed = seen;
        seen = (seen + step).min(sent.len());
        let partial = proxy::parse(&sent[..seen], versions);
        match &partial {
            Ok(None) if seen < sent.len() => continue,
            Ok(None) => {
                assert_eq!(whole, Ok(None), "all of it incomplete, but not as a whole");
            }
            Ok(Some(header)) => {
                assert!(
                    header.len > consumed && header.len <= seen,
                    "header of {} bytes after {consumed} consumed of {seen} read",
                    header.len
                );
                assert!(header.len <= proxy::V2_MAX.max(proxy::V1_MAX));
                assert_eq!(&whole, &partial, "the header depends on how it was split");
            }
            Err(_) => assert_eq!(&whole, &partial, "the error depends on how it was split"),
        }
        break;
    }
}

/// Runs one input of `target` through its entry function (the regression test's dispatch).
///
/// # Panics
/// When `target` names no target, or where the entry function does.
pub fn run(target: &str, data: &[u8]) {
    let entry: fn(&[u8]) = match target {
        "smtp_command" => smtp_command,
        "smtp_data" => smtp_data,
        "smtp_session" => smtp_session,
        "parse_event" => parse_event,
        "ingress_mailersend" => ingress_mailersend,
        "ingress_sendgrid" => ingress_sendgrid,
        "ingress_calcom" => ingress_calcom,
        "ingress_calendly" => ingress_calendly,
        "proxy_header" => proxy_header,
        other => panic!("no fuzz target {other}"),
    };
    entry(data);
}

/// The targets, as `fuzz/fuzz_targets/` names them.
pub const TARGETS: [&str; 9] = [
    "smtp_command",
    "smtp_data",
    "smtp_session",
    "parse_event",
    "ingress_mailersend",
    "ingress_sendgrid",
    "ingress_calcom",
    "ingress_calendly",
    "proxy_header",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let data = std::fs::read(&path).expect("a committed input reads");
                (path, data)
            })
            .collect()
    }

    /// Runs each input, naming every one that fails instead of stopping at the first.
    fn run_all(runs: Vec<(String, PathBuf, Vec<u8>)>) -> usize {
        let count = runs.len();
        let failures: Vec<String> = runs
            .into_iter()
            .filter_map(|(target, path, data)| {
                std::panic::catch_unwind(|| run(&target, &data))
                    .err()
                    .map(|_| format!("{target}: {}", path.display()))
            })
            .collect();
        assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
        count
    }

    /// What a fuzz run found stays fixed: every committed seed and regression input of every
    /// target (fuzz/seeds/, fuzz/regressions/) runs through its entry function cleanly. Also
    /// shows that the session harness gets a message through intake (the only test that runs
    /// sessions: it removes their scratch directory).
    #[test]
    fn committed_fuzz_inputs_run_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut runs = Vec::new();
        for target in TARGETS {
            for kind in ["seeds", "regressions"] {
                for (path, data) in inputs(&root.join(kind).join(target)) {
                    runs.push((target.to_owned(), path, data));
                }
            }
        }
        let count = run_all(runs);
        // The session harness reaches intake: a well-formed transaction is queued.
        let replies = session_replies(
            b"\x05EHLO c.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<agent@example.com>\r\n\
              DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        );
        let text = String::from_utf8_lossy(&replies);
        assert!(text.contains("\r\n250 2.0.0 OK queued as msg_"), "{text}");
        // Only this test runs sessions, whose database and store live in the scratch directory.
        remove_scratch();
        assert!(count >= 30, "only {count} committed inputs found");
    }

    /// The fixture messages, as the corpus builder feeds them: parsed into events (with and
    /// without a tight payload cap) and sent through DATA.
    #[test]
    fn fixture_messages_run_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut runs = Vec::new();
        for folder in ["eml", "bounces"] {
            for (path, raw) in inputs(&root.join(folder)) {
                if path.extension().is_none_or(|ext| ext != "eml") {
                    continue;
                }
                for (target, prefix) in [("parse_event", 0u8), ("parse_event", 8), ("smtp_data", 1)]
                {
                    let mut data = vec![prefix];
                    data.extend_from_slice(&raw);
                    runs.push((target.to_owned(), path.clone(), data));
                }
            }
        }
        let count = run_all(runs);
        assert!(count >= 60, "only {count} fixture runs");
    }

    /// Messages on which mail-parser 0.11.9 panics in debug builds (a `debug_assert!` in
    /// `parsers/message.rs`, "Invalid part ID, could not find multipart", on a message/rfc822
    /// part whose multipart is cut off), found by `parse_event` and `ingress_mailersend`. Release
    /// builds have no such assertion and parse on; in either mode the production path, the
    /// guarded parser and event builder, yields an event with the message's headers.
    #[test]
    fn messages_mail_parser_asserts_on_are_still_delivered() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parse_guarded");
        let found = inputs(&dir);
        assert!(
            found.len() >= 2,
            "regression inputs missing in {}",
            dir.display()
        );
        let envelope = Envelope::default();
        let recipients = vec!["agent@example.com".to_owned()];
        let thread = Thread::default();
        for (path, raw) in found {
            let parsed = crate::parse::parse_guarded(&raw);
            let event = event::build_guarded(
                &context(&raw, &envelope, &recipients, &thread, 1 << 20, templates()),
                &parsed,
                None,
            );
            let from = parsed.from.as_ref().map(|from| from.address.as_str());
            assert_eq!(
                event.email.from_address.address.as_str(),
                from.unwrap_or_default(),
                "{}",
                path.display()
            );
            check_event(&Event::Mail(event));
        }
    }

    /// The reply check fails on a bare LF and on a continuation line with nothing after it, and
    /// the DATA harness keeps the command pipelined after the end marker.
    #[test]
    fn the_invariant_checks_catch_what_they_describe() {
        assert!(std::panic::catch_unwind(|| check_reply_lines(b"250 ok\nmore\r\n")).is_err());
        assert!(std::panic::catch_unwind(|| check_reply_lines(b"250-first\r\n")).is_err());
        check_reply_lines(b"250-first\r\n250 last\r\n");
        let received = receive_data(
            b"line\r\n.\r\nQUIT\r\n",
            1,
            &DataLimits {
                max_line: 100,
                max_size: 100,
                max_header: 100,
            },
        );
        assert_eq!(received.outcome, Some(Ok(b"line\r\n".to_vec())));
        assert_eq!(received.after, b"QUIT\r\n");
    }
}
