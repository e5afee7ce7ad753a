//! Reading and deleting directory trees that somebody else made: a guest's outputs, a
//! user's upload, an executor's scratch directories.
//!
//! A guest controls the shape of its output tree, and a shape can be an attack: 30,000
//! nested directories made one `mkdir` at a time through a directory descriptor. A
//! recursive walk then overflows the stack and takes the executor down with every other
//! execution on it, and a walk by ever-longer paths runs into the kernel's path limit
//! with an error that echoes a 4 KB path. So every walk here is iterative, goes down by
//! directory descriptors (`openat` of one name, never following a link, so a guest that
//! swaps a directory for a link while it is walked cannot send it outside the tree), and
//! stops at [`TreeBounds`] with [`Error::TreeTooLarge`] and a short reason.
//! [`remove`] deletes a tree of any depth with a bounded number of open descriptors.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

use crate::proto::EntryKind;
use crate::{Error, Result};

/// Most bytes of a path inside a tree (relative to its root), as in transfers.
pub const MAX_TREE_PATH_BYTES: usize = 4096;

/// How large a tree a walk accepts before it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeBounds {
    /// Most levels of directories below the root.
    pub max_depth: usize,
    /// Most entries (files and directories, the root aside).
    pub max_entries: usize,
}

impl TreeBounds {
    /// Trees written by guests: results, outputs. Well beyond what real programs leave
    /// (the deepest real trees, `node_modules`, stay under 30 levels), small enough that
    /// listing one costs an executor a few tens of MB at most.
    pub const GUEST: TreeBounds = TreeBounds {
        max_depth: 128,
        max_entries: 200_000,
    };
    /// Trees on the user's own disk (`shoal data put`, program and input uploads).
    pub const LOCAL: TreeBounds = TreeBounds {
        max_depth: 256,
        max_entries: 10_000_000,
    };
}

/// One file or directory found by [`walk`], with its path relative to the root.
#[derive(Debug, Clone)]
pub struct LocalEntry {
    pub relative: String,
    pub absolute: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
}

/// A directory being listed: its descriptor, its path relative to the root, and the
/// names in it not yet visited (sorted, last first, so `pop` takes them in order).
struct Level {
    fd: OwnedFd,
    relative: String,
    names: Vec<CString>,
}

/// [`walk`] from async code. A single file (the usual program upload) is one `stat`, done
/// in place: a trip through the blocking pool costs a thread start, a wake-up and, on a
/// busy machine, hundreds of microseconds. A directory is walked on the blocking pool.
pub async fn walk_async(root: &Path, bounds: TreeBounds) -> Result<Vec<LocalEntry>> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        return walk(root, bounds);
    }
    let owned = root.to_owned();
    tokio::task::spawn_blocking(move || walk(&owned, bounds))
        .await
        .map_err(|e| Error::io(root, std::io::Error::other(e)))?
}

/// Lists a file, or a directory tree depth-first with names sorted, parents before
/// children. Symbolic links and special files are skipped (and logged), never followed;
/// names that are not UTF-8 are skipped too. A tree past `bounds`, or with a path longer
/// than [`MAX_TREE_PATH_BYTES`] or than the system takes, is [`Error::TreeTooLarge`].
pub fn walk(root: &Path, bounds: TreeBounds) -> Result<Vec<LocalEntry>> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        return Ok(vec![LocalEntry {
            relative: String::new(),
            absolute: root.to_owned(),
            kind: EntryKind::File,
            size: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        return Err(Error::io(
            root,
            std::io::Error::other("not a regular file or directory"),
        ));
    }
    // The absolute paths handed out must stay within what the system opens.
    let max_path = MAX_TREE_PATH_BYTES.min(4000usize.saturating_sub(root.as_os_str().len()));
    let mut entries = vec![LocalEntry {
        relative: String::new(),
        absolute: root.to_owned(),
        kind: EntryKind::Directory,
        size: 0,
    }];
    let fd = open_dir(CWD, root).map_err(|e| Error::io(root, e.into()))?;
    let mut stack = vec![list(
        fd,
        String::new(),
        root,
        bounds.max_entries,
        bounds.max_entries,
    )?];
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else {
            break;
        };
        let Some(name) = level.names.pop() else {
            stack.pop();
            continue;
        };
        let Ok(text) = name.to_str() else {
            tracing::warn!(dir = level.relative, "skipping a name that is not UTF-8");
            continue;
        };
        let relative = if level.relative.is_empty() {
            text.to_owned()
        } else {
            format!("{}/{text}", level.relative)
        };
        if relative.len() > max_path {
            return Err(Error::TreeTooLarge(format!(
                "it has a path longer than {max_path} bytes"
            )));
        }
        let stat = match rustix::fs::statat(&level.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Gone since it was listed (the guest may still be running): not there.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(Error::io(root.join(&relative), e.into())),
        };
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Directory {
            if depth > bounds.max_depth {
                return Err(Error::TreeTooLarge(format!(
                    "it is more than {} directories deep",
                    bounds.max_depth
                )));
            }
            let fd = match open_dir(&level.fd, name.as_c_str()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(Error::io(root.join(&relative), e.into())),
            };
            push_entry(
                &mut entries,
                bounds,
                root,
                &relative,
                EntryKind::Directory,
                0,
            )?;
            let budget = bounds.max_entries.saturating_sub(entries.len() - 1);
            let level = list(fd, relative, root, budget, bounds.max_entries)?;
            stack.push(level);
        } else if kind == FileType::RegularFile {
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            push_entry(&mut entries, bounds, root, &relative, EntryKind::File, size)?;
        } else {
            tracing::warn!(path = relative, "skipping a symbolic link or special file");
        }
    }
    Ok(entries)
}

fn push_entry(
    entries: &mut Vec<LocalEntry>,
    bounds: TreeBounds,
    root: &Path,
    relative: &str,
    kind: EntryKind,
    size: u64,
) -> Result<()> {
    // The root is entry 0 and does not count.
    if entries.len() > bounds.max_entries {
        return Err(Error::TreeTooLarge(format!(
            "it has more than {} files and directories",
            bounds.max_entries
        )));
    }
    entries.push(LocalEntry {
        relative: relative.to_owned(),
        absolute: root.join(relative),
        kind,
        size,
    });
    Ok(())
}

/// Opens the directory `name` in `dir` for listing, never following a link.
fn open_dir<P: rustix::path::Arg>(dir: impl AsFd, name: P) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Lists a directory (without `.` and `..`), names sorted, last first; more than `limit`
/// names (what is left of the tree's `bound`) is [`Error::TreeTooLarge`] (so a directory of millions of empty files, which
/// costs nothing against an output quota, costs no memory either).
fn list(fd: OwnedFd, relative: String, root: &Path, limit: usize, bound: usize) -> Result<Level> {
    let io = |e: rustix::io::Errno| Error::io(root.join(&relative), e.into());
    let mut dir = Dir::read_from(&fd).map_err(io)?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            if names.len() >= limit {
                return Err(Error::TreeTooLarge(format!(
                    "it has more than {bound} files and directories"
                )));
            }
            names.push(name.to_owned());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Level {
        fd,
        relative,
        names,
    })
}

/// Levels [`remove`] goes down by descriptors before it moves what lies deeper up to the
/// top, so a tree of any depth is deleted with at most this many descriptors open.
const REMOVE_MAX_OPEN: usize = 32;

/// A directory being deleted: its descriptor, its name in the level above (None for the
/// top), and the subdirectories in it still to delete.
struct Doomed {
    fd: OwnedFd,
    name: Option<CString>,
    subdirectories: Vec<CString>,
}

/// Opens a directory for deletion: everything in it that is not a directory is unlinked
/// while it is listed (so a directory of millions of files costs no memory), and its
/// subdirectories are returned for later.
fn doomed(fd: OwnedFd, name: Option<CString>) -> std::io::Result<Doomed> {
    let mut subdirectories = Vec::new();
    let mut dir = Dir::read_from(&fd)?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(&fd, child, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            known => known,
        };
        if kind == FileType::Directory {
            subdirectories.push(child.to_owned());
        } else {
            ignore_missing(rustix::fs::unlinkat(&fd, child, AtFlags::empty()))?;
        }
    }
    Ok(Doomed {
        fd,
        name,
        subdirectories,
    })
}

/// Deletes `root` and everything under it, however deep or wide, never following a link.
/// A missing `root` is not an error.
///
/// Directories deeper than a few levels are moved up into the top of the tree (a rename
/// within one directory tree, so within one filesystem) under a name no guest can guess,
/// and deleted from there, so neither the stack, the open descriptors nor any path grows
/// with the tree's depth; each directory is listed once.
pub fn remove(root: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(root);
    }
    let mut stack = vec![doomed(open_dir(CWD, root)?, None)?];
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else {
            break;
        };
        let Some(name) = level.subdirectories.pop() else {
            // Empty now: delete it from its parent (the top by its path).
            let done = stack.pop().expect("a level is on the stack");
            drop(done.fd);
            match (stack.last(), done.name) {
                (Some(parent), Some(name)) => ignore_missing(rustix::fs::unlinkat(
                    &parent.fd,
                    name.as_c_str(),
                    AtFlags::REMOVEDIR,
                ))?,
                _ => match std::fs::remove_dir(root) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
            continue;
        };
        if depth < REMOVE_MAX_OPEN {
            let child = match open_dir(&level.fd, name.as_c_str()) {
                Ok(child) => child,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let next = doomed(child, Some(name))?;
            stack.push(next);
        } else {
            // Too deep to go on holding descriptors: move it up into the top, to be
            // deleted from there.
            let flat = CString::new(format!(".shoal-removing-{}", uuid::Uuid::now_v7().simple()))
                .map_err(std::io::Error::other)?;
            let (top, rest) = stack.split_at_mut(1);
            let from = rest.last().map_or(&top[0].fd, |l| &l.fd);
            ignore_missing(rustix::fs::renameat(
                from,
                name.as_c_str(),
                &top[0].fd,
                flat.as_c_str(),
            ))?;
            top[0].subdirectories.push(flat);
        }
    }
    Ok(())
}

fn ignore_missing(result: rustix::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => other.map_err(Into::into),
    }
}

pub use crate::error::shorten;

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `depth` nested directories `d/d/d/...` under `root` by descriptor, as a guest
    /// can, past the length a path may have.
    fn nest(root: &Path, depth: usize) {
        let mut fd = open_dir(CWD, root).expect("open root");
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).expect("mkdirat");
            fd = open_dir(&fd, "d").expect("open d");
        }
        let file = rustix::fs::openat(&fd, "leaf", OFlags::CREATE | OFlags::WRONLY, Mode::RUSR)
            .expect("leaf");
        drop(file);
    }

    /// The walk lists parents before children with names sorted, and skips links.
    #[test]
    fn walk_orders_and_skips_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("b/inner")).expect("mkdir");
        std::fs::write(dir.path().join("a.txt"), "aa").expect("write");
        std::fs::write(dir.path().join("b/inner/z"), "zzz").expect("write");
        std::fs::write(dir.path().join("b/c"), "").expect("write");
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).expect("symlink");
        let entries = walk(dir.path(), TreeBounds::GUEST).expect("walk");
        let listed: Vec<(&str, u64)> = entries
            .iter()
            .map(|e| (e.relative.as_str(), e.size))
            .collect();
        assert_eq!(
            listed,
            [
                ("", 0),
                ("a.txt", 2),
                ("b", 0),
                ("b/c", 0),
                ("b/inner", 0),
                ("b/inner/z", 3)
            ]
        );
        assert_eq!(entries[5].absolute, dir.path().join("b/inner/z"));
    }

    /// A tree far deeper than any path may be (30,000 levels, made by descriptor as a
    /// hostile guest can) is refused with a short reason, without a stack overflow, and
    /// then deleted completely.
    #[test]
    fn a_very_deep_tree_is_refused_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("results");
        std::fs::create_dir(&root).expect("mkdir");
        nest(&root, 30_000);
        let error = walk(&root, TreeBounds::GUEST).expect_err("too deep");
        let message = error.to_string();
        assert!(matches!(error, Error::TreeTooLarge(_)), "{message}");
        assert!(message.contains("128 directories deep"), "{message}");
        assert!(message.len() < 200, "{message}");
        remove(&root).expect("remove");
        assert!(!root.exists());
    }

    /// Depth and entry bounds are exact: a tree at the bound is listed, one past it is not;
    /// a path longer than the system allows is refused, not opened.
    #[test]
    fn bounds_are_enforced() {
        let dir = tempfile::tempdir().expect("tempdir");
        nest(dir.path(), 4);
        let four = TreeBounds {
            max_depth: 4,
            max_entries: 5,
        };
        assert_eq!(walk(dir.path(), four).expect("at the bounds").len(), 6);
        let three = TreeBounds {
            max_depth: 3,
            ..four
        };
        assert!(matches!(
            walk(dir.path(), three),
            Err(Error::TreeTooLarge(_))
        ));
        let fewer = TreeBounds {
            max_entries: 4,
            ..four
        };
        let error = walk(dir.path(), fewer).expect_err("too many");
        assert!(error.to_string().contains("more than 4 files"), "{error}");

        let long = tempfile::tempdir().expect("tempdir");
        let name = "n".repeat(250);
        let mut path = long.path().to_owned();
        for _ in 0..20 {
            path.push(&name);
        }
        // Made by descriptor: the whole path is past what the system opens.
        let mut fd = open_dir(CWD, long.path()).expect("open");
        for _ in 0..20 {
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdirat");
            fd = open_dir(&fd, name.as_str()).expect("open");
        }
        let error = walk(long.path(), TreeBounds::GUEST).expect_err("too long");
        assert!(error.to_string().contains("path longer than"), "{error}");
        remove(long.path()).expect("remove");
    }

    /// A tree deeper than the descriptors `remove` holds, beside names a guest planted to
    /// collide with the ones `remove` moves deep directories to, is deleted completely.
    #[test]
    fn remove_survives_planted_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("results");
        std::fs::create_dir_all(root.join(".shoal-removing-1/x")).expect("mkdir");
        std::fs::create_dir_all(root.join(".shoal-removing-2")).expect("mkdir");
        std::fs::write(root.join(".shoal-removing-2/f"), "x").expect("write");
        nest(&root, 100);
        for i in 0..50 {
            std::fs::write(root.join(format!("file-{i}")), "x").expect("write");
        }
        remove(&root).expect("remove");
        assert!(!root.exists());
    }

    /// Removing keeps to the tree: a link inside it to a directory outside is deleted as
    /// a link, and what it pointed at is untouched; a missing root is fine.
    #[test]
    fn remove_never_follows_links() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), "x").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.join("a/b/link")).expect("symlink");
        std::fs::write(root.join("a/file"), "y").expect("write");
        remove(&root).expect("remove");
        assert!(!root.exists());
        assert!(outside.path().join("keep").exists());
        remove(&root).expect("removing a missing tree");
    }

    #[test]
    fn long_paths_are_shortened_for_messages() {
        let long = "x/".repeat(2000);
        let short = shorten(std::ffi::OsStr::new(&long), 100);
        assert!(short.len() <= 110, "{short}");
        assert!(short.contains('…'));
        assert_eq!(shorten(std::ffi::OsStr::new("/a/b"), 100), "/a/b");
    }
}
