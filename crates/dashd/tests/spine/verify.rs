//! `dashd verify` as a user runs it: a short seeded schedule of faults against a local cluster of
//! this build, which must keep every acknowledged event exactly once. The seed is random unless
//! `DASH_VERIFY_SEED` names one, and a failure prints the command that replays it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Faults per run: the floor for every change.
const FAULTS: &str = "30";

#[tokio::test(flavor = "multi_thread")]
async fn thirty_seeded_faults_keep_every_acknowledged_event_exactly_once() {
    // The harness brings its own PostgreSQL: one pass of the suite is enough.
    if crate::support::postgres_admin().is_some() {
        return;
    }
    let seed = std::env::var("DASH_VERIFY_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        now.subsec_nanos().to_string()
    });
    let failures = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dashd"));
    command.args(["verify", "--json", "--faults", FAULTS, "--seed", &seed, "--net", "201", "--failures-file"]);
    command.arg(failures.path().join("failures.log"));
    // The TimescaleDB build of the suite, where there is one (scripts/test.sh).
    if let Ok(bin) = std::env::var("DASH_TEST_TIMESCALE_BIN") {
        command.args(["--postgres-bin", &bin]);
    }
    // The previous release, where scripts/test.sh built it: nodes are upgraded and downgraded
    // between it and this build while traffic flows.
    if let Ok(previous) = std::env::var("DASH_TEST_PREVIOUS_DASHD") {
        command.args(["--previous-binary", &previous]);
    }
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("seed {seed}: no report ({err}); stderr:\n{stderr}"));
    eprintln!("dashd verify --seed {seed}: {:.0} s\n{report:#}", started.elapsed().as_secs_f64());
    let replay = format!("replay with DASH_VERIFY_SEED={seed} (dashd verify --seed {seed} --faults {FAULTS})");
    assert!(output.status.success(), "{replay}: the run failed\n{report:#}\nstderr:\n{stderr}");
    let run: u64 = report["faults"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(run, FAULTS.parse::<u64>().unwrap(), "{replay}: every fault of the schedule ran");
    assert!(report["events_acked"].as_u64().unwrap() > 1_000, "{replay}: traffic flowed through the faults");
    for zero in ["lost", "duplicated", "phantom", "violations"] {
        assert_eq!(report[zero], 0, "{replay}: {zero}");
    }
    assert_eq!(report["count_matches"], true, "{replay}");
    assert!(
        Duration::from_secs_f64(report["worst_recovery_secs"].as_f64().unwrap()) < Duration::from_secs(30),
        "{replay}: every fault recovered"
    );
    assert!(!failures.path().join("failures.log").exists(), "a passing run writes no failure");
}
