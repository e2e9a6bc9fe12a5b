//! `mxhook-bench-s3`: the real S3 server the bench's S3 rows store mail in, in a process of its
//! own so its CPU is counted apart from the gateway's. It is s3s (the S3 REST protocol with
//! SigV4 authentication and checksums) over s3s-fs (a directory as the object store), served
//! with hyper on a loopback port: the same crates and wiring as the `s3s-fs` binary, without its
//! CLI parser and logging, so it builds from this workspace's lock file.
//!
//! Usage: `mxhook-bench-s3 <root> <bucket> <access key> <secret key>`; it creates
//! `<root>/<bucket>`, binds 127.0.0.1 on a free port, prints `listening <addr>` and serves until
//! killed.

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use s3s::service::S3Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, bucket, access_key, secret_key] = args.as_slice() else {
        anyhow::bail!("usage: mxhook-bench-s3 <root> <bucket> <access key> <secret key>");
    };
    std::fs::create_dir_all(std::path::Path::new(root).join(bucket))?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|err| anyhow::anyhow!("s3s-fs root {root}: {err:?}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        access_key.as_str(),
        secret_key.as_str(),
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let service: S3Service = service.clone();
                async move { service.call(request.map(s3s::Body::from)).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), handler)
                .await;
        });
    }
}
