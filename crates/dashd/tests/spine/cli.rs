//! The command line: configuration errors, migrate, pipeline admin.

use std::time::Duration;

use dash_signature::SigningSecret;
use serde_json::Value;

use crate::support::{Pipeline, TestServer, run_dashd};

#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_dashd(dir.path(), &[("DASH_MAX_BATCH", "lots")], &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DASH_MAX_BATCH"));

    let out = run_dashd(dir.path(), &[("APP_ROLE", "ingestor")], &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NATS_URL"));

    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/default.toml"), "flush_intervall = \"1s\"\n").unwrap();
    let out = run_dashd(dir.path(), &[], &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flush_intervall"));
}

#[test]
fn migrate_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_dashd(dir.path(), &[("DASH_DATA_DIR", "d")], &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("d/dash.db").exists());
}

#[tokio::test]
async fn pipelines_made_on_the_command_line_work_on_a_running_server() {
    let server = TestServer::start(&[("DASH_FLUSH_INTERVAL", "100ms")]).await;
    let out = run_dashd(server.dir.path(), &server.env(), &["pipeline", "create", "From CLI", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = Pipeline {
        id: created["id"].as_str().unwrap().to_owned(),
        secret: SigningSecret::parse(created["secret"].as_str().unwrap()).unwrap(),
        token: created["token"].as_str().unwrap().to_owned(),
    };
    assert_eq!(first.id, "from-cli");
    assert_eq!(server.post_json(&first, "c1", "{}").await.status(), 202);

    let out = run_dashd(server.dir.path(), &server.env(), &["pipeline", "rotate-secret", "from-cli", "--json"]);
    assert!(out.status.success());
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = Pipeline {
        id: first.id.clone(),
        secret: SigningSecret::parse(rotated["secret"].as_str().unwrap()).unwrap(),
        token: rotated["token"].as_str().unwrap().to_owned(),
    };
    assert_ne!(second.secret, first.secret);
    // The server picks up the rotation on its next directory refresh; the old secret keeps
    // working through the grace period meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(server.post_json(&second, "c2", "{}").await.status(), 202);
    assert_eq!(server.post_json(&first, "c3", "{}").await.status(), 202);
    server.wait_for_count(&first, 3, Duration::from_secs(10)).await;

    let out = run_dashd(server.dir.path(), &server.env(), &["pipeline", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("from-cli"), "{listing}");
}
