//! A pipeline's events exported as NDJSON, through the API and `dashd export`, on the pass's
//! store: every event of the range once, oldest first, and the server's memory flat while a
//! million of them stream out.

use std::time::Duration;

use serde_json::Value;

use crate::support::{TestServer, assert_error, now_secs, run_dashd};

/// Events written straight into the store: far more than a request would carry, quickly.
const BULK: i64 = 1_000_000;

/// Inserts `BULK` events into `pipeline`, one millisecond apart from `base_ms` on, each
/// `{"n": i, "pad": "…"}` (about 130 bytes), a tenth at a time (the server's own writes wait
/// for one tenth at most).
async fn bulk_insert(server: &TestServer, pipeline: &str, base_ms: i64) {
    let tenth = BULK / 10;
    for part in 0..10 {
        insert_range(server, pipeline, base_ms, part * tenth + 1, (part + 1) * tenth).await;
    }
}

/// Events `first..=last` of [`bulk_insert`].
async fn insert_range(server: &TestServer, pipeline: &str, base_ms: i64, first: i64, last: i64) {
    let pad = "x".repeat(100);
    match server.database_url() {
        Some(url) => {
            let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
            sqlx::query(
                "INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload) \
                 SELECT $1, 'bulk-' || i, to_timestamp(($2 + i) / 1000.0), to_timestamp(($2 + i) / 1000.0), \
                 ('{\"n\":' || i || ',\"pad\":\"' || $3 || '\"}')::json FROM generate_series($5::int8, $4::int8) AS i",
            )
            .bind(pipeline)
            .bind(base_ms)
            .bind(&pad)
            .bind(last)
            .bind(first)
            .execute(&db)
            .await
            .unwrap();
            db.close().await;
        }
        None => {
            let url = format!("sqlite://{}/dash.db", server.data_dir().display());
            let db = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
                 INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload) \
                 SELECT $3, 'bulk-' || i, $4 + i, $4 + i, '{\"n\":' || i || ',\"pad\":\"' || $5 || '\"}' FROM n",
            )
            .bind(first)
            .bind(last)
            .bind(pipeline)
            .bind(base_ms)
            .bind(&pad)
            .execute(&db)
            .await
            .unwrap();
            db.close().await;
        }
    }
}

/// The server's resident memory, in KiB.
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_export_in_order_with_the_servers_memory_flat() {
    let server = TestServer::start(&[]).await;
    let pipeline = server.create_pipeline("big").await;
    let base_ms = (now_secs() - 7_200) * 1000;
    let started = std::time::Instant::now();
    bulk_insert(&server, &pipeline.id, base_ms).await;
    eprintln!("inserted {BULK} events in {:?}", started.elapsed());
    let started = std::time::Instant::now();

    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let response =
        client.get(server.url(&format!("/api/pipelines/{}/events/export", pipeline.id))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert!(response.headers()["content-disposition"].to_str().unwrap().contains("big.ndjson"));
    let baseline = rss_kib(&server);
    let (mut peak, mut lines, mut bytes, mut chunks) = (baseline, 0i64, 0usize, 0u64);
    let mut partial: Vec<u8> = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len();
        partial.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = partial[start..].iter().position(|b| *b == b'\n') {
            let line: Value = serde_json::from_slice(&partial[start..start + end]).unwrap();
            lines += 1;
            // Oldest first: the bulk events' n counts up by one.
            assert_eq!(line["payload"]["n"], lines, "line {lines}");
            assert_eq!(line["id"], format!("bulk-{lines}"));
            start += end + 1;
        }
        partial.drain(..start);
        chunks += 1;
        if chunks.is_multiple_of(64) {
            peak = peak.max(rss_kib(&server));
        }
    }
    assert!(partial.is_empty(), "the stream ends with a whole line");
    assert_eq!(lines, BULK, "every event once");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "exported {lines} events, {} MiB in {:?}; server memory {} MiB at the start, peak {} MiB",
        bytes >> 20,
        started.elapsed(),
        baseline / 1024,
        peak / 1024
    );
    assert!(bytes > 100 << 20, "a large export: {bytes} bytes");
    assert!(grown_mib < 64, "the server's memory grew by {grown_mib} MiB while {} MiB streamed", bytes >> 20);
}

async fn export(server: &TestServer, pipeline: &str, query: &str) -> reqwest::Response {
    let url = server.url(&format!("/api/pipelines/{pipeline}/events/export{query}"));
    server.client.get(url).send().await.unwrap()
}

#[tokio::test]
async fn an_export_takes_a_range_and_the_cli_writes_the_same_lines() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "50ms")]).await;
    let pipeline = server.create_pipeline("orders").await;
    let base = (now_secs() - 3_600) * 1000;
    let ndjson: String = (0..5)
        .map(|i| format!("{{\"id\":\"o{i}\",\"type\":\"order\",\"timestamp\":{}}}\n", base + i * 60_000))
        .collect();
    assert_eq!(server.post_signed(&pipeline, "batch-1", "application/x-ndjson", &ndjson).await.status(), 202);
    server.wait_for_count(&pipeline, 5, Duration::from_secs(10)).await;

    let lines = |text: &str| -> Vec<Value> { text.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let all = export(&server, &pipeline.id, "").await.text().await.unwrap();
    let events = lines(&all);
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["o0", "o1", "o2", "o3", "o4"]);
    assert_eq!(events[0]["type"], "order");
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z') && events[0].get("received_at").is_some());
    // from is inclusive, to exclusive; RFC 3339 or unix ms.
    let from = dash_domain::format_ms(base + 60_000);
    let some =
        export(&server, &pipeline.id, &format!("?from={from}&to={}", base + 3 * 60_000)).await.text().await.unwrap();
    let ids: Vec<String> = lines(&some).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["o1", "o2"]);
    assert!(
        export(&server, &pipeline.id, &format!("?from={}", base + 3_600_000)).await.text().await.unwrap().is_empty(),
        "an empty range"
    );
    assert_error(export(&server, &pipeline.id, &format!("?from={base}&to={base}")).await, 400, "invalid_query").await;
    assert_error(export(&server, &pipeline.id, "?from=yesterday").await, 400, "invalid_query").await;
    let missing = server.client.get(server.url("/api/pipelines/nope/events/export")).send().await.unwrap();
    assert_error(missing, 404, "pipeline_not_found").await;

    // `dashd export` writes the same lines, whole or not at all.
    let env = server.env();
    let out = run_dashd(server.dir.path(), &env, &["export", "orders", "--output", "orders.ndjson"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 5 events"));
    let written = std::fs::read_to_string(server.dir.path().join("orders.ndjson")).unwrap();
    assert_eq!(written, all);
    let out = run_dashd(
        server.dir.path(),
        &env,
        &["export", "orders", "--from", &from, "--to", &(base + 3 * 60_000).to_string()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), some);
    let out = run_dashd(server.dir.path(), &env, &["export", "nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pipeline"));
}
