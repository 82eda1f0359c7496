//! Wiring: settings → store → bus → intake → router → listener, and the orderly way down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::database;
use dash_bus::{Bus, NatsOptions};
use dash_cluster::MembershipTask;
use dash_config::{Role, Settings};
use dash_discovery::{Discovery, DiscoveryTask};
use dash_domain::NodeHeartbeat;
use dash_edge::{EdgeSettings, Forwarder, Ingestors};
use dash_http::{AppState, ClientTrust, HttpLimits, NodeInfo};
use dash_ingest::{Intake, IntakeSettings, IntakeTasks};
use dash_live::{Hub, HubTask};
use dash_log_throttle::TargetThrottle;
use dash_store::Store;
use dash_task::StoppableTask;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Request bodies in flight at once, in bytes (each counted at its declared or maximum size).
const INFLIGHT_BODY_BYTES: usize = 64 * 1024 * 1024;

pub struct App {
    listener: TcpListener,
    router: axum::Router,
    /// Peers the server loop does not hold to one client's share (proxies, known edges).
    shared_peer: dash_http::SharedPeer,
    store: Store,
    intake: Option<(Intake, IntakeTasks)>,
    /// Migrations once the database answers, then configured pipelines and the jobs (source
    /// polls and maintenance, on ingestors); stopped before intake, which the jobs feed.
    database: database::DatabaseTask,
    hub: HubTask,
    /// Resyncs live clients after bus outages; stopped before the hub.
    bus_follower: StoppableTask,
    /// Adds the refused deliveries this node counted to the store.
    refusal_counts: StoppableTask,
    /// Publishes this node's heartbeat and keeps the membership view.
    membership: MembershipTask,
    /// DNS refreshes (cluster peers, ingestors), when their queries are set.
    discovery: Vec<DiscoveryTask>,
    /// Logs how many repeated library warnings were held back; stopped last.
    log_summary: StoppableTask,
    settings: Settings,
}

impl App {
    /// Connects, migrates, replays the intake log and binds the listener. Serving starts with
    /// [`App::run_until_stopped`].
    pub async fn build(
        settings: Settings,
        metrics: Option<PrometheusHandle>,
        library_warnings: Arc<TargetThrottle>,
    ) -> anyhow::Result<App> {
        let database_url = settings.database_url();
        let mut configured = database::Configured::check(&settings, settings.role.serves_intake())?;
        let pool_sizes = dash_store::PoolSizes::for_work(settings.partitions, settings.job_concurrency);
        let store = Store::connect_sized(&database_url, pool_sizes).await.context("connecting to the database")?;
        let reached = database::first_contact(&store).await?;
        if reached {
            // Applied before the node serves, as an operator expects; what fails here (the
            // database gone again) the database task retries.
            match configured.apply(&store).await {
                Ok(()) => configured = database::Configured::default(),
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "configured pipelines and boards not applied yet; retrying"
                    )
                }
            }
        }
        let (migrated, migrated_rx) = tokio::sync::watch::channel(reached);
        let bus = match &settings.nats_url {
            Some(url) => Bus::nats(&nats_options(&settings, url)).await.context("connecting to NATS")?,
            None => Bus::in_process(),
        };

        let intake = if settings.role.serves_intake() {
            let intake_settings = IntakeSettings {
                data_dir: settings.data_dir.clone(),
                partitions: settings.partitions,
                max_batch: settings.max_batch,
                flush_interval: settings.flush_interval,
                max_backlog: settings.max_backlog,
                spool_max: settings.spool_max.as_u64(),
            };
            Some(Intake::start(intake_settings, store.clone(), bus.clone(), migrated_rx).await?)
        } else {
            None
        };
        let job_depth = intake.as_ref().map(|_| dash_jobs::QueueDepth::default());
        let jobs = intake.as_ref().map(|(intake, _)| {
            let jobs = dash_jobs::JobSettings {
                node: settings.node_id(),
                data_dir: settings.data_dir.clone(),
                concurrency: settings.job_concurrency.max(1),
                maintenance_every: settings.maintenance_every,
                retention: settings.retention,
                dedupe_window: settings.dedupe_window,
                shutdown_timeout: settings.shutdown_timeout,
                depth: job_depth.clone().unwrap_or_default(),
            };
            (jobs, intake.clone())
        });
        let database = database::spawn(database::Arrival { store: store.clone(), migrated, configured, jobs });

        let node = NodeInfo {
            node: settings.node_id(),
            role: settings.role.to_string(),
            region: settings.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Instant::now(),
        };
        // Alert rules join on it to tell web nodes from ingestors (deploy/prometheus/alerts.yml).
        metrics::gauge!(
            "dash_node_info",
            "role" => node.role.clone(),
            "region" => node.region.clone(),
            "node" => node.node.clone()
        )
        .set(1.0);
        let limits = HttpLimits {
            max_body: settings.max_body.as_u64() as usize,
            inflight_body_bytes: INFLIGHT_BODY_BYTES,
            admin_token: settings.admin_token.as_ref().map(|t| t.expose().to_owned()),
            public_url: settings.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
            max_live_per_client: settings.max_live_per_client,
        };
        let bus_kind = bus.kind();
        let listener = listen(settings.listen).with_context(|| format!("binding {}", settings.listen))?;
        let local_addr = listener.local_addr().context("listener address")?;
        let heartbeat = NodeHeartbeat {
            node: node.node.clone(),
            role: node.role.clone(),
            region: node.region.clone(),
            addr: settings.advertised_addr(local_addr).to_string(),
            version: node.version.clone(),
            started_at: dash_domain::format_ms(dash_domain::now_ms()),
            load: None,
        };
        let mut discovery = Vec::new();
        let resolver = || Discovery::new(settings.dns_resolver).context("setting up the DNS resolver");
        let cluster_dns = match &settings.dns_cluster_query {
            Some(query) => {
                let (peers, task) = resolver()?.watch(query.clone(), settings.dns_cluster_interval, "cluster");
                discovery.push(task);
                Some(peers)
            }
            None => None,
        };
        let (hub, hub_task) = Hub::start(&bus).await.context("subscribing to the bus")?;
        let load = crate::load::source(crate::load::LoadParts {
            intake: intake.as_ref().map(|(i, _)| i.clone()),
            hub: Some(hub.clone()),
            jobs: job_depth,
        });
        let (membership, membership_task) =
            dash_cluster::start(&bus, heartbeat, cluster_dns, load).await.context("subscribing to heartbeats")?;
        let mut state =
            AppState::new(intake.as_ref().map(|(i, _)| i.clone()), store.clone(), bus, node, limits, metrics, hub)
                .with_membership(membership.clone())
                .with_client_trust(client_trust(&settings)?);
        if settings.role == Role::Web {
            if settings.edge_secret.is_none() && settings.advertised_addr(local_addr).ip().is_unspecified() {
                tracing::warn!(
                    listen = %local_addr,
                    "ingestors cannot tell this edge's requests from a sender's: it announces no address of its own \
                     (set DASH_ADVERTISE_IP) and has no DASH_EDGE_SECRET; every sender through it shares one \
                     failed-authentication budget on the ingestors"
                );
            }
            let ingestors = match &settings.dns_ingestor_query {
                Some(query) => {
                    let (peers, task) = resolver()?.watch(query.clone(), settings.dns_cluster_interval, "ingestors");
                    discovery.push(task);
                    Ingestors::Dns(peers)
                }
                None => Ingestors::Heartbeats,
            };
            let edge = EdgeSettings {
                ingestor_port: settings.ingestor_port,
                secret: settings.edge_secret.as_ref().map(|s| s.expose().to_owned()),
                // Leaving from the address this node listens on (and announces), ingestors know
                // the connection as this edge's.
                local_address: Some(local_addr.ip()).filter(|ip| !ip.is_unspecified()),
                ..EdgeSettings::default()
            };
            state = state.with_edge(Forwarder::new(edge, ingestors, membership).context("building the edge client")?);
        }
        let follower_state = state.clone();
        let bus_follower = StoppableTask::spawn(|stop| dash_http::follow_bus(follower_state, stop));
        let refusals_state = state.clone();
        let refusal_counts = StoppableTask::spawn(|stop| dash_http::flush_refusals(refusals_state, stop));
        let shared_peer = dash_http::shared_peer(state.clone());
        let router = dash_http::router(state);
        tracing::info!(
            role = %settings.role,
            store = store.backend(),
            layout = store.layout(),
            partitions = settings.partitions,
            bus = bus_kind,
            "dash ready"
        );
        if let Some(sizes) = store.pool_sizes() {
            tracing::info!(
                writers = sizes.writers,
                service = sizes.service,
                jobs = sizes.jobs,
                total = sizes.total(),
                "postgresql connections this node may open"
            );
        }
        Ok(App {
            listener,
            router,
            shared_peer,
            store,
            intake,
            database,
            hub: hub_task,
            bus_follower,
            refusal_counts,
            membership: membership_task,
            discovery,
            log_summary: StoppableTask::spawn(|stop| async move { library_warnings.summarise(stop).await }),
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish,
    /// drains every buffer into the store and joins every task.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new connections; draining");
            let _ = stop_tx.send(true);
        };
        let mut graceful_stop = stop_rx.clone();
        let max_connections = connection_cap(self.settings.max_connections);
        let limits = dash_http::ServeLimits {
            max_connections,
            max_per_client: per_client_cap(self.settings.max_connections_per_client, max_connections),
            shared_peer: self.shared_peer,
            write_timeout: self.settings.write_timeout,
            drain_timeout: self.settings.shutdown_timeout,
        };
        tracing::info!(
            max_connections = limits.max_connections,
            max_per_client = limits.max_per_client,
            header_timeout_secs = dash_http::HEADER_READ_TIMEOUT.as_secs(),
            "http limits"
        );
        let server = tokio::spawn(dash_http::serve(self.listener, self.router, limits, tune_connection, async move {
            let _ = graceful_stop.wait_for(|stopped| *stopped).await;
        }));
        let signal_task = tokio::spawn(signalled);

        let deadline = self.settings.shutdown_timeout;
        let mut server = server;
        tokio::select! {
            result = &mut server => { result.context("server task")?.context("serving")?; }
            _ = stop_rx.wait_for(|stopped| *stopped) => {
                // Connections get until the deadline to finish their requests; then the server
                // loop cuts them and waits for their tasks. The margin is for that.
                if tokio::time::timeout(deadline + SERVER_STOP_MARGIN, &mut server).await.is_err() {
                    tracing::warn!("the server loop did not stop in time; abandoning it");
                    server.abort();
                }
            }
        }
        signal_task.abort();
        self.membership.shutdown().await;
        for task in self.discovery {
            task.shutdown().await;
        }
        self.bus_follower.shutdown().await;
        self.refusal_counts.shutdown().await;
        // Live sessions end when the hub lets go of their queues.
        self.hub.shutdown().await;
        self.database.shutdown().await;
        if let Some((intake, tasks)) = self.intake {
            tasks.shutdown(intake, deadline).await;
        }
        self.store.close().await;
        self.log_summary.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// NATS connection settings from `NATS_*`; the client is named after the node.
fn nats_options(settings: &Settings, url: &str) -> NatsOptions {
    NatsOptions {
        url: url.to_owned(),
        name: format!("dashd-{}-{}", settings.role, settings.node_id()),
        token: settings.nats_token.as_ref().map(|t| t.expose().to_owned()),
        user: settings.nats_user.clone(),
        password: settings.nats_password.as_ref().map(|p| p.expose().to_owned()),
        creds_file: settings.nats_creds.clone(),
        tls_ca: settings.nats_tls_ca.clone(),
        require_tls: settings.nats_tls_required,
    }
}

/// Beyond the shutdown deadline, how long the server loop has to cut what is still running.
const SERVER_STOP_MARGIN: Duration = Duration::from_secs(5);

/// Kernel send buffer per connection (Linux doubles it). Left to autotuning, a client that stops
/// reading can make the kernel hold up to `tcp_wmem`'s maximum (4 MiB here) for it; the write
/// deadline (`DASH_WRITE_TIMEOUT`) closes any connection that stays stalled, and an upgraded
/// `/live` connection shrinks its buffer to 32 KiB (dash-http's server loop), so a stalled
/// client fills it soon and the hub resyncs or drops it.
/// Not smaller: at 32 KiB one loopback segment (64 KiB) filled the buffer, so each waited for
/// the receiver's delayed ACK (40 ms) and large answers crawled at 1.7 MB/s; a 512 KiB buffer
/// also carries 10 MB/s over a 50 ms round trip.
const SEND_BUFFER: usize = 256 * 1024;

/// Every accepted connection: no Nagle delay for small frames, and a bounded send buffer.
fn tune_connection(tcp: &mut tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(error = %err, "TCP_NODELAY");
    }
    if let Err(err) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!(error = %err, "SO_SNDBUF");
    }
}

/// File descriptors kept for everything but client connections: the database pool, the intake
/// log's segments, NATS, DNS, forwarded requests, jobs.
const FD_RESERVE: u64 = 256;
/// Connections at once when the setting is 0 (and the open-file limit allows): each idle one
/// costs a task and its buffers, so the cap stays well below what memory allows.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// HTTP connections allowed at once: the setting, or (0) what the open-file limit leaves after
/// [`FD_RESERVE`], raised to its hard limit first. Never more than the limit leaves, so an
/// attacker's sockets can never starve the node of descriptors.
fn connection_cap(configured: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let mut soft = 1024;
    if let Ok((current, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        soft = current;
        if current < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            soft = hard;
        }
    }
    let room = soft.saturating_sub(FD_RESERVE).clamp(16, 1_000_000) as usize;
    match configured {
        0 => room.min(DEFAULT_MAX_CONNECTIONS),
        n if n > room => {
            tracing::warn!(configured = n, allowed = room, "max_connections is above what the open-file limit allows");
            room
        }
        n => n,
    }
}

/// Connections one client may hold: the setting, or (0) an eighth of the cap, at least 32 (a
/// browser holds about 6, and an office behind one address holds many browsers); never more
/// than the cap.
fn per_client_cap(configured: usize, cap: usize) -> usize {
    match configured {
        0 => (cap / 8).max(32),
        n => n,
    }
    .min(cap)
}

/// Connections the kernel may hold waiting for `accept`. After a restart every open dashboard
/// reconnects at once; a short queue would turn that into refused connections and retries.
const LISTEN_BACKLOG: u32 = 4096;

/// Whom the node believes about a client's address, from the settings.
fn client_trust(settings: &Settings) -> anyhow::Result<ClientTrust> {
    let trust = ClientTrust::new(
        settings.edge_secret.as_ref().map(|s| s.expose().to_owned()),
        settings.client_ip_header.as_deref(),
        settings.trusted_proxies.0.clone(),
    )
    .context("DASH_CLIENT_IP_HEADER")?;
    Ok(trust.accepting_edges(settings.role == Role::Ingestor))
}

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
