//! `GET /openapi.json`: the one OpenAPI 3.1 document of the listener (the API and provider
//! ingress), generated from the route handlers' `#[utoipa::path]` attributes and the request
//! types, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::api::{
    deliveries, domains, events, health, inboxes, ingress, keys, lifecycle, messages, metrics,
    mta_sts, notifications, recover, reply, send_to, webhook,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mxhook management API",
        description = "Inboxes, webhooks, notification rules, API keys, messages and deliveries. \
                       Every /v1 route and /metrics need `Authorization: Bearer <key>`."
    ),
    paths(
        health::healthz,
        health::readyz,
        mta_sts::policy,
        document,
        metrics::metrics,
        messages::get_message,
        messages::get_raw_message,
        lifecycle::erase_message,
        lifecycle::get_attachment,
        lifecycle::release_message,
        lifecycle::get_signed_attachment,
        lifecycle::rotate_url_key,
        send_to::send_to,
        reply::reply,
        deliveries::list_deliveries,
        deliveries::get_delivery,
        deliveries::list_attempts,
        deliveries::get_attempt_request,
        deliveries::get_attempt_request_body,
        deliveries::resend_delivery,
        inboxes::list_inboxes,
        inboxes::create_inbox,
        inboxes::get_inbox,
        inboxes::update_inbox,
        inboxes::delete_inbox,
        webhook::get_webhook,
        webhook::list_endpoints,
        webhook::put_webhook,
        webhook::delete_webhook,
        notifications::get_notifications,
        notifications::put_notifications,
        keys::create_key,
        keys::list_keys,
        keys::delete_key,
        messages::list_messages,
        events::stream_events,
        super::mcp::mcp_endpoint,
        inboxes::list_deliveries,
        inboxes::resend_dead,
        recover::recover,
        inboxes::send_test_event,
        super::ingress::mailersend,
        super::ingress::sendgrid,
        super::ingress::calcom,
        super::ingress::calendly,
        ingress::list_secrets,
        ingress::set_secret,
        ingress::delete_secret,
        ingress::get_event_types,
        ingress::put_event_types,
        ingress::delete_event_types,
        domains::list_domains,
        domains::get_domain,
        domains::put_domain,
        domains::delete_domain,
    ),
    components(schemas(
        crate::event::MailEvent,
        crate::event::QuarantinedEvent,
        crate::event::CalendarEvent,
        crate::event::DeliveryDead,
        crate::event::EndpointDisabled,
    )),
    modifiers(&BearerAuth, &EventCatalogue),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Declares the Bearer scheme every operation refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The event types (SPEC "Event types and subscriptions") as the `WebhookEventType` schema: what the
/// inbox webhook's `events` and rules' `filters.event_types` name, besides `prefix.*` and `*`.
/// Each type's body is its own schema: `MailReceivedEvent`, `MailQuarantinedEvent`,
/// `CalendarBookingEvent` (the three `calendar.booking.*`), `DeliveryDeadEvent` and
/// `EndpointDisabledEvent`.
struct EventCatalogue;

impl Modify for EventCatalogue {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(
            "WebhookEventType".to_owned(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "An event type. Bodies: mail.received MailReceivedEvent, mail.quarantined \
                     MailQuarantinedEvent, calendar.booking.* CalendarBookingEvent, \
                     delivery.dead DeliveryDeadEvent, endpoint.disabled EndpointDisabledEvent.",
                ))
                .enum_values(Some(crate::model::EVENT_TYPES))
                .into(),
        );
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    summary = "This OpenAPI document",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1 JSON", body = serde_json::Value))
)]
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    document_internal_errors(&mut document);
    document_undecodable_paths(&mut document);
    // MailerSend users keep the route path they already configured; it is the same handler,
    // documented under its own operation id (ids must be unique in a document).
    if let Some(mut alias) = document
        .paths
        .paths
        .get("/v1/ingress/mailersend/inbound")
        .cloned()
    {
        if let Some(operation) = alias.post.as_mut() {
            operation.operation_id = Some("mailersend_at_its_known_path".to_owned());
        }
        document
            .paths
            .paths
            .insert("/api/v1/webhooks/mailersend/inbound".to_owned(), alias);
    }
    Json(document)
}

/// Paths that never answer 500: they touch nothing that can fail that way (health answers 503).
const NO_INTERNAL_ERROR: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// Adds the 500 answer (the error body, no internal detail) to every other operation: any
/// storage or database failure there ends in it, and listing it by hand on each handler would
/// be forgotten on the next one.
fn document_internal_errors(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in &mut document.paths.paths {
        if NO_INTERNAL_ERROR.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("500".to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description("Internal error; details are only logged")
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .into()
                });
        }
    }
}

/// Adds the 400 answer to every operation with a path parameter that does not list one: a
/// parameter percent-encoding bytes that are not UTF-8 is refused before the handler runs
/// (the error body, see `error::json_rejection`).
fn document_undecodable_paths(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let has_path_parameter = operation
                .parameters
                .iter()
                .flatten()
                .any(|parameter| parameter.parameter_in == ParameterIn::Path);
            if !has_path_parameter {
                continue;
            }
            operation
                .responses
                .responses
                .entry("400".to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description("A path parameter is not UTF-8 once decoded")
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .into()
                });
        }
    }
}
