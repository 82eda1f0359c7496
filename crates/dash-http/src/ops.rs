//! `/health`, `/ready`, `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;

const DATABASE_PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// How long an event set aside keeps the node `degraded`.
const SET_ASIDE_RECENT: Duration = Duration::from_secs(3600);

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// healthy: everything works. degraded: events are still accepted, but the database or the
/// bus is failing (they wait in the intake log / dashboards go stale), a web edge knows of no
/// ingestor (its pages work; webhooks get 503), or the store refused some events for their data
/// within the last hour (`events_set_aside`: kept aside, counted per pipeline; the database
/// itself is fine).
/// unhealthy (503): this node cannot accept events.
async fn ready(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let (code, body) = readiness(&state, Detail::for_caller(&state, &headers)).await;
    (code, Json(body))
}

/// How much of a failure's text a report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// A stable code only (`unreachable`, `flush_failing`): the database's own error text can
    /// name hosts, users and schemas, so an anonymous caller does not see it.
    Code,
    /// The code and the error text: for callers holding the admin token (or a session).
    Text,
}

impl Detail {
    pub(crate) fn for_caller(state: &AppState, headers: &HeaderMap) -> Self {
        match state.limits.admin_token.is_some() && crate::auth::authorized(headers, &state.limits) {
            true => Self::Text,
            false => Self::Code,
        }
    }
}

/// The readiness report `/ready` answers with, and the status code that goes with it.
pub(crate) async fn readiness(state: &AppState, detail: Detail) -> (StatusCode, Value) {
    let (database_ok, database) = match state.store.ping(DATABASE_PROBE_DEADLINE).await {
        Ok(latency) => {
            let flushing = state.intake.as_ref().is_none_or(|i| i.store_health().is_up());
            let mut check = json!({ "ok": flushing, "latency_ms": (latency.as_secs_f64() * 1e6).round() / 1e3 });
            if let Some(err) = state.intake.as_ref().and_then(|i| i.store_health().last_error()).filter(|_| !flushing) {
                check["code"] = json!("flush_failing");
                if detail == Detail::Text {
                    check["error"] = json!(err);
                }
            }
            (flushing, check)
        }
        Err(err) => {
            tracing::debug!(error = %err, "readiness: database unreachable");
            let mut check = json!({ "ok": false, "code": "unreachable" });
            if detail == Detail::Text {
                check["error"] = json!(err.to_string());
            }
            (false, check)
        }
    };
    let bus_ok = state.bus.is_healthy();
    let mut checks = json!({
        "database": database,
        "bus": { "ok": bus_ok, "kind": state.bus.kind() },
    });
    // Apart from reachability: events the store refused for their data and kept aside. Recent
    // ones (within SET_ASIDE_RECENT) make the node degraded; older ones stay counted.
    let mut stored_ok = true;
    if database_ok && let Ok((set_aside, latest)) = state.store.set_aside_summary().await {
        stored_ok = latest.is_none_or(|at| dash_domain::now_ms() - at > SET_ASIDE_RECENT.as_millis() as i64);
        checks["events_set_aside"] = json!({
            "ok": stored_ok,
            "events": set_aside,
            "latest": latest.map(dash_domain::format_ms),
        });
    }
    let mut intake_ok = true;
    let mut quarantine_ok = true;
    if let Some(intake) = &state.intake {
        let spool = intake.spool();
        let disk_full = spool.is_disk_full();
        intake_ok = !spool.is_refusing() && !disk_full;
        checks["intake_log"] = json!({
            "ok": intake_ok,
            "bytes": spool.used(),
            "max_bytes": spool.max(),
            "backlog": intake.backlogs(),
        });
        if disk_full {
            // Requests are refused (503 `intake_disk_full`) until the disk has room again.
            checks["intake_log"]["code"] = json!("disk_full");
        } else if spool.is_refusing() {
            checks["intake_log"]["code"] = json!("log_full");
        }
        // Damaged acknowledged data kept aside: degraded until an operator removes the files.
        let quarantine = intake.quarantine().summary().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "readiness: cannot list the intake log quarantine");
            dash_ingest::QuarantineSummary { files: 1, bytes: 0 }
        });
        quarantine_ok = quarantine.files == 0;
        checks["intake_log_quarantine"] = json!({
            "ok": quarantine_ok,
            "files": quarantine.files,
            "bytes": quarantine.bytes,
        });
        if !quarantine_ok {
            checks["intake_log_quarantine"]["code"] = json!("damaged_data_kept");
            if detail == Detail::Text {
                checks["intake_log_quarantine"]["path"] = json!(intake.quarantine().dir().display().to_string());
            }
        }
    }
    let mut edge_ok = true;
    if let Some(edge) = &state.edge {
        let (known, up) = edge.known();
        edge_ok = known > 0;
        checks["ingestors"] = json!({ "ok": edge_ok, "known": known, "up": up });
    }
    let (status, code) = match (intake_ok, database_ok && bus_ok && edge_ok && stored_ok && quarantine_ok) {
        (true, true) => ("healthy", StatusCode::OK),
        (true, false) => ("degraded", StatusCode::OK),
        (false, _) => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = json!({
        "status": status,
        "role": state.node.role,
        "node": state.node.node,
        "region": state.node.region,
        "version": state.node.version,
        "uptime_secs": state.node.started_at.elapsed().as_secs(),
        "checks": checks,
    });
    (code, body)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if state.metrics.is_some() {
        record_scrape_figures(&state);
    }
    let text = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Figures read when scraped rather than kept up to date: the process's memory, CPU and file
/// descriptors, the limits the node runs under, open `/live` sockets (the hub's count, which
/// heartbeats carry too), whether batches reach the store, the intake log's bound, whether NATS
/// is connected.
fn record_scrape_figures(state: &AppState) {
    metrics_process::Collector::default().collect();
    metrics::gauge!("dash_live_connections").set(state.hub.clients() as f64);
    let limits = dash_cluster::NodeLimits::read();
    if let Some(bytes) = limits.memory_bytes {
        metrics::gauge!("dash_memory_limit_bytes").set(bytes as f64);
    }
    metrics::gauge!("dash_cpu_limit_cores").set(limits.cpu_cores);
    if let Some(intake) = &state.intake {
        metrics::gauge!("dash_store_up").set(f64::from(u8::from(intake.store_health().is_up())));
        metrics::gauge!("dash_intake_spool_limit_bytes").set(intake.spool().max() as f64);
    }
    if state.bus.kind() == "nats" {
        metrics::gauge!("dash_bus_connected").set(f64::from(u8::from(state.bus.is_healthy())));
    }
}
