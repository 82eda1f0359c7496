use std::time::Duration;

use dash_domain::Event;

use super::*;

/// A fresh, migrated store; remove it with [`Backend::cleanup`].
pub(crate) struct Backend {
    pub(crate) store: Store,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl Backend {
    pub(crate) async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin, url)) = self.postgres {
            testing::drop_database(&admin, &url).await.unwrap();
        }
    }
}

pub(crate) async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/dash.db", dir.path().display())).await.unwrap();
    store.migrate().await.unwrap();
    Backend { store, _dir: Some(dir), postgres: None }
}

pub(crate) async fn postgres(admin: &str) -> Backend {
    let url = testing::create_database(admin).await.unwrap();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    if testing::on_timescale() {
        assert_eq!(store.layout(), "timescale", "the suite's TimescaleDB pass must run on the hypertable layout");
    }
    Backend { store, _dir: None, postgres: Some((admin.to_owned(), url)) }
}

/// SQLite always; PostgreSQL too when `DASH_TEST_POSTGRES` names a server.
async fn backends() -> Vec<Backend> {
    let mut all = vec![sqlite().await];
    match testing::admin_url() {
        Some(admin) => all.push(postgres(&admin).await),
        None => eprintln!("note: {} unset; PostgreSQL store tests skipped", testing::ADMIN_URL_VAR),
    }
    all
}

fn event(pipeline: &str, id: &str, time_ms: i64) -> BatchEvent {
    BatchEvent {
        pipeline: pipeline.into(),
        event: Event {
            id: id.into(),
            time_ms,
            received_ms: time_ms + 5,
            payload: format!(r#"{{"id":"{id}"}}"#),
            event_type: None,
        },
    }
}

#[tokio::test]
async fn pipelines_are_created_once_and_found_by_id_or_name() {
    for backend in backends().await {
        pipelines_on(&backend.store).await;
        backend.cleanup().await;
    }
}

async fn pipelines_on(store: &Store) {
    let created = store.create_pipeline("Orders API").await.unwrap();
    assert_eq!(created.record.id, "orders-api");
    assert!(created.secret.expose().starts_with("whsec_"));
    assert!(matches!(store.create_pipeline("orders api").await, Err(StoreError::Conflict(_))));
    assert!(store.find_pipeline("Orders API").await.unwrap().is_some());
    assert!(store.find_pipeline("orders-api").await.unwrap().is_some());
    assert!(store.find_pipeline("nope").await.unwrap().is_none());

    let rotated = store.rotate_credentials("orders-api").await.unwrap();
    let auth = store.pipeline_auths().await.unwrap().pop().unwrap();
    assert_eq!(auth.secrets.len(), 2, "old secret kept for the grace period");
    assert_eq!(auth.secrets[0], rotated.secret);
    assert_eq!(auth.secrets[1], created.secret);
}

#[tokio::test]
async fn batches_dedupe_count_sequence_and_roll_up() {
    for backend in backends().await {
        batches_on(&backend.store).await;
        backend.cleanup().await;
    }
}

async fn batches_on(store: &Store) {
    store.create_pipeline("a").await.unwrap();
    store.create_pipeline("b").await.unwrap();
    let minute = 1_700_000_040_000;
    let first = store
        .write_batch(&[
            event("a", "1", minute),
            event("a", "2", minute + 61_000),
            event("b", "1", minute),
            event("a", "1", minute),
        ])
        .await
        .unwrap();
    assert_eq!((first.inserted, first.duplicates), (3, 1));
    let a = first.updates.iter().find(|u| u.pipeline == "a").unwrap();
    assert_eq!((a.seq, a.stats.count, a.stats.duplicates), (1, 2, 1));

    let second = store.write_batch(&[event("a", "2", minute), event("a", "3", minute)]).await.unwrap();
    assert_eq!(second.updates.len(), 1);
    assert_eq!((second.updates[0].seq, second.updates[0].stats.count), (2, 3));

    let series = store.series("a", minute, minute + 120_000, 60_000).await.unwrap();
    assert_eq!(series, vec![SeriesPoint { t: minute, count: 2 }, SeriesPoint { t: minute + 60_000, count: 1 }]);
    let hourly = store.series("a", minute, minute + 3_600_000, 3_600_000).await.unwrap();
    assert_eq!(hourly, vec![SeriesPoint { t: minute, count: 3 }]);

    let recent = store.recent_events("a", 2).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].id, "2");
    assert_eq!(recent[0].payload.get(), r#"{"id":"2"}"#);
    let record = store.find_pipeline("a").await.unwrap().unwrap();
    assert_eq!(record.stats.count, 3);
    assert!(record.stats.last_event_at.is_some());

    // Batches larger than one COPY statement (PostgreSQL sends them in several), and a stored
    // key in the last statement: the whole batch starts over and only that event is left out.
    let big = 2 * crate::postgres::COPY_ROWS + 200;
    let ids: Vec<String> = (0..2 * big).map(|i| format!("big-{i}")).collect();
    let first_half: Vec<BatchEvent> = ids[..big].iter().map(|id| event("b", id, minute)).collect();
    let written = store.write_batch(&first_half).await.unwrap();
    assert_eq!((written.inserted, written.duplicates), (big as u64, 0));
    let mut second_half: Vec<BatchEvent> = ids[big..].iter().map(|id| event("b", id, minute)).collect();
    second_half.push(event("b", &ids[big - 1], minute));
    let written = store.write_batch(&second_half).await.unwrap();
    assert_eq!((written.inserted, written.duplicates), (big as u64, 1));
    assert_eq!(store.find_pipeline("b").await.unwrap().unwrap().stats.count, 1 + 2 * big as i64);
}

#[tokio::test]
async fn each_pipeline_keeps_its_events_for_its_own_retention() {
    for backend in backends().await {
        retention_on(&backend.store).await;
        backend.cleanup().await;
    }
}

async fn retention_on(store: &Store) {
    for name in ["short", "default", "long"] {
        store.create_pipeline(name).await.unwrap();
    }
    const HOUR: i64 = 3_600_000;
    store.set_retention("short", Some(Duration::from_secs(3600))).await.unwrap();
    store.set_retention("long", Some(Duration::from_secs(90 * 86_400))).await.unwrap();
    assert!(matches!(store.set_retention("nope", None).await, Err(StoreError::NotFound(_))));
    let found = store.find_pipeline("long").await.unwrap().unwrap();
    assert_eq!(found.retention, Some(Duration::from_secs(90 * 86_400)));
    assert_eq!(store.find_pipeline("default").await.unwrap().unwrap().retention, None);

    let now = dash_domain::now_ms();
    let ages = [("new", 60_000), ("hours", 2 * HOUR), ("weeks", 40 * 24 * HOUR)];
    let batch: Vec<BatchEvent> = ["short", "default", "long"]
        .iter()
        .flat_map(|p| ages.iter().map(move |(id, age)| event(p, id, now - age)))
        .collect();
    store.write_batch(&batch).await.unwrap();

    let report = store.maintain(Duration::from_secs(30 * 86_400), Duration::from_secs(86_400)).await.unwrap();
    assert_eq!(report.events_deleted, 3, "{report:?}");
    let kept = |p: &'static str| async move {
        let mut ids: Vec<String> = store.recent_events(p, 10).await.unwrap().into_iter().map(|e| e.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(kept("short").await, ["new"]);
    assert_eq!(kept("default").await, ["hours", "new"]);
    assert_eq!(kept("long").await, ["hours", "new", "weeks"]);
    // The rollup forgets what the events table forgot.
    let series = store.series("short", now - 50 * 24 * HOUR, now + HOUR, 3_600_000).await.unwrap();
    assert_eq!(series.iter().map(|p| p.count).sum::<i64>(), 1, "{series:?}");

    // Back to the default: the next pass applies it.
    store.set_retention("long", None).await.unwrap();
    let report = store.maintain(Duration::from_secs(30 * 86_400), Duration::from_secs(86_400)).await.unwrap();
    match store.layout() {
        // Its day has a chunk of its own, which nobody keeps now: dropped whole.
        "timescale" => assert_eq!((report.events_deleted, report.partitions_dropped), (0, 1), "{report:?}"),
        // In the default partition (40 days back is outside the days made ahead): row by row.
        _ => assert_eq!(report.events_deleted, 1, "{report:?}"),
    }
    assert_eq!(kept("long").await, ["hours", "new"]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn migrations_run_once_under_concurrency_and_partition_by_day_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let url = testing::create_database(&admin).await.unwrap();
    let (a, b) = (Store::connect(&url).await.unwrap(), Store::connect(&url).await.unwrap());
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    let timescale = testing::on_timescale();
    assert_eq!(a.layout(), if timescale { "timescale" } else { "partitioned" });

    let Store::Postgres(pg) = &a else { unreachable!() };
    a.create_pipeline("p").await.unwrap();
    let now = dash_domain::now_ms();
    let old = 1_000_000_000_000; // 2001: outside every day partition, lands in the default one
    a.write_batch(&[
        event("p", "today", now - 1_000),
        event("p", "old", old),
        event("p", "yesterday", now - 86_400_000),
    ])
    .await
    .unwrap();
    if timescale {
        let chunks: i64 =
            sqlx::query_scalar("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'events'")
                .fetch_one(&pg_pool(pg))
                .await
                .unwrap();
        assert_eq!(chunks, 9 + 1, "yesterday..today+7 made ahead, and 2001's made before its batch");
    } else {
        let partitions: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
                .fetch_one(&pg_pool(pg))
                .await
                .unwrap();
        assert_eq!(partitions, 1 + 9, "default + yesterday..today+7");
        let in_default: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events_default").fetch_one(&pg_pool(pg)).await.unwrap();
        assert_eq!(in_default, 1);
    }

    // Retention of zero drops whole days that have ended (yesterday) and deletes the rest row
    // by row, the default partition's too; dedupe keys are pruned.
    let report = a.maintain(Duration::ZERO, Duration::ZERO).await.unwrap();
    assert!(report.partitions_dropped >= 1, "{report:?}");
    // TimescaleDB: 2001's day is a chunk of its own, dropped whole.
    assert_eq!(report.events_deleted, if timescale { 1 } else { 2 }, "today and 2001: {report:?}");
    assert_eq!(report.dedupe_pruned, 3, "{report:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id").fetch_all(&pg_pool(pg)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    // The missing days are made again (TimescaleDB: in the same pass, right after the drop).
    let dropping = report;
    let report = a.maintain(Duration::from_secs(30 * 86_400), Duration::from_secs(86_400)).await.unwrap();
    assert!(report.partitions_created + dropping.partitions_created >= 1, "{dropping:?} {report:?}");

    a.close().await;
    b.close().await;
    testing::drop_database(&admin, &url).await.unwrap();
}

fn pg_pool(store: &PgStore) -> sqlx::PgPool {
    store.pool().clone()
}

/// The buffer actor's batches in flight on PostgreSQL. Two batches written at once, on two
/// connections, wait for each other neither while writing nor at the rollup: the second commits
/// after the first and gets the next `seq`. A key shared with a batch still open waits for its
/// commit and then counts as a duplicate. A staged batch dropped unseen leaves nothing behind,
/// not even in the rollup.
#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn batches_written_at_once_commit_in_order_and_keep_dedupe_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let backend = postgres(&admin).await;
    let store = &backend.store;
    store.create_pipeline("p").await.unwrap();
    let now = dash_domain::now_ms();
    let minute = now - now.rem_euclid(60_000);

    let (first, second) = (
        [event("p", "a", minute), event("p", "b", minute)],
        [event("p", "c", minute), event("p", "d", minute + 60_000)],
    );
    let (first, second) = tokio::join!(store.stage_batch(&first), store.stage_batch(&second));
    let (first, second) = (first.unwrap(), second.unwrap());
    let (first_events, second_events) = (
        [event("p", "a", minute), event("p", "b", minute)],
        [event("p", "c", minute), event("p", "d", minute + 60_000)],
    );
    let first = first.commit(&first_events).await.unwrap();
    assert_eq!((first.updates[0].seq, first.inserted), (1, 2));
    let second = second.commit(&second_events).await.unwrap();
    assert_eq!((second.updates[0].seq, second.inserted, second.updates[0].stats.count), (2, 2, 4));

    let third_events = [event("p", "e", minute), event("p", "f", minute)];
    let third = store.stage_batch(&third_events).await.unwrap();
    let fourth_events = [event("p", "f", minute), event("p", "g", minute)];
    let (third, fourth) =
        tokio::join!(third.commit(&third_events), async { store.stage_batch(&fourth_events).await.unwrap() });
    assert_eq!(third.unwrap().updates[0].seq, 3);
    let fourth = fourth.commit(&fourth_events).await.unwrap();
    assert_eq!((fourth.updates[0].seq, fourth.inserted, fourth.duplicates), (4, 1, 1));

    let dropped = store.stage_batch(&[event("p", "h", minute)]).await.unwrap();
    drop(dropped);
    let again = store.write_batch(&[event("p", "h", minute)]).await.unwrap();
    assert_eq!((again.updates[0].seq, again.inserted), (5, 1), "the dropped batch was rolled back");
    let record = store.find_pipeline("p").await.unwrap().unwrap();
    assert_eq!((record.stats.count, record.stats.duplicates), (8, 1));
    let series = store.series("p", minute, minute + 120_000, 60_000).await.unwrap();
    let counts: Vec<i64> = series.iter().map(|p| p.count).collect();
    assert_eq!(counts, vec![7, 1], "the rollup counts each stored event once");
    backend.cleanup().await;
}

/// A database made before migration 0005 (the dedupe key in two text columns, the events index
/// descending) keeps its keys through the upgrade: a stored event sent again is a duplicate,
/// a pipeline id that is a prefix of another's does not collide with it, and the index ascends.
#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn an_upgrade_keeps_stored_keys_in_one_column_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let url = testing::create_database(&admin).await.unwrap();
    let store = PgStore::connect(&url, crate::PoolSizes::default()).unwrap();
    let mut before = sqlx::migrate!("../../migrations/postgres");
    before.migrations = before.migrations.iter().filter(|m| m.version < 5).cloned().collect::<Vec<_>>().into();
    before.run(store.pool()).await.unwrap();
    for statement in [
        // The events table as the releases before migration 0010 made it: no event_type.
        "CREATE TABLE events (pipeline_id TEXT NOT NULL, event_id TEXT NOT NULL, event_time TIMESTAMPTZ NOT NULL, \
         received_at TIMESTAMPTZ NOT NULL, payload JSON NOT NULL) PARTITION BY RANGE (event_time)",
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
        "CREATE INDEX events_pipeline_time ON events (pipeline_id, event_time DESC)",
        "INSERT INTO dash_meta (key, value) VALUES ('events_layout', 'partitioned')",
        "INSERT INTO event_dedupe (pipeline_id, event_id, seen_at) VALUES ('p', 'sent-before', now())",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string())).execute(store.pool()).await.unwrap();
    }

    store.migrate().await.unwrap();
    let pipelines = Store::Postgres(store.clone());
    pipelines.create_pipeline("p").await.unwrap();
    pipelines.create_pipeline("p-2").await.unwrap();
    let now = dash_domain::now_ms();
    let outcome = store.write_batch(&[event("p", "sent-before", now), event("p", "new", now)]).await.unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (1, 1), "the key stored before the upgrade holds");
    let outcome = store.write_batch(&[event("p-2", "new", now)]).await.unwrap();
    assert_eq!(outcome.inserted, 1, "another pipeline's id is another key");
    let keys: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT key FROM event_dedupe ORDER BY key").fetch_all(store.pool()).await.unwrap();
    assert_eq!(keys, [&b"p\0new"[..], b"p\0sent-before", b"p-2\0new"]);
    let index: String = sqlx::query_scalar("SELECT pg_get_indexdef('events_pipeline_time'::regclass)")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(index.ends_with("(pipeline_id, event_time)"), "{index}");
    // Migration 0010 gave the existing table its event_type column.
    let mut typed = event("p", "typed", now + 1);
    typed.event.event_type = Some("push".into());
    store.write_batch(&[typed]).await.unwrap();
    let latest = pipelines.recent_events("p", 1).await.unwrap();
    assert_eq!((latest[0].id.as_str(), latest[0].event_type.as_deref()), ("typed", Some("push")));

    store.close().await;
    testing::drop_database(&admin, &url).await.unwrap();
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Counts per bucket computed from the events table itself, for comparison with `series`.
async fn raw_counts(store: &Store, pipeline: &str, from: i64, to: i64, bucket: i64) -> Vec<SeriesPoint> {
    let times: Vec<i64> = match store {
        Store::Sqlite(s) => sqlx::query_scalar("SELECT event_time FROM events WHERE pipeline_id = ?")
            .bind(pipeline)
            .fetch_all(&s.readers)
            .await
            .unwrap(),
        Store::Postgres(s) => sqlx::query_scalar(
            "SELECT (extract(epoch FROM event_time) * 1000)::int8 FROM events WHERE pipeline_id = $1",
        )
        .bind(pipeline)
        .fetch_all(&s.pool)
        .await
        .unwrap(),
    };
    let mut points: Vec<SeriesPoint> =
        (0..(to - from) / bucket).map(|i| SeriesPoint { t: from + i * bucket, count: 0 }).collect();
    for t in times.into_iter().filter(|t| (from..to).contains(t)) {
        points[((t - from) / bucket) as usize].count += 1;
    }
    points
}

#[tokio::test]
async fn series_equal_the_raw_events_for_old_late_and_retained_away_events() {
    for backend in backends().await {
        series_exact_on(&backend.store).await;
        backend.cleanup().await;
    }
}

async fn series_exact_on(store: &Store) {
    store.create_pipeline("exact").await.unwrap();
    let now = dash_domain::now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let from = today - 6 * DAY_MS;
    let to = today + DAY_MS;
    // Six days of history, written newest first, then late events into hours already written,
    // and a backfill far in the past.
    let mut n = 0;
    for day in (0..7).rev() {
        let batch: Vec<BatchEvent> = (0..40)
            .map(|i| {
                n += 1;
                event("exact", &format!("e{n}"), from + day * DAY_MS + i * 37 * MINUTE_MS)
            })
            .collect();
        store.write_batch(&batch).await.unwrap();
    }
    let late: Vec<BatchEvent> =
        (0..25).map(|i| event("exact", &format!("late{i}"), from + DAY_MS + i * 13 * MINUTE_MS)).collect();
    store.write_batch(&late).await.unwrap();
    store.write_batch(&[event("exact", "ancient", from - 400 * DAY_MS)]).await.unwrap();
    for bucket in [MINUTE_MS * 30, HOUR_MS, DAY_MS] {
        let series = store.series("exact", from, to, bucket).await.unwrap();
        assert_eq!(series, raw_counts(store, "exact", from, to, bucket).await, "bucket {bucket}");
    }
    assert_eq!(store.series("exact", from - 401 * DAY_MS, from - 399 * DAY_MS, DAY_MS).await.unwrap()[1].count, 1);

    // Retention forgets the same events in both.
    store.set_retention("exact", Some(Duration::from_secs(3 * 86_400))).await.unwrap();
    store.maintain(Duration::from_secs(30 * 86_400), Duration::from_secs(7 * 86_400)).await.unwrap();
    let series = store.series("exact", from, to, HOUR_MS).await.unwrap();
    assert_eq!(series, raw_counts(store, "exact", from, to, HOUR_MS).await);
    let kept: i64 = series.iter().map(|p| p.count).sum();
    assert!(kept > 0 && kept < 7 * 40, "{kept}");
    assert!(series.iter().filter(|p| p.t < now - 3 * DAY_MS - HOUR_MS).all(|p| p.count == 0));
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn concurrent_batches_on_a_day_without_a_chunk_all_commit_at_once_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let backend = postgres(&admin).await;
    let store = &backend.store;
    store.create_pipeline("ahead").await.unwrap();
    // A day far from the ones made ahead: no chunk (or partition) exists for it yet.
    let far = dash_domain::now_ms() + 400 * DAY_MS;
    let batches: Vec<Vec<BatchEvent>> =
        (0..3).map(|b| (0..200).map(|i| event("ahead", &format!("b{b}-{i}"), far + i * 1000)).collect()).collect();
    let started = std::time::Instant::now();
    let staged =
        tokio::join!(store.stage_batch(&batches[0]), store.stage_batch(&batches[1]), store.stage_batch(&batches[2]));
    for (staged, events) in [staged.0, staged.1, staged.2].into_iter().zip(&batches) {
        staged.unwrap().commit(events).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(store.find_pipeline("ahead").await.unwrap().unwrap().stats.count, 600);
    backend.cleanup().await;
}

/// A database an earlier version set up on TimescaleDB had a continuous aggregate as its rollup
/// (and no rollup rows): the next migration drops it and rebuilds the rollup from the events, so
/// its series are exact from then on.
#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn an_earlier_continuous_aggregate_is_replaced_by_the_rebuilt_rollup_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    if !testing::on_timescale() {
        return; // only a TimescaleDB server can hold the earlier layout
    }
    let backend = postgres(&admin).await;
    let Store::Postgres(pg) = &backend.store else { unreachable!() };
    let pool = pg_pool(pg);
    backend.store.create_pipeline("old").await.unwrap();
    let now = dash_domain::now_ms();
    let batch: Vec<BatchEvent> = (0..30).map(|i| event("old", &format!("o{i}"), now - i * 7 * MINUTE_MS)).collect();
    backend.store.write_batch(&batch).await.unwrap();
    // As the earlier version left it: the aggregate, and no rollup rows of its own.
    sqlx::raw_sql(
        "DELETE FROM event_rollup_minute; \
         CREATE MATERIALIZED VIEW event_rollup_minute_cagg WITH (timescaledb.continuous) AS \
         SELECT pipeline_id, time_bucket(INTERVAL '1 minute', event_time) AS minute, count(*) AS event_count \
         FROM events GROUP BY pipeline_id, minute WITH NO DATA",
    )
    .execute(&pool)
    .await
    .unwrap();
    backend.store.migrate().await.unwrap();
    let left: bool = sqlx::query_scalar("SELECT to_regclass('event_rollup_minute_cagg') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!left, "the aggregate is gone");
    let (from, to) = (now - now.rem_euclid(HOUR_MS) - 5 * HOUR_MS, now - now.rem_euclid(HOUR_MS) + HOUR_MS);
    let series = backend.store.series("old", from, to, HOUR_MS).await.unwrap();
    assert_eq!(series, raw_counts(&backend.store, "old", from, to, HOUR_MS).await);
    assert_eq!(series.iter().map(|p| p.count).sum::<i64>(), 30);
    backend.cleanup().await;
}

#[test]
fn the_minute_of_any_time_is_found_without_overflow() {
    assert_eq!(super::minute_of(61_000), 60_000);
    assert_eq!(super::minute_of(-1), -60_000);
    assert_eq!(super::minute_of(i64::MIN), i64::MIN);
    assert_eq!(super::minute_of(i64::MAX), i64::MAX - i64::MAX.rem_euclid(60_000));
}

#[tokio::test]
async fn boards_are_made_changed_listed_and_deleted_once() {
    for backend in backends().await {
        boards_on(&backend.store).await;
        backend.cleanup().await;
    }
}

async fn boards_on(store: &Store) {
    let spec = |range: &str| {
        dash_boards::BoardSpec::from_json(serde_json::json!({
            "range": range,
            "panels": [{"type": "pipeline", "pipeline": "orders"}, {"type": "note", "text": "é ✓ \"q\""}]
        }))
        .unwrap()
    };
    assert!(store.put_board("ops", &spec("1h"), PutMode::Create).await.unwrap());
    assert!(matches!(store.put_board("ops", &spec("1h"), PutMode::Create).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.put_board("none", &spec("1h"), PutMode::Replace).await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.put_board("Bad name", &spec("1h"), PutMode::Upsert).await,
        Err(StoreError::InvalidBoard(_))
    ));
    // The configuration's upsert writes nothing when the board is already as it says.
    let before = store.find_board("ops").await.unwrap().unwrap();
    assert!(!store.put_board("ops", &spec("1h"), PutMode::Upsert).await.unwrap());
    assert_eq!(store.find_board("ops").await.unwrap().unwrap(), before);
    assert!(store.put_board("ops", &spec("7d"), PutMode::Replace).await.unwrap());
    // A change made from the board as read applies only while nobody changed it meanwhile.
    let read = store.find_board("ops").await.unwrap().unwrap();
    assert_eq!(read.version, before.version + 1);
    assert!(store.replace_board_at("ops", &spec("24h"), read.version).await.unwrap());
    assert!(!store.replace_board_at("ops", &spec("5m"), read.version).await.unwrap(), "a stale version");
    assert_eq!(store.find_board("ops").await.unwrap().unwrap().spec, spec("24h"));
    assert!(matches!(store.replace_board_at("none", &spec("5m"), 0).await, Err(StoreError::NotFound(_))));
    assert!(store.put_board("ops", &spec("7d"), PutMode::Replace).await.unwrap());
    assert!(store.put_board("cfo", &spec("30d"), PutMode::Upsert).await.unwrap());
    let boards = store.list_boards().await.unwrap();
    assert_eq!(boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["cfo", "ops"]);
    assert_eq!(boards[1].spec, spec("7d"));
    assert_eq!(store.find_board("Not a name\0").await.unwrap(), None);
    // Share links: kept by their token's hash, listed newest first, revoked one by one, and
    // gone with their board.
    let first = store.create_share("ops", "hash-1", 1_000).await.unwrap();
    let second = store.create_share("ops", "hash-2", i64::MAX / 2).await.unwrap();
    assert!(matches!(store.create_share("none", "hash-3", 1).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.find_share("hash-1").await.unwrap().unwrap().board, "ops");
    assert_eq!(store.find_share("hash-1").await.unwrap().unwrap().expires_ms, 1_000);
    assert_eq!(store.list_shares("ops").await.unwrap(), [second.clone(), first.clone()]);
    assert!(store.delete_share("ops", &first.id).await.unwrap());
    assert!(!store.delete_share("cfo", &second.id).await.unwrap(), "another board's link");
    assert_eq!(store.find_share("hash-1").await.unwrap(), None);
    assert!(store.delete_board("ops").await.unwrap());
    assert_eq!(store.find_share("hash-2").await.unwrap(), None, "a board's links go with it");
    assert!(!store.delete_board("ops").await.unwrap());
    assert_eq!(store.find_board("ops").await.unwrap(), None);
}

/// A batch whose answer a network partition swallows (packets lost, no reset) fails within its
/// deadline instead of waiting for TCP, its connection is closed rather than reused, and once
/// the network heals the server has rolled it back: written again, every event is stored once
/// and no session is left holding the pipeline's row.
#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn a_batch_whose_answer_a_partition_swallows_fails_within_its_deadline_on_postgres() {
    let admin = testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server these tests run on");
    let backend = postgres(&admin).await;
    let Store::Postgres(direct) = &backend.store else { unreachable!("a PostgreSQL backend") };
    backend.store.create_pipeline("p").await.unwrap();
    let url = backend.postgres.as_ref().map(|(_, url)| url.clone()).unwrap();
    let (proxy, proxied) = testing::TcpProxy::in_front_of(&url).await;
    let deadline = Duration::from_secs(3);
    let through =
        postgres::PgStore::connect(&proxied, postgres::PoolSizes::default()).unwrap().with_batch_deadline(deadline);
    let now = dash_domain::now_ms();
    through.write_batch(&[event("p", "before", now)]).await.unwrap();
    let sessions = |query: &'static str| async move {
        sqlx::query_scalar::<_, i64>(query).fetch_one(direct.pool()).await.unwrap()
    };

    // The commit waits on the pipeline's row, held by another transaction; the network stalls
    // meanwhile, and the row is let go: the server answers into the void.
    let mut holder = direct.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM pipelines WHERE id = 'p' FOR UPDATE").execute(&mut *holder).await.unwrap();
    let events = [event("p", "a", now), event("p", "b", now)];
    let started = std::time::Instant::now();
    let stalled = async {
        let staged = through.stage_batch(&events).await.unwrap();
        staged.commit(&events).await
    };
    let stall = async {
        const WAITING: &str = "SELECT count(*) FROM pg_stat_activity \
                               WHERE datname = current_database() AND wait_event_type = 'Lock'";
        while sessions(WAITING).await == 0 {
            assert!(started.elapsed() < deadline, "the commit never waited on the row");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.stall();
        holder.commit().await.unwrap();
    };
    let (result, ()) = tokio::join!(stalled, stall);
    let waited = started.elapsed();
    let err = result.expect_err("no answer came");
    assert!(matches!(err, StoreError::NoAnswer(_)) && err.is_unavailable(), "{err}");
    assert!(waited < deadline + Duration::from_secs(2), "waited {waited:?} for a deadline of {deadline:?}");

    // The heal: what the closed connection sent reaches the server, which rolls back.
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Err(err) = through.write_batch(&events).await {
            assert!(err.is_unavailable(), "{err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the batch is written once the network heals");
    let record = backend.store.find_pipeline("p").await.unwrap().unwrap();
    assert_eq!(record.stats.count, 3, "each event stored once");
    const IDLE: &str = "SELECT count(*) FROM pg_stat_activity \
                        WHERE datname = current_database() AND state = 'idle in transaction'";
    let heal = std::time::Instant::now();
    while sessions(IDLE).await > 0 {
        assert!(heal.elapsed() < Duration::from_secs(10), "a session still holds a transaction open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    through.close().await;
    drop(proxy);
    backend.cleanup().await;
}
