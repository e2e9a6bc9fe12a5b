//! dnsmasq as the tests' DNS server: TXT records (SPF, DKIM, DMARC) on a loopback port, for the
//! gateway's sender verification and for independent verifiers of what the gateway signs.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// dnsmasq answering for `*.test` on a loopback port, killed when dropped.
pub struct LocalDns {
    pub port: u16,
    /// dnsmasq's query log, one line per question it was asked.
    log: tempfile::NamedTempFile,
    _child: Child,
}

impl LocalDns {
    /// Starts dnsmasq with these TXT records. Every other name under `.test` is NXDOMAIN, and
    /// there is no upstream: nothing is asked beyond this process.
    pub async fn start(txt_records: &[(String, String)]) -> Self {
        // A port picked free can be taken again before dnsmasq binds it (both UDP and TCP are
        // needed); then dnsmasq exits and another port is tried.
        for _ in 0..5 {
            let log = tempfile::NamedTempFile::new().expect("query log file");
            let port = {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("pick a port");
                socket.local_addr().expect("addr").port()
            };
            let mut command = Command::new("dnsmasq");
            command
                .arg("--keep-in-foreground")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg("--pid-file=")
                .arg("--local=/test/")
                // dnsmasq serves its own records with TTL 0 unless told; a real zone's
                // records live minutes, and the gateway's cache keeps them that long.
                .arg("--local-ttl=300")
                .arg("--log-queries")
                .arg(format!("--log-facility={}", log.path().display()));
            for (name, text) in txt_records {
                command.arg(format!("--txt-record={name},{text}"));
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("dnsmasq runs (scripts/test installs dnsmasq-base)");
            let deadline = tokio::time::Instant::now() + crate::support::SOON;
            while tokio::time::Instant::now() < deadline {
                if child.try_wait().expect("dnsmasq status").is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Self {
                        port,
                        log,
                        _child: child,
                    };
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("dnsmasq did not start on a loopback port");
    }

    /// How many times dnsmasq was asked for the TXT records of `name`.
    pub fn txt_queries(&self, name: &str) -> usize {
        let needle = format!("query[TXT] {name} from ");
        std::fs::read_to_string(self.log.path())
            .expect("read the query log")
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }

    pub fn auth_toml(&self) -> String {
        format!(
            "[auth]\nnameservers = [\"127.0.0.1:{}\"]\ndns_timeout_s = 2\n",
            self.port
        )
    }
}
