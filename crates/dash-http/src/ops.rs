//! `/health`, `/ready`, `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;

const DATABASE_PROBE_DEADLINE: Duration = Duration::from_secs(1);

pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// healthy: everything works. degraded: events are still accepted, but the database or the
/// bus is failing (they wait in the intake log / dashboards go stale), or a web edge knows of no
/// ingestor (its pages work; webhooks get 503). unhealthy (503): this
/// node cannot accept events.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (code, body) = readiness(&state).await;
    (code, Json(body))
}

/// The readiness report `/ready` answers with, and the status code that goes with it.
pub(crate) async fn readiness(state: &AppState) -> (StatusCode, Value) {
    let (database_ok, database) = match state.store.ping(DATABASE_PROBE_DEADLINE).await {
        Ok(latency) => {
            let flushing = state.intake.as_ref().is_none_or(|i| i.store_health().is_up());
            let mut check = json!({ "ok": flushing, "latency_ms": (latency.as_secs_f64() * 1e6).round() / 1e3 });
            if let Some(err) = state.intake.as_ref().and_then(|i| i.store_health().last_error()).filter(|_| !flushing) {
                check["error"] = json!(err);
            }
            (flushing, check)
        }
        Err(err) => (false, json!({ "ok": false, "error": err.to_string() })),
    };
    let bus_ok = state.bus.is_healthy();
    let mut checks = json!({
        "database": database,
        "bus": { "ok": bus_ok, "kind": state.bus.kind() },
    });
    let mut intake_ok = true;
    if let Some(intake) = &state.intake {
        let spool = intake.spool();
        intake_ok = !spool.is_refusing();
        checks["intake_log"] = json!({
            "ok": intake_ok,
            "bytes": spool.used(),
            "max_bytes": spool.max(),
            "backlog": intake.backlogs(),
        });
    }
    let mut edge_ok = true;
    if let Some(edge) = &state.edge {
        let (known, up) = edge.known();
        edge_ok = known > 0;
        checks["ingestors"] = json!({ "ok": edge_ok, "known": known, "up": up });
    }
    let (status, code) = match (intake_ok, database_ok && bus_ok && edge_ok) {
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
    let text = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
