//! Background jobs: polling sources, retries, exactly one run per tick across ingestors, and
//! failover of a running job. The source is a small HTTP server of the test's own on loopback.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::support::{NatsServer, TestServer, fresh_postgres};

/// One request the source saw.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    tick: String,
    authorization: Option<String>,
}

#[derive(Clone, Default)]
struct SourceState {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// `/hang`: the first request of this tick never gets an answer.
    hang_tick: Arc<Mutex<Option<String>>>,
}

struct SourceServer {
    base: String,
    state: SourceState,
    task: tokio::task::JoinHandle<()>,
}

impl SourceServer {
    async fn start() -> Self {
        let state = SourceState::default();
        let app = axum::Router::new()
            .route("/pages", get(pages))
            .route("/tick", get(tick))
            .route("/hang", get(hang))
            .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
            .route("/slow", get(slow))
            .route("/html", get(|| async { "<html>not json</html>" }))
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.state.hits.lock().iter().filter(|h| h.path == path).cloned().collect()
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<SourceState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let hit = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Hit {
            path: request.uri().path().to_owned(),
            tick: header("x-dash-tick").unwrap_or_default(),
            authorization: header("authorization"),
        }
    };
    state.hits.lock().push(hit);
    next.run(request).await
}

/// Pages of 5 events after the cursor, each overlapping the previous page by 2 events, plus
/// one event without an id that every page repeats; past event 30 the last page repeats.
async fn pages(Query(query): Query<HashMap<String, String>>) -> impl IntoResponse {
    let after: i64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0).min(30);
    let start = (after - 2).max(0);
    let mut items: Vec<Value> = (start..after + 5).map(|i| json!({ "id": format!("e{i}"), "n": i })).collect();
    items.push(json!({ "kind": "heartbeat", "note": "no id: deduplicated by content" }));
    axum::Json(json!({ "data": { "items": items }, "next": after + 5 }))
}

/// One event per tick, named after the tick.
async fn tick(headers: HeaderMap) -> impl IntoResponse {
    let tick = headers.get("x-dash-tick").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
    axum::Json(json!([{ "id": tick }]))
}

async fn hang(State(state): State<SourceState>, headers: HeaderMap) -> impl IntoResponse {
    let tick = headers.get("x-dash-tick").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
    let first = {
        let mut hang_tick = state.hang_tick.lock();
        if hang_tick.is_none() {
            *hang_tick = Some(tick.clone());
            true
        } else {
            false
        }
    };
    if first {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    axum::Json(json!([{ "id": tick }]))
}

async fn slow() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_secs(3)).await;
    axum::Json(json!([]))
}

async fn admin_post(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    server.client.post(server.url(path)).json(&body).send().await.unwrap()
}

async fn create_polled(server: &TestServer, name: &str, source: Value) -> String {
    let response = admin_post(server, "/api/pipelines", json!({ "name": name, "source": source })).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_source_stores_overlapping_pages_once_and_keeps_its_secrets() {
    let source = SourceServer::start().await;
    let server = TestServer::start(&[]).await;

    // A bad source is refused with the field named, and creates nothing.
    let refused =
        admin_post(&server, "/api/pipelines", json!({ "name": "bad", "source": { "url": "ftp://x/", "every": "1s" } }))
            .await;
    let body = crate::support::assert_error(refused, 422, "invalid_source").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("source.url"), "{body}");
    assert_eq!(server.get_json("/api/pipelines/bad").await["error"]["code"], "pipeline_not_found");

    let id = create_polled(
        &server,
        "polled",
        json!({
            "url": source.url("/pages"),
            "every": "1s",
            "events": "/data/items",
            "cursor": { "param": "after", "from": "/next" },
            "headers": { "Authorization": "Bearer s3cret-token" }
        }),
    )
    .await;
    // e0..e34 (the cursor stops at 30, whose page runs to e34) and the one event without an id.
    let expected = 36;
    wait_for("all pages polled", Duration::from_secs(30), async || {
        server.get_json(&format!("/api/pipelines/{id}")).await["stats"]["count"] == json!(expected)
    })
    .await;
    // Further polls re-read the last page: still stored once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ids, count) = server.stored_events(&id).await;
    assert_eq!(count, expected);
    assert_eq!(ids.len() as i64, expected);
    assert!(ids.iter().all(|(_, copies)| *copies == 1), "every event stored once: {ids:?}");

    let hits = source.hits("/pages");
    assert!(hits.len() >= 8, "{} polls", hits.len());
    assert!(hits.iter().all(|h| h.authorization.as_deref() == Some("Bearer s3cret-token")));

    let shown = server.get_json(&format!("/api/pipelines/{id}")).await;
    let polled = &shown["source"];
    assert!(polled["runs"].as_i64().unwrap() >= hits.len() as i64 - 1, "{shown}");
    assert_eq!(polled["failures"], 0);
    assert_eq!(polled["last_error"], Value::Null);
    assert_eq!(polled["headers"]["Authorization"], "***");
    assert_eq!(polled["cursor_saved"], true);
    assert!(polled["last_run"].is_string() && polled["next_run"].is_string(), "{shown}");
    let page = server.client.get(server.url(&format!("/pipelines/{id}"))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Source") && page.contains("every 1s"), "the page shows the source");
    for text in [shown.to_string(), page, server.log()] {
        assert!(!text.contains("s3cret-token"), "a header value leaked");
    }

    // Replace the source, then remove it: polls stop.
    let put = server
        .client
        .put(server.url(&format!("/api/pipelines/{id}/source")))
        .json(&json!({ "url": source.url("/tick"), "every": "1s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    wait_for("the new source polled", Duration::from_secs(10), async || !source.hits("/tick").is_empty()).await;
    let deleted = server.client.delete(server.url(&format!("/api/pipelines/{id}/source"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_delete = source.hits("/tick").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(source.hits("/tick").len(), after_delete, "no polls once the source is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sources_are_retried_with_backoff_and_reported() {
    let source = SourceServer::start().await;
    let server = TestServer::start(&[]).await;
    let cases = [("fails", "/fail", "HTTP 500"), ("slow", "/slow", "timed out"), ("html", "/html", "not JSON")];
    let mut ids = Vec::new();
    for (name, path, _) in cases {
        ids.push(
            create_polled(&server, name, json!({ "url": source.url(path), "every": "1s", "timeout": "300ms" })).await,
        );
    }
    let started = Instant::now();
    for ((_, _, error), id) in cases.iter().zip(&ids) {
        wait_for("two failed ticks", Duration::from_secs(30), async || {
            server.get_json(&format!("/api/pipelines/{id}")).await["source"]["consecutive_failures"]
                .as_i64()
                .is_some_and(|n| n >= 2)
        })
        .await;
        let shown = server.get_json(&format!("/api/pipelines/{id}")).await;
        let last_error = shown["source"]["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains(error), "{id}: {shown}");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Each tick tried 3 times, waits doubling; a tick due while one runs is skipped, and
    // failing ticks then back off: far fewer ticks than seconds went by.
    let hits = source.hits("/fail");
    let mut per_tick: HashMap<String, usize> = HashMap::new();
    for hit in &hits {
        *per_tick.entry(hit.tick.clone()).or_default() += 1;
    }
    // One tick at a time: a tick's attempts all come before the next tick's first.
    assert!(
        hits.windows(2).all(|w| w[0].tick <= w[1].tick),
        "ticks overlap: {:?}",
        hits.iter().map(|h| &h.tick).collect::<Vec<_>>()
    );
    // The newest tick may still be between its attempts.
    let newest = per_tick.keys().max().cloned().unwrap_or_default();
    assert!(
        per_tick.iter().all(|(tick, n)| *n == 3 || (*tick == newest && *n < 3)),
        "3 attempts per tick: {per_tick:?}"
    );
    let elapsed = started.elapsed().as_secs() as usize;
    assert!(per_tick.len() + 3 <= elapsed, "{} ticks in {elapsed} s: no backoff", per_tick.len());

    // The ingestor is fine: ready, and webhooks still land.
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["status"], "healthy", "{ready}");
    let pipeline = server.create_pipeline("webhooks").await;
    assert_eq!(server.post_json(&pipeline, "m1", r#"{"id":"a"}"#).await.status(), 202);
    server.wait_for_count(&pipeline, 1, Duration::from_secs(10)).await;
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dash_source_polls_total{outcome=\"failed\"}"), "poll metrics exported");
    assert!(metrics.contains("dash_jobs_runs_total"), "job metrics exported");
}

/// Ingestors on one PostgreSQL database, with a NATS of their own.
async fn ingestors(count: usize) -> Option<(Vec<TestServer>, NatsServer, String)> {
    let admin = dash_store::testing::admin_url()?;
    let database = fresh_postgres(&admin).await;
    let nats = NatsServer::start();
    let mut nodes = Vec::new();
    for n in 0..count {
        let name = format!("ingestor-{n}");
        let env = [
            ("APP_ROLE", "ingestor"),
            ("DATABASE_URL", database.as_str()),
            ("NATS_URL", nats.url.as_str()),
            ("DASH_NODE_ID", name.as_str()),
            ("DASH_FLUSH_INTERVAL", "100ms"),
        ];
        nodes.push(TestServer::start(&env).await);
    }
    Some((nodes, nats, database))
}

const STORED: &str = "SELECT event_id, COUNT(*) FROM events WHERE pipeline_id = $1 GROUP BY event_id";

async fn query_pg<T>(database: &str, sql: &str, bind: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(database).await.unwrap();
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned())).bind(bind).fetch_all(&db).await.unwrap();
    db.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingestors_run_each_tick_exactly_once() {
    if crate::support::postgres_admin().is_some() {
        return; // runs in the SQLite pass, on PostgreSQL databases of its own
    }
    let Some((nodes, _nats, database)) = ingestors(3).await else {
        eprintln!("skipped: DASH_TEST_POSTGRES not set");
        return;
    };
    let source = SourceServer::start().await;
    let id = create_polled(&nodes[0], "ticks", json!({ "url": source.url("/tick"), "every": "1s" })).await;
    // Eighteen ticks, however slowly a loaded machine starts the three nodes' schedulers.
    wait_for("18 polled ticks", Duration::from_secs(60), async || {
        let ticks: std::collections::HashSet<String> = source.hits("/tick").into_iter().map(|h| h.tick).collect();
        ticks.len() >= 18
    })
    .await;
    let response = nodes[1].client.delete(nodes[1].url(&format!("/api/pipelines/{id}/source"))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let hits = source.hits("/tick");
    let mut per_tick: HashMap<String, usize> = HashMap::new();
    for hit in &hits {
        *per_tick.entry(hit.tick.clone()).or_default() += 1;
    }
    assert!(per_tick.values().all(|n| *n == 1), "a tick ran twice: {per_tick:?}");
    let mut ticks: Vec<i64> =
        per_tick.keys().map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()).collect();
    ticks.sort();
    assert!(ticks.len() >= 18, "{} ticks", ticks.len());
    // Every tick on the schedule's second; none skipped but for a rare one a loaded machine
    // holds back (a tick no scheduler saw within its period, or due while the previous one
    // still ran, is skipped by design, not run late).
    assert!(ticks.windows(2).all(|w| (w[1] - w[0]) % 1000 == 0), "ticks off the schedule: {ticks:?}");
    let skipped = ticks.windows(2).map(|w| (w[1] - w[0]) / 1000 - 1).sum::<i64>();
    assert!(skipped <= 2, "{skipped} ticks skipped: {ticks:?}");
    // Each polled tick was one job. A job enqueued just before the source was
    // removed finds no source and polls nothing, so it may exist without a hit.
    let jobs: Vec<(String, String)> = query_pg(
        &database,
        "SELECT idempotency_key, COALESCE(lock_by, '') FROM apalis.jobs \
         WHERE idempotency_key LIKE 'poll:' || $1 || ':%'",
        &id,
    )
    .await;
    let job_ticks: Vec<i64> = jobs.iter().map(|(key, _)| key.rsplit(':').next().unwrap().parse().unwrap()).collect();
    for tick in &ticks {
        assert_eq!(job_ticks.iter().filter(|t| *t == tick).count(), 1, "one job for tick {tick}: {jobs:?}");
    }
    let last = *ticks.last().unwrap();
    assert!(
        job_ticks.iter().filter(|t| !ticks.contains(t)).all(|t| *t > last),
        "only jobs after the last poll went without a hit: {jobs:?}"
    );
    let stored: Vec<(String, i64)> = query_pg(&database, STORED, &id).await;
    assert_eq!(stored.len(), ticks.len(), "one event per tick");
    assert!(stored.iter().all(|(_, copies)| *copies == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_on_a_killed_ingestor_completes_on_another() {
    if crate::support::postgres_admin().is_some() {
        return; // runs in the SQLite pass, on PostgreSQL databases of its own
    }
    let Some((mut nodes, _nats, database)) = ingestors(2).await else {
        eprintln!("skipped: DASH_TEST_POSTGRES not set");
        return;
    };
    let source = SourceServer::start().await;
    let id =
        create_polled(&nodes[0], "hangs", json!({ "url": source.url("/hang"), "every": "1s", "timeout": "60s" })).await;
    wait_for("the first poll", Duration::from_secs(10), async || source.state.hang_tick.lock().is_some()).await;
    let hung = source.state.hang_tick.lock().clone().unwrap();
    let tick_ms = chrono::DateTime::parse_from_rfc3339(&hung).unwrap().timestamp_millis();
    let key = format!("poll:{id}:{tick_ms}");
    let holder: Vec<(String,)> =
        query_pg(&database, "SELECT lock_by FROM apalis.jobs WHERE idempotency_key = $1", &key).await;
    let holder = holder[0].0.clone();
    let victim = if holder.starts_with("ingestor-0-") { 0 } else { 1 };
    // A live holder keeps its job: no second request for that tick while it waits.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(source.hits("/hang").iter().filter(|h| h.tick == hung).count(), 1, "job taken from a live node");

    nodes[victim].kill9();
    let killed = Instant::now();
    wait_for("the tick retried on the other node", Duration::from_secs(15), async || {
        source.hits("/hang").iter().filter(|h| h.tick == hung).count() == 2
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("job failover after kill -9: {failover:?}");
    assert!(failover <= Duration::from_secs(10), "failover took {failover:?}");
    wait_for("the tick's event stored", Duration::from_secs(10), async || {
        query_pg::<(String, i64)>(&database, STORED, &id).await.iter().any(|(event, _)| *event == hung)
    })
    .await;
    // The job is marked done when the worker next reports to the queue (≤ one heartbeat later).
    const JOB: &str = "SELECT status, lock_by FROM apalis.jobs WHERE idempotency_key = $1";
    wait_for("the job marked done", Duration::from_secs(10), async || {
        query_pg::<(String, String)>(&database, JOB, &key).await[0].0 == "Done"
    })
    .await;
    let done: Vec<(String, String)> = query_pg(&database, JOB, &key).await;
    assert!(!done[0].1.starts_with(&holder), "completed by the other node: {done:?}");
}

#[test]
fn the_cli_sets_shows_and_removes_a_source() {
    if crate::support::postgres_admin().is_some() {
        return; // a CLI test: the SQLite pass covers it
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = crate::support::run_dashd(dir.path(), &[("DASH_DATA_DIR", "data")], args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    assert!(run(&["pipeline", "create", "feed"]).0);
    let (ok, text) = run(&[
        "pipeline",
        "source",
        "feed",
        "--url",
        "http://127.0.0.1:9/items?key=k3y",
        "--every",
        "30s",
        "--events",
        "/items",
        "--header",
        "Authorization: Bearer t0ken",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("source set") && text.contains("\"every\": \"30s\"") && text.contains("key=***"), "{text}");
    assert!(!text.contains("t0ken") && !text.contains("k3y"), "secrets shown: {text}");
    let (ok, text) = run(&["pipeline", "source", "feed", "--url", "http://x/", "--every", "10ms"]);
    assert!(!ok && text.contains("source.every"), "{text}");
    let (ok, text) = run(&["pipeline", "source", "feed", "--remove"]);
    assert!(ok && text.contains("source removed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_creates_pipelines_with_their_retention_and_source() {
    let source = SourceServer::start().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    let toml = format!(
        "[pipelines.kept]\nretention = \"2days\"\n\n\
         [pipelines.polled.source]\nurl = \"{}\"\nevery = \"1s\"\nheaders = {{ Authorization = \"Bearer c0nfig\" }}\n",
        source.url("/tick")
    );
    std::fs::write(config.path(), toml).unwrap();
    let path = config.path().display().to_string();
    let server = TestServer::start(&[("DASH_CONFIG", path.as_str()), ("DASH_FLUSH_INTERVAL", "100ms")]).await;

    let kept = server.get_json("/api/pipelines/kept").await;
    assert_eq!(kept["retention"], "2days", "{kept}");
    assert!(kept.get("source").is_none(), "{kept}");
    let polled = server.get_json("/api/pipelines/polled").await;
    assert_eq!(polled["retention"], Value::Null, "{polled}");
    assert_eq!(polled["source"]["every"], "1s", "{polled}");
    assert!(!polled.to_string().contains("c0nfig"), "secrets shown: {polled}");
    wait_for("a polled event", Duration::from_secs(15), async || {
        server.get_json("/api/pipelines/polled").await["count"].as_i64() >= Some(1)
    })
    .await;
    assert!(source.hits("/tick").iter().all(|h| h.authorization.as_deref() == Some("Bearer c0nfig")));

    // A bad table stops the node at start, naming the key, with the configuration exit code.
    std::fs::write(config.path(), "[pipelines.kept]\nretention = \"1s\"\n").unwrap();
    let output = crate::support::run_dashd(server.dir.path(), &server.env(), &["migrate"]);
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("pipelines.kept.retention"), "{text}");
}
