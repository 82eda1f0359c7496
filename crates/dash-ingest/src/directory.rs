//! Which pipelines exist and how to authenticate them, cached so that intake does not ask the
//! database per request and keeps working while the database is down, kept on local disk too
//! ([`DirectoryFile`]) so that a node started while the database is unreachable still
//! authenticates and accepts its pipelines' webhooks.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_domain::PipelineId;
use dash_log_throttle::LogThrottle;
use dash_signature::SigningSecret;
use dash_store::{PipelineAuth, ProviderAuth, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// A miss refreshes from the store at most this often.
const MISS_REFRESH_EVERY: Duration = Duration::from_millis(250);

pub enum Lookup {
    Found(Arc<PipelineAuth>),
    NotFound,
    /// Not cached, and the store could not be asked: the caller cannot say 404.
    Unknown,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Arc<PipelineAuth>>,
    id_by_name: HashMap<String, String>,
    /// Pipelines this node added itself ([`PipelineDirectory::insert`]), and when: a reload whose
    /// read began before that may not have seen them, and must not drop them.
    inserted: HashMap<String, (Instant, Arc<PipelineAuth>)>,
    /// When the read behind the view in place began: a reload whose read began earlier (two
    /// reloads that overlap, the periodic one and a cache miss's) lands after it and is dropped.
    read_at: Option<Instant>,
}

pub struct PipelineDirectory {
    store: Store,
    entries: RwLock<Entries>,
    /// When the last refresh ran and whether the store answered it; also serializes refreshes.
    last_refresh: Mutex<Option<(Instant, bool)>>,
    /// Refreshes fail every few seconds while the store is down: one warning per period.
    refresh_failures: LogThrottle,
    file: Arc<DirectoryFile>,
}

impl PipelineDirectory {
    /// A directory kept in `file` too; what the file holds is loaded at once.
    pub(crate) fn new(store: Store, file: PathBuf) -> Self {
        let file = Arc::new(DirectoryFile { path: file, last: Default::default() });
        let directory = Self {
            store,
            entries: RwLock::new(Entries::default()),
            last_refresh: Mutex::new(None),
            refresh_failures: LogThrottle::per_period(),
            file,
        };
        if let Some(auths) = directory.file.load(dash_domain::now_ms()) {
            tracing::info!(pipelines = auths.len(), "pipeline directory loaded from its local copy");
            directory.replace(auths, Instant::now());
        }
        directory
    }

    /// Takes the store's view, read from `read_at` on; what this node inserted since stays. A
    /// view read before the one in place is older than it and changes nothing: applied, it
    /// would drop a pipeline made here that the newer view holds and took out of `inserted`.
    fn replace(&self, auths: Vec<PipelineAuth>, read_at: Instant) {
        let mut fresh = Entries::default();
        for auth in auths {
            fresh.id_by_name.insert(auth.name.clone(), auth.id.to_string());
            fresh.by_id.insert(auth.id.to_string(), Arc::new(auth));
        }
        let mut entries = self.entries.write();
        if entries.read_at.is_some_and(|newest| read_at < newest) {
            return;
        }
        fresh.read_at = Some(read_at);
        let inserted = std::mem::take(&mut entries.inserted);
        for (id, (at, auth)) in inserted {
            if at < read_at {
                continue; // the read began after it: the store's view has it
            }
            if !fresh.by_id.contains_key(&id) {
                fresh.id_by_name.insert(auth.name.clone(), id.clone());
                fresh.by_id.insert(id.clone(), auth.clone());
            }
            fresh.inserted.insert(id, (at, auth));
        }
        *entries = fresh;
    }

    /// Writes the local copy if it changed (off the async threads).
    pub async fn persist(&self) {
        let auths: Vec<Arc<PipelineAuth>> = self.entries.read().by_id.values().cloned().collect();
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || file.store(DirectoryFile::encode(&auths))).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(path = %self.file.path.display(), error = %err, "pipeline directory: local copy not written")
            }
            Err(err) => tracing::warn!(error = %err, "pipeline directory: local copy task failed"),
        }
    }

    fn cached(&self, id_or_name: &str) -> Option<Arc<PipelineAuth>> {
        let entries = self.entries.read();
        let id = entries.id_by_name.get(id_or_name).map_or(id_or_name, String::as_str);
        entries.by_id.get(id).cloned()
    }

    pub async fn lookup(&self, id_or_name: &str) -> Lookup {
        if let Some(found) = self.cached(id_or_name) {
            return Lookup::Found(found);
        }
        // Only a store that answered can say a pipeline is absent: a refresh that failed, however
        // recent, leaves the answer unknown (503), never 404.
        let refreshed = {
            let mut last = self.last_refresh.lock().await;
            match *last {
                Some((at, answered)) if at.elapsed() < MISS_REFRESH_EVERY => answered,
                _ => {
                    let answered = self.reload().await;
                    *last = Some((Instant::now(), answered));
                    answered
                }
            }
        };
        match self.cached(id_or_name) {
            Some(found) => Lookup::Found(found),
            None if refreshed => Lookup::NotFound,
            None => Lookup::Unknown,
        }
    }

    /// Adds or replaces one pipeline (just created or rotated on this node), and writes the
    /// local copy at once: a start right after, while the store is down, knows it.
    pub async fn insert(&self, auth: PipelineAuth) {
        {
            let mut entries = self.entries.write();
            let id = auth.id.to_string();
            let auth = Arc::new(auth);
            entries.id_by_name.insert(auth.name.clone(), id.clone());
            entries.by_id.insert(id.clone(), auth.clone());
            entries.inserted.insert(id, (Instant::now(), auth));
        }
        self.persist().await;
    }

    /// Replaces the cache with the store's view; false when the store could not be read.
    pub async fn reload(&self) -> bool {
        let read_at = Instant::now();
        match self.store.pipeline_auths().await {
            Ok(auths) => {
                self.replace(auths, read_at);
                self.persist().await;
                true
            }
            Err(err) => {
                if let Some(held_back) = self.refresh_failures.admit() {
                    tracing::warn!(error = %err, held_back, "pipeline directory refresh failed; keeping the cached view");
                }
                false
            }
        }
    }
}

/// The directory's copy on local disk, for a start while the store cannot be asked.
///
/// JSON, rewritten whenever a refresh from the store changes it: a temporary file created with
/// mode 0600 (it holds the pipelines' signing secrets, as the database does), fsync'd, then
/// renamed over the old one, so a crash leaves the old copy or the new one, never half of one.
#[derive(Debug)]
struct DirectoryFile {
    path: PathBuf,
    /// What was last written (or read), to skip writing what is already there.
    last: parking_lot::Mutex<Option<Vec<u8>>>,
}

#[derive(Serialize, Deserialize)]
struct FileContents {
    version: u32,
    pipelines: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    id: String,
    name: String,
    /// Current first, then a rotated-out one while its grace lasts.
    secrets: Vec<String>,
    token_hashes: Vec<String>,
    previous_expires_ms: Option<i64>,
    /// A provider pipeline's verification (absent in files of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<FileProvider>,
}

#[derive(Serialize, Deserialize)]
struct FileProvider {
    /// The provider and its options, as the API shows them.
    verify: serde_json::Value,
    secrets: Vec<String>,
    previous_expires_ms: Option<i64>,
}

const FILE_VERSION: u32 = 1;

impl DirectoryFile {
    fn encode(auths: &[Arc<PipelineAuth>]) -> Vec<u8> {
        let mut pipelines: Vec<FileEntry> = auths
            .iter()
            .map(|a| FileEntry {
                id: a.id.to_string(),
                name: a.name.clone(),
                secrets: a.secrets.iter().map(|s| s.expose()).collect(),
                token_hashes: a.token_hashes.clone(),
                previous_expires_ms: a.previous_expires_ms,
                provider: a.provider.as_ref().map(|p| FileProvider {
                    verify: p.spec.to_json(),
                    secrets: p.secrets.clone(),
                    previous_expires_ms: p.previous_expires_ms,
                }),
            })
            .collect();
        pipelines.sort_by(|a, b| a.id.cmp(&b.id));
        serde_json::to_vec_pretty(&FileContents { version: FILE_VERSION, pipelines }).expect("plain data encodes")
    }

    /// What the file holds, dropping rotated-out credentials whose grace has ended.
    fn load(&self, now_ms: i64) -> Option<Vec<PipelineAuth>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "pipeline directory file unreadable; ignored");
                return None;
            }
        };
        let contents = match serde_json::from_slice::<FileContents>(&bytes) {
            Ok(contents) if contents.version == FILE_VERSION => contents,
            Ok(contents) => {
                tracing::warn!(version = contents.version, "pipeline directory file of an unknown version; ignored");
                return None;
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "pipeline directory file malformed; ignored");
                return None;
            }
        };
        let mut auths = Vec::with_capacity(contents.pipelines.len());
        for entry in contents.pipelines {
            let parsed = (|| {
                let mut secrets =
                    entry.secrets.iter().map(|s| SigningSecret::parse(s)).collect::<Result<Vec<_>, _>>().ok()?;
                let mut token_hashes = entry.token_hashes;
                if entry.previous_expires_ms.is_none_or(|until| until <= now_ms) {
                    secrets.truncate(1);
                    token_hashes.truncate(1);
                }
                let provider = match entry.provider {
                    Some(p) => {
                        let mut secrets = p.secrets;
                        if p.previous_expires_ms.is_none_or(|until| until <= now_ms) {
                            secrets.truncate(1);
                        }
                        let spec = dash_providers::VerifySpec::from_json(&p.verify).ok()?;
                        Some(ProviderAuth { spec, secrets, previous_expires_ms: p.previous_expires_ms })
                    }
                    None => None,
                };
                Some(PipelineAuth {
                    id: PipelineId::parse(&entry.id).ok()?,
                    name: entry.name,
                    secrets,
                    token_hashes,
                    previous_expires_ms: entry.previous_expires_ms,
                    provider,
                })
            })();
            match parsed {
                Some(auth) => auths.push(auth),
                None => tracing::warn!(pipeline = entry.id, "pipeline directory file entry malformed; skipped"),
            }
        }
        *self.last.lock() = Some(bytes);
        Some(auths)
    }

    /// Writes `bytes` unless they are what the file already holds.
    fn store(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut last = self.last.lock();
        if last.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *last = Some(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(id: &str) -> PipelineAuth {
        PipelineAuth {
            id: PipelineId::parse(id).unwrap(),
            name: id.to_owned(),
            secrets: vec![SigningSecret::generate()],
            token_hashes: vec![],
            previous_expires_ms: None,
            provider: None,
        }
    }

    /// A directory over a fresh SQLite store in `dir`, its local copy beside it.
    async fn directory_in(dir: &std::path::Path) -> PipelineDirectory {
        let store = Store::connect(&format!("sqlite://{}", dir.join("dash.db").display())).await.unwrap();
        PipelineDirectory::new(store, dir.join("pipelines.json"))
    }

    #[tokio::test]
    async fn a_reload_that_read_before_an_insert_keeps_the_inserted_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let directory = directory_in(dir.path()).await;
        let read_before = Instant::now();
        directory.insert(auth("made-here")).await;
        // A reload whose read began before the pipeline was made does not know it: kept.
        directory.replace(vec![auth("elsewhere")], read_before);
        assert!(directory.cached("made-here").is_some() && directory.cached("elsewhere").is_some());
        // One that read after it speaks for the store.
        directory.replace(vec![auth("elsewhere")], Instant::now());
        assert!(directory.cached("made-here").is_none(), "the store's view wins once it had the chance");
        // The local copy was written at the insert.
        let copy = std::fs::read_to_string(dir.path().join("pipelines.json")).unwrap();
        assert!(copy.contains("made-here"), "{copy}");
    }

    /// Two reloads overlap: one read before the pipeline was made, one after; the later read
    /// lands first. The earlier one landing last must not take the pipeline away (a webhook
    /// to it would get 404 until the next refresh).
    #[tokio::test]
    async fn overlapping_reloads_landing_out_of_order_keep_the_newer_view() {
        let dir = tempfile::tempdir().unwrap();
        let directory = directory_in(dir.path()).await;
        let early_read = Instant::now();
        directory.insert(auth("made-here")).await;
        let late_read = Instant::now();
        directory.replace(vec![auth("made-here")], late_read);
        directory.replace(vec![], early_read);
        assert!(directory.cached("made-here").is_some(), "an older view replaced a newer one");
        // A newer read still speaks for the store.
        directory.replace(vec![], Instant::now());
        assert!(directory.cached("made-here").is_none());
    }
}
