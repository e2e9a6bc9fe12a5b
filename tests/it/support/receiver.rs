//! A real HTTP server on loopback that records every webhook request and answers with a
//! scripted sequence of replies; [`WebhookReceiver::start_tls`] serves HTTPS with a self-signed
//! certificate.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A redirect status with a `Location` header.
    Redirect(u16, String),
    /// Status with a `Retry-After` header, in seconds.
    StatusRetryAfter(u16, u64),
    /// Never answer (the request is recorded first).
    Hang,
    /// Answer 200 once the gate is notified (the request is recorded first).
    Wait(Arc<tokio::sync::Notify>),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    scheme: &'static str,
    requests: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Answers with `script` in order, then 200 for ever.
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Self::serve(listener, script)
    }

    pub fn serve(listener: tokio::net::TcpListener, script: Vec<Reply>) -> Self {
        Self::serve_on(listener, "http", script)
    }

    /// Answers like [`Self::start`], over TLS with a fresh self-signed certificate for
    /// 127.0.0.1 that no client trusts.
    pub async fn start_tls(script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("generate certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .expect("private key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::serve_on(TlsListener { listener, acceptor }, "https", script)
    }

    fn serve_on<L>(listener: L, scheme: &'static str, script: Vec<Reply>) -> Self
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let addr = listener.local_addr().expect("receiver addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let shared = Arc::clone(&script);
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let script = Arc::clone(&shared);
            async move {
                let _ = tx.send(Received { headers, body });
                let next = script.lock().expect("script lock").pop_front();
                match next.unwrap_or(Reply::Status(200)) {
                    Reply::Status(code) => (status(code), HeaderMap::new(), "ok"),
                    Reply::StatusRetryAfter(code, seconds) => {
                        let mut headers = HeaderMap::new();
                        headers.insert("retry-after", seconds.to_string().parse().expect("header"));
                        (status(code), headers, "later")
                    }
                    Reply::Redirect(code, location) => {
                        let mut headers = HeaderMap::new();
                        headers.insert("location", location.parse().expect("header"));
                        (status(code), headers, "moved")
                    }
                    Reply::Wait(gate) => {
                        gate.notified().await;
                        (StatusCode::OK, HeaderMap::new(), "ok")
                    }
                    Reply::Hang => {
                        std::future::pending::<()>().await;
                        (StatusCode::OK, HeaderMap::new(), "")
                    }
                }
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            scheme,
            requests,
            script,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
    }

    /// Replaces the remaining scripted replies.
    pub fn set_script(&self, script: Vec<Reply>) {
        *self.script.lock().expect("script lock") = VecDeque::from(script);
    }

    /// The next request, or a panic after `super::SOON`.
    pub async fn recv(&mut self) -> Received {
        tokio::time::timeout(super::SOON, self.requests.recv())
            .await
            .expect("timed out waiting for a webhook request")
            .expect("receiver channel closed")
    }

    /// The next request, however long it takes (the caller bounds the wait).
    pub async fn recv_any(&mut self) -> Received {
        self.requests.recv().await.expect("receiver channel closed")
    }

    /// The next request if one arrives within `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Asserts that no request arrives within `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration) {
        if let Ok(Some(request)) = tokio::time::timeout(quiet, self.requests.recv()).await {
            panic!(
                "unexpected webhook request: {}",
                String::from_utf8_lossy(&request.body)
            );
        }
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("valid status code")
}

/// TCP accept plus TLS handshake; a failed handshake (a client that refuses the certificate) is
/// dropped and the next connection accepted.
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.listener.accept().await else {
                continue;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream)).await
            {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
