//! MTA-STS: the `[mta_sts]` policy served at `/.well-known/mta-sts.txt`, and the `_mta-sts`
//! TXT record `mxhook check` tells the operator to publish.

use std::process::Command;

use crate::support::gateway::config_toml;
use crate::support::{GatewayOptions, TestGateway, http_client};

const STS: &str = "[mta_sts]\nmode = \"enforce\"\nmx = [\"mx1.example.com\", \"mx2.example.com\"]\nmax_age = 86400\n";

async fn get_policy(gateway: &TestGateway) -> (u16, String, String) {
    let response = http_client()
        .get(format!("http://{}/.well-known/mta-sts.txt", gateway.http))
        .send()
        .await
        .expect("GET policy");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("body"))
}

#[tokio::test]
async fn the_policy_is_served_without_a_key_and_check_prints_its_txt_record() {
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = STS.to_owned();
    let gateway = TestGateway::start(options.clone()).await;
    let (status, content_type, body) = get_policy(&gateway).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(
        body,
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: mx2.example.com\r\nmax_age: 86400\r\n"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.toml");
    std::fs::write(&path, config_toml(dir.path(), &options)).expect("write config");
    let check = |path: &std::path::Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_mxhook"))
            .arg("check")
            .arg("--config")
            .arg(path)
            .output()
            .expect("run mxhook check");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let printed = check(&path);
    let record = printed
        .lines()
        .find(|line| line.starts_with("_mta-sts.example.com. IN TXT "))
        .unwrap_or_else(|| panic!("no TXT record for example.com in {printed}"))
        .to_owned();
    let id = record
        .split("id=")
        .nth(1)
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("an id");
    assert!(
        !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{record}"
    );
    assert!(record.contains("\"v=STSv1; id="), "{record}");

    // A changed policy gets a new id, so senders fetch it again.
    let changed = std::fs::read_to_string(&path)
        .expect("read")
        .replace("max_age = 86400", "max_age = 172800");
    std::fs::write(&path, changed).expect("write");
    let printed = check(&path);
    assert!(!printed.contains(id), "{printed}");
}

#[tokio::test]
async fn without_mta_sts_the_policy_is_not_found() {
    let gateway = TestGateway::start(GatewayOptions::no_webhook()).await;
    let (status, _, _) = get_policy(&gateway).await;
    assert_eq!(status, 404);
}
