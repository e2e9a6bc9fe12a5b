//! Group commit: the writes that sit on the critical path of a message — its rate-limit count,
//! the accepted message with its delivery jobs, the claim of its jobs (on SQLite), and each
//! attempt with its job's next state — go through one committer task per node that puts every
//! write waiting at that moment into one transaction. The commit (one WAL sync on SQLite, one
//! WAL flush on PostgreSQL) is then paid once per batch instead of once per write, and on
//! SQLite these writers never queue on the database's write lock, whose busy handler sleeps in
//! steps of milliseconds. The reads of rate-limit levels (at RCPT) queue there too and are
//! answered, outside the transaction, with one statement for all the reads queued together.
//!
//! A caller waits for the result of the transaction that contained its write, so "returned Ok"
//! still means "durable" and the SMTP `250` keeps its meaning. The committer takes whatever is
//! queued when it becomes free: a lone write is committed at once (no added latency) and a busy
//! node commits in batches that grow with the load. If a batch fails, each write is retried
//! alone, so one bad write never fails its neighbours.
//!
//! On PostgreSQL each statement is a round trip, so a batch is one statement with no
//! transaction around it: its rate counts, accepted messages with their fingerprints and jobs,
//! and attempt records, all in one `WITH` of data-modifying statements whose text is the same
//! for every batch (`one_statement`). The few batches it does not cover (and every batch on
//! SQLite) write each kind of write together in a transaction: all accepted messages with their
//! jobs in one `WITH … INSERT` (two statements on SQLite), all rate counts in one `INSERT … ON
//! CONFLICT`, all attempt records in one `WITH … UPDATE … FROM (VALUES …) INSERT`. The claim
//! does not come here on PostgreSQL: it is one statement of its own that leases and reads the
//! jobs (see [`Db::claim_due`](crate::db::Db::claim_due)).
//!
//! Attempt records are batched by this queue and nowhere else: no record waits in a buffer
//! of its own. An attempt's worker is free once the receiver answered, but its job keeps its
//! lease until the commit that records the attempt, and the attempt's task waits for that
//! commit. A crash before it loses the record, and the job is sent again when its lease runs
//! out: exactly the at-least-once repeat a crash between the request and its record always
//! allowed. Batching widens that window only by the time a record waits for the commit in
//! progress, and only the attempts of that window repeat. A batch of records is not flushed to
//! disk before it is answered (`synchronous_commit = off`, SQLite's `NORMAL`): a power cut can
//! lose its last milliseconds, which again only repeats those sends; the next accepted
//! message's commit flushes them with its own.
//!
//! Each write's statement sequence exists once (`statements`), over the [`exec::Exec`] trait,
//! and runs on either committer: the pooled one here (a sqlx transaction, either backend) or
//! the SQLite one (`sqlite`, a thread with its own connection that runs a batch in one go).
//! Every request carries its own typed answer channel, so a reply cannot come back as another
//! write's kind.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::limits::FingerprintPrune;
use super::{AttemptRecord, Backend, EndpointKey, Error, NewMessage, RaisedEvent};

mod exec;
mod one_statement;
mod sqlite;
mod statements;

pub(super) use statements::claim_sql;

/// The PostgreSQL batch statement (`one_statement`) and its parameters' types, for the test
/// that checks how PostgreSQL plans it.
pub(super) fn postgres_batch_statement() -> (&'static str, &'static str) {
    (one_statement::BATCH, one_statement::PARAMETER_TYPES)
}

/// Writes waiting on the committer before new ones wait for room.
const QUEUE: usize = 1024;
/// Rows one transaction writes at most, to bound how long it holds SQLite's write lock.
const MAX_BATCH_ROWS: usize = 256;

/// The critical paths the statement counter tells apart (`mxhook_db_statements_total{path}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementPath {
    /// Accepted messages with their fingerprints and jobs: before the `250`.
    Accept,
    /// Rate-limit counts and the reads of levels the committer serves: before the `250` too.
    Rate,
    /// Claims of due jobs, with the read of what they need and the giving back of a surplus.
    Claim,
    /// Attempt records with their jobs' next state.
    Attempt,
}

impl StatementPath {
    pub const ALL: [StatementPath; 4] = [Self::Accept, Self::Rate, Self::Claim, Self::Attempt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Rate => "rate",
            Self::Claim => "claim",
            Self::Attempt => "attempt",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Accept => 0,
            Self::Rate => 1,
            Self::Claim => 2,
            Self::Attempt => 3,
        }
    }
}

/// Statements run per path, with the `BEGIN` and `COMMIT` of each transaction charged to the
/// first path of [`StatementPath::ALL`] it held: on PostgreSQL each is a round trip.
static STATEMENTS: [AtomicU64; StatementPath::ALL.len()] =
    [const { AtomicU64::new(0) }; StatementPath::ALL.len()];

/// Counts `n` statements run for `path`.
pub(super) fn count_statements(path: StatementPath, n: u64) {
    STATEMENTS[path.index()].fetch_add(n, Ordering::Relaxed);
}

/// Statements this process ran on each critical path since it started. In memory, per node,
/// for `GET /metrics`.
pub fn statement_counts() -> [(StatementPath, u64); StatementPath::ALL.len()] {
    StatementPath::ALL.map(|path| (path, STATEMENTS[path.index()].load(Ordering::Relaxed)))
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
    /// A read of rate buckets' levels: (bucket, level, updated at). The committer answers all
    /// the reads queued with a batch with one statement, outside the batch's transaction.
    ReadLevels(LevelsRead),
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

    fn path(&self) -> StatementPath {
        match self {
            Self::Accepted(_) => StatementPath::Accept,
            Self::RateCount(_) | Self::ReadLevels(_) => StatementPath::Rate,
            Self::Claim(_) => StatementPath::Claim,
            Self::Attempt(_) => StatementPath::Attempt,
        }
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
                statements::write_attempts(exec, &[(record, raised.as_ref())]).await?;
                pending.reply = Some(());
            }
            Self::RateCount(pending) => {
                let mut levels = statements::count_in_buckets(exec, &[&pending.write]).await?;
                pending.reply = levels.pop();
            }
            Self::Claim(pending) => {
                pending.reply = Some(statements::claim_ids(exec, &pending.write).await?);
            }
            Self::ReadLevels(pending) => {
                pending.reply = Some(statements::read_levels(exec, &pending.write, 1).await?);
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
/// the place of the first, with one statement per table rather than one per row; so are its
/// rate counts and its attempt records. Claims run in order. Moving a later write before the
/// requests between is safe: none of them reads what an accepted message, a count or an
/// attempt record writes but a claim, which may then find a job due sooner (an attempt's
/// lease given back, an ordered thread's next job unblocked).
///
/// `overhead` is what the caller spends around the batch (its `BEGIN` and `COMMIT`), counted
/// with the statements.
async fn run_all(
    exec: &mut impl exec::Exec,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
    overhead: u64,
) -> Result<(), Error> {
    let mut spent = [0_u64; StatementPath::ALL.len()];
    // Kinds in a fixed order, whatever order the requests queued in: two nodes' batches
    // committing at once then take the rows they share (rate buckets, then fingerprints) in
    // one order, and neither waits for a row the other holds while holding one it wants.
    // (Running several batches at once on one node was measured and was slower: smaller
    // batches, more transactions; BENCHMARKS.md.)
    for kind in [
        StatementPath::Rate,
        StatementPath::Accept,
        StatementPath::Attempt,
    ] {
        let Some(first) = batch.iter().position(|request| {
            matches!(
                (kind, request),
                (StatementPath::Rate, Request::RateCount(_))
                    | (StatementPath::Accept, Request::Accepted(_))
                    | (StatementPath::Attempt, Request::Attempt(_))
            )
        }) else {
            continue;
        };
        let before = exec.statements();
        match kind {
            StatementPath::Rate => count_together(exec, &mut batch[first..]).await?,
            StatementPath::Accept => {
                accept_together(exec, &mut batch[first..], fingerprint_prune).await?;
            }
            _ => attempts_together(exec, &mut batch[first..]).await?,
        }
        spent[kind.index()] += exec.statements() - before;
    }
    for request in batch.iter_mut() {
        if matches!(request, Request::Claim(_) | Request::ReadLevels(_)) {
            let before = exec.statements();
            request.run(exec, fingerprint_prune).await?;
            spent[request.path().index()] += exec.statements() - before;
        }
    }
    if let Some(first) = first_path(batch) {
        spent[first.index()] += overhead;
    }
    for path in StatementPath::ALL {
        count_statements(path, spent[path.index()]);
    }
    Ok(())
}

/// The first of [`StatementPath::ALL`] that a request of `batch` takes: the path a statement
/// serving the whole batch (its `BEGIN` and `COMMIT`, or the one statement) is charged to.
fn first_path(batch: &[Request]) -> Option<StatementPath> {
    StatementPath::ALL
        .into_iter()
        .find(|path| batch.iter().any(|request| request.path() == *path))
}

/// Counts the messages of every rate-count request in `batch` with one statement and gives
/// each request its levels.
async fn count_together(exec: &mut impl exec::Exec, batch: &mut [Request]) -> Result<(), Error> {
    let counts: Vec<&RateCount> = batch
        .iter()
        .filter_map(|request| match request {
            Request::RateCount(pending) => Some(&pending.write),
            _ => None,
        })
        .collect();
    let mut levels = statements::count_in_buckets(exec, &counts)
        .await?
        .into_iter();
    for request in batch {
        if let Request::RateCount(pending) = request {
            pending.reply = Some(levels.next().ok_or_else(|| {
                Error::Corrupt("the rate count did not answer every write".to_owned())
            })?);
        }
    }
    Ok(())
}

/// Writes the attempt records of every attempt request in `batch` together.
async fn attempts_together(exec: &mut impl exec::Exec, batch: &mut [Request]) -> Result<(), Error> {
    let records: Vec<(&AttemptRecord, Option<&RaisedEvent>)> = batch
        .iter()
        .filter_map(|request| match request {
            Request::Attempt(pending) => Some((&pending.write.0, pending.write.1.as_ref())),
            _ => None,
        })
        .collect();
    statements::write_attempts(exec, &records).await?;
    for request in batch {
        if let Request::Attempt(pending) = request {
            pending.reply = Some(());
        }
    }
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

/// A read of rate buckets' levels waiting for its answer.
type LevelsRead = Pending<Vec<String>, Vec<(String, i64, i64)>>;

/// Answers every read of levels in `reads` with one statement for all their buckets (each
/// gets the rows of its own), outside any transaction: they wait for no commit. When the
/// shared read fails, each read runs alone, so it fails only with its own error.
async fn answer_reads(exec: &mut impl exec::Exec, reads: Vec<Request>) {
    let mut reads: Vec<LevelsRead> = reads
        .into_iter()
        .filter_map(|request| match request {
            Request::ReadLevels(pending) => Some(pending),
            _ => None,
        })
        .collect();
    let before = exec.statements();
    let mut buckets: Vec<&str> = Vec::new();
    for read in &reads {
        for bucket in &read.write {
            if !buckets.contains(&bucket.as_str()) {
                buckets.push(bucket);
            }
        }
    }
    let shared = statements::read_levels(exec, &buckets, reads.len()).await;
    match shared {
        Ok(rows) => {
            for mut read in reads {
                read.reply = Some(
                    rows.iter()
                        .filter(|(bucket, _, _)| read.write.contains(bucket))
                        .cloned()
                        .collect(),
                );
                read.answer();
            }
        }
        Err(err) if reads.len() == 1 => {
            if let Some(read) = reads.pop() {
                read.send(Err(err));
            }
        }
        Err(_) => {
            for read in reads {
                let result = statements::read_levels(exec, &read.write, 1).await;
                read.send(result);
            }
        }
    }
    count_statements(StatementPath::Rate, exec.statements() - before);
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
    /// The committer serves the critical path's reads of rate levels: on SQLite's own thread
    /// they cost no round trip to a pool connection's thread; on PostgreSQL the reads queued
    /// together share one statement.
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
            takes_reads: true,
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
    statements::read_levels(&mut exec, buckets, 1).await
}

/// The pooled committer: one sqlx transaction per batch.
async fn run(pool: AnyPool, backend: Backend, mut requests: mpsc::Receiver<Request>) {
    // Owned by the committer: it is the only writer of this database's accepted messages.
    let mut fingerprint_prune = FingerprintPrune::default();
    let mut held = HeldConnection {
        pool: pool.clone(),
        conn: None,
    };
    while let Some(first) = requests.recv().await {
        let batch = fill_batch(first, &mut requests);
        let (reads, mut batch): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(Request::is_read);
        // On a connection of their own, alongside the commit: a read waits for no write.
        if !reads.is_empty() {
            let pool = pool.clone();
            tokio::spawn(async move {
                match pool.acquire().await {
                    Ok(mut conn) => {
                        let mut exec = exec::PoolExec {
                            conn: &mut conn,
                            backend,
                            statements: 0,
                        };
                        answer_reads(&mut exec, reads).await;
                    }
                    Err(err) => {
                        let message = err.to_string();
                        for read in reads {
                            read.fail(Error::Query(sqlx::Error::Io(std::io::Error::other(
                                message.clone(),
                            ))));
                        }
                    }
                }
            });
        }
        if batch.is_empty() {
            continue;
        }
        let result = commit_on_pool(&mut held, backend, &mut batch, &mut fingerprint_prune).await;
        for mut request in answer_batch(batch, result) {
            let alone = std::slice::from_mut(&mut request);
            let result = commit_on_pool(&mut held, backend, alone, &mut fingerprint_prune).await;
            request.answer_alone(result);
        }
        if requests.is_empty() {
            // Idle: back to the pool, which tests it again before the next batch (a server
            // restarted meanwhile costs no batch).
            held.conn = None;
        }
    }
}

/// The connection the pooled committer writes on, kept from one batch to the next while
/// writes keep queueing: taking it from the pool for each batch cost a round trip of its own
/// on PostgreSQL, where the pool tests a connection before it hands it out. When the queue is
/// empty, or after a batch that failed, it goes back to the pool, and the next batch takes
/// one the pool has tested.
struct HeldConnection {
    pool: AnyPool,
    conn: Option<PoolConnection<Any>>,
}

impl HeldConnection {
    async fn get(&mut self) -> Result<&mut PoolConnection<Any>, Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(self.conn.insert(conn))
    }
}

/// Commits a batch in one pooled transaction: all or none.
async fn commit_on_pool(
    held: &mut HeldConnection,
    backend: Backend,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    let result = commit_on(held.get().await?, backend, batch, fingerprint_prune).await;
    if result.is_err() {
        held.conn = None;
    }
    result
}

/// Gives each request of a batch [`one_statement::write`] wrote its reply: each rate count its
/// levels (in order), each accepted message its event unchanged (the statement writes only
/// events whose duplicate flag was right), each attempt record its acknowledgement.
fn answer_written(batch: &mut [Request], levels: Vec<Vec<i64>>) -> Result<(), Error> {
    let mut levels = levels.into_iter();
    for request in batch {
        match request {
            Request::RateCount(pending) => {
                pending.reply = Some(levels.next().ok_or_else(|| {
                    Error::Corrupt("the rate count did not answer every write".to_owned())
                })?);
            }
            Request::Accepted(pending) => pending.reply = Some(vec![None; pending.write.len()]),
            Request::Attempt(pending) => pending.reply = Some(()),
            Request::Claim(_) | Request::ReadLevels(_) => {
                return Err(Error::Corrupt(
                    "one statement wrote a batch with a claim or a read".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// Commits a batch on `conn`: all or none.
async fn commit_on(
    conn: &mut PoolConnection<Any>,
    backend: Backend,
    batch: &mut [Request],
    fingerprint_prune: &mut FingerprintPrune,
) -> Result<(), Error> {
    if backend == Backend::Postgres
        && let Some(covered) = one_statement::covered(batch, fingerprint_prune)
    {
        let mut exec = exec::PoolExec {
            conn: &mut *conn,
            backend,
            statements: 0,
        };
        let written = one_statement::write(&mut exec, &covered).await;
        if let Some(path) = first_path(batch) {
            count_statements(path, exec.statements);
        }
        match written {
            Ok(levels) => {
                answer_written(batch, levels)?;
                return Ok(());
            }
            // Nothing of it was written: the transaction below writes it, deciding what the
            // statement could not (a duplicate flag intake guessed wrong) or failing alike.
            Err(err) => tracing::debug!(
                error = %err,
                writes = batch.len(),
                "batch not written in one statement; writing it in a transaction"
            ),
        }
    }
    // As on SQLite (see `sqlite`): only accepted messages wait for the WAL flush. The setting
    // goes with the BEGIN, in the same round trip.
    let mut tx = if backend == Backend::Postgres && !batch.iter().any(Request::must_be_durable) {
        sqlx::Connection::begin_with(&mut **conn, "BEGIN; SET LOCAL synchronous_commit = off")
            .await?
    } else {
        sqlx::Connection::begin(&mut **conn).await?
    };
    let mut exec = exec::PoolExec {
        conn: &mut tx,
        backend,
        statements: 0,
    };
    // BEGIN and COMMIT.
    run_all(&mut exec, batch, fingerprint_prune, 2).await?;
    tx.commit().await?;
    Ok(())
}
