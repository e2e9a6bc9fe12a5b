//! The first run, as a new user meets it: `mxhook serve` in an empty directory makes its own
//! admin key, prints a dashboard link that logs in, and has an inbox that takes a test mail; the
//! next start reuses the key and prints no secret.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::support::process::{Process, free_addr};
use crate::support::{SmtpClient, eventually, simple_message};

/// A client that shows redirects instead of following them, as the tests read `Set-Cookie`.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|line| {
            let pair = line.split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            (name == "mxhook_session" && !value.is_empty()).then(|| pair.to_owned())
        })
}

/// The `http://…/ui/login?token=…` link among the lines the process printed.
fn login_link(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|line| {
        let start = line.find("http://")?;
        let link = line[start..].split_whitespace().next()?;
        link.contains("/ui/login?token=").then(|| link.to_owned())
    })
}

#[tokio::test]
async fn a_first_start_prints_a_link_that_logs_in_and_a_second_start_prints_no_secret() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let (smtp, http) = (free_addr(), free_addr());
    let process = Process::start_logged(cwd.path(), None, smtp, http).await;
    let link = eventually("the banner's login link", || {
        let lines = process.log_lines();
        async move { login_link(&lines) }
    })
    .await;
    let lines = process.log_lines();
    assert!(
        lines.iter().any(|line| line.contains("swaks")
            && line.contains("demo@localhost")
            && line.contains(&format!("--port {}", smtp.port()))),
        "no swaks line for the demo inbox: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("    python3 -c 'import smtplib")),
        "no Python line: {lines:#?}"
    );

    // The key is kept in the data directory, owner-only, and never printed.
    let key_path = cwd.path().join("data/admin_key");
    let key = std::fs::read_to_string(&key_path)
        .expect("admin key file")
        .trim()
        .to_owned();
    assert!(!key.is_empty());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    }
    assert!(
        lines.iter().all(|line| !line.contains(&key)),
        "the key was printed: {lines:#?}"
    );

    // Following the link lands logged in, on the dashboard.
    let client = no_redirects();
    let answer = client.get(&link).send().await.expect("follow the link");
    assert_eq!(answer.status(), 303, "{link}");
    assert_eq!(
        answer.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/ui")
    );
    let session = session_cookie(&answer).expect("a session cookie");
    let dashboard = client
        .get(format!("http://{http}/ui"))
        .header(COOKIE, &session)
        .send()
        .await
        .expect("dashboard");
    assert_eq!(dashboard.status(), 200);
    let page = dashboard.text().await.expect("page");
    assert!(page.contains("/ui/logout"), "not logged in: {page}");
    assert!(page.contains("demo@localhost"), "no demo inbox: {page}");

    // The link is spent: following it again logs nobody in.
    let again = client.get(&link).send().await.expect("follow again");
    assert_eq!(again.status(), 200);
    assert!(session_cookie(&again).is_none());

    // The demo inbox takes mail at once, and the dashboard shows it.
    let mut smtp_client = SmtpClient::connect(smtp).await;
    let (code, text) = smtp_client
        .send_message(
            "you@example.com",
            &["demo@localhost"],
            &simple_message(
                "you@example.com",
                "demo@localhost",
                "Hello from the first run",
                "It works.",
            ),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    eventually("the test mail on the dashboard's messages page", || {
        let (client, session) = (client.clone(), session.clone());
        async move {
            let page = client
                .get(format!("http://{http}/ui/messages"))
                .header(COOKIE, session)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            page.contains("Hello from the first run").then_some(())
        }
    })
    .await;

    // The key works on the API.
    let inboxes = client
        .get(format!("http://{http}/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("API");
    assert_eq!(inboxes.status(), 200);

    // The second start reuses the key and prints no secret and no login link.
    process.kill_9();
    let process = Process::start_logged(cwd.path(), None, smtp, http).await;
    let lines = eventually("the second start's banner", || {
        let lines = process.log_lines();
        async move {
            lines
                .iter()
                .any(|line| line.contains("mxhook is running"))
                .then_some(lines)
        }
    })
    .await;
    assert!(login_link(&lines).is_none(), "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|line| !line.contains(&key) && !line.contains("token=")),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("key file").trim(),
        key,
        "the key changed"
    );
    assert_eq!(
        inbox_ids(http, &key).await,
        ["demo"],
        "the demo inbox is seeded once"
    );
    drop(process);
}

#[tokio::test]
async fn a_config_with_admin_keys_or_inboxes_gets_no_key_file_and_no_demo_inbox() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let config = cwd.path().join("mxhook.toml");
    std::fs::write(
        &config,
        "[http]\nadmin_keys = [\"configured-key\"]\n\n[[inbox]]\nid = \"mine\"\naddresses = [\"mine@example.com\"]\n",
    )
    .expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let process = Process::start_logged(cwd.path(), Some(&config), smtp, http).await;
    assert_eq!(inbox_ids(http, "configured-key").await, ["mine"]);
    assert!(!cwd.path().join("data/admin_key").exists());
    let lines = process.log_lines();
    assert!(
        lines.iter().all(|line| !line.contains("mxhook is running")),
        "{lines:#?}"
    );

    // A config file that declares no inbox chooses none: its empty database gets no demo inbox.
    let empty = tempfile::tempdir().expect("tempdir");
    let config = empty.path().join("mxhook.toml");
    std::fs::write(&config, "[http]\nadmin_keys = [\"configured-key\"]\n").expect("write config");
    let (smtp, http) = (free_addr(), free_addr());
    let _process = Process::start_logged(empty.path(), Some(&config), smtp, http).await;
    assert!(inbox_ids(http, "configured-key").await.is_empty());
}

/// The ids `GET /v1/inboxes` lists, read with `key`.
async fn inbox_ids(http: std::net::SocketAddr, key: &str) -> Vec<String> {
    let answer = no_redirects()
        .get(format!("http://{http}/v1/inboxes"))
        .bearer_auth(key)
        .send()
        .await
        .expect("API");
    let body: serde_json::Value = answer.json().await.expect("json");
    body["inboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("no inbox list: {body}"))
        .iter()
        .filter_map(|inbox| inbox["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn init_writes_a_config_with_fresh_secrets_that_check_config_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("new");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["init", "--dir"])
        .arg(&target)
        .output()
        .expect("run mxhook init");
    assert!(output.status.success(), "{output:?}");
    let path = target.join("mxhook.toml");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("mxhook serve --config {}", path.display())),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&path).expect("the config");
    assert!(
        !text.contains("change-me") && !text.contains("replace-with-"),
        "{text}"
    );
    let config = mxhook::config::Config::from_toml_str(&text).expect("valid");
    let key = config
        .http
        .admin_keys
        .first()
        .expect("an admin key")
        .clone();
    assert!(key.len() >= 64, "{key}");
    assert!(
        config.inboxes[0]
            .webhook_secret
            .as_ref()
            .is_some_and(|secret| secret.len() >= 64),
    );
    // Stored secrets are encrypted from the first start: the key is there, and valid (the
    // config's check refuses any other), and the example's placeholder line is gone.
    let secrets_key = config.secrets.key.clone().expect("a secrets key");
    assert_eq!(secrets_key.len(), 64, "{secrets_key}");
    assert!(!text.contains("# key = "), "{text}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run mxhook check-config");
    assert!(check.status.success(), "{check:?}");

    // A second init keeps the first file, and so its key.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["init", "--dir"])
        .arg(&target)
        .output()
        .expect("run mxhook init again");
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&path).expect("the config"), text);

    // Another directory gets other secrets.
    let other = dir.path().join("other");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mxhook"))
        .args(["init", "--dir"])
        .arg(&other)
        .output()
        .expect("run mxhook init");
    assert!(output.status.success());
    let other_text = std::fs::read_to_string(other.join("mxhook.toml")).expect("config");
    assert!(!other_text.contains(&key));
    assert!(!other_text.contains(&secrets_key));
}
