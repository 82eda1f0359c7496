use std::io::Write;

use super::*;

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

fn read_all(reader: &mut LogReader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        out.push(frame.payload);
    }
    out
}

fn close(log: OpenedLog) -> (LogReader, CheckpointStore) {
    let OpenedLog { appender, writer, reader, checkpoints, .. } = log;
    drop(appender);
    writer.join();
    (reader, checkpoints)
}

#[tokio::test]
async fn appends_are_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(100)).unwrap();
    let mut positions = Vec::new();
    for i in 0..20u8 {
        positions.push(log.appender.append(vec![i; 30]).await.unwrap());
    }
    assert!(positions.windows(2).all(|w| w[1] == w[0] + 38));
    let (mut reader, _) = close(log);
    let frames = tokio::task::spawn_blocking(move || read_all(&mut reader)).await.unwrap();
    assert_eq!(frames.len(), 20);
    assert!(frames.iter().enumerate().all(|(i, f)| f == &vec![i as u8; 30]));
    assert!(segment::list(dir.path()).unwrap().len() > 5, "segments rolled");
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(1 << 20)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let appender = log.appender.clone();
        tasks.push(tokio::spawn(async move { appender.append(i.to_le_bytes().to_vec()).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let (mut reader, _) = close(log);
    let mut seen: Vec<u32> =
        read_all(&mut reader).into_iter().map(|p| u32::from_le_bytes(p.try_into().unwrap())).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn checkpoint_resumes_and_deletes_consumed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(64)).unwrap();
    for i in 0..10u8 {
        log.appender.append(vec![i; 40]).await.unwrap();
    }
    let (mut reader, checkpoints) = close(log);
    for _ in 0..6 {
        reader.next_frame().unwrap().unwrap();
    }
    let freed = checkpoints.commit(Checkpoint { position: reader.position(), skip: 0 }).unwrap();
    assert_eq!(freed, 6 * 48, "one frame per segment here, six behind the checkpoint");

    let reopened = open(dir.path(), options(64)).unwrap();
    assert_eq!(reopened.recovery.checkpoint.position, 6 * 48);
    let (mut reader, _) = close(reopened);
    let rest = read_all(&mut reader);
    assert_eq!(rest, (6..10u8).map(|i| vec![i; 40]).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_torn_checkpoint_slot_falls_back_to_the_other() {
    let dir = closed_log_of_three_frames().await;
    let (_, checkpoints) = close(open(dir.path(), options(1 << 20)).unwrap());
    checkpoints.commit(Checkpoint { position: 18, skip: 0 }).unwrap();
    checkpoints.commit(Checkpoint { position: 36, skip: 2 }).unwrap();
    assert_eq!(open(dir.path(), options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 36, skip: 2 });

    // The newest slot (generation 2: the first) half-written: the one before it stands.
    let path = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 48);
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let reopened = open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.checkpoint, Checkpoint { position: 18, skip: 0 });
    // And commits go on from there, to the slot that is not the survivor.
    let (_, checkpoints) = close(reopened);
    checkpoints.commit(Checkpoint { position: 54, skip: 0 }).unwrap();
    assert_eq!(open(dir.path(), options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 54, skip: 0 });
}

#[tokio::test]
async fn a_checkpoint_of_the_one_record_format_is_read_and_rewritten() {
    let dir = closed_log_of_three_frames().await;
    let mut record = Vec::new();
    record.extend_from_slice(&36u64.to_le_bytes());
    record.extend_from_slice(&1u32.to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&record).to_le_bytes());
    std::fs::write(dir.path().join("checkpoint"), &record).unwrap();

    let reopened = open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.checkpoint, Checkpoint { position: 36, skip: 1 });
    assert_eq!(std::fs::metadata(dir.path().join("checkpoint")).unwrap().len(), 48);
    drop(close(reopened));
    assert_eq!(open(dir.path(), options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 36, skip: 1 });
}

#[tokio::test]
async fn segments_rolled_after_opening_are_deleted_once_behind_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(64)).unwrap();
    let mut positions = Vec::new();
    for i in 0..4u8 {
        positions.push(log.appender.append(vec![i; 40]).await.unwrap());
    }
    // Committed while the writer still runs: the store knows the rolls without listing.
    assert_eq!(log.checkpoints.commit(Checkpoint { position: positions[2], skip: 0 }).unwrap(), 2 * 48);
    assert_eq!(log.checkpoints.commit(Checkpoint { position: positions[2], skip: 0 }).unwrap(), 0);
    assert_eq!(segment::list(dir.path()).unwrap(), positions[2..]);
    drop(close(log));
}

/// A log holding three 10-byte frames, closed.
async fn closed_log_of_three_frames() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(1 << 20)).unwrap();
    for i in 0..3u8 {
        log.appender.append(vec![i; 10]).await.unwrap();
    }
    close(log);
    dir
}

#[tokio::test]
async fn torn_tail_is_cut_and_never_replayed() {
    let dir = closed_log_of_three_frames().await;
    let seg = segment::path(dir.path(), 0);
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A frame whose header promises more than was written (a crash mid-write) ...
    let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&100u32.to_le_bytes()).unwrap();
    file.write_all(&[0xAB; 4 + 20]).unwrap();
    drop(file);

    let reopened = open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.truncated_bytes, 28);
    assert_eq!(reopened.recovery.end, good_len);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    // ... and appends after the cut continue cleanly.
    reopened.appender.append(vec![9; 5]).await.unwrap();
    let (mut reader, _) = close(reopened);
    let frames = read_all(&mut reader);
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3], vec![9; 5]);
}

#[tokio::test]
async fn corrupt_checksum_cuts_from_that_frame() {
    let dir = closed_log_of_three_frames().await;
    let seg = segment::path(dir.path(), 0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[18 + 8 + 3] ^= 0xFF; // a payload byte of the second frame
    std::fs::write(&seg, &bytes).unwrap();

    let reopened = open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.end, 18);
    let (mut reader, _) = close(reopened);
    assert_eq!(read_all(&mut reader), vec![vec![0u8; 10]]);
}
