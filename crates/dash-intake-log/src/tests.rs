use std::io::Write;

use super::*;

fn options(segment_bytes: u64) -> LogOptions {
    // Each test's log sits in its own temporary directory; the quarantine beside it is per test.
    let quarantine = std::env::temp_dir().join(format!("dash-quarantine-test-{}", std::process::id()));
    LogOptions { segment_bytes, quarantine: Quarantine::new(quarantine) }
}

fn options_in(dir: &Path, segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes, quarantine: Quarantine::new(dir.join("quarantine")) }
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
    let tmp = closed_log_of_three_frames().await;
    let dir = tmp.path().join("p0");
    let (_, checkpoints) = close(open(&dir, options(1 << 20)).unwrap());
    checkpoints.commit(Checkpoint { position: 18, skip: 0 }).unwrap();
    checkpoints.commit(Checkpoint { position: 36, skip: 2 }).unwrap();
    assert_eq!(open(&dir, options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 36, skip: 2 });

    // The newest slot (generation 2: the first) half-written: the one before it stands.
    let path = dir.join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 48);
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let reopened = open(&dir, options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.checkpoint, Checkpoint { position: 18, skip: 0 });
    // And commits go on from there, to the slot that is not the survivor.
    let (_, checkpoints) = close(reopened);
    checkpoints.commit(Checkpoint { position: 54, skip: 0 }).unwrap();
    assert_eq!(open(&dir, options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 54, skip: 0 });
}

#[tokio::test]
async fn a_checkpoint_of_the_one_record_format_is_read_and_rewritten() {
    let tmp = closed_log_of_three_frames().await;
    let dir = tmp.path().join("p0");
    let mut record = Vec::new();
    record.extend_from_slice(&36u64.to_le_bytes());
    record.extend_from_slice(&1u32.to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&record).to_le_bytes());
    std::fs::write(dir.join("checkpoint"), &record).unwrap();

    let reopened = open(&dir, options(1 << 20)).unwrap();
    assert_eq!(reopened.recovery.checkpoint, Checkpoint { position: 36, skip: 1 });
    assert_eq!(std::fs::metadata(dir.join("checkpoint")).unwrap().len(), 48);
    drop(close(reopened));
    assert_eq!(open(&dir, options(1 << 20)).unwrap().recovery.checkpoint, Checkpoint { position: 36, skip: 1 });
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
    let log = open(&dir.path().join("p0"), options_in(dir.path(), 1 << 20)).unwrap();
    for i in 0..3u8 {
        log.appender.append(vec![i; 10]).await.unwrap();
    }
    close(log);
    dir
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_never_replayed() {
    let dir = closed_log_of_three_frames().await;
    let log_dir = dir.path().join("p0");
    let seg = segment::path(&log_dir, 0);
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A frame whose header promises more than was written (a crash mid-write) ...
    let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&100u32.to_le_bytes()).unwrap();
    file.write_all(&[0xAB; 4 + 20]).unwrap();
    drop(file);

    let reopened = open(&log_dir, options_in(dir.path(), 1 << 20)).unwrap();
    assert_eq!(reopened.recovery.torn_bytes, 28);
    assert!(reopened.recovery.tail_damage.is_none(), "a write cut short was never acknowledged");
    assert_eq!(reopened.recovery.end, good_len);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    assert!(!dir.path().join("quarantine").exists());
    // ... and appends after the cut continue cleanly.
    reopened.appender.append(vec![9; 5]).await.unwrap();
    let (mut reader, _) = close(reopened);
    let frames = read_all(&mut reader);
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3], vec![9; 5]);
}

#[tokio::test]
async fn a_zeroed_tail_is_torn_too() {
    let dir = closed_log_of_three_frames().await;
    let log_dir = dir.path().join("p0");
    let seg = segment::path(&log_dir, 0);
    let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&[0; 4096]).unwrap();
    drop(file);
    let reopened = open(&log_dir, options_in(dir.path(), 1 << 20)).unwrap();
    assert_eq!((reopened.recovery.torn_bytes, reopened.recovery.end), (4096, 54));
    assert!(reopened.recovery.tail_damage.is_none());
}

#[tokio::test]
async fn damage_mid_segment_is_quarantined_and_reading_resumes_after_it() {
    let dir = closed_log_of_three_frames().await;
    let log_dir = dir.path().join("p0");
    let seg = segment::path(&log_dir, 0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[18 + 8 + 3] ^= 0xFF; // a payload byte of the second frame
    std::fs::write(&seg, &bytes).unwrap();

    // Opening keeps the whole frame after the damage: nothing is cut.
    let reopened = open(&log_dir, options_in(dir.path(), 1 << 20)).unwrap();
    assert_eq!((reopened.recovery.end, reopened.recovery.torn_bytes), (54, 0));
    let (mut reader, _) = close(reopened);
    assert_eq!(reader.next_frame().unwrap().unwrap().payload, vec![0u8; 10]);
    assert!(matches!(reader.next_frame(), Err(LogError::Corrupt { position: 18 })));
    let damage = reader.skip_damage().unwrap();
    assert_eq!((damage.position, damage.bytes), (18, 18));
    let kept_as = damage.kept_as.expect("kept");
    assert_eq!(kept_as, dir.path().join("quarantine").join("p0-00000000000000000000-at-00000000000000000018.log"));
    assert_eq!(std::fs::read(&kept_as).unwrap(), bytes, "the segment is kept as it was found");
    let note = std::fs::read_to_string(kept_as.with_extension("damage")).unwrap();
    assert!(note.starts_with("damaged position=18 bytes=18"), "{note}");
    assert_eq!(read_all(&mut reader), vec![vec![2u8; 10]]);
    let summary = Quarantine::new(dir.path().join("quarantine")).summary().unwrap();
    assert_eq!(summary, QuarantineSummary { files: 1, bytes: 54 });
}

#[tokio::test]
async fn a_damaged_length_is_skipped_like_a_damaged_payload() {
    let dir = closed_log_of_three_frames().await;
    let log_dir = dir.path().join("p0");
    let seg = segment::path(&log_dir, 0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[18..22].copy_from_slice(&1000u32.to_le_bytes()); // beyond the segment: looks torn
    std::fs::write(&seg, &bytes).unwrap();
    let reopened = open(&log_dir, options_in(dir.path(), 1 << 20)).unwrap();
    assert_eq!(reopened.recovery.end, 54, "a whole frame follows, so this is damage, not a tail");
    let (mut reader, _) = close(reopened);
    reader.next_frame().unwrap().unwrap();
    assert!(reader.next_frame().is_err());
    assert_eq!(reader.skip_damage().unwrap().bytes, 18);
    assert_eq!(read_all(&mut reader), vec![vec![2u8; 10]]);
}

#[tokio::test]
async fn whole_frames_failing_at_the_tail_are_kept_then_cut() {
    let dir = closed_log_of_three_frames().await;
    let log_dir = dir.path().join("p0");
    let seg = segment::path(&log_dir, 0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[36 + 8 + 3] ^= 0xFF; // the last frame, whole but failing its checksum
    std::fs::write(&seg, &bytes).unwrap();

    let reopened = open(&log_dir, options_in(dir.path(), 1 << 20)).unwrap();
    assert_eq!((reopened.recovery.end, reopened.recovery.torn_bytes), (36, 0));
    let damage = reopened.recovery.tail_damage.clone().expect("acknowledged bytes damaged");
    assert_eq!((damage.position, damage.bytes), (36, 18));
    let kept_as = damage.kept_as.expect("kept");
    assert_eq!(std::fs::read(&kept_as).unwrap(), bytes);
    let note = std::fs::read_to_string(kept_as.with_extension("damage")).unwrap();
    assert!(note.starts_with("damaged position=36 bytes=18"), "{note}");
    let (mut reader, _) = close(reopened);
    assert_eq!(read_all(&mut reader).len(), 2);
}

#[tokio::test]
async fn notes_reach_the_reader_and_are_pruned_behind_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(1 << 20)).unwrap();
    let first = log.appender.append_noted(vec![1; 40], 7).await.unwrap();
    let second = log.appender.append(vec![2; 40]).await.unwrap();
    let third = log.appender.append_noted(vec![3; 40], 9).await.unwrap();
    let mut reader = log.reader.at(first);
    let notes: Vec<_> = std::iter::from_fn(|| reader.next_frame().unwrap()).map(|f| f.note).collect();
    assert_eq!(notes, vec![Some(7), None, Some(9)]);
    log.checkpoints.commit(Checkpoint { position: second, skip: 0 }).unwrap();
    // A restarted consumer reading from the checkpoint still finds the later note.
    let mut again = log.reader.at(second);
    let notes: Vec<_> = std::iter::from_fn(|| again.next_frame().unwrap()).map(|f| (f.position, f.note)).collect();
    assert_eq!(notes, vec![(second, None), (third, Some(9))]);
    assert_eq!(log.reader.at(first).next_frame().unwrap().unwrap().note, None, "pruned");
    drop(close(log));
}

#[tokio::test]
async fn bytes_past_the_durable_end_are_never_read_as_frames() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), options(1 << 20)).unwrap();
    log.appender.append(vec![1; 10]).await.unwrap();
    log.appender.append(vec![2; 10]).await.unwrap();
    // A write in progress when the reader fills its buffer, later cut (a failed fsync)...
    let seg = segment::path(dir.path(), 0);
    let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&[0xEE; 64]).unwrap();
    let mut reader = log.reader.at(0);
    assert_eq!(reader.next_frame().unwrap().unwrap().payload, vec![1; 10]);
    file.set_len(36).unwrap();
    drop(file);
    // ... and the offsets written again with an acknowledged frame.
    log.appender.append(vec![3; 10]).await.unwrap();
    let rest: Vec<Vec<u8>> = std::iter::from_fn(|| reader.next_frame().unwrap()).map(|f| f.payload).collect();
    assert_eq!(rest, vec![vec![2; 10], vec![3; 10]]);
    drop(close(log));
}
