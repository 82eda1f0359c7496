//! What this node's heartbeat says of its load: the figures of docs/OPERATIONS.md, read at each
//! beat from the parts of the node that have them.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

use dash_cluster::{LoadSource, NodeLimits};
use dash_domain::NodeLoad;
use dash_ingest::Intake;
use dash_jobs::QueueDepth;
use dash_live::Hub;

/// The parts of a node that know its load; each is absent where the role has none.
pub struct LoadParts {
    pub intake: Option<Intake>,
    pub hub: Option<Hub>,
    pub jobs: Option<QueueDepth>,
}

pub fn source(parts: LoadParts) -> LoadSource {
    // CPU seconds used at the last beat, to take the share since then.
    let last_cpu: Mutex<Option<(Instant, f64)>> = Mutex::new(None);
    Arc::new(move || {
        let limits = NodeLimits::read();
        let me = procfs::process::Process::myself().ok();
        let memory_bytes = me.as_ref().and_then(|p| p.status().ok()).and_then(|s| s.vmrss).map(|kb| kb * 1024);
        let cpu_seconds = me
            .as_ref()
            .and_then(|p| p.stat().ok())
            .map(|s| (s.utime + s.stime) as f64 / procfs::ticks_per_second().max(1) as f64);
        let cpu_percent = cpu_seconds.and_then(|now_secs| {
            let mut last = last_cpu.lock();
            let share = last.map(|(at, secs)| {
                let wall = at.elapsed().as_secs_f64().max(1e-3);
                (100.0 * (now_secs - secs) / wall / limits.cpu_cores).clamp(0.0, 100.0)
            });
            *last = Some((Instant::now(), now_secs));
            share
        });
        let depth = parts.jobs.as_ref().and_then(QueueDepth::get);
        NodeLoad {
            memory_bytes,
            memory_limit_bytes: limits.memory_bytes,
            cpu_percent,
            live_sockets: parts.hub.as_ref().map(Hub::clients),
            jobs_pending: depth.map(|(pending, _)| pending),
            jobs_running: depth.map(|(_, running)| running),
            backlog: parts.intake.as_ref().map(Intake::backlogs),
            spool_bytes: parts.intake.as_ref().map(|i| i.spool().used()),
            spool_limit_bytes: parts.intake.as_ref().map(|i| i.spool().max()),
            store_up: parts.intake.as_ref().map(|i| i.store_health().is_up()),
            bus_round_trip_ms: None,
        }
    })
}
