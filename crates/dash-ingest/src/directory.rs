//! Which pipelines exist and how to authenticate them, cached so that intake does not ask the
//! database per request and keeps working while the database is down.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dash_log_throttle::LogThrottle;
use dash_store::{PipelineAuth, Store};
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
}

pub struct PipelineDirectory {
    store: Store,
    entries: RwLock<Entries>,
    /// When the last refresh ran; also serializes refreshes.
    last_refresh: Mutex<Option<Instant>>,
    /// Refreshes fail every few seconds while the store is down: one warning per period.
    refresh_failures: LogThrottle,
}

impl PipelineDirectory {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            entries: RwLock::new(Entries::default()),
            last_refresh: Mutex::new(None),
            refresh_failures: LogThrottle::per_period(),
        }
    }

    fn cached(&self, id_or_name: &str) -> Option<Arc<PipelineAuth>> {
        let entries = self.entries.read().expect("directory lock");
        let id = entries.id_by_name.get(id_or_name).map_or(id_or_name, String::as_str);
        entries.by_id.get(id).cloned()
    }

    pub async fn lookup(&self, id_or_name: &str) -> Lookup {
        if let Some(found) = self.cached(id_or_name) {
            return Lookup::Found(found);
        }
        let refreshed = {
            let mut last = self.last_refresh.lock().await;
            if last.is_some_and(|t| t.elapsed() < MISS_REFRESH_EVERY) {
                true
            } else {
                let ok = self.reload().await;
                *last = Some(Instant::now());
                ok
            }
        };
        match self.cached(id_or_name) {
            Some(found) => Lookup::Found(found),
            None if refreshed => Lookup::NotFound,
            None => Lookup::Unknown,
        }
    }

    /// Adds or replaces one pipeline (just created or rotated on this node).
    pub fn insert(&self, auth: PipelineAuth) {
        let mut entries = self.entries.write().expect("directory lock");
        entries.id_by_name.insert(auth.name.clone(), auth.id.to_string());
        entries.by_id.insert(auth.id.to_string(), Arc::new(auth));
    }

    /// Replaces the cache with the store's view; false when the store could not be read.
    pub async fn reload(&self) -> bool {
        match self.store.pipeline_auths().await {
            Ok(auths) => {
                let mut fresh = Entries::default();
                for auth in auths {
                    fresh.id_by_name.insert(auth.name.clone(), auth.id.to_string());
                    fresh.by_id.insert(auth.id.to_string(), Arc::new(auth));
                }
                *self.entries.write().expect("directory lock") = fresh;
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
