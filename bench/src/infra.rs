//! The parts of a production setup the bench starts around the gateway: a dnsmasq serving the
//! sender's SPF, DKIM and DMARC records, the 2048-bit RSA key the load generator signs with, a
//! real S3 server process, and a fresh PostgreSQL database with the readings taken from it
//! (the CPU of its processes from `/proc`, WAL bytes, transactions, table and index sizes).

use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{DkimSigner, Done};

/// The sender's domain in every bench message (`From:`, `MAIL FROM`, `EHLO`).
pub const SENDER_DOMAIN: &str = "bench.example";
pub const SELECTOR: &str = "s1";

/// A child process killed when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The RSA-2048 key the bench's messages are DKIM-signed with, and its DNS record.
pub struct DkimKey {
    signer: DkimSigner<RsaKey<Sha256>, Done>,
    /// `v=DKIM1; k=rsa; p=…`
    pub record: String,
}

impl DkimKey {
    /// A new key from the openssl CLI (PKCS#8 PEM private key, SubjectPublicKeyInfo public key).
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let pem_path = dir.join("dkim.pem");
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem_path)
            .stderr(Stdio::null())
            .status()
            .context("running openssl genpkey")?;
        if !status.success() {
            bail!("openssl genpkey failed");
        }
        let public = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&pem_path)
            .output()
            .context("running openssl pkey")?;
        if !public.status.success() {
            bail!("openssl pkey -pubout failed");
        }
        let pem = std::fs::read_to_string(&pem_path)?;
        // The PEM form is deprecated only in favour of a pki-types key this crate would need
        // another dependency for; it reads the same PKCS#8 bytes.
        #[allow(deprecated)]
        let key = RsaKey::<Sha256>::from_pkcs8_pem(&pem)
            .map_err(|err| anyhow::anyhow!("loading the DKIM key: {err}"))?;
        let record = format!(
            "v=DKIM1; k=rsa; p={}",
            base64::engine::general_purpose::STANDARD.encode(&public.stdout)
        );
        let signer = DkimSigner::from_key(key)
            .domain(SENDER_DOMAIN)
            .selector(SELECTOR)
            .headers([
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "MIME-Version",
                "Content-Type",
            ]);
        Ok(Self { signer, record })
    }

    /// The message with an rsa-sha256 `DKIM-Signature` prepended.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let signature = self
            .signer
            .sign(message)
            .map_err(|err| anyhow::anyhow!("signing: {err}"))?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(message);
        Ok(signed)
    }
}

/// dnsmasq on a loopback port answering the sender domain's TXT records; every other name
/// under it is NXDOMAIN, and there is no upstream.
pub struct Dns {
    pub port: u16,
    _child: Owned,
}

impl Dns {
    pub fn start(key: &DkimKey) -> anyhow::Result<Self> {
        // A TXT record's strings are at most 255 bytes; dnsmasq takes them comma-separated and
        // verifiers join them.
        let dkim_strings: Vec<String> = key
            .record
            .as_bytes()
            .chunks(250)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect();
        let records = [
            (
                SENDER_DOMAIN.to_owned(),
                "v=spf1 ip4:127.0.0.1 -all".to_owned(),
            ),
            (
                format!("{SELECTOR}._domainkey.{SENDER_DOMAIN}"),
                dkim_strings.join(","),
            ),
            (
                format!("_dmarc.{SENDER_DOMAIN}"),
                "v=DMARC1; p=reject".to_owned(),
            ),
        ];
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut command = Command::new("dnsmasq");
            command
                .arg("--keep-in-foreground")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg("--pid-file=")
                // The whole `example` TLD, not only the sender's domain: DMARC also asks for
                // the policy of the domain above it, and an unanswered (refused) query would
                // make that `temperror`.
                .arg("--local=/example/")
                .arg("--local=/example.com/")
                // Records with a TTL as published ones have (dnsmasq's default for its own
                // records is 0, which no cache keeps): the gateway's cache is then warm after
                // the first message, as for a sender that writes often.
                .arg("--local-ttl=300");
            if let Some(log) = std::env::var_os("MXBENCH_DNS_LOG") {
                // Every query dnsmasq answers, to count them per message.
                command
                    .arg("--log-queries")
                    .arg(format!("--log-facility={}", log.to_string_lossy()));
            }
            for (name, text) in &records {
                command.arg(format!("--txt-record={name},{text}"));
            }
            let mut child = Owned(
                command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting dnsmasq (apt-get install dnsmasq-base)")?,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.0.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self {
                        port,
                        _child: child,
                    });
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        bail!("dnsmasq did not start on a loopback port")
    }
}

pub const S3_BUCKET: &str = "bench";
const S3_ACCESS_KEY: &str = "bench-access-key";
const S3_SECRET_KEY: &str = "bench-secret-key";

/// `mxhook-bench-s3` on a loopback port, storing under `root`.
pub struct S3Server {
    pub addr: SocketAddr,
    pub child: Owned,
}

impl S3Server {
    /// With `cpus`, the server runs under `taskset -c <cpus>` (util-linux), which execs it, so
    /// the child's pid is the server's.
    pub fn start(binary: &Path, root: &Path, cpus: Option<&str>) -> anyhow::Result<Self> {
        let mut command = match cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = Owned(
            command
                .arg(root)
                .args([S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
        let stdout = child.0.stdout.take().context("S3 server stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .with_context(|| format!("S3 server said {line:?}"))?;
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The gateway's `[storage]` section for this server (as tests/it/s3_storage.rs sets it).
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\nbucket = \"{S3_BUCKET}\"\nprefix = \"inbound/\"\nendpoint = \"http://{}\"\n\
region = \"us-east-1\"\npath_style = true\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\ntimeout_s = 30\n",
            self.addr
        )
    }
}

/// A process's user+system CPU in clock ticks (100 per second), from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The whole machine's CPU so far, in clock ticks summed over its cores, from the first line of
/// `/proc/stat`: (busy, all). Idle and I/O wait are not busy; everything else is (every process,
/// the kernel, interrupts).
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    busy: u64,
    all: u64,
}

impl MachineTicks {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let all: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some(Self {
            busy: all - idle,
            all,
        })
    }

    /// Busy ticks since `before`, and that as a share of all the cores' ticks.
    pub fn since(&self, before: &Self) -> (u64, f64) {
        let busy = self.busy.saturating_sub(before.busy);
        let all = self.all.saturating_sub(before.all).max(1);
        (busy, busy as f64 / all as f64)
    }
}

/// Runs one statement with psql and returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database made for one run on the PostgreSQL server at `server` (a URL without a database).
pub struct PgDatabase {
    pub server: String,
    pub name: String,
}

impl PgDatabase {
    pub fn create(server: &str, name: &str) -> anyhow::Result<Self> {
        let admin = format!("{server}/postgres");
        psql(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(&admin, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            server: server.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    pub fn drop_database(&self) {
        let _ = psql(
            &format!("{}/postgres", self.server),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }

    /// CPU ticks of every postgres process: those serving this database (backends, by their
    /// process title `postgres: … <user> <database> <client> …`), and the server's own
    /// background processes (postmaster, WAL writer, checkpointer, background writer,
    /// autovacuum), which work for every database on the server.
    pub fn process_ticks(&self) -> PgTicks {
        let mut ticks = PgTicks::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        let own = format!(" {} ", self.name);
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "postgres" {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let Some(cpu) = cpu_ticks(pid) else { continue };
            if title.contains(&own) {
                ticks.backends.insert(pid, cpu);
            } else if !title.contains('(') && !title.contains("[local]") {
                // No client address in the title: a background process, not another
                // database's backend.
                ticks.background.insert(pid, cpu);
            }
        }
        ticks
    }

    /// pg_current_wal_lsn() as a number.
    pub fn wal_lsn(&self) -> anyhow::Result<i64> {
        psql(&self.url(), "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")?
            .parse::<f64>()
            .map(|v| v as i64)
            .context("WAL position")
    }

    /// This database's size on disk, `pg_database_size`.
    pub fn size(&self) -> anyhow::Result<i64> {
        psql(&self.url(), "SELECT pg_database_size(current_database())")?
            .parse()
            .context("database size")
    }

    /// This database's committed transactions and tuple writes from pg_stat_database.
    pub fn activity(&self) -> anyhow::Result<[i64; 4]> {
        let row = psql(
            &format!("{}/postgres", self.server),
            &format!(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = '{}'",
                self.name
            ),
        )?;
        let values: Vec<i64> = row.split('|').filter_map(|v| v.parse().ok()).collect();
        match values.as_slice() {
            [a, b, c, d] => Ok([*a, *b, *c, *d]),
            _ => bail!("pg_stat_database gave {row:?}"),
        }
    }

    /// Connections open to this database now.
    pub fn connections(&self) -> anyhow::Result<i64> {
        psql(
            &format!("{}/postgres", self.server),
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
        )?
        .parse()
        .context("connection count")
    }

    /// This database's statements by execution time, when the server has `pg_stat_statements`
    /// loaded (`shared_preload_libraries`; the extension is made in the `postgres` database):
    /// per statement its calls and execution time per message, and the first of its text.
    /// `None` when the server has no such view, so the bench still runs on a plain server.
    pub fn statements(&self, messages: usize) -> Option<String> {
        let admin = format!("{}/postgres", self.server);
        let messages = messages.max(1);
        let rows = psql(
            &admin,
            &format!(
                "SELECT calls || '|' || total_exec_time || '|' || total_plan_time || '|' || rows || '|' || \
regexp_replace(left(query, 110), '\\s+', ' ', 'g') FROM pg_stat_statements s \
JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{}' ORDER BY total_exec_time + total_plan_time DESC LIMIT 12",
                self.name
            ),
        )
        .ok()?;
        let mut out = String::new();
        let (mut calls_total, mut ms_total, mut plan_total) = (0.0, 0.0, 0.0);
        for line in rows.lines() {
            let mut fields = line.splitn(5, '|');
            let (Some(calls), Some(ms), Some(plan_ms), Some(rows), Some(text)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let calls: f64 = calls.parse().unwrap_or(0.0);
            let ms: f64 = ms.parse().unwrap_or(0.0);
            let plan_ms: f64 = plan_ms.parse().unwrap_or(0.0);
            let rows: f64 = rows.parse().unwrap_or(0.0);
            calls_total += calls;
            ms_total += ms;
            plan_total += plan_ms;
            out.push_str(&format!(
                "{:.3} calls {:.4} ms exec {:.4} ms plan {:.2} rows per message: {text}\n",
                calls / messages as f64,
                ms / messages as f64,
                plan_ms / messages as f64,
                rows / messages as f64,
            ));
        }
        (!out.is_empty()).then(|| {
            format!(
                "{out}the {} statements above: {:.3} calls, {:.4} ms of execution and {:.4} ms of \
                 planning per message (planning is 0 unless pg_stat_statements.track_planning is on)",
                rows.lines().count(),
                calls_total / messages as f64,
                ms_total / messages as f64,
                plan_total / messages as f64
            )
        })
    }

    /// The largest tables and indexes (name, kind, bytes, rows after ANALYZE), then each
    /// table's row writes: inserts, updates (how many were HOT, i.e. rewrote no index), deletes
    /// and dead rows left for vacuum.
    pub fn sizes(&self) -> anyhow::Result<String> {
        psql(&self.url(), "ANALYZE")?;
        psql(
            &self.url(),
            "SELECT c.relname || ' ' || c.relkind::text || ' ' || pg_relation_size(c.oid) || ' ' || c.reltuples::bigint \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') \
ORDER BY pg_relation_size(c.oid) DESC LIMIT 12",
        )
        .and_then(|sizes| {
            let churn = psql(
                &self.url(),
                "SELECT 'table ' || relname || ': inserted ' || n_tup_ins || ', updated ' || n_tup_upd || ' (HOT ' || n_tup_hot_upd || '), deleted ' || n_tup_del || ', dead ' || n_dead_tup \
FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_ins + n_tup_upd DESC LIMIT 8",
            )?;
            Ok(format!("{sizes}\n{churn}"))
        })
    }
}

/// CPU ticks per postgres process at one moment.
#[derive(Default)]
pub struct PgTicks {
    pub backends: HashMap<u32, u64>,
    pub background: HashMap<u32, u64>,
}

impl PgTicks {
    /// Ticks spent since `before` (processes that started since count whole).
    pub fn since(&self, before: &Self) -> (u64, u64) {
        let delta = |now: &HashMap<u32, u64>, then: &HashMap<u32, u64>| -> u64 {
            now.iter()
                .map(|(pid, ticks)| ticks.saturating_sub(then.get(pid).copied().unwrap_or(0)))
                .sum()
        };
        (
            delta(&self.backends, &before.backends),
            delta(&self.background, &before.background),
        )
    }
}

/// The S3 server binary built next to this bench binary.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
