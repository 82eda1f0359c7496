//! Hostile senders and pages, driven against the real binary on both stores: payloads a store
//! cannot hold, a store that refuses events anyway, requests that would make the node grow or
//! panic, ids with NUL, timestamps at the ends of i64, redirects off-site, idle sockets.

use std::time::{Duration, Instant};

use reqwest::redirect::Policy;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestServer, assert_error, now_secs};

const FAST_FLUSH: &[(&str, &str)] = &[("DASH_FLUSH_INTERVAL", "100ms")];

/// `{"id":…,"a":[[[…1…]]]}` nested `levels` deep in all (the event object is level 1).
fn nested(id: &str, levels: usize) -> String {
    format!("{{\"id\":\"{id}\",\"a\":{}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1))
}

#[tokio::test]
async fn payloads_no_store_can_hold_are_refused_at_the_door_and_the_rest_reads_back_verbatim() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("hostile payloads").await;

    let refused = [
        ("deep", nested("deep", 100_000)),
        ("deep65", nested("deep65", 65)),
        ("nul", r#"{"id":"nul","s":"a\u0000b"}"#.to_owned()),
        ("nulkey", r#"{"id":"nulkey","a\u0000":1}"#.to_owned()),
        ("high", r#"{"id":"high","s":"\ud800"}"#.to_owned()),
        ("low", r#"{"id":"low","s":"x\udc00"}"#.to_owned()),
        ("inf", r#"{"id":"inf","n":1e309}"#.to_owned()),
        ("digits", format!("{{\"id\":\"digits\",\"n\":{}}}", "7".repeat(5000))),
    ];
    for (id, body) in &refused {
        let response = server.post_json(&p, &format!("m-{id}"), body).await;
        let error = assert_error(response, 422, "invalid_event").await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{id:?}")), "the 422 names the event: {message}");
    }
    // In an NDJSON batch one such event refuses the whole request (all-or-nothing).
    let batch = format!("{{\"id\":\"fine\"}}\n{}\n", refused[2].1);
    let response = server.post_signed(&p, "m-batch", "application/x-ndjson", &batch).await;
    assert_error(response, 422, "invalid_event").await;

    // What the bounds allow is stored and read back exactly as sent.
    let kept = [
        nested("deep64", 64),
        r#"{"id":"pair","s":"\ud83d\ude00 \u00e9","e":"\\u0000 is text here"}"#.to_owned(),
        format!(
            "{{\"id\":\"long\",\"n\":{},\"x\":18446744073709551617,\"f\":1.7976931348623157e308}}",
            "9".repeat(300)
        ),
    ];
    for (i, body) in kept.iter().enumerate() {
        let response = server.post_json(&p, &format!("k{i}"), body).await;
        assert_eq!(response.status(), 202, "{body:.80}");
    }
    server.wait_for_count(&p, 3, Duration::from_secs(10)).await;
    let text = server
        .client
        .get(server.url(&format!("/api/pipelines/{}/events?limit=10", p.id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for body in &kept {
        assert!(text.contains(body.as_str()), "payload read back verbatim: {body:.80}");
    }
    let page = server.client.get(server.url(&format!("/pipelines/{}", p.id))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Installs, in the server's own database, a trigger that refuses any event whose payload holds
/// "poison" the way a store refuses data: SQLSTATE 22000 on PostgreSQL, a constraint on SQLite.
async fn poison_the_store(server: &TestServer) {
    if let Some(url) = server.database_url() {
        let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.payload::text LIKE '%poison%' THEN \
                 RAISE EXCEPTION 'poisoned payload' USING ERRCODE = 'data_exception'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .execute(&db)
        .await
        .unwrap();
        db.close().await;
        return;
    }
    let url = format!("sqlite://{}/dash.db", server.data_dir().display());
    let db = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.payload LIKE '%poison%' \
         BEGIN SELECT RAISE(ABORT, 'poisoned payload'); END;",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
}

#[tokio::test]
async fn events_the_store_refuses_are_set_aside_and_the_partition_goes_on() {
    // One partition: every pipeline shares the refused events' buffer actor.
    let mut server =
        TestServer::start(&[("DASH_FLUSH_INTERVAL", "300ms"), ("DASH_PARTITIONS", "1"), ("DASH_MAX_BATCH", "1000")])
            .await;
    let a = server.create_pipeline("poisoned").await;
    let b = server.create_pipeline("bystander").await;
    poison_the_store(&server).await;

    // One batch: 40 good events, 3 refused ones among them, and another pipeline's events.
    let mut lines = String::new();
    for i in 0..40 {
        let poison = if matches!(i, 3 | 17 | 38) { ",\"note\":\"poison\"" } else { "" };
        lines.push_str(&format!("{{\"id\":\"a{i}\"{poison}}}\n"));
    }
    assert_eq!(server.post_signed(&a, "batch-a", "application/x-ndjson", &lines).await.status(), 202);
    for i in 0..10 {
        assert_eq!(server.post_json(&b, &format!("b{i}"), &format!("{{\"id\":\"b{i}\"}}")).await.status(), 202);
    }
    server.wait_for_count(&a, 37, Duration::from_secs(20)).await;
    server.wait_for_count(&b, 10, Duration::from_secs(20)).await;

    let pipeline = server.get_json(&format!("/api/pipelines/{}", a.id)).await;
    assert_eq!(pipeline["set_aside"], 3, "{pipeline}");
    let (stored, _) = server.stored_events(&a.id).await;
    assert!(stored.iter().all(|(id, copies)| *copies == 1 && !["a3", "a17", "a38"].contains(&id.as_str())));
    let ready = server.get_json("/ready").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], true, "the database itself is fine: {ready}");
    assert_eq!(ready["checks"]["events_set_aside"]["events"], 3, "{ready}");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dash_events_set_aside_total 3"), "{metrics}");
    let page = server.client.get(server.url(&format!("/pipelines/{}", a.id))).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("Set aside"), "the pipeline page shows them");

    // The partition goes on: a later event is stored; a replay after kill -9 sets nothing aside twice.
    assert_eq!(server.post_json(&a, "later", r#"{"id":"later"}"#).await.status(), 202);
    server.wait_for_count(&a, 38, Duration::from_secs(20)).await;
    server.kill9();
    server.restart();
    assert_eq!(server.post_json(&b, "after", r#"{"id":"after"}"#).await.status(), 202);
    server.wait_for_count(&b, 11, Duration::from_secs(20)).await;
    let pipeline = server.get_json(&format!("/api/pipelines/{}", a.id)).await;
    assert_eq!(pipeline["set_aside"], 3, "{pipeline}");
    assert_eq!(pipeline["count"], 38, "{pipeline}");
}

#[tokio::test]
async fn series_ranges_past_the_bounds_are_refused_at_once() {
    let server = TestServer::start(&[]).await;
    let p = server.create_pipeline("ranges").await;
    let series = |query: &str| server.client.get(server.url(&format!("/api/pipelines/{}/series?{query}", p.id))).send();
    let hostile = [
        "from=9223372036854700000&to=9223372036854775807",
        "from=-9000000000000000000&to=9000000000000000000",
        "from=-9223372036854775808&to=9223372036854775807",
        "from=0&to=253402300799999&bucket=1m",
        "from=0&to=60000&bucket=99999999999999999y",
        "from=0&to=60000&bucket=0m",
        "from=0&to=60000&bucket=400days",
        "from=1970-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    ];
    for query in hostile {
        let started = Instant::now();
        let response = series(query).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "{query}: answered at once");
        assert_error(response, 400, "invalid_query").await;
    }
    let ok = series("from=0&to=600000000&bucket=1h").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["points"].as_array().unwrap().len(), 167);
    let limit = server.client.get(server.url(&format!("/api/pipelines/{}/events?limit=99999999999", p.id)));
    assert_error(limit.send().await.unwrap(), 400, "invalid_query").await;
}

#[tokio::test]
async fn ids_and_names_with_nul_get_the_same_4xx_on_every_store() {
    let server = TestServer::start(&[]).await;
    server.create_pipeline("real").await;
    for path in
        ["/api/pipelines/a%00b", "/api/pipelines/a%00b/events", "/api/pipelines/a%00b/series", "/api/pipelines/real%00"]
    {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_error(response, 404, "pipeline_not_found").await;
    }
    let put = server.client.put(server.url("/api/pipelines/a%00b/source")).json(&serde_json::json!({})).send();
    assert!(put.await.unwrap().status().is_client_error());
    let page = server.client.get(server.url("/pipelines/a%00b")).send().await.unwrap();
    assert_eq!(page.status(), 404);
    let webhook = server.client.post(server.url("/webhooks/a%00b")).body("{}").send().await.unwrap();
    assert_error(webhook, 404, "pipeline_not_found").await;
    for name in ["nul\u{0}name", "bell\u{7}", &"n".repeat(64)] {
        let created =
            server.client.post(server.url("/api/pipelines")).json(&serde_json::json!({ "name": name })).send();
        assert_error(created.await.unwrap(), 422, "invalid_name").await;
    }
}

#[tokio::test]
async fn a_signed_timestamp_at_the_ends_of_i64_is_stale() {
    let server = TestServer::start(&[]).await;
    let p = server.create_pipeline("clock").await;
    for ts in [now_secs().wrapping_sub(1 << 63), i64::MIN, i64::MAX, now_secs() + (1 << 62)] {
        let response = server.post_signed_at(&p, "far", ts, "application/json", "{}").await;
        assert_error(response, 401, "stale_timestamp").await;
    }
}

#[tokio::test]
async fn login_never_redirects_off_site_nor_fails_on_control_characters() {
    let server = TestServer::start(&[("DASH_ADMIN_TOKEN", "letmein")]).await;
    let client = crate::support::http_client().redirect(Policy::none()).build().unwrap();
    let hostile = [
        "/\t/evil.example/",
        "/\r\n/evil.example/",
        "/\n/evil.example",
        "\\/evil.example",
        "/\\evil.example",
        "//evil.example",
        "/%2F/evil.example",
        "https://evil.example",
        "/\u{0}",
        "/\u{1}",
        "/\u{7f}",
        "/\r",
    ];
    for next in hostile {
        let posted = client.post(server.url("/login")).form(&[("token", "letmein"), ("next", next)]).send().await;
        let posted = posted.unwrap();
        assert_eq!(posted.status(), 303, "{next:?}");
        let location = posted.headers()["location"].to_str().unwrap().to_owned();
        assert!(location == "/" || location == next, "{next:?} → {location}");
        assert!(!location.starts_with("//") && !location.contains("://"), "{next:?} → {location}");
        let form = client.get(server.url(&format!("/login?next={}", percent_encoded(next)))).send().await.unwrap();
        assert!(form.status().is_success(), "{next:?}: {}", form.status());
    }
    // Without an admin token, GET /login redirects at once: the same check, never a 5xx.
    let open = TestServer::start(&[]).await;
    for raw in ["%0A", "%0D", "%00", "%01", "%7F", "%09/evil.example", "/%09/evil.example/"] {
        let response = client.get(open.url(&format!("/login?next={raw}"))).send().await.unwrap();
        assert_eq!(response.status(), 303, "{raw}");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(!location.starts_with("//") && !location.contains('\t'), "{raw} → {location}");
    }
}

/// Every byte but unreserved ones as `%XX`.
pub(crate) fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn errors_made_outside_the_handlers_are_json_too() {
    let server = TestServer::start(&[]).await;
    let wrong_method = server.client.delete(server.url("/health")).send().await.unwrap();
    assert_error(wrong_method, 405, "method_not_allowed").await;
    let bad_query = server.client.get(server.url("/api/pipelines/x/events?limit=lots")).send().await.unwrap();
    assert!(bad_query.status().is_client_error());
    assert!(bad_query.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    // A path that is not UTF-8 once decoded.
    let raw = raw_request(&server, "GET /api/pipelines/%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 4"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("content-type: application/json"), "{raw}");
    // What hyper answers before a request exists: too many headers, a head past its buffer,
    // a request line that is not HTTP.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(600 * 1024));
    for (request, status) in [
        (format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n"), "431"),
        (format!("GET /health HTTP/1.1\r\nHost: x\r\n{huge}\r\n"), "431"),
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400"),
    ] {
        let raw = raw_request(&server, &request).await;
        assert!(raw.starts_with(&format!("HTTP/1.1 {status}")), "{raw:.200}");
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
        let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw:.300}"));
        assert!(error["error"]["code"].is_string(), "{error}");
    }
    // A keep-alive connection's own 4xx answers stay Dash's (counted, never rewritten).
    let two = "GET /api/pipelines/nope HTTP/1.1\r\nHost: x\r\n\r\nGET /api/pipelines/nope2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let raw = raw_request(&server, two).await;
    assert_eq!(raw.matches("pipeline_not_found").count(), 2, "{raw}");
}

/// Sends `request` as raw bytes and reads the answer until the server closes.
async fn raw_request(server: &TestServer, request: &str) -> String {
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn idle_and_half_open_sockets_give_way_to_real_clients() {
    let server = TestServer::start(&[("DASH_MAX_CONNECTIONS", "40"), ("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let p = server.create_pipeline("crowded").await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    // An attacker holds twice the cap: silent sockets, and half-sent request heads.
    let mut held = Vec::new();
    for i in 0..80 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        }
        held.push(tcp);
    }
    // The attack's steady state: the cap is full of the attacker's idle sockets.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Real clients still get through, each on a fresh connection (a client told 503 with
    // Retry-After may try once more, as real clients do; it must then get through).
    // Real clients come from other addresses than the attacker's, which holds at most its share.
    let elsewhere = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    for i in 0..5 {
        let client =
            crate::support::http_client().pool_max_idle_per_host(0).local_address(elsewhere(2)).build().unwrap();
        let mut health = client.get(server.url("/health")).send().await.unwrap();
        if health.status() == 503 {
            let wait = health.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
            eprintln!("503 at the cap: {}", health.text().await.unwrap());
            tokio::time::sleep(Duration::from_secs(wait)).await;
            health = client.get(server.url("/health")).send().await.unwrap();
        }
        assert_eq!(health.status(), 200);
        let ts = now_secs();
        let id = format!("real{i}");
        let sent = client
            .post(server.url(&format!("/webhooks/{}", p.id)))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", p.secret.sign(&id, ts, b"{}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 202);
    }
    server.wait_for_count(&p, 5, Duration::from_secs(10)).await;

    // A keep-alive connection left idle after its request is closed once the deadline passes.
    let connect_from = |last: u8| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((elsewhere(last), 0).into()).unwrap();
        socket.connect(addr.parse().unwrap())
    };
    let mut idle = connect_from(3).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut first)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "idle keep-alive closed: {closed:?}");
    assert!(idle_since.elapsed() < Duration::from_secs(15), "{:?}", idle_since.elapsed());

    // A silent connection is closed once the header deadline passes.
    let mut silent = connect_from(4).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed by the server: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    drop(held);
}

#[tokio::test]
async fn pages_on_other_origins_can_change_nothing_nor_read_live() {
    for admin in [None, Some("letmein")] {
        let env: Vec<(&str, &str)> = admin.map(|t| ("DASH_ADMIN_TOKEN", t)).into_iter().collect();
        let server = TestServer::start(&env).await;
        let with_admin = |request: reqwest::RequestBuilder| match admin {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let create = |origin: Option<&str>, content_type: &str| {
            let mut request = with_admin(server.client.post(server.url("/api/pipelines")))
                .header("content-type", content_type)
                .body(r#"{"name":"forged"}"#);
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send()
        };
        // Another port of the same host, another site, an opaque origin: refused.
        for origin in ["http://127.0.0.1:1", "http://evil.example", "null"] {
            assert_error(create(Some(origin), "application/json").await.unwrap(), 403, "cross_origin_refused").await;
        }
        let sec_fetch = with_admin(server.client.post(server.url("/api/pipelines")))
            .header("content-type", "application/json")
            .header("sec-fetch-site", "same-site")
            .body(r#"{"name":"forged"}"#)
            .send();
        assert_error(sec_fetch.await.unwrap(), 403, "cross_origin_refused").await;
        // What an HTML form can send is not JSON: refused even without an Origin.
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert_error(create(None, content_type).await.unwrap(), 415, "unsupported_media_type").await;
        }
        let listed = with_admin(server.client.get(server.url("/api/pipelines"))).send().await.unwrap();
        assert_eq!(listed.json::<Value>().await.unwrap()["pipelines"].as_array().unwrap().len(), 0);
        // This origin (the dashboard's own pages) still can.
        let own = create(Some(&server.base), "application/json").await.unwrap();
        assert_eq!(own.status(), 201);

        // `/live` from another origin's page: refused before any upgrade.
        let addr = server.base.trim_start_matches("http://").to_owned();
        let mut request = format!(
            "GET /live HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        if let Some(token) = admin {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let answer = raw_request(&server, &request).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_and_correct_senders_go_on() {
    let server = TestServer::start(&[("DASH_ADMIN_TOKEN", "letmein")]).await;
    let p = server.create_pipeline("guarded").await;
    let guesser = crate::support::http_client().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build();
    let guesser = guesser.unwrap();
    let url = server.url(&format!("/webhooks/{}", p.id));
    let mut statuses = Vec::new();
    for i in 0..60 {
        let response = guesser.post(&url).bearer_auth(format!("dash_guess{i}")).body("{}").send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_error(response, 429, "too_many_failed_attempts").await;
        }
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[40..].iter().all(|s| *s == 429), "{statuses:?}");
    // Blocked, its failures wait; its right token is taken all the same (a provider's address is
    // shared by everyone's webhooks, the right one must get through).
    let wrong = guesser.post(&url).bearer_auth("dash_still_guessing").header("content-type", "application/json");
    assert_error(wrong.body("{}").send().await.unwrap(), 429, "too_many_failed_attempts").await;
    let right = guesser.post(&url).bearer_auth(&p.token).header("content-type", "application/json").body("{}");
    assert_eq!(right.send().await.unwrap().status(), 202);
    // The same address posting to another pipeline is not slowed: providers send every
    // pipeline's deliveries from shared addresses, and one wrong secret must not stop the rest.
    let other = server.create_pipeline("other").await;
    let other_url = server.url(&format!("/webhooks/{}", other.id));
    let elsewhere = guesser.post(&other_url).bearer_auth(&other.token).header("content-type", "application/json");
    assert_eq!(elsewhere.body("{}").send().await.unwrap().status(), 202);
    // Wrong admin tokens are throttled in their own budget.
    let mut admin = Vec::new();
    for _ in 0..40 {
        admin.push(
            guesser.get(server.url("/api/pipelines")).bearer_auth("nope").send().await.unwrap().status().as_u16(),
        );
    }
    assert!(admin[..20].iter().all(|s| *s == 401) && admin[35..].iter().all(|s| *s == 429), "{admin:?}");
    // A correct sender elsewhere is not slowed at all.
    for i in 0..20 {
        let sent = server.post_json(&p, &format!("ok{i}"), "{}").await;
        assert_eq!(sent.status(), 202);
    }
}

#[tokio::test]
async fn senders_signing_through_svix_are_accepted_under_its_header_names() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("svix").await;
    let ts = now_secs();
    let body = r#"{"type":"invoice.paid"}"#;
    let response = server
        .client
        .post(server.url(&format!("/webhooks/{}", p.id)))
        .header("content-type", "application/json")
        .header("svix-id", "msg_svix_1")
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", p.secret.sign("msg_svix_1", ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let forged = server
        .client
        .post(server.url(&format!("/webhooks/{}", p.id)))
        .header("content-type", "application/json")
        .header("svix-id", "msg_svix_2")
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(forged, 401, "invalid_signature").await;
    server.wait_for_count(&p, 1, Duration::from_secs(10)).await;
    let events = server.get_json(&format!("/api/pipelines/{}/events", p.id)).await;
    assert_eq!(events["events"][0]["id"], "msg_svix_1", "the svix-id is the event's id: {events}");
}

/// Signs with the `svix` library itself (Python, from scripts/test.sh's virtualenv).
fn svix_signature(secret: &str, msg_id: &str, ts: i64, body: &str) -> Option<String> {
    let script = "import sys, datetime\nfrom svix.webhooks import Webhook\n\
        at = datetime.datetime.fromtimestamp(int(sys.argv[3]), tz=datetime.timezone.utc)\n\
        print(Webhook(sys.argv[1]).sign(sys.argv[2], at, sys.argv[4]))";
    crate::support::sender_library("DASH_TEST_PYTHON", &["-c", script, secret, msg_id, &ts.to_string(), body])
}

#[tokio::test]
async fn the_svix_library_signs_webhooks_dash_accepts() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("svix library").await;
    let ts = now_secs();
    let body = r#"{"type":"user.created","data":{"id":7}}"#;
    let Some(signature) = svix_signature(&p.secret.expose(), "msg_lib_1", ts, body) else { return };
    for (id, stamp, sig) in
        [("svix-id", "svix-timestamp", "svix-signature"), ("webhook-id", "webhook-timestamp", "webhook-signature")]
    {
        let response = server
            .client
            .post(server.url(&format!("/webhooks/{}", p.id)))
            .header("content-type", "application/json")
            .header(id, "msg_lib_1")
            .header(stamp, ts.to_string())
            .header(sig, &signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{id}");
    }
    server.wait_for_count(&p, 1, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_oversized_body_sent_whole_before_reading_gets_its_413() {
    let server = TestServer::start(&[("DASH_MAX_BODY", "64KiB")]).await;
    let p = server.create_pipeline("big").await;
    for _ in 0..5 {
        let body = vec![b'x'; 600 * 1024];
        let head = format!(
            "POST /webhooks/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            p.id,
            p.token,
            body.len()
        );
        let addr = server.base.trim_start_matches("http://").to_owned();
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("body_too_large"), "{answer}");
    }
}

#[tokio::test]
async fn slow_uploads_from_one_address_cannot_starve_a_signed_sender() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("starved").await;
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    // From 127.0.0.2: 64 requests declaring 1 MiB bodies and 1,500 declaring 1 byte, headers
    // only, half with no credentials at all and half with signature-shaped headers (a fresh
    // timestamp, a `v1,` entry that will never match), which pass every check but the HMAC.
    let mut held = Vec::new();
    for i in 0..1564 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        let len = if i < 64 { 1 << 20 } else { 1 };
        let credentials = match i % 2 {
            0 => String::new(),
            _ => format!("webhook-id: slow{i}\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,AAAA\r\n", now_secs()),
        };
        let head = format!(
            "POST /webhooks/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{credentials}\r\n",
            p.id
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        held.push(tcp);
    }
    // Meanwhile a legitimate signed sender keeps getting 202 at once.
    for i in 0..30 {
        let started = Instant::now();
        let sent = server.post_json(&p, &format!("legit{i}"), "{}").await;
        assert_eq!(sent.status(), 202, "request {i}");
        assert!(started.elapsed() < Duration::from_secs(2), "request {i}: {:?}", started.elapsed());
    }
    server.wait_for_count(&p, 30, Duration::from_secs(10)).await;
    drop(held);
}

/// A pipeline of 12 MB of events: more than loopback's socket buffers take of one answer.
async fn wide_pipeline(server: &TestServer) -> crate::support::Pipeline {
    let p = server.create_pipeline("wide").await;
    let pad = "x".repeat(60_000);
    for batch in 0..20 {
        let ndjson: String = (0..10).map(|i| format!("{{\"id\":\"e{batch}-{i}\",\"pad\":\"{pad}\"}}\n")).collect();
        let sent = server.post_signed(&p, &format!("b{batch}"), "application/x-ndjson", &ndjson).await;
        assert_eq!(sent.status(), 202);
    }
    server.wait_for_count(&p, 200, Duration::from_secs(20)).await;
    p
}

/// A reader that asks for a pipeline's whole export and reads none of it, from a socket with a
/// small receive buffer.
async fn stalled_export(server: &TestServer, pipeline: &str) -> TcpStream {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = format!("GET /api/pipelines/{pipeline}/events/export HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// A slow answer in flight at SIGTERM: the node lets it run until the shutdown deadline, then
/// cuts it and stops; nothing of the connection runs on after the store is closed.
#[tokio::test]
async fn a_slow_answer_in_flight_at_sigterm_is_cut_at_the_deadline_and_the_node_stops() {
    let mut server = TestServer::start(&[
        ("DASH_SHUTDOWN_TIMEOUT", "2s"),
        ("DASH_WRITE_TIMEOUT", "120s"),
        ("DASH_FLUSH_INTERVAL", "100ms"),
    ])
    .await;
    let p = wide_pipeline(&server).await;
    let mut reader = stalled_export(&server, &p.id).await;
    let mut head = [0u8; 1024];
    let n = reader.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.sigterm();
        (status, server)
    });
    let (status, server) = status.await.unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{}", server.log());
    assert!(took >= Duration::from_secs(2), "the answer had until the deadline: {took:?}");
    assert!(took < Duration::from_secs(10), "cut at the deadline, not at the write timeout: {took:?}");
    let log = server.log();
    assert!(log.contains("connections still busy at the drain deadline were cut"), "{log}");
    assert!(!log.contains("cut short by the store"), "the answer ran on after the store closed: {log}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest)).await;
    assert!(read.is_ok() && rest.len() < 12_000_000, "the reader sees its answer end short");
}

/// Clients that ask for a large answer and stop reading it hold busy connections, which are
/// never evicted: the write deadline closes them, and every slot they held is free again.
#[tokio::test]
async fn readers_that_stop_reading_mid_response_free_their_slots() {
    let server = TestServer::start(&[
        ("DASH_MAX_CONNECTIONS", "20"),
        ("DASH_WRITE_TIMEOUT", "2s"),
        ("DASH_FLUSH_INTERVAL", "100ms"),
    ])
    .await;
    let p = wide_pipeline(&server).await;

    // Past the cap, each asks for the whole export and reads none of it.
    let mut stalled = Vec::new();
    for _ in 0..24 {
        stalled.push(stalled_export(&server, &p.id).await);
    }
    // Within the deadline and a little more, the node answers others again.
    let started = Instant::now();
    let client = crate::support::http_client().pool_max_idle_per_host(0).build().unwrap();
    loop {
        let health = client.get(server.url("/health")).send().await.unwrap();
        if health.status() == 200 {
            break;
        }
        assert_eq!(health.status(), 503, "{}", health.text().await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(15), "slots still held after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every stalled answer was cut: its reader finds the end before the whole export.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut served = 0;
    for mut tcp in stalled {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection was closed");
        assert!(got.len() < 12_000_000, "cut short: {} bytes", got.len());
        // The rest found the cap full and were told 503 at once.
        served += usize::from(got.starts_with(b"HTTP/1.1 200"));
    }
    assert!(served >= 10, "{served} of the stalled readers were being answered");
    let text = crate::monitoring::metrics_text(&server).await;
    let closed = crate::monitoring::sample(&text, "dash_http_write_timeouts_total").unwrap_or(0.0);
    assert!(closed >= served as f64, "{closed} connections closed for not reading, of {served}");
}
