//! Batched writes (`db/write/statements.rs`) on the real binary: a group commit of many
//! accepted messages writes each table with one multi-row statement, so the statements per
//! message (each a round trip on PostgreSQL) fall with the batch, and the duplicate decision
//! inside one batch stays what it was when each message went in alone. On PostgreSQL a claim
//! is one statement for its whole batch of jobs, and a group commit's attempt records one
//! statement for all of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::db::WriteLock;
use crate::support::gateway::{API_KEY, config_toml, test_database_url};
use crate::support::process::{Process, free_addr};
use sqlx::{Connection as _, Executor as _};

use crate::support::{
    GatewayOptions, Reply, SmtpClient, WebhookReceiver, api_at, eventually, files_ending_with,
    http_client, simple_message,
};

/// Messages queued behind the blocker, so they commit as one batch.
const QUEUED: usize = 20;

/// Statements per accepted message the committer may spend here. Written alone, a message with
/// a fingerprint and one delivery costs its fingerprint, message and delivery inserts plus its
/// transaction's BEGIN and COMMIT: 5, or 3 each plus 2 per transaction in a batch (measured
/// with one row per statement: 76 for these 23 messages, 3.3 each). Batched, a transaction
/// costs BEGIN, one insert per table, COMMIT, and the second copy's replace-or-refresh: 6 for
/// the blocker (which also prunes old fingerprints, the first time) and 7 for the rest
/// (measured on SQLite: 13, 0.57 each); on PostgreSQL messages and deliveries share one
/// statement, one fewer per transaction (11, 0.48 each). 1.0 leaves room for the batch being
/// split in two or three.
const MAX_STATEMENTS_PER_MESSAGE: f64 = 1.0;

/// See `group_commit.rs`: the CPU-only step from a stored raw file to the committer's queue.
const TO_THE_QUEUE: Duration = Duration::from_millis(300);

/// A session with the whole message sent but for the final dot.
async fn all_but_the_dot(smtp: std::net::SocketAddr, message: &[u8]) -> SmtpClient {
    let mut client = SmtpClient::connect(smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<w@sender.example>", 250).await;
    client.expect("RCPT TO:<agent@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client.send_raw(message).await;
    client
}

async fn until_stored(store: &std::path::Path, count: usize) {
    eventually(&format!("{count} raw files in the store"), || async {
        (files_ending_with(store, &[".eml"]).len() == count).then_some(())
    })
    .await;
}

/// `mxhook_db_statements_total{path="accept"}` from `/metrics`.
async fn accept_statements(http: std::net::SocketAddr) -> u64 {
    statements(http, "accept").await
}

/// `mxhook_db_statements_total{path}` from `/metrics`.
async fn statements(http: std::net::SocketAddr, path: &str) -> u64 {
    let text = http_client()
        .get(format!("http://{http}/metrics"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let prefix = format!("mxhook_db_statements_total{{path=\"{path}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {path} statement count in\n{text}"))
}

/// A blocker holds the committer on the test's lock while 20 messages and two copies of one
/// more queue behind it. Released, they commit together: few statements per message, each
/// message delivered once, and of the two copies exactly the first committed is the original.
#[tokio::test]
async fn a_batch_of_accepted_messages_costs_few_statements_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shm = PathBuf::from("/dev/shm");
    let store_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir_in(dir.path())
    }
    .expect("store tempdir");
    let store = store_dir.path().to_owned();
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.storage_path = Some(store.clone());
    // Every session comes from 127.0.0.1, more of them than the default allows one address.
    options.smtp_toml = "greet_pause_s = 0\nmax_connections_per_ip = 100".to_owned();
    // With the limits off a message's only write on the committer is its own insert.
    options.extra_toml = "[rate_limit]\nsender_soft = 0\nsender_hard = 0\ndomain_soft = 0\n\
                          domain_hard = 0\ninbox_soft = 0\ninbox_hard = 0\n"
        .to_owned();
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let process =
        Process::start_logged(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let database_url = test_database_url(dir.path());
    let before = accept_statements(process.http).await;

    let blocker_message = simple_message("w@sender.example", "agent@example.com", "blocker", "b");
    let mut blocker = all_but_the_dot(process.smtp, &blocker_message).await;
    let mut queued = Vec::new();
    for i in 0..QUEUED {
        let message = simple_message(
            "w@sender.example",
            "agent@example.com",
            &format!("queued {i}"),
            "body",
        );
        queued.push(all_but_the_dot(process.smtp, &message).await);
    }
    // Same bytes, same Message-ID: one fingerprint twice in one batch.
    let twice = simple_message("w@sender.example", "agent@example.com", "twice", "same");
    for _ in 0..2 {
        queued.push(all_but_the_dot(process.smtp, &twice).await);
    }

    let mut lock = WriteLock::hold(&database_url).await;
    blocker.send_raw(b".\r\n").await;
    until_stored(&store, 1).await;
    lock.until_an_insert_waits().await;
    tokio::time::sleep(TO_THE_QUEUE).await;
    for client in &mut queued {
        client.send_raw(b".\r\n").await;
    }
    until_stored(&store, 1 + queued.len()).await;
    tokio::time::sleep(TO_THE_QUEUE).await;
    lock.release().await;

    let (code, text) = blocker.read_reply().await;
    assert_eq!(code, 250, "blocker: {text}");
    for client in &mut queued {
        let (code, text) = client.read_reply().await;
        assert_eq!(code, 250, "{text}");
    }
    let accepted = 1 + queued.len();
    let spent = accept_statements(process.http).await - before;
    let per_message = spent as f64 / accepted as f64;
    eprintln!("{spent} statements for {accepted} accepted messages: {per_message:.2} each");
    assert!(
        per_message <= MAX_STATEMENTS_PER_MESSAGE,
        "{spent} statements for {accepted} messages ({per_message:.2} each)"
    );

    // Every message delivered once; the two copies as one original and one duplicate.
    let mut subjects: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for _ in 0..accepted {
        let event = receiver.recv().await.json();
        let subject = event["subject"].as_str().expect("subject").to_owned();
        let duplicate = event["is_duplicate"].as_bool().expect("is_duplicate");
        subjects.entry(subject).or_default().push(duplicate);
    }
    assert_eq!(subjects.len(), accepted - 1, "{subjects:?}");
    for (subject, flags) in &subjects {
        if subject == "twice" {
            let mut flags = flags.clone();
            flags.sort_unstable();
            assert_eq!(flags, [false, true], "{subject}");
        } else {
            assert_eq!(flags, &[false], "{subject}");
        }
    }
    process.kill_9();
}

/// Messages sent one after the other commit each alone. On PostgreSQL that is one statement:
/// the fingerprint, the message and its delivery in one `WITH`, a transaction of its own
/// (in a transaction it was BEGIN, the fingerprint, the message with its delivery, COMMIT: 4).
/// On SQLite, where a statement is no round trip: BEGIN, the fingerprint, the message, its
/// delivery, COMMIT.
#[tokio::test]
async fn a_message_committed_alone_costs_one_statement_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = "greet_pause_s = 0".to_owned();
    options.extra_toml = "[rate_limit]\nsender_soft = 0\nsender_hard = 0\ndomain_soft = 0\n\
                          domain_hard = 0\ninbox_soft = 0\ninbox_hard = 0\n"
        .to_owned();
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let process =
        Process::start_logged(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let postgres = test_database_url(dir.path()).starts_with("postgres");

    let send = |subject: String| async move {
        let message = simple_message("w@sender.example", "agent@example.com", &subject, "b");
        let mut client = all_but_the_dot(process.smtp, &message).await;
        client.expect(".", 250).await;
    };
    // The first commit also prunes old fingerprints; the count starts after it.
    send("warm-up".to_owned()).await;
    let before = accept_statements(process.http).await;
    let alone = 5;
    for i in 0..alone {
        send(format!("alone {i}")).await;
    }
    let spent = accept_statements(process.http).await - before;
    let expected = if postgres { alone } else { 5 * alone };
    assert_eq!(
        spent, expected,
        "statements for {alone} messages committed alone"
    );
    for _ in 0..=alone {
        let event = receiver.recv().await.json();
        assert_eq!(event["is_duplicate"], false, "{event}");
    }
    process.kill_9();
}

/// Deliveries requeued at once by the claim and attempt test.
const REQUEUED: usize = 30;

/// Claim statements per claimed job the dispatcher may spend on PostgreSQL. One claim takes
/// all 30 (the endpoint's limit is 32): the claim with its read is one statement, and the empty
/// claim after it and the look for the next due job two more: 3, 0.1 each, plus two for each
/// idle poll meanwhile. Through the group committer a claim cost BEGIN, `SET LOCAL`, the
/// update and COMMIT, and the read of the claimed jobs a fifth: 10 for the same two claims,
/// 0.33 each (measured: see BENCHMARKS.md).
const MAX_CLAIM_STATEMENTS_PER_JOB: f64 = 0.25;

/// Attempt statements per attempt record on PostgreSQL. A group commit of records only is one
/// statement for all of them, with no BEGIN and COMMIT around it, and the records here come in
/// two or three batches (measured: 2, 0.07 each); so is a batch of records with other writes. One update and one insert per record, with BEGIN, `SET LOCAL` and COMMIT per
/// batch, made it more than 2 each whatever the batch (measured: 66, 2.2 each).
const MAX_ATTEMPT_STATEMENTS_PER_RECORD: f64 = 0.5;

/// `n` dead deliveries of `agent`, eventually.
async fn until_dead(http: std::net::SocketAddr, n: usize) {
    eventually(&format!("{n} dead deliveries"), || async {
        let (status, body) = api_at(
            http,
            API_KEY,
            "GET",
            "/v1/deliveries?status=dead&inbox_id=agent&limit=1000",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        (body["deliveries"].as_array().map(Vec::len) == Some(n)).then_some(())
    })
    .await;
}

/// Every message sent once failed for good (`max_retries = 0`); recovered together, their jobs
/// are claimed in one batch and their attempt records, held back by the test's lock on
/// `delivery_attempts`, committed in one or two. Each message arrives exactly once more, and on
/// PostgreSQL the claims and the records cost few statements per job.
#[tokio::test]
async fn claims_and_attempt_records_cost_few_statements_per_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = WebhookReceiver::start(vec![Reply::Status(500); REQUEUED]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.max_retries = 0;
    options.smtp_toml = "greet_pause_s = 0".to_owned();
    options.extra_toml = "[rate_limit]\nsender_soft = 0\nsender_hard = 0\ndomain_soft = 0\n\
                          domain_hard = 0\ninbox_soft = 0\ninbox_hard = 0\n"
        .to_owned();
    let config_path = dir.path().join("mxhook.toml");
    std::fs::write(&config_path, config_toml(dir.path(), &options)).expect("write config");
    let process =
        Process::start_logged(dir.path(), Some(&config_path), free_addr(), free_addr()).await;
    let database_url = test_database_url(dir.path());
    let postgres = database_url.starts_with("postgres");

    let mut client = SmtpClient::connect(process.smtp).await;
    for i in 0..REQUEUED {
        let message = simple_message(
            "w@sender.example",
            "agent@example.com",
            &format!("requeued {i}"),
            "body",
        );
        let (code, text) = client
            .send_message("w@sender.example", &["agent@example.com"], &message)
            .await;
        assert_eq!(code, 250, "{text}");
    }
    until_dead(process.http, REQUEUED).await;
    for _ in 0..REQUEUED {
        receiver.recv().await;
    }
    let claims_before = statements(process.http, "claim").await;
    let attempts_before = statements(process.http, "attempt").await;

    // PostgreSQL: attempt records wait on the lock while the rest of them come in. SQLite's
    // lock would hold the claim too; there the records go as they come.
    let mut lock = if postgres {
        let mut conn = sqlx::PgConnection::connect(&database_url)
            .await
            .expect("connect to postgres");
        conn.execute("BEGIN").await.expect("BEGIN");
        conn.execute("LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
            .await
            .expect("lock delivery_attempts");
        Some(conn)
    } else {
        None
    };
    let (status, body) = api_at(
        process.http,
        API_KEY,
        "POST",
        "/v1/inboxes/agent/deliveries/recover",
        Some(serde_json::json!({"since": "2000-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["requeued"], REQUEUED, "{body}");
    let mut arrived = std::collections::BTreeSet::new();
    for _ in 0..REQUEUED {
        let event = receiver.recv().await.json();
        arrived.insert(event["message_id"].as_str().expect("message_id").to_owned());
    }
    assert_eq!(arrived.len(), REQUEUED, "each recovered message once");
    let claim_spent = statements(process.http, "claim").await - claims_before;
    if let Some(mut conn) = lock.take() {
        let locks = database_url_pool(&database_url).await;
        eventually("an attempt record waiting on the lock", || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks \
                 WHERE relation = 'delivery_attempts'::regclass AND NOT granted",
            )
            .fetch_one(&locks)
            .await
            .expect("read pg_locks");
            (waiting > 0).then_some(())
        })
        .await;
        tokio::time::sleep(TO_THE_QUEUE).await;
        conn.execute("ROLLBACK").await.expect("ROLLBACK");
        conn.close().await.expect("close");
    }
    eventually("every recovered delivery delivered", || async {
        let (status, body) = api_at(
            process.http,
            API_KEY,
            "GET",
            "/v1/deliveries?status=delivered&inbox_id=agent&limit=1000",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        (body["deliveries"].as_array().map(Vec::len) == Some(REQUEUED)).then_some(())
    })
    .await;
    let attempt_spent = statements(process.http, "attempt").await - attempts_before;
    receiver.assert_silent(Duration::from_millis(300)).await;

    let per_claimed = claim_spent as f64 / REQUEUED as f64;
    let per_record = attempt_spent as f64 / REQUEUED as f64;
    eprintln!(
        "claims: {claim_spent} statements for {REQUEUED} jobs ({per_claimed:.2} each); \
         attempt records: {attempt_spent} for {REQUEUED} ({per_record:.2} each)"
    );
    if postgres {
        assert!(
            per_claimed <= MAX_CLAIM_STATEMENTS_PER_JOB,
            "{claim_spent} claim statements for {REQUEUED} jobs ({per_claimed:.2} each)"
        );
        assert!(
            per_record <= MAX_ATTEMPT_STATEMENTS_PER_RECORD,
            "{attempt_spent} attempt statements for {REQUEUED} records ({per_record:.2} each)"
        );
    }
    process.kill_9();
}

/// A pool of one connection to read `pg_locks` with.
async fn database_url_pool(database_url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to postgres")
}

/// PostgreSQL keeps the plan of the batch statement, whose text is the same for every batch,
/// and may have made it while the tables were nearly empty; a plan that reads a table whole
/// would then cost more with every row the table gains. Planned as a kept plan is (generic,
/// for any parameters) on empty tables, where reading a table whole looks cheapest, the
/// statement still finds its rows by index.
#[tokio::test]
async fn the_postgres_batch_statement_finds_rows_by_index_even_planned_on_empty_tables() {
    let database_url = crate::support::gateway::postgres_database_url();
    let db = mxhook::db::Db::connect(&mxhook::config::DatabaseConfig {
        url: database_url.clone(),
        ..mxhook::config::DatabaseConfig::default()
    })
    .await
    .expect("connect");
    db.migrate().await.expect("migrate");
    db.close().await;

    let mut conn = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connect");
    let (statement, types) = mxhook::db::postgres_batch_statement();
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("set");
    conn.execute(format!("PREPARE batch ({types}) AS {statement}").as_str())
        .await
        .expect("the statement prepares");
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN EXECUTE batch (0, '[]', '[]', '[]', '', '[]', '[]', 0, '', 1)")
            .fetch_all(&mut conn)
            .await
            .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Cond: (id = ANY"),
        "attempt records find their jobs by primary key:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
