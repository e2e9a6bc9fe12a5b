//! The `mxhook` command: parses arguments, loads the config, installs logging and the signal
//! handler, and hands over to [`mxhook::app`]. No logic of its own.

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
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
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
