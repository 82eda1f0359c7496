//! A node's load on the cluster page: each figure against the thresholds of
//! docs/OPERATIONS.md (the same as deploy/prometheus/alerts.yml), with the action the table
//! names next to a figure past its threshold.

use dash_domain::NodeLoad;

/// How a figure stands against its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Ok,
    /// Past three quarters of the threshold.
    Near,
    /// Past it: act.
    Breach,
}

impl Standing {
    pub fn class(self) -> &'static str {
        match self {
            Standing::Ok => "ok",
            Standing::Near => "near",
            Standing::Breach => "breach",
        }
    }

    fn of(value: f64, threshold: f64) -> Self {
        if value > threshold {
            Standing::Breach
        } else if value > threshold * 0.75 {
            Standing::Near
        } else {
            Standing::Ok
        }
    }
}

/// One figure of a node: what it shows, how it stands, and what to do past its threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: &'static str,
    pub text: String,
    pub standing: Standing,
    pub action: Option<&'static str>,
}

pub const MEMORY_SHARE: f64 = 0.80;
pub const CPU_PERCENT: f64 = 70.0;
pub const JOBS_PENDING: f64 = 1000.0;
pub const BACKLOG_EVENTS: f64 = 5000.0;
pub const BUS_ROUND_TRIP_MS: f64 = 500.0;
pub const SPOOL_SHARE: f64 = 0.80;

/// The figures a node's heartbeat carries, in the cluster table's column order (a figure the
/// node does not have is `None`: its role has no such thing).
pub fn figures(role: &str, load: &NodeLoad) -> [Option<Figure>; 7] {
    let web = role == "web" || role == "all";
    let memory = load.memory_bytes.map(|used| match load.memory_limit_bytes.filter(|l| *l > 0) {
        Some(limit) => {
            let share = used as f64 / limit as f64;
            let standing = Standing::of(share, MEMORY_SHARE);
            let action = if web { "scale web nodes out" } else { "give the node more memory" };
            figure("memory", format!("{} of {}", percent(share), mib(limit)), standing, action)
        }
        None => figure("memory", mib(used), Standing::Ok, ""),
    });
    let cpu = load.cpu_percent.map(|percent| {
        let action = if role == "web" { "scale web nodes out" } else { "add ingestors" };
        figure("cpu", format!("{percent:.0} %"), Standing::of(percent, CPU_PERCENT), action)
    });
    let sockets = load.live_sockets.map(|n| figure("sockets", n.to_string(), Standing::Ok, ""));
    let jobs = load.jobs_pending.map(|pending| {
        let text = format!("{pending} waiting, {} running", load.jobs_running.unwrap_or(0));
        figure("jobs", text, Standing::of(pending as f64, JOBS_PENDING), "investigate slow jobs")
    });
    let backlog = load.backlog.as_ref().map(|partitions| {
        let total: i64 = partitions.iter().map(|n| (*n).max(0)).sum();
        let action = "backpressure is on: add ingestors, check the store";
        figure("backlog", format!("{total} events"), Standing::of(total as f64, BACKLOG_EVENTS), action)
    });
    let intake = match (load.store_up, load.spool_bytes, load.spool_limit_bytes) {
        (Some(false), _, _) => {
            Some(figure("intake", "store unreachable".into(), Standing::Breach, "restore the database"))
        }
        (_, Some(used), Some(limit)) if limit > 0 => {
            let share = used as f64 / limit as f64;
            let text = format!("log {} of {}", percent(share), mib(limit));
            Some(figure("intake", text, Standing::of(share, SPOOL_SHARE), "restore the store"))
        }
        _ => None,
    };
    let bus = load
        .bus_round_trip_ms
        .map(|ms| figure("bus", format!("{ms:.0} ms"), Standing::of(ms, BUS_ROUND_TRIP_MS), "check the network mesh"));
    [memory, cpu, sockets, jobs, backlog, intake, bus]
}

fn figure(name: &'static str, text: String, standing: Standing, action: &'static str) -> Figure {
    let action = (standing == Standing::Breach && !action.is_empty()).then_some(action);
    Figure { name, text, standing, action }
}

/// A share as a percentage: one decimal below 10 %, where a whole number would say 0.
fn percent(share: f64) -> String {
    let percent = share * 100.0;
    if percent < 10.0 { format!("{percent:.1} %") } else { format!("{percent:.0} %") }
}

fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 { format!("{:.1} GiB", mib / 1024.0) } else { format!("{mib:.0} MiB") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_figure_past_its_threshold_names_the_action() {
        let load = NodeLoad {
            memory_bytes: Some(900 << 20),
            memory_limit_bytes: Some(1000 << 20),
            cpu_percent: Some(85.0),
            live_sockets: Some(12),
            jobs_pending: Some(1500),
            jobs_running: Some(2),
            backlog: Some(vec![3000, 2500]),
            spool_bytes: Some(10),
            spool_limit_bytes: Some(100),
            store_up: Some(true),
            bus_round_trip_ms: Some(40.0),
        };
        let [memory, cpu, sockets, jobs, backlog, intake, bus] = figures("web", &load).map(Option::unwrap);
        assert_eq!((memory.standing, memory.action), (Standing::Breach, Some("scale web nodes out")));
        assert_eq!(memory.text, "90 % of 1000 MiB");
        assert_eq!((cpu.standing, cpu.action), (Standing::Breach, Some("scale web nodes out")));
        assert_eq!((sockets.text.as_str(), sockets.standing), ("12", Standing::Ok));
        assert_eq!(jobs.action, Some("investigate slow jobs"));
        assert_eq!(backlog.text, "5500 events");
        assert_eq!(backlog.standing, Standing::Breach);
        assert_eq!((intake.standing, intake.action), (Standing::Ok, None));
        assert_eq!((bus.standing, bus.action), (Standing::Ok, None));

        let ingestor = figures("ingestor", &NodeLoad { store_up: Some(false), cpu_percent: Some(60.0), ..load });
        let intake = ingestor[5].clone().unwrap();
        assert_eq!((intake.text.as_str(), intake.action), ("store unreachable", Some("restore the database")));
        assert_eq!(ingestor[1].clone().unwrap().standing, Standing::Near, "60 % is near 70 %");
        assert!(figures("web", &NodeLoad::default()).iter().all(Option::is_none), "an old node's beat has none");
    }
}
