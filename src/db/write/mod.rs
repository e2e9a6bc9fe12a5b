//! Group commit: the writes that sit on the critical path of a message — its rate-limit count,
//! the accepted message with its delivery jobs, the claim of its jobs, and each attempt with its
//! job's next state — go through one committer task per node that puts every write waiting at
//! that moment into one transaction. The commit (one WAL sync on SQLite, one WAL flush on
//! PostgreSQL) is then paid once per batch instead of once per write, and on SQLite these
//! writers never queue on the database's write lock, whose busy handler sleeps in steps of
//! milliseconds.
//!
//! A caller waits for the result of the transaction that contained its write, so "returned Ok"
//! still means "durable" and the SMTP `250` keeps its meaning. The committer takes whatever is
//! queued when it becomes free: a lone write is committed at once (no added latency) and a busy
//! node commits in batches that grow with the load. If a batch fails, each write is retried
//! alone, so one bad write never fails its neighbours.
//!
//! The statements of each write run in `pool` (through sqlx, on either backend) and in `sqlite`
//! (the SQLite committer's own thread and connection).

use tokio::sync::{mpsc, oneshot};

use super::limits::FingerprintPrune;
use super::{AttemptRecord, Db, Error, NewMessage};

mod pool;
mod sqlite;

/// Writes waiting on the committer before new ones wait for room.
const QUEUE: usize = 1024;
/// Rows one transaction writes at most, to bound how long it holds SQLite's write lock.
const MAX_BATCH_ROWS: usize = 256;

/// One write on the critical path.
pub(super) enum Write {
    Accepted(Vec<NewMessage>),
    Attempt(AttemptRecord),
    /// One message counted against rate buckets: (bucket, drain per ms).
    RateCount {
        buckets: Vec<(String, f64)>,
        now: i64,
    },
    /// A lease on due delivery jobs.
    Claim(Claim),
    /// A read of rate buckets' levels; only the SQLite committer takes it (see
    /// [`GroupCommit::takes_reads`]), which answers it before its next commit.
    ReadLevels(Vec<String>),
}

pub(super) struct Claim {
    pub worker: String,
    pub now: i64,
    pub lease_until: i64,
    pub limit: i64,
    /// Endpoints at their in-flight limit on this node.
    pub skip: Vec<super::EndpointKey>,
}

/// What a write returns once committed.
pub(super) enum Reply {
    Done,
    /// The buckets' new levels, in order.
    Levels(Vec<i64>),
    /// The ids of the claimed jobs.
    Claimed(Vec<String>),
    /// Per accepted message, its event when the commit changed it.
    Events(Vec<Option<String>>),
    /// Stored buckets: (bucket, level, updated at).
    Buckets(Vec<(String, i64, i64)>),
}

impl Write {
    /// Whether its commit must be on disk before it is answered: an accepted message must (the
    /// SMTP `250` promises it); the rest only costs a repeat or nothing if a power cut loses it.
    pub(super) fn must_be_durable(&self) -> bool {
        matches!(self, Self::Accepted(_))
    }

    fn rows(&self) -> usize {
        match self {
            Self::Accepted(messages) => messages.len().max(1),
            Self::Attempt(_) => 1,
            Self::RateCount { buckets, .. } => buckets.len().max(1),
            Self::Claim(claim) => usize::try_from(claim.limit).unwrap_or(1).max(1),
            Self::ReadLevels(_) => 1,
        }
    }
}

pub(super) struct Request {
    pub(super) write: Write,
    pub(super) done: oneshot::Sender<Result<Reply, Error>>,
}

impl Request {
    /// Answers this request from a transaction that held only its write.
    pub(super) fn answer_alone(self, result: Result<Vec<Reply>, Error>) {
        let _ = self
            .done
            .send(result.map(|mut replies| replies.pop().unwrap_or(Reply::Done)));
    }
}

/// Answers every request of a batch from the one transaction that held them all. When a batch
/// of several failed, returns its requests instead, to be committed again each alone: one bad
/// write must fail only itself.
pub(super) fn answer_batch(
    mut batch: Vec<Request>,
    result: Result<Vec<Reply>, Error>,
) -> Vec<Request> {
    match result {
        Ok(replies) => {
            for (request, reply) in batch.into_iter().zip(replies) {
                let _ = request.done.send(Ok(reply));
            }
            Vec::new()
        }
        Err(err) if batch.len() == 1 => {
            if let Some(request) = batch.pop() {
                let _ = request.done.send(Err(err));
            }
            Vec::new()
        }
        Err(err) => {
            tracing::warn!(error = %err, writes = batch.len(), "group commit failed; committing each write alone");
            batch
        }
    }
}

/// `first` and every request queued behind it, up to [`MAX_BATCH_ROWS`] rows.
pub(super) fn fill_batch(first: Request, requests: &mut mpsc::Receiver<Request>) -> Vec<Request> {
    let mut rows = first.write.rows();
    let mut batch = vec![first];
    while rows < MAX_BATCH_ROWS {
        match requests.try_recv() {
            Ok(request) => {
                rows += request.write.rows();
                batch.push(request);
            }
            Err(_) => break,
        }
    }
    batch
}

/// The handle writers go through; cheap to clone. The committer task ends when every handle
/// is dropped.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Request>,
    /// The committer is SQLite's own thread, which also serves the critical path's reads, so
    /// they cost no round trip to a pool connection's thread.
    takes_reads: bool,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl GroupCommit {
    /// Starts the committer on the current runtime; `direct` writes without a committer.
    pub(super) fn start(direct: Db) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(direct, requests));
        Self {
            queue,
            takes_reads: false,
        }
    }

    /// Starts the committer on a thread of its own with its own connection to the SQLite
    /// database at `path` (see `sqlite`).
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the database cannot be opened.
    pub(super) fn start_sqlite(
        path: &str,
        fingerprint_prune: std::sync::Arc<FingerprintPrune>,
    ) -> Result<Self, Error> {
        let (queue, requests) = mpsc::channel(QUEUE);
        sqlite::start(path, requests, fingerprint_prune)?;
        Ok(Self {
            queue,
            takes_reads: true,
        })
    }

    /// Whether [`Write::ReadLevels`] may be sent here.
    pub(super) fn takes_reads(&self) -> bool {
        self.takes_reads
    }

    /// Makes one write durable.
    ///
    /// # Errors
    /// The transaction's error; [`Error::Corrupt`] when the committer is gone (shutdown).
    pub(super) async fn write(&self, write: Write) -> Result<Reply, Error> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(Request { write, done })
            .await
            .map_err(|_| Error::Corrupt("the committer has stopped".to_owned()))?;
        result
            .await
            .map_err(|_| Error::Corrupt("the committer stopped mid-commit".to_owned()))?
    }
}

async fn run(db: Db, mut requests: mpsc::Receiver<Request>) {
    while let Some(first) = requests.recv().await {
        let batch = fill_batch(first, &mut requests);
        let writes: Vec<&Write> = batch.iter().map(|request| &request.write).collect();
        let result = db.write_together(&writes).await;
        for request in answer_batch(batch, result) {
            let result = db.write_together(&[&request.write]).await;
            request.answer_alone(result);
        }
    }
}

impl Db {
    /// One critical-path write, through the group committer when there is one.
    pub(super) async fn write(&self, write: Write) -> Result<Reply, Error> {
        match &self.writes {
            Some(writes) => writes.write(write).await,
            None => {
                let mut replies = self.write_together(&[&write]).await?;
                Ok(replies.pop().unwrap_or(Reply::Done))
            }
        }
    }
}
