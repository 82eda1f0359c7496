//! Views against a computation from scratch: random events (missing fields, non-numbers,
//! duplicates, replays, late events) and random views, made before, between and after batches
//! and changed on the way, with their histories computed in small steps between batches. After
//! every scenario each view's every minute and group equals what the stored events say.

use std::collections::{BTreeMap, HashMap};

use dash_domain::Event;
use dash_views::{Aggregate, Cell, Groups, ViewChanges, ViewSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::tests::{postgres, sqlite};
use crate::view_rollups::RollupRun;
use crate::{BatchEvent, PutMode, Store, testing};

#[derive(Debug, Clone)]
struct GenEvent {
    id: u8,
    minute: u8,
    kind: Option<u8>,
    /// A type of its own (a provider's header), which `$type` reads before the payload's.
    own_kind: Option<u8>,
    amount: Option<AmountGen>,
    customer: Option<u8>,
    latency: Option<u16>,
}

#[derive(Debug, Clone)]
enum AmountGen {
    Number(i32),
    Text,
    Null,
}

#[derive(Debug, Clone)]
struct GenView {
    aggregate: Aggregate,
    field: Option<&'static str>,
    group_by: Option<&'static str>,
    /// Filtered on the payload's `/type`, or on `$type`.
    filtered: Option<&'static str>,
}

/// When each view is made: before batch `at` (or after all of them), and whether it is
/// changed (to another field) before batch `changed_at`.
#[derive(Debug, Clone)]
struct Scenario {
    batches: Vec<Vec<GenEvent>>,
    /// Batches sent again later (a replay after a crash).
    replays: Vec<usize>,
    views: Vec<(GenView, usize, Option<usize>)>,
    step_events: i64,
    /// Rollup runs before batch `at`: as if it were `Some(m)` minutes past two hours after the
    /// first event (the levels fed by the minutes take part of them in), or (`None`) long after
    /// (they take in everything, and every later batch is late for them).
    rollups: Vec<(usize, Option<i16>)>,
    /// Source states a rollup step reads at most.
    rollup_step: i64,
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        0u8..80,
        0u8..8,
        proptest::option::of(0u8..4),
        proptest::option::weighted(0.3, 0u8..4),
        proptest::option::weighted(
            0.8,
            prop_oneof![8 => (-500i32..5000).prop_map(AmountGen::Number), 1 => Just(AmountGen::Text), 1 => Just(AmountGen::Null)],
        ),
        proptest::option::of(0u8..30),
        proptest::option::of(0u16..2000),
    )
        .prop_map(|(id, minute, kind, own_kind, amount, customer, latency)| GenEvent {
            id,
            minute,
            kind,
            own_kind,
            amount,
            customer,
            latency,
        })
}

fn gen_view() -> impl Strategy<Value = GenView> {
    (
        proptest::sample::select(Aggregate::ALL.to_vec()),
        proptest::option::of(proptest::sample::select(vec![
            "/amount",
            "/latency_ms",
            "/customer",
            "/type",
            "$type",
            "/nowhere",
            "/data/amount",
        ])),
        proptest::option::of(proptest::sample::select(vec![
            "/type",
            "$type",
            "/customer",
            "/nowhere",
            "/data/currency",
            "/data",
        ])),
        proptest::option::of(proptest::sample::select(vec!["/type", "$type"])),
    )
        .prop_map(|(aggregate, field, group_by, filtered)| {
            let field = if aggregate == Aggregate::Count { field } else { field.or(Some("/amount")) };
            GenView { aggregate, field, group_by, filtered }
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (proptest::collection::vec(proptest::collection::vec(gen_event(), 1..25), 1..8), 1i64..40).prop_flat_map(
        |(batches, step_events)| {
            let n = batches.len();
            (
                Just(batches),
                proptest::collection::vec(0..n, 0..3),
                proptest::collection::vec((gen_view(), 0..=n, proptest::option::of(0..=n)), 1..5),
                Just(step_events),
                proptest::collection::vec((0..=n, proptest::option::of(-130i16..=10)), 0..4),
                1i64..30,
            )
                .prop_map(|(batches, replays, views, step_events, rollups, rollup_step)| Scenario {
                    batches,
                    replays,
                    views,
                    step_events,
                    rollups,
                    rollup_step,
                })
        },
    )
}

fn spec_of(view: &GenView) -> ViewSpec {
    let mut spec = ViewSpec::count();
    spec.aggregate = view.aggregate;
    spec.field = view.field.map(str::to_owned);
    spec.group_by = view.group_by.map(str::to_owned);
    if let Some(on) = view.filtered {
        spec.filter.insert(on.into(), json!("t1"));
    }
    spec
}

/// The reference's reading of `spec`: `$type` as a member `/__type` the reference puts in each
/// event (the event's type: its own, else its payload's), so `/type` still reads the payload.
fn reference_spec(spec: &ViewSpec) -> ViewSpec {
    let rename = |name: &str| if name == dash_views::EVENT_TYPE { "/__type".to_owned() } else { name.to_owned() };
    let mut spec = spec.clone();
    spec.field = spec.field.as_deref().map(rename);
    spec.group_by = spec.group_by.as_deref().map(rename);
    spec.filter = spec.filter.iter().map(|(k, v)| (rename(k), v.clone())).collect();
    spec
}

/// The change made to a view on the way: another field (or, for `count`, none).
fn changed(spec: &ViewSpec) -> ViewSpec {
    let mut spec = spec.clone();
    spec.field = match (spec.aggregate, spec.field.as_deref()) {
        (Aggregate::Count, Some(_)) => None,
        (_, Some("/latency_ms")) => Some("/amount".into()),
        _ => Some("/latency_ms".into()),
    };
    spec
}

fn payload(e: &GenEvent) -> String {
    let mut object = serde_json::Map::new();
    if let Some(kind) = e.kind {
        object.insert("type".into(), json!(format!("t{kind}")));
    }
    match &e.amount {
        Some(AmountGen::Number(n)) => object.insert("amount".into(), json!(f64::from(*n) / 4.0)),
        Some(AmountGen::Text) => object.insert("amount".into(), json!("12.5")),
        Some(AmountGen::Null) => object.insert("amount".into(), Value::Null),
        None => None,
    };
    if let Some(customer) = e.customer {
        object.insert("customer".into(), json!(format!("c{customer}")));
    }
    if let Some(latency) = e.latency {
        object.insert("latency_ms".into(), json!(latency));
    }
    if let Some(customer) = e.customer {
        let currency = if customer % 2 == 0 { "EUR" } else { "USD" };
        object.insert("data".into(), json!({ "amount": customer, "currency": currency }));
    }
    let text = Value::Object(object).to_string();
    // Now and then a member twice, which JSON allows: the later one is the event's.
    match (e.id % 7, text.strip_suffix('}')) {
        (0, Some(open)) if open.len() > 1 => format!(r#"{open},"data":{{"currency":"GBP"}}}}"#),
        _ => text,
    }
}

/// `rolled_cases` counts the cases that ended with levels rolled.
async fn run(
    store: &Store,
    pipeline: &str,
    scenario: &Scenario,
    base: i64,
    rolled_cases: &std::sync::atomic::AtomicU32,
) -> Result<(), TestCaseError> {
    store.create_pipeline(pipeline).await.unwrap();
    let batches: Vec<Vec<BatchEvent>> = scenario
        .batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|e| BatchEvent {
                    pipeline: pipeline.into(),
                    event: Event {
                        id: format!("e{}", e.id),
                        time_ms: base + i64::from(e.minute) * 60_000 + i64::from(e.id) * 100,
                        received_ms: base,
                        payload: payload(e),
                        event_type: e.own_kind.map(|k| format!("t{k}")),
                    },
                })
                .collect()
        })
        .collect();
    let mut specs: BTreeMap<String, ViewSpec> = BTreeMap::new();
    for step in 0..=batches.len() {
        for (i, (view, at, change_at)) in scenario.views.iter().enumerate() {
            let name = format!("v{i}");
            if *at == step {
                let spec = spec_of(view);
                store.put_view(pipeline, &name, &spec, PutMode::Create).await.unwrap();
                specs.insert(name.clone(), spec);
            }
            if *change_at == Some(step) && specs.contains_key(&name) {
                let spec = changed(&specs[&name]);
                store.put_view(pipeline, &name, &spec, PutMode::Replace).await.unwrap();
                specs.insert(name, spec);
            }
        }
        for (_, minutes) in scenario.rollups.iter().filter(|(at, _)| *at == step) {
            let now = minutes.map_or(base + 400 * DAY, |m| base + 2 * HOUR + i64::from(m) * 60_000);
            let run = RollupRun { now, budget: std::time::Duration::from_secs(60), step_states: scenario.rollup_step };
            store.roll_up(Some(pipeline), run).await.unwrap();
        }
        // One step of every pending history between batches.
        for pending in store.pending_backfills().await.unwrap() {
            if pending.pipeline == pipeline {
                store.backfill_step(pipeline, &pending.view, pending.generation, scenario.step_events).await.unwrap();
            }
        }
        if let Some(batch) = batches.get(step) {
            store.write_batch(batch).await.unwrap();
            for replay in scenario.replays.iter().filter(|r| **r == step) {
                store.write_batch(&batches[*replay]).await.unwrap();
            }
        }
    }
    // The rest of every history.
    loop {
        let pending: Vec<_> =
            store.pending_backfills().await.unwrap().into_iter().filter(|p| p.pipeline == pipeline).collect();
        if pending.is_empty() {
            break;
        }
        for p in pending {
            store.backfill_step(pipeline, &p.view, p.generation, scenario.step_events).await.unwrap();
        }
    }

    const LEVELS: &str = "SELECT count(*) FROM view_rollups r JOIN views v \
        ON v.pipeline_id = r.pipeline_id AND v.state_key = r.state_key WHERE r.pipeline_id = $1";
    let levels: i64 = match store {
        Store::Sqlite(s) => sqlx::query_scalar(LEVELS).bind(pipeline).fetch_one(&s.readers).await.unwrap(),
        Store::Postgres(s) => sqlx::query_scalar(LEVELS).bind(pipeline).fetch_one(&s.pool).await.unwrap(),
    };
    if levels > 0 {
        rolled_cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let stored = store.recent_events(pipeline, 10_000).await.unwrap();
    for (name, spec) in &specs {
        // From scratch: every stored event, once (no view here has more groups than its bound).
        let mut expected = ViewChanges::default();
        let mut groups = Groups::default();
        let reference = reference_spec(spec);
        for e in &stored {
            let mut value: Value = serde_json::from_str(e.payload.get()).unwrap();
            if let (Some(kind), Some(object)) = (&e.event_type, value.as_object_mut()) {
                object.insert("__type".into(), json!(kind));
            }
            let time = chrono::DateTime::parse_from_rfc3339(&e.time).unwrap().timestamp_millis();
            expected.add(&reference, &mut groups, &value, time);
        }
        let expected_cells = expected.clone().into_cells();
        check_levels(store, pipeline, name, spec, &expected_cells, base).await?;
        let got = store.view_minutes(pipeline, name, i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
        let got: HashMap<(i64, String), Cell> = got.into_iter().map(|(m, g, c)| ((m, g), c)).collect();
        prop_assert_eq!(got.len(), expected.len(), "view {} ({}): cells", name, spec.describe());
        for (key, want) in &expected.into_cells() {
            let cell = got.get(key);
            prop_assert!(cell.is_some(), "view {} ({}): no cell {:?}", name, spec.describe(), key);
            let cell = cell.unwrap();
            prop_assert_eq!((cell.n, cell.skipped), (want.n, want.skipped), "view {} {:?}", name, key);
            let (a, b) = (cell.value(spec.aggregate), want.value(spec.aggregate));
            let close = match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                (a, b) => a == b,
            };
            prop_assert!(close, "view {} ({}) {:?}: {:?} vs {:?}", name, spec.describe(), key, a, b);
        }
    }
    Ok(())
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Reads through the levels (hours, days, all groups together, whatever is rolled) equal the
/// reference's minutes merged the same way: over wide and narrow ranges, aligned or not, in one
/// bucket or many, for all groups together, each, or one.
async fn check_levels(
    store: &Store,
    pipeline: &str,
    name: &str,
    spec: &ViewSpec,
    expected: &[((i64, String), Cell)],
    base: i64,
) -> Result<(), TestCaseError> {
    use crate::GroupsRead;
    let day = base - base.rem_euclid(DAY);
    let first_group = expected.first().map(|((_, g), _)| g.clone()).unwrap_or_default();
    let reads: [(i64, i64, Option<i64>, GroupsRead<'_>); 9] = [
        // Hours inside, minutes at the unaligned edges.
        (base - 2 * HOUR - 90_000, base + 3 * HOUR + 30_000, None, GroupsRead::Merged),
        (base - 2 * HOUR - 90_000, base + 3 * HOUR + 30_000, None, GroupsRead::Each),
        (day - DAY, day + 2 * DAY, None, GroupsRead::Merged),
        (day - DAY, day + 2 * DAY, None, GroupsRead::Each),
        (day - DAY, day + 2 * DAY, Some(HOUR), GroupsRead::Merged),
        (day - DAY, day + 2 * DAY, Some(DAY), GroupsRead::One(&first_group)),
        (day - DAY, day + 2 * DAY, Some(DAY), GroupsRead::Each),
        (base - base.rem_euclid(600_000) - HOUR, base + 2 * HOUR, Some(600_000), GroupsRead::Merged),
        (base + 90_000, base + 7 * 60_000, None, GroupsRead::Each),
    ];
    for (from, to, bucket, groups) in reads {
        let key = |t: i64, group: &str| {
            let t = bucket.map_or(from, |b| from + (t - from).div_euclid(b) * b);
            let group = if groups == GroupsRead::Merged { String::new() } else { group.to_owned() };
            (t, group)
        };
        let mut want: BTreeMap<(i64, String), Cell> = BTreeMap::new();
        for ((minute, group), cell) in expected {
            if *minute < from || *minute >= to || matches!(groups, GroupsRead::One(g) if g != group) {
                continue;
            }
            want.entry(key(*minute, group)).or_insert_with(|| Cell::empty(spec.aggregate)).merge(cell);
        }
        let mut got: BTreeMap<(i64, String), Cell> = BTreeMap::new();
        for (t, group, cell) in store.view_states(pipeline, name, from, to, bucket, groups, usize::MAX).await.unwrap() {
            prop_assert!(t >= from && t < to, "view {}: a state at {} outside {}..{}", name, t, from, to);
            got.entry(key(t, &group)).or_insert_with(|| Cell::empty(spec.aggregate)).merge(&cell);
        }
        let what = format!("view {name} ({}) read {from}..{to} by {bucket:?} {groups:?}", spec.describe());
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{}", what);
        for (k, want) in &want {
            let cell = &got[k];
            prop_assert_eq!((cell.n, cell.skipped), (want.n, want.skipped), "{} {:?}", what, k);
            let (a, b) = (cell.value(spec.aggregate), want.value(spec.aggregate));
            let close = match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                (a, b) => a == b,
            };
            prop_assert!(close, "{} {:?}: {:?} vs {:?}", what, k, a, b);
        }
    }
    Ok(())
}

fn run_cases(store: &Store, cases: u32) {
    let handle = tokio::runtime::Handle::current();
    // The events' eight minutes straddle the hour.
    let base = {
        let now = dash_domain::now_ms();
        now - now.rem_euclid(HOUR) - 4 * 60_000
    };
    let counter = std::sync::atomic::AtomicU32::new(0);
    let rolled_cases = std::sync::atomic::AtomicU32::new(0);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&scenario(), |scenario| {
        let pipeline = format!("prop-{}", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        tokio::task::block_in_place(|| handle.block_on(run(store, &pipeline, &scenario, base, &rolled_cases)))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    assert!(rolled_cases.into_inner() > 0, "some cases have levels rolled (views whose history was done)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_a_computation_from_scratch_on_sqlite() {
    let backend = sqlite().await;
    run_cases(&backend.store, 40);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn views_equal_a_computation_from_scratch_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let backend = postgres(&admin).await;
    run_cases(&backend.store, 24);
    backend.cleanup().await;
}

/// A view's groups stay within `max_groups` across batches (whose groups are kept between
/// batches) and across its history (which names groups of its own meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_views_groups_are_bounded_and_the_rest_is_other() {
    let mut backends = vec![sqlite().await];
    if let Some(admin) = testing::admin_url() {
        backends.push(postgres(&admin).await);
    }
    for backend in backends {
        let store = &backend.store;
        store.create_pipeline("many").await.unwrap();
        let mut spec = ViewSpec::count();
        spec.group_by = Some("/k".into());
        spec.max_groups = 3;
        let now = dash_domain::now_ms();
        let batch = |from: u32| -> Vec<BatchEvent> {
            (from..from + 100)
                .map(|i| BatchEvent {
                    pipeline: "many".into(),
                    event: Event {
                        id: format!("{i}"),
                        time_ms: now,
                        received_ms: now,
                        payload: format!(r#"{{"k":"v{i}"}}"#),
                        event_type: None,
                    },
                })
                .collect()
        };
        store.put_view("many", "live", &spec, PutMode::Create).await.unwrap();
        store.write_batch(&batch(0)).await.unwrap();
        store.write_batch(&batch(100)).await.unwrap();
        // Made after two batches: its history names its groups while batches go on.
        store.put_view("many", "later", &spec, PutMode::Create).await.unwrap();
        let pending = store.pending_backfills().await.unwrap();
        let later = pending.iter().find(|p| p.view == "later").unwrap();
        store.backfill_step("many", "later", later.generation, 50).await.unwrap();
        store.write_batch(&batch(200)).await.unwrap();
        finish_histories(store, "many").await;
        store.write_batch(&batch(300)).await.unwrap();
        for view in ["live", "later"] {
            let cells = store.view_minutes("many", view, i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
            let groups: BTreeMap<String, u64> = cells.into_iter().map(|(_, g, c)| (g, c.n)).collect();
            assert_eq!(groups.len(), 4, "{view}: {groups:?}");
            assert_eq!(groups.get("(other)"), Some(&397), "{view}: {groups:?}");
        }
        backend.cleanup().await;
    }
}

/// Ten events of pipeline `pipeline` at `now`, ids from `from`, alternately in groups v0 and v1.
fn ten(pipeline: &str, from: u32, now: i64) -> Vec<BatchEvent> {
    (from..from + 10)
        .map(|i| BatchEvent {
            pipeline: pipeline.into(),
            event: Event {
                id: format!("{i}"),
                time_ms: now,
                received_ms: now,
                payload: format!(r#"{{"k":"v{}"}}"#, i % 2),
                event_type: None,
            },
        })
        .collect()
}

async fn execute(store: &Store, sql: &str, bytes: &[u8]) {
    match store {
        Store::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bytes).execute(&s.writer).await.map(|_| ()),
        Store::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bytes).execute(s.pool()).await.map(|_| ()),
    }
    .unwrap();
}

async fn state_of(store: &Store, pipeline: &str, group: &str) -> Vec<u8> {
    const SQL: &str = "SELECT state FROM view_minutes WHERE pipeline_id = $1 AND grp = $2";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(SQL).bind(pipeline).bind(group).fetch_one(&s.writer).await.unwrap(),
        Store::Postgres(s) => sqlx::query_scalar(SQL).bind(pipeline).bind(group).fetch_one(s.pool()).await.unwrap(),
    }
}

async fn finish_histories(store: &Store, pipeline: &str) {
    loop {
        let pending: Vec<_> =
            store.pending_backfills().await.unwrap().into_iter().filter(|p| p.pipeline == pipeline).collect();
        if pending.is_empty() {
            return;
        }
        for p in pending {
            store.backfill_step(pipeline, &p.view, p.generation, 7).await.unwrap();
        }
    }
}

/// A stored state that cannot be read at all (damage) never stops a pipeline's batches: the
/// batch leaves the view out, and its next history step starts it over from the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_has_its_view_computed_again() {
    let mut backends = vec![sqlite().await];
    if let Some(admin) = testing::admin_url() {
        backends.push(postgres(&admin).await);
    }
    for backend in backends {
        let store = &backend.store;
        store.create_pipeline("hurt").await.unwrap();
        let mut spec = ViewSpec::count();
        spec.group_by = Some("/k".into());
        store.put_view("hurt", "by-k", &spec, PutMode::Create).await.unwrap();
        let now = dash_domain::now_ms();
        store.write_batch(&ten("hurt", 0, now)).await.unwrap();
        finish_histories(store, "hurt").await;
        execute(store, "UPDATE view_minutes SET state = $1 WHERE pipeline_id = 'hurt'", &[0x00, 0x01, 0x02]).await;
        store.write_batch(&ten("hurt", 10, now)).await.expect("the batch is stored whatever the view holds");
        assert_eq!(store.find_pipeline("hurt").await.unwrap().unwrap().stats.count, 20);
        store.write_batch(&ten("hurt", 20, now)).await.unwrap();
        let pending = store.pending_backfills().await.unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].generation, 2, "a new generation (one, however many batches ask)");
        assert_eq!(store.backfill_step("hurt", "by-k", 2, 100).await.unwrap(), None, "the step starts it over");
        let pending = store.pending_backfills().await.unwrap();
        assert_eq!(pending[0].generation, 3, "{pending:?}");
        // Batches after the restart count into the view's new states.
        store.write_batch(&ten("hurt", 30, now)).await.unwrap();
        finish_histories(store, "hurt").await;
        store.write_batch(&ten("hurt", 40, now)).await.unwrap();
        let cells = store.view_minutes("hurt", "by-k", i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
        let counts: BTreeMap<String, u64> = cells.into_iter().map(|(_, g, c)| (g, c.n)).collect();
        assert_eq!(counts, BTreeMap::from([("v0".to_owned(), 25), ("v1".to_owned(), 25)]));
        backend.cleanup().await;
    }
}

/// A rolling upgrade: a state written by a newer release (a later format) is neither read nor
/// written over by this one, and the view is not started over; its other states go on counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_releases_state_is_left_alone() {
    let mut backends = vec![sqlite().await];
    if let Some(admin) = testing::admin_url() {
        backends.push(postgres(&admin).await);
    }
    for backend in backends {
        let store = &backend.store;
        store.create_pipeline("later").await.unwrap();
        let mut spec = ViewSpec::count();
        spec.group_by = Some("/k".into());
        store.put_view("later", "by-k", &spec, PutMode::Create).await.unwrap();
        let now = dash_domain::now_ms();
        store.write_batch(&ten("later", 0, now)).await.unwrap();
        finish_histories(store, "later").await;
        let future = [dash_views::STATE_VERSION + 1, 0xaa, 0xbb];
        execute(store, "UPDATE view_minutes SET state = $1 WHERE pipeline_id = 'later' AND grp = 'v0'", &future).await;

        store.write_batch(&ten("later", 10, now)).await.expect("the batch is stored");
        assert!(store.pending_backfills().await.unwrap().is_empty(), "the view is not started over");
        assert_eq!(store.find_view("later", "by-k").await.unwrap().unwrap().generation, 1);
        assert_eq!(state_of(store, "later", "v0").await, future, "the newer state is as it was");
        let cells = store.view_minutes("later", "by-k", i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
        let counts: BTreeMap<String, u64> = cells.into_iter().map(|(_, g, c)| (g, c.n)).collect();
        assert_eq!(counts, BTreeMap::from([("v1".to_owned(), 10)]), "read without the newer state");

        // Its history, computed again, leaves the newer state as it is too.
        let mut changed = spec.clone();
        changed.max_groups = 50;
        store.put_view("later", "by-k", &changed, PutMode::Replace).await.unwrap();
        finish_histories(store, "later").await;
        backend.cleanup().await;
    }
}

/// One minute of 200,000 events, with views made, changed and deleted while it is written and
/// their histories computed meanwhile: every batch commits, and every view ends exact.
async fn a_busy_minute(store: &Store) {
    const BATCHES: u32 = 200;
    const PER_BATCH: u32 = 1000;
    const GROUPS: u32 = 40;
    let pipeline = "busy";
    store.create_pipeline(pipeline).await.unwrap();
    let minute = {
        let now = dash_domain::now_ms();
        now - now.rem_euclid(60_000)
    };
    let (made_tx, mut made_rx) = tokio::sync::watch::channel(0u32);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch: Vec<BatchEvent> = (0..PER_BATCH)
                    .map(|i| {
                        let n = b * PER_BATCH + i;
                        BatchEvent {
                            pipeline: pipeline.into(),
                            event: Event {
                                id: format!("e{n:07}"),
                                time_ms: minute + i64::from(n % 60_000),
                                received_ms: minute,
                                payload: format!(r#"{{"k":"g{}","amount":{}}}"#, n % GROUPS, n % 7),
                                event_type: None,
                            },
                        }
                    })
                    .collect();
                store.write_batch(&batch).await.unwrap_or_else(|e| panic!("batch {b} failed: {e}"));
                made_tx.send_replace(b + 1);
            }
        })
    };
    let mut by_k = ViewSpec::count();
    by_k.group_by = Some("/k".into());
    let mut sum = ViewSpec::count();
    sum.aggregate = Aggregate::Sum;
    sum.field = Some("/amount".into());
    // Made a quarter of the way in, changed half way, one deleted at three quarters.
    made_rx.wait_for(|b| *b >= BATCHES / 4).await.unwrap();
    store.put_view(pipeline, "by-k", &by_k, PutMode::Create).await.unwrap();
    store.put_view(pipeline, "sum", &ViewSpec::count(), PutMode::Create).await.unwrap();
    store.put_view(pipeline, "gone", &by_k, PutMode::Create).await.unwrap();
    let mut changed = false;
    let mut deleted = false;
    loop {
        let written = *made_rx.borrow();
        if !changed && written >= BATCHES / 2 {
            store.put_view(pipeline, "sum", &sum, PutMode::Replace).await.unwrap();
            changed = true;
        }
        if !deleted && written >= BATCHES * 3 / 4 {
            assert!(store.delete_view(pipeline, "gone").await.unwrap());
            deleted = true;
        }
        let pending: Vec<_> =
            store.pending_backfills().await.unwrap().into_iter().filter(|p| p.pipeline == pipeline).collect();
        if pending.is_empty() && writer.is_finished() {
            break;
        }
        for p in pending {
            store.backfill_step(pipeline, &p.view, p.generation, crate::BACKFILL_STEP_EVENTS).await.unwrap();
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    finish_histories(store, pipeline).await;

    let total = BATCHES * PER_BATCH;
    let cells = store.view_minutes(pipeline, "by-k", i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (_, group, cell) in cells {
        *counts.entry(group).or_default() += cell.n;
    }
    let expected: BTreeMap<String, u64> = (0..GROUPS).map(|g| (format!("g{g}"), u64::from(total / GROUPS))).collect();
    assert_eq!(counts, expected);
    let cells = store.view_minutes(pipeline, "sum", i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
    let (n, amount) = cells.iter().fold((0, 0.0), |(n, a), (_, _, c)| (n + c.n, a + c.value(Aggregate::Sum).unwrap()));
    assert_eq!(n, u64::from(total));
    assert_eq!(amount, f64::from((0..total).map(|n| n % 7).sum::<u32>()));
    assert!(store.find_view(pipeline, "gone").await.unwrap().is_none());
    // Maintenance deletes what the deleted and the changed views held.
    let report = store.maintain(YEAR, YEAR).await.unwrap();
    assert!(report.view_states_retired > 0, "{report:?}");
    assert_eq!(states_of_no_view(store).await, 0);
}

const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// States kept under a key no view has.
/// States (a view's minutes or one of its levels') and levels of no view.
async fn states_of_no_view(store: &Store) -> i64 {
    const SQL: &str = "SELECT (SELECT count(*) FROM view_minutes m WHERE NOT EXISTS \
        (SELECT 1 FROM views v WHERE v.pipeline_id = m.pipeline_id AND (v.state_key = m.view_id \
        OR substr(m.view_id, 1, length(v.state_key) + 1) = v.state_key || '@'))) \
        + (SELECT count(*) FROM view_rollups r WHERE NOT EXISTS \
        (SELECT 1 FROM views v WHERE v.pipeline_id = r.pipeline_id AND v.state_key = r.state_key))";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(SQL).fetch_one(&s.writer).await.unwrap(),
        Store::Postgres(s) => sqlx::query_scalar(SQL).fetch_one(s.pool()).await.unwrap(),
    }
}

/// Finishes a pipeline's views' histories and rolls all their levels as far as they go.
async fn finish_and_roll(store: &Store, pipeline: &str) {
    finish_histories(store, pipeline).await;
    let later = dash_domain::now_ms() + 400 * DAY;
    store.roll_up_pipeline(pipeline, later, std::time::Duration::from_secs(60)).await.unwrap();
}

/// A view deleted and made again under the same name, or changed and changed back, holds what
/// its history and later batches say, never what it held before; maintenance deletes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_made_again_holds_nothing_of_before() {
    let mut backends = vec![sqlite().await];
    if let Some(admin) = testing::admin_url() {
        backends.push(postgres(&admin).await);
    }
    for backend in backends {
        let store = &backend.store;
        store.create_pipeline("again").await.unwrap();
        let mut spec = ViewSpec::count();
        spec.group_by = Some("/k".into());
        let now = dash_domain::now_ms();
        store.put_view("again", "by-k", &spec, PutMode::Create).await.unwrap();
        store.write_batch(&ten("again", 0, now)).await.unwrap();
        finish_and_roll(store, "again").await;
        assert!(store.delete_view("again", "by-k").await.unwrap());
        store.put_view("again", "by-k", &spec, PutMode::Create).await.unwrap();
        store.write_batch(&ten("again", 10, now)).await.unwrap();
        finish_and_roll(store, "again").await;
        let mut changed = spec.clone();
        changed.filter.insert("/k".into(), json!("v1"));
        store.put_view("again", "by-k", &changed, PutMode::Replace).await.unwrap();
        store.put_view("again", "by-k", &spec, PutMode::Replace).await.unwrap();
        store.write_batch(&ten("again", 20, now)).await.unwrap();
        finish_and_roll(store, "again").await;
        // Late for every level now: counted into them by the batch.
        store.write_batch(&ten("again", 30, now)).await.unwrap();
        let cells = store.view_minutes("again", "by-k", i64::MIN, i64::MAX, None, usize::MAX).await.unwrap();
        let counts: BTreeMap<String, u64> = cells.into_iter().map(|(_, g, c)| (g, c.n)).collect();
        let want = BTreeMap::from([("v0".to_owned(), 20), ("v1".to_owned(), 20)]);
        assert_eq!(counts, want);
        let day = now - now.rem_euclid(DAY);
        for groups in [crate::GroupsRead::Each, crate::GroupsRead::Merged] {
            let cells = store.view_states("again", "by-k", day, day + DAY, None, groups, usize::MAX).await.unwrap();
            assert_eq!(cells.len(), if groups == crate::GroupsRead::Each { 2 } else { 1 }, "read from days");
            let n: u64 = cells.iter().map(|(_, _, c)| c.n).sum();
            assert_eq!(n, 40, "{groups:?}");
        }
        assert!(states_of_no_view(store).await > 0, "the old keys' states wait for maintenance");
        let report = store.maintain(YEAR, YEAR).await.unwrap();
        assert!(report.view_states_retired >= 4, "{report:?}");
        assert_eq!(states_of_no_view(store).await, 0);
        backend.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_minute_never_fails_a_batch() {
    let backend = sqlite().await;
    a_busy_minute(&backend.store).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn a_busy_minute_never_fails_a_batch_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let backend = postgres(&admin).await;
    a_busy_minute(&backend.store).await;
    backend.cleanup().await;
}

#[test]
fn a_view_keeps_its_minutes_for_its_keep_else_as_long_as_its_pipeline_keeps_events() {
    let mut kept = ViewSpec::count();
    kept.keep = Some(std::time::Duration::from_secs(3600));
    let plain = serde_json::to_string(&ViewSpec::count()).unwrap();
    let views = vec![
        ("p".to_owned(), "kept".to_owned(), serde_json::to_string(&kept).unwrap()),
        ("p".to_owned(), "plain".to_owned(), plain.clone()),
        ("gone".to_owned(), "orphan".to_owned(), plain),
        ("p".to_owned(), "unreadable".to_owned(), "{".to_owned()),
    ];
    let now = 10_000_000;
    let cutoffs = crate::views::view_cutoffs(views, &[("p".to_owned(), 42)], now);
    let minutes: Vec<_> = cutoffs.iter().filter(|(_, key, _)| !key.contains('@')).cloned().collect();
    assert_eq!(minutes, [("p".into(), "kept".into(), now - 3_600_000), ("p".into(), "plain".into(), 42)]);
    // A level's buckets go once they end by the cutoff.
    assert!(cutoffs.contains(&("p".into(), "kept@d".into(), now - 3_600_000 - DAY + 1)), "{cutoffs:?}");
    assert!(cutoffs.contains(&("p".into(), "plain@h.all".into(), 42 - HOUR + 1)), "{cutoffs:?}");
}
