//! A real HTTP server on loopback that records every webhook request and answers with a
//! scripted sequence of replies.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Status with a `Retry-After` header, in seconds.
    StatusRetryAfter(u16, u64),
    /// Never answer (the request is recorded first).
    Hang,
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
            requests,
            script,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
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
