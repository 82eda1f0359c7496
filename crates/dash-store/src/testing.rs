//! Fresh PostgreSQL databases for tests: each test run gets its own, named `dash_test_<uuid>`.
//! The admin URL comes from `DASH_TEST_POSTGRES` (set by scripts/test.sh); without it,
//! PostgreSQL tests are skipped with a note.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Environment variable naming a PostgreSQL server the tests may create databases on.
pub const ADMIN_URL_VAR: &str = "DASH_TEST_POSTGRES";

/// Set (by scripts/test.sh) where PostgreSQL tests must run: then a missing
/// [`ADMIN_URL_VAR`] fails them instead of skipping them.
pub const REQUIRE_VAR: &str = "DASH_TEST_REQUIRE_POSTGRES";

/// The admin URL, when PostgreSQL tests are enabled. Panics when they are required
/// ([`REQUIRE_VAR`]) and no server is named: a test that cannot run must not pass.
pub fn admin_url() -> Option<String> {
    let url = std::env::var(ADMIN_URL_VAR).ok().filter(|u| !u.is_empty());
    if url.is_none() && std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_VAR}=1 but {ADMIN_URL_VAR} names no PostgreSQL server");
    }
    url
}

/// Set (by scripts/test.sh) when the suite runs on a TimescaleDB server: the store tests then
/// check that the hypertable layout is the one in use.
pub const TIMESCALE_VAR: &str = "DASH_TEST_TIMESCALE";

/// Whether the PostgreSQL server under test is a preloaded TimescaleDB.
pub fn on_timescale() -> bool {
    std::env::var(TIMESCALE_VAR).is_ok_and(|v| v == "1")
}

/// Creates an empty database and returns its URL.
pub async fn create_database(admin_url: &str) -> Result<String, sqlx::Error> {
    let name = format!("dash_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    admin.close().await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops a database made by [`create_database`], closing its connections.
pub async fn drop_database(admin_url: &str, database_url: &str) -> Result<(), sqlx::Error> {
    let Some((_, name)) = database_url.rsplit_once('/') else { return Ok(()) };
    if !name.starts_with("dash_test_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(());
    }
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    admin.close().await
}
