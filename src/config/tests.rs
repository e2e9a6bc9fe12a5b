use super::*;
use crate::model::normalize_address;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[track_caller]
fn check_error(toml: &str, vars: &[(&str, &str)], expected_fragment: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.toml");
    std::fs::write(&path, toml).expect("write config");
    let err = Config::load(Some(&path), env(vars)).expect_err("config should be rejected");
    let message = err.to_string();
    assert!(
        message.contains(expected_fragment),
        "`{message}` lacks `{expected_fragment}`"
    );
}

#[test]
fn embedded_defaults_match_spec() {
    let config = Config::load(None, Vec::new()).expect("defaults are valid");
    assert_eq!(config.smtp.listen.to_string(), "127.0.0.1:2525");
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database.url, "sqlite://./data/mxhook.db");
    assert_eq!(config.storage.path, PathBuf::from("./data/mail"));
    assert_eq!(config.storage.prefix, "inbound/");
    assert_eq!(config.smtp.max_message_size, 26_214_400);
    assert!(!config.delivery.allow_http);
    assert!(!config.delivery.allow_private_targets);
    assert!((config.delivery.retry_base_s - 30.0).abs() < f64::EPSILON);
    assert_eq!(config.delivery.workers, 64);
    assert_eq!(config.delivery.max_in_flight_per_endpoint, 32);
}

#[test]
fn env_overrides_file_values_with_typed_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.toml");
    std::fs::write(&path, "[smtp]\nlisten = \"127.0.0.1:2600\"\n").expect("write");
    let config = Config::load(
        Some(&path),
        env(&[
            ("MXHOOK_SMTP__LISTEN", "127.0.0.1:2700"),
            ("MXHOOK_DELIVERY__ALLOW_HTTP", "true"),
            ("MXHOOK_DELIVERY__RETRY_BASE_S", "0.05"),
            ("MXHOOK_HTTP__ADMIN_KEYS", "[\"k1\", \"k2\"]"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("valid");
    assert_eq!(config.smtp.listen.to_string(), "127.0.0.1:2700");
    assert!(config.delivery.allow_http);
    assert!((config.delivery.retry_base_s - 0.05).abs() < 1e-9);
    assert_eq!(config.http.admin_keys, ["k1", "k2"]);
}

#[test]
fn errors_name_the_key() {
    check_error("[smtp]\nlisten = \"nowhere\"\n", &[], "smtp.listen");
    // An allow or block entry that is neither an address nor a domain would never match.
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nblock_senders = [\"spam.test\", \"not an address\"]\n",
        &[],
        "inbox[0].block_senders",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nallow_senders = [\"@\"]\n",
        &[],
        "inbox[0].allow_senders",
    );
    check_error(
        "[auth]\nallow_senders = [\"boss@\"]\n",
        &[],
        "auth.allow_senders",
    );
    check_error("[smtp]\nlisen = \"127.0.0.1:25\"\n", &[], "lisen");
    check_error(
        "[delivery]\nretry_base_s = -1\n",
        &[],
        "delivery.retry_base_s",
    );
    // Durations too large for a deadline are refused by name, not a panic at first use.
    check_error(
        "[smtp]\nsession_timeout_s = 1e30\n",
        &[],
        "smtp.session_timeout_s",
    );
    check_error(
        "[delivery]\ndisable_after_s = 1e300\n",
        &[],
        "delivery.disable_after_s",
    );
    check_error(
        "[[inbox]]\nid = \"a/b\"\naddresses = [\"a@example.com\"]\n",
        &[],
        "inbox[0].id",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nwebhook_url = \"http://example.com/h\"\n",
        &[],
        "inbox[0].webhook_url",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nsignature = \"md5\"\n",
        &[],
        "inbox[0].signature",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"x@example.com\"]\n[[inbox]]\nid = \"b\"\naddresses = [\"X@example.com\"]\n",
        &[],
        "inbox[1].addresses",
    );
    check_error("", &[("MXHOOK_SMTP", "x")], "MXHOOK_SMTP");
    check_error(
        "",
        &[("MXHOOK_SMTP__MAX_MESSAGE_SIZE", "lots")],
        "smtp.max_message_size",
    );
    check_error("[smtp\n", &[], "not valid TOML");
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nsignature_header = \"X Sig\"\n",
        &[],
        "inbox[0].signature_header",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nsignature_header = \"Host\"\n",
        &[],
        "inbox[0].signature_header",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nsignature_format = \"b64\"\n",
        &[],
        "signature_format",
    );
    check_error(
        "[delivery]\nmax_in_flight_per_endpoint = 0\n",
        &[],
        "delivery.max_in_flight_per_endpoint",
    );
    check_error(
        "[delivery]\nmax_payload_bytes = 4095\n",
        &[],
        "delivery.max_payload_bytes",
    );
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let config = Config::from_toml_str(
        "[http]\nadmin_keys = [\"admin-secret\"]\n[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\nwebhook_secret = \"hook-secret\"\n",
    )
    .expect("valid");
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("admin-secret") && !debug.contains("hook-secret"),
        "{debug}"
    );
}

#[test]
fn address_normalization_refuses_routing_syntax() {
    assert_eq!(
        normalize_address("Agent@Example.COM").as_deref(),
        Some("agent@example.com")
    );
    for bad in [
        "a%b@c.d",
        "a!b@c.d",
        "\"a b\"@c.d",
        "@a:b@c.d",
        "nodomain",
        "a@",
        "a@-x.com",
        ".a@b.c",
        // Lowercases to `i` and a combining dot, which is no address character.
        "\u{130}nfo@example.com",
    ] {
        assert_eq!(normalize_address(bad), None, "{bad} accepted");
    }
}

/// What normalization returns normalizes to itself: an address stored normalized is found
/// and accepted again when it is read back, compared or sent through the API once more.
#[test]
fn address_normalization_is_idempotent() {
    for address in [
        "Agent@Example.COM",
        "\u{130}nfo@example.com",
        "\u{212a}elvin@example.com",
        "STRASSE\u{1e9e}@example.com",
        "\u{dc}ber@b\u{fc}cher.example",
        "o'Brien+tag@example.org",
    ] {
        if let Some(once) = normalize_address(address) {
            assert_eq!(
                normalize_address(&once).as_deref(),
                Some(once.as_str()),
                "{address:?} normalized to {once:?}, which does not normalize to itself"
            );
        }
    }
    assert_eq!(
        normalize_address("\u{212a}elvin@Example.com").as_deref(),
        Some("kelvin@example.com")
    );
}

#[test]
fn verification_keys_are_validated_by_name() {
    check_error(
        "[auth]\nnameservers = [\"dns.example\"]\n",
        &[],
        "auth.nameservers",
    );
    check_error(
        "[auth]\nverify_timeout_s = 0\n",
        &[],
        "auth.verify_timeout_s",
    );
    check_error(
        "[rate_limit]\nsender_soft = 10\nsender_hard = 5\n",
        &[],
        "rate_limit.sender_hard",
    );
    check_error(
        "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\npolicy_action = \"drop\"\n",
        &[],
        "inbox[0].policy_action",
    );
    let config = Config::load(None, Vec::new()).expect("defaults are valid");
    assert!(config.auth.enabled);
    assert!((config.auth.duplicate_window_s - 604_800.0).abs() < f64::EPSILON);
}

#[test]
fn storage_timeout_tls_pair_and_connection_keys_are_validated() {
    check_error("[storage]\ntimeout_s = 0\n", &[], "`storage.timeout_s`");
    check_error(
        "[database]\ndirectory_refresh_s = 0\n",
        &[],
        "`database.directory_refresh_s`",
    );
    check_error(
        "[database]\ndirectory_refresh_s = -2\n",
        &[],
        "`database.directory_refresh_s`",
    );
    check_error(
        "[smtp]\ntls_cert = \"/etc/cert.pem\"\n",
        &[],
        "`smtp.tls_cert`: set both",
    );
    check_error(
        "[smtp]\nmax_connections_per_ip = 0\n",
        &[],
        "`smtp.max_connections_per_ip`",
    );
    check_error("[smtp]\ngreet_pause_s = -1\n", &[], "`smtp.greet_pause_s`");
    check_error("[smtp]\nmin_data_rate = 0\n", &[], "`smtp.min_data_rate`");
    check_error(
        "[smtp]\nmax_header_bytes = 100\n",
        &[],
        "`smtp.max_header_bytes`",
    );
    let config =
        Config::load(None, env(&[("MXHOOK_STORAGE__BACKEND", "s3")])).expect("s3 is valid");
    assert_eq!(config.storage.backend, StorageBackend::S3);
    assert!((config.storage.timeout_s - 30.0).abs() < f64::EPSILON);
    assert!((config.database.directory_refresh_s - 2.0).abs() < f64::EPSILON);
    assert_eq!(config.smtp.max_connections_per_ip, 20);
}

#[test]
fn replay_retention_is_bounded_by_the_timestamp_window() {
    for value in ["10.0", "-1.0", "1e12", "nan"] {
        check_error(
            &format!("[ingress]\nreplay_retention_s = {value}\n"),
            &[],
            "ingress.replay_retention_s",
        );
    }
    let config = Config::load(None, Vec::new()).expect("defaults are valid");
    assert!(config.ingress.replay_retention_s >= 86_400.0);
}

#[test]
fn sender_entries_are_addresses_domains_or_at_domains() {
    use crate::model::normalize_sender_entry;
    assert_eq!(
        normalize_sender_entry("Boss@Example.COM").as_deref(),
        Some("boss@example.com")
    );
    assert_eq!(
        normalize_sender_entry("Example.COM").as_deref(),
        Some("example.com")
    );
    assert_eq!(
        normalize_sender_entry("@example.com").as_deref(),
        Some("example.com")
    );
    for bad in ["", "@", "boss@", "not an address", "a@b@c"] {
        assert_eq!(normalize_sender_entry(bad), None, "{bad:?} accepted");
    }
}

#[test]
fn duration_accessors_read_the_seconds_the_keys_spell() {
    let config = Config::from_toml_str(
        "[smtp]\ngreet_pause_s = 0\n[delivery]\nretry_base_s = 0.25\ndisable_after_s = 0\n\
         [ingress]\nreplay_retention_s = 7200\n",
    )
    .expect("valid");
    assert_eq!(config.smtp.greet_pause(), Duration::ZERO);
    assert_eq!(config.delivery.retry_base(), Duration::from_millis(250));
    // 0 is the documented "never disable", not a zero-length grace.
    assert_eq!(config.delivery.disable_after(), None);
    assert_eq!(config.ingress.replay_retention(), Duration::from_secs(7200));
    let defaults = Config::load(None, Vec::new()).expect("defaults are valid");
    assert_eq!(
        defaults.delivery.disable_after(),
        Some(Duration::from_secs_f64(defaults.delivery.disable_after_s))
    );
    // A section built by hand, past what validation lets through, saturates instead of
    // panicking where a stage asks for its Duration.
    let unchecked = DeliveryConfig {
        timeout_s: -1.0,
        lease_s: f64::NAN,
        retry_base_s: 1e300,
        ..DeliveryConfig::default()
    };
    assert_eq!(unchecked.timeout(), Duration::ZERO);
    assert_eq!(unchecked.lease(), Duration::ZERO);
    assert_eq!(unchecked.retry_base(), Duration::MAX);
}

#[test]
fn the_inbox_webhook_takes_the_endpoint_settings_checked_by_key() {
    let inbox = "[[inbox]]\nid = \"a\"\naddresses = [\"a@example.com\"]\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mxhook.toml");
    std::fs::write(
        &path,
        format!(
            "{inbox}custom_headers = {{ X-Team = \"ops\" }}\ntimeout_s = 300\nmax_retries = 10\n"
        ),
    )
    .expect("write config");
    let config = Config::load(Some(&path), Vec::new()).expect("the settings are keys of [[inbox]]");
    let settings = config.inboxes[0].endpoint_settings();
    assert_eq!(settings.custom_headers["X-Team"], "ops");
    assert_eq!(
        (settings.timeout_s, settings.max_retries),
        (Some(300), Some(10))
    );

    check_error(
        &format!("{inbox}timeout_s = 301\n"),
        &[],
        "inbox[0].timeout_s",
    );
    check_error(
        &format!("{inbox}timeout_s = 0\n"),
        &[],
        "inbox[0].timeout_s",
    );
    check_error(
        &format!("{inbox}max_retries = 11\n"),
        &[],
        "inbox[0].max_retries",
    );
    check_error(
        &format!("{inbox}custom_headers = {{ Content-Type = \"text/plain\" }}\n"),
        &[],
        "inbox[0].custom_headers",
    );
    // The header the hmac-sha256 scheme signs in cannot be set beside the signature.
    check_error(
        &format!(
            "{inbox}signature = \"hmac-sha256\"\nsignature_header = \"X-Sig\"\n\
             custom_headers = {{ x-sig = \"forged\" }}\n"
        ),
        &[],
        "inbox[0].custom_headers",
    );
    check_error(
        &format!("{inbox}custom_headers = {{ \"Bad Name\" = \"x\" }}\n"),
        &[],
        "inbox[0].custom_headers",
    );
}
