//! A bounded fuzz of the webhook route and the API against the real binary: a few thousand
//! mutated, correctly signed webhooks and hostile API requests, on whichever store the suite runs.
//! It fails on any 5xx (but a 503 with `Retry-After`), an answer that is not JSON, an answer
//! slower than 10 s, a panic in the node's log, or a 202 for a body the contract refuses (checked
//! by an oracle that does not share the node's code: serde_json's own parser and a walk of the
//! value). The seed is printed; `DASH_FUZZ_SEED` replays one.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TestServer, now_secs};

/// Webhook cases and API cases per run.
const WEBHOOK_CASES: usize = 5000;
const API_CASES: usize = 3000;

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SEEDS: &[&str] = &[
    r#"{"id":"a","type":"order.created","amount":42.5,"tags":["x","y"],"nested":{"k":[1,2,{"z":null}]}}"#,
    r#"[{"id":"b1","n":1},{"id":"b2","n":2,"timestamp":"2024-01-02T03:04:05Z"}]"#,
    r#"{"timestamp":1700000000000,"s":"\u00e9\ud83d\ude00","big":18446744073709551617}"#,
    r#"{"id":7,"deep":[[[[[[[[1]]]]]]]]}"#,
];

/// Fragments a hostile sender splices in.
const FRAGMENTS: &[&str] = &[
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "1e309",
    "-1e400",
    "1e-400",
    "99999999999999999999999999999999999999",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "\n",
    "\u{0}",
    "\u{7f}",
    "é",
    "\"id\":",
    "\"timestamp\":-1",
    "\"timestamp\":\"soon\"",
    "\"id\":{\"x\":1}",
    "\"id\":\"\"",
];

fn mutate(rng: &mut Rng) -> String {
    let mut body = rng.pick(SEEDS).as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(body.len() + 1);
        match rng.below(7) {
            0 => {
                let fragment = rng.pick(FRAGMENTS).as_bytes();
                body.splice(at..at, fragment.iter().copied());
            }
            1 if !body.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(body.len());
                body.drain(at.min(end)..end);
            }
            2 if at < body.len() => body[at] = rng.next() as u8,
            3 => {
                let depth = *rng.pick(&[63usize, 64, 65, 130, 5000]);
                let nest = format!("{{\"n\":{}0{}}}", "[".repeat(depth - 1), "]".repeat(depth - 1));
                body = nest.into_bytes();
            }
            4 => {
                let digits = *rng.pick(&[200usize, 308, 309, 400, 5000]);
                body = format!("{{\"n\":{}}}", "9".repeat(digits)).into_bytes();
            }
            5 => body.truncate(at),
            _ => {
                let fragment = rng.pick(FRAGMENTS).as_bytes();
                body.extend_from_slice(fragment);
            }
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Depth of arrays and objects (the top level counts as 1), and whether any string holds NUL.
fn shape(value: &Value) -> (usize, bool) {
    match value {
        Value::Array(items) => {
            let inner = items.iter().map(shape).fold((0, false), |a, b| (a.0.max(b.0), a.1 || b.1));
            (inner.0 + 1, inner.1)
        }
        Value::Object(map) => {
            let inner = map.values().map(shape).fold((0, false), |a, b| (a.0.max(b.0), a.1 || b.1));
            (inner.0 + 1, inner.1 || map.keys().any(|k| k.contains('\0')))
        }
        Value::String(text) => (0, text.contains('\0')),
        _ => (0, false),
    }
}

/// Whether the contract surely refuses `body` sent as `application/json`: not JSON to serde_json
/// (which refuses lone surrogates and numbers past a float), or an event nested deeper than 64,
/// or holding NUL.
fn surely_refused(body: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(body) else { return true };
    let events: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    events.iter().any(|event| {
        let (depth, nul) = shape(event);
        !event.is_object() || depth > 64 || nul
    })
}

fn check_answer(case: &str, status: u16, content_type: &str, retry_after: bool, elapsed: Duration) {
    assert!(elapsed < Duration::from_secs(10), "{case}: answered after {elapsed:?}");
    assert!(status < 500 || (status == 503 && retry_after), "{case}: {status}");
    assert!(
        content_type.starts_with("application/json") || content_type.starts_with("text/html"),
        "{case}: {content_type}"
    );
}

#[tokio::test]
async fn bounded_fuzz_of_the_webhook_route_and_the_api() {
    let seed = std::env::var("DASH_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("DASH_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "200ms")]).await;
    let p = server.create_pipeline("fuzzed").await;
    let url = server.url(&format!("/webhooks/{}", p.id));
    let content_types = ["application/json", "application/x-ndjson", "application/cloudevents+json", "text/plain"];

    let started = Instant::now();
    let mut accepted = 0;
    for case in 0..WEBHOOK_CASES {
        let body = mutate(&mut rng);
        let content_type = *rng.pick(&content_types);
        let id = format!("fz{case}");
        let ts = now_secs();
        let t0 = Instant::now();
        let response = server
            .client
            .post(&url)
            .header("content-type", content_type)
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", p.secret.sign(&id, ts, body.as_bytes()))
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {case} (seed {seed}): {e}"));
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let retry = response.headers().contains_key("retry-after");
        let label = format!("webhook case {case} (seed {seed}, {content_type}) {body:.200}");
        check_answer(&label, status, &kind, retry, t0.elapsed());
        if status == 202 {
            accepted += 1;
            if content_type != "application/x-ndjson" {
                assert!(!surely_refused(&body), "{label}: 202 for a body the contract refuses");
            }
        }
    }

    let segments =
        ["fuzzed", "nope", "%00", "a%00b", "%FF", "%2F", "..", "%C0%AE", "x".repeat(300).leak(), "%E2%80%AE", ""];
    let numbers = [
        "0",
        "-1",
        "1",
        "60000",
        "9223372036854775807",
        "-9223372036854775808",
        "99999999999999999999",
        "1e309",
        "NaN",
        "",
        "2024-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "%00",
    ];
    let buckets = ["1m", "0m", "59s", "1h", "366days", "367days", "99999999999999999y", "%00", "-1m", ""];
    let methods = [reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::PATCH, reqwest::Method::DELETE];
    for case in 0..API_CASES {
        let segment = *rng.pick(&segments);
        let path = match rng.below(6) {
            0 => format!("/api/pipelines/{segment}"),
            1 => format!(
                "/api/pipelines/{segment}/series?from={}&to={}&bucket={}",
                rng.pick(&numbers),
                rng.pick(&numbers),
                rng.pick(&buckets)
            ),
            2 => format!("/api/pipelines/{segment}/events?limit={}", rng.pick(&numbers)),
            3 => format!("/pipelines/{segment}?range={}", rng.pick(&["5m", "1h", "24h", "%00", "x"])),
            4 => format!("/login?next={}", rng.pick(&["%0A", "%2F%2Fevil", "/%09/x", "/ok", "%00", "%7F"])),
            _ => format!("/api/pipelines/{segment}/source"),
        };
        let method = rng.pick(&methods).clone();
        let body = match rng.below(4) {
            0 => format!("{{\"name\":\"{}\"}}", rng.pick(&segments)),
            1 => r#"{"retention":"99999999years"}"#.to_owned(),
            2 => mutate(&mut rng),
            _ => String::new(),
        };
        let t0 = Instant::now();
        let response = server
            .client
            .request(method.clone(), server.url(&path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("api case {case} (seed {seed}): {method} {path}: {e}"));
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let retry = response.headers().contains_key("retry-after");
        let label = format!("api case {case} (seed {seed}) {method} {path} {body:.120}");
        if (300..400).contains(&status) {
            continue; // redirects (login) carry no body
        }
        check_answer(&label, status, &kind, retry, t0.elapsed());
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "a panic in the node's log (seed {seed}):\n{log}");
    let health = server.client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    println!(
        "{WEBHOOK_CASES} webhook cases ({accepted} accepted) and {API_CASES} API cases in {:?}",
        started.elapsed()
    );
}
