//! The machine's ceilings, measured with the same payloads as the load generator.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use dash_store::BinaryCopy;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite};

use crate::sample_event;

/// A plain axum handler that parses the body (object or NDJSON) and answers 202.
pub async fn serve_plain(listen: SocketAddr) -> anyhow::Result<()> {
    async fn plain(body: Bytes) -> (StatusCode, String) {
        let mut accepted = 0;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(_) => accepted += 1,
                Err(_) => return (StatusCode::BAD_REQUEST, "{}".into()),
            }
        }
        (StatusCode::ACCEPTED, format!(r#"{{"accepted":{accepted}}}"#))
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("plain ceiling listening on http://{}", listener.local_addr()?);
    let router = axum::Router::new().route("/webhooks/{pipeline}", post(plain));
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Rows/s inserting the bench's events straight into a fresh SQLite file with Dash's events
/// table and indexes (same pragmas: WAL, synchronous=FULL), `rows_per_tx` rows per transaction.
pub async fn sqlite_ceiling(file: &Path, rows_per_tx: usize, duration: Duration) -> anyhow::Result<String> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", file.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
    sqlx::query(
        "CREATE TABLE events (pipeline_id TEXT NOT NULL, event_id TEXT NOT NULL, event_time INTEGER NOT NULL, \
         received_at INTEGER NOT NULL, payload TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE UNIQUE INDEX events_dedupe ON events (pipeline_id, event_id)").execute(&pool).await?;
    sqlx::query("CREATE INDEX events_by_time ON events (pipeline_id, event_time DESC)").execute(&pool).await?;

    let started = Instant::now();
    let mut rows = 0u64;
    let run = format!("{:x}", dash_domain::now_ms());
    while started.elapsed() < duration {
        let now = dash_domain::now_ms();
        let batch: Vec<(String, String)> = (0..rows_per_tx)
            .map(|i| {
                let id = format!("{run}-000-{:012}", rows + i as u64);
                let payload = sample_event(&id, now);
                (id, payload)
            })
            .collect();
        let mut tx = pool.begin().await?;
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (pipeline_id, event_id, event_time, received_at, payload) ");
        insert.push_values(&batch, |mut row, (id, payload)| {
            row.push_bind("bench").push_bind(id).push_bind(now).push_bind(now).push_bind(payload);
        });
        insert.build().execute(&mut *tx).await?;
        tx.commit().await?;
        rows += rows_per_tx as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(format!(
        "sqlite direct insert: {rows} rows in {elapsed:.1}s = {:.0} rows/s ({rows_per_tx} rows per transaction)",
        rows as f64 / elapsed
    ))
}

/// Rows/s of raw binary `COPY` of the bench's events into Dash's `events` table (already
/// migrated at `url`), `rows_per_tx` rows per transaction sent in statements of at most
/// `rows_per_copy` rows: the most PostgreSQL takes here.
pub async fn postgres_ceiling(
    url: &str,
    rows_per_tx: usize,
    rows_per_copy: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    anyhow::ensure!(rows_per_tx > 0 && rows_per_copy > 0, "rows per transaction and per COPY must be at least 1");
    let mut conn = PgConnection::connect(url).await?;
    let started = Instant::now();
    let mut rows = 0u64;
    let run = format!("{:x}", dash_domain::now_ms());
    while started.elapsed() < duration {
        let now = dash_domain::now_ms();
        let mut bodies = Vec::new();
        for first in (0..rows_per_tx).step_by(rows_per_copy) {
            let mut copy = BinaryCopy::with_capacity(rows_per_copy * 300);
            for i in first..(first + rows_per_copy).min(rows_per_tx) {
                let id = format!("{run}-000-{:012}", rows + i as u64);
                let payload = sample_event(&id, now);
                copy.row(5).text("ceiling").text(&id).timestamptz_ms(now).timestamptz_ms(now).text(&payload);
            }
            bodies.push(copy.finish());
        }
        let mut tx = conn.begin().await?;
        for body in bodies {
            let mut copy = tx
                .copy_in_raw(
                    "COPY events (pipeline_id, event_id, event_time, received_at, payload) FROM STDIN (FORMAT binary)",
                )
                .await?;
            copy.send(body.as_slice()).await?;
            copy.finish().await?;
        }
        tx.commit().await?;
        rows += rows_per_tx as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(format!(
        "postgres binary copy: {rows} rows in {elapsed:.1}s = {:.0} rows/s ({rows_per_tx} rows per transaction, \
         {} per COPY)",
        rows as f64 / elapsed,
        rows_per_copy.min(rows_per_tx)
    ))
}
