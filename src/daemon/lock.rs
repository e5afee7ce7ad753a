//! An advisory lock on a daemon's directory, held for as long as the daemon runs: a second
//! orchestrator, executor or devstack pointed at a directory in use is refused before it
//! touches anything in it (a second executor would otherwise clear the first one's input
//! cache under it), and the refusal names the process that holds the lock.
//!
//! The lock is `flock(2)` on `shoal.lock` in the directory, which the kernel releases when
//! the process exits however it exits, so a killed daemon never leaves a stale lock.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = "shoal.lock";

/// A held directory lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, writing this process's id into the lock file;
    /// fails with [`Error::DirectoryInUse`] if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let io = |path: &Path, source| Error::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::DirectoryInUse {
                    dir: dir.to_owned(),
                    holder: if holder.is_empty() {
                        "another process".to_owned()
                    } else {
                        format!("process {holder}")
                    },
                });
            }
            Err(errno) => return Err(io(&path, errno.into())),
        }
        // Ours now: say who holds it, for the next process that asks.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(|e| io(&path, e))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_is_refused_naming_the_holder_until_it_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("the first lock");
        assert_eq!(
            std::fs::read_to_string(first.path())
                .expect("lock file")
                .trim(),
            std::process::id().to_string()
        );
        // flock locks belong to an open file, so a second open in this process conflicts
        // just as another process would.
        let refused = DirLock::acquire(dir.path()).expect_err("already locked");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("process {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once released");
    }
}
