use super::*;

fn stats(seq: i64) -> PipelineStats {
    PipelineStats { count: seq * 10, seq, duplicates: 0, last_event_at: None }
}

fn update(pipeline: &str, seq: i64) -> PipelineUpdate {
    PipelineUpdate { pipeline: pipeline.into(), seq, stats: stats(seq), at: String::new() }
}

fn parse(frame: &Bytes) -> ServerMessage {
    serde_json::from_slice(frame).unwrap()
}

async fn next(rx: &mut mpsc::Receiver<Bytes>) -> ServerMessage {
    parse(&tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap())
}

/// Lets the hub task drain its inputs.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn snapshot_then_consecutive_updates_and_a_gap_becomes_a_snapshot() {
    let bus = Bus::in_process();
    let (hub, task) = Hub::start(&bus).await.unwrap();
    let (client, mut rx) = hub.connect().await;
    hub.subscribe(client, "p".into(), stats(4)).await;
    assert_eq!(next(&mut rx).await, ServerMessage::Snapshot { pipeline: "p".into(), seq: 4, stats: stats(4) });

    for seq in [3, 4, 5, 6] {
        bus.publish(update("p", seq)).await; // 3 and 4 are not newer than the snapshot: skipped
    }
    bus.publish(update("other", 1)).await;
    assert!(matches!(next(&mut rx).await, ServerMessage::Update { seq: 5, .. }));
    assert!(matches!(next(&mut rx).await, ServerMessage::Update { seq: 6, .. }));
    // seq 7 was lost on the way: 8 cannot be shown as an update.
    bus.publish(update("p", 8)).await;
    assert_eq!(next(&mut rx).await, ServerMessage::Snapshot { pipeline: "p".into(), seq: 8, stats: stats(8) });
    bus.publish(update("p", 9)).await;
    assert!(matches!(next(&mut rx).await, ServerMessage::Update { seq: 9, .. }));
    task.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_bounded_and_does_not_delay_others() {
    let bus = Bus::in_process();
    let (hub, task) = Hub::start(&bus).await.unwrap();
    let (slow, mut slow_rx) = hub.connect().await;
    let (fast, mut fast_rx) = hub.connect().await;
    hub.subscribe(slow, "p".into(), stats(0)).await;
    hub.subscribe(fast, "p".into(), stats(0)).await;
    assert!(matches!(next(&mut fast_rx).await, ServerMessage::Snapshot { seq: 0, .. }));

    let total = (CLIENT_QUEUE * 4) as i64;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < total as usize {
            match next(&mut fast_rx).await {
                ServerMessage::Update { seq, .. } => seqs.push(seq),
                other => panic!("fast client got {other:?}"),
            }
        }
        seqs
    });
    for seq in 1..=total {
        bus.publish(update("p", seq)).await;
        if seq % 16 == 0 {
            settle().await;
        }
    }
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "the fast client saw every update in order");

    settle().await;
    // The slow client holds at most its queue; the rest was never buffered for it.
    let mut queued = Vec::new();
    while let Ok(frame) = slow_rx.try_recv() {
        queued.push(parse(&frame));
    }
    assert_eq!(queued.len(), CLIENT_QUEUE, "bounded queue");
    // Once it reads again, the next update reaches it as a snapshot: no gap is ever shown.
    bus.publish(update("p", total + 1)).await;
    assert_eq!(
        next(&mut slow_rx).await,
        ServerMessage::Snapshot { pipeline: "p".into(), seq: total + 1, stats: stats(total + 1) }
    );
    bus.publish(update("p", total + 2)).await;
    assert!(matches!(next(&mut slow_rx).await, ServerMessage::Update { .. }));
    task.shutdown().await;
}

#[tokio::test]
async fn a_late_subscriber_starts_from_the_newer_of_store_and_hub() {
    let bus = Bus::in_process();
    let (hub, task) = Hub::start(&bus).await.unwrap();
    bus.publish(update("p", 7)).await;
    settle().await;
    let (client, mut rx) = hub.connect().await;
    hub.subscribe(client, "p".into(), stats(5)).await; // the store read raced with seq 6 and 7
    assert!(matches!(next(&mut rx).await, ServerMessage::Snapshot { seq: 7, .. }));
    hub.leave(client).await;
    settle().await;
    assert!(rx.recv().await.is_none(), "leaving closes the client's queue");
    task.shutdown().await;
}

#[test]
fn client_messages_parse() {
    let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","pipeline":"p","after_seq":3}"#).unwrap();
    assert_eq!(m, ClientMessage::Subscribe { pipeline: "p".into(), after_seq: Some(3) });
    let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","pipeline":"p"}"#).unwrap();
    assert_eq!(m, ClientMessage::Subscribe { pipeline: "p".into(), after_seq: None });
    assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
}
