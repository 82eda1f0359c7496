//! Counting events into the five views of `scripts/bench.py --views`, without I/O: the CPU a
//! batch spends on views per event. `cargo bench -p dash-views --bench counting`; under
//! `valgrind --tool=callgrind` it gives instruction counts that do not depend on the machine's load.

use std::time::Instant;

use std::collections::HashMap;

use dash_views::{BatchCounter, ViewSpec};
use serde_json::json;

fn views() -> Vec<(String, ViewSpec)> {
    [
        ("by-type", json!({"aggregate": "count", "group_by": "/type"})),
        ("revenue", json!({"aggregate": "sum", "field": "/data/amount", "group_by": "/data/currency"})),
        ("items-p95", json!({"aggregate": "p95", "field": "/data/items"})),
        ("customers", json!({"aggregate": "distinct", "field": "/data/customer"})),
        ("web-orders", json!({"aggregate": "count", "filter": {"/data/channel": "web"}})),
    ]
    .into_iter()
    .map(|(name, spec)| (name.to_owned(), ViewSpec::from_json(spec).unwrap()))
    .collect()
}

/// Events like the load generator's, with varied groups, customers and amounts.
fn events(n: usize) -> Vec<(i64, String)> {
    let types = ["order.created", "order.paid", "refund.created"];
    let currencies = ["EUR", "USD", "GBP"];
    (0..n)
        .map(|i| {
            let time = 1_790_000_000_000 + i as i64;
            let payload = format!(
                r#"{{"id":"evt_{i:08}","type":"{}","timestamp":{time},"data":{{"amount":{},"currency":"{}","customer":"cus_{:04}","items":{},"channel":"{}"}}}}"#,
                types[i % 3],
                100 + i % 9000,
                currencies[i % 7 % 3],
                i % 1000,
                1 + i % 10,
                if i % 4 == 0 { "app" } else { "web" },
            );
            (time, payload)
        })
        .collect()
}

fn count(views: &[(String, ViewSpec)], events: &[(i64, String)]) -> usize {
    let mut counter = BatchCounter::new(views, HashMap::new());
    for (time, payload) in events {
        counter.add(*time, payload, None);
    }
    counter.finish().iter().map(|view| view.changes.len()).sum()
}

fn main() {
    let events_per_run: usize = std::env::var("DASH_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let runs: usize = std::env::var("DASH_BENCH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
    let views = views();
    let events = events(events_per_run);
    let mut per_event_ns = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let cells = count(&views, &events);
        per_event_ns.push(started.elapsed().as_nanos() as f64 / events.len() as f64);
        std::hint::black_box(cells);
    }
    per_event_ns.sort_by(f64::total_cmp);
    println!(
        "five views: {:.0} ns per event (median of {runs} runs of {events_per_run} events; runs {:?})",
        per_event_ns[runs / 2],
        per_event_ns.iter().map(|n| n.round()).collect::<Vec<_>>()
    );
}
