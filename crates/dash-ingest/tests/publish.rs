//! Intake end to end inside one process: real intake logs, real SQLite, the in-process bus.

use std::time::Duration;

use dash_bus::Bus;
use dash_domain::{Event, PipelineId, now_ms};
use dash_ingest::{Intake, IntakeSettings, SubmitError};
use dash_store::Store;

fn events(ids: &[&str]) -> Vec<Event> {
    let now = now_ms();
    ids.iter()
        .map(|id| Event {
            id: (*id).to_owned(),
            time_ms: now,
            received_ms: now,
            payload: "{}".into(),
            event_type: None,
        })
        .collect()
}

/// The store below is migrated before intake starts.
fn migrated() -> tokio::sync::watch::Receiver<bool> {
    tokio::sync::watch::channel(true).1
}

async fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/dash.db", dir.path().display())).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}

/// One partition, batches of 1000, a timer that never fires in a test; tests change what they need.
fn settings(dir: &tempfile::TempDir) -> IntakeSettings {
    IntakeSettings {
        data_dir: dir.path().to_path_buf(),
        partitions: 1,
        max_batch: 1000,
        flush_interval: Duration::from_secs(3600),
        max_backlog: 1000,
        spool_max: 1 << 20,
    }
}

#[tokio::test]
async fn committed_batches_publish_consecutive_seqs_per_pipeline() {
    let (dir, store) = fresh_store().await;
    let a = PipelineId::parse(&store.create_pipeline("a").await.unwrap().record.id).unwrap();
    let b = PipelineId::parse(&store.create_pipeline("b").await.unwrap().record.id).unwrap();
    let bus = Bus::in_process();
    let mut updates = bus.subscribe().await.unwrap();
    let settings =
        IntakeSettings { partitions: 2, max_batch: 3, flush_interval: Duration::from_millis(50), ..settings(&dir) };
    let (intake, tasks) = Intake::start(settings, store.clone(), bus.clone(), migrated()).await.unwrap();

    assert_eq!(intake.submit(&a, events(&["1", "2", "3", "4", "5"])).await.unwrap(), 5);
    assert_eq!(intake.submit(&b, events(&["1"])).await.unwrap(), 1);
    assert_eq!(intake.submit(&a, events(&["5", "6"])).await.unwrap(), 2);

    let (mut seq_a, mut seq_b) = (0, 0);
    let (mut last_a, mut last_b) = (None, None);
    while last_a.as_ref().is_none_or(|s: &dash_domain::PipelineStats| s.count < 6)
        || last_b.as_ref().is_none_or(|s: &dash_domain::PipelineStats| s.count < 1)
    {
        let update = tokio::time::timeout(Duration::from_secs(10), updates.recv()).await.unwrap().unwrap();
        let (seq, last) = if update.pipeline == "a" { (&mut seq_a, &mut last_a) } else { (&mut seq_b, &mut last_b) };
        assert_eq!(update.seq, *seq + 1, "seq rises by exactly 1 per pipeline");
        assert_eq!(update.stats.seq, update.seq);
        *seq = update.seq;
        *last = Some(update.stats);
    }
    let a_stats = last_a.unwrap();
    assert_eq!((a_stats.count, a_stats.duplicates), (6, 1));
    assert!(seq_a >= 3, "7 events in batches of at most 3: {seq_a}");
    assert_eq!(intake.backlogs().iter().sum::<i64>(), 0);
    assert_eq!(intake.spool().used(), 0, "every flushed frame released from the spool");

    tasks.shutdown(intake, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn shutdown_drains_what_the_timer_has_not_flushed_yet() {
    let (dir, store) = fresh_store().await;
    let p = PipelineId::parse(&store.create_pipeline("p").await.unwrap().record.id).unwrap();
    let settings = settings(&dir);
    let (intake, tasks) = Intake::start(settings.clone(), store.clone(), Bus::in_process(), migrated()).await.unwrap();
    intake.submit(&p, events(&["x", "y"])).await.unwrap();
    assert_eq!(store.find_pipeline("p").await.unwrap().unwrap().stats.count, 0);
    tasks.shutdown(intake, Duration::from_secs(10)).await;
    assert_eq!(store.find_pipeline("p").await.unwrap().unwrap().stats.count, 2);

    // A second start finds nothing left to replay.
    let (intake, tasks) = Intake::start(settings, store.clone(), Bus::in_process(), migrated()).await.unwrap();
    assert_eq!(intake.spool().used(), 0);
    tasks.shutdown(intake, Duration::from_secs(10)).await;
    assert_eq!(store.find_pipeline("p").await.unwrap().unwrap().stats.duplicates, 0);
}

#[tokio::test]
async fn a_full_backlog_refuses_at_once_or_waits_for_the_commit_that_makes_room() {
    let (dir, store) = fresh_store().await;
    let p = PipelineId::parse(&store.create_pipeline("p").await.unwrap().record.id).unwrap();
    let settings = IntakeSettings { flush_interval: Duration::from_millis(300), max_backlog: 3, ..settings(&dir) };
    let (intake, tasks) = Intake::start(settings, store.clone(), Bus::in_process(), migrated()).await.unwrap();
    intake.submit(&p, events(&["1", "2", "3"])).await.unwrap();

    // Full: without a wait the answer is at once, and nothing was taken.
    let now = tokio::time::Instant::now();
    assert!(matches!(intake.submit(&p, events(&["4"])).await, Err(SubmitError::Backlog { backlog: 3 })));
    assert!(matches!(intake.permit(&p, now).wait_for_room().await, Err(SubmitError::Backlog { .. })));
    assert_eq!(intake.backlogs(), vec![3]);

    // With time to wait, the flush of the first three makes room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let permit = intake.permit(&p, deadline);
    permit.wait_for_room().await.unwrap();
    assert_eq!(permit.submit(events(&["4", "5", "6"])).await.unwrap(), 3);
    assert_eq!(intake.permit(&p, deadline).submit(events(&["7"])).await.unwrap(), 1);

    tasks.shutdown(intake, Duration::from_secs(10)).await;
    assert_eq!(store.find_pipeline("p").await.unwrap().unwrap().stats.count, 7);
}
