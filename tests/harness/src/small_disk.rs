//! A real, small filesystem to fill up, for the full-disk tests.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A tmpfs of a few hundred KiB, mounted for one test and unmounted when dropped. A full
/// disk is then a real `ENOSPC` from the kernel, not a mock.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `1m`). Needs root, which CI and
    /// these machines have; without it the test fails and says so.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root: {status}");
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk until a write fails, then frees `free` bytes of it again; returns the
    /// filler, to delete when the disk should have room again.
    pub fn fill_leaving(&self, free: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0xa5u8; 4096];
        let mut written = 0u64;
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {
            written += chunk.len() as u64;
        }
        file.set_len(written.saturating_sub(free))
            .expect("shrink the filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
