//! The `teamgate` binary: parse flags, load config, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use teamgate::cli::{Cli, Command, PolicyCommand};
use teamgate::config::Config;
use teamgate::domain::policy::Policy;
use teamgate::startup::{self, Dependencies};
use teamgate::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("teamgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args.common.config.as_deref(), &args.overrides())?;
            telemetry::init(&config.log.format, &config.log.filter);
            let running = startup::start(&config, Dependencies::default()).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight calls");
            running.shutdown().await?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let config = Config::load(args.config.as_deref(), &args.overrides())?;
            telemetry::init(&config.log.format, &config.log.filter);
            let store = startup::connect_store(&config).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let source = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            match Policy::parse(&source) {
                Ok(policy) => {
                    println!("{}: ok ({})", file.display(), policy.summary());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {} problem(s)\n{e}", file.display(), e.problems.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
