//! `dashd verify`: the fault harness Dash ships. It starts a local cluster of the running binary
//! (two web edges, two ingestors, a private PostgreSQL, a nats-server and a DNS server of its
//! own), sends signed webhooks through the edges as a provider does, injects faults from a seeded
//! schedule, and then checks the promise: every acknowledged event stored exactly once, and no
//! answer outside the contract (a refusal is 429 or 503 with `Retry-After`, nothing else).

mod faults;
mod network;
mod processes;
mod senders;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_discovery::testing::DnsServer;
use dash_signature::SigningSecret;
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde_json::Value;

use faults::Described;
pub use faults::{Cut, Fault, FaultKind, schedule};
use network::Network;
use processes::{Nats, Node, Postgres, Role, Tmpfs};
use senders::{EventKey, Ledger, Target};

const CLUSTER_NAME: &str = "dash.internal";
const INGESTOR_NAME: &str = "ingestor.process.dash.internal";
/// How long the cluster may take to be healthy again after a fault is healed before the fault
/// counts as unrecovered.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long a node stopped with SIGTERM may take to drain and exit before it is killed.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// A recovery slower than this prints what the cluster was last waiting for.
const SLOW_RECOVERY: Duration = Duration::from_secs(3);
/// How long, after the last fault, every acknowledged event may take to be stored.
const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// The database's data disk, when the run fills it: room for a long run's events. It is filled by
/// shrinking it to what it holds, so its size costs no memory.
const DATABASE_DISK_SIZE: &str = "16g";
/// Each ingestor's data disk, when the run fills disks.
const DISK_SIZE: &str = "64m";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("setting up the cluster: {0}")]
    Setup(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("reading the cluster's database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("talking to the cluster: {0}")]
    Http(#[from] reqwest::Error),
    /// The run's folder was kept: the error says where (its cause is in the text, not a source,
    /// so that it is printed once).
    #[error("{error} (logs and data kept in {})", dir.display())]
    Kept { error: Box<VerifyError>, dir: PathBuf },
}

/// What `dashd verify` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyOptions {
    /// Seed of the fault schedule; the same seed replays the same faults (default: random, and
    /// printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many faults to inject.
    #[arg(long, default_value_t = 30)]
    pub faults: usize,
    /// Stop injecting after this long (e.g. 10m), even with faults of the schedule left.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent senders, each one request at a time (every fifth an NDJSON batch of ten).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Which kinds of fault to draw from (comma-separated). Default: all; `disk` and
    /// `database-disk` (a tmpfs under each ingestor's data, or the database's, filled and given
    /// back) and `partition` (every host in a network namespace of its own) only as root.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kinds: Option<Vec<FaultKind>>,
    /// Folder of PostgreSQL's programs (initdb, pg_ctl, pg_config). TimescaleDB is preloaded
    /// when it is installed there. Default: `pg_config --bindir`, else the newest
    /// /usr/lib/postgresql/*/bin.
    #[arg(long)]
    pub postgres_bin: Option<PathBuf>,
    /// The nats-server program (default: /usr/sbin/nats-server, else nats-server on PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// The dashd binary the cluster runs (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// An earlier release of dashd: the cluster starts on it, and `upgrade` faults (drawn by
    /// default when this is given) swap nodes between it and the binary above, both ways.
    #[arg(long)]
    pub previous_binary: Option<PathBuf>,
    /// The cluster's hosts are 127.NET.0.1–5 (198.18.NET.0/24 and namespaces named dvNET-… when
    /// it partitions), so that runs side by side stay apart.
    #[arg(long, default_value_t = 200)]
    pub net: u8,
    /// A failing run appends the command that replays it here.
    #[arg(long, default_value = "dash-verify-failures.log")]
    pub failures_file: PathBuf,
    /// Keep the cluster's folder (logs, data) even when the run passes; a failing run always
    /// keeps it.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The run's view as one web edge read it at the end.
#[derive(Debug, serde::Serialize)]
pub struct ViewRead {
    /// The edge, and its release when it is not this one.
    pub edge: String,
    /// `None`: unreadable.
    pub total: Option<i64>,
    pub groups: Option<usize>,
}

/// What a run found.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub faults_planned: usize,
    pub senders: usize,
    #[serde(with = "humantime_serde::option")]
    pub duration: Option<Duration>,
    /// Faults run, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    pub timescaledb: bool,
    pub requests: u64,
    pub events_acked: usize,
    /// Distinct acknowledged events found in the database.
    pub events_stored: usize,
    /// Events stored that were sent but never acknowledged (the answer was lost): allowed.
    pub stored_unacked: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Rows whose id no sender ever sent.
    pub phantom: usize,
    /// The pipeline's count against its rows.
    pub count_matches: bool,
    /// The view as each web edge reads it.
    pub view_reads: Vec<ViewRead>,
    /// Every edge reads a view total equal to the rows, and at most `max_groups` groups and
    /// `(other)` (unless releases mixed).
    pub view_matches: bool,
    /// Non-2xx answers, by status (429 and 503 with Retry-After are the allowed refusals).
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Of those, the ones from an edge no fault touched meanwhile.
    pub transport_errors_unfaulted: u64,
    pub transport_error_examples: Vec<String>,
    /// Disk faults after which the ingestor's `/ready` said `disk_full` (the fault took hold).
    pub disk_faults_seen_full: u64,
    /// Full database disks during which an ingestor's `/ready` said its database was not ok.
    pub database_disk_faults_seen: u64,
    /// Upgrade faults that moved a node to this release, and back to the previous one.
    pub upgrades: u64,
    pub downgrades: u64,
    /// Nodes left on the previous release at the end.
    pub nodes_on_previous: usize,
    pub previous_binary: Option<PathBuf>,
    /// Answers outside the contract: any other status, a refusal without Retry-After, or a
    /// request to a healthy edge unanswered for 30 s.
    pub violations: u64,
    pub violation_examples: Vec<String>,
    /// The longest an edge no fault touched took to answer (bound: 16 s).
    pub slowest_answer_secs: f64,
    /// From a fault's heal to every node healthy again.
    pub worst_recovery_secs: f64,
    /// The same, per kind of fault.
    pub worst_recovery_by_kind: BTreeMap<FaultKind, f64>,
    pub worst_recovery_fault: Option<String>,
    /// Faults after which the cluster was not healthy within 30 s.
    pub unrecovered: Vec<String>,
    pub lost_examples: Vec<String>,
    pub elapsed_secs: f64,
    /// The cluster's folder, when kept.
    pub work_dir: Option<PathBuf>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.phantom == 0
            && self.count_matches
            && self.view_matches
            && self.violations == 0
            && self.unrecovered.is_empty()
            && self.events_acked > 0
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let kinds: Vec<&str> = self.faults.keys().map(|k| k.name()).collect();
        let mut command = format!(
            "dashd verify --seed {} --faults {} --kinds {} --senders {}",
            self.seed,
            self.faults_planned,
            kinds.join(","),
            self.senders
        );
        if let Some(duration) = self.duration {
            command.push_str(&format!(" --duration {}", humantime::format_duration(duration)));
        }
        if let Some(previous) = &self.previous_binary {
            command.push_str(&format!(" --previous-binary {}", previous.display()));
        }
        command
    }

    /// Appends the replay command of a failing run to `path`, with what failed.
    pub fn record_failure(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(
            file,
            "{} lost={} duplicated={} phantom={} violations={} unrecovered={} count_matches={} view_matches={}: {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            self.lost,
            self.duplicated,
            self.phantom,
            self.violations,
            self.unrecovered.len(),
            self.count_matches,
            self.view_matches,
            self.replay_command()
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let run: u64 = self.faults.values().sum();
        let store = if self.timescaledb { "PostgreSQL + TimescaleDB" } else { "PostgreSQL" };
        writeln!(f, "dashd verify: {verdict} (seed {}, {:.0} s, {store})", self.seed, self.elapsed_secs)?;
        let by_kind: Vec<String> = self.faults.iter().map(|(k, n)| format!("{} {n}", k.name())).collect();
        writeln!(f, "  faults        {run} of {} planned: {}", self.faults_planned, by_kind.join(", "))?;
        writeln!(f, "  requests      {}", self.requests)?;
        writeln!(
            f,
            "  events        {} acknowledged, {} stored ({} more stored whose answer was lost)",
            self.events_acked, self.events_stored, self.stored_unacked
        )?;
        writeln!(f, "  lost          {}", self.lost)?;
        writeln!(f, "  duplicated    {}", self.duplicated)?;
        writeln!(f, "  phantom       {}", self.phantom)?;
        writeln!(
            f,
            "  count         {}",
            if self.count_matches { "matches the rows" } else { "DIFFERS from the rows" }
        )?;
        let totals: Vec<String> = self
            .view_reads
            .iter()
            .map(|r| match (r.total, r.groups) {
                (Some(total), Some(groups)) => format!("{} {total} in {groups} groups", r.edge),
                _ => format!("{} unreadable", r.edge),
            })
            .collect();
        writeln!(
            f,
            "  view          {} (by edge: {})",
            if self.view_matches { "matches the rows" } else { "DIFFERS from the rows" },
            totals.join(", ")
        )?;
        let refused: Vec<String> = self.refused.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        writeln!(
            f,
            "  refused       {} (transport errors {}, {} of them from an edge no fault touched)",
            if refused.is_empty() { "none".to_owned() } else { refused.join(", ") },
            self.transport_errors,
            self.transport_errors_unfaulted
        )?;
        for example in &self.transport_error_examples {
            writeln!(f, "    {example}")?;
        }
        if let Some(disk) = self.faults.get(&FaultKind::Disk) {
            writeln!(
                f,
                "  disk          {} of {disk} disk faults seen as disk_full by /ready",
                self.disk_faults_seen_full
            )?;
        }
        if let Some(disk) = self.faults.get(&FaultKind::DatabaseDisk) {
            writeln!(
                f,
                "  database disk {} of {disk} full database disks seen by an ingestor's /ready",
                self.database_disk_faults_seen
            )?;
        }
        if let Some(previous) = &self.previous_binary {
            writeln!(
                f,
                "  releases      {} upgrades, {} downgrades; {} of the nodes end on the previous release ({})",
                self.upgrades,
                self.downgrades,
                self.nodes_on_previous,
                previous.display()
            )?;
        }
        writeln!(f, "  violations    {}", self.violations)?;
        for example in &self.violation_examples {
            writeln!(f, "    {example}")?;
        }
        writeln!(f, "  answers       slowest {:.1} s from an edge no fault touched", self.slowest_answer_secs)?;
        match &self.worst_recovery_fault {
            Some(fault) => writeln!(f, "  recovery      worst {:.1} s, after: {fault}", self.worst_recovery_secs)?,
            None => writeln!(f, "  recovery      no fault run")?,
        }
        let by_kind: Vec<String> =
            self.worst_recovery_by_kind.iter().map(|(k, secs)| format!("{} {secs:.1} s", k.name())).collect();
        if !by_kind.is_empty() {
            writeln!(f, "                worst by kind: {}", by_kind.join(", "))?;
        }
        for fault in &self.unrecovered {
            writeln!(f, "    not healthy within {RECOVERY_BOUND:?}: {fault}")?;
        }
        for id in &self.lost_examples {
            writeln!(f, "    lost: {id}")?;
        }
        if let Some(dir) = &self.work_dir {
            writeln!(f, "  logs and data {}", dir.display())?;
        }
        if !self.passed() {
            writeln!(f, "  replay        {}", self.replay_command())?;
        }
        Ok(())
    }
}

/// Runs the harness to the end and reports. An error means the cluster could not be set up or
/// read, not that the promise failed: that is a report that did not pass.
pub async fn run(options: VerifyOptions) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let seed = options.seed.unwrap_or_else(rand::random);
    // In one order whatever order they were named in, so that the replay command replays.
    let mut kinds = options.kinds.as_deref().map_or_else(|| default_kinds(&options), <[FaultKind]>::to_vec);
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() || options.senders == 0 {
        return Err(VerifyError::Setup("--kinds and --senders must not be empty".into()));
    }
    if kinds.contains(&FaultKind::Upgrade) && options.previous_binary.is_none() {
        return Err(VerifyError::Setup("the upgrade fault needs --previous-binary".into()));
    }
    if let Some(previous) = options.previous_binary.as_ref().filter(|p| !p.is_file()) {
        return Err(VerifyError::Setup(format!("--previous-binary {}: not a file", previous.display())));
    }
    eprintln!("dashd verify: seed {seed}, {} faults", options.faults);
    let work = tempfile::Builder::new().prefix("dash-verify.").tempdir()?;
    // PostgreSQL runs as its own user under root and must reach its folder inside this one.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    // Ctrl-C or SIGTERM ends the run with every process it started stopped (their owners drop).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        outcome = verify(&options, &kinds, seed, work.path(), started) => outcome,
        _ = tokio::signal::ctrl_c() => Err(VerifyError::Setup("interrupted".into())),
        _ = terminate.recv() => Err(VerifyError::Setup("terminated".into())),
    };
    let keep = match &outcome {
        Ok(report) => options.keep || !report.passed(),
        Err(_) => true,
    };
    let kept = keep.then(|| work.keep());
    match (outcome, kept) {
        (Ok(mut report), kept) => {
            report.work_dir = kept;
            Ok(report)
        }
        (Err(err), Some(dir)) => Err(VerifyError::Kept { error: Box::new(err), dir }),
        (Err(err), None) => Err(err),
    }
}

async fn verify(
    options: &VerifyOptions,
    kinds: &[FaultKind],
    seed: u64,
    work: &Path,
    started: Instant,
) -> Result<Report, VerifyError> {
    let mut cluster = Cluster::start(options, kinds, work).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    cluster.wait_healthy(&http, Duration::from_secs(60)).await.map_err(VerifyError::Setup)?;
    let created: Value = http
        .post(cluster.nodes[WEB_A].url("/api/pipelines"))
        .json(&serde_json::json!({ "name": "verify" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (Some(pipeline), Some(secret)) = (created["id"].as_str(), created["secret"].as_str()) else {
        return Err(VerifyError::Setup(format!("unexpected answer to POST /api/pipelines: {created}")));
    };
    let secret = SigningSecret::parse(secret).map_err(|err| VerifyError::Setup(format!("pipeline secret: {err}")))?;
    // A view counted from the first event, grouped by sender with fewer groups than senders (so
    // `(other)` takes the rest): its total must end equal to the rows, whichever release counted.
    http.post(cluster.nodes[WEB_A].url(&format!("/api/pipelines/{pipeline}/views")))
        .json(&serde_json::json!({
            "name": VIEW, "aggregate": "count", "group_by": "/data/sender", "max_groups": VIEW_GROUPS
        }))
        .send()
        .await?
        .error_for_status()?;
    let target = Arc::new(Target {
        webs: vec![cluster.nodes[WEB_A].url(""), cluster.nodes[WEB_B].url("")],
        pipeline: pipeline.to_owned(),
        secret,
        disruptions: Default::default(),
    });
    let started_at_ms = dash_domain::now_ms();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_senders = StopOnDrop(stop.clone());
    let senders: Vec<_> = (0..options.senders)
        .map(|i| tokio::spawn(senders::send(i, target.clone(), ledger.clone(), stop.clone())))
        .collect();

    let plan = schedule(seed, options.faults, kinds, cluster.nodes.len(), INGESTORS);
    let mut faults_run: BTreeMap<FaultKind, u64> = kinds.iter().map(|k| (*k, 0)).collect();
    let (mut worst, mut worst_fault, mut unrecovered) = (Duration::ZERO, None, Vec::new());
    let mut worst_by_kind = BTreeMap::new();
    let (mut disk_faults_seen_full, mut database_disk_faults_seen) = (0, 0);
    let (mut upgrades, mut downgrades) = (0, 0);
    let deadline = options.duration.map(|d| started + d);
    for (i, fault) in plan.iter().enumerate() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("dashd verify: --duration reached after {i} faults");
            break;
        }
        tokio::time::sleep(fault.gap).await;
        let described = Described(fault, &cluster.nodes[fault.node].name).to_string();
        let healed = match cluster.inject(fault, &target, &http).await {
            Ok(Injected { healed, seen_full, upgrade }) => {
                match upgrade {
                    Some(true) => upgrades += 1,
                    Some(false) => downgrades += 1,
                    None => {}
                }
                match fault.kind {
                    FaultKind::DatabaseDisk => database_disk_faults_seen += u64::from(seen_full),
                    _ => disk_faults_seen_full += u64::from(seen_full),
                }
                healed
            }
            Err(err) => {
                // A node, the database or the bus that does not come back ends the schedule.
                eprintln!("[{:>4}/{}] {described}: the heal failed: {err}", i + 1, plan.len());
                *faults_run.entry(fault.kind).or_default() += 1;
                unrecovered.push(format!("{described} (the heal failed: {err})"));
                break;
            }
        };
        *faults_run.entry(fault.kind).or_default() += 1;
        // From the moment the heal began (a restarted node's start included).
        match cluster.wait_healthy(&http, RECOVERY_BOUND).await.map(|last| (healed.elapsed(), last)) {
            Ok((took, last_unhealthy)) => {
                eprintln!("[{:>4}/{}] {described}: healthy after {:.1} s", i + 1, plan.len(), took.as_secs_f64());
                if let Some(state) = last_unhealthy.filter(|_| took > SLOW_RECOVERY) {
                    eprintln!("        last seen not healthy: {state}");
                }
                let worst_of_kind = worst_by_kind.entry(fault.kind).or_insert(0.0);
                *worst_of_kind = took.as_secs_f64().max(*worst_of_kind);
                if took >= worst {
                    (worst, worst_fault) = (took, Some(described));
                }
            }
            Err(state) => {
                eprintln!("[{:>4}/{}] {described}: NOT healthy within {RECOVERY_BOUND:?}: {state}", i + 1, plan.len());
                unrecovered.push(format!("{described} ({state})"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.await;
    }
    if let Err(state) = cluster.wait_healthy(&http, Duration::from_secs(60)).await {
        unrecovered.push(format!("after the last fault ({state})"));
    }

    let mut ledger = std::mem::take(&mut *ledger.lock());
    let stored = cluster.settle(&http, pipeline, &ledger).await?;
    let mut lost: Vec<EventKey> = ledger.acked.iter().filter(|id| !stored.rows.contains_key(*id)).copied().collect();
    lost.sort();
    let rows: i64 = stored.rows.values().sum::<i64>() + stored.foreign;
    let view_reads = cluster.view_reads(&http, pipeline, started_at_ms).await;
    // Groups past `max_groups` are allowed only while releases mix (docs/DEPLOY.md: an older
    // release does not tell newer nodes of the groups it adds).
    let groups_bound = if options.previous_binary.is_some() { usize::MAX } else { VIEW_GROUPS + 1 };
    Ok(Report {
        seed,
        faults_planned: options.faults,
        senders: options.senders,
        duration: options.duration,
        faults: faults_run,
        timescaledb: cluster.postgres.timescaledb,
        requests: ledger.requests,
        events_acked: ledger.acked.len(),
        events_stored: ledger.acked.iter().filter(|id| stored.rows.contains_key(*id)).count(),
        stored_unacked: stored
            .rows
            .keys()
            .filter(|id| !ledger.acked.contains(*id) && ledger.sent.contains(*id))
            .count(),
        lost: lost.len(),
        duplicated: stored.rows.values().filter(|copies| **copies > 1).count(),
        phantom: stored.rows.keys().filter(|id| !ledger.sent.contains(*id)).count() + stored.foreign as usize,
        count_matches: stored.count == rows,
        view_matches: !view_reads.is_empty()
            && view_reads.iter().all(|r| r.total == Some(rows) && r.groups.is_some_and(|g| g <= groups_bound)),
        view_reads,
        refused: ledger.refused,
        transport_errors: ledger.transport_errors,
        transport_errors_unfaulted: ledger.transport_errors_unfaulted,
        transport_error_examples: std::mem::take(&mut ledger.transport_error_examples),
        disk_faults_seen_full,
        database_disk_faults_seen,
        upgrades,
        downgrades,
        nodes_on_previous: cluster.nodes.iter().filter(|n| n.on_previous).count(),
        previous_binary: options.previous_binary.clone(),
        violations: ledger.violations_total,
        violation_examples: ledger.violations,
        slowest_answer_secs: ledger.slowest_answer.as_secs_f64(),
        worst_recovery_secs: worst.as_secs_f64(),
        worst_recovery_by_kind: worst_by_kind,
        worst_recovery_fault: worst_fault,
        unrecovered,
        lost_examples: lost.iter().take(10).map(EventKey::to_string).collect(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        work_dir: None,
    })
}

/// The view every run keeps on its pipeline, and its groups (fewer than the senders).
const VIEW: &str = "by_sender";
const VIEW_GROUPS: usize = 3;

/// The web edges' places among the cluster's nodes (ingestor-a, ingestor-b, web-a, web-b: the
/// order the schedule numbers them).
const INGESTORS: usize = 2;
const WEB_A: usize = 2;
const WEB_B: usize = 3;

struct Cluster {
    postgres: Postgres,
    nats: Nats,
    _dns: DnsServer,
    nodes: Vec<Node>,
    /// Each ingestor's data disk, when the run fills disks (dropped after the nodes: unmounted
    /// once nothing runs on them).
    disks: Vec<Tmpfs>,
    /// The database's data disk, when the run fills it (unmounted after the database stops).
    database_disk: Option<Tmpfs>,
    database_url: String,
    /// The cluster's own network, when the run partitions it (dropped last, once every process
    /// in it has stopped).
    network: Option<Network>,
}

/// The hosts of the cluster's own network, in the order of [`Cluster::nodes`] after the first
/// (the database and the bus share `core`).
const HOSTS: [&str; 5] = ["core", "ingestor-a", "ingestor-b", "web-a", "web-b"];
/// Every node's port on its own network (each host has its own namespace, so it is free).
const NAMESPACED_PORT: u16 = 8080;

/// What the database holds for the pipeline.
struct Stored {
    /// Event id → rows.
    rows: HashMap<EventKey, i64>,
    /// Rows whose id no sender could have made.
    foreign: i64,
    /// The pipeline's `event_count`.
    count: i64,
}

impl Cluster {
    async fn start(options: &VerifyOptions, kinds: &[FaultKind], work: &Path) -> Result<Self, VerifyError> {
        let disks = kinds.contains(&FaultKind::Disk);
        let partitions = kinds.contains(&FaultKind::Partition);
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe()?,
        };
        let postgres_bin = match &options.postgres_bin {
            Some(bin) => bin.clone(),
            None => default_postgres_bin()?,
        };
        let nats_binary = match &options.nats_server {
            Some(path) => path.clone(),
            None => default_nats_server()?,
        };
        // With partitions, every host in a network namespace of its own; else each on an
        // address of its own on loopback.
        let network = match partitions {
            true => Some(Network::create(options.net, &HOSTS)?),
            false => None,
        };
        let place = |i: usize| match &network {
            Some(network) => (network.hosts[i].ip, Some(network.hosts[i].namespace.clone())),
            None => (IpAddr::from([127, options.net, 0, i as u8 + 1]), None),
        };
        let (core_ip, core_namespace) = place(0);
        let database_disk = match kinds.contains(&FaultKind::DatabaseDisk) {
            true => Some(Tmpfs::mount(work.join("postgres").join("data"), DATABASE_DISK_SIZE)?),
            false => None,
        };
        let postgres = Postgres::start(&postgres_bin, work.join("postgres"), core_ip, core_namespace.clone()).await?;
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&postgres.admin_url()).await?;
        sqlx::query("CREATE DATABASE dash").execute(&admin).await?;
        admin.close().await;
        let database_url = postgres.url("dash");
        let nats = Nats::start(&nats_binary, core_ip, core_namespace).await?;
        let dns = match &network {
            Some(network) => DnsServer::start_on(SocketAddr::new(network.harness_ip, 0)).await?,
            None => DnsServer::start().await?,
        };

        let ingestor_ips = [place(1).0, place(2).0];
        let web_ips = [place(3).0, place(4).0];
        dns.set(CLUSTER_NAME, ingestor_ips.iter().chain(&web_ips).copied().collect());
        dns.set(INGESTOR_NAME, ingestor_ips.to_vec());
        let ingestor_port = match network {
            Some(_) => NAMESPACED_PORT,
            None => processes::common_port(&ingestor_ips)?,
        };
        let common = vec![
            ("DATABASE_URL".to_owned(), database_url.clone()),
            ("NATS_URL".to_owned(), nats.url()),
            ("DNS_RESOLVER".to_owned(), dns.addr().to_string()),
            ("DNS_CLUSTER_QUERY".to_owned(), CLUSTER_NAME.to_owned()),
            ("DNS_CLUSTER_INTERVAL".to_owned(), "500ms".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        let (mut nodes, mut mounted) = (Vec::new(), Vec::new());
        let layout = [
            ("ingestor-a", Role::Ingestor, ingestor_ips[0], "ams"),
            ("ingestor-b", Role::Ingestor, ingestor_ips[1], "fra"),
            ("web-a", Role::Web, web_ips[0], "ams"),
            ("web-b", Role::Web, web_ips[1], "fra"),
        ];
        for (i, (name, role, ip, region)) in layout.into_iter().enumerate() {
            let port = match (role, &network) {
                (Role::Ingestor, _) => ingestor_port,
                (Role::Web, Some(_)) => NAMESPACED_PORT,
                (Role::Web, None) => processes::common_port(&[ip])?,
            };
            let mut env = common.clone();
            let role_name = if role == Role::Web { "web" } else { "ingestor" };
            env.extend([
                ("APP_ROLE".to_owned(), role_name.to_owned()),
                ("DASH_NODE_ID".to_owned(), name.to_owned()),
                ("DASH_REGION".to_owned(), region.to_owned()),
            ]);
            if role == Role::Ingestor {
                // Segments of 4 MiB, so that a log's files fit its small disk.
                env.push(("DASH_SPOOL_MAX".to_owned(), "32MiB".to_owned()));
                if disks {
                    mounted.push(Tmpfs::mount(work.join(name).join("data"), DISK_SIZE)?);
                }
            }
            if role == Role::Web {
                env.extend([
                    ("DNS_INGESTOR_QUERY".to_owned(), INGESTOR_NAME.to_owned()),
                    ("DASH_INGESTOR_PORT".to_owned(), ingestor_port.to_string()),
                ]);
            }
            let mut node = Node::new(name, role, SocketAddr::new(ip, port), work.join(name), &binary, env);
            if let Some(previous) = &options.previous_binary {
                node = node.with_releases(previous, &binary);
            }
            node.namespace = place(i + 1).1;
            node.start().await?;
            nodes.push(node);
        }
        Ok(Self { postgres, nats, _dns: dns, nodes, disks: mounted, database_disk, database_url, network })
    }

    /// Waits until every node's `/ready` says healthy and each edge sees both ingestors up.
    /// Returns what was last seen not healthy before that (if anything), or, past `within`, what
    /// still is not.
    async fn wait_healthy(&self, http: &reqwest::Client, within: Duration) -> Result<Option<String>, String> {
        let started = Instant::now();
        let mut last_unhealthy = None;
        loop {
            let mut not_healthy = None;
            for node in &self.nodes {
                let ready = readiness(http, node).await.unwrap_or_else(|err| Value::String(err.to_string()));
                let healthy = ready["status"] == "healthy"
                    && (node.role == Role::Ingestor || ready["checks"]["ingestors"]["up"] == 2);
                if !healthy {
                    not_healthy = Some(format!("{}: {ready}", node.name));
                    break;
                }
            }
            match not_healthy {
                None => return Ok(last_unhealthy),
                Some(state) if started.elapsed() >= within => return Err(state),
                Some(state) => {
                    last_unhealthy = Some(state);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Injects `fault`, holds it, and heals it.
    async fn inject(
        &mut self,
        fault: &Fault,
        target: &Target,
        http: &reqwest::Client,
    ) -> Result<Injected, VerifyError> {
        let mut seen_full = false;
        let web = match self.nodes[fault.node].role {
            Role::Web => Some(fault.node - WEB_A),
            Role::Ingestor => None,
        };
        // Faults after which the edge itself may not answer (a request to it goes unanswered
        // without blame).
        let silences_node = matches!(fault.kind, FaultKind::Kill | FaultKind::Pause | FaultKind::Upgrade)
            || fault.cut == Some(Cut::Cable);
        let touches_web = silences_node.then_some(web).flatten();
        if let Some(web) = touches_web {
            target.disrupted(web);
        }
        match fault.kind {
            FaultKind::Kill => {
                let node = &mut self.nodes[fault.node];
                node.kill9();
                tokio::time::sleep(fault.hold).await;
                let healed = Instant::now();
                node.start().await?;
                if let Some(web) = touches_web {
                    target.disrupted(web);
                }
                return Ok(Injected { healed, seen_full, upgrade: None });
            }
            FaultKind::Upgrade => {
                let node = &mut self.nodes[fault.node];
                match fault.graceful {
                    true => node.stop(DRAIN_BOUND).await,
                    false => node.kill9(),
                }
                let upgrade = node
                    .swap_release()
                    .ok_or_else(|| VerifyError::Setup("the upgrade fault needs --previous-binary".into()))?;
                tokio::time::sleep(fault.hold).await;
                let healed = Instant::now();
                node.start().await?;
                if let Some(web) = touches_web {
                    target.disrupted(web);
                }
                return Ok(Injected { healed, seen_full, upgrade: Some(upgrade) });
            }
            FaultKind::Pause => {
                let node = &self.nodes[fault.node];
                node.signal(Signal::SIGSTOP);
                tokio::time::sleep(fault.hold).await;
                node.signal(Signal::SIGCONT);
            }
            FaultKind::Database => {
                self.postgres.crash().await?;
                tokio::time::sleep(fault.hold).await;
                self.postgres.up().await?;
            }
            FaultKind::Bus => {
                self.nats.crash();
                tokio::time::sleep(fault.hold).await;
                self.nats.restart().await?;
            }
            FaultKind::Disk => {
                let disk = &self.disks[fault.node];
                disk.fill()?;
                tokio::time::sleep(fault.hold).await;
                // Whether the ingestor noticed (an append failed), before the room returns.
                seen_full = readiness(http, &self.nodes[fault.node])
                    .await
                    .is_ok_and(|ready| ready["checks"]["intake_log"]["code"] == "disk_full");
                disk.free()?;
            }
            FaultKind::DatabaseDisk => {
                let disk = self
                    .database_disk
                    .as_ref()
                    .ok_or_else(|| VerifyError::Setup("a full database disk needs the database on a tmpfs".into()))?;
                disk.shrink_to_used()?;
                tokio::time::sleep(fault.hold).await;
                // Whether an ingestor noticed (its batches failed), before the room returns.
                for node in self.nodes.iter().filter(|n| n.role == Role::Ingestor) {
                    seen_full |=
                        readiness(http, node).await.is_ok_and(|ready| ready["checks"]["database"]["ok"] == false);
                }
                let healed = Instant::now();
                disk.grow_back()?;
                // PostgreSQL stops when it cannot write its WAL (a PANIC); an operator starts it
                // again once there is room.
                self.postgres.ensure_up().await?;
                return Ok(Injected { healed, seen_full, upgrade: None });
            }
            FaultKind::Partition => {
                let network = self
                    .network
                    .as_ref()
                    .ok_or_else(|| VerifyError::Setup("a partition needs the cluster's own network".into()))?;
                let node = self.nodes[fault.node].name.as_str();
                let set = |cut: bool| match fault.cut {
                    Some(Cut::EdgeFromIngestors) => network.set_cut(&[node], &["ingestor-a", "ingestor-b"], cut),
                    Some(Cut::IngestorFromCore) => network.set_cut(&[node], &["core"], cut),
                    Some(Cut::Regions) => {
                        network.set_cut(&["ingestor-b", "web-b"], &["core", "ingestor-a", "web-a"], cut)
                    }
                    Some(Cut::Cable) | None => network.set_cable(node, !cut),
                };
                set(true)?;
                tokio::time::sleep(fault.hold).await;
                set(false)?;
            }
        }
        if let Some(web) = touches_web {
            target.disrupted(web);
        }
        Ok(Injected { healed: Instant::now(), seen_full, upgrade: None })
    }

    /// Waits (up to [`SETTLE_BOUND`]) until every acknowledged event is in the database, then
    /// reads what the pipeline holds.
    async fn settle(&self, http: &reqwest::Client, pipeline: &str, ledger: &Ledger) -> Result<Stored, VerifyError> {
        // Reading a long run's millions of rows is slow by design: not a warning.
        let options: sqlx::postgres::PgConnectOptions = self.database_url.parse()?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(sqlx::ConnectOptions::disable_statement_logging(options))
            .await?;
        let deadline = Instant::now() + SETTLE_BOUND;
        loop {
            // Read only once no ingestor holds anything unflushed: a late copy of an event in a
            // log would otherwise be stored after the count.
            if !self.drained(http).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT event_id, COUNT(*) FROM events WHERE pipeline_id = $1 GROUP BY event_id")
                    .bind(pipeline)
                    .fetch_all(&db)
                    .await?;
            let mut foreign = 0;
            let rows: HashMap<EventKey, i64> = rows
                .into_iter()
                .filter_map(|(id, copies)| {
                    let key = EventKey::parse(&id);
                    foreign += if key.is_none() { copies } else { 0 };
                    key.map(|key| (key, copies))
                })
                .collect();
            let all_in = ledger.acked.iter().all(|id| rows.contains_key(id));
            if all_in || Instant::now() >= deadline {
                // The count is raised in the same transaction as the rows: read it after them.
                let count: i64 = sqlx::query_scalar("SELECT event_count FROM pipelines WHERE id = $1")
                    .bind(pipeline)
                    .fetch_one(&db)
                    .await?;
                let total: i64 = rows.values().sum::<i64>() + foreign;
                if count == total || Instant::now() >= deadline {
                    db.close().await;
                    return Ok(Stored { rows, foreign, count });
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Every kind; `disk` only where a tmpfs can be mounted, `partition` only where network
/// namespaces can be made (both as root, outside a container that forbids them), `upgrade` only
/// with a previous release to upgrade from.
fn default_kinds(options: &VerifyOptions) -> Vec<FaultKind> {
    let mut kinds = vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Database, FaultKind::Bus];
    let can_mount = nix::unistd::Uid::effective().is_root()
        && tempfile::tempdir().is_ok_and(|probe| Tmpfs::mount(probe.path().join("disk"), "1m").is_ok());
    if can_mount {
        kinds.extend([FaultKind::Disk, FaultKind::DatabaseDisk]);
    }
    if network::available() {
        kinds.push(FaultKind::Partition);
    }
    if options.previous_binary.is_some() {
        kinds.push(FaultKind::Upgrade);
    }
    kinds
}

/// Stops the senders however the run ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What injecting a fault did.
struct Injected {
    /// When its heal began.
    healed: Instant,
    /// A disk fault: the ingestor's `/ready` said `disk_full` before the room returned; a
    /// database disk fault: an ingestor's `/ready` said the database was not ok.
    seen_full: bool,
    /// An upgrade fault: whether the node went to the newer release (else back to the older).
    upgrade: Option<bool>,
}

impl Cluster {
    /// The view's total over the whole run and its number of groups, as each web edge reads it
    /// (so each release that runs one reads the states both wrote); a read is tried 5 times.
    async fn view_reads(&self, http: &reqwest::Client, pipeline: &str, since_ms: i64) -> Vec<ViewRead> {
        let (from, to) = (since_ms - 3_600_000, dash_domain::now_ms() + 3_600_000);
        let path = format!("/api/pipelines/{pipeline}/views/{VIEW}/groups?from={from}&to={to}");
        let mut reads = Vec::new();
        for node in self.nodes.iter().filter(|n| n.role == Role::Web) {
            let mut read = None;
            for attempt in 1..=5 {
                let answer = async {
                    let body: Value = http.get(node.url(&path)).send().await?.error_for_status()?.json().await?;
                    Ok::<_, reqwest::Error>(body)
                };
                match answer.await {
                    Ok(body) => {
                        read = Some(body);
                        break;
                    }
                    Err(err) => eprintln!("dashd verify: {} did not read the view (try {attempt}): {err}", node.name),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let release = if node.on_previous { " (previous release)" } else { "" };
            reads.push(ViewRead {
                edge: format!("{}{release}", node.name),
                total: read.as_ref().and_then(|b| b["total"]["value"].as_f64()).map(|t| t as i64),
                groups: read.as_ref().and_then(|b| b["groups"].as_array()).map(Vec::len),
            });
        }
        reads
    }

    /// Whether every ingestor has flushed all it took (its log's unflushed bytes are 0).
    async fn drained(&self, http: &reqwest::Client) -> bool {
        for node in self.nodes.iter().filter(|n| n.role == Role::Ingestor) {
            let Ok(ready) = readiness(http, node).await else {
                return false;
            };
            if ready["checks"]["intake_log"]["bytes"] != 0 {
                return false;
            }
        }
        true
    }
}

/// A node's `/ready` report (`null` when its body is not JSON), or why it did not answer within
/// 2 s.
async fn readiness(http: &reqwest::Client, node: &Node) -> Result<Value, reqwest::Error> {
    let response = http.get(node.url("/ready")).timeout(Duration::from_secs(2)).send().await?;
    Ok(response.json::<Value>().await.unwrap_or(Value::Null))
}

/// `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
fn default_postgres_bin() -> Result<PathBuf, VerifyError> {
    if let Ok(output) = std::process::Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| VerifyError::Setup("no PostgreSQL found (initdb); name its folder with --postgres-bin".into()))
}

/// /usr/sbin/nats-server, else nats-server on PATH.
fn default_nats_server() -> Result<PathBuf, VerifyError> {
    let system = PathBuf::from("/usr/sbin/nats-server");
    if system.exists() {
        return Ok(system);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.exists())
        .ok_or_else(|| VerifyError::Setup("no nats-server found; name it with --nats-server".into()))
}
