//! The API against its own contract (issue #22): Schemathesis (PyPI, installed by
//! `scripts/test`), an independent property-based client, reads `/openapi.json` of a running
//! gateway and sends it generated requests, valid and invalid, once with an inbox key and once
//! with an admin key. Every response must match the documented status codes, content types and
//! schemas, none may be a 5xx, and with the inbox key of one inbox no successful answer may
//! name anything of the other (a custom check in `tests/python/schemathesis_hooks.py`).
//!
//! The run is bounded (few examples per operation) and deterministic (`--generation-
//! deterministic`), so CI sees the same requests every time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually};

/// Operations left out of the run, each with the reason.
const EXCLUDED_PATHS: &[(&str, &str)] = &[
    // A server-sent event stream: a request for an existing inbox is answered 200 and then
    // stays open for ever, which a request/response fuzzer can only report as a timeout. Its
    // 4xx answers and its schema are covered by tests/it/event_stream.rs and openapi.rs.
    (
        "/v1/inboxes/{id}/events",
        "an event stream never ends; covered by event_stream.rs",
    ),
    // The MCP transport (JSON-RPC over streamable HTTP, answered by the rmcp library): its
    // document entry is a free-form body, and the protocol's own answers (406 without an
    // `Accept` naming both JSON and event streams, event-stream bodies) are the protocol's,
    // tested with the official Python SDK in tests/it/mcp.rs.
    (
        "/mcp",
        "MCP's own transport; covered by mcp.rs with the official SDK",
    ),
];

/// Examples per operation and phase: small, so one run stays near a minute on the 2-core CI
/// machine.
const MAX_EXAMPLES: &str = "12";

/// Ids of the two inboxes' objects: what the generated path parameters are drawn from, and
/// what of `other` an inbox key of `agent` must never see.
struct Objects {
    known: BTreeMap<&'static str, BTreeMap<&'static str, Vec<Value>>>,
    foreign_exact: Vec<String>,
    foreign_substrings: Vec<String>,
}

async fn ids_of(gateway: &TestGateway, inbox: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let messages = gateway.messages(inbox).await;
    let message_ids: Vec<String> = messages
        .iter()
        .map(|message| message["id"].as_str().expect("id").to_owned())
        .collect();
    let event_ids: Vec<String> = messages
        .iter()
        .filter_map(|message| message["event_id"].as_str().map(str::to_owned))
        .collect();
    let delivery_ids: Vec<String> = gateway
        .all_deliveries()
        .await
        .iter()
        .filter(|delivery| delivery["inbox_id"] == inbox)
        .map(|delivery| delivery["id"].as_str().expect("id").to_owned())
        .collect();
    (message_ids, event_ids, delivery_ids)
}

/// A mail to `to` with one text attachment (`att_0`).
fn mail_with_attachment(to: &str) -> Vec<u8> {
    format!(
        "From: Jane <jane@client.example>\r\nTo: {to}\r\nSubject: with a file\r\n\
         Date: Thu, 16 Apr 2026 12:00:00 +0000\r\nMessage-ID: <file-{}@test.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the file.\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nhello\r\n--b1--\r\n",
        crate::support::rand_token()
    )
    .into_bytes()
}

/// Mail to both inboxes, delivered, and an API key for each; `agent`'s key is returned.
async fn populate(gateway: &TestGateway) -> (String, Objects) {
    for (inbox, subject) in [
        ("agent@example.com", "for agent one"),
        ("other@example.com", "for other one"),
    ] {
        gateway
            .send_simple(inbox, subject, "jane@client.example")
            .await;
    }
    // And one with an attachment each, so that `att_0` names a real one.
    for inbox in ["agent@example.com", "other@example.com"] {
        let mut client = SmtpClient::connect(gateway.smtp).await;
        let (code, text) = client
            .send_message(
                "jane@client.example",
                &[inbox],
                &mail_with_attachment(inbox),
            )
            .await;
        assert_eq!(code, 250, "{text}");
    }
    eventually("the four messages to be delivered", || async {
        let delivered = gateway.deliveries("delivered").await;
        (delivered.len() >= 4).then_some(())
    })
    .await;
    let mut keys = BTreeMap::new();
    for inbox in ["agent", "other"] {
        let (status, body) = gateway
            .api(
                "POST",
                &format!("/v1/inboxes/{inbox}/keys"),
                Some(json!({"name": format!("{inbox} fuzzing")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        keys.insert(inbox, body);
    }
    let (agent_messages, _, agent_deliveries) = ids_of(gateway, "agent").await;
    let (other_messages, other_events, other_deliveries) = ids_of(gateway, "other").await;
    let key_id = |inbox: &str| keys[inbox]["id"].as_str().expect("key id").to_owned();
    let both = |a: &[String], b: &[String]| [a, b].concat().into_iter().map(Value::from).collect();
    let messages: Vec<Value> = both(&agent_messages, &other_messages);
    let owned = |ids: &[&str]| ids.iter().map(|id| json!(id)).collect::<Vec<_>>();
    // Path prefix -> path parameter -> ids that exist there (the longest prefix applies).
    let known = BTreeMap::from([
        (
            "/v1/inboxes/",
            BTreeMap::from([
                ("id", owned(&["agent", "other"])),
                // Only the other inbox's key: deleting the key the run is made with would turn
                // the rest of the inbox-key run into 401s.
                ("key_id", vec![json!(key_id("other"))]),
                ("provider", owned(&["calcom", "mailersend"])),
            ]),
        ),
        (
            "/v1/messages/",
            BTreeMap::from([
                ("id", messages.clone()),
                ("attachment_id", owned(&["att_0"])),
            ]),
        ),
        (
            "/attachments/",
            BTreeMap::from([("id", messages), ("attachment_id", owned(&["att_0"]))]),
        ),
        (
            "/v1/deliveries/",
            BTreeMap::from([
                ("id", both(&agent_deliveries, &other_deliveries)),
                ("attempt", vec![json!(1)]),
            ]),
        ),
        (
            "/v1/domains/",
            BTreeMap::from([("name", owned(&["example.com"]))]),
        ),
    ]);
    let mut foreign_exact = vec!["other".to_owned()];
    foreign_exact.extend(other_messages.iter().cloned());
    let mut foreign_substrings = vec!["other@example.com".to_owned(), key_id("other")];
    foreign_substrings.extend(other_messages);
    foreign_substrings.extend(other_events);
    foreign_substrings.extend(other_deliveries);
    let agent_key = keys["agent"]["key"].as_str().expect("key").to_owned();
    (
        agent_key,
        Objects {
            known,
            foreign_exact,
            foreign_substrings,
        },
    )
}

/// Runs Schemathesis with `key` against the gateway; panics with its report on any failure.
fn run_schemathesis(
    gateway: &TestGateway,
    key: &str,
    objects: &Objects,
    check_foreign: bool,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = dir.path().join("ids.json");
    let (exact, substrings) = if check_foreign {
        (
            objects.foreign_exact.clone(),
            objects.foreign_substrings.clone(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    std::fs::write(
        &ids,
        json!({
            "known": objects.known,
            "foreign_exact": exact,
            "foreign_substrings": substrings,
        })
        .to_string(),
    )
    .expect("write ids");
    let mut command = std::process::Command::new("python3");
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/openapi.json", gateway.http))
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "all"])
        // Left out: "a request the schema allows must be accepted". The document gives types,
        // not every rule the handlers enforce with a precise 400/422 (an event type that
        // exists, a provider's payload shape, an http(s) URL, a file name without control
        // characters), so that check would fail on refusals that are documented answers;
        // status_code_conformance still holds every refusal to the documented codes.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", MAX_EXAMPLES])
        .arg("--generation-deterministic")
        .args(["--request-timeout", "10"])
        .args(["--workers", "2"])
        .args(["--no-color"])
        .args(["--output-truncate", "false"]);
    for (path, _why) in EXCLUDED_PATHS {
        command.args(["--exclude-path", path]);
    }
    let output = command
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", crate::support::repo_path("tests/python"))
        .env("MXTEST_SCHEMATHESIS_IDS", &ids)
        .current_dir(dir.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "schemathesis found failures ({}):\n{stdout}\n{stderr}",
            output.status
        ));
    }
    // A run that tested nothing also exits 0.
    if !stdout.contains("passed") || stdout.contains("No operations") {
        return Err(format!(
            "schemathesis ran no operation:\n{stdout}\n{stderr}"
        ));
    }
    eprintln!("{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_generated_requests_as_its_openapi_document_says() {
    let _receiver_guard = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(_receiver_guard.url())).await;
    let (agent_key, objects) = populate(&gateway).await;
    let mut failures = Vec::new();
    // The inbox key first: the admin run may erase and delete what the inbox run needs.
    for (key, check_foreign, what) in [
        (agent_key.as_str(), true, "agent's inbox key"),
        (crate::support::gateway::API_KEY, false, "the admin key"),
    ] {
        let started = Instant::now();
        let gateway_ref = &gateway;
        let objects_ref = &objects;
        let result = tokio::task::block_in_place(|| {
            run_schemathesis(gateway_ref, key, objects_ref, check_foreign)
        });
        eprintln!("schemathesis with {what}: {:?}", started.elapsed());
        if let Err(failure) = result {
            failures.push(format!("with {what}: {failure}"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run with {what} took {:?}",
            started.elapsed()
        );
    }
    gateway.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Schemathesis generates path parameters as text; a parameter whose percent-encoding decodes
/// to bytes that are not UTF-8 is refused by the router before any handler runs. Every
/// operation with a path parameter answers it with the documented 400 and the JSON error body.
#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_gets_the_documented_json_400() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, document) = gateway.api_as("", "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        if !path.contains('{') {
            continue;
        }
        let bad: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "%FF"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in item.as_object().expect("path item") {
            let documented = &operation["responses"]["400"]["content"]["application/json"];
            assert_eq!(
                documented["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} does not document its 400"
            );
            let response = crate::support::http_client()
                .request(
                    method.to_uppercase().parse().expect("method"),
                    format!("http://{}{bad}", gateway.http),
                )
                .bearer_auth(crate::support::gateway::API_KEY)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 400, "{method} {bad}");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                body["error"]["code"], "bad_request",
                "{method} {bad}: {body}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} operations have path parameters"
    );
    gateway.stop().await;
}
