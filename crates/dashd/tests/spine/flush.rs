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
