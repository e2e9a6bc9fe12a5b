//! `GET /openapi.json` against the code and the wire: every routed path is documented, the
//! document passes an independent validator, and real responses of every route the test
//! exercises are compared with their documented schemas both ways (no undocumented field, no
//! missing required field, no wrong type).

use serde_json::{Value, json};

use crate::support::gateway::API_KEY;
use crate::support::{GatewayOptions, TestGateway, WebhookReceiver, eventually};

/// Every `(method, path)` the API router registers, read from the `.route(…)` calls in
/// `src/http/` and `src/http/api/`, so a route added there without an OpenAPI entry fails the
/// test below.
fn api_routes() -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let sources = ["src/http", "src/http/api"].into_iter().flat_map(|dir| {
        std::fs::read_dir(crate::support::repo_path(dir))
            .expect("route source directory")
            .flatten()
            .filter(|entry| entry.path().is_file())
    });
    for entry in sources {
        let source = std::fs::read_to_string(entry.path()).expect("read source");
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(idx, _)| idx)
                .expect("balanced .route(");
            let call = &rest[..end];
            let path = call.split('"').nth(1).expect("a path literal").to_owned();
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = call.match_indices(&format!("{method}(")).any(|(idx, _)| {
                    call[..idx]
                        .chars()
                        .last()
                        .is_none_or(|before| !(before.is_alphanumeric() || before == '_'))
                });
                if called {
                    routes.push((method.to_owned(), path.clone()));
                }
            }
        }
    }
    routes.sort();
    routes
}

/// The places where a real response met free-form content, and why each may be free-form.
/// A stored event's `email` and `auth` have schemas of their own; only calendar `booking` and
/// `payload` are free-form by the README ("calendar `booking` and `payload` are free-form, see
/// SPEC.md"), and a mail event has neither. The document itself is described by the OpenAPI
/// meta-schema, which the validator at the end of the test holds it to. Anywhere else,
/// free-form content fails.
const FREE_FORM: &[&str] = &["GET /openapi.json"];

#[tokio::test]
async fn openapi_document_is_valid_and_lists_every_route() {
    let mut receiver = WebhookReceiver::start(Vec::new()).await;
    let gateway = TestGateway::start(GatewayOptions::webhook(receiver.url())).await;
    let (status, document) = gateway.api_as("", "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"]
            .as_str()
            .expect("version")
            .starts_with("3.1")
    );
    let routes = api_routes();
    assert!(
        routes.contains(&("post".to_owned(), "/v1/inboxes".to_owned()))
            && routes.contains(&(
                "delete".to_owned(),
                "/v1/inboxes/{id}/keys/{key_id}".to_owned()
            ))
            && routes.len() > 25,
        "the route scan found too little: {routes:?}"
    );
    for (method, path) in &routes {
        let operation = &document["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} is routed but not in /openapi.json"
        );
        assert!(
            operation["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let request_body = &document["paths"]["/v1/inboxes/{id}/webhook"]["put"]["requestBody"];
    let schema_ref = request_body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("PUT webhook body schema");
    let schema_name = schema_ref.rsplit('/').next().expect("name");
    let properties = &document["components"]["schemas"][schema_name]["properties"];
    for field in ["url", "enabled", "rotate_secret", "signature", "payload"] {
        assert!(
            properties[field].is_object(),
            "{field} missing in {properties}"
        );
    }

    // Every failure is documented with the one error body (health answers 503 with its own).
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        schema == "#/components/schemas/ErrorBody"
                            || (["/healthz", "/readyz"].contains(&path.as_str())
                                && status == "503"),
                        "{method} {path} {status}: not the error body: {response}"
                    );
                }
            }
            let internal = &operation["responses"]["500"];
            assert_eq!(
                internal.is_object(),
                !["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str()),
                "{method} {path}: 500 documented where it can happen"
            );
        }
    }

    // The documented schemas describe the real bytes, both ways: every field a real response
    // carries is documented with its type, and every field the document requires is there.
    // The calls below walk the API so that optional parts (a webhook with stats, a freshly
    // issued secret, a non-empty list) are in the answers too.
    let mut seen = Responses::new(&gateway, &document);
    seen.check("GET", "/openapi.json", "/openapi.json", "", None)
        .await;
    seen.check("GET", "/healthz", "/healthz", "", None).await;
    seen.check("GET", "/readyz", "/readyz", "", None).await;

    gateway
        .send_simple("agent@example.com", "documented", "a@sender.example")
        .await;
    receiver.recv().await;
    let delivery = eventually("the delivery to be recorded as delivered", || async {
        let (_, list) = gateway
            .api("GET", "/v1/inboxes/agent/deliveries", None)
            .await;
        let first = list["deliveries"][0].clone();
        (first["status"] == "delivered").then_some(first)
    })
    .await;
    let delivery_id = delivery["id"].as_str().expect("delivery id").to_owned();
    let message_id = delivery["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();

    // Inboxes, their webhook and keys.
    let created = seen
        .check(
            "POST",
            "/v1/inboxes",
            "/v1/inboxes",
            API_KEY,
            Some(json!({"id": "doc", "name": "Documented", "addresses": ["doc@example.com"]})),
        )
        .await;
    assert_eq!(created["id"], "doc", "{created}");
    seen.check("GET", "/v1/inboxes", "/v1/inboxes", API_KEY, None)
        .await;
    seen.check(
        "PATCH",
        "/v1/inboxes/doc",
        "/v1/inboxes/{id}",
        API_KEY,
        Some(json!({"block_senders": ["spam.example"], "policy_action": "quarantine"})),
    )
    .await;
    let webhook_url = receiver.url();
    let set = seen
        .check(
            "PUT",
            "/v1/inboxes/doc/webhook",
            "/v1/inboxes/{id}/webhook",
            API_KEY,
            Some(json!({"url": webhook_url, "rotate_secret": false})),
        )
        .await;
    assert!(
        set["signing_secret"].is_string(),
        "first setup shows the secret: {set}"
    );
    seen.check("GET", "/v1/inboxes/doc", "/v1/inboxes/{id}", API_KEY, None)
        .await;
    let webhook = seen
        .check(
            "GET",
            "/v1/inboxes/agent/webhook",
            "/v1/inboxes/{id}/webhook",
            API_KEY,
            None,
        )
        .await;
    assert!(webhook["stats"].is_object(), "GET adds stats: {webhook}");
    let endpoints = seen
        .check(
            "GET",
            "/v1/inboxes/agent/endpoints",
            "/v1/inboxes/{id}/endpoints",
            API_KEY,
            None,
        )
        .await;
    assert!(
        endpoints.as_array().is_some_and(|list| !list.is_empty()),
        "the attempted endpoint is listed: {endpoints}"
    );
    let key = seen
        .check(
            "POST",
            "/v1/inboxes/doc/keys",
            "/v1/inboxes/{id}/keys",
            API_KEY,
            Some(json!({"name": "bot"})),
        )
        .await;
    let key_id = key["id"].as_str().expect("key id").to_owned();
    let inbox_key = key["key"].as_str().expect("the key").to_owned();
    seen.check(
        "GET",
        "/v1/inboxes/doc/keys",
        "/v1/inboxes/{id}/keys",
        API_KEY,
        None,
    )
    .await;
    // An inbox key on an admin-only action: the documented 403.
    seen.check(
        "GET",
        "/v1/inboxes/doc/keys",
        "/v1/inboxes/{id}/keys",
        &inbox_key,
        None,
    )
    .await;

    // Messages and deliveries.
    let messages = seen
        .check(
            "GET",
            "/v1/inboxes/agent/messages",
            "/v1/inboxes/{id}/messages",
            API_KEY,
            None,
        )
        .await;
    assert_eq!(messages["messages"][0]["id"], message_id.as_str());
    seen.check(
        "GET",
        &format!("/v1/messages/{message_id}"),
        "/v1/messages/{id}",
        API_KEY,
        None,
    )
    .await;
    seen.check("GET", "/v1/deliveries", "/v1/deliveries", API_KEY, None)
        .await;
    seen.check(
        "GET",
        "/v1/inboxes/agent/deliveries",
        "/v1/inboxes/{id}/deliveries",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        &format!("/v1/deliveries/{delivery_id}"),
        "/v1/deliveries/{id}",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        &format!("/v1/deliveries/{delivery_id}/attempts"),
        "/v1/deliveries/{id}/attempts",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        &format!("/v1/deliveries/{delivery_id}/attempts/1/request"),
        "/v1/deliveries/{id}/attempts/{attempt}/request",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        &format!("/v1/deliveries/{delivery_id}/attempts/99/request"),
        "/v1/deliveries/{id}/attempts/{attempt}/request",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        &format!("/v1/deliveries/{delivery_id}/attempts/first/request"),
        "/v1/deliveries/{id}/attempts/{attempt}/request",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "POST",
        &format!("/v1/deliveries/{delivery_id}/resend"),
        "/v1/deliveries/{id}/resend",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "POST",
        "/v1/inboxes/agent/deliveries/resend-dead",
        "/v1/inboxes/{id}/deliveries/resend-dead",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "POST",
        "/v1/inboxes/agent/test-event",
        "/v1/inboxes/{id}/test-event",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "POST",
        "/v1/inboxes/agent/deliveries/recover",
        "/v1/inboxes/{id}/deliveries/recover",
        API_KEY,
        Some(json!({"since": "2000-01-01T00:00:00Z", "status": "any"})),
    )
    .await;
    seen.check(
        "POST",
        "/v1/inboxes/agent/deliveries/recover",
        "/v1/inboxes/{id}/deliveries/recover",
        API_KEY,
        Some(json!({"since": "yesterday"})),
    )
    .await;
    seen.check(
        "POST",
        &format!("/v1/messages/{message_id}/send-to"),
        "/v1/messages/{id}/send-to",
        API_KEY,
        Some(json!({"url": receiver.url(), "payload": "event-data"})),
    )
    .await;
    // The walk's gateway has no smarthost: a reply that passes its checks is refused with 409.
    seen.check(
        "POST",
        &format!("/v1/messages/{message_id}/reply"),
        "/v1/messages/{id}/reply",
        API_KEY,
        Some(json!({"text": "Thanks!"})),
    )
    .await;
    seen.check(
        "POST",
        &format!("/v1/messages/{message_id}/reply"),
        "/v1/messages/{id}/reply",
        API_KEY,
        Some(json!({"text": ""})),
    )
    .await;
    // Nothing listens on port 1: the documented 502.
    seen.check(
        "POST",
        &format!("/v1/messages/{message_id}/send-to"),
        "/v1/messages/{id}/send-to",
        API_KEY,
        Some(json!({"url": "http://127.0.0.1:1/hook"})),
    )
    .await;

    // Notification rules, with both channels, so the rule's nested objects are compared too.
    let rules = seen
        .check(
            "PUT",
            "/v1/inboxes/agent/notifications",
            "/v1/inboxes/{id}/notifications",
            API_KEY,
            Some(json!([{
                "name": "verified only",
                "filters": {"sender_verified": true, "trust_tiers": ["trusted"]},
                "channels": {
                    "email": {"enabled": true, "recipients": ["ops@example.org"]},
                    "webhook": {"url": webhook_url, "custom_headers": {"x-team": "ops"},
                                "timeout_s": 5}
                }
            }])),
        )
        .await;
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    seen.check(
        "GET",
        "/v1/inboxes/agent/notifications",
        "/v1/inboxes/{id}/notifications",
        API_KEY,
        None,
    )
    .await;

    // Provider ingress settings.
    seen.check(
        "PUT",
        "/v1/inboxes/agent/ingress/calcom",
        "/v1/inboxes/{id}/ingress/{provider}",
        API_KEY,
        Some(json!({"secret": "calcom-secret"})),
    )
    .await;
    seen.check(
        "GET",
        "/v1/inboxes/agent/ingress",
        "/v1/inboxes/{id}/ingress",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "PUT",
        "/v1/inboxes/agent/ingress/event-types",
        "/v1/inboxes/{id}/ingress/event-types",
        API_KEY,
        Some(json!({"event_types": ["calcom:42"]})),
    )
    .await;
    seen.check(
        "GET",
        "/v1/inboxes/agent/ingress/event-types",
        "/v1/inboxes/{id}/ingress/event-types",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "DELETE",
        "/v1/inboxes/agent/ingress/event-types",
        "/v1/inboxes/{id}/ingress/event-types",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "DELETE",
        "/v1/inboxes/agent/ingress/calcom",
        "/v1/inboxes/{id}/ingress/{provider}",
        API_KEY,
        None,
    )
    .await;

    // Errors: one shape, documented on every 4xx.
    seen.check(
        "GET",
        "/v1/deliveries/dlv_missing",
        "/v1/deliveries/{id}",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "GET",
        "/v1/deliveries?status=lost",
        "/v1/deliveries",
        API_KEY,
        None,
    )
    .await;
    seen.check("GET", "/v1/inboxes", "/v1/inboxes", "wrong-key", None)
        .await;
    seen.check(
        "POST",
        "/v1/inboxes",
        "/v1/inboxes",
        API_KEY,
        Some(json!({"id": "taken", "addresses": ["doc@example.com"]})),
    )
    .await;
    seen.check(
        "POST",
        "/v1/inboxes",
        "/v1/inboxes",
        API_KEY,
        Some(json!({"addresses": "not-a-list"})),
    )
    .await;

    // A provider webhook call that is not one (no signature header).
    seen.check(
        "POST",
        "/v1/ingress/calcom",
        "/v1/ingress/calcom",
        "",
        Some(json!({"triggerEvent": "BOOKING_CREATED", "payload": {"uid": "b1"}})),
    )
    .await;

    // Deletions answer 204 without a body.
    seen.check(
        "DELETE",
        &format!("/v1/inboxes/doc/keys/{key_id}"),
        "/v1/inboxes/{id}/keys/{key_id}",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "DELETE",
        "/v1/inboxes/doc/webhook",
        "/v1/inboxes/{id}/webhook",
        API_KEY,
        None,
    )
    .await;
    seen.check(
        "DELETE",
        "/v1/inboxes/doc",
        "/v1/inboxes/{id}",
        API_KEY,
        None,
    )
    .await;

    // Domains: the template view is typed, the secret write-only.
    seen.check(
        "PUT",
        "/v1/domains/doc.example",
        "/v1/domains/{name}",
        API_KEY,
        Some(json!({"auto_create": true, "template": {"webhook_secret": "s"}})),
    )
    .await;
    seen.check("GET", "/v1/domains", "/v1/domains", API_KEY, None)
        .await;
    seen.check(
        "PUT",
        "/v1/domains/doc.example",
        "/v1/domains/{name}",
        API_KEY,
        Some(json!({"catch_all": "nobody"})),
    )
    .await;
    seen.check(
        "DELETE",
        "/v1/domains/doc.example",
        "/v1/domains/{name}",
        API_KEY,
        None,
    )
    .await;

    // Each status the walk above meant to reach was reached (a call that answered something
    // else would have compared the wrong schema and proved little).
    for expected in [
        "POST /v1/inboxes 201",
        "GET /v1/inboxes/{id}/keys 403",
        "GET /v1/deliveries/{id} 404",
        "GET /v1/deliveries 400",
        "GET /v1/inboxes 401",
        "POST /v1/inboxes 409",
        "POST /v1/inboxes 422",
        "POST /v1/deliveries/{id}/resend 202",
        "GET /v1/deliveries/{id}/attempts/{attempt}/request 200",
        "GET /v1/deliveries/{id}/attempts/{attempt}/request 404",
        "GET /v1/deliveries/{id}/attempts/{attempt}/request 400",
        "DELETE /v1/inboxes/{id} 204",
        "POST /v1/ingress/calcom 400",
        "POST /v1/inboxes/{id}/deliveries/recover 202",
        "POST /v1/inboxes/{id}/deliveries/recover 400",
        "POST /v1/messages/{id}/send-to 200",
        "POST /v1/messages/{id}/send-to 502",
        "POST /v1/messages/{id}/reply 409",
        "POST /v1/messages/{id}/reply 422",
        "PUT /v1/domains/{name} 201",
        "GET /v1/domains 200",
        "PUT /v1/domains/{name} 422",
        "DELETE /v1/domains/{name} 204",
    ] {
        assert!(
            seen.statuses.iter().any(|status| status == expected),
            "`{expected}` was not among {:?}",
            seen.statuses
        );
    }
    // Free-form content is accepted only where it is meant to be, and those places were
    // reached (so the walk did go down into the stored event).
    let mut free_form = seen.free_form.clone();
    free_form.sort();
    free_form.dedup();
    let mut expected: Vec<String> = FREE_FORM.iter().map(|place| (*place).to_owned()).collect();
    expected.sort();
    assert_eq!(free_form, expected, "free-form places");

    // An independent validator, against the OpenAPI 3.1 meta-schema.
    let file = gateway.dir.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).expect("write document");
    let output = tokio::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "openapi-spec-validator rejects the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    gateway.stop().await;
}

/// Calls made against the gateway, each compared with the document.
struct Responses<'a> {
    gateway: &'a TestGateway,
    document: &'a Value,
    /// `METHOD template status` of every call, to check the intended answers were reached.
    statuses: Vec<String>,
    /// Where (`METHOD template.field…`) a response met free-form content.
    free_form: Vec<String>,
}

impl<'a> Responses<'a> {
    fn new(gateway: &'a TestGateway, document: &'a Value) -> Self {
        Self {
            gateway,
            document,
            statuses: Vec::new(),
            free_form: Vec::new(),
        }
    }

    /// Makes the call and compares the answer with the schema documented for its status; a
    /// status that is not documented fails. Returns the body.
    async fn check(
        &mut self,
        method: &str,
        url: &str,
        template: &str,
        key: &str,
        body: Option<Value>,
    ) -> Value {
        let (status, answer) = self.gateway.api_as(key, method, url, body).await;
        let what = format!("{method} {url} ({status})");
        let response = &self.document["paths"][template][method.to_lowercase()]["responses"]
            [status.to_string()];
        assert!(
            response.is_object(),
            "{what}: this status is not documented: {answer}"
        );
        self.statuses.push(format!("{method} {template} {status}"));
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            // A documented answer without a JSON body (204): there must be none.
            assert!(
                response.get("content").is_none() && answer.is_null(),
                "{what}: documented without a JSON body, answered {answer}"
            );
            return answer;
        };
        if status >= 400 {
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{what}: not the error schema"
            );
        }
        let found = check_against_schema(self.document, schema, &answer);
        assert!(
            found.errors.is_empty(),
            "{what} does not match its documented schema:\n  {}\nbody: {answer}",
            found.errors.join("\n  ")
        );
        self.free_form.extend(
            found
                .free_form
                .iter()
                .map(|place| format!("{method} {template}{place}")),
        );
        answer
    }
}

/// What comparing a JSON value with a schema found.
#[derive(Debug, Default, Clone)]
pub(crate) struct SchemaCheck {
    /// Each disagreement, with where in the value it is (`.field[index]…`).
    pub(crate) errors: Vec<String>,
    /// Where the value met a schema that explicitly allows anything there (array indices
    /// written `[]`, so one place is one entry).
    free_form: Vec<String>,
}

/// Compares `value` with `schema` both ways: a field the schema does not document, a required
/// field that is missing, a type (or enum value) that does not match, an array item that does
/// not match `items`: each is an error. Content is accepted without a walk only where the
/// schema says it is free-form (the empty schema, or `additionalProperties: true`), and those
/// places are returned so the caller can hold them to the ones it allows.
pub(crate) fn check_against_schema(document: &Value, schema: &Value, value: &Value) -> SchemaCheck {
    let mut found = SchemaCheck::default();
    walk(document, schema, value, "", &mut found);
    found.free_form.dedup();
    found
}

/// A schema with its `$ref` followed (within this document).
fn resolve_schema(document: &Value, schema: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve_schema(
                document,
                document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {reference}")),
            )
        }
        None => schema.clone(),
    }
}

/// The JSON type of a value, as a schema's `type` names it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The keywords that constrain a value; a schema with none of them allows anything.
const CONSTRAINING: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "oneOf",
    "anyOf",
    "allOf",
];

/// [`check_against_schema`] at one place (`at`) of the value.
fn walk(document: &Value, schema: &Value, value: &Value, at: &str, found: &mut SchemaCheck) {
    let schema = resolve_schema(document, schema);
    let place = if at.is_empty() { "the body" } else { at };
    let Some(keywords) = schema.as_object() else {
        match schema {
            // `true` is the empty schema, written short: free-form.
            Value::Bool(true) => found.free_form.push(free_form_place(at)),
            other => found
                .errors
                .push(format!("{place}: schema {other} allows nothing")),
        }
        return;
    };
    if !CONSTRAINING
        .iter()
        .any(|keyword| keywords.contains_key(*keyword))
    {
        // The empty schema (a description at most): explicitly anything.
        found.free_form.push(free_form_place(at));
        return;
    }
    // OpenAPI 3.0's spelling of "or null", still met in 3.1 documents.
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if keywords.contains_key("allOf") {
        // serde's `flatten`: the parts are one object together, so their properties are merged
        // (checked part by part, each would call the others' fields undocumented).
        let merged = merge_all_of(document, &schema);
        walk(document, &merged, value, at, found);
        return;
    }
    for keyword in ["oneOf", "anyOf"] {
        let Some(variants) = schema[keyword].as_array() else {
            continue;
        };
        let results: Vec<SchemaCheck> = variants
            .iter()
            .map(|variant| {
                let mut inner = SchemaCheck::default();
                walk(document, variant, value, at, &mut inner);
                inner
            })
            .collect();
        let matching: Vec<&SchemaCheck> = results
            .iter()
            .filter(|result| result.errors.is_empty())
            .collect();
        let fits = if keyword == "oneOf" {
            matching.len() == 1
        } else {
            !matching.is_empty()
        };
        match (fits, matching.first()) {
            (true, Some(first)) => found.free_form.extend(first.free_form.iter().cloned()),
            _ => found.errors.push(format!(
                "{place}: fits {} of the {} {keyword} variants, which say: {}",
                matching.len(),
                variants.len(),
                results
                    .iter()
                    .flat_map(|result| result.errors.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        found.errors.push(format!(
            "{place}: {} is not one of {allowed:?}",
            shown(value)
        ));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        found.errors.push(format!(
            "{place}: {} is not the constant {constant}",
            shown(value)
        ));
    }
    let mut types: Vec<&str> = match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // Object and array keywords without a `type` still say what the value is.
    if types.is_empty() {
        if ["properties", "required", "additionalProperties"]
            .iter()
            .any(|keyword| keywords.contains_key(*keyword))
        {
            types.push("object");
        } else if keywords.contains_key("items") {
            types.push("array");
        }
    }
    let actual = json_type(value);
    if !types.is_empty()
        && !types
            .iter()
            .any(|name| *name == actual || (*name == "number" && actual == "integer"))
    {
        found.errors.push(format!(
            "{place}: {actual} {} where the document says {}",
            shown(value),
            types.join(" or ")
        ));
        return;
    }
    match value {
        Value::Object(fields) if types.contains(&"object") => {
            walk_object(document, &schema, fields, at, found);
        }
        Value::Array(items) if types.contains(&"array") => match schema.get("items") {
            Some(item_schema) => {
                for (idx, item) in items.iter().enumerate() {
                    walk(document, item_schema, item, &format!("{at}[{idx}]"), found);
                }
            }
            None => found
                .errors
                .push(format!("{place}: an array documented without `items`")),
        },
        _ => {}
    }
}

fn walk_object(
    document: &Value,
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    at: &str,
    found: &mut SchemaCheck,
) {
    let place = if at.is_empty() { "the body" } else { at };
    let empty = serde_json::Map::new();
    let properties = schema["properties"].as_object().unwrap_or(&empty);
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().expect("required names are strings");
        if !fields.contains_key(name) {
            found
                .errors
                .push(format!("{place}: required field `{name}` is missing"));
        }
    }
    let additional = schema.get("additionalProperties");
    if properties.is_empty() && additional.is_none() {
        // An object the document says nothing about is not a licence for anything: free-form
        // content must be asked for (`additionalProperties: true`).
        found.errors.push(format!(
            "{place}: an object documented without properties or additionalProperties"
        ));
        return;
    }
    if additional == Some(&Value::Bool(true)) {
        found.free_form.push(free_form_place(at));
    }
    for (name, field) in fields {
        let field_at = format!("{at}.{name}");
        match (properties.get(name), additional) {
            (Some(property), _) => walk(document, property, field, &field_at, found),
            (None, Some(Value::Bool(true))) => {}
            (None, Some(additional @ Value::Object(_))) => {
                walk(document, additional, field, &field_at, found);
            }
            (None, _) => found.errors.push(format!(
                "{place}: field `{name}` is not documented (the schema has {:?})",
                properties.keys().collect::<Vec<_>>()
            )),
        }
    }
}

/// A value as an error message shows it: short values whole, long ones cut.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A place with its array indices left out: `.list[3].x` is `.list[].x`.
fn free_form_place(at: &str) -> String {
    let mut out = String::with_capacity(at.len());
    let mut in_index = false;
    for c in at.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// One object schema from an `allOf`: the parts' properties and `required` together.
fn merge_all_of(document: &Value, schema: &Value) -> Value {
    let mut merged = schema.clone();
    let object = merged.as_object_mut().expect("an object schema");
    let parts = object.remove("allOf").expect("allOf");
    let mut properties = object
        .remove("properties")
        .and_then(|p| p.as_object().cloned())
        .unwrap_or_default();
    let mut required: Vec<Value> = object
        .remove("required")
        .and_then(|r| r.as_array().cloned())
        .unwrap_or_default();
    for part in parts.as_array().expect("allOf is a list") {
        let mut part = resolve_schema(document, part);
        if part.get("allOf").is_some() {
            part = merge_all_of(document, &part);
        }
        for keyword in ["oneOf", "anyOf", "enum", "const", "items"] {
            assert!(
                part.get(keyword).is_none(),
                "an allOf part with `{keyword}`, which this comparison does not merge: {part}"
            );
        }
        assert!(
            part["type"].is_null() || part["type"] == "object",
            "an allOf part that is not an object: {part}"
        );
        properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
        required.extend(part["required"].as_array().cloned().unwrap_or_default());
        if let Some(additional) = part.get("additionalProperties") {
            object.insert("additionalProperties".to_owned(), additional.clone());
        }
    }
    object.insert("type".to_owned(), json!("object"));
    object.insert("properties".to_owned(), Value::Object(properties));
    object.insert("required".to_owned(), Value::Array(required));
    merged
}

/// The comparison itself can fail: each kind of disagreement is caught, each thing the
/// document allows is accepted. (Over a hand-made document, so no gateway is needed.)
#[test]
fn the_schema_comparison_catches_missing_required_fields_wrong_types_and_undocumented_fields() {
    let document = json!({"components": {"schemas": {
        "Item": {
            "type": "object",
            "required": ["id", "count", "tags", "kind"],
            "properties": {
                "id": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"type": ["number", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "kind": {"type": "string", "enum": ["a", "b"]},
                "parent": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Parent"}]},
                "old_style": {"type": "string", "nullable": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "additionalProperties": true},
                "opaque": {"type": "object"},
                "anything": {}
            }
        },
        "Parent": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
        "Flat": {"allOf": [
            {"$ref": "#/components/schemas/Parent"},
            {"type": "object", "required": ["more"], "properties": {"more": {"type": "boolean"}}}
        ]}
    }}});
    let item = json!({"$ref": "#/components/schemas/Item"});
    let good = json!({
        "id": "x", "count": 3, "ratio": 0.5, "tags": ["t"], "kind": "a",
        "parent": {"id": "p"}, "old_style": null, "labels": {"k": "v"},
        "extra": {"any": [1, {"thing": true}]}, "anything": [null]
    });
    let check = |value: &Value| check_against_schema(&document, &item, value);
    let passed = check(&good);
    assert!(passed.errors.is_empty(), "{:?}", passed.errors);
    let mut free_form = passed.free_form.clone();
    free_form.sort();
    assert_eq!(free_form, [".anything", ".extra"]);
    let null_parent =
        json!({"id": "x", "count": 0, "tags": [], "kind": "b", "parent": null, "ratio": null});
    assert!(check(&null_parent).errors.is_empty());

    // Each change breaks exactly the promise it names.
    // What is changed, the change, and a part of the error it must cause.
    type Breakage = (&'static str, fn(&mut Value), &'static str);
    let broken: [Breakage; 12] = [
        (
            "a required field removed",
            |v| {
                v.as_object_mut().expect("an object").remove("count");
            },
            "required field `count` is missing",
        ),
        (
            "a string where an integer is documented",
            |v| v["count"] = json!("3"),
            ".count: string \"3\" where the document says integer",
        ),
        (
            "a fraction where an integer is documented",
            |v| v["count"] = json!(1.5),
            ".count: number 1.5 where the document says integer",
        ),
        (
            "an undocumented field",
            |v| v["surprise"] = json!(1),
            "field `surprise` is not documented",
        ),
        (
            "null where null is not allowed",
            |v| v["id"] = Value::Null,
            ".id: null null where the document says string",
        ),
        (
            "an array item of the wrong type",
            |v| v["tags"] = json!(["t", 7]),
            ".tags[1]: integer 7 where the document says string",
        ),
        (
            "a value outside the enum",
            |v| v["kind"] = json!("c"),
            ".kind: \"c\" is not one of",
        ),
        (
            "a oneOf variant with a field missing",
            |v| v["parent"] = json!({}),
            ".parent: fits 0 of the 2 oneOf variants",
        ),
        (
            "a oneOf variant with an undocumented field",
            |v| v["parent"] = json!({"id": "p", "other": 1}),
            "field `other` is not documented",
        ),
        (
            "an additionalProperties value of the wrong type",
            |v| v["labels"] = json!({"k": 1}),
            ".labels.k: integer 1 where the document says string",
        ),
        (
            "content in an object documented without properties",
            |v| v["opaque"] = json!({"a": 1}),
            ".opaque: an object documented without properties or additionalProperties",
        ),
        (
            "an old-style nullable of the wrong type",
            |v| v["old_style"] = json!(false),
            ".old_style: boolean false where the document says string",
        ),
    ];
    for (what, change, expected) in broken {
        let mut value = good.clone();
        change(&mut value);
        let errors = check(&value).errors;
        assert!(
            errors.iter().any(|error| error.contains(expected)),
            "{what}: expected an error with `{expected}`, got {errors:?}"
        );
    }

    // allOf (serde flatten): the parts together, both ways.
    let flat = json!({"$ref": "#/components/schemas/Flat"});
    let flat_check = |value: Value| check_against_schema(&document, &flat, &value).errors;
    assert!(flat_check(json!({"id": "p", "more": true})).is_empty());
    assert!(
        flat_check(json!({"id": "p"}))
            .iter()
            .any(|e| e.contains("`more` is missing"))
    );
    assert!(
        flat_check(json!({"id": "p", "more": true, "less": 1}))
            .iter()
            .any(|e| e.contains("`less` is not documented"))
    );
    assert!(
        flat_check(json!({"id": 1, "more": true}))
            .iter()
            .any(|e| e.contains(".id: integer 1 where the document says string"))
    );
}
