//! Stage 1, receive: the SMTP listener. Accepts connections under a connection cap and runs one
//! tracked task per session.
//!
//! The cap is a semaphore permit taken *before* `accept`, so excess clients wait in the kernel
//! backlog instead of costing memory here. A second cap counts live sessions per peer address:
//! one address past `smtp.max_connections_per_ip` is told `421 4.7.0` and closed, so a single
//! host cannot take every global slot. On shutdown idle sessions are told `421 4.3.2` and a
//! session in the middle of DATA finishes its message; while they drain the listener stays open
//! and greets each new connection with `421 4.3.2`, so senders learn to retry later instead of
//! seeing a refused connection, and it closes once the last session has ended.
//!
//! Behind a load balancer (`smtp.proxy_protocol`), a connection from `smtp.proxy_trusted` opens
//! with a PROXY header ([`proxy`]); its client, not the balancer, is the session's peer and is
//! what the per-address cap counts.

pub mod proto;
pub mod proxy;
pub(crate) mod reader;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use session::SessionContext;

use crate::config::smtp::ProxyProtocol;
use crate::counters::Rejection;

/// Longest wait for a trusted proxy's header (less when `smtp.idle_timeout_s` is shorter).
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves SMTP on `listener` until `shutdown` is cancelled and the sessions have drained.
/// Session tasks go on `tracker` too, so the caller can wait for them.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections));
    let per_peer = Arc::new(PeerCounts::default());
    // Only sessions count toward the drain: a refusal during it must not prolong it.
    let sessions = TaskTracker::new();
    loop {
        // Biased: once shutdown is asked, no connection waiting in the backlog gets a 220.
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    back_off_after_accept_error(&err).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if ctx.config.expects_proxy_header(peer.ip()) {
            // The header is read in the session's task: a slow or silent proxy connection
            // must not hold up the accept loop. The per-address cap then counts the client.
            let ctx = Arc::clone(&ctx);
            let per_peer = Arc::clone(&per_peer);
            let session_shutdown = shutdown.child_token();
            let span =
                tracing::info_span!("smtp_session", proxy = %peer, peer = tracing::field::Empty);
            tracker.spawn(
                sessions.track_future(
                    async move {
                        serve_proxied(stream, peer, &ctx, &per_peer, session_shutdown).await;
                        drop(permit);
                    }
                    .instrument(span),
                ),
            );
            continue;
        }
        let Some(peer_slot) = per_peer.take(peer.ip(), ctx.config.max_connections_per_ip) else {
            tracing::warn!(%peer, "refusing connection: too many from this address");
            tracker.spawn(async move {
                refuse(stream, &proto::replies::too_many_from_address()).await;
                drop(permit);
            });
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let session_shutdown = shutdown.child_token();
        let span = tracing::info_span!("smtp_session", %peer);
        tracker.spawn(
            sessions.track_future(
                async move {
                    session::run(stream, peer, &ctx, session_shutdown).await;
                    drop(peer_slot);
                    drop(permit);
                }
                .instrument(span),
            ),
        );
    }
    drain(&listener, &permits, &sessions, &tracker).await;
}

/// A connection from a trusted proxy: its PROXY header first, then a session for the client it
/// names. A connection whose header is missing, malformed, oversized or incomplete in time is
/// closed without a word: the peer is a proxy, and nothing it sent was read as SMTP.
async fn serve_proxied(
    mut stream: TcpStream,
    proxy: std::net::SocketAddr,
    ctx: &SessionContext,
    per_peer: &Arc<PeerCounts>,
    shutdown: CancellationToken,
) {
    let versions = match ctx.config.proxy_protocol {
        ProxyProtocol::V1 => proxy::Versions::V1,
        ProxyProtocol::V2 => proxy::Versions::V2,
        ProxyProtocol::Any | ProxyProtocol::Off => proxy::Versions::Any,
    };
    // A proxy sends its header at once; a client's idle allowance is far too generous for it.
    let timeout = ctx.config.idle_timeout().min(PROXY_HEADER_TIMEOUT);
    let header = tokio::select! {
        biased;
        () = shutdown.cancelled() => return,
        header = proxy::read_header(&mut stream, versions, timeout) => header,
    };
    let client = match header {
        Ok(header) => header.client.unwrap_or(proxy),
        Err(proxy::Error::ClosedSilently) => {
            tracing::debug!("proxy connection closed before its header (a health check)");
            return;
        }
        Err(err) => {
            ctx.counters.reject(Rejection::Malformed);
            tracing::warn!(error = %err, "closing connection from proxy");
            return;
        }
    };
    tracing::Span::current().record("peer", tracing::field::display(client));
    let Some(peer_slot) = per_peer.take(client.ip(), ctx.config.max_connections_per_ip) else {
        tracing::warn!(%client, "refusing connection: too many from this address");
        refuse(stream, &proto::replies::too_many_from_address()).await;
        return;
    };
    session::run(stream, client, ctx, shutdown).await;
    drop(peer_slot);
}

/// Answers every new connection with `421 4.3.2` until the last session has ended. The
/// refusals still take a connection permit, so a flood during the drain stays bounded.
async fn drain(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    sessions: &TaskTracker,
    tracker: &TaskTracker,
) {
    sessions.close();
    loop {
        let permit = tokio::select! {
            biased;
            () = sessions.wait() => return,
            permit = Arc::clone(permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            biased;
            () = sessions.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    back_off_after_accept_error(&err).await;
                    continue;
                }
            },
        };
        tracker.spawn(async move {
            refuse(stream, &proto::replies::shutting_down()).await;
            drop(permit);
        });
    }
}

async fn back_off_after_accept_error(err: &std::io::Error) {
    // Usually EMFILE or a connection reset before accept; back off briefly rather than spin.
    tracing::warn!(error = %err, "accepting SMTP connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Sends `reply` instead of a greeting and closes the connection.
async fn refuse(mut stream: TcpStream, reply: &proto::Reply) {
    let mut bytes = Vec::new();
    reply.write_to(&mut bytes);
    // Bounded, so a peer that never reads cannot keep the slot.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// Live sessions per peer address.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    /// A slot for one more session from `ip`, or `None` when it already has `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        // An IPv4 client on a dual-stack listener is one host whichever way it is written.
        let ip = ip.to_canonical();
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

/// One session's place in [`PeerCounts`]; given back on drop, however the session ends.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
