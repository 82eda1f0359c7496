//! Segment files: naming, listing, frame parsing, and the scan that finds a torn or damaged
//! tail when a log is opened.

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

/// What the bytes at an offset hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameAt {
    /// A whole frame whose checksum holds, ending at this offset.
    Whole(usize),
    /// A header promising more bytes than there are: what a write cut short leaves.
    Incomplete,
    /// A whole frame whose checksum fails, or a length no frame can have.
    Bad,
}

pub(crate) fn frame_at(bytes: &[u8], offset: usize) -> FrameAt {
    let Some(header) = bytes.get(offset..offset + FRAME_HEADER as usize) else { return FrameAt::Incomplete };
    let len_bytes: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return FrameAt::Bad;
    }
    let start = offset + FRAME_HEADER as usize;
    let Some(payload) = bytes.get(start..start + len) else { return FrameAt::Incomplete };
    match frame_crc(&len_bytes, payload) == crc {
        true => FrameAt::Whole(start + len),
        false => FrameAt::Bad,
    }
}

/// The first offset at or after `from` where a whole frame with a good checksum starts: where
/// reading resumes after damage. A false match needs a 32-bit checksum to hold by chance; text
/// (what payloads mostly are) reads as lengths far beyond [`MAX_FRAME`], so most offsets are
/// passed over without computing one.
pub(crate) fn next_whole_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_HEADER as usize - 1))
        .find(|&offset| matches!(frame_at(bytes, offset), FrameAt::Whole(_)))
}

/// What opening found at the end of the newest segment.
pub(crate) struct Scan {
    /// End of the last whole frame: the segment is cut here.
    pub valid_len: u64,
    /// Bytes cut that a write cut short left (a header promising more, or zeros): never
    /// acknowledged, since a request is answered only after its frame is fsync'd.
    pub torn_bytes: u64,
    /// Bytes cut that held whole frames failing their checksum: acknowledged data, damaged.
    pub damaged_bytes: u64,
}

/// Walks every frame of a segment and cuts the file after the last whole one. Damage in the
/// middle (whole frames follow it) is left in place for the reader, which skips and reports it.
/// `before_cut` runs before damaged bytes are cut (with their offset and length), to keep a copy.
pub(crate) fn scan_and_repair(
    dir: &Path,
    base: u64,
    before_cut: impl FnOnce(&Path, u64, u64) -> io::Result<()>,
) -> io::Result<Scan> {
    let segment_path = path(dir, base);
    let mut bytes = Vec::new();
    File::open(&segment_path)?.read_to_end(&mut bytes)?;
    let mut offset = 0usize;
    let mut tail = None;
    while offset < bytes.len() {
        match frame_at(&bytes, offset) {
            FrameAt::Whole(end) => offset = end,
            found => match next_whole_frame(&bytes, offset + 1) {
                Some(resume) => offset = resume,
                None => {
                    tail = Some(found);
                    break;
                }
            },
        }
    }
    let cut = (bytes.len() - offset) as u64;
    let torn = tail == Some(FrameAt::Incomplete) || bytes[offset..].iter().all(|b| *b == 0);
    let (torn_bytes, damaged_bytes) = if torn { (cut, 0) } else { (0, cut) };
    if cut > 0 {
        if damaged_bytes > 0 {
            before_cut(&segment_path, offset as u64, damaged_bytes)?;
        }
        let file = OpenOptions::new().write(true).open(&segment_path)?;
        file.set_len(offset as u64)?;
        file.sync_all()?;
    }
    Ok(Scan { valid_len: offset as u64, torn_bytes, damaged_bytes })
}
