use dash_domain::Event;

use super::*;

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dash.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}

fn event(pipeline: &str, id: &str, time_ms: i64) -> BatchEvent {
    BatchEvent {
        pipeline: pipeline.into(),
        event: Event { id: id.into(), time_ms, received_ms: time_ms + 5, payload: format!(r#"{{"id":"{id}"}}"#) },
    }
}

#[tokio::test]
async fn pipelines_are_created_once_and_found_by_id_or_name() {
    let (_dir, store) = fresh().await;
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
    let (_dir, store) = fresh().await;
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
}
