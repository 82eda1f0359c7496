//! Which partition a pipeline's requests go to, and keeping every acknowledged request on its
//! way to the store when that changes: `DASH_PARTITIONS` set lower or higher, or (at the upgrade
//! from the first releases) the hash itself.
//!
//! The partition is CRC32C of the pipeline id modulo the count: fixed by this code, not by the
//! standard library's hasher, which Rust does not promise to keep between releases.
//!
//! The layout the logs were written under is kept in `intake/layout`. When it differs from the
//! one starting now (or is missing), every unflushed request whose pipeline now belongs to
//! another partition is appended to that partition's log *before* intake opens, so it stands
//! ahead of every newer request of its pipeline and each pipeline's `seq` still follows the
//! order its requests were acknowledged. Logs beyond the count are emptied this way and removed.
//! A request moved out of a log that stays is left there, and that log's actor passes over
//! every request whose pipeline is not its partition's: the layout file is written only once the
//! move is whole, so under a current layout such a request has always been copied. A crash
//! midway repeats the move at the next start; a request copied twice is stored once (the
//! store's dedupe key).

use std::path::{Path, PathBuf};

use dash_intake_log::{LogError, OpenedLog, Quarantine};

use crate::IngestError;
use crate::record::IntakeRecord;

/// The hash's name in the layout file.
const HASH: &str = "crc32c";
const LAYOUT_FILE: &str = "layout";
/// Bytes of frames read before they are appended elsewhere.
const MOVE_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// The partition of `pipeline` among `partitions`.
pub fn partition_for(pipeline: &str, partitions: usize) -> usize {
    (u64::from(crc32c::crc32c(pipeline.as_bytes())) % partitions.max(1) as u64) as usize
}

/// The partition logs found in the intake directory: `p<N>` directories, by index.
pub(crate) fn existing_logs(intake_dir: &Path) -> std::io::Result<Vec<usize>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(intake_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".removing") {
            // A removal cut short: its requests were all moved before it began.
            std::fs::remove_dir_all(entry.path())?;
            continue;
        }
        if let Some(index) = name.strip_prefix('p').and_then(|n| n.parse::<usize>().ok()) {
            found.push(index);
        }
    }
    found.sort_unstable();
    Ok(found)
}

pub(crate) fn log_dir(intake_dir: &Path, index: usize) -> PathBuf {
    intake_dir.join(format!("p{index}"))
}

fn layout_line(partitions: usize) -> String {
    format!("partitions={partitions} hash={HASH}\n")
}

/// Whether the logs were last written under this layout.
pub(crate) fn is_current(intake_dir: &Path, partitions: usize) -> bool {
    std::fs::read_to_string(intake_dir.join(LAYOUT_FILE)).is_ok_and(|line| line == layout_line(partitions))
}

/// Records the layout, atomically and durably.
pub(crate) fn record(intake_dir: &Path, partitions: usize) -> std::io::Result<()> {
    let tmp = intake_dir.join("layout.tmp");
    std::fs::write(&tmp, layout_line(partitions))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, intake_dir.join(LAYOUT_FILE))?;
    std::fs::File::open(intake_dir)?.sync_all()
}

/// What moving a log's unflushed requests did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub requests: u64,
    pub events: u64,
    /// Damaged stretches skipped and kept in the quarantine (each reported as it was found).
    pub damaged: u64,
}

/// Appends every unflushed request of log `from` whose pipeline now belongs to another
/// partition to that partition's log (`to`, the logs of the current layout). With `all` (the
/// log is about to go), damaged data and a request that cannot be decoded are kept in the
/// quarantine and reported here; otherwise they are passed over, left for the log's own actor,
/// which keeps and reports them when it reaches them (once).
pub(crate) async fn move_requests(
    from: usize,
    source: &OpenedLog,
    to: &[OpenedLog],
    quarantine: &Quarantine,
    all: bool,
) -> Result<Moved, IngestError> {
    let checkpoint = source.recovery.checkpoint;
    let mut reader = Some(source.reader.at(checkpoint.position));
    let mut moved = Moved::default();
    let name = format!("p{from}");
    loop {
        let mut taken = reader.take().expect("reader present");
        let (back, chunk, damage) = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            let mut damage = Vec::new();
            while bytes < MOVE_CHUNK_BYTES {
                match taken.next_frame() {
                    Ok(Some(frame)) => {
                        bytes += frame.payload.len();
                        chunk.push(frame);
                    }
                    Ok(None) => break,
                    Err(LogError::Corrupt { .. }) if all => damage.push(taken.skip_damage()),
                    Err(LogError::Corrupt { .. }) => {
                        if let Err(err) = taken.pass_damage() {
                            return (taken, Err(err), damage);
                        }
                    }
                    Err(err) => return (taken, Err(err), damage),
                }
            }
            (taken, Ok(chunk), damage)
        })
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        reader = Some(back);
        for found in damage {
            let found = found.map_err(|source| IngestError::Move { log: name.clone(), source })?;
            moved.damaged += 1;
            crate::report_damage(&name, &found);
        }
        let chunk = chunk.map_err(|source| IngestError::Move { log: name.clone(), source })?;
        if chunk.is_empty() {
            return Ok(moved);
        }
        // Each target's frames in log order, appended together so that they share fsyncs.
        let mut by_target: Vec<Vec<Vec<u8>>> = vec![Vec::new(); to.len()];
        for frame in chunk {
            let mut record = match IntakeRecord::decode(&frame.payload) {
                Ok(record) => record,
                Err(err) if all => {
                    crate::keep_unreadable(quarantine, &name, frame.position, &frame.payload, &err);
                    continue;
                }
                // Left where it is: the partition's actor keeps it aside when it reaches it.
                Err(_) => continue,
            };
            let target = partition_for(&record.pipeline, to.len());
            if target == from {
                continue;
            }
            if frame.position == checkpoint.position {
                let skip = (checkpoint.skip as usize).min(record.events.len());
                record.events.drain(..skip);
            }
            if record.events.is_empty() {
                continue;
            }
            moved.requests += 1;
            moved.events += record.events.len() as u64;
            by_target[target].push(record.encode());
        }
        for (target, payloads) in by_target.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            to[target]
                .appender
                .append_all(payloads)
                .await
                .map_err(|source| IngestError::Move { log: format!("p{target}"), source })?;
        }
    }
}

/// Removes an emptied log beyond the count: renamed first, so a crash midway leaves a name
/// the next start removes rather than a half-deleted log it would read.
pub(crate) fn remove_log(dir: &Path) -> std::io::Result<()> {
    let mut removing = dir.as_os_str().to_owned();
    removing.push(".removing");
    std::fs::rename(dir, &removing)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    std::fs::remove_dir_all(&removing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_pipeline_is_fixed_across_releases() {
        // Pinned values: a change here strands nothing (a start with another layout moves the
        // requests), but it must be deliberate, with the layout file's hash name changed too.
        let pinned: Vec<usize> =
            ["orders", "payments", "stripe__live", "a", "dash"].iter().map(|p| partition_for(p, 8)).collect();
        assert_eq!(pinned, vec![2, 2, 6, 0, 0]);
        assert_eq!(partition_for("orders", 1), 0);
    }
}
