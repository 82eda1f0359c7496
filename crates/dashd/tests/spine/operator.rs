//! What operators do every month, with acknowledged events still in the intake log: change
//! `DASH_PARTITIONS`, upgrade over a log the first releases wrote, find damaged log data.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{Pipeline, TestServer};

/// Each pipeline's event ids in the order they were committed (SQLite's rowid); `None` on
/// PostgreSQL, whose events table keeps no commit order.
async fn commit_order(server: &TestServer, pipeline: &str) -> Option<Vec<String>> {
    if server.is_postgres() {
        return None;
    }
    let url = format!("sqlite://{}/dash.db", server.data_dir().display());
    let db = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let ids = sqlx::query_scalar("SELECT event_id FROM events WHERE pipeline_id = $1 ORDER BY rowid")
        .bind(pipeline)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    Some(ids)
}

async fn post_round(server: &TestServer, pipelines: &[Pipeline], round: &str) {
    for p in pipelines {
        for k in 0..5 {
            let response = server.post_json(p, &format!("{round}-{k}"), "{}").await;
            assert_eq!(response.status(), 202, "{round}: {}", response.text().await.unwrap());
        }
    }
}

fn partition_logs(server: &TestServer) -> Vec<String> {
    let mut logs: Vec<String> = std::fs::read_dir(server.data_dir().join("intake"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('p'))
        .collect();
    logs.sort();
    logs
}

#[tokio::test]
async fn lowering_then_raising_partitions_keeps_every_acknowledged_event_in_order() {
    let mut server =
        TestServer::start(&[("DASH_PARTITIONS", "8"), ("DASH_FLUSH_INTERVAL", "1h"), ("DASH_MAX_BATCH", "100000")])
            .await;
    let mut pipelines = Vec::new();
    for i in 0..8 {
        pipelines.push(server.create_pipeline(&format!("spread {i}")).await);
    }
    let partitions: HashSet<usize> = pipelines.iter().map(|p| dash_ingest::partition_for(&p.id, 8)).collect();
    assert!(partitions.iter().any(|i| *i >= 2), "some pipelines live beyond partition 1: {partitions:?}");
    post_round(&server, &pipelines, "old").await;
    server.kill9();

    // Lower to 2: the logs p2…p7 hold acknowledged events nothing else would ever read.
    server.set_env("DASH_PARTITIONS", "2");
    server.set_env("DASH_FLUSH_INTERVAL", "100ms");
    server.restart();
    post_round(&server, &pipelines, "mid").await;
    for p in &pipelines {
        server.wait_for_count(p, 10, Duration::from_secs(20)).await;
    }
    assert!(server.log().contains("intake log beyond DASH_PARTITIONS"), "the move is logged");
    assert_eq!(partition_logs(&server), ["p0", "p1"], "emptied logs are removed");
    let layout = std::fs::read_to_string(server.data_dir().join("intake/layout")).unwrap();
    assert_eq!(layout, "partitions=2 hash=crc32c\n");

    // Acknowledged under 2, unflushed; then raise to 8 and take new events at once.
    server.kill9();
    server.set_env("DASH_FLUSH_INTERVAL", "1h");
    server.restart();
    post_round(&server, &pipelines, "late").await;
    server.kill9();
    server.set_env("DASH_PARTITIONS", "8");
    server.set_env("DASH_FLUSH_INTERVAL", "100ms");
    server.restart();
    post_round(&server, &pipelines, "new").await;
    for p in &pipelines {
        server.wait_for_count(p, 20, Duration::from_secs(20)).await;
    }
    assert!(server.sigterm().success());

    for p in &pipelines {
        let (ids, count) = server.stored_events(&p.id).await;
        assert_eq!(count, 20);
        assert!(ids.iter().all(|(_, copies)| *copies == 1), "{ids:?}");
        if let Some(order) = commit_order(&server, &p.id).await {
            let rounds: Vec<&str> = order.iter().map(|id| id.split('-').next().unwrap()).collect();
            let expected: Vec<&str> = ["old", "mid", "late", "new"].iter().flat_map(|r| [*r; 5]).collect();
            assert_eq!(rounds, expected, "{}: events committed in the order they were acknowledged", p.id);
        }
    }
    server.restart();
    for p in &pipelines {
        let stats = &server.get_json(&format!("/api/pipelines/{}", p.id)).await["stats"];
        assert_eq!((stats["count"].as_i64(), stats["duplicates"].as_i64()), (Some(20), Some(0)), "{stats}");
    }
}

#[tokio::test]
async fn requests_the_first_releases_wrote_are_stored_after_an_upgrade() {
    let mut server = TestServer::start(&[("DASH_PARTITIONS", "2"), ("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let orders = server.create_pipeline("orders").await;
    let payments = server.create_pipeline("payments").await;
    assert!(server.sigterm().success());

    // What the first releases left behind: untagged records, in a log the layout file does not
    // describe, placed where no pipeline of them belongs under the current hash.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dash-ingest/tests/fixtures/intake-v0.log");
    let intake = server.data_dir().join("intake");
    std::fs::remove_file(intake.join("layout")).unwrap();
    std::fs::create_dir_all(intake.join("p5")).unwrap();
    std::fs::copy(&fixture, intake.join("p5/00000000000000000000.log")).unwrap();
    server.restart();
    server.wait_for_count(&orders, 3, Duration::from_secs(20)).await;
    server.wait_for_count(&payments, 1, Duration::from_secs(20)).await;
    let events = server.get_json(&format!("/api/pipelines/{}/events?limit=10", payments.id)).await;
    assert_eq!(events["events"][0]["id"], "zahlung-é-1", "{events}");
    assert_eq!(partition_logs(&server), ["p0", "p1"]);
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["checks"]["intake_log_quarantine"]["ok"], true, "{ready}");
}

/// The frames of a closed segment: (offset, whole frame length).
fn frames_of(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[offset..offset + 4].try_into().unwrap()) as usize;
        frames.push((offset, 8 + len));
        offset += 8 + len;
    }
    frames
}

#[tokio::test]
async fn damaged_log_data_is_kept_aside_and_reported_and_the_rest_is_stored() {
    let mut server =
        TestServer::start(&[("DASH_FLUSH_INTERVAL", "1h"), ("DASH_MAX_BATCH", "100000"), ("DASH_PARTITIONS", "1")])
            .await;
    let p = server.create_pipeline("damaged").await;
    for i in 0..10 {
        assert_eq!(server.post_json(&p, &format!("d{i}"), "{}").await.status(), 202);
    }
    server.kill9();

    // One frame damaged in the middle, the last one at the tail; then a frame of a record
    // version this release does not know (written by a newer one, say).
    let log_dir = server.data_dir().join("intake/p0");
    let segment_path = log_dir.join("00000000000000000000.log");
    let mut segment = std::fs::read(&segment_path).unwrap();
    let frames = frames_of(&segment);
    assert_eq!(frames.len(), 10);
    let (mid, mid_len) = frames[4];
    let (last, last_len) = frames[9];
    segment[mid + 12] ^= 0x55;
    segment[last + 12] ^= 0x55;
    std::fs::write(&segment_path, &segment).unwrap();

    server.set_env("DASH_FLUSH_INTERVAL", "100ms");
    server.restart();
    server.wait_for_count(&p, 8, Duration::from_secs(20)).await;
    let log = server.log();
    assert!(log.contains("acknowledged data failed its checksum"), "{log}");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("dash_intake_log_damaged_bytes_total {}", mid_len + last_len)), "{metrics}");
    assert!(metrics.contains("dash_intake_log_corrupt_total 2"), "{metrics}");
    let (ids, _) = server.stored_events(&p.id).await;
    let ids: HashSet<String> = ids.into_iter().map(|(id, _)| id).collect();
    assert!(!ids.contains("d4") && !ids.contains("d9") && ids.len() == 8, "{ids:?}");

    // Degraded until an operator has looked and removed what was kept.
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["intake_log_quarantine"]["files"], 2, "{ready}");
    let quarantine = server.data_dir().join("intake/quarantine");
    // One copy per damaged stretch: the tail's, taken before the cut, is the segment as found.
    let kept = |at: usize| quarantine.join(format!("p0-00000000000000000000-at-{at:020}.log"));
    assert_eq!(std::fs::read(kept(last)).unwrap(), segment, "the damaged segment is kept as found");
    assert_eq!(std::fs::read(kept(mid)).unwrap(), segment[..last], "and again when the middle is reached");
    let note = std::fs::read_to_string(kept(mid).with_extension("damage")).unwrap();
    assert_eq!(note.lines().count(), 1, "{note}");
    assert!(note.starts_with(&format!("damaged position={mid} bytes={mid_len} ")), "{note}");
    // A later write goes on as usual.
    assert_eq!(server.post_json(&p, "after", "{}").await.status(), 202);
    server.wait_for_count(&p, 9, Duration::from_secs(20)).await;
    server.kill9();

    // A frame whose checksum holds but whose record version is unknown: kept aside too.
    let runtime_log = dash_intake_log::open(
        &log_dir,
        dash_intake_log::LogOptions {
            segment_bytes: 64 << 20,
            quarantine: dash_intake_log::Quarantine::new(&quarantine),
        },
    )
    .unwrap();
    runtime_log.appender.append(vec![0x00, 0x09, 1, 2, 3]).await.unwrap();
    drop(runtime_log.appender);
    tokio::task::spawn_blocking(move || runtime_log.writer.join()).await.unwrap();
    std::fs::remove_dir_all(&quarantine).unwrap();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = server.get_json("/ready").await;
        if ready["checks"]["intake_log_quarantine"]["files"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the unreadable frame was not kept aside: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("cannot be read by this release"));
    std::fs::remove_dir_all(&quarantine).unwrap();
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["checks"]["intake_log_quarantine"]["ok"], true, "cleared by the operator: {ready}");
    assert_eq!(ready["status"], "healthy", "{ready}");
}

/// The events a 429 said were waiting.
fn waiting_in(message: &str) -> i64 {
    let after = message.split("backlog is full (").nth(1).unwrap_or_else(|| panic!("{message}"));
    after.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_backlog_bound_holds_under_concurrent_large_requests() {
    let server = TestServer::start(&[
        ("DASH_FLUSH_INTERVAL", "1h"),
        ("DASH_MAX_BATCH", "100000"),
        ("DASH_PARTITIONS", "1"),
        ("DASH_MAX_BACKLOG", "500"),
    ])
    .await;
    let p = server.create_pipeline("bounded").await;
    let body = |r: usize| {
        let events: Vec<String> = (0..100).map(|i| format!(r#"{{"id":"r{r}-{i}"}}"#)).collect();
        format!("[{}]", events.join(","))
    };
    let requests = (0..24).map(|r| {
        let (server, body) = (&server, body(r));
        let p = &p;
        async move {
            let response = server.post_json(p, &format!("req-{r}"), &body).await;
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert!(accepted >= 5, "{answers:?}");
    assert!(accepted * 100 <= 500, "{accepted} requests of 100 events admitted past a bound of 500");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 429, "{body}");
        assert!(waiting_in(body) <= 500, "{body}");
    }
    let ready = server.get_json("/ready").await;
    assert!(ready["checks"]["intake_log"]["backlog"][0].as_i64().unwrap() <= 500, "{ready}");
}

#[tokio::test]
async fn while_the_store_is_down_the_log_absorbs_past_the_backlog_and_the_bound_still_holds() {
    let server =
        TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DASH_PARTITIONS", "1"), ("DASH_MAX_BACKLOG", "50")])
            .await;
    if server.is_postgres() {
        return; // the PostgreSQL outage is the cut-proxy tests' business
    }
    let p = server.create_pipeline("absorbing").await;
    let url = format!("sqlite://{}/dash.db", server.data_dir().display());
    let mut locker = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();
    assert_eq!(server.post_json(&p, "first", "{}").await.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("flush failed; retrying") {
        assert!(Instant::now() < deadline, "the store never looked down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in 0..10 {
        let events: Vec<String> = (0..20).map(|i| format!(r#"{{"id":"s{r}-{i}"}}"#)).collect();
        let response = server.post_json(&p, &format!("spool-{r}"), &format!("[{}]", events.join(","))).await;
        assert_eq!(response.status(), 202, "the log absorbs while the store is down");
    }
    let ready = server.get_json("/ready").await;
    let backlog = ready["checks"]["intake_log"]["backlog"][0].as_i64().unwrap();
    assert!(backlog <= 50, "the backlog counts what will flush soon, within its bound: {ready}");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    server.wait_for_count(&p, 201, Duration::from_secs(30)).await;
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["checks"]["intake_log"]["backlog"][0], 0, "{ready}");
}

#[tokio::test]
async fn a_dead_ingestor_costs_one_warning_per_period_not_one_per_request() {
    let dns = dash_discovery::testing::DnsServer::start().await.unwrap();
    // Listed, but nothing listens there: every forward fails.
    dns.set("ingestor.dash.internal", vec!["127.0.0.1".parse().unwrap()]);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let resolver = dns.addr().to_string();
    let nats = crate::support::NatsServer::start();
    let web = TestServer::start(&[
        ("APP_ROLE", "web"),
        ("NATS_URL", nats.url.as_str()),
        ("DNS_RESOLVER", resolver.as_str()),
        ("DNS_INGESTOR_QUERY", "ingestor.dash.internal"),
        ("DASH_INGESTOR_PORT", dead_port.as_str()),
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while web.get_json("/ready").await["checks"]["ingestors"]["known"] != 1 {
        assert!(Instant::now() < deadline, "the listed ingestor was never known");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..40 {
        let response = web
            .client
            .post(web.url("/webhooks/orders"))
            .header("content-type", "application/json")
            .header("webhook-id", format!("m{i}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    let metrics = web.client.get(web.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dash_edge_attempt_failures_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap());
    assert!(failures >= 40.0, "every failed forward is counted: {failures}");
    let warned = web.log().matches("ingestor did not answer").count();
    assert_eq!(warned, 1, "{}", web.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_busy_on_every_partition_starve_neither_readiness_nor_job_heartbeats() {
    let Some(admin) = crate::support::postgres_admin() else { return };
    let database = crate::support::fresh_postgres(&admin).await;
    // Eight partitions want 24 writer connections: more than the single pool of 16 there was.
    let server = TestServer::start(&[
        ("DATABASE_URL", database.as_str()),
        ("DASH_PARTITIONS", "8"),
        ("DASH_FLUSH_INTERVAL", "20ms"),
        ("DASH_MAX_BATCH", "5"),
    ])
    .await;
    let mut pipelines = Vec::new();
    for i in 0..24 {
        pipelines.push(server.create_pipeline(&format!("busy {i}")).await);
    }
    let partitions: HashSet<usize> = pipelines.iter().map(|p| dash_ingest::partition_for(&p.id, 8)).collect();
    assert_eq!(partitions.len(), 8, "every partition has work");

    // Every batch's commit updates its pipeline's row: held here, each batch holds its
    // connection (waiting for the lock, or written and waiting for its turn to commit), and
    // every partition fills its window of batches in flight.
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&database).await.unwrap();
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE pipelines IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let sends = pipelines.iter().map(|p| async {
        for k in 0..20 {
            assert_eq!(server.post_json(p, &format!("b{k}"), "{}").await.status(), 202);
        }
    });
    futures_util::future::join_all(sends).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND (wait_event_type = 'Lock' OR state = 'idle in transaction')",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if waiting >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "writers never all waited: {waiting}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Readiness answers at once, and the job worker keeps beating.
    let started = Instant::now();
    let ready = server.get_json("/ready").await;
    assert!(started.elapsed() < Duration::from_secs(2), "readiness took {:?}", started.elapsed());
    assert_eq!(ready["checks"]["database"]["ok"], true, "{ready}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let silent: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM now() - max(last_seen))::float8 FROM apalis.workers")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(silent < 3.0, "the job worker's heartbeat stopped for {silent} s");

    blocker.rollback().await.unwrap();
    for p in &pipelines {
        server.wait_for_count(p, 20, Duration::from_secs(30)).await;
    }
    db.close().await;
    drop(server);
    dash_store::testing::drop_database(&admin, &database).await.ok();
}

async fn wait_for_status(server: &TestServer, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = server.get_json("/ready").await;
        if ready["status"] == status {
            return ready;
        }
        assert!(Instant::now() < deadline, "never {status}: {ready}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Multi-threaded: the proxy must keep serving while the test blocks on dashd's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_works_without_the_database_and_catches_up_when_it_answers() {
    let Some(admin) = crate::support::postgres_admin() else { return };
    // A fresh database that dashd reaches only through a proxy this test cuts and restores.
    let (proxy, url) = dash_store::testing::TcpProxy::in_front_of(&crate::support::fresh_postgres(&admin).await).await;

    // The very first start, the database unreachable: the node serves, degraded.
    proxy.cut();
    let mut server = TestServer::start(&[("DATABASE_URL", url.as_str()), ("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let ready = server.get_json("/ready").await;
    assert_eq!((&ready["status"], &ready["checks"]["database"]["ok"]), (&"degraded".into(), &false.into()), "{ready}");
    // It answers it cannot know an unknown pipeline yet, rather than 404 or a hang.
    let unknown = server
        .client
        .post(server.url("/webhooks/nobody"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 503);
    proxy.restore();
    wait_for_status(&server, "healthy").await;
    assert!(server.log().contains("database reached and migrated"), "{}", server.log());
    let p = server.create_pipeline("cold start").await;
    assert_eq!(server.post_json(&p, "first", "{}").await.status(), 202);
    server.wait_for_count(&p, 1, Duration::from_secs(20)).await;

    // The directory's local copy holds the secrets, for the owner only.
    let copy = server.data_dir().join("pipelines.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&copy).is_ok_and(|text| text.contains(&p.id)) {
        assert!(Instant::now() < deadline, "the directory's local copy never named the pipeline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&copy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A restart during an outage: webhooks are acknowledged from the local copy, pages say the
    // database is unavailable and retry by themselves, nothing is lost.
    server.kill9();
    proxy.cut();
    server.restart();
    let mut acked = HashSet::from(["first".to_owned()]);
    for i in 0..10 {
        let response = server.post_json(&p, &format!("down-{i}"), "{}").await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        acked.insert(format!("down-{i}"));
    }
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 503);
    let page = page.text().await.unwrap();
    assert!(page.contains("Database unavailable") && page.contains(r#"http-equiv="refresh""#), "{page}");
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    let jobs_before = server.log().matches("background jobs started").count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.log().matches("background jobs started").count(), jobs_before, "no jobs without the database");

    proxy.restore();
    server.wait_for_count(&p, 11, Duration::from_secs(30)).await;
    wait_for_status(&server, "healthy").await;
    let (rows, count) = server.stored_events(&p.id).await;
    assert_eq!(count, 11);
    assert_eq!(rows.into_iter().map(|(id, copies)| (assert_eq!(copies, 1), id).1).collect::<HashSet<_>>(), acked);
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    // The jobs started once the database answered, not before.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log().matches("background jobs started").count() < jobs_before + 1 {
        assert!(Instant::now() < deadline, "jobs never started after the outage: {}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.sigterm().success());
}

// Multi-threaded: the proxy must keep serving while the test blocks on dashd's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_made_just_before_a_stop_is_known_at_a_start_without_the_database() {
    let Some(admin) = crate::support::postgres_admin() else { return };
    let (proxy, url) = dash_store::testing::TcpProxy::in_front_of(&crate::support::fresh_postgres(&admin).await).await;
    let mut server = TestServer::start(&[("DATABASE_URL", url.as_str()), ("DASH_FLUSH_INTERVAL", "100ms")]).await;
    wait_for_status(&server, "healthy").await;
    let p = server.create_pipeline("made late").await;
    assert_eq!(server.post_json(&p, "before", "{}").await.status(), 202);
    // Killed at once, long before a directory refresh, then started while the database is away.
    server.kill9();
    proxy.cut();
    server.restart();
    for i in 0..5 {
        let response = server.post_json(&p, &format!("down-{i}"), "{}").await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    // A pipeline the node does not know is unknown while the store cannot be asked: 503 each
    // time, also right after a refresh that failed, never 404 (a provider may disable a webhook
    // that gets 404s).
    for _ in 0..6 {
        let unknown = server
            .client
            .post(server.url("/webhooks/not-made-yet"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(unknown.headers().contains_key("retry-after"));
        crate::support::assert_error(unknown, 503, "store_unavailable").await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    proxy.restore();
    server.wait_for_count(&p, 6, Duration::from_secs(30)).await;
    let unknown = server.client.post(server.url("/webhooks/not-made-yet")).header("content-type", "application/json");
    crate::support::assert_error(unknown.body("{}").send().await.unwrap(), 404, "pipeline_not_found").await;
}
