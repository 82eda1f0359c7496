//! Buffer actors flush on size and on time.

use std::time::{Duration, Instant};

use crate::support::TestServer;

#[tokio::test]
async fn a_full_batch_flushes_at_once_and_the_rest_waits() {
    let server =
        TestServer::start(&[("DASH_MAX_BATCH", "10"), ("DASH_FLUSH_INTERVAL", "1h"), ("DASH_PARTITIONS", "1")]).await;
    let p = server.create_pipeline("by size").await;
    let body: String = (0..25).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    assert_eq!(server.post_signed(&p, "r1", "application/x-ndjson", &body).await.status(), 202);
    server.wait_for_count(&p, 20, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = server.get_json(&format!("/api/pipelines/{}", p.id)).await;
    assert_eq!(stats["stats"]["count"], 20, "the last 5 wait for the timer: {stats}");
    assert_eq!(stats["stats"]["seq"], 2, "two batches of 10: {stats}");
}

#[tokio::test]
async fn a_partial_batch_flushes_after_the_interval() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "400ms"), ("DASH_PARTITIONS", "1")]).await;
    let p = server.create_pipeline("by time").await;
    let sent = Instant::now();
    for i in 0..3 {
        assert_eq!(server.post_json(&p, &format!("t{i}"), "{}").await.status(), 202);
    }
    server.wait_for_count(&p, 3, Duration::from_secs(10)).await;
    assert!(sent.elapsed() >= Duration::from_millis(350), "flushed before the interval: {:?}", sent.elapsed());
    let stats = server.get_json(&format!("/api/pipelines/{}", p.id)).await;
    assert_eq!(stats["stats"]["seq"], 1, "one timed batch: {stats}");
}

/// Batches written at once (on PostgreSQL) still commit in log order, one `seq` each, and keep
/// every key once, including keys repeated across neighbouring batches: those wait for each
/// other, and a batch holding a stored key goes the slow way.
#[tokio::test]
async fn batches_in_flight_commit_in_order_and_store_each_key_once() {
    let server =
        TestServer::start(&[("DASH_MAX_BATCH", "10"), ("DASH_FLUSH_INTERVAL", "1h"), ("DASH_PARTITIONS", "1")]).await;
    let p = server.create_pipeline("in flight").await;
    // 20 requests of 30 events; each repeats the previous one's last 10 ids.
    for r in 0..20 {
        let body: String = (0..30).map(|j| format!("{{\"id\":\"e{}\",\"r\":{r}}}\n", r * 20 + j)).collect();
        let response = server.post_signed(&p, &format!("r{r}"), "application/x-ndjson", &body).await;
        assert_eq!(response.status(), 202);
    }
    server.wait_for_count(&p, 410, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.get_json(&format!("/api/pipelines/{}", p.id)).await;
        if stats["stats"]["seq"] == 60 {
            assert_eq!(stats["stats"]["count"], 410, "{stats}");
            assert_eq!(stats["stats"]["duplicates"], 190, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "60 batches of 10 never committed: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
