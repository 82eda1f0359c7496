//! Frames each release wrote must be read by every later one: an upgrade starts with the old
//! release's unflushed requests in the log. `fixtures/intake-v<N>.log` is a log segment written
//! by version N of the record format; each must decode to [`expected`], forever.
//!
//! A release that adds version N+1 writes its fixture once with
//! `DASH_WRITE_FIXTURE=1 cargo test -p dash-ingest --test record_fixtures -- --ignored`
//! and commits it beside the others; the files are never rewritten.

use std::path::{Path, PathBuf};

use dash_domain::Event;
use dash_ingest::{IntakeRecord, RECORD_VERSION};
use dash_intake_log::{LogOptions, Quarantine};

/// What the fixture of `version` holds: three requests of two pipelines, with an id and payload
/// beyond ASCII, the epoch's first day and a payload of some size; from version 2 on, the first
/// request's events name types of their own (one beyond ASCII), the others none.
fn expected(version: u8) -> Vec<IntakeRecord> {
    let event = |id: &str, time_ms: i64, received_ms: i64, payload: &str| Event {
        id: id.into(),
        time_ms,
        received_ms,
        payload: payload.into(),
        event_type: None,
    };
    let mut records = vec![
        IntakeRecord {
            pipeline: "orders".into(),
            events: vec![
                event("o-1", 1_763_900_000_000, 1_763_900_000_500, r#"{"id":"o-1","amount":12.5,"country":"DE"}"#),
                event("o-2", 1_763_900_001_000, 1_763_900_001_500, r#"{"id":"o-2","amount":3,"country":"FR"}"#),
            ],
        },
        IntakeRecord {
            pipeline: "payments".into(),
            events: vec![event("zahlung-é-1", 86_400_000, 1_763_900_003_000, r#"{"note":"grüße ✓","n":-0.0}"#)],
        },
        IntakeRecord {
            pipeline: "orders".into(),
            events: vec![event(
                "o-3",
                0,
                1_763_900_002_000,
                &format!(r#"{{"id":"o-3","pad":"{}"}}"#, "x".repeat(2000)),
            )],
        },
    ];
    if version >= 2 {
        records[0].events[0].event_type = Some("orders/create".into());
        records[0].events[1].event_type = Some("commande/payée".into());
    }
    records
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn options(dir: &Path) -> LogOptions {
    LogOptions { segment_bytes: 1 << 20, quarantine: Quarantine::new(dir.join("quarantine")) }
}

/// The records in a fixture segment, read through the real log and record decoder.
fn read_fixture(file: &Path) -> Vec<IntakeRecord> {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("p0");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::copy(file, log_dir.join("00000000000000000000.log")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let _guard = runtime.enter();
    let opened = dash_intake_log::open(&log_dir, options(tmp.path())).unwrap();
    assert_eq!(opened.recovery.torn_bytes, 0);
    assert!(opened.recovery.tail_damage.is_none());
    let mut reader = opened.reader.at(0);
    let mut records = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        records.push(IntakeRecord::decode(&frame.payload).unwrap_or_else(|err| panic!("{}: {err}", file.display())));
    }
    drop(opened.appender);
    opened.writer.join();
    records
}

#[test]
fn every_version_ever_written_still_decodes() {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let Some(version) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("intake-v"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        assert_eq!(read_fixture(&path), expected(version), "fixture of version {version}");
        versions.push(version);
    }
    versions.sort_unstable();
    let all: Vec<u8> = (0..=RECORD_VERSION).collect();
    assert_eq!(versions, all, "a fixture for every version up to the current one");
}

#[test]
fn the_current_version_writes_what_its_fixture_holds() {
    let written = IntakeRecord::encode(&expected(RECORD_VERSION)[0]);
    assert_eq!(written[1], RECORD_VERSION);
    let fixture = std::fs::read(fixtures().join(format!("intake-v{RECORD_VERSION}.log"))).unwrap();
    // The first frame's payload follows its 8-byte header.
    assert_eq!(&fixture[8..8 + written.len()], &written[..], "the current format changed without a new version");
}

#[test]
#[ignore = "writes the current version's fixture; run once when adding a version"]
fn write_current_fixture() {
    if std::env::var("DASH_WRITE_FIXTURE").as_deref() != Ok("1") {
        return;
    }
    let path = fixtures().join(format!("intake-v{RECORD_VERSION}.log"));
    assert!(!path.exists(), "fixtures are never rewritten: {}", path.display());
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let opened = dash_intake_log::open(&tmp.path().join("p0"), options(tmp.path())).unwrap();
        for record in expected(RECORD_VERSION) {
            opened.appender.append(record.encode()).await.unwrap();
        }
        drop(opened.appender);
        opened.writer.join();
    });
    std::fs::copy(tmp.path().join("p0/00000000000000000000.log"), path).unwrap();
}
