//! Segment files: naming, listing, and the scan that finds (and cuts) a torn tail.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::{FRAME_HEADER, MAX_FRAME};

pub(crate) fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Segment bases in ascending order.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Creates an empty segment and makes its directory entry durable.
pub(crate) fn create(dir: &Path, base: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path(dir, base))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

pub(crate) fn frame_crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

pub(crate) struct Scan {
    pub valid_len: u64,
    pub truncated_bytes: u64,
}

/// Walks every frame of a segment; cuts the file at the first incomplete or corrupt one.
pub(crate) fn scan_and_repair(dir: &Path, base: u64) -> io::Result<Scan> {
    let segment_path = path(dir, base);
    let mut bytes = Vec::new();
    File::open(&segment_path)?.read_to_end(&mut bytes)?;
    let mut offset = 0usize;
    while let Some(next) = valid_frame_end(&bytes, offset) {
        offset = next;
    }
    let truncated_bytes = (bytes.len() - offset) as u64;
    if truncated_bytes > 0 {
        let file = OpenOptions::new().write(true).open(&segment_path)?;
        file.set_len(offset as u64)?;
        file.sync_all()?;
    }
    Ok(Scan { valid_len: offset as u64, truncated_bytes })
}

/// The end of the frame starting at `offset`, if it is whole and its checksum holds.
fn valid_frame_end(bytes: &[u8], offset: usize) -> Option<usize> {
    let header = bytes.get(offset..offset + FRAME_HEADER as usize)?;
    let len_bytes: [u8; 4] = header[0..4].try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let start = offset + FRAME_HEADER as usize;
    let payload = bytes.get(start..start + len)?;
    (frame_crc(&len_bytes, payload) == crc).then_some(start + len)
}
