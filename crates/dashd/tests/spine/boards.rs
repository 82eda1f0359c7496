//! Boards end to end on the real binary: made through the API (refusals naming their field),
//! the pages' forms, the config file and the CLI; shown as a grid whose panels follow the
//! board's range and read each pipeline and view they name.

use std::time::Duration;

use serde_json::{Value, json};

use crate::chromium::Browser;
use crate::support::{TestServer, assert_error, run_dashd};

async fn post_board(server: &TestServer, body: Value) -> reqwest::Response {
    server.client.post(server.url("/api/boards")).json(&body).send().await.unwrap()
}

async fn patch_board(server: &TestServer, name: &str, body: Value) -> reqwest::Response {
    server.client.patch(server.url(&format!("/api/boards/{name}"))).json(&body).send().await.unwrap()
}

async fn page(server: &TestServer, path: &str) -> (u16, String) {
    let response = server.client.get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A pipeline `name` with `n` events of two types and a view counting them by type.
async fn pipeline_with_view(server: &TestServer, name: &str, n: usize) -> crate::support::Pipeline {
    let pipeline = server.create_pipeline(name).await;
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{name}-{i}"), "type": (["paid", "refunded"][i % 2]), "amount": i}))
        .collect();
    let response = server.post_json(&pipeline, &format!("{name}-batch"), &Value::Array(events).to_string()).await;
    assert_eq!(response.status(), 202);
    server.wait_for_count(&pipeline, n as i64, Duration::from_secs(20)).await;
    let response = server
        .client
        .post(server.url(&format!("/api/pipelines/{}/views", pipeline.id)))
        .json(&json!({"name": "by-type", "aggregate": "count", "group_by": "/type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    crate::views::wait_for_history(server, &pipeline.id).await;
    pipeline
}

#[tokio::test]
async fn a_board_is_made_through_the_api_refused_by_field_and_shown_as_a_grid() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    pipeline_with_view(&server, "Orders", 6).await;
    pipeline_with_view(&server, "deploys", 3).await;

    let response = post_board(
        &server,
        json!({
            "name": "ops",
            "title": "Operations",
            "range": "1h",
            "panels": [
                // By name: kept by the pipeline's id.
                {"type": "pipeline", "pipeline": "Orders", "width": 2},
                {"type": "view", "pipeline": "orders", "view": "by-type", "display": "table", "title": "Orders by type"},
                {"type": "view", "pipeline": "deploys", "view": "by-type", "display": "stat", "width": 1},
                {"type": "note", "text": "## On call\n\nPage **ops** <script>alert(1)</script>", "width": 4}
            ]
        }),
    )
    .await;
    assert_eq!(response.status(), 201);
    let board: Value = response.json().await.unwrap();
    assert_eq!(board["name"], "ops");
    assert_eq!(board["panels"][0], json!({"type": "pipeline", "pipeline": "orders", "width": 2}));
    assert_eq!(board["panels"][2]["width"], 1);
    assert!(board["created_at"].is_string(), "{board}");

    // Refusals: 409 for a name taken, 400 for JSON that is not, 422 naming the field.
    assert_error(post_board(&server, json!({"name": "ops"})).await, 409, "board_exists").await;
    let response = server
        .client
        .post(server.url("/api/boards"))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "malformed_json").await;
    for (body, field) in [
        (json!({"name": "Ops Board"}), "name"),
        (json!({"panels": []}), "name"),
        (json!({"name": "x", "range": "2h"}), "range"),
        (json!({"name": "x", "panels": [{"type": "pipeline", "pipeline": "orders", "width": 5}]}), "panels[0].width"),
        (
            json!({"name": "x", "panels": [{"type": "note", "text": "a"}, {"type": "pipeline", "pipeline": "nope"}]}),
            "panels[1].pipeline",
        ),
        (json!({"name": "x", "panels": [{"type": "view", "pipeline": "orders", "view": "nope"}]}), "panels[0].view"),
        (json!({"name": "x", "panels": [{"type": "chart", "pipeline": "orders"}]}), "panels[0].type"),
    ] {
        let refused = assert_error(post_board(&server, body.clone()).await, 422, "invalid_board").await;
        assert_eq!(refused["error"]["field"], field, "{body} → {refused}");
    }
    assert_eq!(server.get_json("/api/boards").await["boards"].as_array().unwrap().len(), 1);

    // The page: every panel over the board's range, the note's HTML shown as text.
    let (status, html) = page(&server, "/boards/ops").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<h1>Operations</h1>"), "{html}");
    assert!(html.contains(r#"aria-current="page">1 hour"#), "the board opens on its range: {html}");
    assert!(html.contains("Orders by type") && html.contains("refunded"), "{html}");
    assert!(html.contains(r#"data-field="count" class="value">6</span> events"#), "{html}");
    assert!(html.contains("<h2>On call</h2>") && html.contains("&lt;script&gt;"), "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    assert_eq!(html.matches("class=\"board-panel").count(), 4, "{html}");
    // A link to another range reproduces it; each panel's fragment follows it.
    let (_, week) = page(&server, "/boards/ops?range=7d").await;
    assert!(week.contains("events per hour, last 7 days"), "{week}");
    assert!(week.contains(r#"data-refresh="/boards/ops/panels/1?range=7d""#), "{week}");
    let (status, fragment) = page(&server, "/boards/ops/panels/2?range=5m").await;
    assert_eq!(status, 200);
    assert!(fragment.starts_with("<section") && fragment.contains(r#"data-view="by-type""#), "{fragment}");
    assert!(fragment.contains(r#"<span class="value big">3</span>"#), "{fragment}");
    assert_eq!(page(&server, "/boards/ops/panels/9").await.0, 404);
    assert_eq!(page(&server, "/boards/nope").await.0, 404);
    // Each panel's figures download as CSV and JSON, over the range asked.
    let response =
        server.client.get(server.url("/boards/ops/panels/0/export?format=csv&range=1h")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"ops-1-1h.csv\"");
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!((lines[0], lines.len()), ("bucket_start,events", 61), "{csv}");
    let total: i64 = lines[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 6, "{csv}");
    let table = server.get_json("/boards/ops/panels/1/export?format=json").await;
    assert_eq!(table["title"], "Orders by type");
    let mut rows: Vec<(String, i64)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["group"].as_str().unwrap().to_owned(), r["events"].as_i64().unwrap()))
        .collect();
    rows.sort();
    assert_eq!(rows, [("paid".to_owned(), 3), ("refunded".to_owned(), 3)], "{table}");
    let response = server.client.get(server.url("/boards/ops/panels/3/export")).send().await.unwrap();
    assert_error(response, 404, "no_figures").await;
    let response = server.client.get(server.url("/boards/ops/panels/0/export?format=xml")).send().await.unwrap();
    assert_error(response, 422, "invalid_format").await;
    assert!(html.contains(r#"href="/boards/ops/panels/0/export?format=csv&amp;range=1h""#), "{html}");

    // A range of the viewer's own: in the link, followed by every panel and download.
    let now = dash_domain::now_ms();
    let (from, to) = (now - now % 60_000 - 2 * 3_600_000, now - now % 60_000 + 60_000);
    let (status, custom) = page(&server, &format!("/boards/ops?from={from}&to={to}")).await;
    assert_eq!(status, 200);
    assert!(custom.contains(&format!(r#"data-refresh="/boards/ops/panels/0?from={from}&amp;to={to}""#)), "{custom}");
    assert!(custom.contains("events per minute, ") && custom.contains(" UTC"), "{custom}");
    let url = format!("/boards/ops/panels/0/export?format=csv&from={from}&to={to}");
    let csv = server.client.get(server.url(&url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(csv.lines().count(), 1 + 121, "{csv}");
    let total: i64 = csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 6, "{csv}");

    // A chart draws its top groups apart and the rest together: its bars add up to the whole.
    let many = server.create_pipeline("many").await;
    let events: Vec<Value> =
        (0..10).map(|i| json!({"id": format!("m{i}"), "type": format!("t{}", i.min(8))})).collect();
    assert_eq!(server.post_json(&many, "many", &Value::Array(events).to_string()).await.status(), 202);
    server.wait_for_count(&many, 10, Duration::from_secs(20)).await;
    let response = server
        .client
        .post(server.url("/api/pipelines/many/views"))
        .json(&json!({"name": "by-type", "aggregate": "count", "group_by": "/type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    crate::views::wait_for_history(&server, "many").await;
    let response = post_board(
        &server,
        json!({"name": "many", "range": "1h", "panels": [{"type": "view", "pipeline": "many", "view": "by-type"}]}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let chart = server.get_json("/boards/many/panels/0/export?format=json").await;
    let rows = chart["rows"].as_array().unwrap();
    let groups: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert_eq!(groups.len(), 6, "five groups apart and the rest together: {groups:?}");
    assert!(groups.contains("other groups") && groups.contains("t8"), "{groups:?}");
    let total: f64 = rows.iter().filter_map(|r| r["count"].as_f64()).sum();
    assert_eq!(total, 10.0, "{chart}");

    // A range that cannot be shown: the download says which field, the page which range it shows.
    for (query, field) in [
        ("range=1y", "range"),
        (&format!("from={to}&to={from}") as &str, "to"),
        ("from=yesterday&to=now", "from"),
        (&format!("from={from}") as &str, "to"),
    ] {
        let url = format!("/boards/ops/panels/0/export?format=csv&{query}");
        let refused =
            assert_error(server.client.get(server.url(&url)).send().await.unwrap(), 422, "invalid_range").await;
        assert_eq!(refused["error"]["field"], field, "{query}: {refused}");
    }
    let (status, wrong) = page(&server, "/boards/ops?range=1y").await;
    assert_eq!(status, 200);
    assert!(wrong.contains("range: one of 5m") && wrong.contains("Showing the last 1 hour instead"), "{wrong}");

    let (_, list) = page(&server, "/boards").await;
    assert!(list.contains(r#"href="/boards/ops""#) && list.contains("orders, deploys"), "{list}");

    // PATCH: fields replace the board's; the name stays; a deleted view leaves its panel saying
    // so, and the board can still be changed around it.
    let response = patch_board(&server, "ops", json!({"range": "30d", "title": null})).await;
    assert_eq!(response.status(), 200);
    let board: Value = response.json().await.unwrap();
    assert_eq!((board["range"].as_str(), board.get("title")), (Some("30d"), None), "{board}");
    assert_error(patch_board(&server, "ops", json!({"name": "other"})).await, 422, "invalid_board").await;
    assert_error(patch_board(&server, "nope", json!({})).await, 404, "board_not_found").await;
    let response = server.client.delete(server.url("/api/pipelines/deploys/views/by-type")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let (_, html) = page(&server, "/boards/ops").await;
    assert!(html.contains("has no view \"by-type\" any more"), "{html}");
    assert_eq!(patch_board(&server, "ops", json!({"range": "24h"})).await.status(), 200);

    let response = server.client.delete(server.url("/api/boards/ops")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let response = server.client.delete(server.url("/api/boards/ops")).send().await.unwrap();
    assert_error(response, 404, "board_not_found").await;
}

#[tokio::test]
async fn a_board_is_composed_through_the_pages_forms() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    pipeline_with_view(&server, "orders", 4).await;
    let client = crate::support::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = |path: &str, fields: &[(&str, &str)]| {
        let request = client.post(server.url(path)).form(fields);
        async move { request.send().await.unwrap() }
    };
    let see_other = |response: reqwest::Response, to: &str| {
        assert!(response.status().is_redirection(), "{}", response.status());
        assert_eq!(response.headers()["location"], to);
    };

    see_other(form("/boards", &[("name", "wall"), ("title", "The wall")]).await, "/boards/wall/edit");
    let (status, editor) = page(&server, "/boards/wall/edit").await;
    assert_eq!(status, 200);
    assert!(editor.contains(r#"<option value="view:orders/by-type">"#), "{editor}");
    for fields in [
        vec![("what", "pipeline:orders"), ("width", "3")],
        vec![("what", "view:orders/by-type"), ("display", "table"), ("title", "Types")],
        vec![("what", "note"), ("text", "Hello *wall*"), ("width", "1")],
    ] {
        see_other(form("/boards/wall/panels", &fields).await, "/boards/wall/edit");
    }
    // Move the note first, retitle the chart, drop the table.
    see_other(form("/boards/wall/panels/2/move", &[("to", "up")]).await, "/boards/wall/edit");
    see_other(form("/boards/wall/panels/1/move", &[("to", "up")]).await, "/boards/wall/edit");
    see_other(
        form("/boards/wall/panels/1/settings", &[("title", "Orders"), ("width", "4")]).await,
        "/boards/wall/edit",
    );
    see_other(form("/boards/wall/panels/2/remove", &[]).await, "/boards/wall/edit");
    see_other(form("/boards/wall/settings", &[("title", "Wall"), ("range", "5m")]).await, "/boards/wall/edit");
    let board = server.get_json("/api/boards/wall").await;
    assert_eq!(
        board,
        json!({
            "name": "wall", "title": "Wall", "range": "5m",
            "panels": [
                {"type": "note", "text": "Hello *wall*", "width": 1},
                {"type": "pipeline", "pipeline": "orders", "title": "Orders", "width": 4},
            ],
            "created_at": board["created_at"], "updated_at": board["updated_at"], "version": board["version"],
        })
    );

    // Two people editing at once: changes that name no place all land; one that names a panel
    // by its place, on a board changed since its form was shown, is refused.
    let adds: Vec<_> = (0..12)
        .map(|i| {
            let text = format!("note {i}");
            let request =
                client.post(server.url("/boards/wall/panels")).form(&[("what", "note"), ("text", text.as_str())]);
            async move { request.send().await.unwrap().status() }
        })
        .collect();
    for status in futures_util::future::join_all(adds).await {
        assert!(status.is_redirection(), "{status}");
    }
    let after = server.get_json("/api/boards/wall").await;
    assert_eq!(after["panels"].as_array().unwrap().len(), 14, "{after}");
    let stale = board["version"].as_i64().unwrap().to_string();
    let response = form("/boards/wall/panels/0/remove", &[("version", stale.as_str())]).await;
    assert_eq!(response.status(), 422);
    assert!(response.text().await.unwrap().contains("changed while you were editing"));
    assert_eq!(server.get_json("/api/boards/wall").await["panels"], after["panels"]);
    let current = after["version"].as_i64().unwrap().to_string();
    see_other(form("/boards/wall/panels/13/remove", &[("version", current.as_str())]).await, "/boards/wall/edit");
    for i in (2..13).rev() {
        see_other(form(&format!("/boards/wall/panels/{i}/remove"), &[]).await, "/boards/wall/edit");
    }
    let board = server.get_json("/api/boards/wall").await;

    // A refused change shows the editor with the reason, and changes nothing.
    let response = form("/boards/wall/panels/0/settings", &[("width", "9")]).await;
    assert_eq!(response.status(), 422);
    assert!(response.text().await.unwrap().contains("panels[0].width"));
    let response = form("/boards/wall/panels/0/move", &[("to", "up")]).await;
    assert_eq!(response.status(), 422);
    let response = form("/boards", &[("name", "wall")]).await;
    assert_eq!(response.status(), 422);
    assert_eq!(server.get_json("/api/boards/wall").await["panels"], board["panels"]);
    // A share link, made through the editor (shown once), opened, then revoked there.
    let response = form("/boards/wall/shares", &[("expires_in", "7days")]).await;
    assert_eq!(response.status(), 200);
    let made = response.text().await.unwrap();
    let link = made.split("class=\"share-url\">").nth(1).and_then(|rest| rest.split('<').next()).unwrap().to_owned();
    assert!(link.starts_with("http://") && link.contains("/share/dash_"), "{link}");
    let share_path = &link[link.find("/share/").unwrap()..];
    assert_eq!(page(&server, share_path).await.0, 200);
    let (_, editor) = page(&server, "/boards/wall/edit").await;
    assert!(!editor.contains(share_path), "the token is shown once only");
    let id = editor.split("data-share=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    see_other(form(&format!("/boards/wall/shares/{id}/revoke"), &[]).await, "/boards/wall/edit");
    assert_eq!(page(&server, share_path).await.0, 401);

    // Another site's page cannot post the forms.
    let response = client
        .post(server.url("/boards/wall/delete"))
        .header("origin", "https://elsewhere.example")
        .form(&[("x", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    see_other(form("/boards/wall/delete", &[]).await, "/boards");
    assert_eq!(page(&server, "/boards/wall").await.0, 404);
}

#[tokio::test]
async fn boards_come_from_the_config_file_and_the_cli() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[pipelines.shop.views.by-type]\naggregate = \"count\"\ngroup_by = \"/type\"\n\n\
         [boards.wall]\ntitle = \"Shop\"\nrange = \"7d\"\n\n\
         [[boards.wall.panels]]\ntype = \"pipeline\"\npipeline = \"shop\"\nwidth = 4\n\n\
         [[boards.wall.panels]]\ntype = \"view\"\npipeline = \"shop\"\nview = \"by-type\"\ndisplay = \"stat\"\n\n\
         [[boards.wall.panels]]\ntype = \"note\"\ntext = \"\"\"\n# Runbook\nCall *ops*.\n\"\"\"\n",
    )
    .unwrap();
    let path = config.path().display().to_string();
    let server = TestServer::start(&[("DASH_CONFIG", path.as_str())]).await;
    let board = server.get_json("/api/boards/wall").await;
    assert_eq!(board["title"], "Shop");
    assert_eq!(board["range"], "7d");
    assert_eq!(
        board["panels"][1],
        json!({"type": "view", "pipeline": "shop", "view": "by-type", "display": "stat", "width": 2})
    );
    let (status, html) = page(&server, "/boards/wall").await;
    assert_eq!(status, 200);
    assert!(html.contains("<h1>Runbook</h1>") && html.contains("last 7 days"), "{html}");

    // The CLI, on the same data directory (SQLite) or database.
    let env = server.env();
    let file = server.dir.path().join("board.json");
    std::fs::write(&file, r#"{"range": "1h", "panels": [{"type": "pipeline", "pipeline": "shop", "width": 1}]}"#)
        .unwrap();
    let file_arg = file.display().to_string();
    let out = run_dashd(server.dir.path(), &env, &["board", "apply", "small", "--file", &file_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("board small: saved"));
    let out = run_dashd(server.dir.path(), &env, &["board", "apply", "small", "--file", &file_arg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("board small: unchanged"));
    assert_eq!(server.get_json("/api/boards/small").await["panels"][0]["width"], 1);
    std::fs::write(&file, r#"{"panels": [{"type": "pipeline", "pipeline": "nope"}]}"#).unwrap();
    let out = run_dashd(server.dir.path(), &env, &["board", "apply", "small", "--file", &file_arg]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("panels[0].pipeline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_dashd(server.dir.path(), &env, &["board", "apply", "small", "--file", "/dev/zero"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than a board can be"), "{out:?}");
    let out = run_dashd(server.dir.path(), &env, &["board", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("small") && listed.contains("wall") && listed.contains("Shop"), "{listed}");
    let out = run_dashd(server.dir.path(), &env, &["board", "show", "wall"]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["panels"], board["panels"]);
    let out = run_dashd(server.dir.path(), &env, &["board", "delete", "small"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.client.get(server.url("/api/boards/small")).send().await.unwrap().status(), 404);

    // A bad board in the config file stops the start, naming it.
    std::fs::write(
        config.path(),
        "[boards.wall]\n[[boards.wall.panels]]\ntype = \"pipeline\"\npipeline = \"shop\"\nwidth = 7\n",
    )
    .unwrap();
    let out = run_dashd(server.dir.path(), &[("DASH_CONFIG", path.as_str())], &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("boards.wall.panels[0].width"), "{text}");
}

/// A WebSocket to `/live` with `query` (`?share=…`); the HTTP status when it is refused.
async fn live(server: &TestServer, query: &str) -> Result<crate::live::Socket, u16> {
    let url = server.base.replacen("http://", "ws://", 1) + "/live" + query;
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_share_link_opens_its_board_and_live_for_its_pipelines_only_until_revoked_or_expired() {
    let token = "letmein";
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms"), ("DASH_ADMIN_TOKEN", token)]).await;
    let orders = server.create_pipeline("orders").await;
    let payroll = server.create_pipeline("payroll").await;
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(token);
    let response = admin(server.client.post(server.url("/api/boards")))
        .json(&json!({"name": "wall", "panels": [
            {"type": "pipeline", "pipeline": "orders"},
            {"type": "note", "text": "Orders *today*"}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = admin(server.client.post(server.url("/api/boards/wall/shares")))
        .json(&json!({"expires_in": "7days"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let share: Value = response.json().await.unwrap();
    let path = share["path"].as_str().unwrap().to_owned();
    let share_token = share["token"].as_str().unwrap().to_owned();
    assert_eq!(path, format!("/share/{share_token}"));
    assert_eq!(share["expired"], false);
    // Listed on the board, without its token.
    let listed = admin(server.client.get(server.url("/api/boards/wall/shares"))).send().await.unwrap();
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["shares"][0]["id"], share["id"]);
    assert!(!listed.to_string().contains(&share_token), "{listed}");

    // Without a session: the board through its link, and nothing else.
    let visitor = crate::support::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: String| {
        let request = visitor.get(server.url(&path));
        async move { request.send().await.unwrap() }
    };
    let response = get(path.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let html = response.text().await.unwrap();
    assert!(html.contains("<em>today</em>") && html.contains("events per 10 minutes"), "{html}");
    assert!(html.contains(&format!(r#"data-live="/live?share={share_token}""#)), "{html}");
    assert!(html.contains(&format!(r#"data-refresh="{path}/panels/0?range=24h""#)), "{html}");
    assert!(!html.contains("href=\"/pipelines") && !html.contains("href=\"/boards"), "no way elsewhere: {html}");
    let fragment = get(format!("{path}/panels/0?range=5m")).await;
    assert_eq!(fragment.status(), 200);
    let kiosk = get(format!("{path}?kiosk=1")).await.text().await.unwrap();
    assert!(kiosk.contains(r#"class="kiosk""#) && kiosk.contains("range=1h&amp;kiosk=1"), "{kiosk}");
    for other in ["/boards/wall", "/boards", "/", "/pipelines/orders", "/boards/wall/panels/0", "/cluster"] {
        let status = get(other.to_owned()).await.status().as_u16();
        assert!(status == 401 || (300..400).contains(&status), "{other}: {status}");
    }
    for api in ["/api/boards", "/api/boards/wall", "/api/pipelines", "/api/pipelines/orders/events"] {
        assert_eq!(get(api.to_owned()).await.status(), 401, "{api}");
        let with_share = visitor.get(server.url(&format!("{api}?share={share_token}"))).send().await.unwrap();
        assert_eq!(with_share.status(), 401, "{api}");
    }

    // /live through the link: the board's pipelines, and no other.
    assert_eq!(live(&server, "").await.err(), Some(401));
    let mut socket = live(&server, &format!("?share={share_token}")).await.unwrap();
    crate::live::send(&mut socket, json!({"type": "subscribe", "pipeline": "payroll"})).await;
    let refused = crate::live::next(&mut socket).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("pipeline_not_found")),
        "{refused}"
    );
    crate::live::send(&mut socket, json!({"type": "subscribe", "pipeline": "orders"})).await;
    assert_eq!(crate::live::next(&mut socket).await["type"], "snapshot");
    // A view the board does not show: its name never reaches the link's holder.
    let response = admin(server.client.post(server.url("/api/pipelines/orders/views")))
        .json(&json!({"name": "margin-by-customer", "aggregate": "count", "group_by": "/customer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(server.post_json(&payroll, "p-1", r#"{"id":"p-1"}"#).await.status(), 202);
    assert_eq!(server.post_json(&orders, "o-1", r#"{"id":"o-1","customer":"c1"}"#).await.status(), 202);
    let update = crate::live::next(&mut socket).await;
    assert_eq!((update["type"].as_str(), update["pipeline"].as_str()), (Some("update"), Some("orders")), "{update}");
    assert!(!update.to_string().contains("margin-by-customer"), "{update}");

    let csv = get(format!("{path}/panels/0/export?format=csv")).await;
    assert_eq!(csv.status(), 200);
    assert!(csv.text().await.unwrap().starts_with("bucket_start,events\n"));

    // Revoked: the page and /live are closed to it, the socket already open too (within the
    // 5 s between its checks).
    let id = share["id"].as_str().unwrap();
    let response =
        admin(server.client.delete(server.url(&format!("/api/boards/wall/shares/{id}")))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let closed = crate::live::next(&mut socket).await;
    assert_eq!(
        (closed["type"].as_str(), closed["code"].as_str()),
        (Some("error"), Some("share_link_closed")),
        "{closed}"
    );
    assert_eq!(get(path.clone()).await.status(), 401);
    assert_eq!(get(format!("{path}/panels/0")).await.status(), 401);
    assert_eq!(get(format!("{path}/panels/0/export")).await.status(), 401);
    assert_eq!(live(&server, &format!("?share={share_token}")).await.err(), Some(401));

    // Expired: the same.
    let response = admin(server.client.post(server.url("/api/boards/wall/shares")))
        .json(&json!({"expires_in": "1s"}))
        .send()
        .await
        .unwrap();
    let short: Value = response.json().await.unwrap();
    let short_path = short["path"].as_str().unwrap().to_owned();
    assert_eq!(get(short_path.clone()).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(get(short_path.clone()).await.status(), 401);
    let listed = admin(server.client.get(server.url("/api/boards/wall/shares"))).send().await.unwrap();
    assert_eq!(listed.json::<Value>().await.unwrap()["shares"][0]["expired"], true);
    // A made-up or malformed link is no better.
    for bad in ["/share/dash_0000", "/share/%00", &format!("/share/{}", "x".repeat(300))] {
        let status = get(bad.to_owned()).await.status().as_u16();
        assert!(status == 401 || status == 429, "{bad}: {status}");
    }
    let refused = admin(server.client.post(server.url("/api/boards/wall/shares")))
        .json(&json!({"expires_in": "forever"}))
        .send()
        .await
        .unwrap();
    let refused = assert_error(refused, 422, "invalid_share").await;
    assert_eq!(refused["error"]["field"], "expires_in");
}

const STATUS: &str = "document.getElementById('live-status').dataset.state";
/// The count on the board's first panel (its pipeline's events).
const PANEL_COUNT: &str = "document.querySelector('.board-panel [data-field=count]').textContent";

#[tokio::test]
async fn a_person_composes_a_board_shares_it_and_a_colleague_watches_it_live() {
    if crate::support::postgres_admin().is_some() {
        return; // the browser runs once, on the default store; the pages' queries run on both
    }
    let admin_token = "letmein";
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "200ms"), ("DASH_ADMIN_TOKEN", admin_token)]).await;
    let orders = server.create_pipeline("orders").await;
    let first: String = (0..3).map(|i| format!("{{\"id\":\"o{i}\",\"type\":\"paid\"}}\n")).collect();
    assert_eq!(server.post_signed(&orders, "first", "application/x-ndjson", &first).await.status(), 202);
    server.wait_for_count(&orders, 3, Duration::from_secs(15)).await;
    let response = server
        .client
        .post(server.url("/api/pipelines/orders/views"))
        .bearer_auth(admin_token)
        .json(&json!({"name": "by-type", "aggregate": "count", "group_by": "/type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // The owner signs in and composes a board through the forms.
    let mut owner = Browser::launch().await;
    owner.open(&server.url("/boards")).await;
    owner.wait_for("location.pathname === '/login'", Duration::from_secs(10)).await;
    owner
        .eval(&format!(
            "document.querySelector('input[name=token]').value = '{admin_token}'; document.querySelector('.login form').submit()"
        ))
        .await;
    owner
        .wait_for("location.pathname === '/boards' && document.readyState === 'complete'", Duration::from_secs(15))
        .await;
    owner
        .eval(
            "const f = document.querySelector('form.board-form'); f.name.value = 'wall'; f.title.value = 'The wall'; \
             f.submit()",
        )
        .await;
    owner.wait_for("location.pathname === '/boards/wall/edit'", Duration::from_secs(15)).await;
    for (what, display) in [("pipeline:orders", "chart"), ("view:orders/by-type", "table")] {
        owner
            .wait_for(
                "document.readyState === 'complete' && !!document.querySelector('form.add-panel')",
                Duration::from_secs(15),
            )
            .await;
        owner
            .eval(&format!(
                "const f = document.querySelector('form.add-panel'); f.what.value = '{what}'; \
                 f.display.value = '{display}'; f.submit()"
            ))
            .await;
        owner
            .wait_for(
                &format!(
                    "document.readyState === 'complete' && document.querySelectorAll('tr[data-panel]').length === {}",
                    if what.starts_with("pipeline") { 1 } else { 2 }
                ),
                Duration::from_secs(15),
            )
            .await;
    }
    owner.open(&server.url("/boards/wall")).await;
    owner.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(20)).await;
    assert_eq!(owner.eval(PANEL_COUNT).await, "3");
    owner.wait_for("document.querySelector('.fresh').textContent.startsWith('updated')", Duration::from_secs(5)).await;

    // Live: more events move the panel without a reload.
    owner.eval("window.sameDocument = true").await;
    let more: String = (3..5).map(|i| format!("{{\"id\":\"o{i}\",\"type\":\"refunded\"}}\n")).collect();
    assert_eq!(server.post_signed(&orders, "second", "application/x-ndjson", &more).await.status(), 202);
    owner.wait_for(&format!("{PANEL_COUNT} === '5'"), Duration::from_secs(15)).await;
    owner.wait_for("document.querySelector('table.groups') && document.querySelector('table.groups').textContent.includes('refunded')", Duration::from_secs(15)).await;
    assert_eq!(owner.eval("window.sameDocument === true").await, true);
    owner.screenshot("board-live").await;

    // A share link, made in the editor.
    owner.open(&server.url("/boards/wall/edit")).await;
    owner.eval("document.querySelector('form[action$=\"/shares\"]').submit()").await;
    owner
        .wait_for(
            "document.readyState === 'complete' && !!document.querySelector('.share-url')",
            Duration::from_secs(15),
        )
        .await;
    let link = owner.eval("document.querySelector('.share-url').href").await.as_str().unwrap().to_owned();
    assert!(link.contains("/share/dash_"), "{link}");

    // A colleague with no session opens it in a fresh profile and watches it live.
    let mut colleague = Browser::launch().await;
    colleague.open(&link).await;
    colleague.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(20)).await;
    assert_eq!(colleague.eval(PANEL_COUNT).await, "5");
    assert_eq!(
        colleague.eval("document.querySelectorAll('a[href^=\"/pipelines\"], a[href^=\"/boards\"]').length").await,
        0
    );
    let last: String = (5..7).map(|i| format!("{{\"id\":\"o{i}\",\"type\":\"paid\"}}\n")).collect();
    assert_eq!(server.post_signed(&orders, "third", "application/x-ndjson", &last).await.status(), 202);
    colleague.wait_for(&format!("{PANEL_COUNT} === '7'"), Duration::from_secs(15)).await;
    // Nothing else opens for it.
    colleague.open(&server.url("/boards/wall")).await;
    colleague.wait_for("location.pathname === '/login'", Duration::from_secs(10)).await;

    // On a wall: no chrome, the grid across the screen.
    colleague.open(&format!("{link}?kiosk=1")).await;
    colleague.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(20)).await;
    assert_eq!(colleague.eval("document.body.classList.contains('kiosk')").await, true);
    assert_eq!(colleague.eval("getComputedStyle(document.querySelector('.crumbs') ?? document.body).display === 'none' || !document.querySelector('.crumbs')").await, true);
    let grid_share = colleague
        .eval("document.querySelector('.board-grid').getBoundingClientRect().width / window.innerWidth")
        .await
        .as_f64()
        .unwrap();
    assert!(grid_share > 0.95, "the grid spans the screen: {grid_share}");
    colleague.screenshot("board-kiosk").await;

    // A panel's CSV, downloaded as a person would.
    let downloads = tempfile::tempdir().unwrap();
    colleague.allow_downloads(downloads.path()).await;
    colleague.eval("document.querySelector('.exports a').click()").await;
    let file = downloads.path().join("wall-1-24h.csv");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no download in {:?}",
            std::fs::read_dir(downloads.path()).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    let total: i64 = csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap()).sum();
    assert!(csv.starts_with("bucket_start,events\n") && total == 7, "{csv}");
}
