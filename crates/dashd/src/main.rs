//! `dashd`: the one Dash binary. A thin shim: parse the command line, load settings, wire the
//! app, wait for SIGINT/SIGTERM. Exit codes: 0 success, 1 runtime failure, 2 bad configuration.

mod app;
mod commands;
mod database;
mod load;
mod metrics_catalog;

use std::sync::Arc;

use dash_log_throttle::{TargetThrottle, TargetThrottleLayer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dash_config::{Overrides, Role, Settings};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// mimalloc: glibc malloc showed up as ~10% of CPU under single-event load (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "dashd", version, about = "Dash: webhooks in, live dashboards out")]
struct Cli {
    /// A settings file layered over config/default.toml and config/<DASH_ENV>.toml.
    #[arg(long, global = true, value_name = "FILE", env = "DASH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run Dash (the default command).
    Serve {
        /// all (embedded default), web or ingestor; also APP_ROLE.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Address to listen on; also DASH_LISTEN. Port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate,
    /// Create, list and rotate pipelines.
    Pipeline {
        #[command(subcommand)]
        action: commands::PipelineAction,
    },
    /// Create, list and delete views (aggregates of what is inside a pipeline's events).
    View {
        #[command(subcommand)]
        action: commands::ViewAction,
    },
    /// List, show, apply and delete boards (dashboards of panels across pipelines).
    Board {
        #[command(subcommand)]
        action: commands::BoardAction,
    },
    /// Write a pipeline's events over a time range as NDJSON, oldest first (the same lines as
    /// `GET /api/pipelines/{id}/events/export`), read a page at a time.
    Export(commands::ExportArgs),
    /// Load generator: POST signed events and report events/s and ack latency.
    Bench(dash_bench::LoadOptions),
    /// Live fan-out benchmark: many /live subscribers while signed POSTs make updates.
    BenchLive(dash_bench::LiveOptions),
    /// End-to-end latency: 202 from one node → the update on another node's /live.
    BenchE2e(dash_bench::E2eOptions),
    /// The fault harness: a local cluster of this binary (2 web, 2 ingestors, a private
    /// PostgreSQL and nats-server), signed traffic through the edges and a seeded schedule of
    /// faults; checks that every acknowledged event is stored exactly once. Exit 1 when not.
    Verify(dash_verify::VerifyOptions),
    /// This machine's ceilings, to set Dash's numbers against.
    #[command(subcommand, hide = true)]
    Ceiling(commands::CeilingAction),
    /// Print the data directory these settings resolve to, as an absolute path (the image's
    /// entrypoint hands it to the user dashd runs as).
    #[command(hide = true)]
    DataDir,
}

fn parse_role(raw: &str) -> Result<Role, String> {
    match raw {
        "all" => Ok(Role::All),
        "web" => Ok(Role::Web),
        "ingestor" => Ok(Role::Ingestor),
        other => Err(format!("unknown role {other:?}: expected all, web or ingestor")),
    }
}

fn main() -> ExitCode {
    // The build's one TLS crypto provider (sqlx, async-nats and reqwest all run on ring), for
    // the HTTP clients that do not name it themselves.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let library_warnings = init_tracing();
    let command = cli.command.unwrap_or(Command::Serve { role: None, listen: None });

    let overrides = match &command {
        Command::Serve { role, listen } => Overrides { role: *role, listen: *listen, config_file: cli.config.clone() },
        _ => Overrides { config_file: cli.config.clone(), ..Default::default() },
    };
    let needs_settings = !matches!(
        command,
        Command::Bench(_) | Command::BenchLive(_) | Command::BenchE2e(_) | Command::Ceiling(_) | Command::Verify(_)
    );
    let settings = if needs_settings {
        match dash_config::load(Path::new("config"), &overrides) {
            Ok(settings) => Some(settings),
            Err(err) => {
                eprintln!("dashd: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dashd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(command, settings, library_warnings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dashd: {:#}", explain_privileges(err));
            ExitCode::FAILURE
        }
    }
}

/// What the database role needs, named when the database refused Dash a privilege (SQLSTATE
/// 42501) anywhere in the error's chain: migrations, the job queue's schema, an extension.
fn explain_privileges(err: anyhow::Error) -> anyhow::Error {
    let refused = err.chain().any(|cause| {
        let db = match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => Some(db.code()),
            _ => cause.downcast_ref::<sqlx::migrate::MigrateError>().and_then(|m| match m {
                sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(db))
                | sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => Some(db.code()),
                _ => None,
            }),
        };
        db.flatten().is_some_and(|code| code == "42501")
    });
    match refused {
        true => err.context(
            "the database role lacks a privilege Dash needs: it must own its database (or have CREATE \
             on it and on schema public), to create Dash's tables, the apalis schema of the job queue \
             and the pgcrypto extension (and timescaledb, where preloaded); see docs/DEPLOY.md, \
             \"Database privileges\"",
        ),
        false => err,
    }
}

async fn run(
    command: Command,
    settings: Option<Settings>,
    library_warnings: Arc<TargetThrottle>,
) -> anyhow::Result<()> {
    let settings = || settings.clone().expect("settings loaded for this command");
    match command {
        Command::Serve { .. } => serve(settings(), library_warnings).await,
        Command::Migrate => commands::migrate(&settings()).await,
        Command::Pipeline { action } => commands::pipeline(&settings(), action).await,
        Command::View { action } => commands::view(&settings(), action).await,
        Command::Board { action } => commands::board(&settings(), action).await,
        Command::Export(args) => commands::export(&settings(), args).await,
        Command::Bench(options) => {
            let report = dash_bench::run_load(options).await?;
            println!("{report}");
            Ok(())
        }
        Command::BenchE2e(options) => {
            println!("{}", dash_bench::run_e2e(options).await?);
            Ok(())
        }
        Command::BenchLive(options) => {
            println!("{}", dash_bench::run_live(options).await?);
            Ok(())
        }
        Command::Verify(options) => commands::verify(options).await,
        Command::Ceiling(action) => commands::ceiling(action).await,
        Command::DataDir => {
            println!("{}", std::path::absolute(&settings().data_dir)?.display());
            Ok(())
        }
    }
}

async fn serve(settings: Settings, library_warnings: Arc<TargetThrottle>) -> anyhow::Result<()> {
    let metrics = install_metrics();
    let app = app::App::build(settings, metrics, library_warnings).await?;
    // Scripts and tests read this line to learn the port when listening on port 0.
    println!("dashd listening on http://{}", app.local_addr());
    app.run_until_stopped(shutdown_signal()).await
}

/// Libraries that log each failure of a retry loop on their own: their warnings pass once per
/// period each, and a summary says how many were held back.
const THROTTLED_LIBRARIES: &[&str] = &["apalis", "sqlx::pool"];

fn init_tracing() -> Arc<TargetThrottle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DASH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("DASH_LOG_FORMAT").is_ok_and(|f| f == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let throttle = Arc::new(TargetThrottle::new(THROTTLED_LIBRARIES, dash_log_throttle::PERIOD));
    let registry = tracing_subscriber::registry().with(filter).with(TargetThrottleLayer(throttle.clone()));
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        registry.with(format.json()).init();
    } else {
        registry.with(format).init();
    }
    throttle
}

fn install_metrics() -> Option<PrometheusHandle> {
    let flush_seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    let batch_sizes = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 750.0, 1000.0];
    let request_seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let round_trip_seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    let installed = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("dash_flush_duration_seconds".into()), &flush_seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("dash_flush_batch_size".into()), &batch_sizes))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("dash_http_request_duration_seconds".into()), &request_seconds)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("dash_bus_round_trip_seconds".into()), &round_trip_seconds)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("dash_view_history_lock_seconds".into()), &flush_seconds))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("dash_view_rollup_lock_seconds".into()), &flush_seconds))
        .and_then(|b| b.install_recorder());
    match installed {
        Ok(handle) => {
            metrics_catalog::describe();
            Some(handle)
        }
        Err(err) => {
            tracing::warn!(error = %err, "metrics recorder not installed; /metrics will be empty");
            None
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
