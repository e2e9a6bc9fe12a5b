//! `[smtp]`: the SMTP listener's address, name, size and line limits, timeouts, TLS files and
//! PROXY protocol, with their defaults and their validation.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Error, invalid, positive_seconds, seconds};

/// 64 MiB: no real header section comes near it.
const MAX_HEADER_BYTES: usize = 64 << 20;

/// 1 GiB/s: any higher minimum would cut off every real link.
const MAX_MIN_DATA_RATE: u64 = 1 << 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: SocketAddr,
    /// Name in the greeting, the EHLO reply and the Received header.
    pub hostname: String,
    /// Largest message accepted, in bytes; advertised in the EHLO `SIZE` keyword.
    pub max_message_size: u64,
    /// Simultaneous SMTP connections; the next one waits in the kernel backlog.
    pub max_connections: usize,
    /// RCPT commands accepted per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest line inside DATA, CRLF included. RFC 5321 §4.5.3.1.6 sets 1000, but §4.5.3.1
    /// asks receivers to accept longer ones where they can, and real HTML mail often has them;
    /// the message size bounds memory anyway.
    pub max_text_line: usize,
    /// Largest header section (everything before the first empty line), in bytes; a message
    /// with a larger one is read to its end and refused with 552 5.3.4 (Exim's `header_maxsize`).
    pub max_header_bytes: usize,
    /// Seconds a client may take over one command line (RFC 5321 §4.5.3.2.7); in DATA, the
    /// credit `min_data_rate` starts from and never exceeds.
    pub idle_timeout_s: f64,
    /// Seconds one connection may last in all.
    pub session_timeout_s: f64,
    /// Slowest DATA transfer kept going, in bytes/s (Postfix's `smtpd_min_data_rate`): DATA
    /// starts with `idle_timeout_s` of credit, each byte earns `1/min_data_rate` s, and a
    /// transfer that runs out is told `421 4.4.2` and closed, nothing stored.
    pub min_data_rate: u64,
    /// Error replies tolerated in one session before it is closed with 421.
    pub max_errors: usize,
    /// Simultaneous connections from one IP address; more are told 421 and closed.
    pub max_connections_per_ip: usize,
    /// Seconds the greeting waits; a client that talks before it is refused with 554 and closed
    /// (RFC 5321 §4.3.1: the client waits for the greeting; spam engines often do not). 0 = off.
    pub greet_pause_s: f64,
    /// PEM certificate chain for STARTTLS; STARTTLS is offered only when this and `tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Whether connections from `proxy_trusted` open with a PROXY protocol header (a load
    /// balancer's `send-proxy`), whose client address then stands for the connection's.
    pub proxy_protocol: ProxyProtocol,
    /// Networks of the proxies whose PROXY header is believed (CIDR, or a single address).
    /// Other peers are served as direct clients; one that sends a PROXY header is closed.
    pub proxy_trusted: Vec<Network>,
}

/// `smtp.proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
    Any,
}

/// One `smtp.proxy_trusted` entry: `10.0.0.0/8`, `2001:db8::/32` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network(ipnet::IpNet);

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 proxy on a dual-stack listener shows up as ::ffff:a.b.c.d.
        self.0.contains(&ip.to_canonical())
    }
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(|net| Self(net.trunc()))
            .map_err(|_| format!("`{text}` is not a network (10.0.0.0/8) or an address"))
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: "localhost".to_owned(),
            max_message_size: 26_214_400,
            max_connections: 1000,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1 << 20,
            max_header_bytes: 1 << 20,
            idle_timeout_s: 300.0,
            session_timeout_s: 1800.0,
            min_data_rate: 500,
            max_errors: 20,
            max_connections_per_ip: 20,
            greet_pause_s: 0.5,
            tls_cert: None,
            tls_key: None,
            proxy_protocol: ProxyProtocol::Off,
            proxy_trusted: Vec::new(),
        }
    }
}

impl SmtpConfig {
    /// `idle_timeout_s`: how long one command line may take.
    pub fn idle_timeout(&self) -> Duration {
        seconds(self.idle_timeout_s)
    }

    /// `session_timeout_s`: how long one connection may last.
    pub fn session_timeout(&self) -> Duration {
        seconds(self.session_timeout_s)
    }

    /// `greet_pause_s`: how long the greeting waits (zero = off).
    pub fn greet_pause(&self) -> Duration {
        seconds(self.greet_pause_s)
    }

    /// Whether a connection from `peer` must open with a PROXY header.
    pub fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol != ProxyProtocol::Off
            && self.proxy_trusted.iter().any(|net| net.contains(peer))
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid(
                "smtp.hostname",
                "must be a host name without spaces",
            ));
        }
        if self.max_message_size == 0 {
            return Err(invalid("smtp.max_message_size", "must be greater than 0"));
        }
        for (key, value) in [
            ("smtp.max_connections", self.max_connections),
            ("smtp.max_recipients", self.max_recipients),
            ("smtp.max_errors", self.max_errors),
            ("smtp.max_connections_per_ip", self.max_connections_per_ip),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.max_command_line < 512 {
            return Err(invalid(
                "smtp.max_command_line",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        if self.max_text_line < 1000 {
            return Err(invalid(
                "smtp.max_text_line",
                "must be at least 1000 (RFC 5321 §4.5.3.1.6)",
            ));
        }
        if !(1024..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(invalid(
                "smtp.max_header_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        positive_seconds("smtp.idle_timeout_s", self.idle_timeout_s)?;
        positive_seconds("smtp.session_timeout_s", self.session_timeout_s)?;
        if !(1..=MAX_MIN_DATA_RATE).contains(&self.min_data_rate) {
            return Err(invalid(
                "smtp.min_data_rate",
                "must be between 1 and 1073741824 bytes/s",
            ));
        }
        if !(0.0..=30.0).contains(&self.greet_pause_s) {
            return Err(invalid("smtp.greet_pause_s", "must be between 0 and 30"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "smtp.tls_cert",
                "set both tls_cert and tls_key, or neither",
            ));
        }
        if self.proxy_protocol != ProxyProtocol::Off && self.proxy_trusted.is_empty() {
            return Err(invalid(
                "smtp.proxy_trusted",
                "list the networks of the proxies when proxy_protocol is on",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn proxy_protocol_needs_trusted_networks_and_reads_them() {
        let config = Config::from_toml_str(
            "[smtp]\nproxy_protocol = \"v2\"\nproxy_trusted = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
        )
        .expect("valid");
        let smtp = &config.smtp;
        assert_eq!(smtp.proxy_protocol, ProxyProtocol::V2);
        for (ip, trusted) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8::1", true),
            ("127.0.0.1", false),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(smtp.expects_proxy_header(ip), trusted, "{ip}");
        }
        let off = Config::from_toml_str("[smtp]\nproxy_trusted = [\"10.0.0.0/8\"]").expect("valid");
        assert!(
            !off.smtp
                .expects_proxy_header("10.0.0.1".parse().expect("ip"))
        );

        for (toml, fragment) in [
            ("proxy_protocol = \"v1\"", "smtp.proxy_trusted"),
            ("proxy_protocol = \"v3\"", "smtp.proxy_protocol"),
            ("proxy_trusted = [\"10.0.0.0/33\"]", "smtp.proxy_trusted"),
            ("proxy_trusted = [\"example.com\"]", "smtp.proxy_trusted"),
        ] {
            let err = Config::from_toml_str(&format!("[smtp]\n{toml}"))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(fragment), "{toml}: {err}");
        }
    }
}
