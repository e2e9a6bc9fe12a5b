//! Whole domains over real sockets: a catch-all inbox, inboxes created on first mail from a
//! template (signed with the template's secret), the cap's `452 4.2.2`, the creation rate's
//! `451 4.7.1`, local parts that make no inbox, no relay for other domains, the `/v1/domains`
//! API, and two nodes sharing one PostgreSQL database that get the first mail for one new local
//! part at the same moment.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::gateway::postgres_database_url;
use crate::support::{
    GatewayOptions, SmtpClient, TestGateway, WebhookReceiver, eventually,
    python_verifies_agentmail, simple_message,
};

const TEMPLATE_SECRET: &str = "template-secret-for-auto-inboxes";

/// The RCPT reply for `to` in a fresh transaction from `from`.
async fn rcpt(gateway: &TestGateway, from: &str, to: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    client.expect("EHLO client.test", 250).await;
    client.expect(&format!("MAIL FROM:<{from}>"), 250).await;
    let reply = client.cmd(&format!("RCPT TO:<{to}>")).await;
    client.cmd("QUIT").await;
    reply
}

/// One message to `to`; the final reply.
async fn send(gateway: &TestGateway, to: &str, subject: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(gateway.smtp).await;
    let reply = client
        .send_message(
            "ann@sender.example",
            &[to],
            &simple_message("ann@sender.example", to, subject, "hello"),
        )
        .await;
    client.cmd("QUIT").await;
    reply
}

async fn inbox_ids(gateway: &TestGateway) -> Vec<String> {
    let (status, body) = gateway.api("GET", "/v1/inboxes", None).await;
    assert_eq!(status, 200, "{body}");
    body["inboxes"]
        .as_array()
        .expect("inboxes")
        .iter()
        .filter_map(|inbox| inbox["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn catch_all_takes_unknown_local_parts_and_other_domains_stay_refused() {
    let mut agent_hook = WebhookReceiver::start(vec![]).await;
    let mut desk_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(agent_hook.url());
    options.extra_toml = format!(
        r#"
[[inbox]]
id = "desk"
addresses = ["desk@support.example"]
webhook_url = "{desk}"

[[domain]]
name = "Support.Example"
catch_all = "desk"

[[domain]]
name = "closed.example"
"#,
        desk = desk_hook.url()
    );
    let gateway = TestGateway::start(options).await;

    assert_eq!(
        send(&gateway, "Someone+Urgent@support.example", "to anyone")
            .await
            .0,
        250
    );
    let event = desk_hook.recv().await.json();
    assert_eq!(
        event["recipient"], "Someone+Urgent@support.example",
        "{event}"
    );
    assert_eq!(event["recipient_tag"], "Urgent", "{event}");
    assert_eq!(event["agent_id"], "desk", "{event}");

    // An exact address still wins over the catch-all of its domain.
    assert_eq!(send(&gateway, "desk@support.example", "exact").await.0, 250);
    let event = desk_hook.recv().await.json();
    assert_eq!(event["recipient"], "desk@support.example", "{event}");
    agent_hook.assert_silent(Duration::from_millis(200)).await;

    // A configured domain with neither catch-all nor auto-create, a domain nobody configured,
    // and a source-routed relay attempt: refused, nothing made.
    let (code, text) = rcpt(&gateway, "ann@sender.example", "nobody@closed.example").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.1.1"), "{text}");
    let (code, text) = rcpt(&gateway, "ann@sender.example", "someone@elsewhere.example").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.1.1"), "{text}");
    let (code, _) = rcpt(
        &gateway,
        "ann@sender.example",
        "@support.example:victim@elsewhere.example",
    )
    .await;
    assert_eq!(code, 550);
    assert_eq!(inbox_ids(&gateway).await, ["agent", "desk", "other"]);
    gateway.stop().await;
}

#[tokio::test]
async fn first_mail_creates_an_inbox_from_the_template() {
    let mut agent_hook = WebhookReceiver::start(vec![]).await;
    let mut template_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::webhook(agent_hook.url());
    options.extra_toml = format!(
        r#"
[[domain]]
name = "agents.example"
auto_create = true
[domain.template]
webhook_url = "{hook}"
webhook_secret = "{TEMPLATE_SECRET}"
signature = "agentmail"
block_senders = ["spam.example"]
policy_action = "reject"
"#,
        hook = template_hook.url()
    );
    let gateway = TestGateway::start(options).await;

    assert_eq!(
        send(&gateway, "Bob+task-7@Agents.Example", "first").await.0,
        250
    );
    let got = template_hook.recv().await;
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert!(
        python_verifies_agentmail(TEMPLATE_SECRET, &timestamp, &got.body, &signature),
        "the template's secret signs the new inbox's deliveries"
    );
    assert!(!python_verifies_agentmail(
        "another-secret",
        &timestamp,
        &got.body,
        &signature
    ));
    let event = got.json();
    assert_eq!(event["agent_id"], "bob", "{event}");
    assert_eq!(event["recipient"], "Bob+task-7@Agents.Example", "{event}");
    assert_eq!(event["recipient_tag"], "task-7", "{event}");

    let (status, inbox) = gateway.api("GET", "/v1/inboxes/bob", None).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["source"], "auto", "{inbox}");
    assert_eq!(inbox["addresses"], json!(["bob@agents.example"]), "{inbox}");
    assert_eq!(inbox["webhook"]["has_secret"], true, "{inbox}");
    assert!(!inbox.to_string().contains(TEMPLATE_SECRET), "{inbox}");

    // An ordinary inbox afterwards: the second mail goes to it, no second inbox is made.
    assert_eq!(send(&gateway, "bob@agents.example", "second").await.0, 250);
    assert_eq!(template_hook.recv().await.json()["agent_id"], "bob");
    assert_eq!(inbox_ids(&gateway).await, ["agent", "bob", "other"]);

    // Local parts that are no valid inbox id, a bounce, and a sender the template's policy
    // rejects make no inbox.
    for local in ["_bob", "-bob", "bob=x"] {
        let (code, text) = rcpt(
            &gateway,
            "ann@sender.example",
            &format!("{local}@agents.example"),
        )
        .await;
        assert_eq!(code, 550, "{local}: {text}");
        assert!(text.starts_with("5.1.1"), "{local}: {text}");
    }
    let (code, _) = rcpt(&gateway, "", "bounced@agents.example").await;
    assert_eq!(code, 550);
    let (code, text) = rcpt(&gateway, "eve@spam.example", "eve@agents.example").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.7.1"), "{text}");
    assert_eq!(inbox_ids(&gateway).await, ["agent", "bob", "other"]);

    // The domain lists its auto-created inbox.
    let (status, domain) = gateway.api("GET", "/v1/domains/agents.example", None).await;
    assert_eq!(status, 200, "{domain}");
    assert_eq!(domain["auto_inboxes"], 1, "{domain}");
    assert_eq!(domain["source"], "config", "{domain}");
    assert_eq!(domain["template"]["has_webhook_secret"], true, "{domain}");
    assert!(!domain.to_string().contains(TEMPLATE_SECRET), "{domain}");
    agent_hook.assert_silent(Duration::from_millis(100)).await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_cap_answers_452_and_the_rate_451_and_neither_creates() {
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = r#"
[[domain]]
name = "capped.example"
auto_create = true
max_auto_inboxes = 2

[[domain]]
name = "rated.example"
auto_create = true
auto_create_per_minute = 2
"#
    .to_owned();
    let gateway = TestGateway::start(options).await;

    for local in ["a1", "a2"] {
        let to = format!("{local}@capped.example");
        assert_eq!(
            rcpt(&gateway, "ann@sender.example", &to).await.0,
            250,
            "{to}"
        );
    }
    let (code, text) = rcpt(&gateway, "ann@sender.example", "a3@capped.example").await;
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("4.2.2"), "{text}");
    // Inboxes that exist still take mail at the cap.
    assert_eq!(
        send(&gateway, "a1@capped.example", "still open").await.0,
        250
    );

    for local in ["r1", "r2"] {
        let to = format!("{local}@rated.example");
        assert_eq!(
            rcpt(&gateway, "ann@sender.example", &to).await.0,
            250,
            "{to}"
        );
    }
    let (code, text) = rcpt(&gateway, "ann@sender.example", "r3@rated.example").await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7.1"), "{text}");

    assert_eq!(
        inbox_ids(&gateway).await,
        ["a1", "a2", "agent", "other", "r1", "r2"]
    );
    let (status, _) = gateway.api("GET", "/v1/inboxes/a3", None).await;
    assert_eq!(status, 404);

    // Deleting an auto-created inbox makes room again (once this node's short memory of the
    // refusal has passed).
    let (status, _) = gateway.api("DELETE", "/v1/inboxes/a1", None).await;
    assert_eq!(status, 204);
    eventually("a3 to be made once a1 is gone", || async {
        (rcpt(&gateway, "ann@sender.example", "a3@capped.example")
            .await
            .0
            == 250)
            .then_some(())
    })
    .await;
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/a3", None).await;
    assert_eq!(status, 200, "{inbox}");
    gateway.stop().await;
}

#[tokio::test]
async fn the_domains_api_checks_fields_and_leaves_config_domains_alone() {
    let mut template_hook = WebhookReceiver::start(vec![]).await;
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml =
        "[[domain]]\nname = \"config.example\"\ncatch_all = \"other\"\n".to_owned();
    let gateway = TestGateway::start(options).await;

    let (status, list) = gateway.api("GET", "/v1/domains", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["domains"][0]["name"], "config.example", "{list}");
    assert_eq!(list["domains"][0]["catch_all"], "other", "{list}");

    for (method, path) in [
        ("GET", "/v1/domains/unknown.example"),
        ("DELETE", "/v1/domains/unknown.example"),
    ] {
        let (status, body) = gateway.api(method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let (status, body) = gateway
        .api("PUT", "/v1/domains/config.example", Some(json!({})))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = gateway
        .api("DELETE", "/v1/domains/config.example", None)
        .await;
    assert_eq!(status, 409, "{body}");

    let invalid: [(Value, &str); 5] = [
        (json!({"catch_all": "nobody"}), "catch_all"),
        (json!({"max_auto_inboxes": 0}), "max_auto_inboxes"),
        (
            json!({"template": {"webhook_url": "ftp://hooks.example/in"}}),
            "template.webhook_url",
        ),
        (
            json!({"template": {"addresses": ["x@y.example"]}}),
            "template.addresses",
        ),
        (json!({"template": {"ordered": "yes"}}), "template.ordered"),
    ];
    for (body, field) in invalid {
        let (status, answer) = gateway
            .api("PUT", "/v1/domains/api.example", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {answer}");
    }
    let (status, _) = gateway.api("GET", "/v1/domains/api.example", None).await;
    assert_eq!(status, 404, "a refused PUT creates nothing");

    let domain = json!({
        "auto_create": true,
        "template": {"webhook_url": template_hook.url(), "webhook_secret": TEMPLATE_SECRET}
    });
    let (status, created) = gateway
        .api("PUT", "/v1/domains/API.example", Some(domain))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "api.example");
    assert_eq!(created["source"], "api");
    assert_eq!(created["max_auto_inboxes"], 10000);
    assert_eq!(created["template"]["has_webhook_secret"], true);
    assert!(!created.to_string().contains(TEMPLATE_SECRET), "{created}");

    // The directory knows the domain at once.
    assert_eq!(send(&gateway, "carol@api.example", "hello").await.0, 250);
    let got = template_hook.recv().await;
    let timestamp = got.header("x-agentmail-timestamp").expect("timestamp");
    let signature = got.header("x-agentmail-signature").expect("signature");
    assert!(python_verifies_agentmail(
        TEMPLATE_SECRET,
        &timestamp,
        &got.body,
        &signature
    ));

    // A PUT without the secret keeps it (write-only); null removes it.
    let (status, replaced) = gateway
        .api(
            "PUT",
            "/v1/domains/api.example",
            Some(json!({"auto_create": true, "template": {"webhook_url": template_hook.url()}})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        replaced["template"]["has_webhook_secret"], true,
        "{replaced}"
    );
    assert_eq!(replaced["auto_inboxes"], 1, "{replaced}");
    let (status, replaced) = gateway
        .api(
            "PUT",
            "/v1/domains/api.example",
            Some(json!({"template": {"webhook_secret": null}})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["template"]["has_webhook_secret"], false);
    assert_eq!(replaced["auto_create"], false);
    let (code, _) = rcpt(&gateway, "ann@sender.example", "dave@api.example").await;
    assert_eq!(code, 550, "auto_create is off again");

    let (status, _) = gateway.api("DELETE", "/v1/domains/api.example", None).await;
    assert_eq!(status, 204);
    let (status, _) = gateway.api("GET", "/v1/domains/api.example", None).await;
    assert_eq!(status, 404);
    // The auto-created inbox stays, an ordinary inbox.
    let (status, inbox) = gateway.api("GET", "/v1/inboxes/carol", None).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["source"], "auto");
    assert_eq!(
        send(&gateway, "carol@api.example", "still here").await.0,
        250
    );
    gateway.stop().await;
}

/// Two nodes on one PostgreSQL database get the first mail for the same new local parts at the
/// same moment: each local part makes one inbox, and every message is delivered. Runs on
/// PostgreSQL whatever the suite's backend, like the scale-out tests.
#[tokio::test]
async fn two_nodes_racing_the_first_mail_make_one_inbox() {
    const LOCAL_PARTS: usize = 8;
    let mut hook = WebhookReceiver::start(vec![]).await;
    let database_url = postgres_database_url();
    let mut options = GatewayOptions::no_webhook();
    options.database_url = Some(database_url);
    options.extra_toml = format!(
        r#"
[[domain]]
name = "race.example"
auto_create = true
[domain.template]
webhook_url = "{hook}"
webhook_secret = "{TEMPLATE_SECRET}"
"#,
        hook = hook.url()
    );
    let first = TestGateway::start(options.clone()).await;
    let second = TestGateway::start(options).await;

    let mut sends = Vec::new();
    for n in 0..LOCAL_PARTS {
        for (node, gateway) in [(0, &first), (1, &second)] {
            let smtp = gateway.smtp;
            sends.push(tokio::spawn(async move {
                let to = format!("racer{n}@race.example");
                let mut client = SmtpClient::connect(smtp).await;
                let reply = client
                    .send_message(
                        "ann@sender.example",
                        &[&to],
                        &simple_message(
                            "ann@sender.example",
                            &to,
                            &format!("n{n} via {node}"),
                            "hi",
                        ),
                    )
                    .await;
                client.cmd("QUIT").await;
                reply
            }));
        }
    }
    for send in sends {
        let (code, text) = send.await.expect("send task");
        assert_eq!(code, 250, "{text}");
    }

    let mut expected: Vec<String> = (0..LOCAL_PARTS).map(|n| format!("racer{n}")).collect();
    expected.extend(["agent".to_owned(), "other".to_owned()]);
    expected.sort();
    assert_eq!(inbox_ids(&first).await, expected);
    let mut delivered = Vec::new();
    while delivered.len() < 2 * LOCAL_PARTS {
        let got = tokio::time::timeout(Duration::from_secs(30), hook.recv_any())
            .await
            .expect("every message is delivered");
        let event = got.json();
        delivered.push((
            event["agent_id"].as_str().unwrap_or_default().to_owned(),
            event["email"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 2 * LOCAL_PARTS, "{delivered:?}");
    for n in 0..LOCAL_PARTS {
        let (status, messages) = first
            .api("GET", &format!("/v1/inboxes/racer{n}/messages"), None)
            .await;
        assert_eq!(status, 200, "{messages}");
        assert_eq!(
            messages["messages"].as_array().map(Vec::len),
            Some(2),
            "racer{n}: {messages}"
        );
    }
    // The second node's directory learns of inboxes the first made.
    eventually(
        "the other node to route to an auto-created inbox",
        || async {
            (rcpt(&second, "ann@sender.example", "racer0@race.example")
                .await
                .0
                == 250)
                .then_some(())
        },
    )
    .await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn the_dashboard_lists_domains_and_marks_auto_created_inboxes() {
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = r#"
[[domain]]
name = "example.com"
catch_all = "other"

[[domain]]
name = "agents.example"
auto_create = true
max_auto_inboxes = 7

[[domain]]
name = "closed.example"
"#
    .to_owned();
    let gateway = TestGateway::start(options).await;
    assert_eq!(send(&gateway, "made@agents.example", "hi").await.0, 250);

    let mut ui = crate::ui::Ui::new(&gateway);
    ui.login(crate::support::gateway::API_KEY).await;
    let page = ui.get("/ui/domains").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let row = |name: &str| -> String {
        let start = page
            .body
            .find(&format!(">{name}</td>"))
            .unwrap_or_else(|| panic!("a row for {name}: {}", page.body));
        let end = page.body[start..]
            .find("</tr>")
            .map_or(page.body.len(), |end| start + end);
        page.body[start..end].to_owned()
    };
    let catch_all = row("example.com");
    assert!(catch_all.contains(">catch-all<"), "{catch_all}");
    assert!(catch_all.contains("/ui/inboxes/other"), "{catch_all}");
    // agent and other have addresses at example.com.
    assert!(catch_all.contains(">2</td>"), "{catch_all}");
    let auto = row("agents.example");
    assert!(auto.contains(">auto-create<"), "{auto}");
    assert!(auto.contains("at most 7 inboxes"), "{auto}");
    assert!(auto.contains(">1</td>"), "{auto}");
    let closed = row("closed.example");
    assert!(closed.contains(">none<"), "{closed}");
    assert!(closed.contains(">0</td>"), "{closed}");

    let list = ui.get("/ui").await;
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains("href=\"/ui/domains\""),
        "admins get the link"
    );
    let made = list
        .body
        .find("href=\"/ui/inboxes/made\"")
        .expect("the auto-created inbox is listed");
    let made_row = &list.body[made..made + list.body[made..].find("</td>").unwrap_or(0)];
    assert!(made_row.contains("auto-created"), "{made_row}");
    let agent = list
        .body
        .find("href=\"/ui/inboxes/agent\"")
        .expect("agent is listed");
    let agent_row = &list.body[agent..agent + list.body[agent..].find("</td>").unwrap_or(0)];
    assert!(!agent_row.contains("auto-created"), "{agent_row}");

    // An inbox key sees no domains page, as it sees no other inbox.
    let (status, created) = gateway
        .api("POST", "/v1/inboxes/agent/keys", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{created}");
    let mut inbox_ui = crate::ui::Ui::new(&gateway);
    inbox_ui
        .login(created["key"].as_str().expect("an inbox key"))
        .await;
    assert_eq!(inbox_ui.get("/ui/domains").await.status, 404);
    assert!(!inbox_ui.get("/ui").await.body.contains("/ui/domains"));
    gateway.stop().await;
}

/// The config file owns its domains: a restart rewrites them and drops one it no longer
/// declares, while a domain the API made stays.
#[tokio::test]
async fn a_restart_syncs_config_domains_and_keeps_api_ones() {
    use mxhook::config::Config;

    use crate::support::gateway::config_toml;

    let data = tempfile::tempdir().expect("tempdir");
    let start = |extra: &str| {
        let mut options = GatewayOptions::no_webhook();
        options.extra_toml = extra.to_owned();
        let config = Config::from_toml_str(&config_toml(data.path(), &options)).expect("config");
        TestGateway::start_with(tempfile::tempdir().expect("tempdir"), config)
    };
    let gateway = start(
        "[[domain]]\nname = \"kept.example\"\ncatch_all = \"agent\"\n\
         [[domain]]\nname = \"dropped.example\"\ncatch_all = \"agent\"\n",
    )
    .await;
    let (status, body) = gateway
        .api(
            "PUT",
            "/v1/domains/api.example",
            Some(json!({"catch_all": "other"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        rcpt(&gateway, "ann@sender.example", "x@dropped.example")
            .await
            .0,
        250
    );
    gateway.stop().await;

    let gateway = start("[[domain]]\nname = \"kept.example\"\ncatch_all = \"other\"\n").await;
    let (_, list) = gateway.api("GET", "/v1/domains", None).await;
    let domains: Vec<(&str, &str, &str)> = list["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .map(|domain| {
            (
                domain["name"].as_str().unwrap_or_default(),
                domain["source"].as_str().unwrap_or_default(),
                domain["catch_all"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        domains,
        [
            ("api.example", "api", "other"),
            ("kept.example", "config", "other")
        ]
    );
    let (code, _) = rcpt(&gateway, "ann@sender.example", "x@dropped.example").await;
    assert_eq!(code, 550);
    gateway.stop().await;
}

/// A sender at its hard rate limit gets `451 4.7.1` for a new local part before anything is
/// made: auto-create never makes an inbox for mail that would be refused.
#[tokio::test]
async fn a_sender_at_the_hard_limit_creates_nothing() {
    let mut options = GatewayOptions::no_webhook();
    options.extra_toml = r#"
[rate_limit]
sender_soft = 1
sender_hard = 1

[[domain]]
name = "agents.example"
auto_create = true
"#
    .to_owned();
    let gateway = TestGateway::start(options).await;
    assert_eq!(
        send(&gateway, "agent@example.com", "counts once").await.0,
        250
    );
    let (code, text) = rcpt(&gateway, "ann@sender.example", "fresh@agents.example").await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7.1"), "{text}");
    assert_eq!(inbox_ids(&gateway).await, ["agent", "other"]);
    // Another sender is under its limit and makes the inbox.
    let (code, text) = rcpt(&gateway, "bob@elsewhere.example", "fresh@agents.example").await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(inbox_ids(&gateway).await, ["agent", "fresh", "other"]);
    gateway.stop().await;
}
