//! `mxhook-bench`: measures the release binary the way users run it. It starts `mxhook serve`
//! on a fresh data directory (SQLite, local store, durable writes on), a webhook receiver on loopback and a
//! real SMTP load generator, then prints accepted messages/s, reply and end-to-end latency,
//! server CPU per message, peak RSS, and lost/duplicated counts. Optionally it runs the same load
//! against Postfix's `smtp-sink` for a ceiling to compare with.
//!
//! `--database postgres`, `--storage s3` and `--verify` run the production choices instead:
//! a fresh PostgreSQL database, a real S3 server process (`mxhook-bench-s3`), and sender
//! verification on with every message DKIM-signed (RSA-2048) and the records served by a local
//! dnsmasq. `--matrix` runs `smtp-sink` and then all eight combinations under one load and
//! prints them as one table (see BENCHMARKS.md).
//!
//! This is a measuring tool, not a test: results go to BENCHMARKS.md with the machine and the
//! exact command.

mod infra;
mod matrix;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark mxhook over real SMTP and HTTP on loopback")]
struct Args {
    /// Messages per run (default 20,000; 10,000 with `--matrix`).
    #[arg(long)]
    messages: Option<usize>,
    /// Concurrent SMTP connections; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,100")]
    concurrency: Vec<usize>,
    /// `new`: a connection per message; `reuse`: one connection per client for all its messages.
    #[arg(long, value_delimiter = ',', default_value = "new,reuse")]
    connections: Vec<String>,
    /// Fixed arrival rate in messages/s (open loop); 0 sends as fast as replies allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The mxhook binary to measure.
    #[arg(long, default_value = "target/release/mxhook")]
    binary: PathBuf,
    /// Override `smtp.greet_pause_s` (the server default pauses 0.5 s before each greeting).
    #[arg(long)]
    greet_pause: Option<f64>,
    /// Also run each load against `smtp-sink` (Postfix) and print the ratio.
    #[arg(long)]
    smtp_sink: bool,
    /// Leave the runs' data directories (under the temp dir) instead of removing them at exit,
    /// so the next bench is not slowed by the deletion (see `KEPT`).
    #[arg(long)]
    keep_data: bool,
    /// Instead of the load runs: hold this many idle SMTP connections open (after the greeting
    /// and EHLO), report the server's memory per connection, and check that mail still flows.
    /// Needs `ulimit -n` above twice this number.
    #[arg(long)]
    idle: Option<usize>,
    /// Score every message with the rspamd at this URL (`spam.rspamd_url`).
    #[arg(long)]
    rspamd_url: Option<String>,
    /// `sqlite` (the embedded default) or `postgres` (a fresh database per run on `--pg-url`).
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// `local` (the embedded store) or `s3` (a real S3 server process on loopback).
    #[arg(long, default_value = "local")]
    storage: String,
    /// Sender verification on (`auth.enabled = true`): every message DKIM-signed with a fresh
    /// RSA-2048 key, SPF/DKIM/DMARC records served by a dnsmasq on loopback.
    #[arg(long)]
    verify: bool,
    /// DKIM-sign the messages (as `--verify` does) while verification stays off, so that
    /// verification off and on can be compared on the same messages.
    #[arg(long)]
    sign: bool,
    /// The PostgreSQL server (trust auth), without a database name.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_url: String,
    /// The S3 server binary (default: `mxhook-bench-s3` next to this binary).
    #[arg(long)]
    s3_binary: Option<PathBuf>,
    /// Runs the S3 server on these cores only (a `taskset` list, e.g. `1`), as if it ran on a
    /// machine of its own; start the bench itself under `taskset -c 0`, so that the gateway
    /// and the load, which inherit its cores, keep to the others.
    #[arg(long)]
    s3_cpus: Option<String>,
    /// smtp-sink, then mxhook for {sqlite, postgres} × {local, s3} × {verify off, on}, one
    /// table (c=32 and new connections unless given).
    #[arg(long)]
    matrix: bool,
    /// Run the matrix this many times, rows interleaved round by round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Append one JSON object per run to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Gateway nodes sharing one PostgreSQL database (needs `--database postgres`), each a
    /// process with its own SMTP port and local store; the senders are spread over them in
    /// turn. Scale-out in simulation: what the primary spends per message as nodes are added.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

impl Args {
    fn messages(&self) -> usize {
        self.messages
            .unwrap_or(if self.matrix { 10_000 } else { 20_000 })
    }
}

/// Words the bench's bodies are drawn from, so that no two messages share their text and a body
/// compresses like prose, not like one sentence repeated (the gateway stores events compressed).
const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "numbers",
    "are",
    "attached",
    "please",
    "summarise",
    "them",
    "for",
    "team",
    "revenue",
    "grew",
    "in",
    "every",
    "region",
    "except",
    "north",
    "where",
    "a",
    "supplier",
    "delayed",
    "two",
    "shipments",
    "costs",
    "rose",
    "slightly",
    "because",
    "of",
    "freight",
    "and",
    "hiring",
    "we",
    "expect",
    "margins",
    "to",
    "recover",
    "next",
    "quarter",
    "if",
    "contract",
    "with",
    "new",
    "carrier",
    "is",
    "signed",
    "by",
    "end",
    "month",
    "questions",
    "budget",
    "review",
    "meeting",
    "on",
    "thursday",
    "moved",
    "friday",
    "morning",
    "agenda",
    "includes",
    "pricing",
    "forecast",
    "headcount",
    "plan",
    "customer",
    "churn",
    "renewals",
    "pipeline",
    "marketing",
    "spend",
    "product",
    "launch",
    "timeline",
    "risks",
    "open",
    "items",
    "from",
    "last",
    "week",
    "action",
    "owners",
    "should",
    "update",
    "their",
    "status",
    "before",
    "call",
    "thanks",
    "regards",
    "invoice",
    "payment",
    "terms",
    "net",
    "thirty",
    "days",
    "discount",
    "early",
    "settlement",
    "warehouse",
    "inventory",
    "levels",
    "stock",
    "reorder",
    "point",
    "safety",
    "lead",
    "time",
    "demand",
    "seasonal",
    "peak",
    "holiday",
    "staffing",
    "overtime",
];

/// A deterministic generator (xorshift64*), so every run sends the same messages.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Words until the text is at least `length` bytes.
    fn text(&mut self, length: usize) -> String {
        let mut text = String::with_capacity(length + 16);
        while text.len() < length {
            if !text.is_empty() {
                text.push(' ');
            }
            let pick = usize::try_from(self.next() % WORDS.len() as u64).unwrap_or(0);
            text.push_str(WORDS[pick]);
        }
        text
    }
}

/// One message of ~10 KB: multipart/mixed with text, HTML and a base64 attachment, its words
/// and attachment bytes different in every message.
fn message(sequence: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut words = Words(0x9e37_79b9_7f4a_7c15 ^ (sequence as u64 + 1));
    let text: String = (0..20)
        .map(|_| format!("{}.\r\n", words.text(72)))
        .collect();
    let html = format!(
        "<html><body>{}</body></html>\r\n",
        (0..8)
            .map(|_| format!("<p>{} <b>{}</b>.</p>", words.text(150), words.text(12)))
            .collect::<String>()
    );
    let bytes: Vec<u8> = (0..4740).map(|_| words.next().to_le_bytes()[0]).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let attachment: String = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", String::from_utf8_lossy(line)))
        .collect();
    format!(
        "From: Bench Sender <sender@bench.example>\r\nTo: agent@example.com\r\nSubject: bench {sequence}\r\n\
Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nMessage-ID: <bench-{sequence}@bench.example>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n\
--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}--b2--\r\n\
--b1\r\nContent-Type: application/octet-stream; name=data.bin\r\nContent-Disposition: attachment; filename=data.bin\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{attachment}--b1--\r\n"
    )
    .into_bytes()
}

/// What the webhook receiver saw: per message sequence number, when it arrived and how often.
#[derive(Default)]
struct Seen {
    arrivals: HashMap<usize, (Instant, usize)>,
    /// Events whose `auth` says SPF, DKIM and DMARC all passed.
    auth_passed: usize,
    /// Events whose `auth.checked` is false (verification off).
    auth_unchecked: usize,
    /// The first `auth` object that was checked and did not pass everything, to show why.
    auth_example: Option<String>,
}

/// Reads the verdicts from an event: (all three passed, not checked, the `auth` object).
fn auth_verdicts(body: &[u8]) -> (bool, bool, Option<serde_json::Value>) {
    // Only the `auth` object is parsed, not the whole 11 KB event: the receiver shares the two
    // cores with the server it measures.
    const KEY: &[u8] = b"\"auth\":";
    let Some(start) = body.windows(KEY.len()).position(|w| w == KEY) else {
        return (false, false, None);
    };
    let Some(Ok(auth)) = serde_json::Deserializer::from_slice(&body[start + KEY.len()..])
        .into_iter::<serde_json::Value>()
        .next()
    else {
        return (false, false, None);
    };
    let passed = auth["spf"]["result"] == "pass"
        && auth["dkim"][0]["result"] == "pass"
        && auth["dmarc"]["result"] == "pass";
    let unchecked = auth["checked"] == false;
    (passed, unchecked, Some(auth))
}

async fn start_receiver(seen: Arc<Mutex<Seen>>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = Arc::clone(&seen);
        async move {
            if let Some(sequence) = sequence_in(&body) {
                let arrived = Instant::now();
                let (passed, unchecked, auth) = auth_verdicts(&body);
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = seen.arrivals.entry(sequence).or_insert((arrived, 0));
                entry.1 += 1;
                seen.auth_passed += usize::from(passed);
                seen.auth_unchecked += usize::from(unchecked);
                if !passed && !unchecked && seen.auth_example.is_none() {
                    seen.auth_example = auth.map(|auth| auth.to_string());
                }
            }
            "ok"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// The sequence number from the `bench-<n>@` Message-ID inside an event body.
fn sequence_in(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("bench-")? + "bench-".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A data directory for one run, removed when the bench exits.
struct ScratchDir(PathBuf);

/// Every run's data, kept until the bench exits. On ext4 without a journal (as on the CI
/// machines) every file created within 30 s of a mass deletion makes the inode allocator check
/// the recently deleted inodes (`recently_deleted` in `find_inode_bit`): removing one run's
/// thousands of files before the next run made that run pay a cost a gateway that keeps its
/// mail never pays, up to a quarter of its CPU.
static KEPT: Mutex<Vec<ScratchDir>> = Mutex::new(Vec::new());

fn keep_until_exit(dir: ScratchDir) {
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(dir);
}

impl ScratchDir {
    fn new() -> anyhow::Result<Self> {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mxhook-bench-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    child: Child,
    smtp: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn start_mxhook(
    binary: &Path,
    dir: &Path,
    receiver: SocketAddr,
    greet_pause: Option<f64>,
    max_connections: usize,
    rspamd_url: Option<&str>,
    sections: &str,
) -> anyhow::Result<Server> {
    let greet = greet_pause
        .map(|pause| format!("greet_pause_s = {pause}\n"))
        .unwrap_or_default();
    let spam = rspamd_url
        .map(|url| format!("[spam]\nrspamd_url = \"{url}\"\n"))
        .unwrap_or_default();
    let smtp = free_addr()?;
    let http = free_addr()?;
    let config = dir.join("mxhook.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"{smtp}\"\nmax_connections = {max_connections}\nmax_connections_per_ip = {max_connections}\n{greet}[http]\nlisten = \"{http}\"\n{sections}[rate_limit]\nsender_hard = 1000000000\nsender_soft = 1000000000\ndomain_hard = 1000000000\ndomain_soft = 1000000000\ninbox_hard = 1000000000\ninbox_soft = 1000000000\n\
{spam}[delivery]\nallow_http = true\nallow_private_targets = true\n\
[[inbox]]\nid = \"agent\"\naddresses = [\"agent@example.com\"]\nwebhook_url = \"http://{receiver}/hook\"\n\
webhook_secret = \"bench-secret\"\n"
        ),
    )?;
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir)
        // MXBENCH_SERVER_LOG lets a profiling run see the server's own logs (e.g.
        // `sqlx::query=debug` for every statement's time).
        .env(
            "RUST_LOG",
            std::env::var("MXBENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        // The first-run banner (stderr) and stdout only with MXBENCH_SERVER_LOG.
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("MXBENCH_SERVER_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server { child, smtp };
    wait_for_smtp(smtp).await?;
    Ok(server)
}

async fn wait_for_smtp(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{addr} never accepted connections")
}

struct SmtpConnection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl SmtpConnection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut connection = Self {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
        };
        connection.expect(220).await?;
        connection.command(b"EHLO bench.example\r\n", 250).await?;
        Ok(connection)
    }

    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).await? == 0 {
                bail!("connection closed");
            }
            let got: u16 = self.line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if self.line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            if got != code {
                bail!("expected {code}, got {}", self.line.trim_end());
            }
            return Ok(());
        }
    }

    async fn command(&mut self, line: &[u8], code: u16) -> anyhow::Result<()> {
        self.writer.write_all(line).await?;
        self.expect(code).await
    }

    /// Sends one transaction (MAIL, RCPT, DATA pipelined) and returns the time from the end of
    /// DATA to the final reply.
    async fn send(&mut self, body: &[u8]) -> anyhow::Result<(Instant, Duration)> {
        self.writer
            .write_all(
                b"MAIL FROM:<sender@bench.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\n",
            )
            .await?;
        self.expect(250).await?;
        self.expect(250).await?;
        self.expect(354).await?;
        self.writer.write_all(body).await?;
        self.writer.write_all(b".\r\n").await?;
        let sent = Instant::now();
        self.expect(250).await?;
        Ok((sent, sent.elapsed()))
    }

    async fn quit(mut self) {
        let _ = self.writer.write_all(b"QUIT\r\n").await;
    }
}

struct RunResult {
    accepted: usize,
    failed: usize,
    elapsed: Duration,
    reply_latencies: Vec<Duration>,
    sent_at: HashMap<usize, Instant>,
}

/// Sends every body once, from `concurrency` clients; client `n` talks to `addrs[n % len]`.
async fn run_load(
    addrs: &[SocketAddr],
    args: &Args,
    bodies: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    reuse: bool,
) -> RunResult {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::new(), HashMap::new(), 0usize)));
    let started = Instant::now();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let addr = addrs[client % addrs.len().max(1)];
        let (bodies, next, results) = (Arc::clone(bodies), Arc::clone(&next), Arc::clone(&results));
        tasks.push(tokio::spawn(async move {
            let mut connection: Option<SmtpConnection> = None;
            loop {
                let sequence = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(sequence) else {
                    break;
                };
                if let Some(interval) = interval {
                    // Open loop: message n is due at start + n × interval, whatever the replies.
                    let due = started + interval.mul_f64(sequence as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut stuffed = Vec::with_capacity(body.len() + 64);
                for line in body.split_inclusive(|b| *b == b'\n') {
                    if line.first() == Some(&b'.') {
                        stuffed.push(b'.');
                    }
                    stuffed.extend_from_slice(line);
                }
                let outcome = async {
                    if connection.is_none() {
                        connection = Some(SmtpConnection::open(addr).await?);
                    }
                    let result = match connection.as_mut() {
                        Some(open) => open.send(&stuffed).await,
                        None => bail!("no connection"),
                    };
                    if !reuse && let Some(open) = connection.take() {
                        open.quit().await;
                    }
                    result
                }
                .await;
                let mut results = results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match outcome {
                    Ok((sent, latency)) => {
                        results.0.push(latency);
                        results.1.insert(sequence, sent);
                    }
                    Err(_) => {
                        results.2 += 1;
                        connection = None;
                    }
                }
            }
            if let Some(open) = connection {
                open.quit().await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let (reply_latencies, sent_at, failed) = std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    RunResult {
        accepted: sent_at.len(),
        failed,
        elapsed,
        reply_latencies,
        sent_at,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// (user+system CPU time, peak RSS in KiB) of a process, from /proc.
fn process_usage(pid: u32) -> (Duration, u64) {
    let ticks_per_second = 100.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((utime + stime) / ticks_per_second))
        })
        .unwrap_or_default();
    let peak_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    (cpu, peak_kib)
}

/// What one run of the gateway measured.
#[derive(Debug, Clone, Default)]
struct Row {
    label: String,
    accepted: usize,
    failed: usize,
    rate: f64,
    reply_p50: f64,
    reply_p99: f64,
    e2e_p50: f64,
    e2e_p99: f64,
    /// The gateway's CPU per accepted message, ms: all its nodes' together.
    cpu_ms: f64,
    /// Each gateway process's CPU per accepted message, ms, one entry per node.
    node_cpu_ms: Vec<f64>,
    peak_mib: u64,
    lost: usize,
    duplicated: usize,
    auth_passed: usize,
    auth_unchecked: usize,
    /// PostgreSQL: CPU per message of this database's backends, and of the server's
    /// background processes (WAL writer, checkpointer, …), ms.
    pg_backend_ms: Option<f64>,
    pg_background_ms: Option<f64>,
    /// PostgreSQL: WAL bytes, committed transactions, and tuples inserted/updated/deleted per
    /// message; connections open at the end.
    pg_wal_bytes: Option<f64>,
    pg_xacts: Option<f64>,
    pg_tuples: Option<[f64; 3]>,
    pg_connections: Option<i64>,
    /// PostgreSQL: growth of the database on disk per message, bytes.
    pg_bytes: Option<f64>,
    pg_sizes: Option<String>,
    /// Top statements from `pg_stat_statements`, when the server has it.
    pg_statements: Option<String>,
    /// The S3 server's CPU per message, ms.
    s3_ms: Option<f64>,
    /// This process's own CPU per message: the load generator and the webhook receiver, ms.
    bench_ms: f64,
    /// The whole machine's busy CPU per message (every process and the kernel), ms, and the
    /// share of all cores that was busy during the run.
    machine_ms: f64,
    machine_busy: f64,
}

impl Row {
    /// The gateway's CPU plus its database's and object store's, per message.
    fn total_cpu_ms(&self) -> f64 {
        self.cpu_ms
            + self.pg_backend_ms.unwrap_or(0.0)
            + self.pg_background_ms.unwrap_or(0.0)
            + self.s3_ms.unwrap_or(0.0)
    }
}

/// The production choices of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Setup {
    postgres: bool,
    s3: bool,
    verify: bool,
}

impl Setup {
    fn label(self) -> String {
        format!(
            "{} {} verify-{}",
            if self.postgres { "postgres" } else { "sqlite" },
            if self.s3 { "s3" } else { "local" },
            if self.verify { "on" } else { "off" }
        )
    }
}

/// What the runs share: the signing key and the DNS server serving its record.
struct Shared {
    dns: Option<infra::Dns>,
    s3_binary: PathBuf,
    s3_cpus: Option<String>,
    /// Names this bench's PostgreSQL databases: its start time and process id, so that two
    /// benches started in the same second (callgrind of two binaries side by side) never share
    /// one, and one's exit never drops the other's.
    run_tag: String,
}

async fn bench_mxhook(
    args: &Args,
    shared: &Shared,
    setup: Setup,
    bodies: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    reuse: bool,
) -> anyhow::Result<Row> {
    static DATABASES: AtomicUsize = AtomicUsize::new(0);
    let dir = ScratchDir::new()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = start_receiver(Arc::clone(&seen)).await?;
    let mut sections = String::new();
    match (&shared.dns, setup.verify) {
        (Some(dns), true) => sections.push_str(&format!(
            "[auth]\nenabled = true\nnameservers = [\"127.0.0.1:{}\"]\ndns_timeout_s = 2\n",
            dns.port
        )),
        (None, true) => bail!("verification on needs the DNS server"),
        (_, false) => sections.push_str("[auth]\nenabled = false\n"),
    }
    let database = if setup.postgres {
        let name = format!(
            "mxbench_{}_{}",
            shared.run_tag,
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let database = infra::PgDatabase::create(&args.pg_url, &name)?;
        sections.push_str(&format!("[database]\nurl = \"{}\"\n", database.url()));
        Some(database)
    } else {
        None
    };
    let s3 = if setup.s3 {
        let root = dir.path().join("s3");
        let s3 = infra::S3Server::start(&shared.s3_binary, &root, shared.s3_cpus.as_deref())?;
        sections.push_str(&s3.storage_toml());
        Some(s3)
    } else {
        None
    };
    if args.nodes > 1 && !setup.postgres {
        bail!("--nodes above 1 needs --database postgres: the nodes share their database");
    }
    let mut servers = Vec::with_capacity(args.nodes);
    for node in 0..args.nodes.max(1) {
        let node_dir = if args.nodes > 1 {
            let node_dir = dir.path().join(format!("node-{node}"));
            std::fs::create_dir_all(&node_dir)?;
            node_dir
        } else {
            dir.path().to_owned()
        };
        servers.push(
            start_mxhook(
                &args.binary,
                &node_dir,
                receiver,
                args.greet_pause,
                2000,
                args.rspamd_url.as_deref(),
                &sections,
            )
            .await?,
        );
    }
    let pids: Vec<u32> = servers.iter().map(|server| server.child.id()).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|server| server.smtp).collect();
    let cpu_before: Vec<Duration> = pids.iter().map(|pid| process_usage(*pid).0).collect();
    let budget_before = Budget::now();
    let s3_before = s3.as_ref().and_then(|s3| infra::cpu_ticks(s3.pid()));
    let pg_before = match &database {
        Some(db) => Some((
            db.process_ticks(),
            db.wal_lsn()?,
            db.activity()?,
            db.size()?,
        )),
        None => None,
    };
    let run = run_load(&addrs, args, bodies, concurrency, reuse).await;

    // Wait for delivery of everything accepted (bounded), then read the counters.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .arrivals
            .len();
        if delivered >= run.accepted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let usage_after: Vec<(Duration, u64)> = pids.iter().map(|pid| process_usage(*pid)).collect();
    let per_message = |ticks: u64| ticks_per_message_ms(ticks, run.accepted);
    let per_message_count = |count: f64| count / run.accepted.max(1) as f64;
    let mut row = Row {
        label: setup.label(),
        ..Row::default()
    };
    (row.bench_ms, row.machine_ms, row.machine_busy) = budget_before.per_message(run.accepted);
    if let (Some(s3), Some(before)) = (&s3, s3_before) {
        row.s3_ms = infra::cpu_ticks(s3.pid()).map(|after| per_message(after - before));
    }
    if let (Some(db), Some((ticks_before, wal_before, _, size_before))) = (&database, &pg_before) {
        let (backends, background) = db.process_ticks().since(ticks_before);
        row.pg_backend_ms = Some(per_message(backends));
        row.pg_background_ms = Some(per_message(background));
        row.pg_wal_bytes = Some(per_message_count((db.wal_lsn()? - wal_before) as f64));
        row.pg_connections = Some(db.connections()?);
        row.pg_bytes = Some(per_message_count((db.size()? - size_before) as f64));
    }
    drop(servers);
    if let (Some(db), Some((_, _, activity_before, _))) = (&database, &pg_before) {
        // Backends flush their statistics when they exit; give them a moment.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let after = db.activity()?;
        row.pg_xacts = Some(per_message_count((after[0] - activity_before[0]) as f64));
        row.pg_tuples =
            Some([1, 2, 3].map(|i| per_message_count((after[i] - activity_before[i]) as f64)));
        row.pg_statements = db.statements(run.accepted);
        row.pg_sizes = match db.sizes() {
            Ok(sizes) => Some(sizes),
            Err(err) => {
                println!("          (no table sizes: {err:#})");
                None
            }
        };
    }
    drop(s3);
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    row.lost = run
        .sent_at
        .keys()
        .filter(|seq| !seen.arrivals.contains_key(seq))
        .count();
    row.duplicated = seen
        .arrivals
        .values()
        .map(|(_, count)| count.saturating_sub(1))
        .sum();
    row.auth_passed = seen.auth_passed;
    row.auth_unchecked = seen.auth_unchecked;
    let mut e2e: Vec<Duration> = run
        .sent_at
        .iter()
        .filter_map(|(seq, sent)| {
            seen.arrivals
                .get(seq)
                .map(|(arrived, _)| arrived.saturating_duration_since(*sent))
        })
        .collect();
    e2e.sort();
    let mut reply = run.reply_latencies.clone();
    reply.sort();
    row.accepted = run.accepted;
    row.failed = run.failed;
    row.rate = run.accepted as f64 / run.elapsed.as_secs_f64();
    row.reply_p50 = ms(percentile(&reply, 0.5));
    row.reply_p99 = ms(percentile(&reply, 0.99));
    row.e2e_p50 = ms(percentile(&e2e, 0.5));
    row.e2e_p99 = ms(percentile(&e2e, 0.99));
    row.node_cpu_ms = usage_after
        .iter()
        .zip(&cpu_before)
        .map(|((after, _), before)| {
            duration_per_message_ms(after.saturating_sub(*before), run.accepted)
        })
        .collect();
    row.cpu_ms = row.node_cpu_ms.iter().sum();
    row.peak_mib = usage_after.iter().map(|(_, peak)| *peak).max().unwrap_or(0) / 1024;
    let mut extra = String::new();
    if setup != Setup::default() {
        extra.push_str(&format!("  [{}]", row.label));
    }
    if setup.verify {
        extra.push_str(&format!("  auth_pass={}", row.auth_passed));
        if let Some(example) = &seen.auth_example {
            extra.push_str(&format!(" (not passed: {example})"));
        }
    }
    if let Some(s3_ms) = row.s3_ms {
        extra.push_str(&format!("  s3_cpu={s3_ms:.3}ms/msg"));
    }
    if row.node_cpu_ms.len() > 1 {
        let each: Vec<String> = row
            .node_cpu_ms
            .iter()
            .map(|cpu| format!("{cpu:.3}"))
            .collect();
        extra.push_str(&format!(
            "  nodes={} (cpu per node {} ms/msg; peak_rss is the largest node's)",
            row.node_cpu_ms.len(),
            each.join(" + ")
        ));
    }
    extra.push_str(&format!(
        "  bench_cpu={:.3}ms/msg machine_cpu={:.3}ms/msg busy={:.0}%",
        row.bench_ms,
        row.machine_ms,
        row.machine_busy * 100.0
    ));
    if let (Some(b), Some(g), Some(w), Some(x), Some(c)) = (
        row.pg_backend_ms,
        row.pg_background_ms,
        row.pg_wal_bytes,
        row.pg_xacts,
        row.pg_connections,
    ) {
        extra.push_str(&format!(
            "  pg_cpu={b:.3}+{g:.3}ms/msg wal={w:.0}B/msg xacts={x:.2}/msg connections={c}"
        ));
    }
    println!(
        "mxhook    c={concurrency:<3} {:<5} accepted={:<6} failed={:<4} {:>8.0} msg/s  reply p50={:>6.2}ms p99={:>7.2}ms  e2e p50={:>7.2}ms p99={:>8.2}ms  cpu={:.3}ms/msg  peak_rss={}MiB  lost={} duplicated={}{extra}",
        if reuse { "reuse" } else { "new" },
        row.accepted,
        row.failed,
        row.rate,
        row.reply_p50,
        row.reply_p99,
        row.e2e_p50,
        row.e2e_p99,
        row.cpu_ms,
        row.peak_mib,
        row.lost,
        row.duplicated,
    );
    if let (Some(sizes), Some(tuples)) = (&row.pg_sizes, row.pg_tuples) {
        println!(
            "          per message {:.2} rows inserted, {:.2} updated, {:.2} deleted, {:.0} bytes more on disk; largest relations (name, kind, bytes, rows):",
            tuples[0],
            tuples[1],
            tuples[2],
            row.pg_bytes.unwrap_or(0.0)
        );
        for line in sizes.lines() {
            println!("            {line}");
        }
    }
    if let Some(statements) = &row.pg_statements {
        println!("          pg_stat_statements, this run's database, by execution time:");
        for line in statements.lines() {
            println!("            {line}");
        }
    }
    keep_until_exit(dir);
    if let Some(db) = database {
        keep_database_until_exit(db);
    }
    Ok(row)
}

/// Databases made by this bench, dropped at exit.
static KEPT_DATABASES: Mutex<Vec<infra::PgDatabase>> = Mutex::new(Vec::new());

fn keep_database_until_exit(database: infra::PgDatabase) {
    KEPT_DATABASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(database);
}

/// What one `smtp-sink` run measured.
#[derive(Debug, Clone, Copy, Default)]
struct SinkRun {
    rate: f64,
    /// smtp-sink's own CPU per message, ms.
    cpu_ms: f64,
    /// As in [`Row`]: the load generator's CPU, and the whole machine's, per message.
    bench_ms: f64,
    machine_ms: f64,
    machine_busy: f64,
}

/// Runs the load against `smtp-sink`.
async fn bench_smtp_sink(
    args: &Args,
    bodies: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    reuse: bool,
) -> anyhow::Result<SinkRun> {
    let addr = free_addr()?;
    let mut command = Command::new("smtp-sink");
    // As root, smtp-sink insists on dropping privileges to a named user.
    if std::env::var("USER").as_deref() == Ok("root")
        || std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
    {
        command.args(["-u", "nobody"]);
    }
    let child = command
        .args([&addr.to_string(), "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting smtp-sink (apt-get install postfix)")?;
    let server = Server { child, smtp: addr };
    wait_for_smtp(server.smtp).await?;
    let (cpu_before, _) = process_usage(server.child.id());
    let budget_before = Budget::now();
    let run = run_load(&[server.smtp], args, bodies, concurrency, reuse).await;
    let (cpu_after, _) = process_usage(server.child.id());
    let (bench_ms, machine_ms, machine_busy) = budget_before.per_message(run.accepted);
    let rate = run.accepted as f64 / run.elapsed.as_secs_f64();
    let cpu_ms = duration_per_message_ms(cpu_after.saturating_sub(cpu_before), run.accepted);
    println!(
        "smtp-sink c={concurrency:<3} {:<5} accepted={:<6} failed={:<4} {:>8.0} msg/s  cpu={cpu_ms:.3}ms/msg  bench_cpu={bench_ms:.3}ms/msg machine_cpu={machine_ms:.3}ms/msg busy={:.0}%",
        if reuse { "reuse" } else { "new" },
        run.accepted,
        run.failed,
        rate,
        machine_busy * 100.0
    );
    Ok(SinkRun {
        rate,
        cpu_ms,
        bench_ms,
        machine_ms,
        machine_busy,
    })
}

/// CPU clock ticks (100 a second) spent over `messages` messages, as ms per message.
fn ticks_per_message_ms(ticks: u64, messages: usize) -> f64 {
    ticks as f64 * 10.0 / messages.max(1) as f64
}

/// CPU time spent over `messages` messages, as ms per message.
fn duration_per_message_ms(spent: Duration, messages: usize) -> f64 {
    spent.as_secs_f64() * 1000.0 / messages.max(1) as f64
}

/// The bench's own CPU and the whole machine's at the start of a run.
struct Budget {
    bench: Option<u64>,
    machine: Option<infra::MachineTicks>,
}

impl Budget {
    fn now() -> Self {
        Self {
            bench: infra::cpu_ticks(std::process::id()),
            machine: infra::MachineTicks::now(),
        }
    }

    /// Since the start: the bench's CPU and the machine's busy CPU per message (ms), and the
    /// busy share of all cores. Zero where `/proc` could not be read.
    fn per_message(&self, messages: usize) -> (f64, f64, f64) {
        let per_message = |ticks: u64| ticks_per_message_ms(ticks, messages);
        let bench = match (self.bench, infra::cpu_ticks(std::process::id())) {
            (Some(before), Some(after)) => per_message(after.saturating_sub(before)),
            _ => 0.0,
        };
        let (machine, busy) = match (self.machine, infra::MachineTicks::now()) {
            (Some(before), Some(after)) => {
                let (ticks, busy) = after.since(&before);
                (per_message(ticks), busy)
            }
            _ => (0.0, 0.0),
        };
        (bench, machine, busy)
    }
}

/// Resident memory of a process now, in KiB.
fn current_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

async fn bench_idle(args: &Args, idle: usize) -> anyhow::Result<()> {
    let dir = ScratchDir::new()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = start_receiver(Arc::clone(&seen)).await?;
    let server = start_mxhook(
        &args.binary,
        dir.path(),
        receiver,
        args.greet_pause,
        idle + 100,
        args.rspamd_url.as_deref(),
        "[auth]\nenabled = false\n",
    )
    .await?;
    let pid = server.child.id();
    // One message first, so the lazily built parts (pools, templates) are in the baseline.
    let mut warm = SmtpConnection::open(server.smtp).await?;
    warm.send(&message(0)).await?;
    warm.quit().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = current_rss_kib(pid);
    let started = Instant::now();
    let mut held = Vec::with_capacity(idle);
    for opened in 0..idle {
        match SmtpConnection::open(server.smtp).await {
            Ok(connection) => held.push(connection),
            Err(err) => bail!("idle connection {opened} failed: {err}"),
        }
    }
    let opening = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = current_rss_kib(pid);
    // Mail must still flow while every idle session is held.
    let mut probe = SmtpConnection::open(server.smtp).await?;
    let (sent, _) = probe.send(&message(1)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let arrived = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .arrivals
            .get(&1)
            .map(|(at, _)| at.saturating_duration_since(sent));
        if let Some(latency) = arrived {
            break Some(latency);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, peak_kib) = process_usage(pid);
    println!(
        "mxhook    idle={idle} opened in {:.1}s  rss before={}MiB after={}MiB ({:.1} KiB/connection)  peak_rss={}MiB  mail while held: {}",
        opening.as_secs_f64(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) as f64 / idle.max(1) as f64,
        peak_kib / 1024,
        match delivered {
            Some(latency) => format!("delivered, e2e {:.1}ms", ms(latency)),
            None => "NOT delivered within 30 s".to_owned(),
        }
    );
    drop(held);
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.matrix && args.greet_pause.is_none() {
        // A new connection per message would wait out the 0.5 s pre-greeting pause each time.
        args.greet_pause = Some(0.0);
    }
    if !args.binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release`",
            args.binary.display()
        );
    }
    if let Some(idle) = args.idle {
        return bench_idle(&args, idle).await;
    }
    let single = Setup {
        postgres: match args.database.as_str() {
            "sqlite" => false,
            "postgres" => true,
            other => bail!("--database takes sqlite or postgres, not {other}"),
        },
        s3: match args.storage.as_str() {
            "local" => false,
            "s3" => true,
            other => bail!("--storage takes local or s3, not {other}"),
        },
        verify: args.verify,
    };
    // The key, the DNS server and the signatures are made before any clock starts: signing is
    // the sender's cost, not the gateway's.
    let scratch = ScratchDir::new()?;
    let signing = args.matrix || args.verify || args.sign;
    let key = if signing {
        Some(infra::DkimKey::generate(scratch.path())?)
    } else {
        None
    };
    let dns = match &key {
        Some(key) => Some(infra::Dns::start(key)?),
        None => None,
    };
    let started = Instant::now();
    let bodies: Vec<Vec<u8>> = (0..args.messages())
        .map(|sequence| match &key {
            Some(key) => key.sign(&message(sequence)),
            None => Ok(message(sequence)),
        })
        .collect::<anyhow::Result<_>>()?;
    let bodies = Arc::new(bodies);
    println!(
        "mxhook-bench: {} messages of {} bytes per run{}, rate {}",
        args.messages(),
        bodies.first().map_or(0, Vec::len),
        if signing {
            format!(
                ", DKIM-signed (RSA-2048, {:.2} ms each, before the runs)",
                started.elapsed().as_secs_f64() * 1000.0 / bodies.len().max(1) as f64
            )
        } else {
            String::new()
        },
        if args.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    let shared = Shared {
        dns,
        s3_binary: args
            .s3_binary
            .clone()
            .unwrap_or_else(|| infra::sibling_binary("mxhook-bench-s3")),
        s3_cpus: args.s3_cpus.clone(),
        run_tag: format!(
            "{}_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_secs())
                .unwrap_or_default(),
            std::process::id()
        ),
    };
    if args.matrix {
        if args.nodes > 1 {
            bail!("--nodes is for single runs, not --matrix");
        }
        matrix::run(&args, &shared, &bodies).await?;
    } else {
        for mode in &args.connections {
            let reuse = match mode.as_str() {
                "new" => false,
                "reuse" => true,
                other => bail!("--connections takes new or reuse, not {other}"),
            };
            for &concurrency in &args.concurrency {
                let row = bench_mxhook(&args, &shared, single, &bodies, concurrency, reuse).await?;
                matrix::append_json(&args, &row, concurrency, reuse, None)?;
                if args.smtp_sink {
                    let sink = bench_smtp_sink(&args, &bodies, concurrency, reuse).await?;
                    println!(
                        "          ratio mxhook/smtp-sink = {:.2}",
                        row.rate / sink.rate
                    );
                }
            }
        }
    }
    let kept = std::mem::take(
        &mut *KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let databases = std::mem::take(
        &mut *KEPT_DATABASES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if args.keep_data {
        for dir in kept {
            println!("kept {}", dir.0.display());
            std::mem::forget(dir);
        }
    }
    // A database is a handful of files, not the thousands a data directory holds, so dropping
    // it does not slow the next run (see `KEPT`); it is inspected through the printed sizes.
    for database in databases {
        if std::env::var_os("MXBENCH_KEEP_DATABASES").is_some() {
            println!("kept database {}", database.url());
        } else {
            database.drop_database();
        }
    }
    Ok(())
}
