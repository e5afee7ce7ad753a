//! Scratch directories for executions, reused when an execution leaves nothing behind.
//!
//! An execution works in a directory of its own under `work_dir/executions`: `results/`
//! (what is published), with one directory per declared output, `tmp/` (the guest's
//! `/tmp`: writable, counted in the output quota, never published), and `inputs/` when
//! anything was downloaded. Making and deleting those directories was most of an
//! executor's filesystem cost per job (docs/PERFORMANCE.md, B2 and B3: on ext4 every new
//! inode scans the recently freed ones), and most jobs write nothing there but their
//! logs, which stay in memory. So a directory whose execution left only empty output
//! directories in `results/` goes back to a pool and is handed to a later execution as
//! it is; anything else (a file, a link, a non-empty directory or `tmp/`, `inputs/`) and
//! the directory is deleted as before. A reused directory therefore never holds a byte of an
//! earlier job: only empty directories, which [`ScratchPool::acquire`] trims to the new
//! job's outputs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Clean scratch directories kept for reuse.
pub struct ScratchPool {
    root: PathBuf,
    /// Names new directories apart from those of other executor processes sharing the
    /// work directory, and of earlier runs (whose leftovers are not touched).
    prefix: String,
    next: AtomicU64,
    /// Clean directories, each with the (empty) output directories it holds.
    free: Mutex<Vec<Clean>>,
    keep: usize,
}

/// Whether a directory coming back may go to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reuse {
    /// If it is found clean.
    IfClean,
    /// If it is found clean, `results/` being known to hold only these empty directories
    /// (publishing looked after the program ended by itself), so only the rest is read.
    Known(Vec<String>),
    /// Never: its program was stopped in the middle, and a file call it had started may
    /// still land in it after any look (wasmtime-wasi runs file calls on the blocking
    /// pool, which dropping the program does not stop).
    Never,
}

/// A pooled directory: `results/` holds exactly these empty directories, `tmp/` is empty.
struct Clean {
    path: PathBuf,
    outputs: Vec<String>,
}

impl ScratchPool {
    /// A pool of directories under `root` (which must exist), keeping at most `keep`.
    pub fn new(root: PathBuf, keep: usize) -> Self {
        ScratchPool {
            root,
            prefix: uuid::Uuid::now_v7().simple().to_string(),
            next: AtomicU64::new(0),
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A scratch directory laid out for an execution with these outputs: `results/` with
    /// one empty directory per output. A clean one comes from the pool, trimmed to these
    /// outputs, else a new one is made. On an error, nothing is left behind.
    ///
    /// A pooled directory is trimmed right here, not in the blocking pool: it holds a few
    /// empty directories this process used a moment ago, so that is a handful of metadata
    /// calls answered from the kernel's caches, microseconds against the 100-300 us of a
    /// round trip through the blocking pool on a busy machine (B3, docs/PERFORMANCE.md).
    /// Making a new directory allocates inodes on disk, and goes to the blocking pool.
    ///
    /// A pooled directory laid out for the same outputs as the last execution's (a
    /// fanned-out job's partitions, a job run again) is handed out as it is: it was found
    /// clean, with exactly those directories, when it came back.
    pub async fn acquire(&self, outputs: &[String]) -> io::Result<PathBuf> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(Clean {
            path: scratch,
            outputs: held,
        }) = reused
        {
            if same_names(&held, outputs) {
                return Ok(scratch);
            }
            if trim(&scratch.join("results"), outputs).is_ok()
                && make_outputs(&scratch, outputs).is_ok()
            {
                return Ok(scratch);
            }
            // Could not reuse it: delete it, and start afresh.
            remove(scratch).await;
        }
        let fresh = self.root.join(format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let outputs = outputs.to_vec();
        tokio::task::spawn_blocking(move || {
            make_outputs(&fresh, &outputs).inspect_err(|_| remove_blocking(&fresh))?;
            Ok(fresh)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Gives a directory back after its execution ended: pooled when clean, deleted
    /// otherwise (or when the pool is full).
    ///
    /// Checked right here, like a pooled directory is trimmed in `acquire`: a clean one is
    /// three small directories this process just used, read from the kernel's caches; a
    /// round trip through the blocking pool for it cost more than the reads (B2',
    /// docs/PERFORMANCE.md). A dirty one is deleted in the blocking pool.
    pub async fn release(&self, scratch: PathBuf, reuse: Reuse) {
        let results = match reuse {
            Reuse::Never => return remove(scratch).await,
            Reuse::IfClean => None,
            Reuse::Known(outputs) => Some(outputs),
        };
        if let Some(outputs) = clean_outputs(&scratch, results) {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < self.keep {
                free.push(Clean {
                    path: scratch,
                    outputs,
                });
                return;
            }
        }
        remove(scratch).await;
    }

    /// Deletes the pooled directories, when the executor stops.
    pub async fn clear(&self) {
        let free = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        for clean in free {
            remove(clean.path).await;
        }
    }
}

async fn remove(scratch: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || remove_blocking(&scratch)).await;
}

fn remove_blocking(scratch: &Path) {
    // A guest decides the shape of what it leaves: `remove` copes with any depth.
    if let Err(error) = shoal::content::local_tree::remove(scratch) {
        tracing::warn!(%error, path = %scratch.display(), "cannot remove a scratch directory");
    }
}

/// The guest's `/tmp` inside a scratch directory.
pub fn tmp_dir(scratch: &Path) -> PathBuf {
    scratch.join("tmp")
}

/// Makes `scratch/results/OUTPUT` for each output (and so `results/`) and `scratch/tmp`,
/// where missing.
fn make_outputs(scratch: &Path, outputs: &[String]) -> io::Result<()> {
    let results = scratch.join("results");
    std::fs::create_dir_all(&results)?;
    let made = |dir: PathBuf| match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    };
    made(tmp_dir(scratch))?;
    for output in outputs {
        made(results.join(output))?;
    }
    Ok(())
}

/// The names of the empty directories in `scratch/results` if `scratch` holds nothing
/// else but an empty `tmp/`; None if it holds anything more, lacks `results/` or `tmp/`, or
/// cannot be read. `results`, when given, is what `results/` is known to hold.
fn clean_outputs(scratch: &Path, results: Option<Vec<String>>) -> Option<Vec<String>> {
    let only_results = || -> io::Result<bool> {
        let (mut tmp, mut has_results) = (false, false);
        for entry in std::fs::read_dir(scratch)? {
            let entry = entry?;
            // `file_type` does not follow links: a link is never taken for a directory.
            let name = entry.file_name();
            if !entry.file_type()?.is_dir() {
                return Ok(false);
            }
            if name == "tmp" {
                if std::fs::read_dir(entry.path())?.next().is_some() {
                    return Ok(false);
                }
                tmp = true;
            } else if name == "results" {
                has_results = true;
            } else {
                return Ok(false);
            }
        }
        // Both must be there, whatever `results` says: they are the mount points.
        Ok(tmp && has_results)
    };
    if !only_results().unwrap_or(false) {
        return None;
    }
    results.or_else(|| empty_directories(&scratch.join("results")))
}

/// Whether `a` and `b` hold the same names (each list is a job's distinct output names).
fn same_names(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|name| b.contains(name))
}

/// The names in `results` if it holds nothing but empty directories (what an execution
/// that wrote no file leaves there); None if it holds anything else or cannot be read.
pub fn empty_directories(results: &Path) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(results).ok()? {
        let entry = entry.ok()?;
        let empty_dir = entry.file_type().ok()?.is_dir()
            && std::fs::read_dir(entry.path()).ok()?.next().is_none();
        if !empty_dir {
            return None;
        }
        names.push(entry.file_name().into_string().ok()?);
    }
    Some(names)
}

/// Removes the (empty) directories in `results` that are not among `outputs`.
fn trim(results: &Path, outputs: &[String]) -> io::Result<()> {
    for entry in std::fs::read_dir(results)? {
        let entry = entry?;
        if !outputs
            .iter()
            .any(|o| *o == entry.file_name().to_string_lossy())
        {
            // `remove_dir` fails on a non-empty directory, which a clean one cannot be.
            std::fs::remove_dir(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `scratch/results/<output>` for each output, like an execution does.
    fn lay_out(scratch: &Path, outputs: &[&str]) {
        for output in outputs {
            std::fs::create_dir_all(scratch.join("results").join(output)).expect("mkdir");
        }
        std::fs::create_dir_all(scratch.join("results")).expect("mkdir");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A file left in `/tmp` makes a directory dirty: it is deleted, never handed to the
    /// next execution.
    #[tokio::test]
    async fn a_file_left_in_tmp_is_never_handed_on() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = ScratchPool::new(root.path().to_owned(), 4);
        let first = pool.acquire(&["outputs".into()]).await.expect("acquire");
        std::fs::write(tmp_dir(&first).join("left"), b"x").expect("write");
        pool.release(first.clone(), Reuse::IfClean).await;
        assert!(
            !first.exists(),
            "a directory with a file in tmp/ is deleted"
        );
        let next = pool.acquire(&["outputs".into()]).await.expect("acquire");
        assert!(names(&tmp_dir(&next)).is_empty(), "the next /tmp is empty");

        // What publishing saw of `results/` spares only that read: `tmp/` and the rest are
        // still checked.
        std::fs::write(tmp_dir(&next).join("left"), b"x").expect("write");
        pool.release(next.clone(), Reuse::Known(vec!["outputs".into()]))
            .await;
        assert!(!next.exists(), "deleted, though results/ was seen clean");
        let clean = pool.acquire(&["outputs".into()]).await.expect("acquire");
        pool.release(clean.clone(), Reuse::Known(vec!["outputs".into()]))
            .await;
        assert_eq!(
            pool.acquire(&["outputs".into()]).await.expect("acquire"),
            clean
        );

        // A directory whose program was stopped in the middle is never pooled, clean or
        // not: a write it had started may land after any look.
        pool.release(clean.clone(), Reuse::Never).await;
        assert!(!clean.exists(), "deleted, though clean");
        assert!(pool.free.lock().expect("lock").is_empty());
    }

    /// A directory left with only empty output directories is handed out again, trimmed
    /// to the next job's outputs; the pool keeps no more than its bound.
    #[tokio::test]
    async fn clean_directories_are_reused_and_trimmed() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = ScratchPool::new(root.path().to_owned(), 1);
        let first = pool.acquire(&["outputs".into()]).await.expect("acquire");
        assert_eq!(names(&first), ["results", "tmp"]);
        assert_eq!(names(&first.join("results")), ["outputs"]);
        lay_out(&first, &["extra"]);
        pool.release(first.clone(), Reuse::IfClean).await;

        let again = pool
            .acquire(&["outputs".into(), "more".into()])
            .await
            .expect("acquire");
        assert_eq!(again, first);
        assert_eq!(names(&again.join("results")), ["more", "outputs"]);

        let other = pool.acquire(&[]).await.expect("acquire");
        assert_ne!(other, first);
        assert!(names(&other.join("results")).is_empty());
        pool.release(again.clone(), Reuse::IfClean).await;
        pool.release(other.clone(), Reuse::IfClean).await;
        assert!(again.exists());
        assert!(
            !other.exists(),
            "past the bound, a clean directory is deleted"
        );
        pool.clear().await;
        assert!(
            !again.exists(),
            "a stopping executor leaves no directory behind"
        );
    }

    /// A work directory where no directory can be made gives an error, not a panic.
    #[tokio::test]
    async fn an_unusable_work_directory_is_an_error() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("not-a-directory");
        std::fs::write(&file, "x").expect("write");
        let pool = ScratchPool::new(file, 1);
        let error = pool
            .acquire(&["outputs".into()])
            .await
            .expect_err("a directory under a file");
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory, "{error}");
    }

    /// Anything an execution left behind (a file, a link, a non-empty output, inputs/)
    /// gets the directory deleted, never reused.
    #[tokio::test]
    async fn directories_with_leftovers_are_deleted() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = ScratchPool::new(root.path().to_owned(), 8);
        type Leave = fn(&Path);
        let leftovers: [(&str, Leave); 5] = [
            ("a file in an output", |s| {
                std::fs::write(s.join("results/outputs/out.txt"), "x").expect("write")
            }),
            ("a directory in an output", |s| {
                std::fs::create_dir(s.join("results/outputs/sub")).expect("mkdir")
            }),
            ("a spilled log", |s| {
                std::fs::write(s.join("results/stdout"), "x").expect("write")
            }),
            ("inputs", |s| {
                std::fs::create_dir(s.join("inputs")).expect("mkdir")
            }),
            ("a link to a directory", |s| {
                std::os::unix::fs::symlink("/", s.join("results/root")).expect("symlink")
            }),
        ];
        for (what, leave) in leftovers {
            let scratch = pool.acquire(&["outputs".into()]).await.expect("acquire");
            leave(&scratch);
            pool.release(scratch.clone(), Reuse::IfClean).await;
            assert!(!scratch.exists(), "with {what}, the directory is deleted");
        }
        assert!(pool.free.lock().expect("lock").is_empty());
    }

    /// A directory handed back for the same outputs is not touched again, but one whose
    /// `tmp/` or `results/` went missing is not pooled (it would lack a mount point).
    #[tokio::test]
    async fn same_outputs_reuse_and_missing_directories() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = ScratchPool::new(root.path().to_owned(), 4);
        let outputs = ["b".to_owned(), "a".to_owned()];
        let first = pool.acquire(&outputs).await.expect("acquire");
        pool.release(first.clone(), Reuse::IfClean).await;
        let again = pool
            .acquire(&["a".into(), "b".into()])
            .await
            .expect("acquire");
        assert_eq!(again, first, "reused for the same outputs, in any order");
        assert_eq!(names(&again.join("results")), ["a", "b"]);
        assert_eq!(names(&again), ["results", "tmp"]);

        std::fs::remove_dir(tmp_dir(&again)).expect("rmdir");
        pool.release(again.clone(), Reuse::IfClean).await;
        assert!(!again.exists(), "without tmp/ it is deleted");
        let other = pool.acquire(&outputs).await.expect("acquire");
        std::fs::remove_dir_all(other.join("results")).expect("rm");
        pool.release(other.clone(), Reuse::IfClean).await;
        assert!(!other.exists(), "without results/ it is deleted");
        assert!(pool.free.lock().expect("lock").is_empty());
    }
}
