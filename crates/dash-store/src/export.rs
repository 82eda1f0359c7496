//! A pipeline's events over a time range, oldest first, read a page at a time: however wide
//! the range, memory holds one page (at most [`PAGE_EVENTS`] events and about [`PAGE_BYTES`] of
//! payload), and no transaction or connection is held between pages. Each page starts after the
//! last event of the one before (a keyset on the events' time and a tie-breaker), so an event
//! committed while an export runs is in it when it sorts after the page being read, and no event
//! is read twice.

use futures_util::{Stream, TryStreamExt};
use sqlx::Row;

use crate::{Store, StoreError, StoredEvent};

/// Most events in one page.
const PAGE_EVENTS: usize = 1000;
/// A page ends once its payloads pass this many bytes (a page of large events stays small).
const PAGE_BYTES: usize = 4 << 20;

/// Just past the latest event time there is (the last millisecond of year 9999).
const EVENT_TIME_END: i64 = 253_402_300_800_000;

/// Where the next page starts: after the event of this time and tie-breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    time_ms: i64,
    tie: Tie,
}

/// What orders events of the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tie {
    /// SQLite: the row id, descending (the order of its time index read backwards).
    RowidBelow(i64),
    /// PostgreSQL: the event id, then the receive time.
    IdAbove { id: String, received_ms: i64 },
}

/// SQLite: the time index `(pipeline_id, event_time DESC)` read backwards gives `event_time`
/// ascending and, within a time, `rowid` descending: that order, so no page sorts.
const SQLITE_PAGE: &str = "SELECT rowid, event_id, event_time, received_at, payload, event_type FROM events \
     WHERE pipeline_id = $1 AND event_time < $2 AND (event_time > $3 OR (event_time = $3 AND rowid < $4)) \
     ORDER BY event_time, rowid DESC LIMIT $5";

/// PostgreSQL: the time index `(pipeline_id, event_time)`, ties sorted by id and receive time
/// (an incremental sort within one time).
const PG_PAGE: &str = "SELECT event_id, (extract(epoch FROM event_time) * 1000)::int8, \
     (extract(epoch FROM received_at) * 1000)::int8, payload::text, event_type FROM events \
     WHERE pipeline_id = $1 AND event_time >= to_timestamp($3 / 1000.0) AND event_time < to_timestamp($2 / 1000.0) \
     AND (event_time, event_id, received_at) > (to_timestamp($3 / 1000.0), $4, to_timestamp($5 / 1000.0)) \
     ORDER BY event_time, event_id, received_at LIMIT $6";

impl Store {
    /// The events of `pipeline` whose time lies in `from_ms..to_ms`, oldest first, as pages
    /// (none empty). The stream owns what it needs: it may outlive the caller's borrow.
    pub fn export_pages(
        &self,
        pipeline: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Stream<Item = Result<Vec<StoredEvent>, StoreError>> + Send + 'static {
        // Event times lie in 1970..=9999 (the domain's bound): a wider range reads the same.
        let (from_ms, to_ms) = (from_ms.max(0), to_ms.min(EVENT_TIME_END));
        let store = self.clone();
        let pipeline = pipeline.to_owned();
        let first = Cursor {
            time_ms: from_ms,
            tie: match self {
                Store::Sqlite(_) => Tie::RowidBelow(i64::MAX),
                // The smallest (id, received) there is: every event at `from_ms` sorts after it.
                Store::Postgres(_) => Tie::IdAbove { id: String::new(), received_ms: i64::MIN },
            },
        };
        // An id is never empty, so the first page's bound is strict for every stored event.
        futures_util::stream::try_unfold(Some(first), move |cursor| {
            let store = store.clone();
            let pipeline = pipeline.clone();
            async move {
                let Some(cursor) = cursor else { return Ok(None) };
                let (page, next) = store.export_page(&pipeline, to_ms, &cursor).await?;
                if page.is_empty() {
                    return Ok(None);
                }
                Ok(Some((page, next)))
            }
        })
    }

    /// One page from `after` on, and where the next one starts (`None`: this was the last).
    async fn export_page(
        &self,
        pipeline: &str,
        to_ms: i64,
        after: &Cursor,
    ) -> Result<(Vec<StoredEvent>, Option<Cursor>), StoreError> {
        let mut page = Page::default();
        match (self, &after.tie) {
            (Store::Sqlite(s), Tie::RowidBelow(rowid)) => {
                let mut rows = sqlx::query(SQLITE_PAGE)
                    .bind(pipeline)
                    .bind(to_ms)
                    .bind(after.time_ms)
                    .bind(rowid)
                    .bind(PAGE_EVENTS as i64)
                    .fetch(&s.readers);
                while let Some(row) = rows.try_next().await? {
                    let time_ms = row.try_get(2)?;
                    let cursor = Cursor { time_ms, tie: Tie::RowidBelow(row.try_get(0)?) };
                    if page.push(cursor, row.try_get(1)?, row.try_get(3)?, row.try_get(4)?, row.try_get(5)?) {
                        break;
                    }
                }
            }
            (Store::Postgres(s), Tie::IdAbove { id, received_ms }) => {
                let mut rows = sqlx::query(PG_PAGE)
                    .bind(pipeline)
                    .bind(to_ms)
                    .bind(after.time_ms)
                    .bind(id)
                    .bind(received_ms.max(&crate::postgres::TIMESTAMP_FLOOR_MS))
                    .bind(PAGE_EVENTS as i64)
                    .fetch(&s.pool);
                while let Some(row) = rows.try_next().await? {
                    let (id, received_ms): (String, i64) = (row.try_get(0)?, row.try_get(2)?);
                    let tie = Tie::IdAbove { id: id.clone(), received_ms };
                    let cursor = Cursor { time_ms: row.try_get(1)?, tie };
                    if page.push(cursor, id, received_ms, row.try_get(3)?, row.try_get(4)?) {
                        break;
                    }
                }
            }
            _ => unreachable!("a cursor is made by the store that reads it"),
        }
        Ok(page.finish())
    }
}

/// A page being read: its events, their payloads' bytes, and the cursor after the last.
#[derive(Default)]
struct Page {
    events: Vec<StoredEvent>,
    bytes: usize,
    last: Option<Cursor>,
}

impl Page {
    /// Adds one stored row (its cursor, id, receive time, payload and type of its own); true
    /// once the page holds [`PAGE_BYTES`] of payload.
    fn push(
        &mut self,
        cursor: Cursor,
        id: String,
        received_ms: i64,
        payload: String,
        event_type: Option<String>,
    ) -> bool {
        self.bytes += payload.len();
        let (time, received_at) = (dash_domain::format_ms(cursor.time_ms), dash_domain::format_ms(received_ms));
        self.events.push(StoredEvent::new(id, time, received_at, payload, event_type));
        self.last = Some(cursor);
        self.bytes >= PAGE_BYTES
    }

    /// The events, and where the next page starts: nowhere after a short page (one not cut by
    /// its bytes), which was the last.
    fn finish(self) -> (Vec<StoredEvent>, Option<Cursor>) {
        let full = self.events.len() >= PAGE_EVENTS || self.bytes >= PAGE_BYTES;
        (self.events, if full { self.last } else { None })
    }
}

/// Events as NDJSON: each as the events API shows it, one a line.
pub fn ndjson(events: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.payload.get().len() + 128).sum());
    for event in events {
        serde_json::to_writer(&mut out, event).expect("a stored event always serializes");
        out.push(b'\n');
    }
    out
}
