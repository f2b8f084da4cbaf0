//! The `teamgate` binary: parse flags, load config, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use teamgate::cli::{Cli, Command, HealthArgs, KeysCommand, PolicyCommand};
use teamgate::config::{Config, Overrides, redact_url};
use teamgate::domain::clock::{Clock, SystemClock};
use teamgate::domain::policy::Policy;
use teamgate::startup::{self, Dependencies};
use teamgate::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_for(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("teamgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("teamgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime: for `serve`, with `server.worker_threads` (so the configuration is read
/// once before it and again, with the same result, inside it).
fn runtime_for(cli: &Cli) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Serve(args) = &cli.command {
        let config = Config::load(args.common.config.as_deref(), &args.overrides())?;
        if config.server.worker_threads > 0 {
            builder.worker_threads(config.server.worker_threads);
        }
    }
    Ok(builder.build()?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args.common.config.as_deref(), &args.overrides())?;
            // Held until the end: flushes buffered spans on shutdown (and on an error's drop).
            let traces = telemetry::init_with(&config.log, &config.telemetry)?;
            let running = startup::start(&config, Dependencies::default()).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight calls");
            running.shutdown().await?;
            tracing::info!("stopped");
            traces.shutdown().await;
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
        Command::Health(args) => Ok(probe_health(&args).await),
        Command::Keys {
            command: KeysCommand::Hash,
        } => {
            let (key, hash) = teamgate::api::auth::new_key();
            println!("key:  {key}");
            println!("hash: {hash}");
            println!();
            println!(
                "Give the key to the calling service (it sends `authorization: Bearer <key>`),"
            );
            println!("and add to teamgate's configuration:");
            println!();
            println!("[[auth.keys]]");
            println!("name = \"<calling service>\"");
            println!("hash = \"{hash}\"");
            println!("scopes = [\"authz\"]   # authz, team and/or admin");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::Check {
                    file,
                    database_url,
                    config,
                },
        } => {
            let source = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            match Policy::parse(&source) {
                Ok(policy) => {
                    println!("{}: ok ({})", file.display(), policy.summary());
                    match database_url {
                        Some(url) => check_drift(&policy, url, config.as_deref()).await,
                        None => Ok(ExitCode::SUCCESS),
                    }
                }
                Err(e) => {
                    eprintln!("{}: {} problem(s)\n{e}", file.display(), e.problems.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// `policy check --database-url`: what the database references that the policy does not
/// declare, read without migrating or changing anything.
async fn check_drift(
    policy: &Policy,
    url: String,
    config_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        database_url: Some(url),
        ..Overrides::default()
    };
    let config = Config::load(config_file, &overrides)?;
    let shown = redact_url(config.database.url.expose());
    let store = startup::connect_store(&config).await?;
    let now = SystemClock.now();
    let report = teamgate::store::drift::compare(store.conn(), policy, now)
        .await
        .map_err(|e| {
            anyhow::anyhow!("reading {shown} (is it migrated? `teamgate migrate` does that): {e}")
        });
    store.close().await;
    let report = report?;
    if report.is_empty() {
        println!("{shown}: ok ({report})");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{shown}: {report}");
        Ok(ExitCode::FAILURE)
    }
}

/// `teamgate health`: one Health/Check call. Prints the status so a failing container health
/// check says why in `docker inspect`.
async fn probe_health(args: &HealthArgs) -> ExitCode {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
            .connect_timeout(timeout)
            .connect()
            .await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        anyhow::Ok(client.check(request).await?.into_inner().status)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            println!("{name}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            println!("unreachable: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("no answer within {} ms", args.timeout_ms);
            ExitCode::FAILURE
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
