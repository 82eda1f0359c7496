//! Per-pipeline retention, end to end: set by the admin API and the CLI, applied by the
//! maintenance job of a running dashd.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, run_dashd};

async fn patch(server: &TestServer, id: &str, body: &str) -> reqwest::Response {
    server
        .client
        .patch(server.url(&format!("/api/pipelines/{id}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn stored_ids(server: &TestServer, id: &str) -> Vec<String> {
    let mut ids: Vec<String> = server.stored_events(id).await.0.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pipeline_drops_what_is_past_its_own_retention() {
    let server = TestServer::start(&[("DASH_MAINTENANCE_EVERY", "1s"), ("DASH_FLUSH_INTERVAL", "50ms")]).await;
    let short = server.create_pipeline("short").await;
    let long = server.create_pipeline("long").await;

    // The admin API checks what it is given and says why it refuses.
    for (body, status, code) in [
        (r#"{"retention": "5m"}"#, 422, "invalid_retention"),
        (r#"{"retention": "forever"}"#, 422, "invalid_retention"),
        (r#"{"retention": 3600}"#, 422, "invalid_retention"),
        (r#"{"name": "renamed"}"#, 422, "invalid_request"),
        (r#"["retention"]"#, 422, "invalid_request"),
        (r#"{"retention": "#, 400, "malformed_json"),
    ] {
        assert_error(patch(&server, &short.id, body).await, status, code).await;
    }
    assert_error(patch(&server, "nope", r#"{"retention": "1h"}"#).await, 404, "pipeline_not_found").await;

    let response = patch(&server, &short.id, r#"{"retention": "1h"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["retention"], "1h");
    let shown = server.get_json(&format!("/api/pipelines/{}", long.id)).await;
    assert_eq!(shown["retention"], Value::Null, "the node default: {shown}");
    let page = server.client.get(server.url(&format!("/pipelines/{}", short.id))).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("Events kept for") && page.contains(">1h<"), "{page}");

    // Two events each, one from two hours ago, one fresh.
    let two_hours_ago = dash_domain::now_ms() - 2 * 3_600_000;
    for pipeline in [&short, &long] {
        let body = json!([
            { "id": "old", "timestamp": two_hours_ago },
            { "id": "new" },
        ]);
        let response = server.post_json(pipeline, &format!("{}-batch", pipeline.id), &body.to_string()).await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        server.wait_for_count(pipeline, 2, Duration::from_secs(10)).await;
    }

    // Maintenance runs every second: the short pipeline loses its old event, the other keeps it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_ids(&server, &short.id).await != ["new"] {
        assert!(Instant::now() < deadline, "the old event stayed; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_ids(&server, &long.id).await, ["new", "old"]);
    let events = server.get_json(&format!("/api/pipelines/{}/events", short.id)).await;
    assert_eq!(events["events"].as_array().map(Vec::len), Some(1), "{events}");

    let openapi = server.get_json("/api/openapi.json").await;
    assert!(openapi["paths"]["/api/pipelines/{id}"]["patch"].is_object(), "PATCH is documented");

    // Back to the default.
    let response = patch(&server, &short.id, r#"{"retention": null}"#).await;
    assert_eq!(response.json::<Value>().await.unwrap()["retention"], Value::Null);
}

#[tokio::test]
async fn pipelines_are_created_with_a_retention_and_the_cli_changes_it() {
    if crate::support::postgres_admin().is_some() {
        return; // a CLI test: the SQLite pass covers it
    }
    let server = TestServer::start(&[]).await;
    let created = server.client.post(server.url("/api/pipelines")).json(&json!({ "name": "a", "retention": "3days" }));
    let created: Value = created.send().await.unwrap().json().await.unwrap();
    assert_eq!(created["retention"], "3days", "{created}");
    let refused = server.client.post(server.url("/api/pipelines")).json(&json!({ "name": "b", "retention": "1s" }));
    assert_error(refused.send().await.unwrap(), 422, "invalid_retention").await;
    assert_eq!(server.get_json("/api/pipelines/b").await["error"]["code"], "pipeline_not_found", "nothing created");

    let run = |args: &[&str]| {
        let output = run_dashd(server.dir.path(), &server.env(), args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, text) = run(&["pipeline", "retention", "a"]);
    assert!(ok && text.contains("a: events kept 3days"), "{text}");
    let (ok, text) = run(&["pipeline", "retention", "a", "12h"]);
    assert!(ok && text.contains("events kept 12h"), "{text}");
    assert_eq!(server.get_json("/api/pipelines/a").await["retention"], "12h");
    let (ok, text) = run(&["pipeline", "retention", "a", "--default"]);
    assert!(ok && text.contains("events kept 30days (the node default"), "{text}");
    let (ok, text) = run(&["pipeline", "retention", "a", "1m"]);
    assert!(!ok && text.contains("between 1h and 10 years"), "{text}");
    let (ok, text) = run(&["pipeline", "retention", "missing", "1d"]);
    assert!(!ok && text.contains("no pipeline"), "{text}");
}
