//! Views end to end on the real binary: made over stored history by the API, the config file
//! and the CLI, kept live through a kill -9 and the replays that follow it, and equal to a
//! computation over the raw events the store holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dash_views::{Cell, Groups, ViewChanges, ViewSpec};
use serde_json::{Value, json};

use crate::live::{connect, next, send};
use crate::support::{TestServer, assert_error, run_dashd};

async fn post_view(server: &TestServer, pipeline: &str, body: Value) -> reqwest::Response {
    server.client.post(server.url(&format!("/api/pipelines/{pipeline}/views"))).json(&body).send().await.unwrap()
}

/// An order event; some leave fields out or send them as text, as real senders do.
fn order(i: u32) -> Value {
    let kind = ["order", "refund", "order", "trial"][i as usize % 4];
    let currency = ["EUR", "USD", "GBP"][i as usize % 3];
    let mut event = json!({
        "id": format!("o{i}"),
        "type": kind,
        "currency": currency,
        "customer": format!("c{}", i % 17),
        "latency_ms": (i * 37) % 500,
    });
    match i % 10 {
        0 => {}
        1 => event["amount"] = json!("12.50"),
        _ => event["amount"] = json!(f64::from(i) * 1.25),
    }
    if i.is_multiple_of(7) {
        event.as_object_mut().unwrap().remove("currency");
    }
    event
}

async fn post_orders(server: &TestServer, pipeline: &crate::support::Pipeline, range: std::ops::Range<u32>) {
    for chunk in range.collect::<Vec<_>>().chunks(10) {
        let body = Value::Array(chunk.iter().map(|i| order(*i)).collect()).to_string();
        let response = server.post_json(pipeline, &format!("msg-{}", chunk[0]), &body).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// Waits until every view of `pipeline` has its history computed.
pub(crate) async fn wait_for_history(server: &TestServer, pipeline: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views = server.get_json(&format!("/api/pipelines/{pipeline}/views")).await;
        if views["views"].as_array().unwrap().iter().all(|v| v["backfill"]["done"] == true) {
            return;
        }
        assert!(Instant::now() < deadline, "histories not computed: {views}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every group of `view` as the API says, against the same view computed from the stored events.
async fn assert_equals_raw(server: &TestServer, pipeline: &str, view: &str) {
    let record = server.get_json(&format!("/api/pipelines/{pipeline}/views/{view}")).await;
    let mut spec_json = record.clone();
    for key in ["pipeline", "name", "generation", "created_at", "updated_at", "backfill", "describe"] {
        spec_json.as_object_mut().unwrap().remove(key);
    }
    let spec = ViewSpec::from_json(spec_json).unwrap();
    let events = server.get_json(&format!("/api/pipelines/{pipeline}/events?limit=1000")).await;
    let mut expected: HashMap<String, Cell> = HashMap::new();
    let mut groups = Groups::default();
    let mut changes = ViewChanges::default();
    for e in events["events"].as_array().unwrap() {
        changes.add(&spec, &mut groups, &e["payload"], 0);
    }
    for ((_, group), cell) in changes.into_cells() {
        expected.insert(group, cell);
    }
    let now = dash_domain::now_ms();
    let got = server
        .get_json(&format!(
            "/api/pipelines/{pipeline}/views/{view}/groups?from={}&to={}",
            now - 3_600_000,
            now + 60_000
        ))
        .await;
    let got_groups = got["groups"].as_array().unwrap_or_else(|| panic!("{got}"));
    assert_eq!(got_groups.len(), expected.len(), "{view}: {got}");
    for group in got_groups {
        let name = group["group"].as_str().unwrap();
        let want = &expected[name];
        assert_eq!(group["n"].as_u64(), Some(want.n), "{view} {name}: {got}");
        assert_eq!(group["skipped"].as_u64(), Some(want.skipped), "{view} {name}: {got}");
        let (value, want) = (group["value"].as_f64(), want.value(spec.aggregate));
        match (value, want) {
            (Some(v), Some(w)) => assert!((v - w).abs() <= 1e-9 * w.abs().max(1.0), "{view} {name}: {v} vs {w}"),
            (v, w) => assert_eq!(v, w, "{view} {name}"),
        }
    }
}

const VIEWS: [(&str, &str); 5] = [
    ("by-type", r#"{"aggregate": "count", "group_by": "/type"}"#),
    ("revenue", r#"{"aggregate": "sum", "field": "/amount", "group_by": "/currency"}"#),
    ("latency", r#"{"aggregate": "p95", "field": "/latency_ms"}"#),
    ("customers", r#"{"aggregate": "distinct", "field": "/customer"}"#),
    ("refunds", r#"{"aggregate": "count", "filter": {"/type": "refund"}, "pinned": true}"#),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_history_and_live_equal_the_raw_events_through_a_kill() {
    let mut server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let orders = server.create_pipeline("orders").await;
    // History first: the views are made over 120 stored events (and a retried request).
    post_orders(&server, &orders, 0..120).await;
    post_orders(&server, &orders, 0..10).await;
    server.wait_for_count(&orders, 120, Duration::from_secs(10)).await;

    // Refusals name the field at fault.
    for (body, field) in [
        (json!({"name": "x", "aggregate": "sum"}), "field"),
        (json!({"name": "x", "aggregate": "median", "field": "/a"}), "aggregate"),
        (json!({"name": "x", "aggregate": "count", "group_by": "type"}), "group_by"),
        (json!({"name": "x", "aggregate": "count", "max_groups": 100000}), "max_groups"),
        (json!({"name": "x", "aggregate": "count", "keep": "1s"}), "keep"),
        (json!({"name": "Bad Name", "aggregate": "count"}), "name"),
        (json!({"aggregate": "count"}), "name"),
    ] {
        let error = assert_error(post_view(&server, &orders.id, body.clone()).await, 422, "invalid_view").await;
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    assert_error(
        post_view(&server, "nope", json!({"name": "x", "aggregate": "count"})).await,
        404,
        "pipeline_not_found",
    )
    .await;

    for (name, definition) in VIEWS {
        let mut body: Value = serde_json::from_str(definition).unwrap();
        body["name"] = json!(name);
        let response = post_view(&server, &orders.id, body.clone()).await;
        assert_eq!(response.status(), 201, "{name}");
        assert_error(post_view(&server, &orders.id, body).await, 409, "view_exists").await;
    }
    wait_for_history(&server, &orders.id).await;
    for (name, _) in VIEWS {
        assert_equals_raw(&server, &orders.id, name).await;
    }

    // Live: a subscriber hears which views a batch changed.
    let mut socket = connect(&server).await;
    send(&mut socket, json!({"type": "subscribe", "pipeline": orders.id})).await;
    assert_eq!(next(&mut socket).await["type"], "snapshot");
    post_orders(&server, &orders, 120..130).await;
    let update = next(&mut socket).await;
    assert_eq!(update["type"], "update", "{update}");
    let touched: Vec<&str> = update["views"].as_array().unwrap().iter().map(|v| v["view"].as_str().unwrap()).collect();
    assert_eq!(touched, ["by-type", "customers", "latency", "refunds", "revenue"], "{update}");

    // Acknowledged, then killed before (or while) they are flushed; the sender retries them all.
    post_orders(&server, &orders, 130..200).await;
    server.kill9();
    server.restart();
    post_orders(&server, &orders, 130..200).await;
    server.wait_for_count(&orders, 200, Duration::from_secs(15)).await;
    for (name, _) in VIEWS {
        assert_equals_raw(&server, &orders.id, name).await;
    }

    // A change of what a view holds computes it again; one of how it is shown does not.
    let patch = |view: &str, body: Value| {
        server.client.patch(server.url(&format!("/api/pipelines/{}/views/{view}", orders.id))).json(&body).send()
    };
    let changed: Value = patch("latency", json!({"aggregate": "p50"})).await.unwrap().json().await.unwrap();
    assert_eq!(changed["generation"], 2, "{changed}");
    let pinned: Value = patch("revenue", json!({"pinned": true})).await.unwrap().json().await.unwrap();
    assert_eq!((pinned["generation"].as_i64(), pinned["backfill"]["done"].as_bool()), (Some(1), Some(true)));
    assert_error(patch("revenue", json!({"field": "amount"})).await.unwrap(), 422, "invalid_view").await;
    // A name that is no field of a definition is refused, also when it comes as `null`.
    for unknown in [json!({"colour": "red"}), json!({"": null}), json!({"colour": null})] {
        assert_error(patch("revenue", unknown).await.unwrap(), 422, "invalid_view").await;
    }
    wait_for_history(&server, &orders.id).await;
    assert_equals_raw(&server, &orders.id, "latency").await;

    // Series: every bucket, the total of the groups (or one group's).
    let now = dash_domain::now_ms();
    let range = format!("from={}&to={}&bucket=1h", now - 3_600_000, now + 60_000);
    let series = server.get_json(&format!("/api/pipelines/{}/views/by-type/series?{range}", orders.id)).await;
    let total: f64 = series["points"].as_array().unwrap().iter().filter_map(|p| p["value"].as_f64()).sum();
    assert_eq!(total, 200.0, "{series}");
    let one = server.get_json(&format!("/api/pipelines/{}/views/by-type/series?{range}&group=refund", orders.id)).await;
    let refunds: f64 = one["points"].as_array().unwrap().iter().filter_map(|p| p["value"].as_f64()).sum();
    assert_eq!(refunds, 50.0, "{one}");
    assert_error(
        server
            .client
            .get(server.url(&format!("/api/pipelines/{}/views/by-type/series?bucket=7s", orders.id)))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_query",
    )
    .await;

    let response =
        server.client.delete(server.url(&format!("/api/pipelines/{}/views/refunds", orders.id))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_error(
        server.client.get(server.url(&format!("/api/pipelines/{}/views/refunds", orders.id))).send().await.unwrap(),
        404,
        "view_not_found",
    )
    .await;
    // Hostile names get a 4xx, never a 5xx.
    let nul =
        server.client.delete(server.url(&format!("/api/pipelines/{}/views/%00", orders.id))).send().await.unwrap();
    assert_error(nul, 404, "view_not_found").await;
    let nul_group = server.url(&format!("/api/pipelines/{}/views/by-type/series?group=%00", orders.id));
    assert_error(server.client.get(nul_group).send().await.unwrap(), 400, "invalid_query").await;

    // Made again under the same name, its history is computed again (a new backfill job).
    let again =
        post_view(&server, &orders.id, json!({"name": "refunds", "aggregate": "count", "filter": {"/type": "refund"}}));
    assert_eq!(again.await.status(), 201);
    wait_for_history(&server, &orders.id).await;
    assert_equals_raw(&server, &orders.id, "refunds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_come_from_the_config_file_and_the_cli() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[pipelines.shop.views.by-type]\naggregate = \"count\"\ngroup_by = \"/type\"\n\n\
         [pipelines.shop.views.revenue]\naggregate = \"sum\"\nfield = \"/amount\"\nkeep = \"365days\"\n",
    )
    .unwrap();
    let path = config.path().display().to_string();
    let server = TestServer::start(&[("DASH_CONFIG", path.as_str()), ("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let views = server.get_json("/api/pipelines/shop/views").await;
    let names: Vec<&str> = views["views"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["by-type", "revenue"], "{views}");
    let keep = humantime::parse_duration(views["views"][1]["keep"].as_str().unwrap()).unwrap();
    assert_eq!(keep, Duration::from_secs(365 * 86_400), "{views}");

    // The CLI, on the same data directory (SQLite) or database.
    let env = server.env();
    let out = run_dashd(
        server.dir.path(),
        &env,
        &["view", "create", "shop", "big-orders", "--aggregate", "count", "--filter", "/type=order", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["filter"], json!({"/type": "order"}));
    let out = run_dashd(server.dir.path(), &env, &["view", "create", "shop", "bad", "--aggregate", "sum"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("field"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_dashd(server.dir.path(), &env, &["view", "list", "shop"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("big-orders") && listed.contains("count of events where /type = \"order\""), "{listed}");
    let out = run_dashd(server.dir.path(), &env, &["view", "delete", "shop", "big-orders"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let views = server.get_json("/api/pipelines/shop/views").await;
    assert_eq!(views["views"].as_array().unwrap().len(), 2, "{views}");

    // A bad view in the config file stops the start, naming it.
    std::fs::write(config.path(), "[pipelines.shop.views.broken]\naggregate = \"p95\"\n").unwrap();
    let out = run_dashd(server.dir.path(), &[("DASH_CONFIG", path.as_str())], &["serve", "--listen", "127.0.0.1:0"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("pipelines.shop.views.broken"), "{text}");
}

/// As a person does it: open a pipeline, pick `/type` in the field explorer, make the view in the
/// form, and watch its breakdown move as webhooks arrive, without reloading.
#[tokio::test]
async fn a_person_makes_a_view_from_the_field_explorer_and_watches_it_move() {
    if crate::support::postgres_admin().is_some() {
        return;
    }
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let orders = server.create_pipeline("shop").await;
    post_orders(&server, &orders, 0..8).await;
    server.wait_for_count(&orders, 8, Duration::from_secs(10)).await;

    // Without scripts, the page lists the fields of the latest events.
    let html = server.client.get(server.url("/pipelines/shop")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(r#"<tr data-pointer="/type">"#) && html.contains("/latency_ms"), "{html}");

    let mut browser = crate::chromium::Browser::launch().await;
    browser.open(&server.url("/pipelines/shop")).await;
    browser.wait_for("document.getElementById('live-status').dataset.state === 'live'", Duration::from_secs(20)).await;
    // Click one: "count by" /type …
    browser.eval("document.querySelector('tr[data-pointer=\"/type\"] a.count-by').click()").await;
    browser
        .wait_for(
            "location.pathname.endsWith('/views/new') && document.readyState === 'complete'",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(browser.eval("document.querySelector('input[name=name]').value").await, "by-type");
    // … click two: create.
    browser.eval("document.querySelector('form.view-form').submit()").await;
    browser
        .wait_for(
            "location.pathname === '/pipelines/shop' && document.querySelector('.view-card[data-view=\"by-type\"]') !== null",
            Duration::from_secs(10),
        )
        .await;
    browser.wait_for("document.getElementById('live-status').dataset.state === 'live'", Duration::from_secs(20)).await;
    const VALUE: &str =
        "document.querySelector('.view-card[data-view=\"by-type\"] [data-field=view-value]').textContent";
    browser.wait_for(&format!("{VALUE} === '8'"), Duration::from_secs(15)).await;
    browser.eval("window.sameDocument = true").await;

    // Webhooks arrive: the card's total and its table follow, on the same document.
    post_orders(&server, &orders, 8..20).await;
    browser.wait_for(&format!("{VALUE} === '20'"), Duration::from_secs(15)).await;
    let rows = "Array.from(document.querySelectorAll('.view-card[data-view=\"by-type\"] table.groups tbody tr')).map(r => r.cells[0].textContent.trim() + '=' + r.cells[1].textContent).join(',')";
    browser.wait_for(&format!("{rows} === 'order=10,refund=5,trial=5'"), Duration::from_secs(15)).await;
    assert_eq!(browser.eval("window.sameDocument === true").await, true, "moved without a reload");
    browser.eval("document.querySelector('.view-card').scrollIntoView()").await;
    browser.screenshot("view-from-explorer").await;
    assert_equals_raw(&server, &orders.id, "by-type").await;

    // Edit: the form comes prefilled with the name fixed; saving computes the view again.
    let form = server.client.get(server.url("/pipelines/shop/views/new?edit=by-type")).send().await.unwrap();
    let form = form.text().await.unwrap();
    assert!(form.contains("Edit view") && form.contains("readonly") && form.contains(r#"value="/type""#), "{form}");
    let saved = server
        .client
        .post(server.url("/pipelines/shop/views"))
        .form(&[("name", "by-type"), ("aggregate", "count"), ("group_by", "/currency"), ("replace", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200, "redirected back to the pipeline page");
    let view = server.get_json("/api/pipelines/shop/views/by-type").await;
    assert_eq!((view["group_by"].as_str(), view["generation"].as_i64()), (Some("/currency"), Some(2)), "{view}");
    let refused = server
        .client
        .post(server.url("/pipelines/shop/views"))
        .form(&[("name", "latency"), ("aggregate", "p95")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("field: p95 needs a field"));
}

/// A thousand active groups over the last hour are more view states than a page reads at once:
/// that card says so, the rest of the page (and the same card over a shorter range) does not
/// mind.
#[tokio::test]
async fn a_card_too_large_to_read_says_so_and_the_page_stands() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "50ms")]).await;
    let p = server.create_pipeline("wide").await;
    // Distinct counts: sketches, read at most 50,000 at a time.
    let view = json!({"name": "by-g", "aggregate": "distinct", "field": "/id", "group_by": "/g", "max_groups": 1000});
    assert_eq!(post_view(&server, &p.id, view).await.status(), 201);
    let now = crate::support::now_secs() * 1000;
    let minutes = 52;
    for m in 0..minutes {
        let at = now - m * 60_000 - 1_000;
        let lines: String =
            (0..1000).map(|g| format!("{{\"id\":\"m{m}g{g}\",\"g\":\"g{g}\",\"timestamp\":{at}}}\n")).collect();
        // As a sender does: a full backlog (429, a loaded machine) is waited out and sent again.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let sent = server
                .client
                .post(server.url(&format!("/webhooks/{}", p.id)))
                .bearer_auth(&p.token)
                .header("content-type", "application/x-ndjson")
                .body(lines.clone())
                .send()
                .await
                .unwrap();
            if sent.status() == 202 {
                break;
            }
            assert_eq!(sent.status(), 429, "{}", sent.text().await.unwrap());
            assert!(std::time::Instant::now() < deadline, "the backlog never made room");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    server.wait_for_count(&p, minutes * 1000, Duration::from_secs(60)).await;
    let page =
        |range: &'static str| server.client.get(server.url(&format!("/pipelines/{}?range={range}", p.id))).send();
    let hour = page("1h").await.unwrap();
    assert_eq!(hour.status(), 200, "one card never takes the page down");
    let hour = hour.text().await.unwrap();
    assert!(hour.contains("Too many groups and minutes to read at once"), "{hour}");
    assert!(hour.contains("Latest events"), "the rest of the page is there");
    let five = page("5m").await.unwrap().text().await.unwrap();
    assert!(!five.contains("Too many groups") && five.contains("by-g"), "a shorter range reads");
}
