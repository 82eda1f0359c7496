//! Admission: whether a request may go into the intake log, and the counts that say so.
//!
//! One owner per partition, [`Admission`]: its backlog (events admitted and not yet committed)
//! against `DASH_MAX_BACKLOG`, and the node's [`Spool`] (unflushed log bytes) and
//! [`StoreHealth`] it shares with the other partitions. Requests take room through a
//! [`Reservation`], which gives it back unless the request's frame is appended; the buffer actor
//! gives it back through [`Admission::committed`] once the frame's events are in the store.

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::SubmitError;

/// Whether the last store operation of any buffer actor succeeded.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl StoreHealth {
    pub(crate) fn new() -> Self {
        Self { up: AtomicBool::new(true), last_error: Mutex::new(None) }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("store is back; flushing resumed");
        }
    }

    pub fn mark_down(&self, error: &str) {
        self.up.store(false, Ordering::Release);
        *self.last_error.lock() = Some(error.to_owned());
    }
}

/// Free space on the intake log's disk that counts as room again after the disk was full.
const DISK_ROOM: u64 = 1 << 20;

/// Bytes of intake log not yet flushed, across partitions, against the bound; and whether the
/// disk under the log has room.
#[derive(Debug)]
pub struct Spool {
    used: AtomicU64,
    max: u64,
    /// Set when a request was refused for room, cleared when room is made or found.
    refusing: AtomicBool,
    /// The folder the partition logs live in.
    dir: PathBuf,
    /// Set when an append failed for want of disk space; cleared by an append that succeeds,
    /// or when the disk is found to have room again.
    disk_full: AtomicBool,
    /// `dash_intake_log_bytes`, registered once (set on every request).
    used_gauge: metrics::Gauge,
}

impl Spool {
    pub(crate) fn new(max: u64, dir: PathBuf) -> Self {
        Self {
            used: AtomicU64::new(0),
            max,
            refusing: AtomicBool::new(false),
            dir,
            disk_full: AtomicBool::new(false),
            used_gauge: metrics::gauge!("dash_intake_log_bytes"),
        }
    }

    /// An append failed: the disk under the log is full.
    pub(crate) fn disk_was_full(&self) {
        self.disk_full.store(true, Ordering::Release);
    }

    /// An append succeeded: the disk has room.
    pub(crate) fn disk_took_write(&self) {
        if self.disk_full.load(Ordering::Relaxed) {
            self.disk_full.store(false, Ordering::Release);
        }
    }

    /// Whether the disk under the log is full: the last append found it so, and it still has
    /// less than 1 MiB free (so that a node no sender writes to any more learns of the room an
    /// operator made).
    pub fn is_disk_full(&self) -> bool {
        if !self.disk_full.load(Ordering::Acquire) {
            return false;
        }
        // The fields' widths differ between targets.
        #[allow(clippy::unnecessary_cast)]
        // No free inode is a full disk too (a new segment cannot be made).
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|fs| match fs.files_available() {
                0 => 0,
                _ => fs.blocks_available() as u64 * fs.fragment_size() as u64,
            })
            .unwrap_or(0);
        if free >= DISK_ROOM {
            self.disk_took_write();
            return false;
        }
        true
    }

    /// Whether `bytes` more are refused with `used` already taken: one frame always fits an
    /// empty log, however large.
    fn refuses(&self, used: u64, bytes: u64) -> bool {
        used > 0 && used + bytes > self.max
    }

    /// Counts bytes found unflushed in the log at start.
    pub(crate) fn found(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if self.refuses(before, bytes) {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.refusing.store(true, Ordering::Release);
            return false;
        }
        self.refusing.store(false, Ordering::Release);
        self.report();
        true
    }

    pub(crate) fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
        if bytes > 0 {
            self.refusing.store(false, Ordering::Release);
        }
        self.report();
    }

    /// Whether no request, however small, would get room now; if so, recorded as refusing.
    pub(crate) fn is_full(&self) -> bool {
        let full = self.refuses(self.used.load(Ordering::Acquire), 1);
        if full {
            self.refusing.store(true, Ordering::Release);
        }
        full
    }

    /// Whether the log is full: the last request that wanted room was refused it.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    pub(crate) fn report(&self) {
        self.used_gauge.set(self.used() as f64);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The log's bound (`DASH_SPOOL_MAX`).
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// One partition's admission.
pub(crate) struct Admission {
    max_backlog: i64,
    /// Admitted events (counted ones) not yet committed to the store.
    backlog: AtomicI64,
    /// Woken when a commit shrinks the backlog: requests waiting for room look again.
    room: Notify,
    pub(crate) spool: Arc<Spool>,
    pub(crate) health: Arc<StoreHealth>,
    /// `dash_buffer_backlog{partition}`, registered once (set on every request and commit).
    backlog_gauge: metrics::Gauge,
}

/// Room taken for one request, given back when dropped unless [`Reservation::appended`].
pub(crate) struct Reservation {
    admission: Arc<Admission>,
    events: i64,
    /// Counted in the backlog (else admitted outside it while the store is down).
    counted: Option<i64>,
    bytes: u64,
    appended: bool,
}

impl Admission {
    pub(crate) fn new(index: usize, max_backlog: usize, spool: Arc<Spool>, health: Arc<StoreHealth>) -> Self {
        Self {
            max_backlog: max_backlog as i64,
            backlog: AtomicI64::new(0),
            room: Notify::new(),
            spool,
            health,
            backlog_gauge: metrics::gauge!("dash_buffer_backlog", "partition" => index.to_string()),
        }
    }

    /// Unflushed events admitted by this process.
    pub(crate) fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Acquire).max(0)
    }

    /// Waits until `deadline` for a request of any size to have room; a full log is answered
    /// at once (room there comes back with the database, not in moments).
    pub(crate) async fn wait_for_room(&self, deadline: Instant) -> Result<(), SubmitError> {
        if self.spool.is_full() {
            return Err(SubmitError::SpoolFull);
        }
        self.room_for(1, deadline, false).await.map(drop)
    }

    /// Takes room for `events` events, waiting until `deadline` for the backlog to have it.
    pub(crate) async fn take(self: &Arc<Self>, events: usize, deadline: Instant) -> Result<Reservation, SubmitError> {
        let events = events as i64;
        let counted = self.room_for(events, deadline, true).await?;
        Ok(Reservation { admission: self.clone(), events, counted, bytes: 0, appended: false })
    }

    /// The actor's side: `events` counted events are committed.
    pub(crate) fn committed(&self, events: i64) {
        let backlog = self.backlog.fetch_sub(events, Ordering::AcqRel) - events;
        self.room.notify_waiters();
        self.report(backlog);
    }

    fn report(&self, backlog: i64) {
        self.backlog_gauge.set(backlog.max(0) as f64);
    }

    /// Waits until `deadline` for `n` more events to fit the backlog bound and, when `take`,
    /// adds them: `Some(backlog before)`. A request always fits an empty backlog, so the bound
    /// holds within one request's events. While the store is down a request that does not fit
    /// is admitted at once outside the count (`None`): the log absorbs it, the spool bound
    /// still holding.
    async fn room_for(&self, n: i64, deadline: Instant, take: bool) -> Result<Option<i64>, SubmitError> {
        let fits = |before: i64| before <= 0 || before + n <= self.max_backlog;
        loop {
            let before = match take {
                true => self.backlog.fetch_add(n, Ordering::AcqRel),
                false => self.backlog.load(Ordering::Acquire),
            };
            if fits(before) {
                return Ok(Some(before));
            }
            if take {
                self.backlog.fetch_sub(n, Ordering::AcqRel);
            }
            if !self.health.is_up() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(SubmitError::Backlog { backlog: before });
            }
            // Only a request that must wait registers; then it looks once more, so a commit
            // between the check above and the registration is not missed.
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if fits(self.backlog.load(Ordering::Acquire)) {
                continue;
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

impl Reservation {
    /// Takes `bytes` of the spool for the request's frame.
    pub(crate) fn spool(&mut self, bytes: u64) -> Result<(), SubmitError> {
        if !self.admission.spool.try_reserve(bytes) {
            return Err(SubmitError::SpoolFull);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// The note the frame carries when counted: how its actor knows to give the count back.
    pub(crate) fn note(&self) -> Option<u32> {
        self.counted.map(|_| u32::try_from(self.events).unwrap_or(u32::MAX))
    }

    /// The frame is in the log: the room stays taken until the actor commits it.
    pub(crate) fn appended(mut self) {
        self.appended = true;
        if let Some(before) = self.counted {
            self.admission.report(before + self.events);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.appended {
            return;
        }
        if self.counted.is_some() {
            self.admission.backlog.fetch_sub(self.events, Ordering::AcqRel);
            self.admission.room.notify_waiters();
        }
        if self.bytes > 0 {
            self.admission.spool.release(self.bytes);
        }
    }
}
