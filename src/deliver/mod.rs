//! Stage 6, deliver: the dispatcher that turns committed delivery jobs into signed webhook POSTs,
//! with retries, a dead-letter state and an attempt log.
//!
//! Jobs live in the database, not in memory: the dispatcher claims due jobs with a lease, attempts
//! them under a concurrency limit, and records each attempt and the job's next state in one
//! commit. A message's webhook jobs usually skip the claim: intake writes them already leased to
//! this node and hands them over in memory (`handoff`). Each endpoint also has a per-node limit of attempts in flight
//! (`delivery.max_in_flight_per_endpoint`): a receiver that hangs until the timeout holds only
//! that many workers, and jobs of other endpoints keep being claimed past its backlog. A node that dies mid-attempt leaves a lease that expires, after which the job is due
//! again (at-least-once). Receivers deduplicate on `webhook-id` / `event_id`.
//!
//! An endpoint is switched off, with a stored reason, when its receiver answers 410 Gone or
//! when it has failed without a single success for `delivery.disable_after_s`; its pending jobs
//! then dead-letter with that reason.

pub mod forward;
pub mod handoff;
pub mod liveness;
pub mod retry;

pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::DeliveryConfig;
use crate::db::{
    AttemptRecord, ClaimedJob, Db, EndpointKey, JobTarget, JobUpdate, NewDelivery, RaisedEvent,
    SentBody, SentRequest,
};
use crate::event::{self, DeliveryDead, EndpointDisabled, Event};
use crate::model::{AttemptOutcome, Channel, PayloadFormat, new_id, now_ms, rfc3339};
use retry::{NextStep, RetryPolicy};

/// Longest the dispatcher sleeps without looking at the queue; bounds how late a job whose
/// wake-up was missed (another node enqueued it, a lease expired) can start.
const MAX_IDLE_POLL: Duration = Duration::from_secs(1);

/// How long a success trusts that its endpoint has no failure record to clear. Another node
/// may record a failure meanwhile; a success after this long clears it, which is far sooner
/// than `delivery.disable_after_s` could act on it.
const CLEAR_RECHECK: Duration = Duration::from_secs(10);
/// Endpoints remembered as clear at most, before the memory starts over.
const KNOWN_CLEAR_MAX: usize = 4096;

/// How long a handed-over job waits parked for a slot of its endpoint at most (a tenth of the
/// lease, if that is shorter): its lease runs meanwhile, and must still outlast the attempt.
const PARK_AT_MOST: Duration = Duration::from_secs(10);

/// Jobs claimed per database round trip.
const CLAIM_BATCH: usize = 32;

/// What one look at the database found.
enum Claimed {
    /// Jobs were claimed and started; there may be more.
    Some,
    /// Nothing is due; the next job falls due within this long (capped at the idle poll).
    Nothing(Duration),
    Stopped,
}

pub struct Dispatcher {
    db: Db,
    store: crate::store::Store,
    forwarder: forward::Forwarder,
    directory: crate::directory::Directory,
    client: webhook::WebhookClient,
    policy: RetryPolicy,
    lease: Duration,
    /// `None`: endpoints are never disabled for failing.
    disable_after: Option<Duration>,
    workers: usize,
    per_endpoint: usize,
    /// Attempts in flight on this node, per endpoint; endpoints with none are absent.
    in_flight: Arc<Mutex<HashMap<EndpointKey, usize>>>,
    node_id: String,
    wakeup: Arc<Notify>,
    handoff: Arc<handoff::Handoff>,
    /// Endpoints (inbox, endpoint ref, URL) seen without a failure record, and when: a success
    /// then has nothing to clear, and the check is skipped until [`CLEAR_RECHECK`] passed.
    known_clear: Mutex<HashMap<(String, String, String), std::time::Instant>>,
}

/// Waits for a free worker; `None` when shutdown came first.
async fn free_worker(
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        () = shutdown.cancelled() => None,
        permit = Arc::clone(permits).acquire_owned() => permit.ok(),
    }
}

/// What an attempt holds while its request is in flight: a worker and a slot of its endpoint.
/// Only ever dropped.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: EndpointSlot,
}

/// One of an endpoint's in-flight slots, given back when dropped.
struct EndpointSlot {
    in_flight: Arc<Mutex<HashMap<EndpointKey, usize>>>,
    key: EndpointKey,
    limit: usize,
    wakeup: Arc<Notify>,
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_full = match in_flight.get_mut(&self.key) {
            Some(count) => {
                let was_full = *count >= self.limit;
                *count = count.saturating_sub(1);
                if *count == 0 {
                    in_flight.remove(&self.key);
                }
                was_full
            }
            None => false,
        };
        drop(in_flight);
        // The endpoint's waiting jobs were left out of claims and of the next-due time, so
        // nothing else would wake the dispatcher for them.
        if was_full {
            self.wakeup.notify_one();
        }
    }
}

impl Dispatcher {
    /// # Errors
    /// [`webhook::Error`] when the HTTP client cannot be built.
    pub fn new(
        config: &DeliveryConfig,
        db: Db,
        store: crate::store::Store,
        forwarder: forward::Forwarder,
        directory: crate::directory::Directory,
        handoff: Arc<handoff::Handoff>,
        wakeup: Arc<Notify>,
    ) -> Result<Self, webhook::Error> {
        Ok(Self {
            db,
            store,
            forwarder,
            directory,
            client: webhook::WebhookClient::new(
                config.timeout(),
                config.allow_http,
                config.allow_private_targets,
            )?,
            policy: RetryPolicy {
                base: config.retry_base(),
                max_retries: config.max_retries,
            },
            lease: config.lease(),
            disable_after: config.disable_after(),
            workers: config.workers,
            per_endpoint: config.max_in_flight_per_endpoint,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            node_id: handoff.node_id().to_owned(),
            wakeup,
            handoff,
            known_clear: Mutex::new(HashMap::new()),
        })
    }

    /// The endpoints at their in-flight limit on this node.
    fn saturated(&self) -> Vec<EndpointKey> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, count)| **count >= self.per_endpoint)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Takes a slot of `key`, unless the endpoint is at its limit.
    fn take_slot(&self, key: EndpointKey) -> Option<EndpointSlot> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = in_flight.entry(key.clone()).or_insert(0);
        if *count >= self.per_endpoint {
            return None;
        }
        *count += 1;
        drop(in_flight);
        Some(EndpointSlot {
            in_flight: Arc::clone(&self.in_flight),
            key,
            limit: self.per_endpoint,
            wakeup: Arc::clone(&self.wakeup),
        })
    }

    /// Attempts handed-off jobs and claims due ones until `shutdown`; attempts already started
    /// are left to finish on `tracker`.
    ///
    /// The database is read only when something may have made a job due there: a wake-up
    /// (intake committed jobs it did not hand over, a retry was scheduled, an endpoint got
    /// room, an operator resent), the next due time, or the idle poll. A job handed over in
    /// memory is none of these, so a node whose jobs all come the short way makes no claims.
    pub async fn run(self: Arc<Self>, tracker: TaskTracker, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.workers));
        let mut claim_due = true;
        let mut next_look = tokio::time::Instant::now() + MAX_IDLE_POLL;
        loop {
            if !self.handoff.is_empty() {
                if !self.start_handed_off(&permits, &tracker, &shutdown).await {
                    break;
                }
                continue;
            }
            if claim_due {
                match self.claim_and_start(&permits, &tracker, &shutdown).await {
                    Claimed::Some => continue,
                    Claimed::Stopped => break,
                    Claimed::Nothing(wait) => {
                        claim_due = false;
                        next_look = tokio::time::Instant::now() + wait;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                // A wake-up may be a slot freeing (see `EndpointSlot`'s drop), and the idle
                // poll bounds how long a parked job can miss one.
                () = self.wakeup.notified() => {
                    self.handoff.unpark();
                    claim_due = true;
                }
                () = self.handoff.queued() => {}
                () = tokio::time::sleep_until(next_look) => {
                    self.handoff.unpark();
                    claim_due = true;
                }
            }
        }
        self.handoff.close_and_give_back(&self.db).await;
    }

    /// Starts queued handed-off jobs, as many as there are free workers (waiting for the first).
    /// False when shutdown came first.
    async fn start_handed_off(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(first) = free_worker(permits, shutdown).await else {
            return false;
        };
        let mut permit = Some(first);
        let mut over_limit = Vec::new();
        let park_at_most = PARK_AT_MOST.min(self.lease / 10);
        while let Some(free) = permit.take() {
            let Some((job, queued_at)) = self.handoff.pop() else {
                break;
            };
            match self.take_slot(job.endpoint()) {
                Some(slot) => self.spawn_attempt(tracker, job, free, slot),
                None => {
                    // The endpoint is at its limit on this node: the job waits parked for the
                    // next free slot, or, once it waited long enough, in the database, where the
                    // claim that follows a free slot finds it.
                    if queued_at.elapsed() < park_at_most {
                        if let Err(delivery_id) = self.handoff.park(job, queued_at) {
                            over_limit.push(delivery_id);
                        }
                    } else {
                        over_limit.push(job.delivery_id);
                    }
                    permit = Some(free);
                    continue;
                }
            }
            permit = Arc::clone(permits).try_acquire_owned().ok();
        }
        if !over_limit.is_empty()
            && let Err(err) = self.db.release_claims(&self.node_id, &over_limit).await
        {
            tracing::warn!(error = %err, "giving back handed-over jobs failed; they are due again when their leases run out");
        }
        true
    }

    /// One claim of due jobs from the database, started as they come.
    async fn claim_and_start(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Claimed {
        let Some(first) = free_worker(permits, shutdown).await else {
            return Claimed::Stopped;
        };
        let mut held = vec![first];
        // A claim larger than an endpoint's limit would mostly be given back when the queue
        // holds one busy endpoint's jobs.
        while held.len() < CLAIM_BATCH.min(self.per_endpoint) {
            match Arc::clone(permits).try_acquire_owned() {
                Ok(permit) => held.push(permit),
                Err(_) => break,
            }
        }

        let now = now_ms();
        let lease_until = now + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let limit = i64::try_from(held.len()).unwrap_or(1);
        let saturated = self.saturated();
        let jobs = match self
            .db
            .claim_due(&self.node_id, now, lease_until, limit, &saturated)
            .await
        {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "claiming delivery jobs failed");
                return Claimed::Nothing(MAX_IDLE_POLL);
            }
        };

        if jobs.is_empty() {
            drop(held);
            let wait = match self.db.next_due_at(&saturated).await {
                Ok(Some(due)) => Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)),
                _ => MAX_IDLE_POLL,
            };
            return Claimed::Nothing(wait.min(MAX_IDLE_POLL));
        }

        // Saturated endpoints were left out of the claim, but one batch can still hold more
        // jobs of an endpoint than it has free slots; those go back to the queue. The first
        // job of each endpoint always gets a slot, so this never loops without progress.
        let mut startable = Vec::with_capacity(jobs.len());
        let mut over_limit = Vec::new();
        for job in jobs {
            match self.take_slot(job.endpoint()) {
                Some(slot) => startable.push((job, slot)),
                None => over_limit.push(job.delivery_id),
            }
        }
        if !over_limit.is_empty()
            && let Err(err) = self.db.release_claims(&self.node_id, &over_limit).await
        {
            // Their leases run out and they are claimed again then: only late, not lost.
            tracing::warn!(error = %err, "giving back claimed delivery jobs failed");
        }
        for ((job, slot), permit) in startable.into_iter().zip(held.drain(..)) {
            self.spawn_attempt(tracker, job, permit, slot);
        }
        Claimed::Some
    }

    fn spawn_attempt(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        job: ClaimedJob,
        permit: tokio::sync::OwnedSemaphorePermit,
        slot: EndpointSlot,
    ) {
        let dispatcher = Arc::clone(self);
        let span = tracing::info_span!(
            "delivery",
            delivery_id = %job.delivery_id,
            message_id = %job.message_id,
            attempt = job.attempts + 1,
        );
        // Boxed: the attempt's future (the HTTP request's among it) is many kilobytes, and
        // the runtime moves a task's future by value several times when spawning it and again
        // when the task finishes; a box is moved as a pointer.
        tracker.spawn(Box::pin(
            async move {
                dispatcher
                    .attempt(
                        job,
                        Held {
                            _permit: permit,
                            _slot: slot,
                        },
                    )
                    .await;
            }
            .instrument(span),
        ));
    }

    /// `held` (a worker and an endpoint slot) is given back once the receiver has answered,
    /// before the attempt is recorded, so commit latency idles neither the workers nor the
    /// endpoint. The job keeps its lease until the record commits, so no other worker can take
    /// it meanwhile.
    async fn attempt(&self, job: ClaimedJob, held: Held) {
        let started_at = now_ms();
        let mut request = None;
        let (result, max_retries) = match &job.target {
            JobTarget::Gone(reason) => (Err(reason.clone()), None),
            JobTarget::Webhook(endpoint) if !endpoint.enabled => {
                let reason = match &endpoint.disabled_reason {
                    Some(why) => format!("the webhook is disabled: {why}"),
                    None => "the webhook is disabled".to_owned(),
                };
                (Err(reason), None)
            }
            JobTarget::Webhook(endpoint) => {
                let body = match endpoint.payload {
                    // The stored event is sent byte for byte.
                    PayloadFormat::Mxhook => Ok(job.event_json.clone().into_bytes()),
                    format => Event::from_json(&job.event_json)
                        .map(|stored| {
                            let recipient = event::Recipient {
                                endpoint_id: &job.endpoint_ref,
                                endpoint_name: endpoint.name.as_deref().unwrap_or(&job.inbox_id),
                                sent_at: chrono::Utc::now(),
                            };
                            let payload = event::payload_for_endpoint(&stored, format, &recipient);
                            event::to_json(&payload).into_bytes()
                        })
                        .map_err(|err| format!("stored event is not JSON: {err}")),
                };
                let result = match body {
                    Ok(body) => {
                        // The mxhook body is the stored event, which the log reads back from
                        // there: no second copy of it.
                        let logged_body = match endpoint.payload {
                            PayloadFormat::Mxhook => SentBody::Event,
                            _ => SentBody::of(&body),
                        };
                        let body_bytes = body.len();
                        let (headers, response) = self
                            .client
                            .post_logged(endpoint, &job.event_id, body, started_at / 1000)
                            .await;
                        request = headers.map(|headers| {
                            Box::new(SentRequest {
                                headers,
                                body: logged_body,
                                body_bytes,
                            })
                        });
                        Ok(response)
                    }
                    Err(err) => Err(err),
                };
                (result, endpoint.max_retries)
            }
            JobTarget::Email { recipients } => {
                self.forward(&job, recipients, started_at, held).await;
                return;
            }
            JobTarget::Reply { from, recipients } => {
                self.send_reply(&job, from, recipients, started_at, held)
                    .await;
                return;
            }
        };
        let failures = u32::try_from(job.failures)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let policy = RetryPolicy {
            max_retries: max_retries.unwrap_or(self.policy.max_retries),
            ..self.policy
        };
        let schedule =
            |retry_after: Option<Duration>| match policy.next_step(failures, jitter, retry_after) {
                NextStep::RetryAfter(delay) => JobUpdate::RetryAt(
                    now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
                ),
                NextStep::DeadLetter => JobUpdate::Dead,
            };
        let mut record = AttemptRecord {
            worker: self.node_id.clone(),
            delivery_id: job.delivery_id.clone(),
            started_at,
            latency_ms: 0,
            status_code: None,
            outcome: AttemptOutcome::NotSent,
            error: None,
            response_excerpt: None,
            request,
            next: JobUpdate::Dead,
        };
        match result {
            Err(reason) => {
                record.outcome = AttemptOutcome::NotSent;
                record.error = Some(reason);
            }
            Ok(Err(err)) => {
                record.latency_ms = now_ms() - started_at;
                record.outcome = AttemptOutcome::Error;
                record.next = if err.is_transient() {
                    schedule(None)
                } else {
                    JobUpdate::Dead
                };
                record.error = Some(err.to_string());
            }
            Ok(Ok(response)) => {
                record.latency_ms = i64::try_from(response.latency.as_millis()).unwrap_or(i64::MAX);
                record.status_code = Some(response.status);
                record.response_excerpt = Some(response.excerpt);
                if (200..300).contains(&response.status) {
                    record.outcome = AttemptOutcome::Delivered;
                    record.next = JobUpdate::Delivered;
                } else {
                    record.outcome = AttemptOutcome::HttpError;
                    record.error = Some(format!("HTTP {}", response.status));
                    let retry_after = match response.status {
                        429 | 503 => response
                            .retry_after
                            .as_deref()
                            .and_then(|value| retry::parse_retry_after(value, now_ms() / 1000)),
                        _ => None,
                    };
                    record.next = if response.status == 410 {
                        // 410 Gone: the receiver says this endpoint will never accept again, so
                        // the endpoint is switched off (and says so) instead of being retried.
                        self.disable_endpoint(&job, "the receiver answered 410 Gone")
                            .await;
                        record.error = Some("HTTP 410: endpoint disabled".to_owned());
                        JobUpdate::Dead
                    } else {
                        schedule(retry_after)
                    };
                }
            }
        }
        if let JobTarget::Webhook(endpoint) = &job.target
            && record.outcome != AttemptOutcome::NotSent
            && record.status_code != Some(410)
        {
            self.check_failing_period(&job, endpoint, &mut record).await;
        }
        tracing::info!(
            outcome = record.outcome.as_str(),
            status = record.status_code,
            latency_ms = record.latency_ms,
            error = record.error.as_deref(),
            next = ?record.next,
            "webhook attempt"
        );
        drop(held);
        let raised = self.delivery_dead(&job, &record);
        let raises = raised.is_some();
        if let Err(err) = self.db.record_attempt_raising(&record, raised).await {
            // The lease runs out and the job is attempted again: at-least-once holds.
            tracing::error!(error = %err, "recording delivery attempt failed");
        }
        // A retry falls due later, and a job that ended may unblock the next job of its
        // thread on an ordered endpoint; a dead-lettering may have raised jobs. Any other end
        // changes nothing a claim would find.
        let ordered = matches!(&job.target, JobTarget::Webhook(endpoint) if endpoint.ordered);
        if ordered || raises || matches!(record.next, JobUpdate::RetryAt(_)) {
            self.wakeup.notify_one();
        }
    }

    /// One attempt of an email-forward job: the original from the store, the forward through
    /// the smarthost, the attempt logged like a webhook attempt (no HTTP status).
    async fn forward(&self, job: &ClaimedJob, recipients: &[String], started_at: i64, held: Held) {
        let outcome = match (
            Event::from_json(&job.event_json),
            self.store.get(&job.storage_key).await,
        ) {
            (Ok(event), Ok(raw)) => self
                .forwarder
                .forward(&event, &raw, recipients)
                .await
                .map_err(|err| (err.is_transient(), err.to_string())),
            (Err(err), _) => Err((false, format!("stored event is not JSON: {err}"))),
            (_, Err(err)) => Err((err.is_transient(), format!("reading the original: {err}"))),
        };
        self.record_smarthost_attempt(job, outcome, started_at, held, "email forward")
            .await;
    }

    /// Sends an inbox's reply, the stored message byte for byte, through the smarthost.
    async fn send_reply(
        &self,
        job: &ClaimedJob,
        from: &str,
        recipients: &[String],
        started_at: i64,
        held: Held,
    ) {
        let outcome = match self.store.get(&job.storage_key).await {
            Ok(raw) => self
                .forwarder
                .send_raw(from, recipients, &raw)
                .await
                .map_err(|err| (err.is_transient(), err.to_string())),
            Err(err) => Err((err.is_transient(), format!("reading the reply: {err}"))),
        };
        self.record_smarthost_attempt(job, outcome, started_at, held, "reply")
            .await;
    }

    /// Records what the smarthost made of a forward or a reply (`what`): delivered, retried
    /// later when it failed for now, dead when it refused for good.
    async fn record_smarthost_attempt(
        &self,
        job: &ClaimedJob,
        outcome: Result<(), (bool, String)>,
        started_at: i64,
        held: Held,
        what: &'static str,
    ) {
        let failures = u32::try_from(job.failures)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let next = match &outcome {
            Ok(()) => JobUpdate::Delivered,
            Err((true, _)) => {
                match self
                    .policy
                    .next_step(failures, rand::random::<f64>() * 2.0 - 1.0, None)
                {
                    NextStep::RetryAfter(delay) => JobUpdate::RetryAt(
                        now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
                    ),
                    NextStep::DeadLetter => JobUpdate::Dead,
                }
            }
            Err((false, _)) => JobUpdate::Dead,
        };
        let record = AttemptRecord {
            worker: self.node_id.clone(),
            delivery_id: job.delivery_id.clone(),
            started_at,
            latency_ms: now_ms() - started_at,
            status_code: None,
            outcome: if outcome.is_ok() {
                AttemptOutcome::Forwarded
            } else {
                AttemptOutcome::Error
            },
            error: outcome.err().map(|(_, message)| message),
            response_excerpt: None,
            request: None,
            next,
        };
        tracing::info!(outcome = record.outcome.as_str(), error = record.error.as_deref(), next = ?record.next, what, "smarthost attempt");
        drop(held);
        let raised = self.delivery_dead(job, &record);
        let raises = raised.is_some();
        if let Err(err) = self.db.record_attempt_raising(&record, raised).await {
            tracing::error!(error = %err, what, "recording smarthost attempt failed");
        }
        if raises {
            self.wakeup.notify_one();
        }
    }

    /// Records a webhook attempt's outcome for its endpoint and, when the endpoint has now
    /// failed without a success for longer than `disable_after`, disables it and dead-letters
    /// this job with the reason.
    async fn check_failing_period(
        &self,
        job: &ClaimedJob,
        endpoint: &crate::model::WebhookEndpoint,
        record: &mut AttemptRecord,
    ) {
        let Some(period) = self.disable_after else {
            return;
        };
        let success = matches!(record.next, JobUpdate::Delivered);
        let key = (
            job.inbox_id.clone(),
            job.endpoint_ref.clone(),
            endpoint.url.clone(),
        );
        {
            let mut clear = self
                .known_clear
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !success {
                clear.remove(&key);
            } else if clear
                .get(&key)
                .is_some_and(|seen| seen.elapsed() < CLEAR_RECHECK)
            {
                return;
            }
        }
        let now = now_ms();
        let since = match self
            .db
            .note_endpoint_outcome(
                &job.inbox_id,
                &job.endpoint_ref,
                &endpoint.url,
                success,
                now,
            )
            .await
        {
            Ok(since) => since,
            Err(err) => {
                tracing::error!(error = %err, "recording the endpoint's outcome failed");
                return;
            }
        };
        let Some(since) = since else {
            let mut clear = self
                .known_clear
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if clear.len() >= KNOWN_CLEAR_MAX {
                clear.clear();
            }
            clear.insert(key, std::time::Instant::now());
            return;
        };
        let failing_for = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
        if failing_for < period {
            return;
        }
        let reason = format!(
            "failing without a success since {} (delivery.disable_after_s = {}); last error: {}",
            crate::model::rfc3339(since),
            period.as_secs_f64(),
            record.error.as_deref().unwrap_or("unknown"),
        );
        self.disable_endpoint(job, &reason).await;
        record.error = Some(format!("endpoint disabled: {reason}"));
        record.next = JobUpdate::Dead;
    }

    /// The `delivery.dead` event the record raises when it dead-letters the job, with a job for
    /// each endpoint of the inbox subscribed to it; none about a job that carries an
    /// operational event itself (no cascades).
    fn delivery_dead(&self, job: &ClaimedJob, record: &AttemptRecord) -> Option<RaisedEvent> {
        if !matches!(record.next, JobUpdate::Dead) || job.operational {
            return None;
        }
        let id = new_id("evt");
        let event = Event::DeliveryDead(DeliveryDead {
            agent_id: job.inbox_id.as_str().into(),
            attempts: job.attempts.saturating_add(1),
            delivery_id: job.delivery_id.clone(),
            endpoint: job.endpoint_ref.clone(),
            event_id: job.event_id.as_str().into(),
            id: id.as_str().into(),
            last_error: record.error.clone(),
            last_status_code: record.status_code,
            message_id: job.message_id.as_str().into(),
            timestamp: rfc3339(now_ms()),
            kind: event::DeliveryDeadType::DeliveryDead,
        });
        self.raise(job, id, &event)
    }

    /// `event` (operational, about `job`'s endpoint) with its jobs, or `None` when no endpoint
    /// of the inbox subscribes to it.
    fn raise(&self, job: &ClaimedJob, id: String, event: &Event) -> Option<RaisedEvent> {
        let inbox = self.directory.inbox(&job.inbox_id)?;
        let deliveries: Vec<NewDelivery> =
            crate::route::operational_webhooks(&inbox, event.event_type(), &job.endpoint_ref)
                .into_iter()
                .map(|(endpoint_ref, webhook)| NewDelivery {
                    id: new_id("dlv"),
                    channel: Channel::Webhook,
                    endpoint_ref,
                    target: webhook.url,
                    ordered: false,
                    lease: None,
                })
                .collect();
        if deliveries.is_empty() {
            return None;
        }
        Some(RaisedEvent {
            message_id: job.message_id.clone(),
            inbox_id: job.inbox_id.clone(),
            event_id: id,
            event_json: event::to_json(event),
            deliveries,
        })
    }

    async fn disable_endpoint(&self, job: &ClaimedJob, reason: &str) {
        tracing::warn!(inbox_id = %job.inbox_id, endpoint = %job.endpoint_ref, reason, "disabling the webhook endpoint");
        let raised = if job.operational {
            None
        } else {
            let id = new_id("evt");
            let event = Event::EndpointDisabled(EndpointDisabled {
                agent_id: job.inbox_id.as_str().into(),
                endpoint: job.endpoint_ref.clone(),
                id: id.as_str().into(),
                reason: reason.to_owned(),
                timestamp: rfc3339(now_ms()),
                kind: event::EndpointDisabledType::EndpointDisabled,
            });
            self.raise(job, id, &event)
        };
        if let Err(err) = self
            .db
            .disable_endpoint(&job.inbox_id, &job.endpoint_ref, reason, raised.as_ref())
            .await
        {
            tracing::error!(error = %err, "disabling the endpoint failed");
            return;
        }
        // Its pending jobs fell due; they dead-letter now rather than at the next poll.
        self.wakeup.notify_one();
        // New messages stop creating jobs for it on this node at once, on the others at their
        // next directory poll.
        if let Err(err) = self.directory.reload(&self.db).await {
            tracing::warn!(error = %err, "reloading inboxes after disabling failed");
        }
    }
}
