//! Sender-verification verdicts (the event's `auth` object) told in plain words for the message
//! page. Pure: no I/O.

use crate::event::{Auth, AuthResult};

/// One sentence per check, in the order a reader needs them: DMARC (the conclusion), then SPF,
/// DKIM and ARC (the evidence).
pub(super) fn auth_in_words(auth: &Auth) -> Vec<String> {
    if !auth.checked {
        return vec![
            "The sender was not verified: verification is turned off, or the client address \
             was unknown (a test event, or mail from provider ingress)."
                .to_owned(),
        ];
    }
    let mut lines = Vec::new();
    match &auth.dmarc {
        Some(dmarc) => {
            let domain = &dmarc.domain;
            let aligned = match (dmarc.spf_aligned, dmarc.dkim_aligned) {
                (true, true) => "both SPF and DKIM pass for that domain",
                (true, false) => "SPF passes for that domain",
                (false, true) => "a DKIM signature of that domain passes",
                (false, false) => "neither SPF nor DKIM passes for that domain",
            };
            lines.push(match dmarc.result {
                AuthResult::Pass => format!(
                    "DMARC passes: the From address really belongs to {domain} ({aligned})."
                ),
                AuthResult::Fail => format!(
                    "DMARC fails: nothing proves the mail comes from {domain} ({aligned}); \
                     its published policy is `{}`.",
                    dmarc.policy.as_str()
                ),
                AuthResult::None => {
                    format!("{domain} publishes no DMARC policy, so the From domain is unproven.")
                }
                other => format!(
                    "DMARC could not be evaluated for {domain} (`{}`).",
                    other.as_str()
                ),
            });
        }
        None => lines.push("No DMARC result (no From domain to check).".to_owned()),
    }
    if let Some(spf) = &auth.spf {
        let domain = &spf.domain;
        let ip = &spf.client_ip;
        lines.push(match spf.result {
            AuthResult::Pass => format!("SPF passes: {domain} authorises the sending server {ip}."),
            AuthResult::Fail => format!("SPF fails: {domain} says {ip} may not send its mail."),
            AuthResult::SoftFail => {
                format!("SPF soft-fails: {domain} suggests {ip} should not send its mail.")
            }
            AuthResult::Neutral => {
                format!("SPF is neutral: {domain} makes no statement about {ip}.")
            }
            AuthResult::None => format!("SPF: {domain} publishes no SPF record."),
            other => format!(
                "SPF could not be evaluated for {domain} (`{}`).",
                other.as_str()
            ),
        });
    }
    if auth.dkim.is_empty() {
        lines.push("The message carries no DKIM signature.".to_owned());
    }
    for signature in &auth.dkim {
        let domain = &signature.domain;
        let why = match signature.reason.as_deref() {
            None | Some("") => String::new(),
            Some(reason) => format!(" ({reason})"),
        };
        lines.push(match signature.result {
            AuthResult::Pass => {
                format!("A DKIM signature of {domain} is valid: the signed content is unchanged.")
            }
            AuthResult::Fail => format!("A DKIM signature of {domain} does not verify{why}."),
            other => format!(
                "A DKIM signature of {domain} could not be checked: `{}`{why}.",
                other.as_str()
            ),
        });
    }
    if let Some(arc) = auth.arc.as_ref().filter(|arc| arc.instances > 0) {
        lines.push(format!(
            "ARC: {} forwarding hop(s) recorded their checks; the chain is `{}`.",
            arc.instances,
            arc.result.as_str()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(value: serde_json::Value) -> Auth {
        serde_json::from_value(value).expect("an auth object")
    }

    #[test]
    fn unchecked_mail_says_so() {
        let lines = auth_in_words(&auth(json!({"checked": false})));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("not verified"), "{lines:?}");
    }

    #[test]
    fn a_passing_message_names_its_domain() {
        let lines = auth_in_words(&auth(json!({
            "checked": true,
            "dmarc": {"result": "pass", "domain": "example.org", "policy": "reject",
                      "spf_aligned": true, "dkim_aligned": false},
            "spf": {"result": "pass", "domain": "example.org", "client_ip": "192.0.2.1"},
            "dkim": [{"result": "fail", "domain": "example.org", "reason": "body hash"}],
        })));
        assert!(lines[0].starts_with("DMARC passes"), "{lines:?}");
        assert!(lines[1].contains("192.0.2.1"), "{lines:?}");
        assert!(lines[2].contains("body hash"), "{lines:?}");
    }
}
