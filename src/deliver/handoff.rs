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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use tokio::sync::Notify;

use crate::db::ClaimedJob;

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
    /// Reservations taken plus jobs queued: leased rows not yet started.
    held: usize,
    queue: VecDeque<ClaimedJob>,
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
        state.queue.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest queued job; its place is free again.
    pub(super) fn pop(&self) -> Option<ClaimedJob> {
        let mut state = self.lock();
        let job = state.queue.pop_front()?;
        state.held -= 1;
        Some(job)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Resolves once a job was queued (at once if one was queued since the last wait).
    pub(super) async fn queued(&self) {
        self.ready.notified().await;
    }

    /// Refuses new jobs and returns those still queued, whose leases the caller gives back.
    pub(super) fn close(&self) -> Vec<ClaimedJob> {
        let mut state = self.lock();
        state.closed = true;
        let jobs: Vec<ClaimedJob> = state.queue.drain(..).collect();
        state.held -= jobs.len();
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::JobTarget;

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
            channel: "webhook".to_owned(),
            target: JobTarget::Gone("test".to_owned()),
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
            handoff.pop().map(|job| job.delivery_id).as_deref(),
            Some("a")
        );
        assert!(handoff.reserve().is_some(), "a popped job frees its place");
    }

    #[test]
    fn a_closed_queue_refuses_and_returns_what_it_held() {
        let handoff = Handoff::new("node".to_owned(), 1000, 4);
        let queued = handoff.reserve().expect("room");
        let late = handoff.reserve().expect("room");
        assert!(handoff.push(queued, job("a")).is_ok());
        let returned: Vec<String> = handoff
            .close()
            .into_iter()
            .map(|job| job.delivery_id)
            .collect();
        assert_eq!(returned, ["a"]);
        let refused = handoff.push(late, job("b")).expect_err("closed");
        assert_eq!(refused, "b");
        assert!(handoff.reserve().is_none());
        assert!(handoff.is_empty());
    }
}
