use serde_json::json;

use super::*;

fn flags(verified: bool, types: &[&str], sender: &str, tier: &str) -> EventFlags {
    let event = serde_json::from_value(json!({
        "sender_verified": verified,
        "traffic_types": types,
        "sender": sender,
        "peer_trust_tier": tier,
    }))
    .expect("a mail event");
    EventFlags::from_event(&Event::Mail(event))
}

#[track_caller]
fn check(rules: serde_json::Value, event_flags: &EventFlags, expected: &[&str]) {
    let rules: Vec<Rule> = serde_json::from_value(rules).expect("rules parse");
    let got: Vec<String> = routes(&rules, event_flags, |address| {
        address == "agent@example.com"
    })
    .into_iter()
    .map(|route| match route {
        Route::Webhook { rule_id } => format!("webhook:{rule_id}"),
        Route::Email {
            rule_id,
            recipients,
        } => format!("email:{rule_id}:{}", recipients.join(",")),
    })
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn all_set_filters_must_match() {
    let rules = json!([{
        "id": "r1",
        "name": "all filters",
        "filters": {"sender_verified": true, "traffic_types": ["human"], "sender_domains": ["example.org"], "trust_tiers": ["verified", "trusted"]},
        "channels": {"webhook": {"url": "https://hooks.example.net/a"}}
    }]);
    check(
        rules.clone(),
        &flags(true, &["human"], "a@mail.example.org", "verified"),
        &["webhook:r1"],
    );
    check(
        rules.clone(),
        &flags(false, &["human"], "a@example.org", "verified"),
        &[],
    );
    check(
        rules.clone(),
        &flags(true, &["bulk"], "a@example.org", "verified"),
        &[],
    );
    check(
        rules.clone(),
        &flags(true, &["human"], "a@notexample.org", "verified"),
        &[],
    );
    check(
        rules,
        &flags(true, &["human"], "a@example.org", "suspicious"),
        &[],
    );
}

#[test]
fn empty_filters_match_everything_and_disabled_rules_nothing() {
    let rules = json!([
        {"name": "n", "id": "all", "channels": {"email": {"recipients": ["ops@elsewhere.example"]}}},
        {"name": "n", "id": "off", "enabled": false, "channels": {"webhook": {"url": "https://hooks.example.net/b"}}},
        {"name": "n", "id": "off-channel", "channels": {"webhook": {"enabled": false, "url": "https://hooks.example.net/c"}}}
    ]);
    check(
        rules,
        &flags(false, &[], "x@y.example", "unverified"),
        &["email:all:ops@elsewhere.example"],
    );
}

#[test]
fn forwards_never_go_to_the_gateways_own_inboxes() {
    let rules = json!([
        {"name": "n", "id": "loop", "channels": {"email": {"recipients": ["Agent@Example.com", "ops@elsewhere.example"]}}},
        {"name": "n", "id": "only-loop", "channels": {"email": {"recipients": ["agent@example.com"]}}}
    ]);
    check(
        rules,
        &flags(true, &[], "x@y.example", "verified"),
        &["email:loop:ops@elsewhere.example"],
    );
}

#[test]
fn validation_names_the_field() {
    // Plain http is refused as it is by default (`delivery.allow_http = false`).
    let allow_http = false;
    let parse = |value: serde_json::Value| serde_json::from_value::<Rule>(value).expect("parses");
    let cases = [
        (
            json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "http://hooks.example.net"}}}),
            "channels.webhook.url",
        ),
        (
            json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example", "timeout_s": 301}}}),
            "timeout_s",
        ),
        (
            json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example", "max_retries": 11}}}),
            "max_retries",
        ),
        (
            json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example", "custom_headers": {"webhook-id": "x"}}}}),
            "custom_headers",
        ),
        (
            json!({"name": "n", "id": "r", "channels": {"email": {"recipients": ["not an address"]}}}),
            "recipients",
        ),
        (json!({"name": "n", "id": ""}), "id"),
    ];
    for (rule, field) in cases {
        let message = parse(rule.clone())
            .validate(allow_http)
            .expect_err("invalid rule accepted");
        assert!(
            message.contains(field),
            "{rule}: `{message}` does not name {field}"
        );
    }
    assert!(serde_json::from_value::<Rule>(json!({"name": "n", "id": "r", "bogus": 1})).is_err());
}

#[test]
fn what_a_rule_cannot_hold_is_refused_when_read() {
    let refused = [
        // Tiers are the event's four; a filter naming another could never match.
        json!({"name": "n", "id": "r", "filters": {"trust_tiers": ["golden"]}}),
        // A rule webhook signs with its inbox's secret; it takes none of its own.
        json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example", "secret": "hush"}}}),
        // Whole seconds, as SPEC's endpoint settings give them.
        json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example", "timeout_s": 1.5}}}),
        json!({"id": "r"}),
    ];
    for rule in refused {
        assert!(
            serde_json::from_value::<Rule>(rule.clone()).is_err(),
            "{rule} was read"
        );
    }
}

#[test]
fn unset_endpoint_settings_read_as_the_defaults_and_are_not_echoed() {
    let sent =
        json!({"name": "n", "id": "r", "channels": {"webhook": {"url": "https://h.example"}}});
    let rule: Rule = serde_json::from_value(sent.clone()).expect("parses");
    let webhook = rule.channels.webhook.as_ref().expect("a webhook");
    assert_eq!(webhook.timeout(), std::time::Duration::from_secs(30));
    assert_eq!(webhook.max_retries(), 6);
    assert!(webhook.verify_tls());
    assert!(!webhook.ordered());
    let echoed = serde_json::to_value(&rule).expect("serializes");
    assert_eq!(
        echoed,
        json!({"name": "n", "id": "r", "enabled": true, "filters": {},
               "channels": {"webhook": {"enabled": true, "url": "https://h.example"}}})
    );
}

#[test]
fn event_types_filter_every_channel_and_default_to_mail_and_calendar() {
    let rules = json!([
        {"id": "default", "name": "no event_types",
         "channels": {"webhook": {"url": "https://hooks.example.net/a"},
                      "email": {"recipients": ["ops@example.net"]}}},
        {"id": "ops", "name": "operational",
         "filters": {"event_types": ["delivery.*", "mail.quarantined"]},
         "channels": {"webhook": {"url": "https://hooks.example.net/b"},
                      "email": {"recipients": ["ops@example.net"]}}},
        {"id": "all", "name": "everything", "filters": {"event_types": ["*"]},
         "channels": {"webhook": {"url": "https://hooks.example.net/c"}}}
    ]);
    check(
        rules.clone(),
        &flags(false, &[], "a@example.org", "unverified"),
        &[
            "webhook:default",
            "email:default:ops@example.net",
            "webhook:all",
        ],
    );
    check(
        rules.clone(),
        &EventFlags::without_sender("calendar.booking.created"),
        &[
            "webhook:default",
            "email:default:ops@example.net",
            "webhook:all",
        ],
    );
    // Neither a quarantined mail nor an operational event is forwarded by email.
    check(
        rules.clone(),
        &EventFlags::without_sender("mail.quarantined"),
        &["webhook:ops", "webhook:all"],
    );
    check(
        rules.clone(),
        &EventFlags::without_sender("delivery.dead"),
        &["webhook:ops", "webhook:all"],
    );
    check(
        rules,
        &EventFlags::without_sender("endpoint.disabled"),
        &["webhook:all"],
    );
}

/// A received mail's flags for the recipient filters: what reached the inbox, its subject,
/// and whether it carries an attachment.
fn mail_to(recipient: &str, subject: &str, attachments: bool) -> EventFlags {
    let attachments = if attachments {
        json!([{"content_type": "application/pdf", "id": "att_1", "size": 3}])
    } else {
        json!([])
    };
    let event = serde_json::from_value(json!({
        "recipient": recipient,
        "recipient_tag": crate::event::recipient_tag(recipient),
        "subject": subject,
        "email": {"attachments": attachments},
    }))
    .expect("a mail event");
    EventFlags::from_event(&Event::Mail(event))
}

fn rule_with(filters: serde_json::Value) -> serde_json::Value {
    json!([{"id": "r", "name": "n", "filters": filters,
            "channels": {"webhook": {"url": "https://hooks.example.net/a"}}}])
}

#[test]
fn recipients_match_exact_addresses_and_globs_case_insensitively() {
    let cases = [
        (
            "Agent+Billing@Example.com",
            "agent+billing@example.com",
            true,
        ),
        ("agent+billing@example.com", "agent@example.com", false),
        ("*@example.com", "Anyone+x@EXAMPLE.com", true),
        ("*@example.com", "anyone@example.org", false),
        ("*@example.com", "anyone@sub.example.com", false),
        ("agent+*@example.com", "Agent+billing@example.com", true),
        ("agent+*@example.com", "agent@example.com", false),
        ("agent+*@example.com", "agentx+billing@example.com", false),
        ("agent+*@example.com", "agent+billing@example.org", false),
    ];
    for (wanted, recipient, routed) in cases {
        let expected: &[&str] = if routed { &["webhook:r"] } else { &[] };
        check(
            rule_with(json!({"recipients": ["nobody@example.net", wanted]})),
            &mail_to(recipient, "s", false),
            expected,
        );
    }
}

#[test]
fn recipient_tags_match_exactly_and_case_insensitively() {
    let rules = rule_with(json!({"recipient_tags": ["billing", "Support"]}));
    check(
        rules.clone(),
        &mail_to("agent+Billing@example.com", "s", false),
        &["webhook:r"],
    );
    check(
        rules.clone(),
        &mail_to("agent+support@example.com", "s", false),
        &["webhook:r"],
    );
    check(
        rules.clone(),
        &mail_to("agent+billings@example.com", "s", false),
        &[],
    );
    check(rules, &mail_to("agent@example.com", "s", false), &[]);
}

#[test]
fn subject_matches_is_a_regular_expression_found_anywhere_in_the_subject() {
    let rules = rule_with(json!({"subject_matches": "(?i)invoice #\\d+"}));
    check(
        rules.clone(),
        &mail_to("agent@example.com", "Re: INVOICE #42 overdue", false),
        &["webhook:r"],
    );
    check(
        rules.clone(),
        &mail_to("agent@example.com", "Invoice #x", false),
        &[],
    );
    check(rules, &mail_to("agent@example.com", "", false), &[]);
    // Operational events have no subject: an anchored empty pattern is the only match.
    check(
        rule_with(json!({"subject_matches": "^$", "event_types": ["*"]})),
        &EventFlags::without_sender("delivery.dead"),
        &["webhook:r"],
    );
}

#[test]
fn has_attachments_matches_either_way() {
    let with = rule_with(json!({"has_attachments": true}));
    let without = rule_with(json!({"has_attachments": false}));
    let attached = mail_to("agent@example.com", "s", true);
    let bare = mail_to("agent@example.com", "s", false);
    check(with.clone(), &attached, &["webhook:r"]);
    check(with, &bare, &[]);
    check(without.clone(), &bare, &["webhook:r"]);
    check(without, &attached, &[]);
}

#[test]
fn every_recipient_filter_that_is_set_must_match() {
    let rules = rule_with(json!({
        "recipients": ["agent+*@example.com"],
        "recipient_tags": ["billing"],
        "subject_matches": "invoice",
        "has_attachments": true,
    }));
    check(
        rules.clone(),
        &mail_to("agent+billing@example.com", "your invoice", true),
        &["webhook:r"],
    );
    for (recipient, subject, attachments) in [
        ("other+billing@example.com", "your invoice", true),
        ("agent+sales@example.com", "your invoice", true),
        ("agent+billing@example.com", "your receipt", true),
        ("agent+billing@example.com", "your invoice", false),
    ] {
        check(
            rules.clone(),
            &mail_to(recipient, subject, attachments),
            &[],
        );
    }
}

#[test]
fn a_subject_pattern_that_does_not_compile_is_refused_and_echoed_as_sent() {
    let parse = |value: serde_json::Value| serde_json::from_value::<Rule>(value).expect("parses");
    for pattern in ["(unclosed", "a{1000}{1000}{1000}"] {
        let rule = parse(json!({"name": "n", "id": "r", "filters": {"subject_matches": pattern}}));
        let message = rule.validate(false).expect_err("accepted {pattern}");
        assert!(
            message.starts_with("filters.subject_matches: "),
            "{message}"
        );
        // Should one be stored anyway, it routes nothing rather than everything.
        check(
            rule_with(json!({"subject_matches": pattern})),
            &mail_to("agent@example.com", "(unclosed", false),
            &[],
        );
    }
    let sent = json!({"name": "n", "id": "r", "enabled": true,
                      "filters": {"recipients": ["*@example.com"], "recipient_tags": ["b"],
                                  "subject_matches": "^x", "has_attachments": false},
                      "channels": {}});
    let rule = parse(sent.clone());
    rule.validate(false).expect("a valid rule");
    assert_eq!(serde_json::to_value(&rule).expect("serializes"), sent);
}
