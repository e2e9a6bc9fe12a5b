//! The `mxhook` command line against a real gateway: inbox management, test events and
//! signature verification, with the exit codes the README and `mxhook --help` promise.

use serde_json::{Value, json};

use crate::support::gateway::{API_KEY, SECRET};
use crate::support::{GatewayOptions, TestGateway, WebhookReceiver};

/// Runs `mxhook` with this API key in `MXHOOKCTL_API_KEY`: its exit code and what it printed
/// (standard output, then standard error).
async fn mxhook(args: &[&str], api_key: &str) -> (i32, String) {
    mxhook_with(args, &[("MXHOOKCTL_API_KEY", api_key)], None).await
}

#[tokio::test]
async fn cli_manages_inboxes_sends_test_events_and_verifies_signatures() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let api_url = format!("http://{}", gateway.http);

    let (code, out) = mxhook(
        &[
            "inbox",
            "create",
            "--id",
            "cli-inbox",
            "--address",
            "cli@example.com",
            "--api-url",
            &api_url,
        ],
        API_KEY,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(gateway.rcpt_code("cli@example.com").await, 250);
    let (code, out) = mxhook(&["inbox", "list", "--api-url", &api_url], API_KEY).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"cli-inbox\""), "{out}");
    let (code, out) = mxhook(&["inbox", "list", "--api-url", &api_url], "wrong-key").await;
    // The API refused: 1, not a bad argument.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("401"), "{out}");

    let (code, out) = mxhook(
        &["send-test", "--inbox", "agent", "--api-url", &api_url],
        API_KEY,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let got = receiver.recv().await;
    assert_eq!(got.json()["subject"], "mxhook test event");
    let body_file = gateway.dir.path().join("received-body");
    std::fs::write(&body_file, &got.body).expect("write body");
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    let body_path = body_file.to_str().expect("utf-8 path");
    let verify = |secret: &'static str| {
        let args = [
            "verify",
            "--secret",
            secret,
            "--timestamp",
            &timestamp,
            "--signature",
            &signature,
            "--body-file",
            body_path,
        ]
        .map(str::to_owned);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            mxhook(&refs, "").await
        }
    };
    let (code, out) = verify(SECRET).await;
    assert_eq!(code, 0, "{out}");
    // A signature that does not verify is 1, not a bad argument.
    let (code, out) = verify("another-secret").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT valid"), "{out}");

    let config = gateway.dir.path().join("check.toml");
    std::fs::write(
        &config,
        crate::support::gateway::config_toml(gateway.dir.path(), &GatewayOptions::no_webhook()),
    )
    .expect("write config");
    let (code, out) = mxhook(&["check", "--config", config.to_str().expect("path")], "").await;
    assert_eq!(code, 0, "{out}");
}

/// Runs `mxhook` with these environment variables (the `MXHOOKCTL_*` ones of the test
/// process left out, so only what a test gives counts) and, when given, standard input: its
/// exit code and what it printed (standard output, then standard error).
async fn mxhook_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(args)
        .env_remove("MXHOOKCTL_API_KEY")
        .env_remove("MXHOOKCTL_API_URL")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mxhook runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        // A command refused for its arguments exits without reading its input; the pipe it
        // closed is then no failure of the test.
        if let Err(err) = input.write_all(text.as_bytes()).await {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe,
                "write stdin: {err}"
            );
        }
    }
    drop(input);
    let output = child.wait_with_output().await.expect("mxhook ends");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let code = output
        .status
        .code()
        .unwrap_or_else(|| panic!("mxhook ended by a signal ({}): {printed}", output.status));
    (code, printed)
}

/// The JSON document `mxhook` printed.
fn printed_json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|err| panic!("{err}: {out}"))
}

#[tokio::test]
async fn cli_gets_deletes_sets_webhooks_creates_keys_and_verifies_every_scheme() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let api_url = format!("http://{}", gateway.http);
    let api = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.extend(["--api-url".to_owned(), api_url.clone()]);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            mxhook(&refs, API_KEY).await
        }
    };
    let (code, out) = api(&[
        "inbox",
        "create",
        "--id",
        "cli2",
        "--address",
        "cli2@example.com",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = api(&["inbox", "get", "--id", "cli2"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(printed_json(&out)["addresses"], json!(["cli2@example.com"]));
    let (code, out) = api(&["inbox", "get", "--id", "missing"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");

    let (code, out) = api(&["inbox", "key", "create", "--id", "cli2", "--name", "bot"]).await;
    assert_eq!(code, 0, "{out}");
    let key = printed_json(&out)["key"].as_str().expect("key").to_owned();
    let (status, _) = gateway.api_as(&key, "GET", "/v1/inboxes/cli2", None).await;
    assert_eq!(status, 200, "the printed key works");

    let url = receiver.url();
    let (code, out) = api(&["inbox", "webhook", "set", "--id", "cli2", "--url", &url]).await;
    assert_eq!(code, 0, "{out}");
    let first = printed_json(&out)["signing_secret"]
        .as_str()
        .expect("secret printed on first setup")
        .to_owned();
    let (code, out) = api(&["inbox", "webhook", "set", "--id", "cli2", "--url", &url]).await;
    assert!(
        code == 0 && printed_json(&out).get("signing_secret").is_none(),
        "{out}"
    );
    let (code, out) = api(&[
        "inbox",
        "webhook",
        "set",
        "--id",
        "cli2",
        "--url",
        &url,
        "--rotate-secret",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let rotated = printed_json(&out)["signing_secret"]
        .as_str()
        .expect("secret printed on rotation")
        .to_owned();
    assert_ne!(first, rotated);

    // Each scheme: a real delivery, checked with the secret from argv, env or stdin.
    let body_file = gateway.dir.path().join("cli2-body");
    let body_path = body_file.to_str().expect("utf-8 path").to_owned();
    let mut secret = rotated;
    for scheme in ["standard", "botmailroom", "hmac-sha256", "agentmail"] {
        let (code, out) = api(&[
            "inbox",
            "webhook",
            "set",
            "--id",
            "cli2",
            "--url",
            &url,
            "--signature",
            scheme,
        ])
        .await;
        assert_eq!(code, 0, "{out}");
        if let Some(fresh) = printed_json(&out)["signing_secret"].as_str() {
            secret = fresh.to_owned();
        }
        gateway
            .send_simple("cli2@example.com", scheme, "a@sender.example")
            .await;
        let got = receiver.recv().await;
        std::fs::write(&body_file, &got.body).expect("write body");
        let mut args: Vec<String> = ["verify", "--scheme", scheme, "--body-file", &body_path]
            .map(str::to_owned)
            .to_vec();
        let header = |name: &str| {
            got.header(name)
                .unwrap_or_else(|| panic!("{scheme}: {name}"))
        };
        match scheme {
            "standard" => args.extend([
                "--webhook-id".to_owned(),
                header("webhook-id"),
                "--timestamp".to_owned(),
                header("webhook-timestamp"),
                "--signature".to_owned(),
                header("webhook-signature"),
            ]),
            "botmailroom" => args.extend(["--signature".to_owned(), header("x-signature")]),
            "hmac-sha256" => args.extend([
                "--format".to_owned(),
                "sha256=hex".to_owned(),
                "--signature".to_owned(),
                header("x-webhook-signature"),
            ]),
            _ => args.extend([
                "--timestamp".to_owned(),
                header("x-agentmail-timestamp"),
                "--signature".to_owned(),
                header("x-agentmail-signature"),
            ]),
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let with_env = [refs.as_slice(), &["--secret-env", "HOOK_SECRET"]].concat();
        let (code, out) = mxhook_with(&with_env, &[("HOOK_SECRET", &secret)], None).await;
        assert_eq!(code, 0, "{scheme} via env: {out}");
        let with_stdin = [refs.as_slice(), &["--secret-stdin"]].concat();
        let (code, out) = mxhook_with(&with_stdin, &[], Some(&format!("{secret}\n"))).await;
        assert_eq!(code, 0, "{scheme} via stdin: {out}");
        let with_argv = [refs.as_slice(), &["--secret", &secret]].concat();
        let (code, out) = mxhook_with(&with_argv, &[], None).await;
        assert_eq!(code, 0, "{scheme} via argv: {out}");
        let wrong = if scheme == "standard" {
            "whsec_c29tZXRoaW5nIGVsc2U=".to_owned()
        } else {
            format!("{secret}x")
        };
        let with_wrong = [refs.as_slice(), &["--secret", &wrong]].concat();
        let (code, out) = mxhook_with(&with_wrong, &[], None).await;
        assert_eq!(code, 1, "{scheme} with a wrong secret: {out}");
        assert!(
            out.contains("NOT valid"),
            "{scheme} with a wrong secret: {out}"
        );
    }
    // The hex format does not accept a sha256= value: a signature that does not verify (1).
    let (code, out) = mxhook_with(
        &[
            "verify",
            "--scheme",
            "hmac-sha256",
            "--format",
            "hex",
            "--signature",
            "sha256=00",
            "--secret",
            "s",
            "--body-file",
            &body_path,
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT valid"), "{out}");
    // No secret source at all is a bad argument (2).
    let (code, out) = mxhook_with(
        &["verify", "--signature", "v1=00", "--body-file", &body_path],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("secret"), "{out}");

    let (code, out) = api(&["inbox", "delete", "--id", "cli2"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(gateway.rcpt_code("cli2@example.com").await, 550);
    gateway.stop().await;
}

/// The AgentMail signature of `body` at `timestamp`, computed here with the `hmac` crate
/// (SPEC.md: `v1=` and the hex HMAC-SHA256 of `timestamp.body`), not with the gateway's code.
fn agentmail_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// One run of `mxhook`: what it shows, its arguments, its environment, its standard input and
/// the exit code documented for it.
type Case<'a> = (
    &'a str,
    Vec<String>,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
    i32,
);

/// README: `mxhook verify` exits 0 when the signature is valid, 1 when it is not, 2 when the
/// arguments are wrong. The API commands (`mxhook --help`, and the doc of `call_api`) exit 0 on
/// a 2xx answer and 1 on any other answer or none; being called wrongly (no key, a missing or
/// unknown argument) is 2 there too, as is a config `check` refuses. Each case is one run of
/// the real binary; the 401 and 404 answers are in the tests above.
#[tokio::test]
async fn cli_exit_codes_are_0_valid_1_invalid_2_bad_arguments() {
    const VALID: i32 = 0;
    const INVALID: i32 = 1;
    const BAD_ARGUMENTS: i32 = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let body = br#"{"type":"mail.received","event_id":"evt_exit_codes"}"#;
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, body).expect("write body");
    let body_path = body_file.to_str().expect("utf-8 path");
    let timestamp = "1776340800";
    let good = agentmail_signature("the-secret", timestamp, body);
    let other = agentmail_signature("another-secret", timestamp, body);
    let both = format!("{other} {good}");
    let broken_config = dir.path().join("broken.toml");
    std::fs::write(&broken_config, "[delivery]\nretry_base_s = \"soon\"\n").expect("write");
    let broken_config = broken_config.to_str().expect("utf-8 path");
    let missing_body = dir.path().join("no-such-body.json");
    let missing_body = missing_body.to_str().expect("utf-8 path");
    // A port nothing listens on: bound, read, released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let closed_url = format!("http://{closed}");

    let verify = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["verify", "--body-file", body_path]
            .map(str::to_owned)
            .to_vec();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let signed = ["--timestamp", timestamp, "--signature", &good];
    let cases: Vec<Case<'_>> = vec![
        (
            "verify: the right secret",
            verify(&[&signed[..], &["--secret", "the-secret"]].concat()),
            vec![],
            None,
            VALID,
        ),
        (
            "verify: the right signature among several",
            verify(&[
                "--timestamp",
                timestamp,
                "--signature",
                &both,
                "--secret",
                "the-secret",
            ]),
            vec![],
            None,
            VALID,
        ),
        (
            "verify: the secret from the environment",
            verify(&[&signed[..], &["--secret-env", "HOOK_SECRET"]].concat()),
            vec![("HOOK_SECRET", "the-secret")],
            None,
            VALID,
        ),
        (
            "verify: a wrong secret",
            verify(&[&signed[..], &["--secret", "another-secret"]].concat()),
            vec![],
            None,
            INVALID,
        ),
        (
            "verify: another timestamp",
            verify(&[
                "--timestamp",
                "1776340801",
                "--signature",
                &good,
                "--secret",
                "the-secret",
            ]),
            vec![],
            None,
            INVALID,
        ),
        (
            "verify: no secret source",
            verify(&signed),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: two secret sources",
            verify(&[&signed[..], &["--secret", "the-secret", "--secret-stdin"]].concat()),
            vec![],
            Some("the-secret\n"),
            BAD_ARGUMENTS,
        ),
        (
            "verify: --secret-env naming an unset variable",
            verify(&[&signed[..], &["--secret-env", "MXHOOK_TEST_UNSET_SECRET"]].concat()),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: an empty secret on standard input",
            verify(&[&signed[..], &["--secret-stdin"]].concat()),
            vec![],
            Some("\n"),
            BAD_ARGUMENTS,
        ),
        (
            "verify: an unknown scheme",
            verify(&[&signed[..], &["--secret", "s", "--scheme", "md5"]].concat()),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: an unknown format",
            verify(&[&signed[..], &["--secret", "s", "--format", "base64"]].concat()),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: agentmail without --timestamp",
            verify(&["--signature", &good, "--secret", "the-secret"]),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: a timestamp that is not unix seconds",
            verify(&[
                "--timestamp",
                "yesterday",
                "--signature",
                &good,
                "--secret",
                "the-secret",
            ]),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: standard without --webhook-id",
            verify(&[
                "--scheme",
                "standard",
                "--timestamp",
                timestamp,
                "--signature",
                "v1,AAAA",
                "--secret",
                "whsec_c29tZXRoaW5n",
            ]),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: a standard secret that is not whsec_<base64>",
            verify(&[
                "--scheme",
                "standard",
                "--webhook-id",
                "msg_1",
                "--timestamp",
                timestamp,
                "--signature",
                "v1,AAAA",
                "--secret",
                "not-a-whsec-secret",
            ]),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: no --signature",
            verify(&["--timestamp", timestamp, "--secret", "the-secret"]),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: a body file that is not there",
            [
                "verify",
                "--body-file",
                missing_body,
                "--timestamp",
                timestamp,
                "--signature",
                &good,
                "--secret",
                "the-secret",
            ]
            .map(str::to_owned)
            .to_vec(),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "verify: an unknown option",
            verify(&[&signed[..], &["--secret", "the-secret", "--strict"]].concat()),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        ("no subcommand", vec![], vec![], None, BAD_ARGUMENTS),
        (
            "check: a config with a wrong type",
            ["check", "--config", broken_config]
                .map(str::to_owned)
                .to_vec(),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "inbox list: no API key",
            ["inbox", "list", "--api-url", &closed_url]
                .map(str::to_owned)
                .to_vec(),
            vec![],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "inbox list: an empty API key",
            ["inbox", "list", "--api-url", &closed_url]
                .map(str::to_owned)
                .to_vec(),
            vec![("MXHOOKCTL_API_KEY", "")],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "inbox create: no --address",
            ["inbox", "create", "--id", "x", "--api-url", &closed_url]
                .map(str::to_owned)
                .to_vec(),
            vec![("MXHOOKCTL_API_KEY", API_KEY)],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "send-test: no --inbox",
            ["send-test", "--api-url", &closed_url]
                .map(str::to_owned)
                .to_vec(),
            vec![("MXHOOKCTL_API_KEY", API_KEY)],
            None,
            BAD_ARGUMENTS,
        ),
        (
            "inbox list: no API answers",
            ["inbox", "list", "--api-url", &closed_url]
                .map(str::to_owned)
                .to_vec(),
            vec![("MXHOOKCTL_API_KEY", API_KEY)],
            None,
            INVALID,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, args, env, stdin, expected) in &cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = mxhook_with(&refs, env, *stdin).await;
        if code != *expected {
            wrong.push(format!("{what}: exit {code}, documented {expected}\n{out}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));
}
