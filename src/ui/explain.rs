//! Sender-verification verdicts (the event's `auth` object) told in plain words for the message
//! page. Pure: no I/O.

use serde_json::Value;

/// One sentence per check, in the order a reader needs them: DMARC (the conclusion), then SPF,
/// DKIM and ARC (the evidence).
pub(super) fn auth_in_words(auth: &Value) -> Vec<String> {
    if !auth
        .get("checked")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return vec![
            "The sender was not verified: verification is turned off, or the client address \
             was unknown (a test event, or mail from provider ingress)."
                .to_owned(),
        ];
    }
    let mut lines = Vec::new();
    let text = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match auth.get("dmarc").filter(|dmarc| !dmarc.is_null()) {
        Some(dmarc) => {
            let domain = text(dmarc, "domain");
            let result = text(dmarc, "result");
            let policy = text(dmarc, "policy");
            let aligned = match (
                dmarc.get("spf_aligned").and_then(Value::as_bool) == Some(true),
                dmarc.get("dkim_aligned").and_then(Value::as_bool) == Some(true),
            ) {
                (true, true) => "both SPF and DKIM pass for that domain",
                (true, false) => "SPF passes for that domain",
                (false, true) => "a DKIM signature of that domain passes",
                (false, false) => "neither SPF nor DKIM passes for that domain",
            };
            lines.push(match result.as_str() {
                "pass" => format!(
                    "DMARC passes: the From address really belongs to {domain} ({aligned})."
                ),
                "fail" => format!(
                    "DMARC fails: nothing proves the mail comes from {domain} ({aligned}); \
                     its published policy is `{policy}`."
                ),
                "none" => {
                    format!("{domain} publishes no DMARC policy, so the From domain is unproven.")
                }
                other => format!("DMARC could not be evaluated for {domain} (`{other}`)."),
            });
        }
        None => lines.push("No DMARC result (no From domain to check).".to_owned()),
    }
    if let Some(spf) = auth.get("spf").filter(|spf| !spf.is_null()) {
        let domain = text(spf, "domain");
        let ip = text(spf, "client_ip");
        lines.push(match text(spf, "result").as_str() {
            "pass" => format!("SPF passes: {domain} authorises the sending server {ip}."),
            "fail" => format!("SPF fails: {domain} says {ip} may not send its mail."),
            "softfail" => {
                format!("SPF soft-fails: {domain} suggests {ip} should not send its mail.")
            }
            "neutral" => format!("SPF is neutral: {domain} makes no statement about {ip}."),
            "none" => format!("SPF: {domain} publishes no SPF record."),
            other => format!("SPF could not be evaluated for {domain} (`{other}`)."),
        });
    }
    let dkim = auth
        .get("dkim")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if dkim.is_empty() {
        lines.push("The message carries no DKIM signature.".to_owned());
    }
    for signature in &dkim {
        let domain = text(signature, "domain");
        let reason = text(signature, "reason");
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        };
        lines.push(match text(signature, "result").as_str() {
            "pass" => {
                format!("A DKIM signature of {domain} is valid: the signed content is unchanged.")
            }
            "fail" => format!("A DKIM signature of {domain} does not verify{why}."),
            other => format!("A DKIM signature of {domain} could not be checked: `{other}`{why}."),
        });
    }
    if let Some(arc) = auth.get("arc").filter(|arc| !arc.is_null()) {
        let instances = arc.get("instances").and_then(Value::as_u64).unwrap_or(0);
        if instances > 0 {
            lines.push(format!(
                "ARC: {instances} forwarding hop(s) recorded their checks; the chain is `{}`.",
                text(arc, "result")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unchecked_mail_says_so() {
        let lines = auth_in_words(&json!({"checked": false}));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("not verified"), "{lines:?}");
    }

    #[test]
    fn a_passing_message_names_its_domain() {
        let lines = auth_in_words(&json!({
            "checked": true,
            "dmarc": {"result": "pass", "domain": "example.org", "policy": "reject",
                      "spf_aligned": true, "dkim_aligned": false},
            "spf": {"result": "pass", "domain": "example.org", "client_ip": "192.0.2.1"},
            "dkim": [{"result": "fail", "domain": "example.org", "reason": "body hash"}],
        }));
        assert!(lines[0].starts_with("DMARC passes"), "{lines:?}");
        assert!(lines[1].contains("192.0.2.1"), "{lines:?}");
        assert!(lines[2].contains("body hash"), "{lines:?}");
    }
}
