//! The `scorecast` command: parses the CLI and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scorecast::config::Config;

#[derive(Parser)]
#[command(version, about = "Live relay for esports and sports broadcasts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (flags override the config file).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<SocketAddr>,
        #[arg(long, value_name = "ADDR")]
        rtmp_listen: Option<SocketAddr>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file; exits non-zero and names the bad key.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scorecast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!(
                "{}: ok ({} relay{})",
                file.display(),
                config.relays.len(),
                if config.relays.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Command::Run {
            config,
            api_listen,
            rtmp_listen,
            data_dir,
        } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(addr) = api_listen {
                config.server.api_listen = addr;
            }
            if let Some(addr) = rtmp_listen {
                config.server.rtmp_listen = addr;
            }
            if let Some(dir) = data_dir {
                config.server.data_dir = dir;
            }
            scorecast::telemetry::init();
            scorecast::telemetry::route_gstreamer_log();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let api = tokio::net::TcpListener::bind(config.server.api_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.server.api_listen))?;
    let rtmp = tokio::net::TcpListener::bind(config.server.rtmp_listen)
        .await
        .with_context(|| format!("cannot listen for RTMP on {}", config.server.rtmp_listen))?;
    scorecast::daemon::run(config, api, rtmp, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
