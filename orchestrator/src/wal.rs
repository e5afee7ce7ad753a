//! The store's write-ahead log: what makes a group commit durable.
//!
//! A redb commit rewrites every B-tree page on the paths to its changes — ten to twelve
//! scattered 4 KiB pages for a job's few records — and an fdatasync of those cost 350-500 us
//! on the benchmark machine, where an fdatasync after one small sequential write costs
//! about 120 us. So each group of writes is appended here as one frame and synced; only
//! then is it applied to redb, in a commit that is not synced ([`redb::Durability::None`]).
//! Every [`CHECKPOINT_BYTES`] of log, and when the store closes, a synced redb commit makes
//! everything applied so far durable in the database itself and the log starts again
//! empty. A group of [`DIRECT_BYTES`] or more (log chunks, mostly) skips the log: writing
//! its bytes twice would cost more than the sync it saves, so it goes into a synced redb
//! commit, which is a checkpoint too. After a crash, redb opens at its last synced commit
//! and the frames in the log are applied again: every write puts a whole record under its
//! key, so applying a frame twice leaves what applying it once does.
//!
//! A frame is `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`; the
//! payload is a sequence of rows, `[table: u8][key length: u32 LE][key][sequence: u64 LE,
//! events only][value length: u32 LE][value]`. A frame cut short by a crash, or whose
//! checksum fails, ends the log: it was never acknowledged, since acknowledgement waits
//! for its sync.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Log size past which the writer checkpoints (a synced redb commit, then an empty log).
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Group size from which the writer skips the log: it applies the group to the database
/// in a synced commit (which makes everything before it durable too) and empties the log.
pub const DIRECT_BYTES: usize = 512 << 10;
/// Frame size past which the writer starts another frame for the rest of a group.
pub const FRAME_TARGET: usize = 64 << 20;
const FRAME_HEADER: usize = 8;

/// The tables a row can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Jobs = 0,
    Executions = 1,
    Events = 2,
    Nodes = 3,
    Blocks = 4,
}

/// One row: a table, a key (plus a sequence number for events) and the value's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Row<'a> {
    pub table: Table,
    pub key: &'a str,
    pub sequence: u64,
    pub value: &'a [u8],
}

/// Builds one frame.
pub struct FrameBuilder {
    bytes: Vec<u8>,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder {
            bytes: vec![0; FRAME_HEADER],
        }
    }
}

impl FrameBuilder {
    /// Bytes so far, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == FRAME_HEADER
    }

    /// Adds a row whose value `encode` appends to the buffer it is given.
    pub fn row(
        &mut self,
        table: Table,
        key: &str,
        sequence: u64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        self.bytes.push(table as u8);
        self.bytes
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(key.as_bytes());
        if table == Table::Events {
            self.bytes.extend_from_slice(&sequence.to_le_bytes());
        }
        let length_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        encode(&mut self.bytes);
        let length = (self.bytes.len() - length_at - 4) as u32;
        self.bytes[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
    }

    /// The finished frame: header and payload.
    pub fn finish(mut self) -> Vec<u8> {
        let payload = &self.bytes[FRAME_HEADER..];
        let length = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        self.bytes[..4].copy_from_slice(&length.to_le_bytes());
        self.bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        self.bytes
    }
}

/// The rows of a frame (header included), in order; an error if it is malformed.
pub fn rows(frame: &[u8]) -> Result<Vec<Row<'_>>> {
    let malformed = || Error::Store("a write-ahead log frame is malformed".into());
    let mut rest = frame.get(FRAME_HEADER..).ok_or_else(malformed)?;
    let mut take = |n: usize| -> Result<&[u8]> {
        if rest.len() < n {
            return Err(malformed());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut rows = Vec::new();
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize;
    loop {
        let Ok(table) = take(1) else { break };
        let table = match table[0] {
            0 => Table::Jobs,
            1 => Table::Executions,
            2 => Table::Events,
            3 => Table::Nodes,
            4 => Table::Blocks,
            _ => return Err(malformed()),
        };
        let key_length = u32_at(take(4)?);
        let key = std::str::from_utf8(take(key_length)?).map_err(|_| malformed())?;
        let sequence = if table == Table::Events {
            u64::from_le_bytes(take(8)?.try_into().unwrap_or_default())
        } else {
            0
        };
        let value_length = u32_at(take(4)?);
        let value = take(value_length)?;
        rows.push(Row {
            table,
            key,
            sequence,
            value,
        });
    }
    Ok(rows)
}

/// The log file.
pub struct Wal {
    file: File,
    path: PathBuf,
    length: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns it with the complete frames it
    /// holds, in order. Whatever follows the last complete frame is cut off.
    pub fn open(path: &Path) -> Result<(Wal, Vec<Vec<u8>>)> {
        let context = |what: &str| format!("{what} {}", path.display());
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(context("opening"), e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(context("reading"), e))?;
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
            let length = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            let end = at + FRAME_HEADER + length;
            let Some(payload) = bytes.get(at + FRAME_HEADER..end) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            frames.push(bytes[at..end].to_vec());
            at = end;
        }
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() - at,
                "cutting off an incomplete write-ahead log frame (a write that was never acknowledged)"
            );
            file.set_len(at as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(context("truncating"), e))?;
        }
        let wal = Wal {
            file,
            path: path.to_owned(),
            length: at as u64,
        };
        Ok((wal, frames))
    }

    /// Appends frames and waits until they are on disk (one sync for all).
    pub fn append(&mut self, frames: &[Vec<u8>]) -> io::Result<()> {
        for frame in frames {
            self.file.write_all_at(frame, self.length)?;
            self.length += frame.len() as u64;
        }
        self.file.sync_data()
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// Whether the log holds no frame.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Empties the log, once everything in it is durable in the database.
    pub fn clear(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(format!("emptying {}", self.path.display()), e))?;
        self.length = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: &[(Table, &str, u64, &[u8])]) -> Vec<u8> {
        let mut builder = FrameBuilder::default();
        for (table, key, sequence, value) in rows {
            builder.row(*table, key, *sequence, |b| b.extend_from_slice(value));
        }
        builder.finish()
    }

    /// Rows come back as written; frames survive reopening, and a torn last frame (a crash
    /// in the middle of an append) is cut off without losing the frames before it.
    #[test]
    fn frames_round_trip_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.wal");
        let first = frame(&[
            (Table::Jobs, "j1", 0, b"job"),
            (Table::Events, "j1", 7, b"event"),
        ]);
        let second = frame(&[(Table::Blocks, "bafy", 0, &[0; 100])]);
        {
            let (mut wal, frames) = Wal::open(&path).expect("open");
            assert!(frames.is_empty());
            wal.append(&[first.clone(), second.clone()])
                .expect("append");
            // Half of a third frame, as a crash during its write leaves it.
            let third = frame(&[(Table::Nodes, "e1", 0, b"node")]);
            wal.append(&[third[..third.len() / 2].to_vec()])
                .expect("append");
        }
        let (wal, frames) = Wal::open(&path).expect("reopen");
        assert_eq!(frames, [first.clone(), second]);
        assert_eq!(wal.len(), std::fs::metadata(&path).expect("stat").len());
        let rows = rows(&frames[0]).expect("rows");
        assert_eq!(
            rows,
            [
                Row {
                    table: Table::Jobs,
                    key: "j1",
                    sequence: 0,
                    value: b"job"
                },
                Row {
                    table: Table::Events,
                    key: "j1",
                    sequence: 7,
                    value: b"event"
                },
            ]
        );
    }

    /// A frame whose bytes changed after it was written fails its checksum and ends the
    /// log; a malformed payload is an error, not a panic.
    #[test]
    fn a_corrupt_frame_ends_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.wal");
        let good = frame(&[(Table::Jobs, "j1", 0, b"job")]);
        let mut bad = frame(&[(Table::Jobs, "j2", 0, b"job")]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        {
            let (mut wal, _) = Wal::open(&path).expect("open");
            wal.append(&[good.clone(), bad]).expect("append");
        }
        let (_, frames) = Wal::open(&path).expect("reopen");
        assert_eq!(frames, [good]);

        let mut lying = FrameBuilder::default();
        lying.row(Table::Jobs, "j", 0, |b| b.extend_from_slice(b"x"));
        let mut lying = lying.finish();
        lying[9] = 200; // the key length, past the end
        assert!(rows(&lying).is_err());
    }
}
