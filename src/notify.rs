//! Arrivals: the one in-process signal that an inbox may have new events, which the event
//! streams and `wait_for_message` wait on instead of each polling the database. The write path
//! announces an inbox after the commit that holds its message; on PostgreSQL a poll of the
//! messages table (`db::stream`) announces what other nodes committed. An announcement is only
//! a wake-up: the listener reads what is new from the database, which is the truth.

use std::sync::Arc;

use tokio::sync::broadcast;

/// Announcements a slow listener may fall behind by before it is told it lagged (and then
/// reads from the database as if its inbox had been announced).
const BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub struct Arrivals {
    sender: broadcast::Sender<Arc<str>>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Arrivals {
    /// Wakes every listener of `inbox_id`. Nobody listening is not an error.
    pub fn announce(&self, inbox_id: &str) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::from(inbox_id));
        }
    }

    pub fn listen(&self) -> Listener {
        Listener {
            receiver: self.sender.subscribe(),
        }
    }
}

/// One listener's view of the announcements.
#[derive(Debug)]
pub struct Listener {
    receiver: broadcast::Receiver<Arc<str>>,
}

impl Listener {
    /// Returns once `inbox_id` may have something new: it was announced, or announcements were
    /// missed (this listener lagged), so it may have been. Pends forever once the sender is gone.
    pub async fn changed(&mut self, inbox_id: &str) {
        loop {
            match self.receiver.recv().await {
                Ok(announced) if &*announced == inbox_id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_wakes_for_its_inbox_only_and_when_it_lagged() {
        let arrivals = Arrivals::default();
        let mut listener = arrivals.listen();
        arrivals.announce("other");
        arrivals.announce("mine");
        tokio::time::timeout(std::time::Duration::from_secs(1), listener.changed("mine"))
            .await
            .expect("woken by its inbox");
        arrivals.announce("other");
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            listener.changed("mine"),
        )
        .await;
        assert!(waiting.is_err(), "another inbox must not wake it");
        for _ in 0..BACKLOG + 1 {
            arrivals.announce("other");
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), listener.changed("mine"))
            .await
            .expect("a lagged listener wakes");
    }
}
