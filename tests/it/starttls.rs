//! STARTTLS with a certificate generated for the test: a real TLS client (Python's smtplib over
//! OpenSSL) upgrades and sends mail, and plaintext pipelined behind STARTTLS is never executed
//! over TLS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::support::gateway::config_toml;
use crate::support::{GatewayOptions, SOON, SmtpClient, TestGateway, WebhookReceiver};

struct TlsGateway {
    gateway: TestGateway,
    receiver: WebhookReceiver,
    cert_pem: String,
    cert_path: std::path::PathBuf,
}

/// A gateway with STARTTLS on a fresh self-signed certificate for 127.0.0.1.
async fn tls_gateway() -> TlsGateway {
    tls_gateway_with("").await
}

/// [`tls_gateway`] with extra `key = value` lines of the `agent` inbox.
async fn tls_gateway_with(agent_toml: &str) -> TlsGateway {
    let receiver = WebhookReceiver::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".to_owned(),
        "mx.test.example".to_owned(),
    ])
    .expect("generate certificate");
    let cert_pem = certified.cert.pem();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let mut options = GatewayOptions::webhook(receiver.url());
    options.agent_toml = agent_toml.to_owned();
    options.smtp_toml = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert_path.display(),
        key_path.display()
    );
    let toml = config_toml(dir.path(), &options);
    let config = mxhook::config::Config::from_toml_str(&toml).expect("valid config");
    let gateway = TestGateway::start_with(dir, config).await;
    TlsGateway {
        gateway,
        receiver,
        cert_pem,
        cert_path,
    }
}

impl TlsGateway {
    /// Runs a Python smtplib `script` (argv: the SMTP port, the certificate to trust) against
    /// the gateway; it must succeed.
    async fn smtplib(&self, script: &str) -> std::process::Output {
        let output = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.gateway.smtp.port().to_string())
            .arg(&self.cert_path)
            .output();
        let output = tokio::time::timeout(SOON, output)
            .await
            .expect("python finished")
            .expect("run python3");
        assert!(
            output.status.success(),
            "smtplib failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

#[tokio::test]
async fn python_smtplib_upgrades_with_starttls_and_delivers() {
    let mut setup = tls_gateway().await;
    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
    smtp.ehlo("python.test")
    assert smtp.has_extn("starttls"), smtp.esmtp_features
    code, _ = smtp.starttls(context=context)
    assert code == 220, code
    assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3"), smtp.sock.version()
    smtp.ehlo("python.test")
    assert not smtp.has_extn("starttls"), "STARTTLS offered again inside TLS"
    smtp.sendmail("py@sender.example", ["agent@example.com"],
                  b"From: py@sender.example\r\nSubject: over TLS\r\n\r\nsecret body\r\n")
    print(smtp.sock.version(), smtp.sock.cipher()[0])
"#;
    let output = setup.smtplib(script).await;
    let event = setup.receiver.recv().await.json();
    assert_eq!(event["subject"], "over TLS");
    // The event names what OpenSSL on the client's side negotiated (TLS 1.3 suites have the
    // same IANA name on both sides).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (version, cipher) = stdout.trim().split_once(' ').expect("version and cipher");
    assert_eq!(event["tls"]["version"], version, "{event}");
    if version == "TLSv1.3" {
        assert_eq!(event["tls"]["cipher"], cipher, "{event}");
    }
}

/// A TLS 1.2 session: the event's cipher is the IANA name of the suite OpenSSL names its own way.
#[tokio::test]
async fn the_event_names_a_tls_1_2_session_and_its_suite() {
    let mut setup = tls_gateway().await;
    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
context.maximum_version = ssl.TLSVersion.TLSv1_2
with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
    smtp.starttls(context=context)
    smtp.sendmail("py@sender.example", ["agent@example.com"],
                  b"From: py@sender.example\r\nSubject: over TLS 1.2\r\n\r\nbody\r\n")
"#;
    setup.smtplib(script).await;
    let event = setup.receiver.recv().await.json();
    assert_eq!(event["tls"]["version"], "TLSv1.2", "{event}");
    let cipher = event["tls"]["cipher"].as_str().expect("cipher");
    assert!(cipher.starts_with("TLS_ECDHE_"), "{cipher}");
    let stored = setup.gateway.messages("agent").await;
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let setup = tls_gateway().await;
    let stream = TcpStream::connect(setup.gateway.smtp)
        .await
        .expect("connect");
    let mut plain = BufReader::new(stream);
    let mut line = String::new();
    plain.read_line(&mut line).await.expect("greeting");
    assert!(line.starts_with("220 "), "{line:?}");
    plain
        .get_mut()
        .write_all(b"EHLO injector.example\r\n")
        .await
        .expect("write");
    loop {
        line.clear();
        plain.read_line(&mut line).await.expect("EHLO reply");
        if line.starts_with("250 ") {
            break;
        }
    }
    // The attack: commands smuggled in the same packet as STARTTLS, to be run "inside" TLS.
    plain
        .get_mut()
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@attacker.example>\r\nQUIT\r\n")
        .await
        .expect("write");
    line.clear();
    plain.read_line(&mut line).await.expect("STARTTLS reply");
    assert!(line.starts_with("220 2.0.0"), "{line:?}");
    assert!(plain.buffer().is_empty(), "server said more: {line:?}");

    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(setup.cert_pem.as_bytes())
        .expect("parse cert");
    roots.add(der).expect("trust test cert");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, plain.into_inner())
        .await
        .expect("TLS handshake");
    let mut secure = BufReader::new(tls);

    // The first thing said over TLS answers our EHLO: the smuggled MAIL and QUIT are gone.
    secure
        .get_mut()
        .write_all(b"EHLO injector.example\r\n")
        .await
        .expect("write");
    line.clear();
    secure.read_line(&mut line).await.expect("EHLO reply");
    assert!(line.starts_with("250-mx.test.example"), "{line:?}");
    loop {
        line.clear();
        secure.read_line(&mut line).await.expect("EHLO reply");
        if line.starts_with("250 ") {
            break;
        }
    }
    // No MAIL was carried over: a RCPT now is out of sequence.
    secure
        .get_mut()
        .write_all(b"RCPT TO:<agent@example.com>\r\n")
        .await
        .expect("write");
    line.clear();
    secure.read_line(&mut line).await.expect("RCPT reply");
    assert!(line.starts_with("503"), "{line:?}");
}

#[tokio::test]
async fn starttls_is_not_offered_without_a_certificate() {
    let receiver = WebhookReceiver::start(vec![]).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let ehlo = client.expect("EHLO client.test", 250).await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let (code, _) = client.cmd("STARTTLS").await;
    assert_eq!(code, 502);
}

/// `require_tls` on an inbox: a plaintext session's RCPT for it gets `530 5.7.0` (another inbox
/// in the same session is unaffected), and the same mail over STARTTLS is delivered.
#[tokio::test]
async fn an_inbox_that_requires_tls_refuses_plaintext_at_rcpt() {
    let mut setup = tls_gateway_with("require_tls = true").await;
    let (status, inbox) = setup.gateway.api("GET", "/v1/inboxes/agent", None).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["require_tls"], true, "{inbox}");

    let mut client = SmtpClient::connect(setup.gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect("MAIL FROM:<plain@sender.example>", 250).await;
    let (code, text) = client.cmd("RCPT TO:<agent@example.com>").await;
    assert_eq!(code, 530, "{text}");
    assert!(text.contains("5.7.0"), "{text}");
    client.expect("RCPT TO:<other@example.com>", 250).await;

    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
    smtp.starttls(context=context)
    smtp.sendmail("py@sender.example", ["agent@example.com"],
                  b"From: py@sender.example\r\nSubject: only over TLS\r\n\r\nbody\r\n")
"#;
    setup.smtplib(script).await;
    let event = setup.receiver.recv().await.json();
    assert_eq!(event["subject"], "only over TLS");
    assert!(event["tls"]["version"].is_string(), "{event}");
}
