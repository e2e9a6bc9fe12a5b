//! Unit tests of verification over a pre-loaded, authoritative resolver cache (no query leaves
//! the process), and of the pure trust rules.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use super::dns::{self, DnsCache};
use super::trust::{self, Facts, InboxPolicy};
use super::{AuthVerdict, Verifier};
use crate::model::Envelope;

const SENDER_IP: &str = "192.0.2.10";
const OTHER_IP: &str = "198.51.100.7";

/// A signing domain with its key, generated per test.
struct Domain {
    name: &'static str,
    selector: &'static str,
    pkcs8: Vec<u8>,
    public_key_b64: String,
}

impl Domain {
    fn with_signer(name: &'static str) -> Self {
        let pkcs8 = Ed25519Key::generate_pkcs8().expect("generate key");
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).expect("load key");
        let public_key_b64 = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        Self {
            name,
            selector: "s1",
            pkcs8,
            public_key_b64,
        }
    }

    /// The message with this domain's DKIM-Signature prepended.
    fn sign(&self, message: &str) -> String {
        let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).expect("load key");
        let signature = DkimSigner::from_key(key)
            .domain(self.name)
            .selector(self.selector)
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(message.as_bytes())
            .expect("sign");
        format!("{}{message}", signature.to_header())
    }
}

/// The cache every test starts from: `example.org` publishes SPF for SENDER_IP, a DKIM key
/// and a DMARC `p=reject` policy.
fn cache_for(domain: &Domain) -> DnsCache {
    let cache = DnsCache::authoritative();
    let name = domain.name;
    cache
        .preload_txt(name, &format!("v=spf1 ip4:{SENDER_IP} -all"))
        .expect("spf");
    cache
        .preload_txt(
            &format!("{}._domainkey.{name}", domain.selector),
            &format!("v=DKIM1; k=ed25519; p={}", domain.public_key_b64),
        )
        .expect("dkim key");
    cache
        .preload_txt(&format!("_dmarc.{name}"), "v=DMARC1; p=reject")
        .expect("dmarc");
    cache
}

fn verifier(cache: DnsCache) -> Verifier {
    // Anything the cache does not answer would go to a closed loopback port: a fast failure,
    // never a query to the Internet.
    let authenticator = dns::authenticator(&["127.0.0.1:9".to_owned()], Duration::from_millis(300))
        .expect("resolver");
    Verifier::with_resolver(authenticator, cache, "mx.test", Duration::from_secs(10))
}

fn envelope(ip: &str, mail_from: Option<&str>) -> Envelope {
    Envelope {
        remote_ip: Some(ip.parse().expect("ip")),
        helo: "mail.example.org".to_owned(),
        mail_from: mail_from.map(str::to_owned),
        ..Envelope::default()
    }
}

fn message(from: &str, body: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: agent@gateway.test\r\nSubject: Invoice\r\n\
         Date: Mon, 16 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\n{body}\r\n"
    )
}

fn tier(verdict: &AuthVerdict, raw: &str, from: &str) -> &'static str {
    flags(verdict, raw, from, false).1
}

/// The header facts as intake reads them: the From mailboxes counted by the parser.
fn header_facts_as_intake(raw: &[u8]) -> trust::HeaderFacts {
    trust::header_facts(raw, &crate::parse::parse(raw))
}

/// `(sender_verified, peer_trust_tier)` as intake computes them.
fn flags(verdict: &AuthVerdict, raw: &str, from: &str, allow_listed: bool) -> (bool, &'static str) {
    let headers = header_facts_as_intake(raw.as_bytes());
    let facts = Facts {
        verdict,
        headers: &headers,
        from: Some(from),
        envelope_from: Some(from),
        from_is_gateway_inbox: false,
        allow_listed,
    };
    (trust::sender_verified(&facts), trust::trust_tier(&facts))
}

#[tokio::test]
async fn signed_mail_from_an_authorised_ip_passes_spf_dkim_and_dmarc() {
    let domain = Domain::with_signer("example.org");
    let raw = domain.sign(&message("alice@example.org", "Please pay."));
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(SENDER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;

    let spf = verdict.spf.as_ref().expect("spf");
    assert_eq!(
        (spf.result, spf.domain.as_str(), spf.identity),
        ("pass", "example.org", "mailfrom")
    );
    assert_eq!(verdict.dkim.len(), 1);
    let dkim = &verdict.dkim[0];
    assert_eq!(
        (
            dkim.result,
            dkim.domain.as_str(),
            dkim.selector.as_str(),
            dkim.algorithm
        ),
        ("pass", "example.org", "s1", "ed25519-sha256")
    );
    let dmarc = verdict.dmarc.as_ref().expect("dmarc");
    assert_eq!((dmarc.result, dmarc.policy), ("pass", "reject"));
    assert!(dmarc.spf_aligned && dmarc.dkim_aligned);
    assert!(verdict.dmarc_pass());
    assert_eq!(tier(&verdict, &raw, "alice@example.org"), "verified");
}

#[tokio::test]
async fn a_tampered_body_fails_dkim_but_aligned_spf_still_passes_dmarc() {
    let domain = Domain::with_signer("example.org");
    let raw = domain
        .sign(&message("alice@example.org", "Please pay 10 EUR."))
        .replace("10 EUR", "9000 EUR");
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(SENDER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(verdict.dkim[0].result, "fail");
    assert!(verdict.dkim[0].reason.is_some());
    let dmarc = verdict.dmarc.as_ref().expect("dmarc");
    assert_eq!(
        (dmarc.result, dmarc.spf_aligned, dmarc.dkim_aligned),
        ("pass", true, false)
    );
    // A broken signature next to a DMARC pass is not suspicious on its own.
    assert_eq!(tier(&verdict, &raw, "alice@example.org"), "verified");

    // From an address SPF does not authorise, nothing passes and p=reject makes it suspicious.
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(OTHER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(verdict.spf.as_ref().expect("spf").result, "fail");
    assert_eq!(verdict.dmarc.as_ref().expect("dmarc").result, "fail");
    assert_eq!(tier(&verdict, &raw, "alice@example.org"), "suspicious");
}

#[tokio::test]
async fn a_spoofed_from_under_dmarc_reject_is_suspicious_even_with_forged_results_headers() {
    let domain = Domain::with_signer("example.org");
    let attacker = Domain::with_signer("attacker.test");
    let cache = cache_for(&domain);
    cache
        .preload_txt("attacker.test", &format!("v=spf1 ip4:{OTHER_IP} -all"))
        .expect("spf");
    cache
        .preload_txt(
            "s1._domainkey.attacker.test",
            &format!("v=DKIM1; k=ed25519; p={}", attacker.public_key_b64),
        )
        .expect("dkim");
    // The attacker signs with their own domain and claims passes in forged headers.
    let forged = format!(
        "Authentication-Results: mx.test; spf=pass smtp.mailfrom=example.org; \
         dkim=pass header.d=example.org; dmarc=pass header.from=example.org\r\n\
         Received-SPF: pass (mx.test: domain of example.org designates {OTHER_IP})\r\n{}",
        message("ceo@example.org", "Wire the money.")
    );
    let raw = attacker.sign(&forged);
    let verdict = verifier(cache)
        .verify(
            &envelope(OTHER_IP, Some("bounce@attacker.test")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(verdict.spf.as_ref().expect("spf").result, "pass");
    assert_eq!(verdict.dkim[0].result, "pass");
    assert_eq!(verdict.dkim[0].domain, "attacker.test");
    let dmarc = verdict.dmarc.as_ref().expect("dmarc");
    assert_eq!(
        (dmarc.result, dmarc.domain.as_str(), dmarc.policy),
        ("fail", "example.org", "reject")
    );
    assert!(!dmarc.spf_aligned && !dmarc.dkim_aligned);
    assert!(!verdict.dmarc_pass());
    assert_eq!(tier(&verdict, &raw, "ceo@example.org"), "suspicious");
}

#[tokio::test]
async fn two_from_addresses_in_one_domain_pass_dmarc_but_are_neither_verified_nor_trusted() {
    let domain = Domain::with_signer("example.org");
    let verifier = verifier(cache_for(&domain));
    let two_headers = domain.sign(&format!(
        "From: <alice@example.org>\r\n{}",
        message("boss@example.org", "Hi")
    ));
    let one_header_two_addresses =
        domain.sign(&message("boss@example.org>, <alice@example.org", "Hi"));
    for raw in [&two_headers, &one_header_two_addresses] {
        let verdict = verifier
            .verify(
                &envelope(SENDER_IP, Some("alice@example.org")),
                raw.as_bytes(),
            )
            .await;
        // mail-auth judges the shared domain, so DMARC alone would call this verified.
        assert!(verdict.dmarc_pass(), "{verdict:?}");
        assert_eq!(
            flags(&verdict, raw, "alice@example.org", true),
            (false, "suspicious"),
            "{raw}"
        );
    }
    let headers = header_facts_as_intake(two_headers.as_bytes());
    assert_eq!((headers.from_headers, headers.from_addresses), (2, 2));
    let headers = header_facts_as_intake(one_header_two_addresses.as_bytes());
    assert_eq!((headers.from_headers, headers.from_addresses), (1, 2));
}

#[tokio::test]
async fn an_allow_listed_sender_is_trusted_only_with_a_dmarc_pass() {
    let domain = Domain::with_signer("example.org");
    let raw = domain.sign(&message("boss@example.org", "Approve the budget"));
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(SENDER_IP, Some("boss@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert!(verdict.dmarc_pass(), "{verdict:?}");
    assert_eq!(
        flags(&verdict, &raw, "boss@example.org", true),
        (true, "trusted")
    );
    assert_eq!(
        flags(&verdict, &raw, "boss@example.org", false),
        (true, "verified")
    );

    // The same allow-listed address, unsigned and from an address SPF does not name: a forgery
    // under p=reject.
    let forged = message("boss@example.org", "Approve the budget");
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(OTHER_IP, Some("boss@example.org")),
            forged.as_bytes(),
        )
        .await;
    assert_eq!(verdict.dmarc.as_ref().expect("dmarc").result, "fail");
    assert_eq!(
        flags(&verdict, &forged, "boss@example.org", true),
        (false, "suspicious")
    );

    // Nothing could be checked (resolver down): allow-listed, yet only unverified.
    let verdict = verifier(DnsCache::default())
        .verify(
            &envelope(SENDER_IP, Some("boss@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(
        flags(&verdict, &raw, "boss@example.org", true),
        (false, "unverified")
    );
}

#[tokio::test]
async fn an_spf_fail_with_dmarc_passing_on_an_aligned_dkim_signature_stays_verified() {
    let domain = Domain::with_signer("example.org");
    // Forwarded unchanged by a host the domain's SPF does not name.
    let raw = domain.sign(&message("alice@example.org", "Forwarded as is"));
    let verdict = verifier(cache_for(&domain))
        .verify(
            &envelope(OTHER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(verdict.spf.as_ref().expect("spf").result, "fail");
    assert_eq!(verdict.dkim[0].result, "pass");
    let dmarc = verdict.dmarc.as_ref().expect("dmarc");
    assert_eq!(
        (dmarc.result, dmarc.spf_aligned, dmarc.dkim_aligned),
        ("pass", false, true)
    );
    assert_eq!(
        flags(&verdict, &raw, "alice@example.org", false),
        (true, "verified")
    );
}

#[tokio::test]
async fn each_dkim_signature_gets_its_own_verdict() {
    let domain = Domain::with_signer("example.org");
    // Publishes a key, but not the one it signs with.
    let wrong_key = Domain::with_signer("relay.test");
    let published = Domain::with_signer("relay.test");
    let cache = cache_for(&domain);
    cache
        .preload_txt(
            "s1._domainkey.relay.test",
            &format!("v=DKIM1; k=ed25519; p={}", published.public_key_b64),
        )
        .expect("dkim");
    let raw = wrong_key.sign(&domain.sign(&message("alice@example.org", "Twice signed")));
    let verdict = verifier(cache)
        .verify(
            &envelope(SENDER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;
    let results: Vec<(&str, &str)> = verdict
        .dkim
        .iter()
        .map(|dkim| (dkim.domain.as_str(), dkim.result))
        .collect();
    assert_eq!(
        results,
        [("relay.test", "fail"), ("example.org", "pass")],
        "{verdict:?}"
    );
    assert!(verdict.dkim[0].reason.is_some());
    assert!(verdict.dkim[1].reason.is_none());
    // The broken outer signature does not outweigh the aligned pass.
    assert_eq!(
        flags(&verdict, &raw, "alice@example.org", false),
        (true, "verified")
    );
}

#[tokio::test]
async fn resolver_trouble_is_temperror_in_the_verdict_not_an_error() {
    let domain = Domain::with_signer("example.org");
    let raw = domain.sign(&message("alice@example.org", "Hi"));
    // A cache that answers nothing, over a nameserver that is not there.
    let verdict = verifier(DnsCache::default())
        .verify(
            &envelope(SENDER_IP, Some("alice@example.org")),
            raw.as_bytes(),
        )
        .await;
    assert!(verdict.checked);
    assert_eq!(verdict.spf.as_ref().expect("spf").result, "temperror");
    assert_eq!(verdict.dkim[0].result, "temperror");
    assert_eq!(verdict.dmarc.as_ref().expect("dmarc").result, "temperror");
    assert_eq!(tier(&verdict, &raw, "alice@example.org"), "unverified");
}

#[tokio::test]
async fn a_null_sender_uses_the_helo_identity_and_unsigned_mail_has_no_dkim_results() {
    let domain = Domain::with_signer("example.org");
    let cache = cache_for(&domain);
    cache
        .preload_txt("mail.example.org", &format!("v=spf1 ip4:{SENDER_IP} -all"))
        .expect("helo spf");
    let raw = message("mailer-daemon@mail.example.org", "Delivery failed");
    let verdict = verifier(cache)
        .verify(&envelope(SENDER_IP, None), raw.as_bytes())
        .await;
    let spf = verdict.spf.as_ref().expect("spf");
    assert_eq!(
        (spf.result, spf.identity, spf.helo_result),
        ("pass", "helo", "pass")
    );
    assert!(verdict.dkim.is_empty());
    assert!(verdict.arc.is_none());
}

#[test]
fn traffic_types_come_from_headers_senders_and_configured_domains() {
    let check = |raw: &str, from: &str, envelope_from: Option<&str>, peer: bool| {
        let verdict = AuthVerdict::default();
        let headers = header_facts_as_intake(raw.as_bytes());
        let mut configured = BTreeMap::new();
        configured.insert("github.com".to_owned(), "notifications".to_owned());
        trust::traffic_types(
            &Facts {
                verdict: &verdict,
                headers: &headers,
                from: Some(from),
                envelope_from,
                from_is_gateway_inbox: peer,
                allow_listed: false,
            },
            &configured,
        )
        .join(",")
    };
    let plain = "From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
    assert_eq!(
        check(plain, "a@example.org", Some("a@example.org"), false),
        "human"
    );
    assert_eq!(check(plain, "a@example.org", None, false), "automated");
    assert_eq!(
        check(
            plain,
            "no-reply@shop.example",
            Some("x@shop.example"),
            false
        ),
        "automated"
    );
    assert_eq!(
        check(
            "Auto-Submitted: auto-replied\r\nFrom: a@example.org\r\n\r\n",
            "a@example.org",
            Some("a@example.org"),
            false
        ),
        "automated,auto_reply"
    );
    assert_eq!(
        check(
            "Auto-Submitted: no\r\nFrom: a@example.org\r\n\r\n",
            "a@example.org",
            Some("a@example.org"),
            false
        ),
        "human"
    );
    assert_eq!(
        check(
            "List-Id: <news.example.org>\r\nPrecedence: bulk\r\n\r\n",
            "news@example.org",
            Some("news@example.org"),
            false
        ),
        "bulk"
    );
    assert_eq!(
        check(
            plain,
            "other-agent@gateway.test",
            Some("other-agent@gateway.test"),
            true
        ),
        "human,peer"
    );
    assert_eq!(
        check(plain, "noreply@ci.github.com", Some("x@github.com"), false),
        "automated,notifications"
    );
    // A header named in the body is not a header.
    assert_eq!(
        check(
            "From: a@example.org\r\n\r\nList-Id: fake\r\n",
            "a@example.org",
            Some("a@example.org"),
            false
        ),
        "human"
    );
}

#[test]
fn allow_and_block_lists_match_addresses_and_domains() {
    let list = vec![
        "boss@example.org".to_owned(),
        "partner.test".to_owned(),
        "@vendor.test".to_owned(),
    ];
    assert!(trust::sender_listed(&list, "Boss@Example.org"));
    assert!(!trust::sender_listed(&list, "intern@example.org"));
    assert!(trust::sender_listed(&list, "a@partner.test"));
    assert!(trust::sender_listed(&list, "a@mail.partner.test"));
    assert!(!trust::sender_listed(&list, "a@notpartner.test"));
    assert!(trust::sender_listed(&list, "x@vendor.test"));
}

#[test]
fn policy_names_each_requirement_the_message_misses() {
    let verdict = AuthVerdict {
        checked: true,
        spf: None,
        dkim: Vec::new(),
        dmarc: None,
        arc: None,
    };
    let headers = trust::HeaderFacts::default();
    let facts = Facts {
        verdict: &verdict,
        headers: &headers,
        from: Some("spam@bad.test"),
        envelope_from: Some("spam@bad.test"),
        from_is_gateway_inbox: false,
        allow_listed: false,
    };
    let policy = InboxPolicy {
        spf_pass_required: true,
        dkim_pass_required: true,
        dmarc_pass_required: true,
        allow_senders: vec!["example.org".to_owned()],
        block_senders: vec!["bad.test".to_owned()],
    };
    assert_eq!(
        trust::policy_violations(&policy, &facts),
        [
            "sender is blocked",
            "sender is not on the verified allow list",
            "SPF did not pass",
            "no DKIM signature passed",
            "DMARC did not pass"
        ]
    );
    assert!(trust::policy_violations(&InboxPolicy::default(), &facts).is_empty());
}

#[test]
fn fingerprints_use_the_message_id_or_else_the_content() {
    assert_eq!(
        trust::fingerprint(Some("ABC@example.org"), b"x"),
        "mid:abc@example.org"
    );
    let first = b"Received: from a\r\nFrom: a@example.org\r\nSubject: s\r\n\r\nbody\r\n";
    let relayed = b"Received: from b\r\nReceived: from a\r\nFrom: a@example.org\r\nSubject: s\r\n\r\nbody\r\n";
    let other = b"Received: from a\r\nFrom: a@example.org\r\nSubject: s\r\n\r\nanother body\r\n";
    assert_eq!(
        trust::fingerprint(None, first),
        trust::fingerprint(None, relayed)
    );
    assert_ne!(
        trust::fingerprint(None, first),
        trust::fingerprint(None, other)
    );
}

#[test]
fn fingerprints_read_the_body_after_a_bare_lf_blank_line_too() {
    let lf = b"From: a@example.org\nSubject: s\n\nfirst body\n";
    let other_lf = b"From: a@example.org\nSubject: s\n\nsecond body\n";
    let crlf = b"From: a@example.org\r\nSubject: s\r\n\r\nfirst body\r\n";
    assert_ne!(
        trust::fingerprint(None, lf),
        trust::fingerprint(None, other_lf)
    );
    assert_eq!(trust::fingerprint(None, lf), trust::fingerprint(None, crlf));
    // A header moved into the body is another message, though the hashed lines are the same.
    let header_as_body = b"From: a@example.org\r\n\r\nSubject: s\r\nfirst body\r\n";
    assert_ne!(
        trust::fingerprint(None, crlf),
        trust::fingerprint(None, header_as_body)
    );
}

#[tokio::test]
async fn mail_forwarded_by_a_list_that_changed_it_fails_dkim_but_carries_a_valid_arc_chain() {
    use mail_auth::arc::ArcSealer;
    use mail_auth::{AuthenticatedMessage, AuthenticationResults};

    let origin = Domain::with_signer("example.org");
    let list = Domain::with_signer("lists.test");
    let cache = cache_for(&origin);
    cache
        .preload_txt("lists.test", &format!("v=spf1 ip4:{OTHER_IP} -all"))
        .expect("spf");
    cache
        .preload_txt(
            "s1._domainkey.lists.test",
            &format!("v=DKIM1; k=ed25519; p={}", list.public_key_b64),
        )
        .expect("dkim");
    let verifier = verifier(cache);

    // The list receives the signed mail, appends its footer, records what it saw and seals.
    let forwarded = origin
        .sign(&message("alice@example.org", "Minutes"))
        .replace("Minutes\r\n", "Minutes\r\n-- \r\nlist footer\r\n");
    let parsed = AuthenticatedMessage::parse(forwarded.as_bytes()).expect("parse");
    let dkim_seen = verifier
        .authenticator
        .verify_dkim(verifier.cache.params(&parsed))
        .await;
    let arc_seen = verifier
        .authenticator
        .verify_arc(verifier.cache.params(&parsed))
        .await;
    let results = AuthenticationResults::new("lists.test")
        .with_dkim_results(&dkim_seen, "alice@example.org")
        .with_arc_result(&arc_seen, SENDER_IP.parse().expect("ip"));
    let seal = ArcSealer::from_key(Ed25519Key::from_pkcs8_der(&list.pkcs8).expect("key"))
        .domain("lists.test")
        .selector("s1")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &arc_seen)
        .expect("seal");
    let raw = format!("{}{forwarded}", seal.to_header());

    let verdict = verifier
        .verify(
            &envelope(OTHER_IP, Some("bounces@lists.test")),
            raw.as_bytes(),
        )
        .await;
    assert_eq!(verdict.dkim[0].result, "fail", "{verdict:?}");
    let arc = verdict.arc.as_ref().expect("arc verdict");
    assert_eq!((arc.result, arc.instances), ("pass", 1), "{verdict:?}");
    assert_eq!(verdict.dmarc.as_ref().expect("dmarc").result, "fail");
}

#[test]
fn auto_replies_and_bounces_are_traffic_types() {
    let check = |raw: &[u8], envelope_from: Option<&str>| {
        let verdict = AuthVerdict::default();
        let parsed = crate::parse::parse(raw);
        let headers = trust::header_facts(raw, &parsed);
        let from = parsed.from.as_ref().map(|from| from.address.clone());
        trust::traffic_types(
            &Facts {
                verdict: &verdict,
                headers: &headers,
                from: from.as_deref(),
                envelope_from,
                from_is_gateway_inbox: false,
                allow_listed: false,
            },
            &BTreeMap::new(),
        )
        .join(",")
    };
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/fixtures/bounces/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    };
    let person = Some("someone@example.org");
    for header in [
        "Auto-Submitted: auto-replied",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: auto_reply",
    ] {
        let raw = format!("From: a@example.org\r\n{header}\r\nSubject: away\r\n\r\nbody\r\n");
        assert_eq!(
            check(raw.as_bytes(), person),
            "automated,auto_reply",
            "{header}"
        );
    }
    // Outlook marks other mail with X-Auto-Response-Suppress too: the subject decides.
    let suppressed =
        "From: a@example.org\r\nX-Auto-Response-Suppress: All\r\nSubject: {}\r\n\r\nx\r\n";
    assert_eq!(
        check(suppressed.replace("{}", "Newsletter").as_bytes(), person),
        "human"
    );
    assert_eq!(
        check(
            suppressed.replace("{}", "Automatic reply: Q3").as_bytes(),
            person
        ),
        "automated,auto_reply"
    );
    assert_eq!(
        check(&fixture("autoreply_exchange_oof.eml"), None),
        "automated,auto_reply"
    );
    assert_eq!(
        check(&fixture("autoreply_icloud_vacation.eml"), person),
        "automated,auto_reply"
    );
    // Postfix marks its bounces auto-replied: they are bounces, not auto-replies.
    assert_eq!(check(&fixture("postfix.eml"), None), "automated,bounce");
    // A report is a bounce whoever sent it; a text notice only from the null sender.
    assert_eq!(
        check(&fixture("exchange_2007.eml"), person),
        "automated,bounce"
    );
    assert_eq!(check(&fixture("qmail.eml"), None), "automated,bounce");
    assert!(!check(&fixture("qmail.eml"), person).contains("bounce"));
}
