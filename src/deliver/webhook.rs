//! The webhook channel: one signed POST per attempt, with the SSRF guard on the address actually
//! connected to.
//!
//! The guard lives in the client's DNS resolver, so the address checked is the address used: a
//! name that resolves to a public address at validation time and to 127.0.0.1 at send time
//! (DNS rebinding) is still refused. IP-literal URLs skip the resolver and are checked first.
//!
//! Endpoints with `verify_tls = false` go through a second client that accepts any certificate;
//! both clients are built by one function, so the guard and the no-redirect policy cannot differ.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::db::HIDDEN_VALUE;
use crate::model::WebhookEndpoint;
use crate::signature::{self, SigningInput};

/// How much of a response body is kept in the attempt log.
const RESPONSE_EXCERPT_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook URL is invalid: {0}")]
    BadUrl(String),
    #[error(
        "target address {0} is private, loopback or link-local (delivery.allow_private_targets is off)"
    )]
    BlockedAddress(IpAddr),
    #[error("plain http is not allowed (delivery.allow_http is off)")]
    InsecureScheme,
    #[error("signing failed: {0}")]
    Signing(#[from] signature::Error),
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
}

impl Error {
    /// Whether a later attempt could succeed without anyone changing the configuration.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout | Self::Connect(_) | Self::Request(_))
    }
}

/// What one POST returned.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    pub excerpt: String,
    pub latency: Duration,
}

#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    /// For endpoints with `verify_tls = false`.
    unverified_client: reqwest::Client,
    allow_http: bool,
    allow_private: bool,
    user_agent: String,
}

impl WebhookClient {
    /// # Errors
    /// [`Error::Request`] when the TLS stack cannot be initialised.
    pub fn new(timeout: Duration, allow_http: bool, allow_private: bool) -> Result<Self, Error> {
        let build = |verify_tls: bool| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .no_proxy()
                .pool_max_idle_per_host(32)
                .dns_resolver(Arc::new(GuardedResolver { allow_private }))
                .tls_danger_accept_invalid_certs(!verify_tls)
                .build()
                .map_err(|err| Error::Request(err.to_string()))
        };
        Ok(Self {
            client: build(true)?,
            unverified_client: build(false)?,
            allow_http,
            allow_private,
            user_agent: format!("mxhook/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// Signs `body` for `endpoint` and POSTs it. A non-2xx status is a `Response`, not an error;
    /// the caller decides what it means.
    ///
    /// # Errors
    /// An [`Error`] when no HTTP response was received.
    pub async fn post(
        &self,
        endpoint: &WebhookEndpoint,
        webhook_id: &str,
        body: Vec<u8>,
        timestamp: i64,
    ) -> Result<Response, Error> {
        self.post_logged(endpoint, webhook_id, body, timestamp)
            .await
            .1
    }

    /// [`post`](Self::post), also returning the headers set, in order, once a request was
    /// built (none when it was refused before that): custom header values read
    /// [`HIDDEN_VALUE`], as they may be the receiver's credentials. Transport headers the HTTP
    /// client adds (`Host`, `Content-Length`, `Accept`) are not among them.
    pub async fn post_logged(
        &self,
        endpoint: &WebhookEndpoint,
        webhook_id: &str,
        body: Vec<u8>,
        timestamp: i64,
    ) -> (Option<Vec<(String, String)>>, Result<Response, Error>) {
        match self.build(endpoint, webhook_id, body, timestamp) {
            Ok((request, headers)) => (Some(headers), self.send(request).await),
            Err(err) => (None, Err(err)),
        }
    }

    fn build(
        &self,
        endpoint: &WebhookEndpoint,
        webhook_id: &str,
        body: Vec<u8>,
        timestamp: i64,
    ) -> Result<(reqwest::RequestBuilder, Vec<(String, String)>), Error> {
        let url = url::Url::parse(&endpoint.url).map_err(|err| Error::BadUrl(err.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(Error::InsecureScheme),
            other => return Err(Error::BadUrl(format!("unsupported scheme `{other}`"))),
        }
        if let Some(ip) = literal_ip(&url)
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(Error::BlockedAddress(ip));
        }
        let secrets: Vec<String> = endpoint
            .secret
            .iter()
            .chain(endpoint.previous_secret.iter())
            .cloned()
            .collect();
        let signature_headers = signature::sign(&SigningInput {
            scheme: endpoint.signature,
            secrets: &secrets,
            webhook_id,
            timestamp,
            body: &body,
            hmac_header: endpoint.signature_header.as_deref(),
            hmac_format: endpoint.signature_format,
        })?;
        let client = if endpoint.verify_tls {
            &self.client
        } else {
            &self.unverified_client
        };
        let mut logged =
            Vec::with_capacity(3 + endpoint.custom_headers.len() + signature_headers.len());
        let mut request = client.post(url);
        for (name, value) in [
            ("Content-Type", "application/json"),
            ("User-Agent", self.user_agent.as_str()),
            ("webhook-id", webhook_id),
        ] {
            request = request.header(name, value);
            logged.push((name.to_owned(), value.to_owned()));
        }
        // Custom headers go first and reserved names were refused when the rule was saved, so
        // they can add to a request but never replace its signature or identity.
        for (name, value) in &endpoint.custom_headers {
            request = request.header(name.as_str(), value.as_str());
            logged.push((name.clone(), HIDDEN_VALUE.to_owned()));
        }
        if let Some(timeout) = endpoint.timeout {
            request = request.timeout(timeout);
        }
        for (name, value) in signature_headers {
            request = request.header(&name, &value);
            logged.push((name, value));
        }
        Ok((request.body(body), logged))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, Error> {
        let started = Instant::now();
        let response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let excerpt = read_excerpt(response).await;
        Ok(Response {
            status,
            retry_after,
            excerpt,
            latency: started.elapsed(),
        })
    }
}

fn classify(err: reqwest::Error) -> Error {
    if err.is_timeout() {
        return Error::Timeout;
    }
    // The guard's refusal comes back wrapped in the connect error; find it again so the
    // attempt log names the real cause and the job is not retried for nothing.
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<BlockedError>() {
            return Error::BlockedAddress(blocked.0);
        }
        source = current.source();
    }
    if err.is_connect() {
        Error::Connect(error_chain(&err))
    } else {
        Error::Request(error_chain(&err))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}

async fn read_excerpt(mut response: reqwest::Response) -> String {
    let mut excerpt = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = RESPONSE_EXCERPT_BYTES.saturating_sub(excerpt.len());
        excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if excerpt.len() >= RESPONSE_EXCERPT_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}

fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("address {0} is not a public address")]
struct BlockedError(IpAddr);

/// Resolves with the system resolver and drops addresses webhooks must not reach.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            match (allowed.is_empty(), resolved.first()) {
                (true, Some(first)) => {
                    Err(Box::new(BlockedError(first.ip()))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// True for addresses on the public Internet: not loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, broadcast, documentation or IPv4-mapped/compatible forms of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = blocked.parse().expect("ip");
            assert!(!is_public(ip), "{blocked} should be blocked");
        }
        for allowed in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = allowed.parse().expect("ip");
            assert!(is_public(ip), "{allowed} should be allowed");
        }
    }
}
