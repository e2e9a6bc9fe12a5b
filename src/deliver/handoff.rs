//! The short way from intake to this node's dispatcher. A job that intake commits already leased
//! to this node (its row says `locked_by` = this node) is passed over in memory with its event,
//! so the dispatcher neither claims it nor reads the event back: a message costs two fewer
//! statements, and no read of its event, on the way to its webhook.
//!
//! The lease makes the short way as safe as the long one: if this node dies before the attempt
//! is recorded, the lease runs out and any node claims the job from the database, as it would
//! a claimed job whose node died. The number of jobs leased this way and not yet started is
//! bounded (`capacity`), and past it intake commits jobs unleased for the dispatcher to claim,
//! so a slow receiver cannot make this node hold an unbounded backlog under lease.
//!
//! A job whose endpoint has all its slots in flight waits parked, keeping its place, until a
//! slot frees, for a short while at most ([`Handoff::park`]); giving it back through the database
//! instead costs two writes (the release, the claim) on the one queue every job of the node goes
//! through, and under load that turned a receiver's pause of a few milliseconds into seconds of
//! lag for every later message (BENCHMARKS.md).
//!
//! Intake asks one question of this module per commit, through [`Handover`]: which of a
//! message's jobs are written leased to this node ([`Handover::lease`]), then, once the commit
//! returned, passes them over ([`Handover::hand_over`]) or, when what was committed is unknown,
//! gives their leases back ([`Handover::give_back`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Instant;

use tokio::sync::Notify;

use crate::db::{ClaimedJob, Db, JobTarget, Lease, NewDelivery};
use crate::model::WebhookEndpoint;

/// The queue between intake and the dispatcher of one node.
pub struct Handoff {
    node_id: String,
    lease_ms: i64,
    capacity: usize,
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    /// Reservations taken plus jobs queued or parked: leased rows not yet started.
    held: usize,
    /// Jobs to start, each with when it was queued (about when its lease began).
    queue: VecDeque<(ClaimedJob, Instant)>,
    /// Jobs whose endpoint had no free slot, oldest first, to be queued again ahead of the rest
    /// once one may have freed ([`Handoff::unpark`]).
    parked: Vec<(ClaimedJob, Instant)>,
    /// The dispatcher has stopped: nothing is reserved or queued any more.
    closed: bool,
}

/// A place in the queue, taken before the job's row is written with this node's lease. Dropped
/// unused (the commit failed), the place is given back.
pub struct Reservation {
    handoff: Arc<Handoff>,
    used: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            self.handoff.lock().held -= 1;
        }
    }
}

impl Handoff {
    pub fn new(node_id: String, lease_ms: i64, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            lease_ms,
            capacity,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node the leases are taken for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// When a lease taken at `now` runs out.
    pub fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(self.lease_ms)
    }

    /// A place for one job, unless the queue is full or the dispatcher has stopped.
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        let mut state = self.lock();
        if state.closed || state.held >= self.capacity {
            return None;
        }
        state.held += 1;
        drop(state);
        Some(Reservation {
            handoff: Arc::clone(self),
            used: false,
        })
    }

    /// Queues a committed job in its reserved place.
    ///
    /// # Errors
    /// The job's delivery id, when the dispatcher stopped meanwhile: its lease must then be
    /// given back through the database, or it would wait for the lease to run out.
    pub fn push(&self, mut reservation: Reservation, job: ClaimedJob) -> Result<(), String> {
        reservation.used = true;
        let mut state = self.lock();
        if state.closed {
            state.held -= 1;
            return Err(job.delivery_id);
        }
        state.queue.push_back((job, Instant::now()));
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest queued job, with when it was first queued; its place is free again.
    pub(super) fn pop(&self) -> Option<(ClaimedJob, Instant)> {
        let mut state = self.lock();
        let popped = state.queue.pop_front()?;
        state.held -= 1;
        Some(popped)
    }

    /// Keeps a popped job whose endpoint has no free slot, in its place again, until
    /// [`Handoff::unpark`]. The caller bounds how long a job may wait so, since its lease runs
    /// meanwhile.
    ///
    /// # Errors
    /// The job's delivery id, when the dispatcher stopped meanwhile (its lease must be given back).
    pub(super) fn park(&self, job: ClaimedJob, queued_at: Instant) -> Result<(), String> {
        let mut state = self.lock();
        if state.closed {
            return Err(job.delivery_id);
        }
        state.held += 1;
        state.parked.push((job, queued_at));
        Ok(())
    }

    /// Queues the parked jobs again, ahead of the others and in their order: a slot of their
    /// endpoint may have freed.
    pub(super) fn unpark(&self) {
        let mut state = self.lock();
        let parked = std::mem::take(&mut state.parked);
        for entry in parked.into_iter().rev() {
            state.queue.push_front(entry);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Resolves once a job was queued (at once if one was queued since the last wait).
    pub(super) async fn queued(&self) {
        self.ready.notified().await;
    }

    /// Refuses new jobs and returns those still queued, whose leases the caller gives back.
    fn close(&self) -> Vec<ClaimedJob> {
        let mut state = self.lock();
        state.closed = true;
        let mut jobs: Vec<ClaimedJob> = state.parked.drain(..).map(|(job, _)| job).collect();
        jobs.extend(state.queue.drain(..).map(|(job, _)| job));
        state.held -= jobs.len();
        jobs
    }

    /// At the dispatcher's shutdown: refuses new jobs and gives back the leases of those handed
    /// over but not started, so they go back to the queue in the database at once rather than
    /// waiting out their leases.
    pub(super) async fn close_and_give_back(&self, db: &Db) {
        let unstarted: Vec<String> = self
            .close()
            .into_iter()
            .map(|job| job.delivery_id)
            .collect();
        release(db, &self.node_id, &unstarted).await;
    }
}

/// One delivery job of a message, with the webhook it posts to (none for an email forward).
pub struct Routed {
    pub delivery: NewDelivery,
    pub webhook: Option<WebhookEndpoint>,
}

/// What a handed-over job is made of, besides its delivery.
pub struct JobParts<'a> {
    pub inbox_id: &'a str,
    pub message_id: &'a str,
    pub event_id: &'a str,
    pub event_json: &'a str,
    pub storage_key: &'a str,
    pub received_at: i64,
    /// The message's place in the commit.
    pub index: usize,
}

/// A job written leased to this node, to be handed to its dispatcher once committed.
struct HandedOver {
    reservation: Reservation,
    job: ClaimedJob,
    /// Which of the committed messages it delivers.
    message: usize,
}

/// The jobs of one intake commit that are written leased to this node. Dropped before the
/// commit (nothing was committed), its reservations give their places back.
pub struct Handover<'h> {
    handoff: Option<&'h Arc<Handoff>>,
    jobs: Vec<HandedOver>,
}

impl<'h> Handover<'h> {
    /// Without a hand-off every job is written unleased, for a claim.
    pub fn new(handoff: Option<&'h Arc<Handoff>>) -> Self {
        Self {
            handoff,
            jobs: Vec::new(),
        }
    }

    /// The delivery rows of one message: its webhook jobs leased to this node while the
    /// dispatcher has room for them (`delivery.workers`). Jobs of ordered endpoints wait for
    /// their thread's earlier jobs, which only a claim checks, and email forwards read the
    /// original back, so both are written unleased and claimed.
    pub fn lease(&mut self, routed: Vec<Routed>, message: &JobParts<'_>) -> Vec<NewDelivery> {
        let mut deliveries = Vec::with_capacity(routed.len());
        let mut room = self.handoff.is_some();
        for Routed {
            mut delivery,
            webhook,
        } in routed
        {
            let handoff = self.handoff.filter(|_| room);
            let (Some(handoff), Some(mut endpoint)) = (handoff, webhook) else {
                deliveries.push(delivery);
                continue;
            };
            if delivery.ordered {
                deliveries.push(delivery);
                continue;
            }
            let Some(reservation) = handoff.reserve() else {
                room = false;
                deliveries.push(delivery);
                continue;
            };
            // The directory's copy was read when the secret's grace period still ran.
            endpoint.expire_previous_secret(message.received_at);
            delivery.lease = Some(Lease {
                node: handoff.node_id().to_owned(),
                until: handoff.lease_until(message.received_at),
            });
            self.jobs.push(HandedOver {
                reservation,
                job: ClaimedJob {
                    delivery_id: delivery.id.clone(),
                    message_id: message.message_id.to_owned(),
                    inbox_id: message.inbox_id.to_owned(),
                    event_id: message.event_id.to_owned(),
                    attempts: 0,
                    failures: 0,
                    event_json: message.event_json.to_owned(),
                    storage_key: message.storage_key.to_owned(),
                    endpoint_ref: delivery.endpoint_ref.clone(),
                    channel: delivery.channel,
                    target: JobTarget::Webhook(endpoint),
                    operational: false,
                },
                message: message.index,
            });
            deliveries.push(delivery);
        }
        deliveries
    }

    /// Passes the committed leased jobs to the dispatcher, each with its event as committed
    /// (`committed_events`, by message: the commit may have corrected the duplicate flag), and
    /// wakes the dispatcher to claim when some of the `jobs` committed were not leased. When
    /// the dispatcher has stopped, their leases are given back so another claim finds them
    /// at once.
    pub async fn hand_over(
        mut self,
        db: &Db,
        wakeup: &Notify,
        committed_events: &[Option<String>],
        jobs: usize,
    ) {
        for handed in &mut self.jobs {
            if let Some(Some(event_json)) = committed_events.get(handed.message) {
                handed.job.event_json.clone_from(event_json);
            }
        }
        let all_handed_over = self.jobs.len() == jobs;
        if let Some(handoff) = self.handoff {
            let mut refused = Vec::new();
            for HandedOver {
                reservation, job, ..
            } in self.jobs
            {
                if let Err(delivery_id) = handoff.push(reservation, job) {
                    refused.push(delivery_id);
                }
            }
            if release(db, handoff.node_id(), &refused).await {
                wakeup.notify_one();
            }
        }
        if !all_handed_over {
            wakeup.notify_one();
        }
    }

    /// Gives back the leases of committed jobs that will not be handed over (what the commit
    /// made of their events is unknown; a claim reads them as stored).
    pub async fn give_back(self, db: &Db, wakeup: &Notify) {
        let Some(handoff) = self.handoff else {
            return;
        };
        let ids: Vec<String> = self
            .jobs
            .into_iter()
            .map(|handed| handed.job.delivery_id)
            .collect();
        if release(db, handoff.node_id(), &ids).await {
            wakeup.notify_one();
        }
    }
}

/// Gives leases of this node back through the database, so a claim finds their jobs at once.
/// True when there were any (whether or not the database took them back: if not, they are due
/// when their leases run out).
async fn release(db: &Db, node_id: &str, ids: &[String]) -> bool {
    if ids.is_empty() {
        return false;
    }
    if let Err(err) = db.release_claims(node_id, ids).await {
        tracing::warn!(error = %err, jobs = ids.len(), "giving back leased jobs failed; they are due again when their leases run out");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> ClaimedJob {
        ClaimedJob {
            delivery_id: id.to_owned(),
            message_id: "msg".to_owned(),
            inbox_id: "inbox".to_owned(),
            event_id: "evt".to_owned(),
            attempts: 0,
            failures: 0,
            event_json: "{}".to_owned(),
            storage_key: "key".to_owned(),
            endpoint_ref: "inbox".to_owned(),
            channel: crate::model::Channel::Webhook,
            target: JobTarget::Gone("test".to_owned()),
            operational: false,
        }
    }

    /// Reserves a place for each id and queues its job there, in order.
    fn queue_jobs(handoff: &Arc<Handoff>, ids: &[&str]) {
        for id in ids {
            let reservation = handoff.reserve().expect("room");
            assert!(handoff.push(reservation, job(id)).is_ok());
        }
    }

    #[test]
    fn places_are_bounded_and_given_back_by_unused_reservations_and_pops() {
        let handoff = Handoff::new("node".to_owned(), 1000, 2);
        let first = handoff.reserve().expect("room for the first");
        let second = handoff.reserve().expect("room for the second");
        assert!(handoff.reserve().is_none(), "capacity is 2");
        drop(second);
        let third = handoff
            .reserve()
            .expect("an unused reservation gives its place back");
        assert!(handoff.push(first, job("a")).is_ok());
        assert!(handoff.push(third, job("b")).is_ok());
        assert!(handoff.reserve().is_none(), "queued jobs keep their places");
        assert_eq!(
            handoff.pop().map(|(job, _)| job.delivery_id).as_deref(),
            Some("a")
        );
        assert!(handoff.reserve().is_some(), "a popped job frees its place");
    }

    #[test]
    fn a_parked_job_keeps_its_place_and_comes_back_first_in_order() {
        let handoff = Handoff::new("node".to_owned(), 1000, 3);
        queue_jobs(&handoff, &["a", "b", "c"]);
        let (first, first_queued) = handoff.pop().expect("a");
        let (second, second_queued) = handoff.pop().expect("b");
        assert!(handoff.park(first, first_queued).is_ok());
        assert!(handoff.park(second, second_queued).is_ok());
        assert!(handoff.reserve().is_none(), "parked jobs keep their places");
        let (next, _) = handoff.pop().expect("c is still queued");
        assert_eq!(next.delivery_id, "c");
        assert!(handoff.pop().is_none(), "parked jobs wait for unpark");
        assert!(handoff.reserve().is_some(), "c's place is free");
        handoff.unpark();
        let (again, queued_at) = handoff.pop().expect("a again");
        assert_eq!(again.delivery_id, "a");
        assert_eq!(
            queued_at, first_queued,
            "its wait counts from its first queueing"
        );
        assert_eq!(
            handoff.pop().map(|(job, _)| job.delivery_id).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_closed_queue_refuses_and_returns_what_it_held() {
        let handoff = Handoff::new("node".to_owned(), 1000, 4);
        queue_jobs(&handoff, &["parked", "popped", "queued"]);
        let late = handoff.reserve().expect("room");
        let (parked, queued_at) = handoff.pop().expect("parked");
        assert!(handoff.park(parked, queued_at).is_ok());
        let (popped, popped_at) = handoff.pop().expect("popped");
        let returned: Vec<String> = handoff
            .close()
            .into_iter()
            .map(|job| job.delivery_id)
            .collect();
        assert_eq!(returned, ["parked", "queued"]);
        let refused = handoff.push(late, job("late")).expect_err("closed");
        assert_eq!(refused, "late");
        let refused = handoff.park(popped, popped_at).expect_err("closed");
        assert_eq!(refused, "popped");
        assert!(handoff.reserve().is_none());
        assert!(handoff.is_empty());
    }

    fn routed(channel: crate::model::Channel, ordered: bool) -> Routed {
        let webhook = (channel == crate::model::Channel::Webhook).then(|| {
            let channel: crate::model::WebhookChannel =
                serde_json::from_str(r#"{"url": "https://receiver.example/hook"}"#)
                    .expect("a channel needs only its url");
            WebhookEndpoint::for_rule("rule", &channel, None)
        });
        Routed {
            delivery: NewDelivery {
                id: crate::model::new_id("dlv"),
                channel,
                endpoint_ref: "inbox".to_owned(),
                target: "https://receiver.example/hook".to_owned(),
                ordered,
                lease: None,
            },
            webhook,
        }
    }

    fn parts(index: usize) -> JobParts<'static> {
        JobParts {
            inbox_id: "inbox",
            message_id: "msg",
            event_id: "evt",
            event_json: "{}",
            storage_key: "key",
            received_at: 1_000,
            index,
        }
    }

    #[test]
    fn only_unordered_webhook_jobs_are_leased_and_only_while_the_dispatcher_has_room() {
        let handoff = Handoff::new("node".to_owned(), 500, 2);
        let mut handover = Handover::new(Some(&handoff));
        let leased: Vec<Option<i64>> = handover
            .lease(
                vec![
                    routed(crate::model::Channel::Webhook, false),
                    routed(crate::model::Channel::Webhook, true),
                    routed(crate::model::Channel::Email, false),
                    routed(crate::model::Channel::Webhook, false),
                    routed(crate::model::Channel::Webhook, false),
                ],
                &parts(0),
            )
            .into_iter()
            .map(|delivery| delivery.lease.map(|lease| lease.until))
            .collect();
        // Ordered and email jobs are claimed; the third plain webhook job finds no room.
        assert_eq!(leased, [Some(1_500), None, None, Some(1_500), None]);
        assert!(
            handoff.reserve().is_none(),
            "the leased jobs hold both places"
        );
        drop(handover);
        assert!(
            handoff.reserve().is_some(),
            "an uncommitted hand-over gives its places back"
        );

        let mut without = Handover::new(None);
        let deliveries = without.lease(
            vec![routed(crate::model::Channel::Webhook, false)],
            &parts(0),
        );
        assert!(deliveries[0].lease.is_none(), "no hand-off, no lease");
    }
}
