use super::*;

fn candidate(thread_id: &str, header_id: &str, subject: &str, sender: &str, at: i64) -> Candidate {
    Candidate {
        thread_id: thread_id.to_owned(),
        header_message_id: Some(header_id.to_owned()),
        subject_key: Some(normalize_subject(subject).0),
        sender: Some(sender.to_owned()),
        participants: vec![sender.to_owned(), "agent@example.com".to_owned()],
        received_at: at,
    }
}

fn parsed(headers: &str) -> ParsedMessage {
    crate::parse::parse(format!("{headers}\r\n\r\nbody\r\n").as_bytes())
}

#[test]
fn subjects_normalise_across_languages_and_repeats() {
    assert_eq!(
        normalize_subject("Re: RE: Fwd: Budget  2026"),
        ("budget 2026".to_owned(), true)
    );
    assert_eq!(
        normalize_subject("AW: WG: Angebot"),
        ("angebot".to_owned(), true)
    );
    assert_eq!(normalize_subject("Re[2]: plan"), ("plan".to_owned(), true));
    assert_eq!(normalize_subject("Budget"), ("budget".to_owned(), false));
    assert_eq!(
        normalize_subject("Meeting: today"),
        ("meeting: today".to_owned(), false)
    );
}

#[test]
fn references_win_and_in_reply_to_first() {
    let inbox = ["agent@example.com".to_owned()];
    let candidates = [
        candidate("thr_a", "root@x", "Plan", "jane@x", 1),
        candidate("thr_b", "other@x", "Plan", "jane@x", 2),
    ];
    let keys = keys(&parsed(
        "From: jane@x\r\nSubject: Re: Plan\r\nIn-Reply-To: <root@x>\r\nReferences: <other@x> <root@x>",
    ));
    assert_eq!(keys.references, ["root@x", "other@x"]);
    assert_eq!(
        resolve(&keys, &candidates, &inbox).as_deref(),
        Some("thr_a")
    );
    // Headers present but unknown: no subject guess.
    let keys = ThreadKeys {
        references: vec!["unknown@x".to_owned()],
        ..keys
    };
    assert_eq!(resolve(&keys, &candidates, &inbox), None);
}

#[test]
fn subject_fallback_needs_a_reply_prefix_and_a_shared_participant() {
    let inbox = ["agent@example.com".to_owned()];
    let candidates = [
        candidate("thr_old", "a@x", "Plan", "jane@x", 1),
        candidate("thr_new", "b@x", "Plan", "jane@x", 5),
        candidate("thr_other", "c@x", "Plan", "bob@x", 9),
    ];
    let reply = keys(&parsed(
        "From: jane@x\r\nTo: agent@example.com\r\nSubject: Re: plan",
    ));
    assert_eq!(
        resolve(&reply, &candidates, &inbox).as_deref(),
        Some("thr_new")
    );
    let fresh = keys(&parsed(
        "From: jane@x\r\nTo: agent@example.com\r\nSubject: Plan",
    ));
    assert_eq!(resolve(&fresh, &candidates, &inbox), None);
    // Only the inbox address in common proves nothing.
    let stranger = keys(&parsed(
        "From: eve@x\r\nTo: agent@example.com\r\nSubject: Re: Plan",
    ));
    assert_eq!(resolve(&stranger, &candidates, &inbox), None);
}

#[test]
fn previous_emails_are_email_objects_without_their_own_thread() {
    let stored = vec![
        r#"{"email":{"id":"msg_1","prompt":"p1","previous_emails":[{"id":"msg_0"}],"thread_prompt":"t"}}"#.to_owned(),
        "not json".to_owned(),
        r#"{"email":{"id":"msg_2","prompt":"p2","previous_emails":null,"thread_prompt":"t"}}"#.to_owned(),
    ];
    let emails = previous_emails(&stored);
    assert_eq!(emails.len(), 2);
    assert_eq!(emails[0].id, "msg_1");
    assert!(emails[0].previous_emails.is_none());
    assert!(emails[1].thread_prompt.is_none());
}

#[test]
fn a_longer_history_than_shown_is_marked_as_left_out() {
    let stored: Vec<String> = (0..=MAX_PREVIOUS_EMAILS)
        .map(|n| format!(r#"{{"email":{{"id":"msg_{n}","prompt":"p{n}"}}}}"#))
        .collect();
    let thread = from_history("thr_1".to_owned(), &stored);
    assert!(thread.earlier_left_out);
    assert_eq!(thread.previous_emails.len(), 20);
    // The oldest one read only tells that there were more; the newest are shown.
    assert_eq!(thread.previous_emails[0].id, "msg_1");
    assert_eq!(thread.previous_emails[19].id, "msg_20");

    let thread = from_history("thr_1".to_owned(), &stored[1..]);
    assert!(!thread.earlier_left_out);
    assert_eq!(thread.previous_emails.len(), 20);
    assert_eq!(thread.previous_emails[0].id, "msg_1");
}
