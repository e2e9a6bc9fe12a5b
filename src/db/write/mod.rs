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
//! Each write's statement sequence exists once (`statements`), over the [`exec::Exec`] trait,
//! and runs on either committer: the pooled one here (a sqlx transaction, either backend) or
//! the SQLite one (`sqlite`, a thread with its own connection that runs a batch in one go).
//! Every request carries its own typed answer channel, so a reply cannot come back as another
//! write's kind.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::limits::FingerprintPrune;
use super::{AttemptRecord, Backend, EndpointKey, Error, NewMessage, RaisedEvent};

mod exec;
mod sqlite;
mod statements;

/// Writes waiting on the committer before new ones wait for room.
const QUEUE: usize = 1024;
/// Rows one transaction writes at most, to bound how long it holds SQLite's write lock.
const MAX_BATCH_ROWS: usize = 256;

/// Statements the committers ran for accepted messages, with the `BEGIN` and `COMMIT` of each
/// transaction that held one: on PostgreSQL each is a round trip before the `250`.
static ACCEPT_STATEMENTS: AtomicU64 = AtomicU64::new(0);
/// Statements the committers ran for every other write (counts, claims, attempts).
static OTHER_STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// Statements this process's committers ran since it started: (for accepted messages, for the
/// rest). In memory, per node, for `GET /metrics`.
pub fn statement_counts() -> (u64, u64) {
    (
        ACCEPT_STATEMENTS.load(Ordering::Relaxed),
        OTHER_STATEMENTS.load(Ordering::Relaxed),
    )
}

/// A lease on due delivery jobs, see [`Db::claim_due`](crate::db::Db::claim_due).
pub(super) struct Claim {
    pub worker: String,
    pub now: i64,
    pub lease_until: i64,
    pub limit: i64,
    /// Endpoints at their in-flight limit on this node.
    pub skip: Vec<EndpointKey>,
}

/// One message counted against rate buckets.
pub(super) struct RateCount {
    /// (bucket, drain per ms).
    pub buckets: Vec<(String, f64)>,
    pub now: i64,
}

/// A write on its way to the committer, with where its answer goes.
pub(super) struct Pending<W, T> {
    write: W,
    /// What the write returned in the transaction that ran it; sent once that commits.
    reply: Option<T>,
    done: oneshot::Sender<Result<T, Error>>,
}

impl<W, T> Pending<W, T> {
    fn send(self, result: Result<T, Error>) {
        // The writer may have given up waiting (its session ended); the commit stands.
        let _ = self.done.send(result);
    }

    /// Answers with what the committed transaction returned.
    fn answer(mut self) {
        let reply = self
            .reply
            .take()
            .ok_or_else(|| Error::Corrupt("a write was answered before it ran".to_owned()));
        self.send(reply);
    }
}

/// One request on the critical path; each kind answers with its own type.
pub(super) enum Request {
    /// Accepted messages with their jobs; answered, per message, with its event when the
    /// commit changed it.
    Accepted(Pending<Vec<NewMessage>, Vec<Option<String>>>),
    /// An attempt and its job's next state, with the event a dead-lettering raises.
    Attempt(Pending<(AttemptRecord, Option<RaisedEvent>), ()>),
    /// Answered with the buckets' new levels, in order.
    RateCount(Pending<RateCount, Vec<i64>>),
    /// Answered with the ids of the claimed jobs.
    Claim(Pending<Claim, Vec<String>>),
    /// A read of rate buckets' levels: (bucket, level, updated at). Only the SQLite committer
    /// takes it (see [`GroupCommit::takes_reads`]), which answers it before its next commit.
    ReadLevels(Pending<Vec<String>, Vec<(String, i64, i64)>>),
}

impl Request {
    /// Whether its commit must be on disk before it is answered: an accepted message must (the
    /// SMTP `250` promises it); the rest only costs a repeat or nothing if a power cut loses it.
    fn must_be_durable(&self) -> bool {
        matches!(self, Self::Accepted(_))
    }

    fn is_read(&self) -> bool {
        matches!(self, Self::ReadLevels(_))
    }

    fn rows(&self) -> usize {
        match self {
            Self::Accepted(pending) => pending.write.len().max(1),
            Self::Attempt(_) | Self::ReadLevels(_) => 1,
            Self::RateCount(pending) => pending.write.buckets.len().max(1),
            Self::Claim(pending) => usize::try_from(pending.write.limit).unwrap_or(1).max(1),
        }
    }

    /// Runs this request's statements on `exec`, inside the caller's transaction, and keeps
    /// the reply until it commits.
    async fn run(
        &mut self,
        exec: &mut impl exec::Exec,
        fingerprint_prune: &mut FingerprintPrune,
    ) -> Result<(), Error> {
        match self {
            Self::Accepted(pending) => {
                let messages: Vec<&NewMessage> = pending.write.iter().collect();
                let events =
                    statements::insert_messages(exec, &messages, fingerprint_prune).await?;
                pending.reply = Some(events);
            }
            Self::Attempt(pending) => {
                let (record, raised) = &pending.write;
                statements::write_attempt(exec, record, raised.as_ref()).await?;
                pending.reply = Some(());
            }
            Self::RateCount(pending) => {
                let RateCount { buckets, now } = &pending.write;
                pending.reply = Some(statements::count_in_buckets(exec, buckets, *now).await?);
            }
            Self::Claim(pending) => {
                pending.reply = Some(statements::claim_ids(exec, &pending.write).await?);
            }
            Self::ReadLevels(pending) => {
                pending.reply = Some(statements::read_levels(exec, &pending.write).await?);
            }
        }
        Ok(())
    }

    /// Answers with what the committed transaction returned.
    fn answer(self) {
        match self {
            Self::Accepted(pending) => pending.answer(),
            Self::Attempt(pending) => pending.answer(),
            Self::RateCount(pending) => pending.answer(),
            Self::Claim(pending) => pending.answer(),
            Self::ReadLevels(pending) => pending.answer(),
        }
    }

    fn fail(self, err: Error) {
        match self {
            Self::Accepted(pending) => pending.send(Err(err)),
            Self::Attempt(pending) => pending.send(Err(err)),
            Self::RateCount(pending) => pending.send(Err(err)),
            Self::Claim(pending) => pending.send(Err(err)),
            Self::ReadLevels(pending) => pending.send(Err(err)),
        }
    }

    /// Answers this request from a transaction that held only its write.
    fn answer_alone(self, result: Result<(), Error>) {
        match result {
            Ok(()) => self.answer(),
            Err(err) => self.fail(err),
        }
    }
}

/// Runs every request of a batch on `exec`, inside the caller's transaction: the one sequence
/// both committers share. The accepted messages of all its requests are written together, at
/// the place of the first, with one statement per table rather than one per row; the rest run
/// in order. Moving a later accepted write before the requests between is safe: none of them
/// reads what an accepted write writes but a claim, which may then claim its jobs sooner.
async fn run_all(
    exec: &mut impl exec::Exec,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    let start = exec.statements();
    let mut accept_statements = 0;
    let mut accepted_done = false;
    for index in 0..batch.len() {
        if matches!(batch[index], Request::Accepted(_)) {
            if !accepted_done {
                accepted_done = true;
                let before = exec.statements();
                accept_together(exec, &mut batch[index..], fingerprint_prune).await?;
                accept_statements = exec.statements() - before;
            }
        } else {
            batch[index].run(exec, fingerprint_prune).await?;
        }
    }
    // BEGIN and COMMIT: charged to the accepted messages when the transaction held any.
    let (accept, other) = if accepted_done {
        (
            accept_statements + 2,
            exec.statements() - start - accept_statements,
        )
    } else {
        (0, exec.statements() - start + 2)
    };
    ACCEPT_STATEMENTS.fetch_add(accept, Ordering::Relaxed);
    OTHER_STATEMENTS.fetch_add(other, Ordering::Relaxed);
    Ok(())
}

/// Writes the messages of every accepted request in `batch` in one go and keeps each request's
/// share of the answer.
async fn accept_together(
    exec: &mut impl exec::Exec,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    let messages: Vec<&NewMessage> = batch
        .iter()
        .filter_map(|request| match request {
            Request::Accepted(pending) => Some(pending.write.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut events = statements::insert_messages(exec, &messages, fingerprint_prune)
        .await?
        .into_iter();
    for request in batch {
        if let Request::Accepted(pending) = request {
            let share: Vec<Option<String>> = events.by_ref().take(pending.write.len()).collect();
            if share.len() != pending.write.len() {
                return Err(Error::Corrupt(
                    "the committed messages did not answer every write".to_owned(),
                ));
            }
            pending.reply = Some(share);
        }
    }
    Ok(())
}

/// Answers every request of a batch from the one transaction that held them all. When a batch
/// of several failed, returns its requests instead, to be committed again each alone: one bad
/// write must fail only itself.
fn answer_batch(mut batch: Vec<Request>, result: Result<(), Error>) -> Vec<Request> {
    match result {
        Ok(()) => {
            for request in batch {
                request.answer();
            }
            Vec::new()
        }
        Err(err) if batch.len() == 1 => {
            if let Some(request) = batch.pop() {
                request.fail(err);
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
fn fill_batch(first: Request, requests: &mut mpsc::Receiver<Request>) -> Vec<Request> {
    let mut rows = first.rows();
    let mut batch = vec![first];
    while rows < MAX_BATCH_ROWS {
        match requests.try_recv() {
            Ok(request) => {
                rows += request.rows();
                batch.push(request);
            }
            Err(_) => break,
        }
    }
    batch
}

/// The handle writers go through; cheap to clone. The committer ends when every handle is
/// dropped.
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
    /// Starts the committer on the current runtime, committing through `pool`.
    pub(super) fn start(pool: AnyPool, backend: Backend) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, backend, requests));
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
    pub(super) fn start_sqlite(path: &str) -> Result<Self, Error> {
        let (queue, requests) = mpsc::channel(QUEUE);
        sqlite::start(path, requests)?;
        Ok(Self {
            queue,
            takes_reads: true,
        })
    }

    /// Whether [`GroupCommit::read_levels`] may be called.
    pub(super) fn takes_reads(&self) -> bool {
        self.takes_reads
    }

    /// Commits accepted messages with their jobs; see
    /// [`Db::commit_accepted`](crate::db::Db::commit_accepted).
    pub(super) async fn accept(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Option<String>>, Error> {
        self.send(messages, Request::Accepted).await
    }

    /// Records an attempt and moves its job on, with the event a dead-lettering raises.
    pub(super) async fn attempt(
        &self,
        record: AttemptRecord,
        raised: Option<RaisedEvent>,
    ) -> Result<(), Error> {
        self.send((record, raised), Request::Attempt).await
    }

    /// Counts one message against rate buckets; the new levels, in order.
    pub(super) async fn count(&self, count: RateCount) -> Result<Vec<i64>, Error> {
        self.send(count, Request::RateCount).await
    }

    /// Leases due jobs; their ids.
    pub(super) async fn claim(&self, claim: Claim) -> Result<Vec<String>, Error> {
        self.send(claim, Request::Claim).await
    }

    /// Reads rate buckets' levels on the committer (only where [`GroupCommit::takes_reads`]).
    pub(super) async fn read_levels(
        &self,
        buckets: Vec<String>,
    ) -> Result<Vec<(String, i64, i64)>, Error> {
        self.send(buckets, Request::ReadLevels).await
    }

    /// Queues one request and waits for the commit that holds it.
    ///
    /// # Errors
    /// The transaction's error; [`Error::Corrupt`] when the committer is gone (shutdown).
    async fn send<W, T>(
        &self,
        write: W,
        request: fn(Pending<W, T>) -> Request,
    ) -> Result<T, Error> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(request(Pending {
                write,
                reply: None,
                done,
            }))
            .await
            .map_err(|_| Error::Corrupt("the committer has stopped".to_owned()))?;
        result
            .await
            .map_err(|_| Error::Corrupt("the committer stopped mid-commit".to_owned()))?
    }
}

/// Reads rate buckets' levels on a pooled connection, with the statement the SQLite committer
/// runs for [`GroupCommit::read_levels`].
///
/// # Errors
/// [`Error::Query`].
pub(super) async fn read_levels_on_pool(
    pool: &AnyPool,
    backend: Backend,
    buckets: &[&str],
) -> Result<Vec<(String, i64, i64)>, Error> {
    let mut conn = pool.acquire().await?;
    let mut exec = exec::PoolExec {
        conn: &mut conn,
        backend,
        statements: 0,
    };
    statements::read_levels(&mut exec, buckets).await
}

/// The pooled committer: one sqlx transaction per batch.
async fn run(pool: AnyPool, backend: Backend, mut requests: mpsc::Receiver<Request>) {
    // Owned by the committer: it is the only writer of this database's accepted messages.
    let mut fingerprint_prune = FingerprintPrune::default();
    while let Some(first) = requests.recv().await {
        let mut batch = fill_batch(first, &mut requests);
        let result = commit_on_pool(&pool, backend, &mut batch, &mut fingerprint_prune).await;
        for mut request in answer_batch(batch, result) {
            let alone = std::slice::from_mut(&mut request);
            let result = commit_on_pool(&pool, backend, alone, &mut fingerprint_prune).await;
            request.answer_alone(result);
        }
    }
}

/// Commits a batch in one pooled transaction: all or none.
async fn commit_on_pool(
    pool: &AnyPool,
    backend: Backend,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    // As on SQLite (see `sqlite`): only accepted messages wait for the WAL flush.
    if backend == Backend::Postgres && !batch.iter().any(Request::must_be_durable) {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
    }
    let mut exec = exec::PoolExec {
        conn: &mut tx,
        backend,
        statements: 0,
    };
    run_all(&mut exec, batch, fingerprint_prune).await?;
    tx.commit().await?;
    Ok(())
}
