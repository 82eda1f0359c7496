//! What waits for the database: migrations (when the database was unreachable at start), the
//! pipelines the configuration names, and the background jobs.
//!
//! A node starts whether or not the database answers ([`first_contact`]): intake accepts into
//! its log meanwhile, authenticating from the pipeline directory's local copy, and pages say the
//! database is unavailable. [`DatabaseTask`] keeps trying; once the store is migrated it tells
//! the buffer actors (which then flush), applies the configured pipelines and starts the jobs,
//! which it owns and stops on shutdown.

use std::time::Duration;

use anyhow::Context;
use dash_ingest::Intake;
use dash_jobs::{JobSettings, JobsTask, SourceSpec};
use dash_log_throttle::LogThrottle;
use dash_store::Store;
use dash_task::{StopSignal, StoppableTask};
use tokio::sync::watch;

/// How long the first look for the database may take before the node starts without it.
const FIRST_CONTACT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A `[pipelines.<name>]` table of the configuration, checked.
pub struct ConfiguredPipeline {
    pub name: String,
    pub retention: Option<Duration>,
    pub source: Option<SourceSpec>,
    pub views: Vec<(String, dash_views::ViewSpec)>,
    /// The provider and its secret.
    pub verify: Option<(dash_providers::VerifySpec, Option<String>)>,
}

/// A `[pipelines.<name>.verify]` table: its secret read from `secret_file` (trailing newline
/// dropped) or the environment variable `secret_env`, then checked as the API checks it.
fn configured_verify(
    name: &str,
    table: &serde_json::Value,
) -> anyhow::Result<(dash_providers::VerifySpec, Option<String>)> {
    let context = || format!("pipelines.{name}.verify");
    let mut object = table.as_object().cloned().with_context(|| format!("{}: must be a table", context()))?;
    if object.contains_key("secret") {
        anyhow::bail!(
            "{}.secret: a secret is never written in a config file; use secret_file or secret_env",
            context()
        );
    }
    let secret = match (object.remove("secret_file"), object.remove("secret_env")) {
        (Some(_), Some(_)) => anyhow::bail!("{}: secret_file or secret_env, not both", context()),
        (Some(serde_json::Value::String(path)), None) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}.secret_file {path:?}", context()))?;
            Some(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, Some(serde_json::Value::String(var))) => {
            Some(std::env::var(&var).with_context(|| format!("{}.secret_env: {var} is not set", context()))?)
        }
        (None, None) => None,
        _ => anyhow::bail!("{}: secret_file and secret_env are strings", context()),
    };
    if let Some(secret) = secret {
        object.insert("secret".into(), serde_json::Value::String(secret));
    }
    dash_providers::VerifySpec::from_json_with_secret(&serde_json::Value::Object(object))
        .map_err(|e| anyhow::anyhow!("{}.{}: {}", context(), e.field, e.message))
}

/// Checks the configured pipelines without the database: a bad table stops the start.
pub fn configured_pipelines(settings: &dash_config::Settings) -> anyhow::Result<Vec<ConfiguredPipeline>> {
    let mut configured = Vec::new();
    for (name, table) in &settings.pipelines {
        dash_domain::check_pipeline_name(name)
            .and_then(|()| dash_domain::PipelineId::from_name(name))
            .with_context(|| format!("pipelines.{name}"))?;
        let source = match &table.source {
            Some(value) => {
                let spec: SourceSpec =
                    serde_json::from_value(value.clone()).with_context(|| format!("pipelines.{name}.source"))?;
                spec.validate().with_context(|| format!("pipelines.{name}.source"))?;
                Some(spec)
            }
            None => None,
        };
        let mut views = Vec::new();
        for (view, value) in &table.views {
            let checked = dash_views::check_view_name(view)
                .and_then(|()| dash_views::ViewSpec::from_json(value.clone()))
                .with_context(|| format!("pipelines.{name}.views.{view}"))?;
            views.push((view.clone(), checked));
        }
        if views.len() > dash_views::MAX_VIEWS_PER_PIPELINE {
            anyhow::bail!("pipelines.{name}.views: at most {} views", dash_views::MAX_VIEWS_PER_PIPELINE);
        }
        let verify = table.verify.as_ref().map(|t| configured_verify(name, t)).transpose()?;
        configured.push(ConfiguredPipeline { name: name.clone(), retention: table.retention, source, views, verify });
    }
    Ok(configured)
}

/// What the configuration makes in the database: pipelines (on roles that run intake) and
/// boards (on every role).
#[derive(Default)]
pub struct Configured {
    pub pipelines: Vec<ConfiguredPipeline>,
    pub boards: Vec<ConfiguredBoard>,
}

impl Configured {
    /// Checks the configuration's pipelines (where `intake`) and boards; a bad table stops the
    /// start.
    pub fn check(settings: &dash_config::Settings, intake: bool) -> anyhow::Result<Self> {
        let pipelines = if intake { configured_pipelines(settings)? } else { Vec::new() };
        Ok(Self { pipelines, boards: configured_boards(settings)? })
    }

    /// Pipelines first: a board may show them.
    pub async fn apply(&self, store: &Store) -> anyhow::Result<()> {
        apply_configured_pipelines(store, &self.pipelines).await?;
        apply_configured_boards(store, &self.boards).await
    }
}

/// A `[boards.<name>]` table of the configuration, checked.
pub struct ConfiguredBoard {
    pub name: String,
    pub spec: dash_boards::BoardSpec,
}

/// Checks the configured boards without the database: a bad table stops the start, naming the
/// field (`boards.ops.panels[1].width`). What the panels name is not checked here: a board may
/// show a pipeline an ingestor has not made yet, and its panel says so until it has.
fn configured_boards(settings: &dash_config::Settings) -> anyhow::Result<Vec<ConfiguredBoard>> {
    let mut configured = Vec::new();
    for (name, table) in &settings.boards {
        let spec = dash_boards::check_board_name(name)
            .and_then(|()| dash_boards::BoardSpec::from_json(table.clone()))
            .map_err(|e| anyhow::anyhow!("boards.{name}.{}: {}", e.field, e.message))?;
        configured.push(ConfiguredBoard { name: name.clone(), spec });
    }
    Ok(configured)
}

/// Makes each configured board, or brings it back to what the configuration says; a board
/// already as it says is not written.
async fn apply_configured_boards(store: &Store, configured: &[ConfiguredBoard]) -> anyhow::Result<()> {
    for board in configured {
        let changed = store
            .put_board(&board.name, &board.spec, dash_store::PutMode::Upsert)
            .await
            .with_context(|| format!("boards.{}", board.name))?;
        if changed {
            tracing::info!(board = %board.name, "board from config applied");
        }
    }
    Ok(())
}

/// Tries the database once at start: `Ok(true)` when it is migrated, `Ok(false)` when it cannot
/// be reached (the node starts degraded). Any other refusal (a missing privilege, a wrong
/// password) stops the start: waiting would not mend it.
pub async fn first_contact(store: &Store) -> anyhow::Result<bool> {
    match store.ping(FIRST_CONTACT).await {
        Ok(_) => {}
        Err(err) if err.is_unavailable() => {
            tracing::warn!(error = %err, "database unreachable at start: serving degraded (webhooks go to the intake log); migrating once it answers");
            return Ok(false);
        }
        Err(err) => return Err(err).context("connecting to the database"),
    }
    match store.migrate().await {
        Ok(()) => Ok(true),
        Err(err) if err.is_unavailable() => {
            tracing::warn!(error = %err, "database lost while migrating at start: serving degraded; retrying");
            Ok(false)
        }
        Err(err) => Err(err).context("migrating the database"),
    }
}

/// What the task does once the database answers.
pub struct Arrival {
    pub store: Store,
    /// Set once migrated; buffer actors wait for it.
    pub migrated: watch::Sender<bool>,
    pub configured: Configured,
    /// On roles that run intake: the jobs to start, and the intake they feed.
    pub jobs: Option<(JobSettings, Intake)>,
}

/// Owns [`Arrival`]'s work and, once started, the jobs; [`StoppableTask::shutdown`] stops them.
pub type DatabaseTask = StoppableTask;

pub fn spawn(arrival: Arrival) -> DatabaseTask {
    StoppableTask::spawn(|stop| run(arrival, stop))
}

async fn run(arrival: Arrival, stop: StopSignal) {
    let Arrival { store, migrated, configured, jobs } = arrival;
    let failures = LogThrottle::per_period();
    let mut delays = retry_delays();
    while !*migrated.borrow() {
        match migrate(&store).await {
            Ok(()) => {
                migrated.send_replace(true);
                tracing::info!(layout = store.layout(), "database reached and migrated: the intake log flushes now");
            }
            Err(err) => {
                let err = crate::explain_privileges(err).to_string();
                let delay = next_delay(&mut delays);
                retry(&failures, "database not migrated yet", &err, delay);
                if pause(&stop, delay).await {
                    return;
                }
            }
        }
    }
    if let Some((_, intake)) = &jobs {
        intake.directory().reload().await;
    }
    let mut delays = retry_delays();
    loop {
        let Err(err) = configured.apply(&store).await else { break };
        let unavailable = err.chain().any(|cause| {
            cause.downcast_ref::<dash_store::StoreError>().is_some_and(dash_store::StoreError::is_unavailable)
        });
        if !unavailable {
            // Waiting would not mend it; the jobs must run regardless.
            tracing::error!(error = format!("{err:#}"), "configured pipelines or boards could not be applied");
            break;
        }
        let delay = next_delay(&mut delays);
        retry(&failures, "configured pipelines and boards not applied", &format!("{err:#}"), delay);
        if pause(&stop, delay).await {
            return;
        }
    }
    let Some((settings, intake)) = jobs else {
        stop.cancelled().await;
        return;
    };
    let mut delays = retry_delays();
    let running: JobsTask = loop {
        match dash_jobs::start(settings.clone(), store.clone(), intake.clone()).await {
            Ok(task) => break task,
            Err(err) => {
                let delay = next_delay(&mut delays);
                retry(&failures, "background jobs not started", &err.to_string(), delay);
                if pause(&stop, delay).await {
                    return;
                }
            }
        }
    };
    stop.cancelled().await;
    running.shutdown().await;
}

/// Migrates from a blocking thread of the runtime's: sqlx's migrator future is not one the
/// compiler can prove `Send` inside a spawned task (a higher-ranked `Acquire` bound), and a
/// blocking thread may wait on any future.
///
/// A migration that panics is an error like any other here: the task goes on trying, since the
/// buffer actors wait for it (ending would leave them waiting for good).
async fn migrate(store: &Store) -> anyhow::Result<()> {
    let (store, runtime) = (store.clone(), tokio::runtime::Handle::current());
    match tokio::task::spawn_blocking(move || runtime.block_on(store.migrate())).await {
        Ok(migrated) => Ok(migrated?),
        Err(err) => Err(anyhow::anyhow!("the migration task failed: {err}")),
    }
}

/// One warning per period for the loops above, with how many were held back.
fn retry(failures: &LogThrottle, what: &str, err: &str, delay: Duration) {
    if let Some(held_back) = failures.admit() {
        tracing::warn!(error = err, held_back, retry_in_ms = delay.as_millis() as u64, "{what}; retrying");
    }
}

/// Waits between tries: doubling from [`RETRY_FIRST`] up to [`RETRY_MAX`], each wait stretched
/// by a random part of itself, so that the nodes of a cluster that lost the same database do not
/// come back at it in step.
fn retry_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

fn next_delay(delays: &mut backon::ExponentialBackoff) -> Duration {
    delays.next().unwrap_or(RETRY_MAX)
}

/// Waits `delay`; true when told to stop meanwhile.
async fn pause(stop: &StopSignal, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stop.cancelled() => true,
    }
}

/// Applies `[pipelines.<name>]`: creates missing pipelines, then sets what each table names
/// (retention, source) where the store holds something else. Every ingestor does this once the
/// database answers; the writes are idempotent.
pub async fn apply_configured_pipelines(store: &Store, configured: &[ConfiguredPipeline]) -> anyhow::Result<()> {
    for configured in configured {
        let name = &configured.name;
        let pipeline = match store.find_pipeline(name).await? {
            Some(found) => found,
            None => match store.create_pipeline(name).await {
                Ok(issued) => issued.record,
                // Another node created it first.
                Err(dash_store::StoreError::Conflict(_)) => {
                    store.find_pipeline(name).await?.with_context(|| format!("pipeline {name}"))?
                }
                Err(err) => return Err(err).with_context(|| format!("creating pipeline {name}")),
            },
        };
        if let Some(retention) = configured.retention
            && pipeline.retention != Some(retention)
        {
            store.set_retention(&pipeline.id, Some(retention)).await?;
            tracing::info!(pipeline = %pipeline.id, retention = %dash_domain::format_retention(retention), "retention from config applied");
        }
        if let Some(spec) = &configured.source {
            let stored =
                store.source(&pipeline.id).await?.and_then(|r| serde_json::from_str::<SourceSpec>(&r.spec).ok());
            if stored.as_ref() != Some(spec) {
                store.set_source(&pipeline.id, &serde_json::to_string(spec)?, dash_domain::now_ms()).await?;
                tracing::info!(pipeline = %pipeline.id, url = %dash_jobs::redact_url(&spec.url), "source from config applied");
            }
        }
        if let Some((spec, secret)) = &configured.verify {
            let (_, changed) = store.set_verify(&pipeline.id, spec, secret.as_deref()).await?;
            if changed {
                tracing::info!(pipeline = %pipeline.id, provider = %spec.provider, "verify from config applied");
            }
        }
        for (view, spec) in &configured.views {
            let (_, write) = store
                .put_view(&pipeline.id, view, spec, dash_store::PutMode::Upsert)
                .await
                .with_context(|| format!("pipelines.{name}.views.{view}"))?;
            if write != dash_store::ViewWrite::Unchanged {
                tracing::info!(pipeline = %pipeline.id, view, change = ?write, "view from config applied");
            }
        }
    }
    Ok(())
}
