//! `mxhook-bench`: measures the release binary the way users run it. It starts `mxhook serve`
//! on a fresh data directory (SQLite, local store, durable writes on), a webhook receiver on loopback and a
//! real SMTP load generator, then prints accepted messages/s, reply and end-to-end latency,
//! server CPU per message, peak RSS, and lost/duplicated counts. Optionally it runs the same load
//! against Postfix's `smtp-sink` for a ceiling to compare with.
//!
//! This is a measuring tool, not a test: results go to BENCHMARKS.md with the machine and the
//! exact command.

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
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
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
}

async fn start_receiver(seen: Arc<Mutex<Seen>>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = Arc::clone(&seen);
        async move {
            if let Some(sequence) = sequence_in(&body) {
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = seen.arrivals.entry(sequence).or_insert((Instant::now(), 0));
                entry.1 += 1;
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
            "[smtp]\nlisten = \"{smtp}\"\nmax_connections = {max_connections}\nmax_connections_per_ip = {max_connections}\n{greet}[http]\nlisten = \"{http}\"\n[auth]\nenabled = false\n[rate_limit]\nsender_hard = 1000000000\nsender_soft = 1000000000\ndomain_hard = 1000000000\ndomain_soft = 1000000000\ninbox_hard = 1000000000\ninbox_soft = 1000000000\n\
[delivery]\nallow_http = true\nallow_private_targets = true\n\
[[inbox]]\nid = \"agent\"\naddresses = [\"agent@example.com\"]\nwebhook_url = \"http://{receiver}/hook\"\n\
webhook_secret = \"bench-secret\"\n{spam}"
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

async fn run_load(addr: SocketAddr, args: &Args, concurrency: usize, reuse: bool) -> RunResult {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..args.messages).map(message).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::new(), HashMap::new(), 0usize)));
    let started = Instant::now();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next, results) =
            (Arc::clone(&bodies), Arc::clone(&next), Arc::clone(&results));
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

async fn bench_mxhook(args: &Args, concurrency: usize, reuse: bool) -> anyhow::Result<f64> {
    let dir = ScratchDir::new()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = start_receiver(Arc::clone(&seen)).await?;
    let server = start_mxhook(
        &args.binary,
        dir.path(),
        receiver,
        args.greet_pause,
        2000,
        args.rspamd_url.as_deref(),
    )
    .await?;
    let pid = server.child.id();
    let (cpu_before, _) = process_usage(pid);
    let run = run_load(server.smtp, args, concurrency, reuse).await;

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
    let (cpu_after, peak_kib) = process_usage(pid);
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lost = run
        .sent_at
        .keys()
        .filter(|seq| !seen.arrivals.contains_key(seq))
        .count();
    let duplicated: usize = seen
        .arrivals
        .values()
        .map(|(_, count)| count.saturating_sub(1))
        .sum();
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
    let rate = run.accepted as f64 / run.elapsed.as_secs_f64();
    let cpu_per_message =
        (cpu_after.saturating_sub(cpu_before)).as_secs_f64() * 1000.0 / run.accepted.max(1) as f64;
    println!(
        "mxhook    c={concurrency:<3} {:<5} accepted={:<6} failed={:<4} {:>8.0} msg/s  reply p50={:>6.2}ms p99={:>7.2}ms  e2e p50={:>7.2}ms p99={:>8.2}ms  cpu={:.3}ms/msg  peak_rss={}MiB  lost={lost} duplicated={duplicated}",
        if reuse { "reuse" } else { "new" },
        run.accepted,
        run.failed,
        rate,
        ms(percentile(&reply, 0.5)),
        ms(percentile(&reply, 0.99)),
        ms(percentile(&e2e, 0.5)),
        ms(percentile(&e2e, 0.99)),
        cpu_per_message,
        peak_kib / 1024,
    );
    drop(server);
    keep_until_exit(dir);
    Ok(rate)
}

async fn bench_smtp_sink(args: &Args, concurrency: usize, reuse: bool) -> anyhow::Result<f64> {
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
    let run = run_load(server.smtp, args, concurrency, reuse).await;
    let rate = run.accepted as f64 / run.elapsed.as_secs_f64();
    println!(
        "smtp-sink c={concurrency:<3} {:<5} accepted={:<6} failed={:<4} {:>8.0} msg/s",
        if reuse { "reuse" } else { "new" },
        run.accepted,
        run.failed,
        rate
    );
    Ok(rate)
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
    let args = Args::parse();
    if !args.binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release`",
            args.binary.display()
        );
    }
    println!(
        "mxhook-bench: {} messages of {} bytes per run, rate {}",
        args.messages,
        message(0).len(),
        if args.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    if let Some(idle) = args.idle {
        return bench_idle(&args, idle).await;
    }
    for mode in &args.connections {
        let reuse = match mode.as_str() {
            "new" => false,
            "reuse" => true,
            other => bail!("--connections takes new or reuse, not {other}"),
        };
        for &concurrency in &args.concurrency {
            let rate = bench_mxhook(&args, concurrency, reuse).await?;
            if args.smtp_sink {
                let sink = bench_smtp_sink(&args, concurrency, reuse).await?;
                println!("          ratio mxhook/smtp-sink = {:.2}", rate / sink);
            }
        }
    }
    let kept = std::mem::take(
        &mut *KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if args.keep_data {
        for dir in kept {
            println!("kept {}", dir.0.display());
            std::mem::forget(dir);
        }
    }
    Ok(())
}
