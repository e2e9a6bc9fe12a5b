//! The `mxhook` command: parses arguments, loads the config, installs logging and the signal
//! handler, and hands over to [`mxhook::app`]. The helper commands (`init`, `verify`, `inbox`,
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
    /// Write a commented mxhook.toml with a fresh admin key and webhook secret, and say how to
    /// start with it; refuses to replace an existing file.
    Init {
        /// The directory the file goes in (created when missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a config (file + MXHOOK_* env vars) and exit.
    #[command(alias = "check")]
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Compare the raw-message store with the database: objects no message points at (older
    /// than an hour) and messages whose object is missing, printed as JSON; exits 0 when there
    /// are none (or all were repaired), 1 when some remain, 2 on a bad config.
    CheckStore {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Remove the orphan objects and erase the messages whose object is missing.
        #[arg(long)]
        repair: bool,
    },
    /// Re-encrypt every stored secret (webhook, previous, provider ingress, domain template and
    /// attachment-URL keys) under `secrets.key`, plaintext ones included, a batch of rows per
    /// transaction; safe while gateways run. Prints the counts as JSON; exits 0 when done, 1 on
    /// an error (a value under a key that is not configured), 2 on a bad config.
    RotateSecretsKey {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a webhook signature against a body; exits 0 when it is valid, 1 when not, 2 when
    /// the arguments are wrong. Give the secret with exactly one of --secret, --secret-env or
    /// --secret-stdin (the last two keep it out of the process list and shell history).
    #[command(group(clap::ArgGroup::new("secret_source").required(true).args(["secret", "secret_env", "secret_stdin"])))]
    Verify {
        /// agentmail (X-AgentMail-Signature), standard (webhook-signature), botmailroom
        /// (X-Signature) or hmac-sha256 (the endpoint's signature_header).
        #[arg(long, default_value = "agentmail", value_parser = parse_scheme)]
        scheme: mxhook::model::SignatureScheme,
        /// The endpoint's signing secret.
        #[arg(long)]
        secret: Option<String>,
        /// The name of an environment variable that holds the secret.
        #[arg(long)]
        secret_env: Option<String>,
        /// Read the secret from the first line of standard input.
        #[arg(long)]
        secret_stdin: bool,
        /// The timestamp header (agentmail: X-AgentMail-Timestamp; standard: webhook-timestamp).
        #[arg(long)]
        timestamp: Option<String>,
        /// The webhook-id header (standard).
        #[arg(long)]
        webhook_id: Option<String>,
        /// The signature header's value; agentmail and standard may carry several, separated
        /// by spaces.
        #[arg(long)]
        signature: String,
        /// hmac-sha256: the value format the endpoint uses, sha256=hex (default) or hex.
        #[arg(long, default_value = "sha256=hex", value_parser = parse_format)]
        format: mxhook::model::SignatureFormat,
        /// The exact request body bytes.
        #[arg(long)]
        body_file: PathBuf,
    },
    /// Manage inboxes through the management API; exits 0 when the API answers 2xx, 1 on any
    /// other answer or none, 2 when the arguments are wrong (an API key is needed).
    Inbox {
        #[command(subcommand)]
        command: InboxCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a test `mail.received` event to an inbox's webhook through the normal delivery path;
    /// exits 0 when the API answers 2xx, 1 on any other answer or none, 2 when the arguments are
    /// wrong.
    SendTest {
        /// The inbox id.
        #[arg(long)]
        inbox: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Serve the Model Context Protocol on standard input and output, for an MCP host (Claude
    /// Desktop, Cursor, …): the tools list_inboxes, list_messages, get_message, get_thread,
    /// get_attachment and wait_for_message, over the API at --api-url with --api-key (an inbox
    /// key limits every tool to its inbox).
    Mcp {
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
    /// Print one inbox as JSON.
    Get {
        #[arg(long)]
        id: String,
    },
    /// Delete an inbox (admin key).
    Delete {
        #[arg(long)]
        id: String,
    },
    /// The inbox webhook.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Per-inbox API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Set the webhook and print it; the signing secret is in the output on first setup and
    /// on rotation only, and cannot be read again.
    Set {
        #[arg(long)]
        id: String,
        #[arg(long)]
        url: String,
        /// Issue a new signing secret; the old one keeps signing for the grace period.
        #[arg(long)]
        rotate_secret: bool,
        /// agentmail, standard, botmailroom or hmac-sha256 (unchanged when left out).
        #[arg(long)]
        signature: Option<String>,
        /// Keep the webhook but deliver nothing to it.
        #[arg(long)]
        disabled: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a per-inbox key (admin key) and print it; the key is shown this once.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
}

fn parse_scheme(value: &str) -> Result<mxhook::model::SignatureScheme, String> {
    mxhook::model::SignatureScheme::parse(value)
        .ok_or_else(|| "expected agentmail, standard, botmailroom or hmac-sha256".to_owned())
}

fn parse_format(value: &str) -> Result<mxhook::model::SignatureFormat, String> {
    mxhook::model::SignatureFormat::parse(value)
        .ok_or_else(|| "expected sha256=hex or hex".to_owned())
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
        Command::Init { dir } => return init(&dir),
        Command::CheckStore { config, repair } => return check_store(config.as_deref(), repair),
        Command::RotateSecretsKey { config } => return rotate_secrets_key(config.as_deref()),
        Command::Mcp { api } => return mcp(&api),
        Command::Verify {
            scheme,
            secret,
            secret_env,
            secret_stdin,
            timestamp,
            webhook_id,
            signature,
            format,
            body_file,
        } => {
            let secret = match secret_from(secret, secret_env, secret_stdin) {
                Ok(secret) => secret,
                Err(message) => {
                    eprintln!("mxhook: {message}");
                    return ExitCode::from(2);
                }
            };
            return verify(&Presented {
                scheme,
                secret,
                timestamp,
                webhook_id,
                signature,
                format,
                body_file,
            });
        }
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
                InboxCommand::Get { id } => {
                    ("GET", format!("/v1/inboxes/{}", url_segment(&id)), None)
                }
                InboxCommand::Delete { id } => {
                    ("DELETE", format!("/v1/inboxes/{}", url_segment(&id)), None)
                }
                InboxCommand::Webhook {
                    command:
                        WebhookCommand::Set {
                            id,
                            url,
                            rotate_secret,
                            signature,
                            disabled,
                        },
                } => {
                    let mut body = serde_json::json!({
                        "url": url,
                        "enabled": !disabled,
                        "rotate_secret": rotate_secret,
                    });
                    if let Some(signature) = signature {
                        body["signature"] = serde_json::json!(signature);
                    }
                    (
                        "PUT",
                        format!("/v1/inboxes/{}/webhook", url_segment(&id)),
                        Some(body),
                    )
                }
                InboxCommand::Key {
                    command: KeyCommand::Create { id, name },
                } => (
                    "POST",
                    format!("/v1/inboxes/{}/keys", url_segment(&id)),
                    Some(serde_json::json!({ "name": name })),
                ),
            };
            return call_api(&api, method, &path, body);
        }
        Command::SendTest { inbox, api } => {
            let path = format!("/v1/inboxes/{}/test-event", url_segment(&inbox));
            return call_api(&api, "POST", &path, None);
        }
    };
    let mut config = match load_config(config_path.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if !serve {
        println!("configuration is valid");
        if let Some(mta_sts) = &config.mta_sts {
            print_mta_sts_records(&config, mta_sts);
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let welcome = mxhook::app::Welcome {
        key_file: own_admin_key(&mut config),
        // The embedded defaults come with an inbox; a config file says which inboxes it wants.
        demo_inbox: config_path.is_none() && config.inboxes.is_empty(),
    };
    match runtime.block_on(mxhook::app::run_welcoming(
        config,
        welcome,
        shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mxhook: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the operator publishes for `[mta_sts]`: the `_mta-sts` TXT record of each receiving
/// domain (the domains of the configured inboxes' addresses), whose id changes with the policy.
fn print_mta_sts_records(
    config: &mxhook::config::Config,
    mta_sts: &mxhook::config::mta_sts::MtaStsConfig,
) {
    let mut domains: Vec<String> = config
        .inboxes
        .iter()
        .flat_map(|inbox| inbox.addresses.iter())
        .filter_map(|address| {
            address
                .rsplit_once('@')
                .map(|(_, domain)| domain.to_ascii_lowercase())
        })
        .collect();
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        domains.push("<your-domain>".to_owned());
    }
    println!(
        "MTA-STS: serve the policy at https://mta-sts.<domain>/.well-known/mta-sts.txt (a TLS proxy in front of the HTTP port) and publish:"
    );
    for domain in domains {
        println!("_mta-sts.{domain}. IN TXT \"{}\"", mta_sts.txt_record());
    }
}

/// The configuration from the file and the environment, or exit code 2 with the error
/// (which names the key) on stderr.
fn load_config(path: Option<&std::path::Path>) -> Result<mxhook::config::Config, ExitCode> {
    mxhook::config::Config::load(path, std::env::vars()).map_err(|err| {
        eprintln!("mxhook: invalid configuration: {err}");
        ExitCode::from(2)
    })
}

/// The async runtime a command runs on, or a failure exit with the reason on stderr.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|err| {
        eprintln!("mxhook: starting the async runtime: {err}");
        ExitCode::FAILURE
    })
}

/// `mxhook check-store`: the report as JSON on stdout.
fn check_store(config_path: Option<&std::path::Path>, repair: bool) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(mxhook::retention::check_configured_store(&config, repair)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            let found = report.orphan_objects.len() + report.missing_objects.len();
            if found == 0 || (repair && report.repaired == found) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("mxhook: checking the store: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `mxhook rotate-secrets-key`: the counts as JSON on stdout.
fn rotate_secrets_key(config_path: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let keys = match config.secrets.keyring() {
        Ok(keys) if keys.current_id().is_some() => keys,
        Ok(_) => {
            eprintln!(
                "mxhook: invalid configuration: config key `secrets.key`: must be set to rotate to it"
            );
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("mxhook: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let rotated = runtime.block_on(async {
        let db = mxhook::db::Db::connect(&config.database)
            .await?
            .with_secrets(keys);
        db.migrate().await?;
        let report = db.rotate_secrets().await;
        db.close().await;
        report
    });
    match rotated {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.changed_meanwhile() > 0 {
                eprintln!(
                    "mxhook: {} secrets changed while being rotated; run the command again to check them",
                    report.changed_meanwhile()
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("mxhook: rotating the secrets key: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The commented example config, the file `mxhook init` starts from.
const EXAMPLE_CONFIG: &str = include_str!("../deploy/config.example.toml");

/// `mxhook init`: the example config with its placeholders replaced by fresh secrets (the admin
/// key, the webhook secret and the key that encrypts stored secrets), written owner-only and
/// never over an existing file.
fn init(dir: &std::path::Path) -> ExitCode {
    use std::io::Write as _;

    let path = dir.join("mxhook.toml");
    let random = || hex::encode(rand::random::<[u8; 32]>());
    let text = EXAMPLE_CONFIG
        .replace(
            "admin_keys = [\"change-me\"]       # Bearer keys with full API access; set through the env in production",
            &format!("admin_keys = [\"mxa_{}\"]  # Bearer keys with full API access (made by mxhook init; keep it private)", random()),
        )
        .replace(
            "\"replace-with-a-long-random-secret\"",
            &format!("\"whsec_{}\"", random()),
        )
        .replace(
            "# key = \"...\"                    # 32 bytes as base64 (head -c32 /dev/urandom | base64) or 64 hex; unset: stored as plaintext",
            &format!("key = \"{}\"  # made by mxhook init; keep a copy apart from the database: without it the stored secrets cannot be read", random()),
        );
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    match written {
        Ok(()) => {
            println!(
                "wrote {} (mode 0600: it holds the admin key, the webhook secret and the secrets key)\n\
                 edit the [[inbox]] at its end (addresses, webhook_url), then run:\n\n    \
                 mxhook serve --config {}",
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("mxhook: {} exists; not replacing it", path.display());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("mxhook: writing {}: {err}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Without `http.admin_keys`, the key kept in `http.admin_key_file` (made there on the first
/// start) becomes the admin key. A file that cannot be written leaves the gateway as it was
/// before first runs had keys: running, with an API that refuses every key but inbox keys.
fn own_admin_key(config: &mut mxhook::config::Config) -> Option<(PathBuf, bool)> {
    if !config.http.admin_keys.is_empty() {
        return None;
    }
    let path = config.http.admin_key_file.clone();
    match mxhook::first_run::admin_key(&path) {
        Ok(key) => {
            config.http.admin_keys.push(key.key);
            Some((path, key.created))
        }
        Err(err) => {
            tracing::warn!(error = %err, "no admin key: set http.admin_keys");
            None
        }
    }
}

/// The secret from exactly one of its three sources (clap checks that one was given).
fn secret_from(
    argument: Option<String>,
    env_name: Option<String>,
    stdin: bool,
) -> Result<String, String> {
    let secret = if let Some(secret) = argument {
        secret
    } else if let Some(name) = env_name {
        std::env::var(&name).map_err(|_| format!("the variable {name} is not set"))?
    } else if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|err| format!("reading the secret from standard input: {err}"))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        return Err("give the secret with --secret, --secret-env or --secret-stdin".to_owned());
    };
    if secret.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(secret)
}

/// What `mxhook verify` was asked to check.
struct Presented {
    scheme: mxhook::model::SignatureScheme,
    secret: String,
    timestamp: Option<String>,
    webhook_id: Option<String>,
    signature: String,
    format: mxhook::model::SignatureFormat,
    body_file: PathBuf,
}

/// Signs the body the way the gateway does and compares, in constant time, with each signature
/// the header presented.
fn verify(presented: &Presented) -> ExitCode {
    use mxhook::model::SignatureScheme;
    use subtle::ConstantTimeEq as _;

    let body = match std::fs::read(&presented.body_file) {
        Ok(body) => body,
        Err(err) => {
            eprintln!("mxhook: reading {}: {err}", presented.body_file.display());
            return ExitCode::from(2);
        }
    };
    let needs_timestamp = matches!(
        presented.scheme,
        SignatureScheme::Agentmail | SignatureScheme::Standard
    );
    let timestamp = match presented.timestamp.as_deref().map(str::parse::<i64>) {
        Some(Ok(timestamp)) => timestamp,
        None if !needs_timestamp => 0,
        _ => {
            eprintln!("mxhook: this scheme needs --timestamp, in unix seconds");
            return ExitCode::from(2);
        }
    };
    let webhook_id = match (&presented.webhook_id, presented.scheme) {
        (None, SignatureScheme::Standard) => {
            eprintln!("mxhook: the standard scheme needs --webhook-id");
            return ExitCode::from(2);
        }
        (id, _) => id.clone().unwrap_or_default(),
    };
    let secrets = [presented.secret.clone()];
    let headers = match mxhook::signature::sign(&mxhook::signature::SigningInput {
        scheme: presented.scheme,
        secrets: &secrets,
        webhook_id: &webhook_id,
        timestamp,
        body: &body,
        hmac_header: None,
        hmac_format: presented.format,
    }) {
        Ok(headers) => headers,
        Err(err) => {
            eprintln!("mxhook: {err}");
            return ExitCode::from(2);
        }
    };
    // The last header is the signature in every scheme; timestamps come before it.
    let expected = headers
        .last()
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    let valid = !expected.is_empty()
        && presented
            .signature
            .split(' ')
            .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())));
    if valid {
        println!("signature is valid");
        ExitCode::SUCCESS
    } else {
        println!("signature is NOT valid");
        ExitCode::FAILURE
    }
}

/// `mxhook mcp`: the MCP server on stdio until the host closes it. Logs go to stderr, so
/// stdout carries only the protocol.
fn mcp(api: &ApiArgs) -> ExitCode {
    let Some(api_key) = api.api_key.clone().filter(|key| !key.is_empty()) else {
        eprintln!("mxhook: give an API key with --api-key or MXHOOKCTL_API_KEY");
        return ExitCode::from(2);
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(mxhook::http::mcp::serve_stdio(api.api_url.clone(), api_key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mxhook: MCP server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Percent-encodes a path segment the user typed.
fn url_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// One request to the management API; prints the JSON answer, exits 0 on 2xx, 1 on any other
/// answer or none, 2 without a key.
fn call_api(api: &ApiArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
    // An empty key (`MXHOOKCTL_API_KEY=` left blank) is no key: a bad argument, not a request
    // the API can only refuse.
    let Some(api_key) = api.api_key.as_deref().filter(|key| !key.is_empty()) else {
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
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
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
