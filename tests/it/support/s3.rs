//! A real S3 protocol server in-process: `s3s` (S3 REST, SigV4, checksums) over `s3s-fs` (a
//! directory as the object store), served with hyper on a port-0 loopback listener.
//!
//! A thin layer in front of it records every request's method, path and headers, and injects the
//! faults the tests need: answering `503`, hanging, altering a PUT's body in transit, or being
//! down altogether (listener and every open connection closed, so the port refuses).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";
pub const BUCKET: &str = "test-bucket";

/// How the server answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// `503 Slow Down` to every request, as S3 does under overload.
    ServiceUnavailable,
    /// Accepts the request and never answers.
    Hang,
    /// Flips one bit of every PUT body on its way to the server, headers untouched, as a
    /// faulty link or proxy would.
    CorruptPutBody,
    /// Stores every PUT and then never answers it, as when the acknowledgement is lost; other
    /// requests are served normally.
    HangAfterStoringPut,
}

/// One request as it reached the fault layer.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
}

pub struct TestS3 {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    service: S3Service,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    server: Option<JoinSet<()>>,
}

impl TestS3 {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create bucket directory");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let addr = listener.local_addr().expect("s3 addr");
        let mut s3 = Self {
            addr,
            root,
            service,
            behaviour: Arc::new(Mutex::new(Behaviour::Normal)),
            seen: Arc::new(Mutex::new(Vec::new())),
            server: None,
        };
        s3.serve(listener);
        s3
    }

    /// The `[storage]` section that points the gateway at this server.
    pub fn storage_toml(&self, timeout_s: f64) -> String {
        self.storage_toml_with_prefix(timeout_s, "inbound/")
    }

    /// [`Self::storage_toml`] with another `storage.prefix`.
    pub fn storage_toml_with_prefix(&self, timeout_s: f64, prefix: &str) -> String {
        format!(
            r#"backend = "s3"
bucket = "{BUCKET}"
prefix = "{prefix}"
endpoint = "http://{addr}"
region = "us-east-1"
path_style = true
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
timeout_s = {timeout_s}
"#,
            addr = self.addr,
        )
    }

    /// Where s3s-fs keeps the object `key` of the test bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Every object in the bucket, as keys.
    pub fn keys(&self) -> Vec<String> {
        let bucket = self.root.path().join(BUCKET);
        let mut keys = Vec::new();
        let mut dirs = vec![bucket.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read bucket dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|ext| ext == "eml") {
                    let key = path.strip_prefix(&bucket).expect("under bucket");
                    keys.push(key.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        keys
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The method of every request received so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|request| request.method)
            .collect()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    /// Closes the listener and every connection: the port now refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind s3 port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let service = self.service.clone();
        let behaviour = Arc::clone(&self.behaviour);
        let seen = Arc::clone(&self.seen);
        let mut server = JoinSet::new();
        server.spawn(async move {
            // Connections live in this inner set so that dropping the accept task drops them.
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let behaviour = Arc::clone(&behaviour);
                let seen = Arc::clone(&seen);
                connections.spawn(async move {
                    let handler =
                        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                            let service = service.clone();
                            let behaviour = *behaviour.lock().expect("behaviour lock");
                            seen.lock().expect("seen lock").push(SeenRequest {
                                method: request.method().to_string(),
                                path: request.uri().path().to_owned(),
                                headers: request.headers().clone(),
                            });
                            async move { answer(&service, behaviour, request).await }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), handler)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        self.server = Some(server);
    }
}

async fn answer(
    service: &S3Service,
    behaviour: Behaviour,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<s3s::Body>, s3s::HttpError> {
    match behaviour {
        Behaviour::Normal => service.call(request.map(s3s::Body::from)).await,
        Behaviour::ServiceUnavailable => Ok(hyper::Response::builder()
            .status(503)
            .header("content-type", "application/xml")
            .body(s3s::Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    .to_owned(),
            ))
            .expect("503 response")),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::CorruptPutBody if request.method() == hyper::Method::PUT => {
            let (parts, body) = request.into_parts();
            let mut body = s3s::Body::from(body);
            let mut bytes = body
                .store_all_limited(64 << 20)
                .await
                .expect("PUT body readable")
                .to_vec();
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x01;
            }
            service
                .call(hyper::Request::from_parts(parts, s3s::Body::from(bytes)))
                .await
        }
        Behaviour::HangAfterStoringPut if request.method() == hyper::Method::PUT => {
            let _ = service.call(request.map(s3s::Body::from)).await;
            std::future::pending().await
        }
        Behaviour::CorruptPutBody | Behaviour::HangAfterStoringPut => {
            service.call(request.map(s3s::Body::from)).await
        }
    }
}
