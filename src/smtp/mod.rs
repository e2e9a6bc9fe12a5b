//! Stage 1, receive: the SMTP listener. Accepts connections under a connection cap and runs one
//! tracked task per session.
//!
//! The cap is a semaphore permit taken *before* `accept`, so excess clients wait in the kernel
//! backlog instead of costing memory here. On shutdown the listener stops accepting, idle
//! sessions are told `421 4.3.2`, and a session in the middle of DATA finishes its message.

pub mod proto;
pub mod session;

use std::sync::Arc;

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
        let ctx = Arc::clone(&ctx);
        let session_shutdown = shutdown.child_token();
        let span = tracing::info_span!("smtp_session", %peer);
        tracker.spawn(
            async move {
                session::run(stream, peer, &ctx, session_shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
