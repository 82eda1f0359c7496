use super::*;

fn stats(seq: i64) -> PipelineStats {
    PipelineStats { count: seq * 10, seq, duplicates: 0, last_event_at: None }
}

fn update(pipeline: &str, seq: i64) -> PipelineUpdate {
    PipelineUpdate {
        pipeline: pipeline.into(),
        seq,
        stats: stats(seq),
        at: String::new(),
        views: Vec::new(),
        received: None,
    }
}

fn parse(frame: &Bytes) -> ServerMessage {
    serde_json::from_slice(frame).unwrap()
}

async fn next(rx: &mut mpsc::Receiver<Bytes>) -> ServerMessage {
    parse(&tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap())
}

/// A hub's state driven directly, without its task: what it sends is in the queues at once.
fn joined(state: &mut HubState, client: ClientId, queue: usize) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(queue);
    state.apply(Command::Join { client, tx });
    rx
}

fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<ServerMessage> {
    std::iter::from_fn(|| rx.try_recv().ok()).map(|frame| parse(&frame)).collect()
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

#[test]
fn a_client_that_stops_reading_is_bounded_and_does_not_delay_others() {
    let mut state = HubState::default();
    let mut slow_rx = joined(&mut state, 1, CLIENT_QUEUE);
    let mut fast_rx = joined(&mut state, 2, CLIENT_QUEUE);
    state.apply(Command::Subscribe { client: 1, pipeline: "p".into(), snapshot: stats(0) });
    state.apply(Command::Subscribe { client: 2, pipeline: "p".into(), snapshot: stats(0) });
    assert!(matches!(drain(&mut fast_rx)[..], [ServerMessage::Snapshot { seq: 0, .. }]));

    let total = (CLIENT_QUEUE * 4) as i64;
    let mut seqs = Vec::new();
    for seq in 1..=total {
        state.publish(update("p", seq));
        for message in drain(&mut fast_rx) {
            match message {
                ServerMessage::Update { seq, .. } => seqs.push(seq),
                other => panic!("fast client got {other:?}"),
            }
        }
    }
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "the fast client saw every update in order");

    // The slow client holds at most its queue; the rest was never buffered for it.
    assert_eq!(drain(&mut slow_rx).len(), CLIENT_QUEUE, "bounded queue");
    // Once it reads again, the next update reaches it as a snapshot: no gap is ever shown.
    state.publish(update("p", total + 1));
    assert_eq!(
        drain(&mut slow_rx),
        [ServerMessage::Snapshot { pipeline: "p".into(), seq: total + 1, stats: stats(total + 1) }]
    );
    state.publish(update("p", total + 2));
    assert!(matches!(drain(&mut slow_rx)[..], [ServerMessage::Update { .. }]));
}

#[test]
fn a_late_subscriber_starts_from_the_newer_of_store_and_hub() {
    let mut state = HubState::default();
    state.publish(update("p", 7));
    let mut rx = joined(&mut state, 1, CLIENT_QUEUE);
    state.apply(Command::Subscribe { client: 1, pipeline: "p".into(), snapshot: stats(5) }); // the store read raced with seq 6 and 7
    assert!(matches!(drain(&mut rx)[..], [ServerMessage::Snapshot { seq: 7, .. }]));
    state.apply(Command::Leave { client: 1 });
    assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "leaving closes the client's queue");
}

#[test]
fn client_messages_parse() {
    let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","pipeline":"p","after_seq":3}"#).unwrap();
    assert_eq!(m, ClientMessage::Subscribe { pipeline: "p".into(), after_seq: Some(3) });
    let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","pipeline":"p"}"#).unwrap();
    assert_eq!(m, ClientMessage::Subscribe { pipeline: "p".into(), after_seq: None });
    assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
}
