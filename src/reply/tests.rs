use super::*;
use crate::event::{Email, MailEvent};

fn address(address: &str) -> Address {
    Address {
        address: address.to_owned(),
        name: None,
    }
}

fn original() -> MailEvent {
    MailEvent {
        email: Email {
            from_address: address("alice@example.org"),
            to_addresses: vec![address("agent@agents.test"), address("bob@example.org")],
            cc_addresses: vec![address("Carol@Example.org"), address("other@agents.test")],
            subject: "Budget".to_owned(),
            message_id: Some("m2@example.org".to_owned()),
            in_reply_to_id: Some("m1@agents.test".to_owned()),
            references: Some(vec![
                "m0@example.org".to_owned(),
                "m1@agents.test".to_owned(),
            ]),
            ..Email::default()
        },
        ..MailEvent::default()
    }
}

fn own(address: &str) -> bool {
    address.ends_with("@agents.test")
}

fn addresses(list: &[Address]) -> Vec<&str> {
    list.iter().map(|a| a.address.as_str()).collect()
}

#[test]
fn reply_goes_to_the_sender_and_reply_all_adds_the_others_but_never_own_inboxes() {
    let (to, cc) = recipients(&original(), "agent@agents.test", false, own);
    assert_eq!(addresses(&to), ["alice@example.org"]);
    assert!(cc.is_empty());

    let (to, cc) = recipients(&original(), "agent@agents.test", true, own);
    assert_eq!(addresses(&to), ["alice@example.org"]);
    assert_eq!(addresses(&cc), ["bob@example.org", "Carol@Example.org"]);

    let mut with_reply_to = original();
    with_reply_to.email.reply_to_addresses = vec![address("list@example.org")];
    let (to, _) = recipients(&with_reply_to, "agent@agents.test", false, own);
    assert_eq!(
        addresses(&to),
        ["list@example.org"],
        "Reply-To wins over From"
    );

    let mut from_own = original();
    from_own.email.from_address = address("other@agents.test");
    let (to, cc) = recipients(&from_own, "agent@agents.test", false, own);
    assert!(to.is_empty() && cc.is_empty(), "{to:?} {cc:?}");
}

#[test]
fn subject_gets_one_re_and_references_follow_rfc_5322() {
    assert_eq!(reply_subject("Budget"), "Re: Budget");
    assert_eq!(reply_subject("RE: Budget"), "RE: Budget");
    assert_eq!(reply_subject(" re: Budget "), "re: Budget");
    assert_eq!(reply_subject("Fwd: Budget"), "Re: Fwd: Budget");
    assert_eq!(reply_subject(""), "Re:");
    assert_eq!(
        references(&original()),
        ["m0@example.org", "m1@agents.test", "m2@example.org"]
    );
    let mut only_parent = original();
    only_parent.email.references = None;
    assert_eq!(
        references(&only_parent),
        ["m1@agents.test", "m2@example.org"],
        "without References, the parent's In-Reply-To starts the chain"
    );
}

#[test]
fn built_reply_carries_threading_headers_and_the_signature_when_a_key_covers_the_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("dkim.pem");
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("key");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pkcs8)
    );
    std::fs::write(&key_file, pem).expect("write key");
    let dkim = DkimConfig {
        keys: vec![crate::config::DkimKeyConfig {
            domain: "Agents.Test".to_owned(),
            selector: "s1".to_owned(),
            key_file,
        }],
    };
    let forward = ForwardConfig {
        smarthost: Some("smtp://127.0.0.1:2525".to_owned()),
        from_address: None,
    };
    let replier = Replier::new(&RepliesConfig::default(), &dkim, &forward, "mx.agents.test")
        .expect("replier");
    assert!(replier.can_send());
    let request = ReplyRequest {
        text: "Approved **today**.".to_owned(),
        ..ReplyRequest::default()
    };
    let built = replier
        .build(&original(), "agent@agents.test", "msg_1", &request, own)
        .expect("built");
    let text = String::from_utf8_lossy(&built.raw);
    assert!(built.dkim_signed);
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert!(text.contains("d=agents.test"), "{text}");
    assert!(text.contains("s=s1"), "{text}");
    assert!(text.contains("In-Reply-To: <m2@example.org>\r\n"), "{text}");
    assert!(
        text.contains("References: <m0@example.org> <m1@agents.test> <m2@example.org>"),
        "{text}"
    );
    assert!(
        text.contains("Message-ID: <msg_1@mx.agents.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("Subject: Re: Budget\r\n"), "{text}");
    assert!(text.contains("<strong>today</strong>"), "{text}");
    assert_eq!(built.recipients, ["alice@example.org"]);

    let elsewhere = replier
        .build(&original(), "agent@elsewhere.test", "msg_2", &request, own)
        .expect("built");
    assert!(!elsewhere.dkim_signed, "no key for that domain");

    let missing = DkimConfig {
        keys: vec![crate::config::DkimKeyConfig {
            domain: "agents.test".to_owned(),
            selector: "s1".to_owned(),
            key_file: dir.path().join("absent.pem"),
        }],
    };
    let err =
        Replier::new(&RepliesConfig::default(), &missing, &forward, "mx").expect_err("no file");
    assert!(err.to_string().contains("dkim.keys[0].key_file"), "{err}");
}
