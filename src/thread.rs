//! Threading: which earlier message of the same inbox a new one continues, and the earlier
//! emails of its thread as the event carries them.
//!
//! Pure: `db` fetches candidates and history, `intake` calls [`resolve`] between the two queries.
//! The thread of a reply is found from its In-Reply-To and References headers; only when a mail
//! has neither does the normalised subject count, and then only for a subject marked as a reply
//! or forward, among recent mails that share a participant, because an unrelated mail with the
//! same subject is likelier than a reply whose client dropped the headers.

use crate::event::Email;
use crate::parse::ParsedMessage;

pub use crate::event::Thread;

/// How far back the subject fallback looks.
pub const SUBJECT_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// How many earlier emails an event carries: the newest of the thread, oldest first.
pub const MAX_PREVIOUS_EMAILS: i64 = 20;
/// How many header ids of a References chain are looked up (the newest ones, at its end).
const MAX_REFERENCES: usize = 50;

/// What a new message offers for finding its thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadKeys {
    /// In-Reply-To first, then References newest first: the order of preference.
    pub references: Vec<String>,
    /// The normalised subject, when the subject carried a reply or forward prefix.
    pub subject_key: Option<String>,
    /// Lower-cased From, To and Cc addresses.
    pub participants: Vec<String>,
    pub sender: Option<String>,
}

/// An earlier message of the inbox that the new one may continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub thread_id: String,
    pub header_message_id: Option<String>,
    pub subject_key: Option<String>,
    pub sender: Option<String>,
    pub participants: Vec<String>,
    pub received_at: i64,
}

pub fn keys(parsed: &ParsedMessage) -> ThreadKeys {
    let mut references: Vec<String> = Vec::new();
    let chain = parsed
        .in_reply_to
        .iter()
        .chain(parsed.references.iter().rev());
    for id in chain.take(MAX_REFERENCES) {
        let id = id.trim();
        if !id.is_empty() && !references.iter().any(|known| known == id) {
            references.push(id.to_owned());
        }
    }
    let subject_key = parsed.subject.as_deref().and_then(|subject| {
        let (key, had_prefix) = normalize_subject(subject);
        (had_prefix && !key.is_empty()).then_some(key)
    });
    let mut participants: Vec<String> = Vec::new();
    for mailbox in parsed.from.iter().chain(&parsed.to).chain(&parsed.cc) {
        let address = mailbox.address.to_lowercase();
        if !participants.contains(&address) {
            participants.push(address);
        }
    }
    ThreadKeys {
        references,
        subject_key,
        participants,
        sender: parsed.from.as_ref().map(|from| from.address.to_lowercase()),
    }
}

/// The key a stored message's subject is found by (every subject is keyed, so a later "Re:"
/// finds the mail it answers); `None` for no subject or one of prefixes alone.
pub fn subject_key(subject: Option<&str>) -> Option<String> {
    subject
        .map(|subject| normalize_subject(subject).0)
        .filter(|key| !key.is_empty())
}

/// The subject without reply and forward prefixes (`Re:`, `Fwd:`, `AW:`, `WG:`, `SV:`, `Re[2]:`
/// …, repeated), lower-cased with whitespace collapsed; and whether any prefix was there.
pub fn normalize_subject(subject: &str) -> (String, bool) {
    const PREFIXES: &[&str] = &[
        "re", "fw", "fwd", "aw", "wg", "sv", "vs", "antw", "tr", "rif", "r", "odp", "res",
    ];
    let mut rest = subject.trim();
    let mut had_prefix = false;
    while let Some(colon) = rest.find(':') {
        let head = rest[..colon].trim();
        // "Re[2]" and "Re(2)" count replies.
        let word = head
            .split(['[', '('])
            .next()
            .unwrap_or_default()
            .to_lowercase();
        if head.len() > 8 || !PREFIXES.contains(&word.as_str()) {
            break;
        }
        had_prefix = true;
        rest = rest[colon + 1..].trim_start();
    }
    let key = rest
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    (key, had_prefix)
}

/// The thread the new message continues, if any.
///
/// `inbox_addresses` are the inbox's own recipient addresses: every mail to the inbox names
/// them, so they prove nothing about two mails sharing a conversation.
pub fn resolve(
    keys: &ThreadKeys,
    candidates: &[Candidate],
    inbox_addresses: &[String],
) -> Option<String> {
    if !keys.references.is_empty() {
        return keys.references.iter().find_map(|reference| {
            candidates
                .iter()
                .filter(|candidate| candidate.header_message_id.as_deref() == Some(reference))
                .max_by_key(|candidate| candidate.received_at)
                .map(|candidate| candidate.thread_id.clone())
        });
    }
    let subject_key = keys.subject_key.as_deref()?;
    let own = |address: &String| {
        let address = without_tag(address);
        inbox_addresses
            .iter()
            .any(|inbox| without_tag(inbox).eq_ignore_ascii_case(&address))
    };
    candidates
        .iter()
        .filter(|candidate| candidate.subject_key.as_deref() == Some(subject_key))
        .filter(|candidate| {
            let sender_known = keys.sender.as_ref().is_some_and(|sender| {
                !own(sender)
                    && (candidate.participants.contains(sender)
                        || candidate.sender.as_ref() == Some(sender))
            });
            let their_sender_here = candidate
                .sender
                .as_ref()
                .is_some_and(|sender| !own(sender) && keys.participants.contains(sender));
            sender_known || their_sender_here
        })
        .max_by_key(|candidate| candidate.received_at)
        .map(|candidate| candidate.thread_id.clone())
}

/// `agent+tag@example.com` → `agent@example.com`: tagged addresses reach the same inbox.
fn without_tag(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split_once('+').map_or(local, |(base, _)| base);
            format!("{local}@{domain}")
        }
        None => address.to_owned(),
    }
}

/// True when a stored event is of a message its inbox's policy quarantined: it is kept for
/// review but never shown to an agent, so it is no earlier email of a later one.
pub fn is_quarantined(stored_event: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Flags {
        #[serde(default)]
        quarantined: bool,
    }
    // Only the flag is read; the rest of the event is skipped without being built.
    serde_json::from_str::<Flags>(stored_event).is_ok_and(|flags| flags.quarantined)
}

/// The thread as an event reports it, from the stored events of its newest earlier emails,
/// oldest first: up to [`MAX_PREVIOUS_EMAILS`] of them, plus one more when the thread has it,
/// which is not shown but tells that older emails were left out.
pub fn from_history(thread_id: String, stored_events: &[String]) -> Thread {
    let shown_from = stored_events
        .len()
        .saturating_sub(usize::try_from(MAX_PREVIOUS_EMAILS).unwrap_or(usize::MAX));
    Thread {
        thread_id,
        previous_emails: previous_emails(stored_events.get(shown_from..).unwrap_or_default()),
        earlier_left_out: shown_from > 0,
    }
}

/// The earlier emails of the thread from their stored events (oldest first), each the
/// BotMailRoom `email` object.
///
/// SPEC: "previous_emails … earlier emails of the thread, each the same shape, on the root
/// only". We read "root" as the root email object of the payload, the one being delivered: it
/// carries the list, and the emails inside the list do not carry their own (their
/// `previous_emails` is null), so the payload never nests threads in threads. ("Root" cannot
/// mean the first mail of the thread: that one has no earlier emails.) For the same reason the
/// nested emails' `thread_prompt` is null: the delivered email's `thread_prompt` has the thread.
pub fn previous_emails(stored_events: &[String]) -> Vec<Email> {
    /// Only the email is read; the rest of each event is skipped without being built.
    #[derive(serde::Deserialize)]
    struct Stored {
        email: Option<Email>,
    }
    stored_events
        .iter()
        .filter_map(|json| serde_json::from_str::<Stored>(json).ok()?.email)
        .map(|email| Email {
            previous_emails: None,
            thread_prompt: None,
            ..email
        })
        .collect()
}

#[cfg(test)]
mod tests;
