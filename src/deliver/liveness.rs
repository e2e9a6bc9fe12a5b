//! Fast recovery after a crash: a dead node's delivery leases are taken over within seconds,
//! not after `delivery.lease_s`.
//!
//! A lease protects an attempt in flight from a second node; it lasts `lease_s` (330 s by
//! default) because an attempt may take `timeout_s`. When its node dies (kill -9, a lost
//! machine) nothing is in flight any more, but the lease alone would hold accepted mail back for
//! those minutes. So:
//!
//! - **SQLite**: one process serves the file. This one takes an exclusive `flock` on it; holding
//!   it, every lease found at start belongs to a process that is gone, and all are released at
//!   once. (A second process on the same file does not get the lock and releases nothing.)
//! - **PostgreSQL**: each node writes a heartbeat row every [`HEARTBEAT`]; every node reads
//!   the rows, and one whose heartbeat has not changed for [`DEAD_AFTER`] of the *reader's* own
//!   monotonic clock (so clock skew between machines does not matter) is dead: its row goes and
//!   its pending jobs are due again. A node only slow to write loses its leases to a second
//!   attempt, the same as a lease running out; deliveries are at least once either way.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db};
use crate::model::now_ms;

/// How often a node writes its heartbeat and looks at the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat may stay unchanged before its node counts as dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);

/// Holds the SQLite file lock for as long as the node serves.
pub struct Liveness {
    db: Db,
    node_id: String,
    _sqlite_lock: Option<std::fs::File>,
}

impl Liveness {
    /// On SQLite, takes the file lock and, holding it, releases every lease left by the
    /// process before; then writes the first heartbeat.
    ///
    /// # Errors
    /// A database error from the release or the first heartbeat.
    pub async fn start(db: Db, node_id: String) -> Result<Self, crate::db::Error> {
        let mut sqlite_lock = None;
        if db.backend() == Backend::Sqlite
            && let Some(path) = db.sqlite_path()
        {
            match exclusive_lock(path) {
                Ok(Some(file)) => {
                    let released = db.release_all_leases().await?;
                    if released > 0 {
                        tracing::warn!(
                            released,
                            "released the delivery leases of the previous process; those jobs are due now"
                        );
                    }
                    sqlite_lock = Some(file);
                }
                Ok(None) => tracing::warn!(
                    path = %path.display(),
                    "another process serves this SQLite database; leases found at start are left to run out"
                ),
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    error = %err,
                    "cannot lock the SQLite database file; leases found at start are left to run out"
                ),
            }
        }
        if db.backend() == Backend::Postgres {
            db.node_heartbeat(&node_id, now_ms()).await?;
        }
        Ok(Self {
            db,
            node_id,
            _sqlite_lock: sqlite_lock,
        })
    }

    /// Beats and watches the other nodes until `shutdown`, then removes this node's row.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.db.backend() == Backend::Sqlite {
            // No other node to watch, and a write every second would make the read-then-write
            // transactions of other connections fail with SQLITE_BUSY more often. Only the
            // file lock is held, until shutdown.
            shutdown.cancelled().await;
            return;
        }
        // Per other node: its last heartbeat value and when (here) it was first seen so.
        let mut seen: HashMap<String, (i64, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.db.node_heartbeat(&self.node_id, now_ms()).await {
                tracing::warn!(error = %err, "writing this node's heartbeat failed");
            }
            self.reap(&mut seen).await;
        }
        if let Err(err) = self.db.remove_node(&self.node_id).await {
            tracing::debug!(error = %err, "removing this node's heartbeat row failed");
        }
    }

    async fn reap(&self, seen: &mut HashMap<String, (i64, Instant)>) {
        let rows = match self.db.node_heartbeats().await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "reading node heartbeats failed");
                return;
            }
        };
        let now = Instant::now();
        seen.retain(|id, _| rows.iter().any(|(row_id, _)| row_id == id));
        for (id, heartbeat_at) in rows {
            if id == self.node_id {
                continue;
            }
            let entry = seen.entry(id.clone()).or_insert((heartbeat_at, now));
            if entry.0 != heartbeat_at {
                *entry = (heartbeat_at, now);
                continue;
            }
            if now.duration_since(entry.1) < DEAD_AFTER {
                continue;
            }
            match self.db.reclaim_dead_node(&id, heartbeat_at).await {
                Ok(released) => {
                    tracing::warn!(
                        node = %id,
                        released,
                        "node stopped beating; its delivery leases were released"
                    );
                    seen.remove(&id);
                }
                Err(err) => {
                    tracing::warn!(node = %id, error = %err, "reclaiming a dead node failed")
                }
            }
        }
    }
}

/// An exclusive, non-blocking `flock` on `path`: `None` when another process holds it. SQLite
/// itself locks with `fcntl`, which on Linux is independent of `flock`, so this never gets in
/// its way.
fn exclusive_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new().read(true).open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(err) => Err(err.into()),
    }
}
