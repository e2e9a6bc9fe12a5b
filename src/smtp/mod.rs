//! Stage 1, receive: the SMTP listener. Accepts connections under a connection cap and runs one
//! tracked task per session.
//!
//! The cap is a semaphore permit taken *before* `accept`, so excess clients wait in the kernel
//! backlog instead of costing memory here. A second cap counts live sessions per peer address:
//! one address past `smtp.max_connections_per_ip` is told `421 4.7.0` and closed, so a single
//! host cannot take every global slot. On shutdown the listener stops accepting, idle
//! sessions are told `421 4.3.2`, and a session in the middle of DATA finishes its message.

pub mod proto;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use session::SessionContext;

/// Serves SMTP on `listener` until `shutdown` is cancelled. Session tasks go on `tracker`, so
/// the caller can wait for them to drain.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections));
    let per_peer = Arc::new(PeerCounts::default());
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually EMFILE or a connection reset before accept; back off briefly
                    // rather than spin.
                    tracing::warn!(error = %err, "accepting SMTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(peer_slot) = per_peer.take(peer.ip(), ctx.config.max_connections_per_ip) else {
            tracing::warn!(%peer, "refusing connection: too many from this address");
            tracker.spawn(async move {
                let mut stream = stream;
                let mut reply = Vec::new();
                proto::replies::too_many_from_address().write_to(&mut reply);
                // Bounded, so a peer that never reads cannot keep the slot.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    stream.write_all(&reply).await?;
                    stream.shutdown().await
                })
                .await;
                drop(permit);
            });
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let session_shutdown = shutdown.child_token();
        let span = tracing::info_span!("smtp_session", %peer);
        tracker.spawn(
            async move {
                session::run(stream, peer, &ctx, session_shutdown).await;
                drop(peer_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
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
