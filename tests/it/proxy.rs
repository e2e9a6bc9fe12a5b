//! The PROXY protocol behind a real proxy: Debian's `haproxy` with `send-proxy` and
//! `send-proxy-v2` in front of the gateway, clients bound to other loopback addresses (127.0.0.2,
//! 127.0.0.3) so that the client the event names can be told from the proxy (127.0.0.1). Then
//! hostile headers over raw sockets: missing, truncated, malformed, oversized, from an untrusted
//! peer, and a header split across reads.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::process::free_addr;
use crate::support::{
    GatewayOptions, SOON, SmtpClient, TestGateway, WebhookReceiver, simple_message,
};

async fn gateway_with(smtp_lines: &str) -> (TestGateway, WebhookReceiver) {
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(receiver.url());
    options.smtp_toml = smtp_lines.to_owned();
    (TestGateway::start(options).await, receiver)
}

/// haproxy in TCP mode on a loopback port, forwarding to the gateway with `server_options`.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(gateway: SocketAddr, server_options: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let config = format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend smtp\n  bind {addr}\n  unique-id-format %ci-%cp-%rt\n  default_backend gateway\n\
             backend gateway\n  server gateway {gateway} {server_options}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy config");
        // The test fails, never skips, without haproxy: scripts/test installs it.
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/test installs it)");
        let proxy = Self {
            child,
            addr,
            _dir: dir,
        };
        crate::support::eventually("haproxy to listen", || async {
            TcpStream::connect(addr).await.ok()
        })
        .await;
        proxy
    }

    /// A connection through the proxy from `source` (a loopback address other than the
    /// proxy's own 127.0.0.1).
    async fn connect_from(&self, source: [u8; 4]) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind the client address");
        socket.connect(self.addr).await.expect("connect to haproxy")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send_one(client: &mut SmtpClient, subject: &str) {
    let message = simple_message("ada@sender.example", "agent@example.com", subject, "body");
    let (code, text) = client
        .send_message("ada@sender.example", &["agent@example.com"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "server did not close the connection; got {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

fn v2_header(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    let len = u16::try_from(addresses.len() + tlvs.len()).expect("small header");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(addresses);
    out.extend_from_slice(tlvs);
    out
}

#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2_make_the_client_the_remote_ip() {
    for (mode, server_options) in [
        ("v1", "send-proxy"),
        (
            "v2",
            "send-proxy-v2 proxy-v2-options unique-id,crc32c,authority",
        ),
        ("any", "send-proxy-v2"),
        ("any", "send-proxy"),
    ] {
        let (gateway, mut receiver) = gateway_with(&format!(
            "proxy_protocol = \"{mode}\"\nproxy_trusted = [\"127.0.0.1/32\"]\nmax_connections_per_ip = 1"
        ))
        .await;
        let haproxy = Haproxy::start(gateway.smtp, server_options).await;

        let mut client = SmtpClient::over(haproxy.connect_from([127, 0, 0, 2]).await).await;
        assert_eq!(client.greeting.0, 220, "{mode} {server_options}");
        send_one(&mut client, "through haproxy").await;
        let event = receiver.recv().await.json();
        assert_eq!(event["remote_ip"], "127.0.0.2", "{mode} {server_options}");
        // A plaintext session: `tls` is there, and null.
        assert_eq!(event.get("tls"), Some(&serde_json::Value::Null));
        let messages = gateway.messages("agent").await;
        assert_eq!(messages.len(), 1);

        // The per-address cap (1 here) counts clients, not the proxy: a second client is
        // served while the first is still connected, a second session of the first is not.
        let second = SmtpClient::over(haproxy.connect_from([127, 0, 0, 3]).await).await;
        assert_eq!(
            second.greeting.0, 220,
            "{mode}: another client is another address"
        );
        let third = SmtpClient::over(haproxy.connect_from([127, 0, 0, 2]).await).await;
        assert_eq!(third.greeting.0, 421, "{mode}: {:?}", third.greeting);
        drop(haproxy);
        gateway.stop().await;
    }
}

#[tokio::test]
async fn hostile_headers_from_the_trusted_proxy_close_with_nothing_said_or_accepted() {
    let (gateway, mut receiver) = gateway_with(
        "proxy_protocol = \"any\"\nproxy_trusted = [\"127.0.0.1\"]\nidle_timeout_s = 2\ngreet_pause_s = 0",
    )
    .await;
    let transaction: &[u8] = b"EHLO x\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n";
    let mut v4 = vec![192, 0, 2, 9, 127, 0, 0, 1];
    v4.extend_from_slice(&[0x9c, 0x40, 0, 25]);
    // A length field of 3000: past what any real proxy sends.
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x0b\xb8".to_vec();
    oversized.extend_from_slice(&[b'x'; 3000]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("no header, SMTP at once", transaction.to_vec(), false),
        (
            "v1 with a bad address",
            [
                b"PROXY TCP4 192.0.2.300 127.0.0.1 1 25\r\n".as_slice(),
                transaction,
            ]
            .concat(),
            false,
        ),
        (
            "v1 without CRLF",
            [
                b"PROXY TCP4 192.0.2.9 127.0.0.1 1 25\n".as_slice(),
                transaction,
            ]
            .concat(),
            false,
        ),
        (
            "v1 past 107 bytes",
            [
                b"PROXY UNKNOWN ".as_slice(),
                &[b'a'; 200],
                b"\r\n",
                transaction,
            ]
            .concat(),
            false,
        ),
        ("v2 oversized", oversized, false),
        (
            "v2 with a TLV past its end",
            [
                v2_header(1, 0x11, &v4, &[0x04, 0, 50, 1]),
                transaction.to_vec(),
            ]
            .concat(),
            false,
        ),
        (
            "v2 version 3",
            {
                let mut header = v2_header(1, 0x11, &v4, &[]);
                header[12] = 0x31;
                [header, transaction.to_vec()].concat()
            },
            false,
        ),
        // Cut short by the peer closing, and cut short by the peer going silent.
        ("v1 truncated", b"PROXY TCP4 192.0.2.9 127.0".to_vec(), true),
        (
            "v2 truncated",
            v2_header(1, 0x11, &v4, &[])[..20].to_vec(),
            true,
        ),
        ("silent", Vec::new(), false),
    ];
    for (name, bytes, half_close) in cases {
        let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        if half_close {
            stream.shutdown().await.expect("half close");
        }
        let started = std::time::Instant::now();
        let received = read_until_closed(&mut stream).await;
        assert_eq!(
            String::from_utf8_lossy(&received),
            "",
            "{name}: the server said something"
        );
        if name == "silent" {
            assert!(
                started.elapsed() >= Duration::from_millis(1500),
                "a silent proxy is waited for, not dropped at once"
            );
        }
    }
    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.messages("agent").await.len(), 0);
}

#[tokio::test]
async fn a_header_split_across_reads_is_waited_for_and_v2_tlvs_are_skipped() {
    let (gateway, mut receiver) =
        gateway_with("proxy_protocol = \"any\"\nproxy_trusted = [\"127.0.0.0/8\"]").await;

    // v1 in three pieces with pauses between them.
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    for piece in [
        &b"PROXY TCP4 192.0"[..],
        b".2.9 127.0.0.1 40",
        b"000 25\r\n",
    ] {
        stream.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = SmtpClient::over(stream).await;
    assert_eq!(client.greeting.0, 220);
    send_one(&mut client, "split v1").await;
    assert_eq!(receiver.recv().await.json()["remote_ip"], "192.0.2.9");

    // v2 for an IPv6 client, with TLVs (ALPN, authority, a NOOP padding), byte by byte for
    // the fixed part and then the rest.
    let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
    v6.extend_from_slice(&[0; 11]);
    v6.push(9);
    v6.extend_from_slice(&[0; 15]);
    v6.push(1);
    v6.extend_from_slice(&[0xc3, 0x50, 0, 25]);
    let tlvs = [
        &[0x01, 0, 4][..],
        b"smtp",
        &[0x02, 0, 14],
        b"mx.example.org",
        &[0x04, 0, 3, 0, 0, 0],
    ]
    .concat();
    let header = v2_header(1, 0x21, &v6, &tlvs);
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    for byte in &header[..16] {
        stream.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.write_all(&header[16..]).await.expect("write");
    let mut client = SmtpClient::over(stream).await;
    assert_eq!(client.greeting.0, 220);
    send_one(&mut client, "split v2").await;
    assert_eq!(receiver.recv().await.json()["remote_ip"], "2001:db8::9");

    // LOCAL: the proxy's own connection (a health check) keeps the proxy's address.
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    stream
        .write_all(&v2_header(0, 0x00, &[], &[]))
        .await
        .expect("write");
    let mut client = SmtpClient::over(stream).await;
    send_one(&mut client, "local").await;
    assert_eq!(receiver.recv().await.json()["remote_ip"], "127.0.0.1");
}

#[tokio::test]
async fn an_untrusted_peer_is_a_direct_client_and_its_proxy_header_closes_the_session() {
    let (gateway, mut receiver) = gateway_with(
        "proxy_protocol = \"v1\"\nproxy_trusted = [\"10.0.0.0/8\"]\ngreet_pause_s = 0",
    )
    .await;
    // Served without a header, under its own address.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    assert_eq!(client.greeting.0, 220);
    send_one(&mut client, "direct").await;
    assert_eq!(receiver.recv().await.json()["remote_ip"], "127.0.0.1");

    // A header claiming another client: refused and closed, nothing after it runs.
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client
        .send_raw(
            b"PROXY TCP4 192.0.2.9 127.0.0.1 1 25\r\nEHLO x\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<agent@example.com>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n",
        )
        .await;
    let (code, text) = client.read_reply().await;
    assert_eq!(code, 554, "{text}");
    assert!(client.is_closed().await);

    // A v2 header: its signature is built to end an SMTP session (`QUIT`) before the binary
    // part is read as commands.
    let mut stream = TcpStream::connect(gateway.smtp).await.expect("connect");
    let mut v4 = vec![192, 0, 2, 9, 127, 0, 0, 1];
    v4.extend_from_slice(&[0x9c, 0x40, 0, 25]);
    let header = [
        v2_header(1, 0x11, &v4, &[]),
        b"MAIL FROM:<a@b>\r\n".to_vec(),
    ]
    .concat();
    stream.write_all(&header).await.expect("write");
    let received = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(received.starts_with("220 "), "{received}");
    assert!(received.contains("221 "), "{received}");
    assert!(!received.contains("250 "), "{received}");

    receiver.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(gateway.messages("agent").await.len(), 1);
}
