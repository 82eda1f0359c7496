//! What 202 promises: kill -9, SIGTERM, a locked store, a torn intake log tail.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{TestServer, fresh_postgres, postgres_admin};
use dash_store::testing::TcpProxy;

/// Every acknowledged id is in the events table exactly once, and the pipeline count agrees.
async fn assert_stored_exactly_once(server: &TestServer, pipeline: &str, acked: &HashSet<String>) {
    let (rows, count) = server.stored_events(pipeline).await;
    let mut stored = HashSet::new();
    for (id, copies) in rows {
        assert_eq!(copies, 1, "event {id} stored {copies} times");
        stored.insert(id);
    }
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(count, stored.len() as i64, "pipeline count matches the stored rows");
}

#[tokio::test]
async fn kill_9_under_concurrent_load_loses_no_acknowledged_event() {
    let mut server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "200ms")]).await;
    let p = server.create_pipeline("crash").await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let url = server.url(&format!("/webhooks/{}", p.id));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut senders = Vec::new();
    for worker in 0..16 {
        let (client, url, token, acked) = (server.client.clone(), url.clone(), p.token.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let id = format!("w{worker}-{n}");
                n += 1;
                let batch = if n % 4 == 0 {
                    // Some requests carry several events, to cover frames split across batches.
                    (0..5).map(|i| format!("{{\"id\":\"{id}.{i}\"}}\n")).collect::<String>()
                } else {
                    format!("{{\"id\":\"{id}\"}}")
                };
                let content_type = if n % 4 == 0 { "application/x-ndjson" } else { "application/json" };
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", content_type)
                    .body(batch.clone())
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        let mut acked = acked.lock();
                        if n % 4 == 0 {
                            acked.extend((0..5).map(|i| format!("{id}.{i}")));
                        } else {
                            acked.insert(id);
                        }
                    }
                    // Backpressure is allowed: not acknowledged, so the sender retries later.
                    Ok(r) if r.status() == 429 || r.status() == 503 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > 100, "load ran before the kill: {}", acked.len());

    server.restart();
    // Replay: everything acknowledged lands (more may: fsync'd but unacknowledged at the kill).
    let deadline = Instant::now() + Duration::from_secs(30);
    while (server.count(&p).await as usize) < acked.len() {
        assert!(Instant::now() < deadline, "replay did not complete; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.sigterm().success());
    assert_stored_exactly_once(&server, &p.id, &acked).await;
}

#[tokio::test]
async fn sigterm_drains_every_buffer_and_exits_zero() {
    let mut server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "1h"), ("DASH_MAX_BATCH", "100000")]).await;
    let a = server.create_pipeline("drain a").await;
    let b = server.create_pipeline("drain b").await;
    let mut acked = HashSet::new();
    for i in 0..30 {
        let p = if i % 2 == 0 { &a } else { &b };
        assert_eq!(server.post_json(p, &format!("d{i}"), "{}").await.status(), 202);
        if i % 2 == 0 {
            acked.insert(format!("d{i}"));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.count(&a).await, 0, "nothing flushed before the interval");
    let status = server.sigterm();
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());
    assert_stored_exactly_once(&server, &a.id, &acked).await;
    // Nothing is replayed after a clean stop: the log holds no unflushed byte at the next start.
    // (A replay would stay in the log here, behind the hour-long flush interval.)
    server.restart();
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["checks"]["intake_log"]["bytes"], 0, "{ready}");
    assert!(!server.log().contains("intake log recovered"), "{}", server.log());
    assert_eq!(server.count(&a).await, 15);
    assert_eq!(server.get_json(&format!("/api/pipelines/{}", a.id)).await["stats"]["duplicates"], 0);
}

#[tokio::test]
async fn a_locked_store_delays_events_but_loses_none() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    if server.is_postgres() {
        return; // the PostgreSQL outage is the cut-proxy test below
    }
    let p = server.create_pipeline("locked").await;

    // Another process-like connection takes the write lock and holds it.
    let url = format!("sqlite://{}/dash.db", server.data_dir().display());
    let mut locker = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();

    let mut acked = HashSet::new();
    for i in 0..20 {
        let r = server.post_json(&p, &format!("l{i}"), "{}").await;
        assert_eq!(r.status(), 202, "intake keeps accepting while the store is locked");
        acked.insert(format!("l{i}"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ready = server.client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], false, "{ready}");
    assert_eq!(server.count(&p).await, 0, "nothing can land while locked");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    server.wait_for_count(&p, 20, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = server.get_json("/ready").await;
        if ready["status"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy again: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_stored_exactly_once(&server, &p.id, &acked).await;
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_and_acknowledged_events_survive() {
    let mut server =
        TestServer::start(&[("DASH_FLUSH_INTERVAL", "1h"), ("DASH_MAX_BATCH", "100000"), ("DASH_PARTITIONS", "1")])
            .await;
    let p = server.create_pipeline("torn").await;
    let mut acked = HashSet::new();
    for i in 0..10 {
        assert_eq!(server.post_json(&p, &format!("t{i}"), "{}").await.status(), 202);
        acked.insert(format!("t{i}"));
    }
    server.kill9();

    // A crash in the middle of the next write: a header promising more than was written.
    let segment = server.data_dir().join("intake/p0/00000000000000000000.log");
    let mut file = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&4000u32.to_le_bytes()).unwrap();
    file.write_all(&[0x5A; 4 + 100]).unwrap();
    drop(file);

    server.set_env("DASH_FLUSH_INTERVAL", "100ms");
    server.restart();
    server.wait_for_count(&p, 10, Duration::from_secs(10)).await;
    assert!(server.log().contains("a write cut short"), "recovery is logged");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dash_intake_log_torn_bytes_total 108"), "{metrics}");
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["checks"]["intake_log_quarantine"]["ok"], true, "a torn write was never acknowledged: {ready}");
    // The log accepts and replays cleanly after the cut.
    assert_eq!(server.post_json(&p, "after", "{}").await.status(), 202);
    acked.insert("after".into());
    server.wait_for_count(&p, 11, Duration::from_secs(10)).await;
    assert!(server.sigterm().success());
    assert_stored_exactly_once(&server, &p.id, &acked).await;
}

// Multi-threaded: the proxy must keep serving while the test blocks on dashd's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_database_connection_delays_events_but_loses_none() {
    let Some(admin) = postgres_admin() else { return };
    // dashd reaches its own database through a proxy this test can cut.
    let direct = fresh_postgres(&admin).await;
    // Whatever server the suite runs on (the shared one, or a private TimescaleDB cluster).
    let (proxy, proxied) = TcpProxy::in_front_of(&direct).await;
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DATABASE_URL", &proxied)]).await;
    let p = server.create_pipeline("cut").await;
    assert_eq!(server.post_json(&p, "before", "{}").await.status(), 202);
    server.wait_for_count(&p, 1, Duration::from_secs(10)).await;

    proxy.cut();
    let mut acked = HashSet::from(["before".to_owned()]);
    for i in 0..20 {
        let r = server.post_json(&p, &format!("c{i}"), "{}").await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 202, "intake keeps accepting while the database is unreachable: {body}\n{}", server.log());
        acked.insert(format!("c{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = server.client.get(server.url("/ready")).send().await.unwrap();
        let code = ready.status();
        let ready: serde_json::Value = ready.json().await.unwrap();
        if ready["status"] == "degraded" {
            assert_eq!(code, 200);
            assert_eq!(ready["checks"]["database"]["ok"], false, "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "never degraded: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An outage is a few lines in the log, not one per retry or poll (the metrics count those).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = server.log();
    let noisy = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
    assert!(noisy <= 12, "{noisy} warnings in a short outage:\n{log}");

    proxy.restore();
    server.wait_for_count(&p, 21, Duration::from_secs(30)).await;
    // Verify through a direct connection, not the proxy.
    let (rows, count) = server.stored_events(&p.id).await;
    assert_eq!(count, 21);
    let stored: HashSet<String> = rows
        .into_iter()
        .map(|(id, copies)| {
            assert_eq!(copies, 1);
            id
        })
        .collect();
    assert_eq!(stored, acked);
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&direct).await.unwrap();
    let layout: String =
        sqlx::query_scalar("SELECT value FROM dash_meta WHERE key = 'events_layout'").fetch_one(&db).await.unwrap();
    let on_timescale = std::env::var("DASH_TEST_TIMESCALE").is_ok_and(|v| v == "1");
    assert_eq!(layout, if on_timescale { "timescale" } else { "partitioned" });
    db.close().await;
    drop(server);
    dash_store::testing::drop_database(&admin, &direct).await.unwrap();
}
