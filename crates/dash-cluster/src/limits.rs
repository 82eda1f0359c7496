//! The limits this node runs under: its cgroup's memory (as on a Fly machine or in a
//! container), else the machine's, and the CPU cores it may use.

use std::path::{Path, PathBuf};

use procfs::Current;

/// What the node may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeLimits {
    /// Bytes of memory: the tightest cgroup limit on the way to the root, else the machine's
    /// memory; `None` when neither can be read.
    pub memory_bytes: Option<u64>,
    /// Cores: a cgroup CPU quota counts (`std::thread::available_parallelism` reads it).
    pub cpu_cores: f64,
}

impl NodeLimits {
    /// Read now (a few small files; cheap enough for every scrape).
    pub fn read() -> Self {
        let memory_bytes = cgroup_memory_limit(Path::new("/sys/fs/cgroup"), Path::new("/proc/self/cgroup"))
            .or_else(|| procfs::Meminfo::current().ok().map(|m| m.mem_total));
        let cpu_cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        Self { memory_bytes, cpu_cores }
    }
}

/// The tightest memory limit of this process's cgroup and its ancestors (cgroup v2's
/// `memory.max`, else v1's `memory.limit_in_bytes`); `None` where none is set.
fn cgroup_memory_limit(root: &Path, self_cgroup: &Path) -> Option<u64> {
    let membership = std::fs::read_to_string(self_cgroup).ok()?;
    let mut limits = Vec::new();
    for line in membership.lines() {
        // "0::/path" (v2), "N:memory:/path" or "N:cpu,memory:/path" (v1).
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (dir, file) = match controllers {
            "" => (root.to_path_buf(), "memory.max"),
            c if c.split(',').any(|c| c == "memory") => (root.join("memory"), "memory.limit_in_bytes"),
            _ => continue,
        };
        let mut at: PathBuf = dir.join(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = std::fs::read_to_string(at.join(file)).ok().and_then(|text| parse_limit(&text)) {
                limits.push(limit);
            }
            if at == dir || !at.pop() {
                break;
            }
        }
    }
    limits.into_iter().min()
}

/// A limit file's value: "max" (v2) and v1's page-rounded "unlimited" are no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 60).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_cgroup_limit_on_the_way_up_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        std::fs::create_dir_all(root.join("machine/app")).unwrap();
        std::fs::write(root.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("machine/memory.max"), "1073741824\n").unwrap();
        std::fs::write(root.join("machine/app/memory.max"), "max\n").unwrap();
        let membership = dir.path().join("self");
        std::fs::write(&membership, "0::/machine/app\n").unwrap();
        assert_eq!(cgroup_memory_limit(&root, &membership), Some(1 << 30));

        // cgroup v1, unlimited: no limit.
        std::fs::create_dir_all(root.join("memory/x")).unwrap();
        std::fs::write(root.join("memory/x/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(&membership, "4:cpu,memory:/x\n").unwrap();
        assert_eq!(cgroup_memory_limit(&root, &membership), None);
        std::fs::write(&membership, "garbage").unwrap();
        assert_eq!(cgroup_memory_limit(&root, &membership), None);
    }

    #[test]
    fn this_node_has_limits() {
        let limits = NodeLimits::read();
        assert!(limits.memory_bytes.is_some_and(|m| m > 0) && limits.cpu_cores >= 1.0, "{limits:?}");
    }
}
