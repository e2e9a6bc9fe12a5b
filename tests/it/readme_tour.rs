//! The README's five-minute tour, run as written: its webhook receiver, its config, its swaks
//! command, its five-line signature check and its API calls, taken from README.md itself so the
//! tour cannot drift from what the gateway does. Only the fixed ports and `/tmp` paths are
//! swapped for free ones.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::support::eventually;
use crate::support::process::{Process, free_addr};

/// The fenced code blocks of the README section that starts with `heading`, in order, with
/// their language tags.
fn code_blocks(readme: &str, heading: &str) -> Vec<(String, String)> {
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in section.lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some((_, body)), None) => {
                // Blocks inside a numbered list are indented by three spaces.
                body.push_str(line.strip_prefix("   ").unwrap_or(line));
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

struct Tour {
    receiver_port: u16,
    smtp_port: u16,
    http: String,
    files: String,
}

impl Tour {
    /// The block as a user would run it on this machine, with this test's ports and paths.
    fn localise(&self, block: &str) -> String {
        block
            .replace(
                "127.0.0.1\", 9000",
                &format!("127.0.0.1\", {}", self.receiver_port),
            )
            .replace(
                "127.0.0.1:9000",
                &format!("127.0.0.1:{}", self.receiver_port),
            )
            .replace("--port 2525", &format!("--port {}", self.smtp_port))
            .replace("127.0.0.1:8080", &self.http)
            .replace("/tmp/last-webhook", &format!("{}/last-webhook", self.files))
    }
}

async fn run(program: &str, args: &[&str], stdin_text: Option<&str>) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin_text.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    if let Some(text) = stdin_text {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write stdin");
    }
    let output = child.wait_with_output().await.expect("wait");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn the_five_minute_tour_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks = code_blocks(&readme, "A five-minute tour");
    let langs: Vec<&str> = blocks.iter().map(|(lang, _)| lang.as_str()).collect();
    assert_eq!(
        langs,
        ["sh", "toml", "sh", "sh", "python", "sh"],
        "the tour's steps changed; update this test with them"
    );
    let files = tempfile::tempdir().expect("tempdir");
    let smtp = free_addr();
    let http = free_addr();
    let tour = Tour {
        receiver_port: free_addr().port(),
        smtp_port: smtp.port(),
        http: http.to_string(),
        files: files.path().display().to_string(),
    };

    // 1. The receiver, started exactly as the README's shell block starts it.
    let receiver = Receiver(
        Command::new("bash")
            .arg("-c")
            .arg(tour.localise(&blocks[0].1))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the tour's receiver"),
    );
    let receiver_addr = format!("127.0.0.1:{}", tour.receiver_port);
    eventually("the tour's receiver to listen", || {
        let addr = receiver_addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
    })
    .await;

    // 2. Its config, served by the real binary (the `cargo run` block is that binary).
    assert!(blocks[2].1.contains("serve --config mxhook.toml"));
    let config = files.path().join("mxhook.toml");
    std::fs::write(&config, tour.localise(&blocks[1].1)).expect("write config");
    let gateway = Process::start(files.path(), Some(&config), smtp, http).await;

    // 3. The mail, sent with the README's swaks command.
    run("bash", &["-c", &tour.localise(&blocks[3].1)], None).await;
    let body_path = files.path().join("last-webhook");
    let body: serde_json::Value = eventually("the tour's receiver to get the event", || {
        let path = body_path.clone();
        async move {
            let bytes = std::fs::read(path).ok()?;
            serde_json::from_slice(&bytes).ok()
        }
    })
    .await;
    assert_eq!(body["type"], "mail.received", "{body}");
    assert_eq!(body["subject"], "Hello agent", "{body}");

    // 4. The five-line signature check prints True.
    let verdict = run("python3", &["-"], Some(&tour.localise(&blocks[4].1))).await;
    assert_eq!(
        verdict.trim(),
        "True",
        "the README's signature check failed"
    );

    // 5. The API calls: the delivery is listed as delivered, and the raw message comes back.
    let message_id = body["message_id"].as_str().expect("message_id").to_owned();
    let mut calls = tour
        .localise(&blocks[5].1)
        .replace("<message_id>", &message_id);
    calls = calls.replace('\\', "");
    let mut outputs = Vec::new();
    for line in calls.lines().filter(|line| line.starts_with("curl ")) {
        outputs.push(run("bash", &["-c", line], None).await);
    }
    assert_eq!(outputs.len(), 2, "{calls}");
    assert!(outputs[0].contains("\"delivered\""), "{}", outputs[0]);
    assert!(
        outputs[1].contains("Subject: Hello agent"),
        "{}",
        outputs[1]
    );
    drop(gateway);
    drop(receiver);
}
