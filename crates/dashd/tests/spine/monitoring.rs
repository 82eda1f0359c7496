//! What an operator watches: `/metrics` as Prometheus reads it, and the alert rules of
//! `deploy/prometheus`, unit-tested with promtool and checked against the metrics Dash has.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::TestServer;

const FAST_FLUSH: &[(&str, &str)] = &[("DASH_FLUSH_INTERVAL", "100ms")];

fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?}:\n{shown}");
    shown
}

pub async fn metrics_text(server: &TestServer) -> String {
    server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of the first sample whose line starts with `series` (name and labels as written).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn the_metrics_show_the_node_its_limits_and_its_requests_and_pass_promtool() {
    let server = TestServer::start(FAST_FLUSH).await;
    let p = server.create_pipeline("metrics").await;
    assert_eq!(server.post_json(&p, "m1", "{}").await.status(), 202);
    server.wait_for_count(&p, 1, Duration::from_secs(10)).await;
    let wandering = server.client.get(server.url("/no/such/place-9f2c")).send().await.unwrap();
    assert_eq!(wandering.status(), 404);
    let refused = server.client.post(server.url(&format!("/webhooks/{}", p.id))).bearer_auth("dash_wrong");
    assert_eq!(refused.header("content-type", "application/json").body("{}").send().await.unwrap().status(), 401);
    // The job scheduler reads the queue's depth on its first pass, which a loaded machine can
    // hold back: wait for it (up to 20 s) rather than for a fixed time.
    let depth = r#"dash_jobs_queue_depth{state="pending"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut text = metrics_text(&server).await;
    while !text.lines().any(|l| l.starts_with(depth)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = metrics_text(&server).await;
    }
    assert!(text.contains("# HELP dash_events_accepted_total"), "{text}");
    for described in ["dash_auth_failures_total", "dash_auth_throttled_total", "dash_webhook_refused_total"] {
        assert!(text.contains(&format!("# HELP {described}")), "{described}: {text}");
    }
    promtool(&["check", "metrics"], Some(&text));

    for series in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "dash_memory_limit_bytes",
        "dash_cpu_limit_cores",
        "dash_intake_spool_limit_bytes",
        r#"dash_node_info{role="all",region="local",node="#,
        r#"dash_jobs_queue_depth{state="pending"}"#,
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "no {series} in:\n{text}");
    }
    assert_eq!(sample(&text, "dash_store_up"), Some(1.0), "{text}");
    assert!(sample(&text, "dash_memory_limit_bytes").is_some_and(|m| m > 0.0));
    let webhook = r#"dash_http_requests_total{route="/webhooks/{pipeline}",method="POST",status="202"}"#;
    assert!(sample(&text, webhook).is_some_and(|n| n >= 1.0), "{text}");
    assert!(text.contains(r#"dash_http_request_duration_seconds_bucket{route="/webhooks/{pipeline}",le="0.005"}"#));
    // A path nobody routes is one series, `unmatched`; the path sent never becomes a label.
    assert!(text.contains(r#"route="unmatched",method="GET",status="404""#), "{text}");
    assert!(!text.contains("place-9f2c") && !text.contains("/webhooks/metrics"), "{text}");
    // The embedded bus is no broker: nothing to alert on.
    assert!(!text.contains("dash_bus_connected"), "{text}");
}

/// Every series an alert reads exists in Dash (described in the metrics catalog, or the
/// process collector's), so a renamed metric cannot leave a rule silently watching nothing;
/// and the rules pass their unit tests.
#[test]
fn the_alert_rules_pass_their_tests_and_read_metrics_dash_has() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).unwrap();
    let catalog = include_str!("../../src/metrics_catalog.rs");
    let process = ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds"];
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !(word.starts_with("dash_") || word.starts_with("process_")) {
            continue;
        }
        named += 1;
        let metric = word.strip_suffix("_bucket").unwrap_or(word);
        assert!(
            catalog.contains(&format!("\"{metric}\"")) || process.contains(&metric),
            "alerts.yml reads {word}, which Dash does not export"
        );
    }
    assert!(named >= 15, "the rules name Dash's metrics ({named})");
    let checked = promtool(&["check", "rules", deploy.join("alerts.yml").to_str().unwrap()], None);
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", deploy.join("alerts_test.yml").to_str().unwrap()], None);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let runbook = std::fs::read_to_string(deploy.join("../../docs/OPERATIONS.md")).unwrap();
    for anchor in rules.lines().filter_map(|l| l.split("docs/OPERATIONS.md#").nth(1)) {
        let anchor = anchor.trim_end_matches('"');
        let heading = runbook.lines().filter_map(|l| l.strip_prefix("## ")).find(|h| {
            let slug: String = h
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            slug == anchor
        });
        assert!(heading.is_some(), "docs/OPERATIONS.md has no section for #{anchor}");
    }
}
