//! The dashboard: server-rendered pages over HTTP, the login session, and a real browser that
//! watches counts move, survives a server restart and signs in.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::chromium::Browser;
use crate::support::{TestServer, postgres_admin};

const STATUS: &str = "document.getElementById('live-status').dataset.state";
const COUNT: &str = "document.querySelector('.counters [data-field=count]').textContent";

async fn page(server: &TestServer, path: &str) -> (StatusCode, String) {
    let response = server.client.get(server.url(path)).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The text of the first `<code class="{class}">…</code>`, unescaped.
fn code_block(html: &str, class: &str) -> String {
    let start = html.find(&format!("<code class=\"{class}\">")).expect("code block") + class.len() + 15;
    let end = start + html[start..].find("</code>").unwrap();
    html[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_pipeline_page_shows_how_long_a_202_takes_to_reach_the_screen() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "300ms")]).await;
    let pipeline = server.create_pipeline("timed").await;
    let (_, panel) = page(&server, "/pipelines/timed/panel").await;
    assert!(panel.contains(r#"<div class="value">–</div>"#), "no batch yet: {panel}");
    for i in 0..3 {
        assert_eq!(server.post_json(&pipeline, &format!("t{i}"), r#"{"n":1}"#).await.status(), 202);
    }
    server.wait_for_count(&pipeline, 3, Duration::from_secs(15)).await;
    let (_, panel) = page(&server, "/pipelines/timed/panel").await;
    let figures = panel.split(">p50 ").nth(1).and_then(|rest| rest.split('<').next()).expect("a p50 figure");
    // The buffer flushes every 300 ms: no event waits for its figure much longer than that.
    let (p50, p99) = figures.split_once(" · p99 ").unwrap();
    let ms = |text: &str| match text.strip_suffix(" ms") {
        Some(ms) => ms.parse::<f64>().unwrap(),
        None => text.strip_suffix(" s").unwrap().parse::<f64>().unwrap() * 1000.0,
    };
    assert!(ms(p50) <= ms(p99) && ms(p99) < 5_000.0, "{figures}");
}

#[tokio::test]
async fn pages_show_the_figures_of_the_api_without_any_script() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let (status, html) = page(&server, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("No pipelines yet"), "{html}");

    let pipeline = server.create_pipeline("Orders").await;
    let ndjson: String = (0..7).map(|i| format!("{{\"id\":\"o{i}\",\"total\":{i}}}\n")).collect();
    assert_eq!(server.post_signed(&pipeline, "batch-1", "application/x-ndjson", &ndjson).await.status(), 202);
    server.wait_for_count(&pipeline, 7, Duration::from_secs(10)).await;

    let (status, html) = page(&server, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"data-field="count" class="num">7<"#), "{html}");
    assert!(html.contains("svg") && html.contains("7 events in the last hour"), "{html}");

    let (status, html) = page(&server, "/pipelines/orders").await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"data-field="count" class="value big">7<"#), "{html}");
    assert_eq!(html.matches("<td class=\"event-id\">").count(), 7, "{html}");
    assert!(html.contains("&quot;total&quot;:6") || html.contains("\"total\":6"), "payload preview: {html}");
    assert!(!html.contains(&pipeline.secret.expose()), "the secret is shown only on demand");

    let (status, html) = page(&server, "/pipelines/orders?range=24h").await;
    assert_eq!(status, 200);
    assert!(html.contains("Events per 10 minutes, last 24 hours"), "{html}");
    assert_eq!(html.matches("<rect").count(), 144);

    for fragment in ["/pipelines/orders/panel?range=5m", "/pipelines/orders/latest?range=5m", "/pipelines/orders/row"] {
        let (status, html) = page(&server, fragment).await;
        assert_eq!(status, 200, "{fragment}");
        assert!(html.starts_with("<section") || html.starts_with("<tr"), "{fragment}: {html}");
    }

    let (status, html) = page(&server, "/pipelines/nope").await;
    assert_eq!(status, 404);
    assert!(html.contains("There is no pipeline"), "{html}");

    let (status, html) = page(&server, "/cluster").await;
    assert_eq!(status, 200);
    assert!(html.contains("(this node)") && html.contains("healthy"), "{html}");
    let cluster = server.get_json("/api/cluster").await;
    assert_eq!(cluster["nodes"][0]["status"], "up", "{cluster}");

    let script = server.client.get(server.url("/assets/live.js")).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
}

#[tokio::test]
async fn the_signed_curl_example_on_the_page_is_accepted() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let pipeline = server.create_pipeline("Curl").await;
    let (_, html) = page(&server, "/pipelines/curl?reveal=secret").await;
    let snippet = code_block(&html, "signed-curl");
    assert!(snippet.contains(&pipeline.secret.expose()), "{snippet}");
    let output = std::process::Command::new("bash").arg("-c").arg(&snippet).output().unwrap();
    assert!(output.status.success(), "{snippet}\n{}", String::from_utf8_lossy(&output.stderr));
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(!body.contains("error"), "{body}");
    server.wait_for_count(&pipeline, 1, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn with_an_admin_token_pages_need_a_session_from_the_login_form() {
    let server = TestServer::start(&[("DASH_ADMIN_TOKEN", "letmein")]).await;
    server.create_pipeline("Private").await;
    let client = crate::support::http_client().redirect(Policy::none()).build().unwrap();

    let response = client.get(server.url("/pipelines/private?range=5m")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login?next=%2Fpipelines%2Fprivate%3Frange%3D5m");
    let response = client.get(server.url("/pipelines/private/panel")).send().await.unwrap();
    assert_eq!(response.status(), 401, "fragments are refused, not redirected");

    let login =
        |token: &str, next: &str| client.post(server.url("/login")).form(&[("token", token), ("next", next)]).send();
    let wrong = login("guess", "/cluster").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("That is not the admin token."));

    let escaping = login("letmein", "//elsewhere.example/").await.unwrap();
    assert_eq!(escaping.headers()["location"], "/", "no open redirect");

    let ok = login("letmein", "/cluster").await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/cluster");
    let set_cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let with_cookie = |path: &str| client.get(server.url(path)).header("cookie", cookie.as_str()).send();
    let cluster = with_cookie("/cluster").await.unwrap();
    assert_eq!(cluster.status(), 200);
    assert!(cluster.text().await.unwrap().contains("Sign out"));
    assert_eq!(with_cookie("/api/pipelines").await.unwrap().status(), 200, "the session also opens the API");
    assert_eq!(with_cookie("/pipelines/private/row").await.unwrap().status(), 200);

    let url = server.base.replacen("http://", "ws://", 1) + "/live";
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    request.headers_mut().insert("cookie", cookie.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok(), "the session opens /live");

    let out = client.post(server.url("/logout")).header("cookie", cookie.as_str()).send().await.unwrap();
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let forged = client.get(server.url("/")).header("cookie", "dash_session=99999999999.AAAA").send().await.unwrap();
    assert_eq!(forged.status(), 303);
}

#[tokio::test]
async fn a_person_sees_counts_move_and_the_page_catch_up_after_a_restart() {
    if postgres_admin().is_some() {
        return; // the browser runs once, on the default store; the pages' queries run on both
    }
    let mut server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "200ms")]).await;
    let pipeline = server.create_pipeline("Checkout").await;
    let mut browser = Browser::launch().await;
    browser.open(&server.url("/pipelines/checkout")).await;
    browser.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(20)).await;
    assert_eq!(browser.eval(COUNT).await, "0");
    browser.eval("window.sameDocument = true").await;

    let ndjson: String = (0..5).map(|i| format!("{{\"id\":\"c{i}\",\"cart\":{i}}}\n")).collect();
    assert_eq!(server.post_signed(&pipeline, "first", "application/x-ndjson", &ndjson).await.status(), 202);
    browser.wait_for(&format!("{COUNT} === '5'"), Duration::from_secs(15)).await;
    assert_eq!(server.count(&pipeline).await, 5, "the page shows what the API says");
    // The chart and the latest events are fragments the script re-fetches after an update.
    browser.wait_for("document.querySelectorAll('table.events tbody tr').length === 5", Duration::from_secs(15)).await;
    browser.screenshot("dashboard-live").await;

    server.kill9();
    browser.wait_for(&format!("['reconnecting', 'stale'].includes({STATUS})"), Duration::from_secs(15)).await;
    server.restart_same_port();
    let more: String = (5..8).map(|i| format!("{{\"id\":\"c{i}\",\"cart\":{i}}}\n")).collect();
    assert_eq!(server.post_signed(&pipeline, "second", "application/x-ndjson", &more).await.status(), 202);
    server.wait_for_count(&pipeline, 8, Duration::from_secs(15)).await;
    browser.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(30)).await;
    browser.wait_for(&format!("{COUNT} === '8'"), Duration::from_secs(15)).await;
    browser.wait_for("document.querySelectorAll('table.events tbody tr').length === 8", Duration::from_secs(15)).await;
    assert_eq!(browser.eval("window.sameDocument === true").await, true, "caught up without a reload");
    assert_eq!(server.count(&pipeline).await, 8);
    browser.screenshot("dashboard-after-restart").await;
}

#[tokio::test]
async fn a_person_signs_in_and_the_page_is_live() {
    if postgres_admin().is_some() {
        return;
    }
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "200ms"), ("DASH_ADMIN_TOKEN", "letmein")]).await;
    let pipeline = server.create_pipeline("Vault").await;
    let mut browser = Browser::launch().await;
    browser.open(&server.url("/pipelines/vault")).await;
    browser.wait_for("location.pathname === '/login'", Duration::from_secs(10)).await;
    browser
        .eval("document.querySelector('input[name=token]').value = 'letmein'; document.querySelector('.login form').submit()")
        .await;
    browser
        .wait_for(
            "location.pathname === '/pipelines/vault' && document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await;
    browser.wait_for(&format!("{STATUS} === 'live'"), Duration::from_secs(20)).await;
    assert_eq!(browser.eval("document.cookie.includes('dash_session')").await, false, "the session cookie is HttpOnly");
    assert_eq!(server.post_json(&pipeline, "v1", r#"{"secret":"kept"}"#).await.status(), 202);
    browser.wait_for(&format!("{COUNT} === '1'"), Duration::from_secs(15)).await;
}
