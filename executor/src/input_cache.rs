//! The executor's input cache: fetched inputs kept on disk by what identifies their
//! content — a CID, or a URL with the strong ETag its server gave — so a second job on the
//! same input does not download it again.
//!
//! Bounded in bytes with least-recently-used eviction. An entry in use by a running
//! execution is pinned and never evicted; a key has one fetch in flight at a time, so
//! concurrent jobs on the same input share one download.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What is known about a cached input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub path: PathBuf,
    pub size: u64,
    /// The strong ETag of a URL input.
    pub etag: Option<String>,
}

struct Entry {
    cached: Cached,
    last_used: u64,
    pins: u32,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
    next_file: u64,
}

/// The cache; share it as `Arc<InputCache>`.
pub struct InputCache {
    root: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Keeps an entry from eviction while alive.
pub struct Pin {
    cache: Arc<InputCache>,
    key: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if let Some(entry) = inner.entries.get_mut(&self.key) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.key)
    }
}

impl InputCache {
    /// A cache of at most `capacity` bytes under `root`, which is emptied first (entries
    /// are not remembered across restarts). A capacity of 0 caches nothing.
    pub fn new(root: &Path, capacity: u64) -> std::io::Result<Arc<Self>> {
        shoal::content::local_tree::remove(root)?;
        std::fs::create_dir_all(root)?;
        Ok(Arc::new(InputCache {
            root: root.to_owned(),
            capacity,
            inner: Mutex::new(Inner::default()),
            fetches: Mutex::new(HashMap::new()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no other fetch of `key` is in flight; hold the guard while fetching.
    pub async fn fetch_lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The entry for `key`, pinned, if cached.
    pub fn get(self: &Arc<Self>, key: &str) -> Option<(Cached, Pin)> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.entries.get_mut(key)?;
        entry.last_used = clock;
        entry.pins += 1;
        let cached = entry.cached.clone();
        Some((
            cached,
            Pin {
                cache: self.clone(),
                key: key.to_owned(),
            },
        ))
    }

    /// A fresh path under the cache directory to fetch into.
    pub fn new_path(&self) -> PathBuf {
        let mut inner = self.lock();
        inner.next_file += 1;
        self.root.join(format!("entry-{}", inner.next_file))
    }

    /// Adds (or replaces) `key` with the content fetched to `path`, evicting the least
    /// recently used unpinned entries to make room. Returns the pinned entry, or `None` if
    /// it does not fit (the caller keeps using `path`, which is then its own to delete).
    pub fn insert(self: &Arc<Self>, key: &str, cached: Cached) -> Option<Pin> {
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(key) {
            inner.total -= old.cached.size;
            remove_path(&old.cached.path);
        }
        while inner.total + cached.size > self.capacity {
            let victim = inner
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            // Nothing unpinned is left to evict: the entry does not fit.
            let victim = victim?;
            if let Some(entry) = inner.entries.remove(&victim) {
                inner.total -= entry.cached.size;
                remove_path(&entry.cached.path);
            }
        }
        inner.clock += 1;
        let clock = inner.clock;
        inner.total += cached.size;
        inner.entries.insert(
            key.to_owned(),
            Entry {
                cached,
                last_used: clock,
                pins: 1,
            },
        );
        Some(Pin {
            cache: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Bytes held now.
    pub fn size(&self) -> u64 {
        self.lock().total
    }
}

fn remove_path(path: &Path) {
    let result = shoal::content::local_tree::remove(path);
    if let Err(error) = result
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove an evicted cache entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cache: &InputCache, size: usize) -> Cached {
        let path = cache.new_path();
        std::fs::write(&path, vec![0u8; size]).expect("write");
        Cached {
            path,
            size: size as u64,
            etag: None,
        }
    }

    /// Least recently used unpinned entries make room; pinned ones never go.
    #[test]
    fn evicts_lru_but_not_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = InputCache::new(&dir.path().join("cache"), 100).expect("cache");
        let a = entry(&cache, 40);
        let a_path = a.path.clone();
        drop(cache.insert("a", a));
        let pinned_b = cache.insert("b", entry(&cache, 40));
        assert!(pinned_b.is_some());
        // "a" was used more recently than "b" was inserted? No: touch it now.
        drop(cache.get("a"));
        // 40 + 40 + 40 > 100: "a" is the only unpinned entry, so it goes.
        let c = cache.insert("c", entry(&cache, 40));
        assert!(c.is_some());
        assert!(cache.get("a").is_none());
        assert!(!a_path.exists(), "evicted files are deleted");
        assert!(cache.get("b").is_some());
        assert_eq!(cache.size(), 80);
        // Nothing unpinned is left to evict: an entry that does not fit is refused.
        assert!(cache.insert("d", entry(&cache, 40)).is_none());
        drop(pinned_b);
        drop(c);
        assert!(cache.insert("d", entry(&cache, 40)).is_some());
    }

    /// Replacing a key frees the old content.
    #[test]
    fn replace_frees_old_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = InputCache::new(&dir.path().join("cache"), 100).expect("cache");
        let old = entry(&cache, 30);
        let old_path = old.path.clone();
        drop(cache.insert("k", old));
        drop(cache.insert("k", entry(&cache, 50)));
        assert_eq!(cache.size(), 50);
        assert!(!old_path.exists());
    }
}
