//! The address → inbox lookup consulted at RCPT time.
//!
//! An in-memory snapshot of the `inbox_addresses` table, swapped whole when inboxes change, so
//! the SMTP session never waits on the database to answer RCPT.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::Inbox;

#[derive(Debug, Clone, Default)]
pub struct Directory {
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    by_address: HashMap<String, String>,
    by_id: HashMap<String, Inbox>,
}

impl Directory {
    pub fn new(inboxes: &[Inbox]) -> Self {
        let directory = Self::default();
        directory.replace(inboxes);
        directory
    }

    /// Replaces the snapshot with these inboxes.
    pub fn replace(&self, inboxes: &[Inbox]) {
        let by_address = inboxes
            .iter()
            .flat_map(|inbox| {
                inbox
                    .addresses
                    .iter()
                    .map(|address| (address.to_lowercase(), inbox.id.clone()))
            })
            .collect();
        let by_id = inboxes
            .iter()
            .map(|inbox| (inbox.id.clone(), inbox.clone()))
            .collect();
        let mut guard = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(Snapshot { by_address, by_id });
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The inbox with this id.
    pub fn inbox(&self, id: &str) -> Option<Inbox> {
        self.current().by_id.get(id).cloned()
    }

    /// The inbox an already-normalized (lowercase) address belongs to. `agent+tag@domain`
    /// reaches `agent@domain` when no inbox claims the tagged form itself.
    pub fn lookup(&self, address: &str) -> Option<String> {
        let snapshot = self.current();
        if let Some(inbox) = snapshot.by_address.get(address) {
            return Some(inbox.clone());
        }
        let (local, domain) = address.rsplit_once('@')?;
        let (base, _tag) = local.split_once('+')?;
        snapshot
            .by_address
            .get(&format!("{base}@{domain}"))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_subaddressed_lookups() {
        let directory = Directory::new(&[Inbox {
            id: "agent".into(),
            addresses: vec!["Agent@Example.com".into()],
            webhook: None,
            rules: Vec::new(),
        }]);
        assert_eq!(
            directory.lookup("agent@example.com").as_deref(),
            Some("agent")
        );
        assert_eq!(
            directory.lookup("agent+orders@example.com").as_deref(),
            Some("agent")
        );
        assert_eq!(directory.lookup("other@example.com"), None);
        assert_eq!(directory.lookup("agent@example.org"), None);
    }
}
