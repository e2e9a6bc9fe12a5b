//! Secrets at rest (`[secrets] key`): what a database dump holds of the signing secrets, that
//! deliveries and provider requests still verify with the secrets as given, that a gateway
//! without the key refuses to start, and `mxhook rotate-secrets-key` run beside a running
//! gateway, over plaintext values from before encryption and from one key to the next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::gateway::config_toml;
use crate::support::ingress::{calcom_booking, hmac_hex, post_calcom};
use crate::support::{GatewayOptions, Received, TestGateway, WebhookReceiver};

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];
const TEMPLATE_SECRET: &str = "template-secret-e5f1";
const INGRESS_SECRET: &str = "calcom-secret-9d2c";

fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn id_of(key: &[u8; 32]) -> String {
    mxhook::secrets::key_id(key)
}

/// The `[secrets]` section with `key` and `previous`.
fn secrets_toml(key: Option<&[u8; 32]>, previous: &[&[u8; 32]]) -> String {
    let Some(key) = key else {
        return String::new();
    };
    let previous: Vec<String> = previous
        .iter()
        .map(|key| format!("\"{}\"", b64(key)))
        .collect();
    format!(
        "[secrets]\nkey = \"{}\"\nprevious_keys = [{}]\n",
        b64(key),
        previous.join(", ")
    )
}

/// The test gateway's config on `data` (its database and store), with `secrets`.
fn toml(data: &Path, receiver: &WebhookReceiver, secrets: &str) -> String {
    let mut options = GatewayOptions::webhook(receiver.url());
    options.other_toml = "calendar_event_types = [\"calcom:42\"]\n".to_owned();
    options.extra_toml = format!(
        r#"
[[domain]]
name = "agents.example"
auto_create = true
[domain.template]
webhook_url = "{hook}"
webhook_secret = "{TEMPLATE_SECRET}"
{secrets}"#,
        hook = receiver.url()
    );
    config_toml(data, &options)
}

async fn start(toml: &str) -> TestGateway {
    let config = mxhook::config::Config::from_toml_str(toml).expect("config");
    TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config).await
}

/// What a start with this config failed with (it must fail, and soon).
async fn start_error(toml: &str) -> String {
    let config = mxhook::config::Config::from_toml_str(toml).expect("config");
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        mxhook::app::run_with_listeners(config, smtp, http, std::future::pending()),
    )
    .await
    .expect("the start ends");
    format!("{:#}", outcome.expect_err("the start fails"))
}

fn database_url(toml: &str) -> String {
    mxhook::config::Config::from_toml_str(toml)
        .expect("config")
        .database
        .url
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.expect("connect")
}

/// Every stored value of the secret columns, by place.
async fn stored_secrets(url: &str) -> Vec<(String, String)> {
    let pool = pool(url).await;
    let mut values = Vec::new();
    for (place, sql) in [
        (
            "inbox",
            "SELECT webhook_secret FROM inboxes WHERE webhook_secret IS NOT NULL",
        ),
        (
            "inbox previous",
            "SELECT webhook_previous_secret FROM inboxes WHERE webhook_previous_secret IS NOT NULL",
        ),
        ("ingress", "SELECT secret FROM ingress_secrets"),
        (
            "ingress previous",
            "SELECT previous_secret FROM ingress_secrets WHERE previous_secret IS NOT NULL",
        ),
        ("gateway key", "SELECT secret FROM gateway_keys"),
        (
            "gateway key previous",
            "SELECT previous_secret FROM gateway_keys WHERE previous_secret IS NOT NULL",
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&pool)
            .await
            .expect("select");
        values.extend(rows.into_iter().map(|value| (place.to_owned(), value)));
    }
    let templates: Vec<String> = sqlx::query_scalar("SELECT template_json FROM domains")
        .fetch_all(&pool)
        .await
        .expect("select");
    for template in templates {
        let template: Value = serde_json::from_str(&template).expect("json");
        values.push((
            "domain template".to_owned(),
            template["webhook_secret"]
                .as_str()
                .expect("a template secret")
                .to_owned(),
        ));
    }
    pool.close().await;
    values
}

/// Every stored secret is encrypted under `key`.
async fn assert_all_under(url: &str, key: &[u8; 32]) {
    let prefix = format!("enc:v1:{}:", id_of(key));
    let stored = stored_secrets(url).await;
    assert!(stored.len() >= 5, "{stored:?}");
    for (place, value) in stored {
        assert!(value.starts_with(&prefix), "{place}: {value}");
    }
}

/// The whole database as bytes: the SQLite file with its WAL, or a `pg_dump` of the database.
fn raw_database(url: &str) -> Vec<u8> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-journal"] {
            if let Ok(file) = std::fs::read(format!("{path}{suffix}")) {
                bytes.extend(file);
            }
        }
        assert!(!bytes.is_empty(), "no database file at {path}");
        bytes
    } else {
        let output = std::process::Command::new("pg_dump")
            .args(["--data-only", url])
            .output()
            .expect("pg_dump runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Whether an AgentMail-signed delivery verifies with `secret`.
fn verifies(secret: &str, got: &Received) -> bool {
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    let expected = format!(
        "v1={}",
        hmac_hex(secret, &[timestamp.as_bytes(), b".", &got.body])
    );
    signature.split(' ').any(|candidate| candidate == expected)
}

/// Creates inbox `hooked` with a webhook to `receiver`: the signing secret the API shows once.
async fn hooked_inbox(gateway: &TestGateway, receiver: &WebhookReceiver) -> String {
    let (status, body) = gateway
        .api(
            "POST",
            "/v1/inboxes",
            Some(json!({"id": "hooked", "addresses": ["hooked@example.com"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/inboxes/hooked/webhook",
            Some(json!({"url": receiver.url(), "enabled": true, "rotate_secret": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, reply) = gateway
        .api(
            "PUT",
            "/v1/inboxes/other/ingress/calcom",
            Some(json!({ "secret": INGRESS_SECRET })),
        )
        .await;
    assert!(status < 300, "{status} {reply}");
    body["signing_secret"]
        .as_str()
        .expect("the secret on first setup")
        .to_owned()
}

/// Mail to `to` arrives signed with `secret`.
async fn delivered_verifies(
    gateway: &TestGateway,
    receiver: &mut WebhookReceiver,
    to: &str,
    subject: &str,
    secret: &str,
) {
    gateway.send_simple(to, subject, "a@sender.example").await;
    let got = receiver.recv().await;
    assert_eq!(got.json()["subject"], subject, "{}", got.json());
    assert!(verifies(secret, &got), "{subject} to {to} verifies");
    assert!(!verifies("another-secret", &got));
}

/// A Cal.com booking signed with the inbox's ingress secret is taken, and reaches the `other`
/// inbox's webhook signed with its config secret; a forged one is not taken.
async fn ingress_verifies(gateway: &TestGateway, receiver: &mut WebhookReceiver, uid: &str) {
    let created = chrono::Utc::now().to_rfc3339();
    let booking = calcom_booking("BOOKING_CREATED", 42, uid, &created);
    let (status, _) = post_calcom(gateway, "forged-secret", booking.clone()).await;
    assert_eq!(status, 401, "a forged booking");
    let (status, reply) = post_calcom(gateway, INGRESS_SECRET, booking).await;
    assert_eq!(status, 200, "{reply}");
    let got = receiver.recv().await;
    assert_eq!(got.json()["booking"]["uid"], uid, "{}", got.json());
    assert!(verifies(crate::support::gateway::SECRET, &got));
}

/// `mxhook rotate-secrets-key` with this config file and env: its exit and its JSON report.
async fn rotate(config: &Path, env: &[(&str, String)]) -> (bool, Value, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .arg("rotate-secrets-key")
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("mxhook runs");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (
        output.status.success(),
        report,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn count(report: &Value, field: &str) -> u64 {
    report["places"]
        .as_object()
        .expect("places")
        .values()
        .map(|counts| counts[field].as_u64().expect("a count"))
        .sum()
}

#[tokio::test]
async fn with_a_key_no_secret_is_stored_in_plaintext_and_deliveries_still_verify() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let with_key = toml(data.path(), &receiver, &secrets_toml(Some(&KEY_A), &[]));
    let url = database_url(&with_key);
    let gateway = start(&with_key).await;
    let signing_secret = hooked_inbox(&gateway, &receiver).await;

    delivered_verifies(
        &gateway,
        &mut receiver,
        "hooked@example.com",
        "api inbox",
        &signing_secret,
    )
    .await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "agent@example.com",
        "config inbox",
        crate::support::gateway::SECRET,
    )
    .await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "bob@agents.example",
        "auto-created inbox",
        TEMPLATE_SECRET,
    )
    .await;
    ingress_verifies(&gateway, &mut receiver, "bk_enc").await;
    // The attachment-URL key (made at start) is a secret of the same kind, its previous too.
    let (status, body) = gateway
        .api("POST", "/v1/attachments/url-key/rotate", None)
        .await;
    assert_eq!(status, 204, "{body}");

    assert_all_under(&url, &KEY_A).await;
    let dump = raw_database(&url);
    for secret in [
        signing_secret.as_str(),
        crate::support::gateway::SECRET,
        TEMPLATE_SECRET,
        INGRESS_SECRET,
    ] {
        assert!(
            !contains(&dump, secret),
            "`{secret}` is in the database dump"
        );
    }
    gateway.stop().await;

    // Without the key the gateway does not start, and says which key it needs.
    let error = start_error(&toml(data.path(), &receiver, "")).await;
    assert!(error.contains("secrets.key"), "{error}");
    assert!(error.contains(&id_of(&KEY_A)), "{error}");
    // Nor with another key.
    let error = start_error(&toml(
        data.path(),
        &receiver,
        &secrets_toml(Some(&KEY_B), &[]),
    ))
    .await;
    assert!(error.contains(&id_of(&KEY_A)), "{error}");

    // With it again, everything still verifies.
    let gateway = start(&with_key).await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "hooked@example.com",
        "after the restart",
        &signing_secret,
    )
    .await;
    ingress_verifies(&gateway, &mut receiver, "bk_enc_2").await;
    gateway.stop().await;

    // A value copied into another row does not decrypt: `bob` is not made to sign with
    // `hooked`'s secret, the start fails instead.
    let db = pool(&url).await;
    let moved = sqlx::query(
        "UPDATE inboxes SET webhook_secret = \
         (SELECT webhook_secret FROM inboxes WHERE id = 'hooked') WHERE id = 'bob'",
    )
    .execute(&db)
    .await
    .expect("update");
    assert_eq!(moved.rows_affected(), 1);
    db.close().await;
    let error = start_error(&with_key).await;
    assert!(error.contains("moved from another row"), "{error}");
}

#[tokio::test]
async fn plaintext_secrets_are_encrypted_and_keys_rotated_while_the_gateway_runs() {
    let mut receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    let plain = toml(data.path(), &receiver, "");
    let url = database_url(&plain);

    // Before encryption: everything is stored as given.
    let gateway = start(&plain).await;
    let signing_secret = hooked_inbox(&gateway, &receiver).await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "bob@agents.example",
        "made before encryption",
        TEMPLATE_SECRET,
    )
    .await;
    let stored = stored_secrets(&url).await;
    assert!(
        stored.iter().any(|(_, value)| *value == signing_secret),
        "{stored:?}"
    );
    assert!(stored.iter().any(|(_, value)| value == INGRESS_SECRET));
    gateway.stop().await;

    // With a key, the plaintext values still read; the command encrypts them beside the
    // running gateway. The key comes from the environment here.
    let config_file = data.path().join("mxhook.toml");
    std::fs::write(&config_file, &plain).expect("write config");
    let key_a_env = [("MXHOOK_SECRETS__KEY", b64(&KEY_A))];
    let with_a = toml(data.path(), &receiver, &secrets_toml(Some(&KEY_A), &[]));
    let gateway = start(&with_a).await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "hooked@example.com",
        "legacy plaintext",
        &signing_secret,
    )
    .await;
    let (ok, report, stderr) = rotate(&config_file, &key_a_env).await;
    assert!(ok, "{stderr}");
    assert_eq!(report["key_id"], id_of(&KEY_A), "{report}");
    assert!(count(&report, "encrypted") >= 3, "{report}");
    assert_eq!(count(&report, "changed_meanwhile"), 0, "{report}");
    assert_all_under(&url, &KEY_A).await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "hooked@example.com",
        "encrypted by the command",
        &signing_secret,
    )
    .await;
    ingress_verifies(&gateway, &mut receiver, "bk_a").await;
    gateway.stop().await;

    // Rotation: every node gets key B with A as previous; the command runs while mail flows.
    let b_then_a = toml(
        data.path(),
        &receiver,
        &secrets_toml(Some(&KEY_B), &[&KEY_A]),
    );
    let config_b = data.path().join("rotate-b.toml");
    std::fs::write(&config_b, &b_then_a).expect("write config");
    let gateway = start(&b_then_a).await;
    let mail = async {
        for n in 0..5 {
            gateway
                .send_simple(
                    "hooked@example.com",
                    &format!("during {n}"),
                    "a@sender.example",
                )
                .await;
        }
    };
    let ((ok, report, stderr), ()) = tokio::join!(rotate(&config_b, &[]), mail);
    assert!(ok, "{stderr}");
    assert_eq!(report["key_id"], id_of(&KEY_B), "{report}");
    assert!(count(&report, "reencrypted") >= 3, "{report}");
    for _ in 0..5 {
        let got = receiver.recv().await;
        assert!(verifies(&signing_secret, &got), "{}", got.json());
    }
    assert_all_under(&url, &KEY_B).await;
    // Idempotent: a second run finds everything under B.
    let (ok, again, stderr) = rotate(&config_b, &[]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        count(&again, "reencrypted") + count(&again, "encrypted"),
        0,
        "{again}"
    );
    assert!(count(&again, "unchanged") >= 3, "{again}");
    gateway.stop().await;

    // Key A dropped: still works.
    let only_b = toml(data.path(), &receiver, &secrets_toml(Some(&KEY_B), &[]));
    let gateway = start(&only_b).await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "hooked@example.com",
        "key A dropped",
        &signing_secret,
    )
    .await;
    delivered_verifies(
        &gateway,
        &mut receiver,
        "bob@agents.example",
        "template secret under B",
        TEMPLATE_SECRET,
    )
    .await;
    ingress_verifies(&gateway, &mut receiver, "bk_b").await;
    gateway.stop().await;

    // Only A, after everything moved to B: refused, naming B.
    let error = start_error(&toml(
        data.path(),
        &receiver,
        &secrets_toml(Some(&KEY_A), &[]),
    ))
    .await;
    assert!(error.contains(&id_of(&KEY_B)), "{error}");
    assert!(error.contains("secrets.key"), "{error}");
}

#[tokio::test]
async fn the_key_is_validated_and_the_command_needs_one() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let data = tempfile::tempdir().expect("tempdir");
    for (bad, key) in [
        ("[secrets]\nkey = \"c2hvcnQ=\"\n", "secrets.key"),
        (
            &*format!(
                "[secrets]\nkey = \"{}\"\nprevious_keys = [\"zz\"]\n",
                b64(&KEY_A)
            ),
            "secrets.previous_keys[0]",
        ),
    ] {
        let error = mxhook::config::Config::from_toml_str(&toml(data.path(), &receiver, bad))
            .expect_err("a bad key")
            .to_string();
        assert!(error.contains(key), "{error}");
    }
    let config_file: PathBuf = data.path().join("mxhook.toml");
    std::fs::write(&config_file, toml(data.path(), &receiver, "")).expect("write config");
    let (ok, _, stderr) = rotate(&config_file, &[]).await;
    assert!(!ok);
    assert!(stderr.contains("secrets.key"), "{stderr}");
    // A hex key from the environment is taken.
    let (ok, report, stderr) =
        rotate(&config_file, &[("MXHOOK_SECRETS__KEY", hex::encode(KEY_A))]).await;
    assert!(ok, "{stderr}");
    assert_eq!(report["key_id"], id_of(&KEY_A), "{report}");
}
