//! Delivery jobs and their attempts: the jobs an accepted message makes, leasing due jobs to a
//! node (with the per-thread ordering and the per-endpoint limits), giving leases back, the
//! attempt record, resending, and the API's views of both. Claims and attempt records are
//! critical-path writes (see `write`): attempt records go through the group committer, and so
//! do claims on SQLite; on PostgreSQL a claim is one statement of its own that leases its jobs
//! and reads what their attempts need. Part of [`crate::db`], which owns every SQL statement.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::inboxes::{endpoint_from_row, rules_from_json};
use super::messages::stored_event;
use super::{Backend, Db, Error, placeholders, write};
use crate::model::{AttemptOutcome, Channel, DeliveryStatus, WebhookEndpoint, now_ms};

/// The condition (on a `deliveries d` row) that no earlier job of its thread holds it back.
pub(super) const NOT_BLOCKED: &str = "(d.ordered = 0 OR d.thread_id IS NULL OR NOT EXISTS (\
    SELECT 1 FROM deliveries e WHERE e.inbox_id = d.inbox_id \
    AND e.endpoint_ref = d.endpoint_ref AND e.channel = d.channel \
    AND e.thread_id = d.thread_id AND e.status = 'pending' \
    AND (e.created_at < d.created_at OR (e.created_at = d.created_at AND e.id < d.id))))";

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub channel: Channel,
    pub endpoint_ref: String,
    pub target: String,
    /// The endpoint wants one thread's events in order: this job waits for earlier ones.
    pub ordered: bool,
    /// The job is written already leased to this node, which attempts it without a claim.
    pub lease: Option<Lease>,
}

/// An operational event (`delivery.dead`, `endpoint.disabled`) with its delivery jobs, written
/// in the transaction of the state change that raises it, so it is raised exactly when that
/// change commits. Its jobs belong to the message of the delivery it is about.
#[derive(Debug, Clone)]
pub struct RaisedEvent {
    pub message_id: String,
    pub inbox_id: String,
    pub event_id: String,
    pub event_json: String,
    /// Webhook endpoints only, never leased: the dispatcher claims them.
    pub deliveries: Vec<NewDelivery>,
}

/// One job of a [`RaisedEvent`]: `$1` id, `$2` message, `$3` inbox, `$4` event id, `$5` channel,
/// `$6` endpoint ref, `$7` target, `$8` now, `$9` the event.
pub(super) const INSERT_RAISED_DELIVERY: &str = "INSERT INTO deliveries (id, message_id, \
    inbox_id, event_id, channel, endpoint_ref, target, status, attempts, failures, \
    next_attempt_at, created_at, updated_at, ordered, delivery_event) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, $8, $8, $8, 0, $9)";

/// The columns of a claimed job's `deliveries` row its attempt reads (the PostgreSQL claim
/// returns them from its update).
const CLAIMED_COLUMNS: &str = "id, message_id, inbox_id, event_id, attempts, failures, \
    endpoint_ref, channel, target, delivery_event, next_attempt_at";

/// What a claimed job's attempt reads, from its job `d`, message `m` and inbox `i`.
const JOB_COLUMNS: &str = "d.id, d.message_id, d.inbox_id, d.event_id, d.attempts, \
    d.failures, d.endpoint_ref, d.channel, d.target, d.delivery_event, m.envelope_from, \
    m.quarantined, m.event_json, m.event_lz4, m.storage_key, i.webhook_url, \
    i.webhook_enabled, i.webhook_secret, i.webhook_signature, i.webhook_payload, \
    i.webhook_previous_secret, i.webhook_previous_secret_expires_at, i.webhook_verify_tls, \
    i.webhook_disabled_reason, i.webhook_ordered, i.notifications_json, \
    i.webhook_signature_header, i.webhook_signature_format, i.webhook_events, \
    i.webhook_endpoint_json";

/// Joins a job `d` to its message `m` and inbox `i`.
const JOB_JOINS: &str =
    "JOIN messages m ON m.id = d.message_id LEFT JOIN inboxes i ON i.id = d.inbox_id";

/// A lease a delivery job is written with.
#[derive(Debug, Clone)]
pub struct Lease {
    pub node: String,
    pub until: i64,
}

/// A job this node holds a lease on, with everything an attempt needs.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub delivery_id: String,
    pub message_id: String,
    pub inbox_id: String,
    pub event_id: String,
    pub attempts: i64,
    pub failures: i64,
    pub event_json: String,
    /// Where the raw message is, for channels that send it on (email forwards).
    pub storage_key: String,
    /// `inbox` or `rule:<id>`: which endpoint to switch off when the receiver answers 410.
    pub endpoint_ref: String,
    pub channel: Channel,
    pub target: JobTarget,
    /// The job carries an operational event: nothing is raised about it (no cascades).
    pub operational: bool,
}

impl ClaimedJob {
    pub fn endpoint(&self) -> EndpointKey {
        EndpointKey {
            inbox_id: self.inbox_id.clone(),
            endpoint_ref: self.endpoint_ref.clone(),
            channel: self.channel,
        }
    }
}

/// One endpoint jobs go to: the inbox webhook (`inbox`) or a rule (`rule:<id>`) of an inbox,
/// and the channel (a rule's webhook and its email forward are separate endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub inbox_id: String,
    pub endpoint_ref: String,
    pub channel: Channel,
}

/// What a job delivers to, read at attempt time so that edits to endpoints and rules apply to
/// pending jobs.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per claimed job, moved into its attempt: no box needed
pub enum JobTarget {
    Webhook(WebhookEndpoint),
    Email {
        recipients: Vec<String>,
    },
    /// An inbox's reply: the stored message itself, sent from `from` to `recipients`.
    Reply {
        from: String,
        recipients: Vec<String>,
    },
    /// The endpoint or rule was removed, or its channel switched off, since the job was made.
    Gone(String),
}

/// What one attempt did to its job.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    /// The node that held the lease for this attempt; the record only counts while it still
    /// does.
    pub worker: String,
    pub started_at: i64,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// What a webhook attempt sent; none when it sent nothing (and for email forwards). Boxed:
    /// the record travels by value through the write queue.
    pub request: Option<Box<SentRequest>>,
    pub next: JobUpdate,
}

/// Longest request body the attempt log keeps: past it the log says only that it was too large,
/// so a few huge messages retried many times cannot balloon the database.
pub const MAX_LOGGED_BODY: usize = 1 << 20;

/// The request one webhook attempt sent, as the attempt log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRequest {
    /// In the order they were set. A custom header's value reads [`HIDDEN_VALUE`]: custom
    /// headers carry the receiver's credentials, which are never shown after they are saved.
    pub headers: Vec<(String, String)>,
    pub body: SentBody,
    /// Length of the body sent.
    pub body_bytes: usize,
}

/// What a logged custom header value reads.
pub const HIDDEN_VALUE: &str = "[hidden]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentBody {
    /// The job's stored event, byte for byte (payload `mxhook`): read back from there.
    Event,
    /// Any other body, LZ4-compressed (block format, its length first).
    Stored(Vec<u8>),
    /// Over [`MAX_LOGGED_BODY`]: not kept.
    TooLarge,
}

impl SentBody {
    /// How a body built for one attempt is logged: compressed, or not at all when too large.
    pub fn of(body: &[u8]) -> Self {
        if body.len() > MAX_LOGGED_BODY {
            Self::TooLarge
        } else {
            Self::Stored(lz4_flex::block::compress_prepend_size(body))
        }
    }
}

/// The request an attempt sent, read back: headers as logged and the exact body.
#[derive(Debug, Clone)]
pub struct AttemptRequest {
    pub headers: Vec<(String, String)>,
    /// None when it was over [`MAX_LOGGED_BODY`].
    pub body: Option<Vec<u8>>,
    pub body_bytes: usize,
}

/// `request_meta` as stored (migration 0016).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RequestMeta {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
    pub(crate) body_bytes: usize,
}

impl SentRequest {
    /// The `request_meta` and `request_body` columns of this request.
    pub(crate) fn columns(&self) -> (String, Option<&[u8]>) {
        let (kind, stored) = match &self.body {
            SentBody::Event => ("event", None),
            SentBody::Stored(compressed) => ("stored", Some(compressed.as_slice())),
            SentBody::TooLarge => ("too_large", None),
        };
        let meta = RequestMeta {
            headers: self.headers.clone(),
            body: kind.to_owned(),
            body_bytes: self.body_bytes,
        };
        // Strings and numbers only: serialising cannot fail.
        (serde_json::to_string(&meta).unwrap_or_default(), stored)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum JobUpdate {
    Delivered,
    RetryAt(i64),
    Dead,
}

/// Which finished deliveries of an inbox [`Db::recover`] puts back in the queue.
#[derive(Debug, Clone)]
pub struct Recover {
    pub inbox_id: String,
    /// Accepted at or after this time, ms since the epoch.
    pub since_ms: i64,
    /// Accepted before this time, when given.
    pub until_ms: Option<i64>,
    /// Delivered ones too, not only dead ones.
    pub include_delivered: bool,
    /// Only this endpoint's (`inbox` or `rule:<id>`), when given.
    pub endpoint_ref: Option<String>,
}

/// What [`Db::recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    Requeued(usize),
    /// More deliveries matched than one call may requeue; none was.
    TooMany,
}

/// One delivery as stored: what the API's and the dashboard's views are made from.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub message_id: String,
    pub inbox_id: String,
    /// The event's id: the same on every attempt and resend (the idempotency key).
    pub event_id: String,
    pub channel: Channel,
    /// Where it goes: the webhook URL or the forward recipients.
    pub target: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// When a pending delivery is next tried, ms since the epoch.
    pub next_attempt_at_ms: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// One delivery attempt as stored.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub attempt: i64,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    /// The endpoint's HTTP status; none when no response came (or for an email forward).
    pub status_code: Option<i64>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The attempt's request is logged (`GET /v1/deliveries/{id}/attempts/{n}/request`).
    pub request_logged: bool,
}

impl Db {
    /// Takes a lease on up to `limit` due jobs. A job whose lease ran out (its node died) is due
    /// again. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several nodes claim at once without
    /// waiting on each other or taking the same row; the conditions are repeated outside the
    /// sub-select so a row changed meanwhile is re-checked. SQLite has one writer at a time, so
    /// the plain form is already exclusive there.
    ///
    /// A job of an ordered endpoint is not due while an earlier job (by acceptance, then id) of
    /// the same thread, endpoint and channel is still pending, leased or not. Jobs of the
    /// endpoints in `skip` (those at their in-flight limit on this node) are left for later.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn claim_due(
        &self,
        worker: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
        skip: &[EndpointKey],
    ) -> Result<Vec<ClaimedJob>, Error> {
        let claim = write::Claim {
            worker: worker.to_owned(),
            now,
            lease_until,
            limit,
            skip: skip.to_vec(),
        };
        let mut rows = match self.backend {
            Backend::Postgres => self.claim_and_load(&claim).await?,
            Backend::Sqlite => {
                let ids = self.writes.claim(claim).await?;
                self.load_claimed(&ids).await?
            }
        };
        // On PostgreSQL the statement can take more rows than the limit: when a row it meets was
        // changed concurrently, the re-check runs the sub-select again and SKIP LOCKED finds
        // further rows. The caller has workers for `limit` jobs only, and a surplus job would
        // sit out its whole lease, so the surplus (the last due) goes back at once.
        let limit_len = usize::try_from(limit).unwrap_or(0);
        if rows.len() > limit_len {
            let surplus = rows
                .split_off(limit_len)
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<Result<Vec<String>, _>>()?;
            self.release_claims(worker, &surplus).await?;
        }
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let endpoint_ref: String = row.try_get("endpoint_ref")?;
            let channel: String = row.try_get("channel")?;
            // Only mxhook writes this column. A value it does not know goes the way every
            // channel but `email` always went: to the endpoint's webhook.
            let channel = Channel::parse(&channel).unwrap_or(Channel::Webhook);
            let inbox_id: String = row.try_get("inbox_id")?;
            let inbox_webhook = endpoint_from_row(&self.secrets, &row, "", &inbox_id)?;
            let target = match endpoint_ref.strip_prefix("rule:") {
                // A reply goes where it was addressed when it was made, from the inbox.
                None if channel == Channel::Reply => {
                    let recipients: String = row.try_get("target")?;
                    JobTarget::Reply {
                        from: row
                            .try_get::<Option<String>, _>("envelope_from")?
                            .unwrap_or_default(),
                        recipients: recipients
                            .split(", ")
                            .filter(|address| !address.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    }
                }
                None => inbox_webhook.map(JobTarget::Webhook).unwrap_or_else(|| {
                    JobTarget::Gone("the inbox has no webhook any more".to_owned())
                }),
                Some(rule_id) => {
                    let rules_json: Option<String> = row.try_get("notifications_json")?;
                    let rules = rules_from_json(&inbox_id, rules_json.as_deref());
                    let rule = rules.iter().find(|rule| rule.id == rule_id);
                    match (channel, rule) {
                        (_, None) => JobTarget::Gone(format!("rule {rule_id} was removed")),
                        (_, Some(rule)) if !rule.enabled => {
                            JobTarget::Gone(format!("rule {rule_id} is disabled"))
                        }
                        (Channel::Email, Some(rule)) => {
                            match rule.channels.email.as_ref().filter(|email| email.enabled) {
                                Some(email) => JobTarget::Email {
                                    recipients: email.recipients.clone(),
                                },
                                None => JobTarget::Gone(format!(
                                    "rule {rule_id} has no email channel any more"
                                )),
                            }
                        }
                        (_, Some(rule)) => match &rule.channels.webhook {
                            Some(webhook) => JobTarget::Webhook(WebhookEndpoint::for_rule(
                                &rule.name,
                                webhook,
                                inbox_webhook.as_ref(),
                            )),
                            None => {
                                JobTarget::Gone(format!("rule {rule_id} has no webhook any more"))
                            }
                        },
                    }
                }
            };
            // A job carrying its own event has a small one; only those are read here.
            let own_event: Option<String> = row.try_get("delivery_event")?;
            let operational = own_event.as_deref().is_some_and(|text| {
                crate::event::Event::from_json(text)
                    .is_ok_and(|event| crate::model::is_operational(event.event_type()))
            });
            let event_json = job_event_of(&row, own_event)?;
            jobs.push(ClaimedJob {
                delivery_id: row.try_get("id")?,
                message_id: row.try_get("message_id")?,
                inbox_id: row.try_get("inbox_id")?,
                event_id: row.try_get("event_id")?,
                attempts: row.try_get("attempts")?,
                failures: row.try_get("failures")?,
                event_json,
                storage_key: row.try_get("storage_key")?,
                endpoint_ref,
                channel,
                target,
                operational,
            });
        }
        Ok(jobs)
    }

    /// The PostgreSQL claim: one statement leases the jobs (`FOR UPDATE SKIP LOCKED`) and
    /// reads everything their attempts need, in due order. Its commit need not wait for the
    /// WAL flush (as the group committer's claims did not): a claim lost in a crash of the
    /// database only leaves jobs unleased, and a lease lost with its node runs out anyway. The
    /// statement sets that for its own transaction.
    async fn claim_and_load(&self, claim: &write::Claim) -> Result<Vec<AnyRow>, Error> {
        let claim_sql = write::claim_sql(Backend::Postgres, claim, CLAIMED_COLUMNS);
        let sql = format!(
            "WITH claimed AS ({claim_sql}), \
             async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS setting) \
             SELECT {JOB_COLUMNS} FROM claimed d {JOB_JOINS} CROSS JOIN async_commit \
             ORDER BY d.next_attempt_at, d.id"
        );
        let mut query = sqlx::query(&sql)
            .bind(claim.lease_until)
            .bind(&claim.worker)
            .bind(claim.now);
        for endpoint in &claim.skip {
            query = query
                .bind(&endpoint.inbox_id)
                .bind(&endpoint.endpoint_ref)
                .bind(endpoint.channel.as_str());
        }
        let rows = query.bind(claim.limit).fetch_all(&self.pool).await?;
        write::count_statements(write::StatementPath::Claim, 1);
        Ok(rows)
    }

    /// What the attempts of the claimed jobs `ids` need, in due order (the SQLite claim, which
    /// leases on the group committer and reads here).
    async fn load_claimed(&self, ids: &[String]) -> Result<Vec<AnyRow>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let load = format!(
            "SELECT {JOB_COLUMNS} FROM deliveries d {JOB_JOINS} WHERE d.id IN ({}) \
             ORDER BY d.next_attempt_at, d.id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&load);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        write::count_statements(write::StatementPath::Claim, 1);
        Ok(rows)
    }

    /// Gives back leases this node took but will not use now (jobs of an endpoint that
    /// reached its in-flight limit within one claimed batch): they are due again at once, for
    /// this node once a slot frees up or for another node.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn release_claims(&self, worker: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE deliveries SET locked_until = NULL, locked_by = NULL \
             WHERE locked_by = $1 AND status = 'pending' AND id IN ({})",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(&sql).bind(worker);
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.pool).await?;
        write::count_statements(write::StatementPath::Claim, 1);
        Ok(())
    }

    /// When the next pending job that is not of an endpoint in `skip` falls due, if any.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn next_due_at(&self, skip: &[EndpointKey]) -> Result<Option<i64>, Error> {
        // Blocked jobs and those of saturated endpoints are left out, or the dispatcher would
        // spin on jobs it cannot claim; the job blocking them is counted, and its end (like a
        // freed endpoint slot) wakes the dispatcher.
        let skipped = not_to(skip, 1);
        let sql = format!(
            "SELECT MIN(CASE WHEN d.locked_until IS NOT NULL \
             AND d.locked_until > d.next_attempt_at \
             THEN d.locked_until ELSE d.next_attempt_at END) FROM deliveries d \
             WHERE d.status = 'pending' AND {NOT_BLOCKED}{skipped}"
        );
        let mut query = sqlx::query_scalar(&sql);
        for endpoint in skip {
            query = query
                .bind(&endpoint.inbox_id)
                .bind(&endpoint.endpoint_ref)
                .bind(endpoint.channel.as_str());
        }
        let due: Option<i64> = query.fetch_one(&self.pool).await?;
        write::count_statements(write::StatementPath::Claim, 1);
        Ok(due)
    }

    /// Logs one attempt and moves its job on, releasing the lease.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn record_attempt(&self, record: &AttemptRecord) -> Result<(), Error> {
        self.writes.attempt(record.clone(), None).await
    }

    /// [`Db::record_attempt`], and when the record dead-letters the job, the `delivery.dead`
    /// event it raises, in the same transaction: not at all when this node's lease has passed
    /// on (the attempt is then not recorded either).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn record_attempt_raising(
        &self,
        record: &AttemptRecord,
        raised: Option<RaisedEvent>,
    ) -> Result<(), Error> {
        self.writes.attempt(record.clone(), raised).await
    }

    /// Puts a delivery back in the queue, due now, with a fresh retry budget. The event (and so
    /// its `event_id`) stays the same.
    ///
    /// # Errors
    /// [`Error::Query`]. Returns `false` when there is no such delivery.
    pub async fn resend(&self, delivery_id: &str) -> Result<bool, Error> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = $1, \
             locked_until = NULL, locked_by = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Puts every dead delivery of an inbox back in the queue (see [`Db::resend`]).
    ///
    /// # Errors
    /// [`Error::Query`]. Returns how many were requeued.
    pub async fn resend_dead(&self, inbox_id: &str) -> Result<u64, Error> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = $1, \
             locked_until = NULL, locked_by = NULL, updated_at = $1 \
             WHERE inbox_id = $2 AND status = 'dead'",
        )
        .bind(now)
        .bind(inbox_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Puts an inbox's finished deliveries of one window back in the queue (the API's recover):
    /// those accepted in `[since, until)`, dead (or, with [`Recover::include_delivered`], also
    /// delivered), of one endpoint when given. Pending ones are never touched. Each gets a fresh
    /// retry budget, as [`Db::resend`] gives, and they fall due in acceptance order: the claim
    /// takes due jobs by `next_attempt_at`, so each gets its own millisecond just before now, the
    /// oldest first. Jobs of an ordered endpoint also wait for the earlier ones of their thread.
    ///
    /// At most `limit` are requeued: when more match, nothing changes and the answer is
    /// [`Recovered::TooMany`]. The bound is checked by the same statement that requeues, so
    /// deliveries dying meanwhile cannot push one call past it.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn recover(&self, recover: &Recover, limit: usize) -> Result<Recovered, Error> {
        let statuses = if recover.include_delivered {
            "('dead', 'delivered')"
        } else {
            "('dead')"
        };
        let matching = format!(
            "inbox_id = $2 AND status IN {statuses} AND created_at >= $3 \
             AND ($4 < 0 OR created_at < $4) AND ($5 = '' OR endpoint_ref = $5)"
        );
        let over = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The update comes first, so SQLite takes its write lock at once (a read first would
        // have to upgrade, and fail if another write came in between). The status is checked
        // again outside the sub-select: PostgreSQL re-reads it after waiting on a row lock.
        let requeued = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', failures = 0, next_attempt_at = $1, \
             locked_until = NULL, locked_by = NULL, updated_at = $1 \
             WHERE id IN (SELECT id FROM deliveries WHERE {matching} LIMIT $6) \
             AND {matching} RETURNING id, created_at"
        ))
        .bind(now)
        .bind(&recover.inbox_id)
        .bind(recover.since_ms)
        .bind(recover.until_ms.unwrap_or(-1))
        .bind(recover.endpoint_ref.as_deref().unwrap_or_default())
        .bind(over)
        .fetch_all(&mut *tx)
        .await?;
        if requeued.len() > limit {
            tx.rollback().await?;
            return Ok(Recovered::TooMany);
        }
        let mut order = Vec::with_capacity(requeued.len());
        for row in &requeued {
            let id: String = row.try_get("id")?;
            let created_at: i64 = row.try_get("created_at")?;
            order.push((created_at, id));
        }
        order.sort();
        let count = i64::try_from(order.len()).unwrap_or(i64::MAX);
        for (rank, (_, id)) in (0_i64..).zip(&order) {
            sqlx::query("UPDATE deliveries SET next_attempt_at = $1 WHERE id = $2")
                .bind(now - (count - rank))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Recovered::Requeued(order.len()))
    }

    /// Deliveries, newest first, optionally of one status and one inbox.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        inbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM deliveries WHERE ($1 = '' OR status = $1) AND ($2 = '' OR inbox_id = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(status.map(DeliveryStatus::as_str).unwrap_or_default())
        .bind(inbox_id.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// One delivery.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryRow>, Error> {
        let row = sqlx::query("SELECT * FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Every attempt of one delivery, in order.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<AttemptRow>, Error> {
        let rows =
            // Not the request columns: a body stays out of the list.
            sqlx::query(
                "SELECT attempt, started_at, latency_ms, status_code, outcome, error, \
                 response_excerpt, CASE WHEN request_meta IS NULL THEN 0 ELSE 1 END AS logged \
                 FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
            )
                .bind(delivery_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(AttemptRow {
                    attempt: row.try_get("attempt")?,
                    started_at_ms: row.try_get("started_at")?,
                    latency_ms: row.try_get("latency_ms")?,
                    status_code: row.try_get("status_code")?,
                    outcome: AttemptOutcome::parse(&outcome).ok_or_else(|| {
                        Error::Corrupt(format!(
                            "an attempt of {delivery_id} has outcome `{outcome}`"
                        ))
                    })?,
                    error: row.try_get("error")?,
                    response_excerpt: row.try_get("response_excerpt")?,
                    request_logged: row.try_get::<i64, _>("logged")? != 0,
                })
            })
            .collect()
    }

    /// The request attempt `attempt` of a delivery sent; none when there is no such attempt
    /// or it sent nothing.
    ///
    /// # Errors
    /// [`Error::Query`]; [`Error::Corrupt`] when the log does not read back.
    pub async fn attempt_request(
        &self,
        delivery_id: &str,
        attempt: i64,
    ) -> Result<Option<AttemptRequest>, Error> {
        let row = sqlx::query(
            "SELECT a.request_meta, a.request_body, d.delivery_event, m.quarantined, \
             m.event_json, m.event_lz4 FROM delivery_attempts a \
             JOIN deliveries d ON d.id = a.delivery_id JOIN messages m ON m.id = d.message_id \
             WHERE a.delivery_id = $1 AND a.attempt = $2",
        )
        .bind(delivery_id)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(meta) = row.try_get::<Option<String>, _>("request_meta")? else {
            return Ok(None);
        };
        let corrupt = |what: String| {
            Error::Corrupt(format!(
                "the request of attempt {attempt} of {delivery_id} {what}"
            ))
        };
        let meta: RequestMeta =
            serde_json::from_str(&meta).map_err(|err| corrupt(format!("is not JSON: {err}")))?;
        let body = match meta.body.as_str() {
            "event" => Some(job_event(&row)?.into_bytes()),
            "stored" => {
                let stored: Option<Vec<u8>> = row.try_get("request_body")?;
                let stored = stored.ok_or_else(|| corrupt("has no body".to_owned()))?;
                Some(decompress_body(&stored).map_err(corrupt)?)
            }
            "too_large" => None,
            other => return Err(corrupt(format!("has body `{other}`"))),
        };
        Ok(Some(AttemptRequest {
            headers: meta.headers,
            body,
            body_bytes: meta.body_bytes,
        }))
    }

    /// Every delivery of one message, oldest first.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn message_deliveries(&self, message_id: &str) -> Result<Vec<DeliveryRow>, Error> {
        let rows =
            sqlx::query("SELECT * FROM deliveries WHERE message_id = $1 ORDER BY created_at, id")
                .bind(message_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(delivery_from_row).collect()
    }
}

/// The event a job sends: its own (`delivery_event`) or its message's. The query selects
/// `delivery_event`, `quarantined`, `event_json` and `event_lz4` under these names.
fn job_event(row: &AnyRow) -> Result<String, Error> {
    let own_event: Option<String> = row.try_get("delivery_event")?;
    job_event_of(row, own_event)
}

fn job_event_of(row: &AnyRow, own_event: Option<String>) -> Result<String, Error> {
    let quarantined: i64 = row.try_get("quarantined")?;
    match own_event {
        Some(event) => Ok(event),
        // A quarantined message's jobs carry its reduced event, never its content.
        None if quarantined != 0 => quarantined_event(&stored_event(row)?),
        None => stored_event(row),
    }
}

/// A logged body as [`SentBody::of`] compressed it.
fn decompress_body(stored: &[u8]) -> Result<Vec<u8>, String> {
    let (length, compressed) = lz4_flex::block::uncompressed_size(stored)
        .map_err(|err| format!("has no body length: {err}"))?;
    // The writer kept nothing longer: a larger length is damage and must not size an allocation.
    if length > MAX_LOGGED_BODY {
        return Err(format!("claims a body of {length} bytes"));
    }
    lz4_flex::block::decompress(compressed, length)
        .map_err(|err| format!("has a body that does not decompress: {err}"))
}

/// The `mail.quarantined` event of a quarantined message's stored event.
pub(super) fn quarantined_event(stored: &str) -> Result<String, Error> {
    match crate::event::Event::from_json(stored) {
        Ok(crate::event::Event::Mail(mail)) => Ok(crate::event::to_json(
            &crate::event::Event::Quarantined(crate::event::QuarantinedEvent::of(&mail)),
        )),
        Ok(other) => Ok(crate::event::to_json(&other)),
        Err(err) => Err(Error::Corrupt(format!("a stored event is not JSON: {err}"))),
    }
}

/// A condition (on a `deliveries d` row) leaving out the jobs of `skip`, with placeholders
/// numbered from `$first`.
pub(super) fn not_to(skip: &[EndpointKey], first: usize) -> String {
    skip.iter()
        .enumerate()
        .map(|(idx, _)| {
            let n = first + 3 * idx;
            format!(
                " AND NOT (d.inbox_id = ${n} AND d.endpoint_ref = ${} AND d.channel = ${})",
                n + 1,
                n + 2
            )
        })
        .collect()
}

pub(super) fn delivery_from_row(row: &AnyRow) -> Result<DeliveryRow, Error> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let status = DeliveryStatus::parse(&status)
        .ok_or_else(|| Error::Corrupt(format!("delivery {id} has status `{status}`")))?;
    let channel: String = row.try_get("channel")?;
    let next_attempt_at: i64 = row.try_get("next_attempt_at")?;
    Ok(DeliveryRow {
        message_id: row.try_get("message_id")?,
        inbox_id: row.try_get("inbox_id")?,
        event_id: row.try_get("event_id")?,
        // As the dispatcher reads it: every channel but email has always been the webhook.
        channel: Channel::parse(&channel).unwrap_or(Channel::Webhook),
        target: row.try_get("target")?,
        next_attempt_at_ms: (status == DeliveryStatus::Pending).then_some(next_attempt_at),
        status,
        attempts: row.try_get("attempts")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at_ms: row.try_get("created_at")?,
        delivered_at_ms: row.try_get("delivered_at")?,
        id,
    })
}

/// Node liveness: heartbeats and taking over the leases of dead nodes (`deliver::liveness`).
impl Db {
    /// Writes this node's heartbeat, creating its row on the first beat (or after another node
    /// took it for dead and removed it).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn node_heartbeat(&self, node_id: &str, now: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(node_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every node row: (id, heartbeat_at).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn node_heartbeats(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, heartbeat_at FROM nodes")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }

    /// Declares `node_id` dead if its heartbeat is still `heartbeat_at`: removes its row and
    /// makes its pending jobs due again. Returns how many leases were released; none when the
    /// node beat meanwhile (it is alive after all).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn reclaim_dead_node(&self, node_id: &str, heartbeat_at: i64) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM nodes WHERE id = $1 AND heartbeat_at = $2")
            .bind(node_id)
            .bind(heartbeat_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(0);
        }
        let released = sqlx::query(
            "UPDATE deliveries SET locked_until = NULL, locked_by = NULL \
             WHERE locked_by = $1 AND status = 'pending'",
        )
        .bind(node_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(released)
    }

    /// Releases every lease of a pending job and forgets every node. Only for a database this
    /// process alone serves (SQLite, under the file lock of `deliver::liveness`): every lease
    /// found at start then belongs to a process that is gone.
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn release_all_leases(&self) -> Result<u64, Error> {
        let released = sqlx::query(
            "UPDATE deliveries SET locked_until = NULL, locked_by = NULL \
             WHERE locked_by IS NOT NULL AND status = 'pending'",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM nodes").execute(&self.pool).await?;
        Ok(released)
    }

    /// Removes this node's row at a clean shutdown (its leases were given back already).
    ///
    /// # Errors
    /// [`Error::Query`].
    pub async fn remove_node(&self, node_id: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod request_log_tests {
    use super::*;

    #[test]
    fn a_logged_body_reads_back_exactly_and_one_over_the_cap_is_not_kept() {
        let body = "{\"text\":\"Grüße \\u0000 \"}".repeat(1000);
        let SentBody::Stored(stored) = SentBody::of(body.as_bytes()) else {
            panic!("a small body is kept");
        };
        assert!(stored.len() < body.len());
        assert_eq!(
            decompress_body(&stored).expect("decompress"),
            body.as_bytes()
        );
        assert!(matches!(
            SentBody::of(&vec![b'x'; MAX_LOGGED_BODY]),
            SentBody::Stored(_)
        ));
        assert_eq!(
            SentBody::of(&vec![b'x'; MAX_LOGGED_BODY + 1]),
            SentBody::TooLarge
        );
    }

    #[test]
    fn a_damaged_logged_body_is_an_error_not_a_huge_allocation() {
        let SentBody::Stored(mut stored) = SentBody::of(b"{\"a\":1}") else {
            panic!("kept");
        };
        stored[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress_body(&stored).is_err());
        assert!(decompress_body(&[1]).is_err());
    }

    #[test]
    fn the_log_columns_hold_headers_in_order_and_no_body_for_the_event() {
        let request = SentRequest {
            headers: vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("X-Token".to_owned(), HIDDEN_VALUE.to_owned()),
            ],
            body: SentBody::Event,
            body_bytes: 12,
        };
        let (meta, body) = request.columns();
        assert!(body.is_none());
        let meta: RequestMeta = serde_json::from_str(&meta).expect("JSON");
        assert_eq!(meta.headers, request.headers);
        assert_eq!((meta.body.as_str(), meta.body_bytes), ("event", 12));
    }
}
