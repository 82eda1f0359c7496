//! `dashd` on every kind of PostgreSQL server it may meet: plain, TimescaleDB preloaded,
//! TimescaleDB Apache-only, and TimescaleDB installed but not preloaded. Each starts, chooses
//! (and logs) its layout, stores events, and keeps its layout across a kill -9 and a restart.
//!
//! The servers are private clusters scripts/test.sh starts (`DASH_TEST_TIMESCALE_*`); without
//! them the test is skipped with a note, unless `DASH_TEST_REQUIRE_TIMESCALE=1` says they must be
//! there. It runs in the SQLite pass only (its servers are its own, whatever the pass).

use std::time::Duration;

use crate::support::TestServer;

fn cluster(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() && std::env::var("DASH_TEST_REQUIRE_TIMESCALE").is_ok_and(|v| v == "1") {
        panic!("DASH_TEST_REQUIRE_TIMESCALE=1 but {var} is not set");
    }
    url
}

#[tokio::test]
async fn dashd_starts_on_every_kind_of_server_and_keeps_its_layout() {
    if std::env::var("DASH_TEST_BACKEND").is_ok() {
        return; // runs once, in the first pass
    }
    let plain = dash_store::testing::admin_url();
    let preloaded = cluster("DASH_TEST_TIMESCALE_FULL");
    // (kind, admin URL, the layout expected, whether dashd connects as a role that only owns its
    // database: no superuser, so `shared_preload_libraries` is hidden from it)
    let kinds = [
        ("plain", plain.clone(), Some("partitioned"), false),
        ("plain, as an owner role", plain, Some("partitioned"), true),
        ("preloaded", preloaded.clone(), Some("timescale"), false),
        ("preloaded, as an owner role", preloaded, None, true),
        ("apache-only", cluster("DASH_TEST_TIMESCALE_APACHE"), Some("timescale"), false),
        ("installed, not preloaded", cluster("DASH_TEST_TIMESCALE_NOT_PRELOADED"), Some("partitioned"), false),
    ];
    for (kind, admin, expected, as_owner) in kinds {
        let Some(admin) = admin else {
            eprintln!("note: no {kind} server; skipped");
            continue;
        };
        let url = dash_store::testing::create_database(&admin).await.unwrap();
        let dash_url = match as_owner {
            true => owner_url(&admin, &url).await,
            false => url.clone(),
        };
        // Retention long enough for the 2020 event below: a maintenance tick falling during the
        // test (one runs on the hour) must not take it away.
        let mut server = TestServer::start(&[
            ("DATABASE_URL", &dash_url),
            ("DASH_FLUSH_INTERVAL", "100ms"),
            ("DASH_RETENTION", "3650days"),
        ])
        .await;
        // An owner role may not be allowed to create the extension: either layout is right then.
        let layout = match expected {
            Some(layout) => layout,
            None if server.log().contains("layout=\"timescale\"") => "timescale",
            None => "partitioned",
        };
        assert!(server.log().contains(&format!("layout=\"{layout}\"")), "{kind}: {}", server.log());
        let p = server.create_pipeline("kinds").await;
        for i in 0..5 {
            assert_eq!(server.post_json(&p, &format!("a{i}"), "{}").await.status(), 202, "{kind}");
        }
        // A backfilled day and a day far ahead: no chunk or partition was made for either.
        let old = r#"{"id":"old","timestamp":"2020-02-29T12:00:00Z"}"#;
        let ahead = r#"{"id":"ahead","timestamp":"2031-01-01T00:00:00Z"}"#;
        assert_eq!(server.post_json(&p, "old", old).await.status(), 202);
        assert_eq!(server.post_json(&p, "ahead", ahead).await.status(), 202);
        server.wait_for_count(&p, 7, Duration::from_secs(20)).await;

        server.kill9();
        server.restart();
        let other = if layout == "timescale" { "partitioned" } else { "timescale" };
        let log = server.log();
        let says = |name: &str| log.contains(&format!("layout=\"{name}\""));
        assert!(says(layout) && !says(other), "{kind}: {log}");
        assert_eq!(server.post_json(&p, "after", "{}").await.status(), 202);
        server.wait_for_count(&p, 8, Duration::from_secs(20)).await;
        let series = server
            .get_json(&format!(
                "/api/pipelines/{}/series?from=2020-02-29T00:00:00Z&to=2020-03-01T00:00:00Z&bucket=1h",
                p.id
            ))
            .await;
        let total: i64 = series["points"].as_array().unwrap().iter().map(|p| p["count"].as_i64().unwrap()).sum();
        assert_eq!(total, 1, "{kind}: the backfilled event is in its series at once: {series}");
        drop(server);
        dash_store::testing::drop_database(&admin, &url).await.unwrap();
    }
}

/// A login role that owns the database at `url` and is nothing more (made once per server), and
/// the URL to connect to that database as it.
async fn owner_url(admin: &str, url: &str) -> String {
    let database = url.rsplit_once('/').unwrap().1;
    ensure_role(admin, "dash_owner", Some(&format!("ALTER DATABASE {database} OWNER TO dash_owner"))).await;
    url_as(url, "dash_owner")
}

/// Makes the login role `role` (password: its name) on the server at `admin` if it is not there
/// yet, then runs `then` (trusted test SQL) as the admin.
async fn ensure_role(admin: &str, role: &str, then: Option<&str>) {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(admin).await.unwrap();
    let create = format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD '{role}'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    );
    for statement in std::iter::once(create.as_str()).chain(then) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

/// `url` with `role` (and its password, its name) as the user.
fn url_as(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}:{role}@{host}")
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DASH_TEST_POSTGRES): scripts/test.sh runs it, or cargo test -- --ignored on_postgres"]
async fn a_role_without_the_privileges_it_needs_is_told_which_on_postgres() {
    let admin = dash_store::testing::admin_url().expect("DASH_TEST_POSTGRES names the PostgreSQL server");
    let url = dash_store::testing::create_database(&admin).await.unwrap();
    ensure_role(&admin, "dash_guest", None).await;
    // Connect only: the database belongs to someone else, and PostgreSQL 15 grants no CREATE on
    // schema public to others.
    let guest = url_as(&url, "dash_guest");
    let dir = tempfile::tempdir().unwrap();
    let output = crate::support::run_dashd(dir.path(), &[("DATABASE_URL", &guest)], &["migrate"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lacks a privilege Dash needs") && stderr.contains("Database privileges"), "{stderr}");
    assert!(stderr.contains("permission denied"), "the database's own words follow: {stderr}");
    dash_store::testing::drop_database(&admin, &url).await.unwrap();
}
