//! The Model Context Protocol server (SPEC "Agents without a public URL"), on the official Rust
//! SDK `rmcp`: `mxhook mcp` over stdio and `POST /mcp` over streamable HTTP, with the same tools.
//!
//! The tools are a client of the management API, so they need no rule of their own about who
//! sees what: over stdio they call it at `--api-url` with `--api-key`; at `/mcp` they call the
//! API's router in process with the request's own Bearer key. An inbox key therefore reaches
//! only its inbox through every tool, exactly as through the API. `wait_for_message` reads the
//! inbox's event stream, so it waits on the node's one arrival signal like any stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use futures_util::StreamExt as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::schemars::{self, JsonSchema};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use tower::ServiceExt as _;

/// The longest `wait_for_message` may wait, in seconds.
pub const MAX_WAIT_S: u64 = 300;

/// Where the tools send their API calls.
#[derive(Clone)]
pub enum Api {
    /// `mxhook mcp`: the API of a running gateway, with one key.
    Remote {
        client: reqwest::Client,
        base: String,
        key: String,
    },
    /// `/mcp`: the API router of this process; the key is the MCP request's own.
    Local { router: axum::Router },
}

/// One API answer: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Api {
    /// Sends a GET, or a POST of `json` when given, and returns the response head and its body
    /// as a stream of chunks.
    async fn open(
        &self,
        path: &str,
        json: Option<&serde_json::Value>,
        auth: Option<&HeaderValue>,
    ) -> Result<
        (
            u16,
            futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
        ),
        String,
    > {
        match self {
            Self::Remote { client, base, key } => {
                let url = format!("{}{path}", base.trim_end_matches('/'));
                let request = match json {
                    Some(json) => client.post(url).json(json),
                    None => client.get(url),
                };
                let response = request
                    .bearer_auth(key)
                    .send()
                    .await
                    .map_err(|err| format!("the mxhook API did not answer: {err}"))?;
                let status = response.status().as_u16();
                let chunks = futures_util::stream::unfold(response, |mut response| async move {
                    match response.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), response)),
                        Ok(None) => None,
                        Err(err) => Some((Err(err.to_string()), response)),
                    }
                });
                Ok((status, chunks.boxed()))
            }
            Self::Local { router } => {
                let mut request = match json {
                    Some(_) => Request::post(path).header(header::CONTENT_TYPE, "application/json"),
                    None => Request::get(path),
                };
                if let Some(auth) = auth {
                    request = request.header(header::AUTHORIZATION, auth.clone());
                }
                let body = json.map_or_else(Body::empty, |json| Body::from(json.to_string()));
                let request = request
                    .body(body)
                    .map_err(|err| format!("bad request path: {err}"))?;
                let response = router
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(|err| format!("the API failed: {err}"))?;
                let status = response.status().as_u16();
                let chunks = response
                    .into_body()
                    .into_data_stream()
                    .map(|chunk| chunk.map_err(|err| err.to_string()));
                Ok((status, chunks.boxed()))
            }
        }
    }

    async fn call(
        &self,
        path: &str,
        json: Option<&serde_json::Value>,
        auth: Option<&HeaderValue>,
    ) -> Result<Answer, String> {
        let (status, mut chunks) = self.open(path, json, auth).await?;
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(Answer { status, body })
    }

    /// A GET (or a POST of `json`) whose answer must be 2xx; otherwise the API's error, as the
    /// tool's error.
    async fn call_ok(
        &self,
        path: &str,
        json: Option<&serde_json::Value>,
        auth: Option<&HeaderValue>,
    ) -> Result<Vec<u8>, String> {
        let answer = self.call(path, json, auth).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(format!(
                "the mxhook API answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ))
        }
    }

    async fn get_json(
        &self,
        path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<serde_json::Value, String> {
        self.call_json(path, None, auth).await
    }

    async fn call_json(
        &self,
        path: &str,
        json: Option<&serde_json::Value>,
        auth: Option<&HeaderValue>,
    ) -> Result<serde_json::Value, String> {
        let body = self.call_ok(path, json, auth).await?;
        serde_json::from_slice(&body).map_err(|err| format!("the API answered with no JSON: {err}"))
    }

    /// The data of the first event on an event stream, or `None` when `within` passes first.
    async fn first_event(
        &self,
        path: &str,
        auth: Option<&HeaderValue>,
        within: Duration,
    ) -> Result<Option<String>, String> {
        let read = async {
            let (status, mut chunks) = self.open(path, None, auth).await?;
            if !(200..300).contains(&status) {
                let mut body = Vec::new();
                while let Some(Ok(chunk)) = chunks.next().await {
                    body.extend_from_slice(&chunk);
                }
                return Err(format!(
                    "the mxhook API answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let mut text = String::new();
            while let Some(chunk) = chunks.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk?));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let data: Vec<&str> = block
                        .lines()
                        .filter_map(|line| line.strip_prefix("data:"))
                        .map(|value| value.strip_prefix(' ').unwrap_or(value))
                        .collect();
                    if !data.is_empty() {
                        return Ok(Some(data.join("\n")));
                    }
                }
            }
            Err("the event stream ended".to_owned())
        };
        match tokio::time::timeout(within, read).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }
}

/// The API path list_messages reads.
fn messages_path(args: &ListMessagesArgs) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(limit) = args.limit {
        query.append_pair("limit", &limit.to_string());
    }
    for (key, value) in [
        ("cursor", &args.cursor),
        ("sender", &args.sender),
        ("subject", &args.subject),
        ("received_after", &args.received_after),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    format!(
        "/v1/inboxes/{}/messages?{}",
        segment(&args.inbox_id),
        query.finish()
    )
}

/// A path segment from a tool argument.
fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The MCP request's Authorization header, when it came over HTTP.
fn auth_of(ctx: &RequestContext<RoleServer>) -> Option<HeaderValue> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.headers.get(header::AUTHORIZATION).cloned())
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListMessagesArgs {
    /// The inbox to list, as list_inboxes names it (its `id`).
    pub inbox_id: String,
    /// How many messages to return, 1 to 500 (default 50), newest first.
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page, to read further back.
    pub cursor: Option<String>,
    /// Only mail from this address (the From address, case-insensitive).
    pub sender: Option<String>,
    /// Only mail whose subject contains this text (case-insensitive).
    pub subject: Option<String>,
    /// Only mail received at or after this time (RFC 3339, e.g. 2026-01-31T09:00:00Z).
    pub received_after: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MessageArgs {
    /// The message's id (`msg_…`), from list_messages, wait_for_message or an event.
    pub message_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AttachmentArgs {
    /// The message's id (`msg_…`).
    pub message_id: String,
    /// The attachment's `id` (`att_0`, `att_1`, …) from the message's `email.attachments`.
    pub attachment_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReplyArgs {
    /// The id (`msg_…`) of the received email to answer.
    pub message_id: String,
    /// What to say, as plain text; it is also rendered as markdown for the HTML part.
    pub text: String,
    /// An HTML body to send instead of the rendered text.
    pub html: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitArgs {
    /// The inbox to watch.
    pub inbox_id: String,
    /// How long to wait for new mail, in seconds (1 to 300, default 60).
    pub timeout_s: Option<u64>,
}

/// The tools, over one [`Api`].
#[derive(Clone)]
pub struct MailTools {
    api: Api,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl MailTools {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "List the email inboxes this key can read: each with its `id` (pass it as \
        inbox_id to the other tools), `name`, `addresses` (mail sent to them lands in the inbox) \
        and `status`. An inbox key sees only its own inbox."
    )]
    async fn list_inboxes(&self, ctx: RequestContext<RoleServer>) -> Result<String, String> {
        let list = self
            .api
            .get_json("/v1/inboxes", auth_of(&ctx).as_ref())
            .await?;
        Ok(pretty(&list))
    }

    #[tool(
        description = "List the messages of an inbox, newest first: id, sender, subject, \
        received_at and whether the inbox policy quarantined it, plus `next_cursor` for the next \
        page. Filter by sender, subject text or time. Read one with get_message."
    )]
    async fn list_messages(
        &self,
        Parameters(args): Parameters<ListMessagesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let path = messages_path(&args);
        Ok(pretty(
            &self.api.get_json(&path, auth_of(&ctx).as_ref()).await?,
        ))
    }

    #[tool(
        description = "Read one email: the full mail.received event. `email.prompt` is the \
        message written out for a language model (headers, the new text without quoted replies, \
        attachments listed); `email.plain_text`, `email.html`, `email.attachments` (ids for \
        get_attachment), `thread_id`, and the sender checks (`sender_verified`, \
        `peer_trust_tier`) are there too."
    )]
    async fn get_message(
        &self,
        Parameters(args): Parameters<MessageArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let path = format!("/v1/messages/{}", segment(&args.message_id));
        Ok(pretty(
            &self.api.get_json(&path, auth_of(&ctx).as_ref()).await?,
        ))
    }

    #[tool(
        description = "Read the conversation an email belongs to: `thread_prompt` (the whole \
        thread written out for a language model, oldest first) and `emails` (the earlier emails \
        of the thread, oldest first, then this one)."
    )]
    async fn get_thread(
        &self,
        Parameters(args): Parameters<MessageArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let path = format!("/v1/messages/{}", segment(&args.message_id));
        let event = self.api.get_json(&path, auth_of(&ctx).as_ref()).await?;
        let email = &event["email"];
        let mut emails: Vec<serde_json::Value> = email["previous_emails"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut this = email.clone();
        if let Some(fields) = this.as_object_mut() {
            fields.remove("previous_emails");
            fields.remove("thread_prompt");
        }
        emails.push(this);
        Ok(pretty(&serde_json::json!({
            "thread_id": event["thread_id"],
            "thread_prompt": email["thread_prompt"],
            "emails": emails,
        })))
    }

    #[tool(
        description = "Read one attachment of an email. Text attachments (text/*, JSON, XML, \
        calendar) come back as text; anything else as a base64 resource with its MIME type."
    )]
    async fn get_attachment(
        &self,
        Parameters(args): Parameters<AttachmentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let path = format!("/v1/messages/{}/raw", segment(&args.message_id));
        let raw = self
            .api
            .call_ok(&path, None, auth_of(&ctx).as_ref())
            .await?;
        let Some(part) = crate::parse::part::attachment(&raw, &args.attachment_id) else {
            return Err(format!(
                "message {} has no attachment {}",
                args.message_id, args.attachment_id
            ));
        };
        let uri = format!(
            "mxhook://messages/{}/attachments/{}",
            args.message_id, args.attachment_id
        );
        let textual = part.content_type.starts_with("text/")
            || ["application/json", "application/xml", "application/ics"]
                .contains(&part.content_type.as_str());
        let content = match String::from_utf8(part.bytes) {
            Ok(text) if textual => ContentBlock::text(text),
            Ok(text) => blob(uri, &part.content_type, text.into_bytes()),
            Err(err) => blob(uri, &part.content_type, err.into_bytes()),
        };
        Ok(CallToolResult::success(vec![content]))
    }

    #[tool(
        description = "Wait for the next new email to arrive in an inbox and return it (the \
        same event get_message returns), or null when none arrived within timeout_s seconds \
        (at most 300). Only mail that arrives after the call counts."
    )]
    async fn wait_for_message(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let timeout_s = args.timeout_s.unwrap_or(60);
        if !(1..=MAX_WAIT_S).contains(&timeout_s) {
            return Err(format!("timeout_s must be between 1 and {MAX_WAIT_S}"));
        }
        let path = format!(
            "/v1/inboxes/{}/events?types=mail.received",
            segment(&args.inbox_id)
        );
        let event = self
            .api
            .first_event(
                &path,
                auth_of(&ctx).as_ref(),
                Duration::from_secs(timeout_s),
            )
            .await?;
        match event {
            Some(data) => {
                let event: serde_json::Value = serde_json::from_str(&data)
                    .map_err(|err| format!("the event stream sent no JSON: {err}"))?;
                Ok(pretty(&event))
            }
            None => Ok("null".to_owned()),
        }
    }

    #[tool(
        description = "Answer an email you received: the reply goes to its sender from the \
        address it reached, with the threading headers set so it lands in the same conversation, \
        and is kept in the thread (later emails show it as your own words in thread_prompt). \
        Returns the stored reply's message_id. Automatic mail (bounces, out-of-office replies) \
        is refused, to keep agents and responders from answering each other forever."
    )]
    async fn reply(
        &self,
        Parameters(args): Parameters<ReplyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let path = format!("/v1/messages/{}/reply", segment(&args.message_id));
        let mut body = serde_json::json!({ "text": args.text });
        if let Some(html) = args.html {
            body["html"] = serde_json::Value::String(html);
        }
        Ok(pretty(
            &self
                .api
                .call_json(&path, Some(&body), auth_of(&ctx).as_ref())
                .await?,
        ))
    }
}

fn blob(uri: String, mime_type: &str, bytes: Vec<u8>) -> ContentBlock {
    use base64::Engine as _;
    let contents =
        ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
            .with_mime_type(mime_type);
    ContentBlock::resource(contents)
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for MailTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Email inboxes of an mxhook gateway. list_inboxes, then list_messages or \
             wait_for_message for new mail; get_message reads one (its `email.prompt` is \
             written for you), get_thread the conversation, get_attachment a file.",
        )
    }
}

/// `POST /mcp` (and the GET and DELETE of streamable HTTP): MCP sessions over the API router
/// `api`, each tool call with its request's Bearer key.
pub(crate) fn service(
    api: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    MailTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    let config = rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
        // Every request carries a Bearer key, which a page in a browser cannot add, so the
        // Host check against DNS rebinding is not needed, and a public host name must work.
        .disable_allowed_hosts()
        .with_cancellation_token(shutdown);
    rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || {
            Ok(MailTools::new(Api::Local {
                router: api.clone(),
            }))
        },
        Arc::default(),
        config,
    )
}

/// The OpenAPI entry of `/mcp`, which [`service`] serves (documentation only).
#[utoipa::path(
    post,
    path = "/mcp",
    tag = "mcp",
    summary = "Model Context Protocol over streamable HTTP",
    description = "JSON-RPC messages of the Model Context Protocol (streamable HTTP transport; \
        GET and DELETE with `Mcp-Session-Id` as that transport defines). Tools: list_inboxes, \
        list_messages, get_message, get_thread, get_attachment, wait_for_message; each call runs \
        with this request's Bearer key, so an inbox key reaches only its inbox.",
    request_body(content = String, content_type = "application/json", description = "A JSON-RPC request or notification"),
    responses(
        (status = 200, description = "The JSON-RPC response, as JSON or as an event stream", content_type = "text/event-stream", body = String),
        (status = 202, description = "A notification or response was accepted"),
        (status = 401, description = "Missing or invalid key", body = crate::http::ErrorBody),
    ),
)]
#[allow(dead_code)] // documentation only: `service` answers the route
pub(crate) async fn mcp_endpoint() {}

/// `mxhook mcp`: serves the tools on standard input and output until the client leaves.
///
/// # Errors
/// The MCP session could not start or failed.
pub async fn serve_stdio(api_url: String, api_key: String) -> anyhow::Result<()> {
    use rmcp::ServiceExt as _;
    let tools = MailTools::new(Api::Remote {
        client: reqwest::Client::new(),
        base: api_url,
        key: api_key,
    });
    let running = tools.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
