//! A full disk under a node's data (the intake log and the embedded store on one small tmpfs):
//! intake refuses with 503 and `Retry-After`, `/ready` says why, nothing acknowledged is lost or
//! set aside as unstorable, the log is not torn, and intake resumes by itself once space returns.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Pipeline, TestServer, postgres_admin};

/// A tmpfs of its own (mounting needs root, which the suite runs as), unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Writes `path` until the disk has no room left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

async fn post(server: &TestServer, pipeline: &Pipeline, k: usize) -> reqwest::Response {
    let body = serde_json::json!({ "k": k, "pad": "x".repeat(2_000) }).to_string();
    server.post_json(pipeline, &format!("e{k}"), &body).await
}

async fn ready(server: &TestServer) -> (u16, Value) {
    let response = server.client.get(server.url("/ready")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_stored(server: &TestServer, pipeline: &Pipeline, acked: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, count) = server.stored_events(&pipeline.id).await;
        if rows.len() == acked.len() {
            assert!(rows.iter().all(|(_, copies)| *copies == 1), "each stored once: {rows:?}");
            let mut stored: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
            let mut expected: Vec<&str> = acked.iter().map(String::as_str).collect();
            stored.sort_unstable();
            expected.sort_unstable();
            assert_eq!(stored, expected, "what was acknowledged, nothing else");
            assert_eq!(count, rows.len() as i64, "the pipeline's count matches its rows");
            return;
        }
        assert!(Instant::now() < deadline, "{} of {} stored\nlog:\n{}", rows.len(), acked.len(), server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_with_503_loses_nothing_and_resumes_by_itself() {
    // The embedded store shares the full disk here; one pass of the suite is enough.
    if postgres_admin().is_some() {
        return;
    }
    let Some(disk) = Tmpfs::mount("16m") else {
        assert!(
            std::env::var("DASH_TEST_REQUIRE_POSTGRES").is_err(),
            "the full-disk test mounts a tmpfs: scripts/test.sh runs as root"
        );
        eprintln!("note: cannot mount a tmpfs (not root): the full-disk test is skipped");
        return;
    };
    let data = disk.path().join("data");
    let server = TestServer::start(&[("DASH_DATA_DIR", data.to_str().unwrap())]).await;
    let pipeline = server.create_pipeline("full-disk").await;
    let mut acked = Vec::new();
    for k in 0..20 {
        assert_eq!(post(&server, &pipeline, k).await.status(), 202);
        acked.push(format!("e{k}"));
    }
    wait_stored(&server, &pipeline, &acked).await;

    fill(&disk.path().join("ballast"));
    // The first requests may still fit the page the log's segment already holds.
    let mut refusal = None;
    for k in 20..2_000 {
        let response = post(&server, &pipeline, k).await;
        match response.status().as_u16() {
            202 => acked.push(format!("e{k}")),
            503 => {
                refusal = Some(response);
                break;
            }
            other => panic!("e{k}: {other} {}", response.text().await.unwrap()),
        }
    }
    let refusal = refusal.expect("a full disk refuses requests");
    assert!(refusal.headers().contains_key("retry-after"), "a refusal says when to retry");
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["error"]["code"], "intake_disk_full", "{body}");
    let response = post(&server, &pipeline, 5_000).await;
    assert_eq!(response.status(), 503, "still refused while the disk is full");
    let (status, report) = ready(&server).await;
    eprintln!("{} acknowledged before the first refusal; /ready while full: {report}", acked.len() - 20);
    assert_eq!(status, 503, "a node that cannot take requests is not ready: {report}");
    assert_eq!(report["checks"]["intake_log"]["code"], "disk_full", "{report}");

    // Held full across several flushes: what the store cannot write waits in the log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, report) = ready(&server).await;
    eprintln!("/ready after 3 s full: {report}");
    // (Not reported while the store fails to flush.)
    let set_aside = report["checks"]["events_set_aside"]["events"].as_u64().unwrap_or(0);
    assert_eq!(set_aside, 0, "nothing set aside for a full disk: {report}");
    std::fs::remove_file(disk.path().join("ballast")).unwrap();
    // Ready again with no request to prove it: a node senders stopped writing to learns of the
    // room itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, report) = ready(&server).await;
        if status == 200 && report["status"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy after the disk had room: {report}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for k in 2_000..2_020 {
        assert_eq!(post(&server, &pipeline, k).await.status(), 202, "intake resumed");
        acked.push(format!("e{k}"));
    }
    wait_stored(&server, &pipeline, &acked).await;
    let (_, report) = ready(&server).await;
    assert_eq!(report["checks"]["events_set_aside"]["events"], 0, "nothing set aside for a full disk: {report}");
    assert_eq!(report["checks"]["intake_log_quarantine"]["files"], 0, "the log was not torn: {report}");
}
