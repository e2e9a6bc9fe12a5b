use super::*;

const BODY: &[u8] = br#"{"type":"mail.received"}"#;

fn check(scheme: SignatureScheme, secrets: &[&str]) -> Vec<(String, String)> {
    let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    sign(&SigningInput {
        scheme,
        secrets: &secrets,
        webhook_id: "evt_1",
        timestamp: 1_700_000_000,
        body: BODY,
        hmac_header: None,
        hmac_format: SignatureFormat::Sha256Hex,
    })
    .expect("signing succeeds")
}

#[test]
fn agentmail_signs_timestamp_dot_body() {
    let headers = check(SignatureScheme::Agentmail, &["s3cret"]);
    assert_eq!(
        headers[0],
        ("X-AgentMail-Timestamp".into(), "1700000000".into())
    );
    // Independent value: python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"1700000000.{\"type\":\"mail.received\"}",hashlib.sha256).hexdigest())'
    assert_eq!(
        headers[1].1,
        "v1=a2f8326b5b3f6f77aea122d8466275ad9014f9ae9cf9c8043c60ebcbeaae1c27"
    );
    assert!(verify_agentmail(
        "s3cret",
        "1700000000",
        BODY,
        &headers[1].1
    ));
    assert!(!verify_agentmail(
        "wrong",
        "1700000000",
        BODY,
        &headers[1].1
    ));
    assert!(!verify_agentmail(
        "s3cret",
        "1700000001",
        BODY,
        &headers[1].1
    ));
}

#[test]
fn agentmail_without_secret_marks_unsigned() {
    assert_eq!(
        check(SignatureScheme::Agentmail, &[]),
        vec![("X-AgentMail-Unsigned".to_owned(), "1".to_owned())]
    );
}

#[test]
fn standard_sends_one_signature_per_secret() {
    let headers = check(
        SignatureScheme::Standard,
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25k"],
    );
    assert_eq!(
        headers[0],
        ("webhook-timestamp".into(), "1700000000".into())
    );
    let signatures: Vec<&str> = headers[1].1.split(' ').collect();
    assert_eq!(signatures.len(), 2);
    assert!(signatures.iter().all(|sig| sig.starts_with("v1,")));
}

#[test]
fn standard_rejects_malformed_secret() {
    let secrets = vec!["not-prefixed".to_owned()];
    let result = sign(&SigningInput {
        scheme: SignatureScheme::Standard,
        secrets: &secrets,
        webhook_id: "evt_1",
        timestamp: 1,
        body: BODY,
        hmac_header: None,
        hmac_format: SignatureFormat::Sha256Hex,
    });
    assert_eq!(result, Err(Error::MalformedStandardSecret));
}

#[test]
fn botmailroom_and_hmac_sign_the_body_alone() {
    let bmr = check(SignatureScheme::Botmailroom, &["k"]);
    let plain = check(SignatureScheme::HmacSha256, &["k"]);
    assert_eq!(bmr[0].0, "X-Signature");
    assert_eq!(plain[0].0, DEFAULT_HMAC_HEADER);
    assert_eq!(plain[0].1, format!("sha256={}", bmr[0].1));
}

#[test]
fn hmac_sha256_takes_its_header_and_format_from_the_endpoint() {
    let secrets = vec!["k".to_owned()];
    let headers = sign(&SigningInput {
        scheme: SignatureScheme::HmacSha256,
        secrets: &secrets,
        webhook_id: "evt_1",
        timestamp: 1,
        body: BODY,
        hmac_header: Some("X-Hub-Signature"),
        hmac_format: SignatureFormat::Hex,
    })
    .expect("signing succeeds");
    let bmr = check(SignatureScheme::Botmailroom, &["k"]);
    assert_eq!(
        headers,
        vec![("X-Hub-Signature".to_owned(), bmr[0].1.clone())]
    );
}
