//! Intake: every status code of the contract, authentication, identity, dedupe, all-or-nothing.

use std::time::Duration;

use serde_json::Value;

use crate::support::{TestServer, assert_error, now_secs};

const FAST_FLUSH: &[(&str, &str)] = &[("DASH_FLUSH_INTERVAL", "100ms")];

#[tokio::test]
async fn every_status_code_of_the_contract() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DASH_MAX_BODY", "2KiB")]).await;
    let p = server.create_pipeline("status codes").await;
    let url = server.url(&format!("/webhooks/{}", p.id));

    // 202
    let ok = server.post_json(&p, "m1", r#"{"id":"a","n":1}"#).await;
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.json::<Value>().await.unwrap()["accepted"], 1);

    // 400: malformed JSON names line and column
    let bad = server.post_json(&p, "m2", "{\"n\":\n  1,,}").await;
    let body = assert_error(bad, 400, "malformed_json").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("line 2"), "{body}");
    let bad_ndjson = server.post_signed(&p, "m2b", "application/x-ndjson", "{\"n\":1}\n{oops}\n").await;
    let body = assert_error(bad_ndjson, 400, "malformed_json").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("line 2"), "{body}");

    // 401: nothing, a wrong signature, a stale timestamp, a wrong token
    let none = server.client.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_error(none, 401, "missing_credentials").await;
    let forged = server
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("webhook-id", "m3")
        .header("webhook-timestamp", now_secs().to_string())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(forged, 401, "invalid_signature").await;
    let stale = server.post_signed_at(&p, "m4", now_secs() - 600, "application/json", "{}").await;
    assert_error(stale, 401, "stale_timestamp").await;
    let wrong_token = server
        .client
        .post(&url)
        .header("content-type", "application/json")
        .bearer_auth("dash_not_it")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(wrong_token, 401, "invalid_token").await;

    // 404
    let missing = server
        .client
        .post(server.url("/webhooks/no-such-pipeline"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "pipeline_not_found").await;

    // 413: declared and streamed (chunked, no Content-Length)
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    assert_error(server.post_json(&p, "m5", &big).await, 413, "body_too_large").await;
    let (status, body) = raw_chunked_post(&server.base, &format!("/webhooks/{}", p.id), &p.token, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");

    // 415
    let text = server.post_signed(&p, "m6", "text/plain", "{}").await;
    assert_error(text, 415, "unsupported_media_type").await;

    // 422: not an object, a bad timestamp; the message names the event index
    let body = assert_error(server.post_json(&p, "m7", r#"[{"a":1}, 42]"#).await, 422, "invalid_event").await;
    assert!(body["error"]["message"].as_str().unwrap().starts_with("event 1"), "{body}");
    let bad_ts = server.post_json(&p, "m8", r#"{"timestamp":"last tuesday"}"#).await;
    assert_error(bad_ts, 422, "invalid_event").await;

    // Everything rejected left no trace: only the first event was stored.
    server.wait_for_count(&p, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.count(&p).await, 1);
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"dash_requests_rejected_total{reason="invalid_signature"} 1"#), "{metrics}");
}

/// A POST with `Transfer-Encoding: chunked` (no Content-Length), over a plain socket.
async fn raw_chunked_post(base: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(1000) {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test]
async fn backlog_over_the_bound_gets_429_and_a_full_log_503() {
    // Flushing is held back (long interval, huge batch), so admitted events pile up.
    let server = TestServer::start(&[
        ("DASH_FLUSH_INTERVAL", "1h"),
        ("DASH_MAX_BATCH", "100000"),
        ("DASH_MAX_BACKLOG", "5"),
        ("DASH_PARTITIONS", "1"),
        ("DASH_SPOOL_MAX", "64KiB"),
    ])
    .await;
    let p = server.create_pipeline("bounded").await;
    for i in 0..5 {
        assert_eq!(server.post_json(&p, &format!("b{i}"), "{}").await.status(), 202);
    }
    let over = server.post_json(&p, "b5", "{}").await;
    assert_eq!(over.headers().get("retry-after").unwrap(), "1");
    assert_error(over, 429, "backlog_full").await;
    // Room is asked before the body is parsed: past the bound even a malformed body costs no
    // parse and gets the 429. Credentials still come first.
    assert_error(server.post_json(&p, "b6", "{not json").await, 429, "backlog_full").await;
    let forged = server
        .client
        .post(server.url(&format!("/webhooks/{}", p.id)))
        .header("content-type", "application/json")
        .bearer_auth("not-the-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // One large body still fits the log; past the spool bound the answer is 503.
    let other = TestServer::start(&[
        ("DASH_FLUSH_INTERVAL", "1h"),
        ("DASH_MAX_BATCH", "100000"),
        ("DASH_PARTITIONS", "1"),
        ("DASH_SPOOL_MAX", "64KiB"),
    ])
    .await;
    let q = other.create_pipeline("spool").await;
    let line = format!("{{\"pad\":\"{}\"}}\n", "y".repeat(200));
    let body = line.repeat(100); // ~24 KiB in the log: two fit under 64 KiB, three do not
    assert_eq!(other.post_signed(&q, "s1", "application/x-ndjson", &body).await.status(), 202);
    assert_eq!(other.post_signed(&q, "s2", "application/x-ndjson", &body).await.status(), 202);
    let full = other.post_signed(&q, "s3", "application/x-ndjson", &body).await;
    assert!(full.headers().get("retry-after").is_some());
    assert_error(full, 503, "intake_log_full").await;
    let ready = other.client.get(other.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn retries_are_stored_once_and_counted_as_duplicates() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("dedupe").await;
    // The same delivery three times (a sender retrying), plus an id given in the body.
    for _ in 0..3 {
        assert_eq!(server.post_json(&p, "msg_1", r#"{"n":1}"#).await.status(), 202);
    }
    assert_eq!(server.post_json(&p, "msg_2", r#"{"id":"evt_9"}"#).await.status(), 202);
    assert_eq!(server.post_json(&p, "msg_3", r#"{"id":"evt_9"}"#).await.status(), 202);
    server.wait_for_count(&p, 2, Duration::from_secs(10)).await;
    // A retry long after the first copy was stored is absorbed too.
    assert_eq!(server.post_json(&p, "msg_1", r#"{"n":1}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = server.get_json(&format!("/api/pipelines/{}", p.id)).await;
    assert_eq!(stats["stats"]["count"], 2, "{stats}");
    assert_eq!(stats["stats"]["duplicates"], 4, "{stats}");
    let events = server.get_json(&format!("/api/pipelines/{}/events?limit=10", p.id)).await;
    let ids: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"msg_1") && ids.contains(&"evt_9"), "{ids:?}");
}

#[tokio::test]
async fn arrays_and_ndjson_are_split_with_indexed_ids_all_or_nothing() {
    // One event is dated 2024: a retention long enough that the startup maintenance, run
    // whenever a loaded machine gets to it, does not delete it before it is read back.
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DASH_RETENTION", "3650days")]).await;
    let p = server.create_pipeline("batches").await;
    let array = r#"[{"a":1},{"id":"own"},{"a":3,"timestamp":"2024-01-02T03:04:05Z"}]"#;
    let r = server.post_json(&p, "req-a", array).await;
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 3);
    let ndjson = "{\"b\":1}\n\n{\"b\":2}\r\n";
    let r = server.post_signed(&p, "req-n", "application/x-ndjson", ndjson).await;
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 2);
    // The retry of the whole array adds nothing.
    assert_eq!(server.post_json(&p, "req-a", array).await.status(), 202);
    // One bad event rejects its whole request.
    let mixed = r#"[{"id":"x1"},{"id":"x2"},{"timestamp":true}]"#;
    assert_error(server.post_json(&p, "req-bad", mixed).await, 422, "invalid_event").await;

    server.wait_for_count(&p, 5, Duration::from_secs(10)).await;
    let events = server.get_json(&format!("/api/pipelines/{}/events?limit=50", p.id)).await;
    let mut ids: Vec<String> =
        events["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["own", "req-a:0", "req-a:2", "req-n:0", "req-n:1"]);
    let dated = events["events"].as_array().unwrap().iter().find(|e| e["id"] == "req-a:2").unwrap();
    assert_eq!(dated["time"], "2024-01-02T03:04:05.000Z");
    assert_eq!(dated["payload"]["a"], 3);
    // The rollup saw the event at its own time.
    let series = server
        .get_json(&format!(
            "/api/pipelines/{}/series?from=2024-01-02T03:00:00Z&to=2024-01-02T04:00:00Z&bucket=5m",
            p.id
        ))
        .await;
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 12);
    assert_eq!(points[0]["count"], 1, "{series}");
}

#[tokio::test]
async fn bearer_tokens_rotation_and_admin_token() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DASH_ADMIN_TOKEN", "s3cret")]).await;
    let anonymous = server.client.get(server.url("/api/pipelines")).send().await.unwrap();
    assert_error(anonymous, 401, "admin_token_required").await;
    let created = server
        .client
        .post(server.url("/api/pipelines"))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"name": "Tokens"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    let duplicate = server
        .client
        .post(server.url("/api/pipelines"))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"name": "tokens"}))
        .send()
        .await
        .unwrap();
    assert_error(duplicate, 409, "pipeline_exists").await;
    let bad = server.client.post(server.url("/api/pipelines")).bearer_auth("s3cret").body("{").send().await.unwrap();
    assert_error(bad, 400, "malformed_json").await;

    let sent = server
        .client
        .post(server.url("/webhooks/tokens"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", "k1")
        .body(r#"{"via":"token"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let stats = server.client.get(server.url("/api/pipelines/tokens")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(stats.status(), 200);
    // Health stays open for probes.
    assert_eq!(server.client.get(server.url("/health")).send().await.unwrap().status(), 200);
}
