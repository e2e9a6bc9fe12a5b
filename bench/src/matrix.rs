//! `--matrix`: the choices a user makes, measured under one load in one run. Each round runs
//! `smtp-sink`, then the gateway on {SQLite, PostgreSQL} × {local store, S3} × {verification
//! off, on} (the two databases back to back for each choice, so a drift of the machine's speed
//! falls on both alike), then `smtp-sink` again; ratios are to the mean of the two `smtp-sink`
//! runs. At the end it prints every row as a Markdown table and the targets against
//! them.

use std::io::Write as _;
use std::sync::Arc;

use crate::{Args, Row, Setup, Shared, bench_mxhook, bench_smtp_sink};

/// The load of every matrix run: a new connection per message, 32 at once.
const CONCURRENCY: usize = 32;
const REUSE: bool = false;

/// The order of a round.
const SETUPS: [Setup; 8] = {
    const fn setup(postgres: bool, s3: bool, verify: bool) -> Setup {
        Setup {
            postgres,
            s3,
            verify,
        }
    }
    [
        setup(false, false, false),
        setup(true, false, false),
        setup(false, false, true),
        setup(true, false, true),
        setup(false, true, false),
        setup(true, true, false),
        setup(false, true, true),
        setup(true, true, true),
    ]
};

struct Round {
    sink_rate: f64,
    sink_cpu_ms: f64,
    /// The whole machine's busy CPU per message in the `smtp-sink` runs (ms) and its share of
    /// the cores, the means of the round's two.
    sink_machine_ms: f64,
    sink_busy: f64,
    /// The load generator's own CPU per message in those runs, ms.
    sink_bench_ms: f64,
    rows: Vec<(Setup, Row)>,
}

impl Round {
    fn row(&self, postgres: bool, s3: bool, verify: bool) -> Option<&Row> {
        let wanted = Setup {
            postgres,
            s3,
            verify,
        };
        self.rows
            .iter()
            .find(|(setup, _)| *setup == wanted)
            .map(|(_, row)| row)
    }
}

pub async fn run(args: &Args, shared: &Shared, bodies: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<()> {
    let mut rounds = Vec::new();
    for round in 0..args.rounds.max(1) {
        println!(
            "round {} of {}: load average {}",
            round + 1,
            args.rounds.max(1),
            load_average()
        );
        let first = bench_smtp_sink(args, bodies, CONCURRENCY, REUSE).await?;
        let mut rows = Vec::new();
        for setup in SETUPS {
            let row = bench_mxhook(args, shared, setup, bodies, CONCURRENCY, REUSE).await?;
            rows.push((setup, row));
        }
        let last = bench_smtp_sink(args, bodies, CONCURRENCY, REUSE).await?;
        let current = Round {
            sink_rate: (first.rate + last.rate) / 2.0,
            sink_cpu_ms: (first.cpu_ms + last.cpu_ms) / 2.0,
            sink_machine_ms: (first.machine_ms + last.machine_ms) / 2.0,
            sink_busy: (first.machine_busy + last.machine_busy) / 2.0,
            sink_bench_ms: (first.bench_ms + last.bench_ms) / 2.0,
            rows,
        };
        for (_, row) in &current.rows {
            append_json(args, row, CONCURRENCY, REUSE, Some(current.sink_rate))?;
        }
        print_round(round + 1, &current, args.messages());
        rounds.push(current);
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|line| {
            line.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

fn print_round(number: usize, round: &Round, messages: usize) {
    println!();
    println!(
        "Round {number}: {messages} messages per run, c={CONCURRENCY}, a new connection per message; smtp-sink {:.0} msg/s ({:.3} ms CPU per message, the load generator {:.3} ms; the whole machine {:.3} ms per message, {:.0} % of its cores busy), mean of the round's first and last run",
        round.sink_rate,
        round.sink_cpu_ms,
        round.sink_bench_ms,
        round.sink_machine_ms,
        round.sink_busy * 100.0
    );
    println!();
    println!(
        "| database | store | verification | msg/s | ratio to smtp-sink | mxhook CPU/msg | PostgreSQL CPU/msg (backends + background) | S3 server CPU/msg | total CPU/msg | bench CPU/msg | machine CPU/msg (cores busy) | reply p50 / p99 | e2e p50 / p99 | peak RSS | lost / dup | SPF+DKIM+DMARC pass | WAL/msg | transactions/msg | PG connections |"
    );
    println!(
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (setup, row) in &round.rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.3} ms | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms ({:.0} %) | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {} MiB | {} / {} | {} | {} | {} | {} |",
            if setup.postgres {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            if setup.s3 { "S3" } else { "local" },
            if setup.verify { "on" } else { "off" },
            row.rate,
            row.rate / round.sink_rate,
            row.cpu_ms,
            match (row.pg_backend_ms, row.pg_background_ms) {
                (Some(b), Some(g)) => format!("{b:.3} + {g:.3} ms"),
                _ => "—".to_owned(),
            },
            row.s3_ms
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.3} ms")),
            row.total_cpu_ms(),
            row.bench_ms,
            row.machine_ms,
            row.machine_busy * 100.0,
            row.reply_p50,
            row.reply_p99,
            row.e2e_p50,
            row.e2e_p99,
            row.peak_mib,
            row.lost,
            row.duplicated,
            if setup.verify {
                format!("{}/{}", row.auth_passed, row.accepted)
            } else {
                format!("off ({} unchecked)", row.auth_unchecked)
            },
            row.pg_wal_bytes
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.0} B")),
            optional(row.pg_xacts, 2),
            row.pg_connections
                .map_or_else(|| "—".to_owned(), |v| v.to_string()),
        );
    }
    println!();
    print_targets(round);
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_targets(round: &Round) {
    println!("Targets (issue 23), this round:");
    for s3 in [false, true] {
        for verify in [false, true] {
            let (Some(sqlite), Some(postgres)) =
                (round.row(false, s3, verify), round.row(true, s3, verify))
            else {
                continue;
            };
            let where_ = format!(
                "{}, verification {}",
                if s3 { "S3" } else { "local store" },
                if verify { "on" } else { "off" }
            );
            let rate = postgres.rate / sqlite.rate;
            println!(
                "- PostgreSQL rate ≥ 0.8× SQLite's ({where_}): {rate:.2}× — {}",
                verdict(rate >= 0.8)
            );
            // The PostgreSQL side's CPU is the gateway's plus the database's; the S3 server's
            // is left out of both sides, which pay it alike.
            let pg_cpu = postgres.cpu_ms
                + postgres.pg_backend_ms.unwrap_or(0.0)
                + postgres.pg_background_ms.unwrap_or(0.0);
            let cpu = pg_cpu / sqlite.cpu_ms;
            println!(
                "- CPU per message mxhook+PostgreSQL ≤ 1.5× mxhook on SQLite ({where_}): {pg_cpu:.3} against {:.3} ms = {cpu:.2}× — {}",
                sqlite.cpu_ms,
                verdict(cpu <= 1.5)
            );
        }
    }
    if let Some(sqlite) = round.row(false, false, false) {
        let ratio = sqlite.rate / round.sink_rate;
        println!(
            "- SQLite, local, c=32 new connections ≥ 0.5× smtp-sink: {ratio:.2}× — {}",
            verdict(ratio >= 0.5)
        );
        println!(
            "  (the whole machine per message: {:.3} ms against smtp-sink's {:.3} ms, {:.0} % and {:.0} % of the cores busy; at equal load 0.5× would need at most {:.3} ms)",
            sqlite.machine_ms,
            round.sink_machine_ms,
            sqlite.machine_busy * 100.0,
            round.sink_busy * 100.0,
            2.0 * round.sink_machine_ms
        );
        println!(
            "- server CPU ≤ 0.4 ms per message (SQLite, local, verification off): {:.3} ms — {}",
            sqlite.cpu_ms,
            verdict(sqlite.cpu_ms <= 0.4)
        );
    }
    for postgres in [false, true] {
        for s3 in [false, true] {
            if let (Some(off), Some(on)) = (
                round.row(postgres, s3, false),
                round.row(postgres, s3, true),
            ) {
                let added = on.cpu_ms - off.cpu_ms;
                println!(
                    "- verification on ≤ +0.15 ms per message ({}, {}): {added:+.3} ms — {}",
                    if postgres { "PostgreSQL" } else { "SQLite" },
                    if s3 { "S3" } else { "local store" },
                    verdict(added <= 0.15)
                );
            }
        }
    }
    for postgres in [false, true] {
        for verify in [false, true] {
            if let (Some(local), Some(s3)) = (
                round.row(postgres, false, verify),
                round.row(postgres, true, verify),
            ) {
                let ratio = s3.rate / local.rate;
                println!(
                    "- S3 ≥ 0.8× local ({}, verification {}): {ratio:.2}× — {}",
                    if postgres { "PostgreSQL" } else { "SQLite" },
                    if verify { "on" } else { "off" },
                    verdict(ratio >= 0.8)
                );
            }
        }
    }
    println!();
}

/// One JSON object per run, appended to `--json`.
pub fn append_json(
    args: &Args,
    row: &Row,
    concurrency: usize,
    reuse: bool,
    sink_rate: Option<f64>,
) -> anyhow::Result<()> {
    let Some(path) = &args.json else {
        return Ok(());
    };
    let object = serde_json::json!({
        "setup": row.label,
        "messages": args.messages(),
        "concurrency": concurrency,
        "connections": if reuse { "reuse" } else { "new" },
        "accepted": row.accepted,
        "failed": row.failed,
        "msgs_per_s": row.rate,
        "smtp_sink_msgs_per_s": sink_rate,
        "reply_p50_ms": row.reply_p50,
        "reply_p99_ms": row.reply_p99,
        "e2e_p50_ms": row.e2e_p50,
        "e2e_p99_ms": row.e2e_p99,
        "cpu_ms_per_msg": row.cpu_ms,
        "nodes": row.node_cpu_ms.len(),
        "node_cpu_ms_per_msg": row.node_cpu_ms,
        "pg_backend_cpu_ms_per_msg": row.pg_backend_ms,
        "pg_background_cpu_ms_per_msg": row.pg_background_ms,
        "s3_cpu_ms_per_msg": row.s3_ms,
        "bench_cpu_ms_per_msg": row.bench_ms,
        "machine_cpu_ms_per_msg": row.machine_ms,
        "machine_busy": row.machine_busy,
        "pg_wal_bytes_per_msg": row.pg_wal_bytes,
        "pg_xacts_per_msg": row.pg_xacts,
        "pg_tuples_per_msg": row.pg_tuples,
        "pg_connections": row.pg_connections,
        "pg_bytes_per_msg": row.pg_bytes,
        "peak_rss_mib": row.peak_mib,
        "lost": row.lost,
        "duplicated": row.duplicated,
        "auth_passed": row.auth_passed,
        "load_average": load_average(),
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{object}")?;
    Ok(())
}
