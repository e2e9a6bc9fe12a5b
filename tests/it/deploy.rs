//! The files under deploy/ are checked, not just shipped: the systemd unit passes
//! `systemd-analyze verify`, and every config that compose, Kubernetes and the Dockerfile hand
//! to mxhook (files and MXHOOK_* variables) is loaded and validated by the real config loader.

use std::collections::BTreeMap;

use mxhook::config::Config;
use serde_yaml::Value;

use crate::support::repo_path;

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|err| panic!("reading {relative}: {err}"))
}

/// Validates a config file text plus MXHOOK_* overrides exactly as `mxhook serve` would.
#[track_caller]
fn check_config(toml: Option<&str>, env: &BTreeMap<String, String>) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.toml");
    if let Some(toml) = toml {
        std::fs::write(&path, toml).expect("write");
    }
    let vars = env.iter().map(|(k, v)| (k.clone(), v.clone()));
    Config::load(toml.map(|_| path.as_path()), vars).unwrap_or_else(|err| panic!("{err}"))
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let binary = env!("CARGO_BIN_EXE_mxhook");
    let unit = read("deploy/systemd/mxhook.service").replace("/usr/local/bin/mxhook", binary);
    assert!(unit.contains(&format!("ExecStart={binary} serve --config")));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.service");
    std::fs::write(&path, unit).expect("write unit");
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (systemd package)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Unknown or misspelt directives are only warnings to systemd; here they fail.
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");
}

#[test]
fn compose_nodes_get_a_valid_config_and_share_database_and_bucket() {
    let mut compose: Value =
        serde_yaml::from_str(&read("deploy/docker-compose.yml")).expect("compose YAML");
    // Compose resolves `<<: *anchor` merge keys; so must we, to see what each node gets.
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    for required in ["mxhook-1", "mxhook-2", "postgres", "minio"] {
        assert!(services.contains_key(required), "compose lacks {required}");
    }
    let first = string_map(&compose["services"]["mxhook-1"]["environment"]);
    let second = string_map(&compose["services"]["mxhook-2"]["environment"]);
    assert_eq!(first, second, "nodes must be identical");
    let config = check_config(None, &first);
    assert!(config.database.url.starts_with("postgres://"));
    assert_eq!(config.storage.backend, mxhook::config::StorageBackend::S3);

    // The bucket the nodes write to exists before any node starts, or every message gets 451.
    let init = &compose["services"]["minio-init"];
    let script: String = init["command"]
        .as_sequence()
        .expect("minio-init command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        script.contains(&format!(
            "mc mb --ignore-existing local/{}",
            config.storage.bucket
        )),
        "minio-init does not create bucket {}: {script}",
        config.storage.bucket
    );
    let mut hostnames = Vec::new();
    for node in ["mxhook-1", "mxhook-2"] {
        let service = &compose["services"][node];
        assert_eq!(
            service["depends_on"]["minio-init"]["condition"], "service_completed_successfully",
            "{node} may start before its bucket exists"
        );
        hostnames.push(service["hostname"].as_str().expect("hostname").to_owned());
    }
    assert_ne!(hostnames[0], hostnames[1], "nodes share a host name");
}

#[test]
fn kubernetes_manifests_parse_and_their_config_validates() {
    let text = read("deploy/kubernetes/mxhook.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("manifest YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|doc| doc["kind"].as_str()).collect();
    for kind in ["ConfigMap", "Secret", "Deployment", "Service"] {
        assert!(kinds.contains(&kind), "manifests lack a {kind}");
    }
    let find = |kind: &str| {
        docs.iter()
            .find(|doc| doc["kind"] == kind)
            .expect("kind present")
    };
    let toml = find("ConfigMap")["data"]["mxhook.toml"]
        .as_str()
        .expect("config file")
        .to_owned();
    let secrets = string_map(&find("Secret")["stringData"]);
    let config = check_config(Some(&toml), &secrets);

    let container = &find("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|port| port["containerPort"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(config.smtp.listen.port())),
        "SMTP port not exposed"
    );
    assert!(
        ports.contains(&u64::from(config.http.listen.port())),
        "HTTP port not exposed"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");

    // STARTTLS reads its certificate from a mounted TLS Secret.
    let pod = &find("Deployment")["spec"]["template"]["spec"];
    let cert = config.smtp.tls_cert.as_ref().expect("smtp.tls_cert set");
    let key = config.smtp.tls_key.as_ref().expect("smtp.tls_key set");
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .find(|mount| {
            mount["mountPath"]
                .as_str()
                .is_some_and(|path| cert.starts_with(path) && key.starts_with(path))
        })
        .expect("a volume mounted where smtp.tls_cert and smtp.tls_key are");
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .expect("the mounted volume");
    let secret_name = volume["secret"]["secretName"].as_str().expect("a Secret");
    let secret = docs
        .iter()
        .find(|doc| doc["kind"] == "Secret" && doc["metadata"]["name"] == secret_name)
        .expect("the TLS Secret is in the manifests");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for file in [cert, key] {
        let name = file
            .file_name()
            .and_then(|name| name.to_str())
            .expect("file");
        assert!(
            secret["data"].get(name).is_some(),
            "the Secret has no {name}"
        );
    }
    // Replicas share the config; the pod name tells their leases apart.
    let hostname = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|var| var["name"] == "HOSTNAME")
        .expect("HOSTNAME set");
    assert_eq!(
        hostname["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

#[test]
fn dockerfile_copies_what_exists_and_sets_valid_config() {
    let dockerfile = read("deploy/Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|line| line.starts_with("COPY ") && !line.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                repo_path(source).exists(),
                "Dockerfile copies missing {source}"
            );
        }
    }
    let mut env = BTreeMap::new();
    let joined = dockerfile.replace("\\\n", " ");
    for line in joined.lines().filter(|line| line.starts_with("ENV ")) {
        for pair in line[4..].split_whitespace() {
            if let Some((key, value)) = pair.split_once('=') {
                env.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    assert!(env.contains_key("MXHOOK_SMTP__LISTEN"));
    let config = check_config(None, &env);
    assert_eq!(config.smtp.listen.port(), 2525);

    // The image has no shell with /dev/tcp and no HTTP client: a HEALTHCHECK may only run the
    // mxhook binary itself, without a shell.
    for line in joined
        .lines()
        .filter(|line| line.trim_start().starts_with("HEALTHCHECK"))
    {
        let command = line.split_once("CMD").map(|(_, command)| command.trim());
        let program = command
            .and_then(|command| serde_json::from_str::<Vec<String>>(command).ok())
            .and_then(|argv| argv.first().cloned());
        assert!(
            line.trim() == "HEALTHCHECK NONE"
                || program.as_deref() == Some("/usr/local/bin/mxhook"),
            "health check the image cannot run: {line}"
        );
    }
}
