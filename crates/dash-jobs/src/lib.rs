//! Background jobs on ingestors: scheduled source polls and store maintenance, on apalis.
//!
//! Two tasks per node:
//! - the **scheduler** computes, for every source and for maintenance, the latest tick of its
//!   schedule (the same instant on every node) and enqueues a job keyed `(schedule, tick)`. The
//!   queue's unique index on that key is the arbiter: however many ingestors run, each tick is
//!   one job;
//! - the **worker** (apalis) takes jobs with `FOR UPDATE SKIP LOCKED`, so one node runs each. It
//!   beats every [`queue::HEARTBEAT`]; a worker silent for `HEARTBEAT × MISSED_HEARTBEATS` is
//!   dead, and any live worker puts its jobs back in the queue, where another node takes them.
//!   The worker is supervised: when apalis gives up (its database connection failed) a new
//!   worker starts after a backoff.
//!
//! **Architecture invariant:** polled events enter through [`Intake::submit`], the webhook path;
//! jobs never write events to the store themselves.

pub mod poll;
pub mod queue;
pub mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use dash_ingest::Intake;
use dash_log_throttle::LogThrottle;
use dash_store::{SourceRecord, Store};
use dash_task::{StopSignal, StoppableTask};

pub use poll::{Poller, TICK_HEADER};
pub use queue::{Job, JobQueue};
pub use source::{CursorSpec, Schedule, Source, SourceError, SourceSpec, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job queue: {0}")]
    Postgres(#[from] apalis_postgres::Error),
    #[error("job queue: {0}")]
    Sqlite(#[from] apalis_sqlite::Error),
    #[error("job queue database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot prepare the job queue's location: {0}")]
    Location(std::io::Error),
    #[error("enqueue failed: {0}")]
    Enqueue(String),
    #[error("store: {0}")]
    Store(#[from] dash_store::StoreError),
    #[error("intake refused polled events: {0}")]
    Intake(String),
    #[error("bad pipeline id: {0}")]
    Pipeline(String),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("TLS for the HTTP client: {0}")]
    Tls(#[from] rustls::Error),
}

/// How often the scheduler looks for due ticks.
const SCHEDULER_EVERY: Duration = Duration::from_millis(250);
/// A tick older than this when first seen is skipped, not run late (the node was down, say).
const LATE_LIMIT: Duration = Duration::from_secs(60);
/// What a tick may take beyond its attempts: waiting in the queue and for intake's backlog.
const TICK_SLACK: Duration = Duration::from_secs(45);
/// Finished jobs are kept this long; it must exceed [`LATE_LIMIT`] so a late enqueue of a tick
/// still meets its key.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// Longest wait between polls of a failing source (or its period, if longer).
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Names this node's apalis workers.
    pub node: String,
    /// Where the SQLite job queue lives (embedded store only).
    pub data_dir: PathBuf,
    /// Jobs one node runs at once.
    pub concurrency: usize,
    pub maintenance_every: Duration,
    pub retention: Duration,
    pub dedupe_window: Duration,
    /// How long shutdown waits for running jobs before leaving them to other nodes.
    pub shutdown_timeout: Duration,
    /// Where the scheduler leaves the queue's depth for this node's heartbeat.
    pub depth: QueueDepth,
}

/// The job queue's depth as the scheduler last read it (every 5 s): jobs waiting, jobs running.
#[derive(Debug, Clone, Default)]
pub struct QueueDepth(Arc<parking_lot::Mutex<Option<(u64, u64)>>>);

impl QueueDepth {
    pub fn get(&self) -> Option<(u64, u64)> {
        *self.0.lock()
    }

    fn set(&self, depth: Option<(u64, u64)>) {
        *self.0.lock() = depth;
    }
}

/// The scheduler and the worker; stop them with [`JobsTask::shutdown`] before intake closes.
pub struct JobsTask {
    scheduler: StoppableTask,
    worker: StoppableTask,
    shutdown_timeout: Duration,
}

impl JobsTask {
    /// Stops scheduling, then lets running jobs finish for up to `shutdown_timeout`. A job
    /// still running then is left to the queue: its worker stops beating and another node (or
    /// this one, restarted) runs it again.
    pub async fn shutdown(self) {
        self.scheduler.shutdown().await;
        if tokio::time::timeout(self.shutdown_timeout, self.worker.shutdown()).await.is_err() {
            tracing::warn!("running jobs did not finish in time; the queue will run them again");
        }
    }
}

/// TLS for polled sources: the system's roots, and ring as the one crypto provider of the build
/// (sqlx and async-nats use it already), named here rather than installed as a process default.
fn tls_config() -> Result<rustls::ClientConfig, JobError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Opens the queue and starts this node's scheduler and worker.
pub async fn start(settings: JobSettings, store: Store, intake: Intake) -> Result<JobsTask, JobError> {
    let queue = JobQueue::open(&store, &settings.data_dir, settings.concurrency).await?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config()?)
        .user_agent(concat!("dash/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let runner = Arc::new(Runner {
        poller: Poller { store: store.clone(), intake, http },
        queue: queue.clone(),
        settings: settings.clone(),
        failures: LogThrottle::per_period(),
    });
    let settings_timeout = settings.shutdown_timeout;
    let scheduler_queue = queue.clone();
    let scheduler_settings = settings.clone();
    let scheduler = StoppableTask::spawn(|stop| schedule(scheduler_queue, store, scheduler_settings, stop));
    let concurrency = settings.concurrency;
    let worker = StoppableTask::spawn(|stop| supervise_worker(queue, runner, settings, stop));
    tracing::info!(concurrency, "background jobs started");
    Ok(JobsTask { scheduler, worker, shutdown_timeout: settings_timeout })
}

/// What a job needs to run.
struct Runner {
    poller: Poller,
    queue: JobQueue,
    settings: JobSettings,
    /// During a database outage every job fails: one warning per period.
    failures: LogThrottle,
}

impl Runner {
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        match job {
            Job::Poll { pipeline, tick_ms } => self.poller.run(pipeline, *tick_ms).await,
            Job::Maintain { .. } => {
                let report = self.poller.store.maintain(self.settings.retention, self.settings.dedupe_window).await?;
                let vacuumed = self.queue.vacuum(KEEP_FINISHED).await?;
                tracing::info!(?report, jobs_vacuumed = vacuumed, "store maintenance done");
                Ok(())
            }
            Job::Backfill { pipeline, view, generation, .. } => self.backfill(pipeline, view, *generation).await,
            Job::Unknown => {
                tracing::info!("a job of a later release is left to the nodes that run it");
                Ok(())
            }
            Job::Rollup { .. } => {
                let states = self.poller.store.roll_up_views(dash_domain::now_ms(), ROLLUP_BUDGET).await?;
                if states > 0 {
                    tracing::debug!(states, "views rolled up");
                }
                Ok(())
            }
        }
    }

    /// Computes a view's history step by step (each step a transaction of its own, see
    /// [`Store::backfill_step`]) until it is done or the view changes again.
    async fn backfill(&self, pipeline: &str, view: &str, generation: i64) -> Result<(), JobError> {
        let store = &self.poller.store;
        let started = Instant::now();
        let mut events = 0;
        loop {
            match store.backfill_step(pipeline, view, generation, dash_store::BACKFILL_STEP_EVENTS).await? {
                None => {
                    tracing::info!(pipeline, view, generation, "view changed or deleted; its backfill stops here");
                    return Ok(());
                }
                Some(progress) => {
                    let step = progress.events_done - events;
                    events = progress.events_done;
                    metrics::counter!("dash_view_backfill_events_total").increment(step.max(0) as u64);
                    if progress.done {
                        tracing::info!(
                            pipeline,
                            view,
                            generation,
                            events,
                            seconds = started.elapsed().as_secs_f64(),
                            "view history computed"
                        );
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The apalis handler: one job, timed and counted.
async fn handle(job: Job, runner: Data<Arc<Runner>>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let result = runner.run(&job).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("dash_jobs_runs_total", "job" => job.kind(), "outcome" => outcome).increment(1);
    metrics::histogram!("dash_jobs_run_seconds", "job" => job.kind()).record(started.elapsed().as_secs_f64());
    if let Err(err) = &result
        && let Some(held_back) = runner.failures.admit()
    {
        tracing::warn!(job = job.kind(), key = %job.key(), error = %err, held_back, "job failed; the queue will retry it");
    }
    result.map_err(Into::into)
}

/// Runs apalis workers until stopped, starting a new one (with a new name, as apalis wants)
/// after a backoff whenever one ends on an error.
async fn supervise_worker(queue: JobQueue, runner: Arc<Runner>, settings: JobSettings, stop: StopSignal) {
    let started_ms = dash_domain::now_ms();
    let mut generation = 0u32;
    let backoffs = || {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoffs();
    // While the database is down a worker fails at each backoff: one warning per period.
    let restarts = LogThrottle::per_period();
    loop {
        generation += 1;
        let name = format!("{}-{started_ms}-{generation}", settings.node);
        let signal = stopped(stop.clone());
        let began = Instant::now();
        let run = async {
            match queue.clone() {
                JobQueue::Postgres(storage) => {
                    WorkerBuilder::new(name.as_str())
                        .backend(storage)
                        .concurrency(settings.concurrency)
                        .data(runner.clone())
                        .build(handle)
                        .run_until(signal)
                        .await
                }
                JobQueue::Sqlite(storage) => {
                    WorkerBuilder::new(name.as_str())
                        .backend(storage)
                        .concurrency(settings.concurrency)
                        .data(runner.clone())
                        .build(handle)
                        .run_until(signal)
                        .await
                }
            }
        };
        let result = run.await;
        if stop.is_cancelled() {
            tracing::debug!(worker = %name, "job worker stopped");
            return;
        }
        if let Some(held_back) = restarts.admit() {
            match result {
                Ok(()) => tracing::warn!(worker = %name, held_back, "job worker ended; starting another"),
                Err(err) => {
                    tracing::warn!(worker = %name, error = %err, held_back, "job worker failed; starting another")
                }
            }
        }
        metrics::counter!("dash_jobs_worker_restarts_total").increment(1);
        if began.elapsed() > Duration::from_secs(30) {
            delays = backoffs();
        }
        let backoff = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn stopped(stop: StopSignal) -> Result<(), std::io::Error> {
    stop.cancelled().await;
    Ok(())
}

/// Enqueues every due tick, once per tick per node; the queue keeps one job per tick overall.
async fn schedule(mut queue: JobQueue, store: Store, settings: JobSettings, stop: StopSignal) {
    let maintenance = Schedule::Every(settings.maintenance_every);
    let rollup = Schedule::Every(ROLLUP_EVERY);
    let mut ticks = PollTicks::default();
    let mut last_maintenance: Option<i64> = None;
    let mut last_rollup: Option<i64> = None;
    let mut failing = false;
    let enqueue_failures = LogThrottle::per_period();
    let mut last_backfill_check: Option<i64> = None;
    let mut last_depth: Option<i64> = None;
    loop {
        let now = dash_domain::now_ms();
        if last_depth.is_none_or(|last| now - last >= QUEUE_DEPTH_EVERY_MS) {
            last_depth = Some(now);
            match queue.depth().await {
                Ok((pending, running)) => {
                    metrics::gauge!("dash_jobs_queue_depth", "state" => "pending").set(pending as f64);
                    metrics::gauge!("dash_jobs_queue_depth", "state" => "running").set(running as f64);
                    settings.depth.set(Some((pending.max(0) as u64, running.max(0) as u64)));
                }
                Err(err) => {
                    tracing::debug!(error = %err, "job queue depth not read; next pass");
                    settings.depth.set(None);
                }
            }
        }
        let mut due = match store.sources().await {
            Ok(sources) => {
                if failing {
                    tracing::info!("job scheduler reads sources again");
                    failing = false;
                }
                let mut due = ticks.due(&sources, now);
                if let Some(tick) = maintenance.latest(now)
                    && fresh(tick, now, settings.maintenance_every)
                    && last_maintenance.is_none_or(|last| last < tick)
                {
                    last_maintenance = Some(tick);
                    due.push(Job::Maintain { tick_ms: tick });
                }
                if let Some(tick) = rollup.latest(now)
                    && fresh(tick, now, ROLLUP_EVERY)
                    && last_rollup.is_none_or(|last| last < tick)
                {
                    last_rollup = Some(tick);
                    due.push(Job::Rollup { tick_ms: tick });
                }
                due
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "job scheduler cannot read sources; retrying");
                    failing = true;
                }
                Vec::new()
            }
        };
        if backfills_due(&mut last_backfill_check, now) {
            match store.pending_backfills().await {
                Ok(pending) => due.extend(pending.into_iter().map(|p| Job::Backfill {
                    pipeline: p.pipeline,
                    view: p.view,
                    generation: p.generation,
                    made_ms: p.made_ms,
                })),
                Err(err) => tracing::debug!(error = %err, "pending view backfills not read; next pass"),
            }
        }
        for job in due {
            match queue.enqueue(job.clone()).await {
                Ok(created) => {
                    let outcome = if created { "created" } else { "existed" };
                    metrics::counter!("dash_jobs_enqueued_total", "job" => job.kind(), "outcome" => outcome)
                        .increment(1);
                    if let Job::Poll { pipeline, tick_ms } = &job {
                        ticks.enqueued(pipeline, *tick_ms);
                    }
                }
                Err(err) => {
                    if let Some(held_back) = enqueue_failures.admit() {
                        tracing::warn!(key = %job.key(), error = %err, held_back, "enqueue failed; retrying");
                    }
                    // Forget the tick so the next pass tries again.
                    match &job {
                        Job::Poll { pipeline, .. } => ticks.forget(pipeline),
                        Job::Maintain { .. } => last_maintenance = None,
                        Job::Backfill { .. } => last_backfill_check = None,
                        Job::Rollup { .. } => last_rollup = None,
                        Job::Unknown => {}
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SCHEDULER_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How often views' levels are rolled forward (once per tick across the cluster); what one
/// run may take before it leaves the rest to the next tick.
const ROLLUP_EVERY: Duration = Duration::from_secs(60);
const ROLLUP_BUDGET: Duration = Duration::from_secs(50);

/// How often the scheduler reads the queue's depth (`dash_jobs_queue_depth`).
const QUEUE_DEPTH_EVERY_MS: i64 = 5000;

/// How often the scheduler looks for views whose history is to be computed.
const BACKFILL_CHECK_EVERY_MS: i64 = 1000;

/// Whether to look for pending view backfills now (and note that it did).
fn backfills_due(last: &mut Option<i64>, now: i64) -> bool {
    if last.is_some_and(|l| now - l < BACKFILL_CHECK_EVERY_MS) {
        return false;
    }
    *last = Some(now);
    true
}

/// What the scheduler remembers of each source's ticks on this node.
#[derive(Default)]
struct PollTicks {
    /// The newest tick looked at, per pipeline: each tick is considered once.
    seen: HashMap<String, i64>,
    /// The newest tick enqueued, per pipeline (by this node or, for the same key, another).
    enqueued: HashMap<String, i64>,
}

impl PollTicks {
    /// The polls due now: each source's latest tick, if this node has not looked at it yet, it
    /// is not older than the source itself, not too late, not inside a failing source's
    /// backoff, and the source's previous tick has finished. A source is polled by one tick at
    /// a time: a tick due while the previous one still runs (retrying a failing source, say) is
    /// skipped, as a late one is.
    fn due(&mut self, sources: &[SourceRecord], now: i64) -> Vec<Job> {
        let mut due = Vec::new();
        for record in sources {
            let Ok(source) = SourceSpec::from_stored(&record.spec) else { continue };
            let Some(tick) = source.schedule.latest(now) else { continue };
            if self.seen.get(&record.pipeline).is_some_and(|last| *last >= tick) {
                continue;
            }
            self.seen.insert(record.pipeline.clone(), tick);
            let period = source.schedule.period(tick);
            if tick < record.updated_at
                || !fresh(tick, now, period)
                || in_backoff(record, tick, period)
                || self.previous_running(record, &source, now)
            {
                continue;
            }
            due.push(Job::Poll { pipeline: record.pipeline.clone(), tick_ms: tick });
        }
        due
    }

    /// Whether the last tick enqueued for `record`'s source has not recorded its outcome yet
    /// and is young enough to still be running. An older one is taken as lost (its job gave
    /// up), so a lost job does not stop the schedule.
    fn previous_running(&self, record: &SourceRecord, source: &Source, now: i64) -> bool {
        let Some(&previous) = self.enqueued.get(&record.pipeline) else { return false };
        previous >= record.updated_at
            && record.last_tick.is_none_or(|recorded| recorded < previous)
            && now - previous < longest_tick(source).as_millis() as i64
    }

    fn enqueued(&mut self, pipeline: &str, tick: i64) {
        self.enqueued.insert(pipeline.to_owned(), tick);
    }

    /// Forgets the tick looked at last, so the next pass considers it again.
    fn forget(&mut self, pipeline: &str) {
        self.seen.remove(pipeline);
    }
}

/// The longest one tick of `source` can run: every attempt timing out, the waits between
/// them, and room for the queue to start it and intake to take its events.
fn longest_tick(source: &Source) -> Duration {
    let waits = poll::FIRST_RETRY * ((1 << (poll::ATTEMPTS - 1)) - 1);
    source.timeout * poll::ATTEMPTS + waits + TICK_SLACK
}

/// Whether a tick is recent enough to run now rather than be skipped as missed.
fn fresh(tick: i64, now: i64, period: Duration) -> bool {
    let limit = period.min(LATE_LIMIT).as_millis() as i64;
    now - tick < limit.max(1_000)
}

/// After `n ≥ 2` failed ticks in a row, the next poll waits `period × 2^(n-1)` (at most
/// [`MAX_BACKOFF`], or the period if longer) from the last one; one failure does not wait.
pub fn backoff_after(failures: i64, period: Duration) -> Duration {
    if failures < 2 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 1).min(16) as u32;
    period.saturating_mul(factor).min(MAX_BACKOFF.max(period))
}

fn in_backoff(record: &SourceRecord, tick: i64, period: Duration) -> bool {
    let wait = backoff_after(record.consecutive_failures, period);
    match record.last_run_at {
        // Half a period of slack: ticks land on the schedule, runs a little after.
        Some(last) if !wait.is_zero() => tick < last + wait.as_millis() as i64 - period.as_millis() as i64 / 2,
        _ => false,
    }
}

/// When the source will next be polled, as pages and the API show it.
pub fn next_poll(record: &SourceRecord, source: &Source, now: i64) -> Option<i64> {
    let mut tick = source.schedule.next(now)?;
    for _ in 0..64 {
        let period = source.schedule.period(tick);
        if tick >= record.updated_at && !in_backoff(record, tick, period) {
            return Some(tick);
        }
        tick = source.schedule.next(tick)?;
    }
    Some(tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spec: &str, failures: i64, last_run_at: Option<i64>) -> SourceRecord {
        SourceRecord {
            pipeline: "p".into(),
            spec: spec.into(),
            updated_at: 0,
            cursor: None,
            runs: 0,
            failures,
            consecutive_failures: failures,
            events_total: 0,
            last_tick: None,
            last_run_at,
            last_ok_at: None,
            last_events: None,
            last_error: None,
        }
    }

    const EVERY_10S: &str = r#"{"url":"http://127.0.0.1:9/","every":"10s"}"#;

    #[test]
    fn each_tick_is_due_once_per_node() {
        let sources = [record(EVERY_10S, 0, None)];
        let mut ticks = PollTicks::default();
        assert_eq!(ticks.due(&sources, 100_500), [Job::Poll { pipeline: "p".into(), tick_ms: 100_000 }]);
        assert!(ticks.due(&sources, 101_000).is_empty());
        assert_eq!(ticks.due(&sources, 110_001).len(), 1);
    }

    #[test]
    fn late_ticks_and_ticks_before_the_source_are_skipped() {
        let mut late = record(EVERY_10S, 0, None);
        late.updated_at = 0;
        assert!(PollTicks::default().due(&[late], 109_999 + 10_000).len() == 1);
        let mut newer = record(EVERY_10S, 0, None);
        newer.updated_at = 100_200;
        assert!(PollTicks::default().due(&[newer], 100_500).is_empty());
    }

    #[test]
    fn a_source_runs_one_tick_at_a_time() {
        let mut source = record(EVERY_10S, 0, None);
        let mut ticks = PollTicks::default();
        assert_eq!(ticks.due(std::slice::from_ref(&source), 100_100).len(), 1);
        ticks.enqueued("p", 100_000);
        // Tick 100 s has not recorded its outcome: 110 s is skipped, not run alongside it.
        assert!(ticks.due(std::slice::from_ref(&source), 110_100).is_empty());
        source.last_tick = Some(100_000);
        assert_eq!(ticks.due(std::slice::from_ref(&source), 120_100).len(), 1);
        ticks.enqueued("p", 120_000);
        // A tick that never records anything is taken as lost once it is past its longest run.
        source.last_tick = Some(100_000);
        let spec = SourceSpec::from_stored(EVERY_10S).unwrap();
        let lost_after = 120_000 + longest_tick(&spec).as_millis() as i64;
        let next = (lost_after / 10_000 + 1) * 10_000;
        assert_eq!(ticks.due(std::slice::from_ref(&source), next + 100).len(), 1);
        // A replaced source does not wait for the old one's tick.
        ticks.enqueued("p", next);
        source.updated_at = next + 500;
        assert_eq!(ticks.due(std::slice::from_ref(&source), next + 10_100).len(), 1);
    }

    #[test]
    fn failing_sources_back_off_exponentially() {
        let period = Duration::from_secs(10);
        assert_eq!(backoff_after(1, period), Duration::ZERO);
        assert_eq!(backoff_after(2, period), Duration::from_secs(20));
        assert_eq!(backoff_after(3, period), Duration::from_secs(40));
        assert_eq!(backoff_after(40, period), MAX_BACKOFF);
        // Three failures, last run at 100.2 s: waits 40 s, so 110..130 s are skipped.
        let failing = record(EVERY_10S, 3, Some(100_200));
        assert!(in_backoff(&failing, 130_000, period));
        assert!(!in_backoff(&failing, 140_000, period));
        let source = SourceSpec::from_stored(EVERY_10S).unwrap();
        assert_eq!(next_poll(&failing, &source, 101_000), Some(140_000));
    }

    #[test]
    fn the_poll_client_names_its_tls_provider() {
        // No process-wide provider is installed here: the client must not need one.
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        let config = tls_config().unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        reqwest::Client::builder().tls_backend_preconfigured(config).build().unwrap();
    }
}
