//! The `mxhook` command: parses arguments, loads the config, installs logging and the signal
//! handler, and hands over to [`mxhook::app`]. The helper commands (`verify`, `inbox`,
//! `send-test`) are thin: a library call or one HTTP request to the management API each.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mxhook", version, about = "Inbound email-to-webhook gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SMTP listener, the HTTP API and the delivery workers.
    Serve {
        /// TOML config file; without it the embedded defaults apply (MXHOOK_* env vars still do).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config (file + MXHOOK_* env vars) and exit.
    #[command(alias = "check")]
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check an `agentmail` webhook signature (X-AgentMail-Signature) against a body; exits 0
    /// when it is valid, 1 when not.
    Verify {
        /// The inbox webhook's signing secret.
        #[arg(long)]
        secret: String,
        /// The X-AgentMail-Timestamp header.
        #[arg(long)]
        timestamp: String,
        /// The X-AgentMail-Signature header (`v1=<hex>`, several separated by spaces).
        #[arg(long)]
        signature: String,
        /// The exact request body bytes.
        #[arg(long)]
        body_file: PathBuf,
    },
    /// List or create inboxes through the management API.
    Inbox {
        #[command(subcommand)]
        command: InboxCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a test `mail.received` event to an inbox's webhook through the normal delivery path.
    SendTest {
        /// The inbox id.
        #[arg(long)]
        inbox: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum InboxCommand {
    /// Print every inbox the key can see, as JSON.
    List,
    /// Create an inbox and print it as JSON.
    Create {
        /// The id; generated when left out.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// An address of the inbox; repeat for several.
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
    },
}

/// Where the management API is. The variables are not `MXHOOK_*`, which `serve` reads as
/// config keys.
#[derive(clap::Args)]
struct ApiArgs {
    #[arg(
        long,
        global = true,
        env = "MXHOOKCTL_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api_url: String,
    /// An admin key, or a per-inbox key for that inbox.
    #[arg(long, global = true, env = "MXHOOKCTL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (config_path, serve) = match cli.command {
        Command::Serve { config } => (config, true),
        Command::CheckConfig { config } => (config, false),
        Command::Verify {
            secret,
            timestamp,
            signature,
            body_file,
        } => return verify(&secret, &timestamp, &signature, &body_file),
        Command::Inbox { command, api } => {
            let (method, path, body) = match command {
                InboxCommand::List => ("GET", "/v1/inboxes".to_owned(), None),
                InboxCommand::Create {
                    id,
                    name,
                    addresses,
                } => (
                    "POST",
                    "/v1/inboxes".to_owned(),
                    Some(serde_json::json!({"id": id, "name": name, "addresses": addresses})),
                ),
            };
            return call_api(&api, method, &path, body);
        }
        Command::SendTest { inbox, api } => {
            let path = format!("/v1/inboxes/{}/test-event", url_segment(&inbox));
            return call_api(&api, "POST", &path, None);
        }
    };
    let config = match mxhook::config::Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mxhook: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    if !serve {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mxhook: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mxhook::app::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mxhook: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(secret: &str, timestamp: &str, signature: &str, body_file: &std::path::Path) -> ExitCode {
    let body = match std::fs::read(body_file) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("mxhook: reading {}: {err}", body_file.display());
            return ExitCode::from(2);
        }
    };
    if mxhook::deliver::signature::verify_agentmail(secret, timestamp, &body, signature) {
        println!("signature is valid");
        ExitCode::SUCCESS
    } else {
        println!("signature is NOT valid");
        ExitCode::FAILURE
    }
}

/// Percent-encodes a path segment the user typed.
fn url_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// One request to the management API; prints the JSON answer, exits 0 on 2xx, 1 otherwise.
fn call_api(api: &ApiArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
    let Some(api_key) = api.api_key.as_deref() else {
        eprintln!("mxhook: give an API key with --api-key or MXHOOKCTL_API_KEY");
        return ExitCode::from(2);
    };
    let request = async {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let url = format!("{}{path}", api.api_url.trim_end_matches('/'));
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::Ok((status, text))
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mxhook: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(request) {
        Ok((status, text)) => {
            let shown = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|json| serde_json::to_string_pretty(&json).ok())
                .unwrap_or(text);
            if status.is_success() {
                println!("{shown}");
                ExitCode::SUCCESS
            } else {
                eprintln!("mxhook: the API answered {status}: {shown}");
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("mxhook: calling the API: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
