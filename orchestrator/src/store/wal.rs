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
//! The file starts with a header, `SHOALWAL` and the log's id (u64 LE); the database
//! records the id of its log, so a log that is missing, or that belongs to another
//! database, is reported instead of silently ignored. Then come frames, each
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][CRC-32 of those 8 bytes: u32
//! LE][payload]`; the payload is the frame's sequence number (u64 LE, one more for every
//! frame the store makes, logged or not) followed by rows, `[table: u8][key length: u32
//! LE][key][sequence: u64 LE, events only][value length: u32 LE][value]`. The database
//! records, in each synced commit, the sequence number of the last frame that commit
//! covers (`wal_applied`), so start-up applies only the frames after it: a frame older
//! than a synced commit that overwrote its records (a crash between a direct commit and
//! the emptying of the log) is never applied over it again.
//!
//! Reading it back tells a torn tail from damage. A crash in the middle of an append
//! leaves at most its last frame incomplete: cut short by the end of the file, or with
//! bytes that never reached the disk (zeros, or a payload that fails its checksum and
//! ends exactly at the end of the file). That frame was never acknowledged (an
//! acknowledgement waits for the sync) and is cut off. Anything else that fails a
//! checksum — a frame followed by more data, a damaged frame header — is corruption:
//! [`Wal::open`] refuses it with the offset and what to do ([`LogDamage`]), and leaves the
//! file as it is. [`Recovery::MoveAside`] is the explicit way on: the damaged log is
//! renamed aside, the frames before the damage are kept, and what was lost is logged.
//! (A byte flipped in the very last frame looks like a torn write, and is dropped with
//! a warning naming its offset: nothing can tell the two apart.)

use std::fs::File;
use std::io;
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
const FRAME_HEADER: usize = 12;
/// The frame's sequence number, at the start of its payload.
const FRAME_SEQUENCE: usize = 8;
/// The file header: magic, then the log's id. An empty log is this long.
pub const FILE_HEADER: usize = 16;
const MAGIC: &[u8; 8] = b"SHOALWAL";

/// The tables a row can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Jobs = 0,
    Executions = 1,
    Events = 2,
    Nodes = 3,
    Blocks = 4,
    /// Facts about the store itself (a probe write after a failure).
    Meta = 5,
    /// File names of stored CIDs (the first recorded for each).
    Names = 6,
    /// Compiled modules executors share, by engine and program.
    Modules = 7,
    /// Shard listings of sharded jobs, by job id.
    Shards = 8,
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
            bytes: vec![0; FRAME_HEADER + FRAME_SEQUENCE],
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
        self.bytes.len() == FRAME_HEADER + FRAME_SEQUENCE
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
    pub fn finish(mut self, sequence: u64) -> Vec<u8> {
        self.bytes[FRAME_HEADER..FRAME_HEADER + FRAME_SEQUENCE]
            .copy_from_slice(&sequence.to_le_bytes());
        let payload = &self.bytes[FRAME_HEADER..];
        let length = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        self.bytes[..4].copy_from_slice(&length.to_le_bytes());
        self.bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&self.bytes[..8]);
        self.bytes[8..12].copy_from_slice(&header_crc.to_le_bytes());
        self.bytes
    }
}

/// A frame's sequence number (0 for a frame too short to have one).
pub fn frame_sequence(frame: &[u8]) -> u64 {
    frame
        .get(FRAME_HEADER..FRAME_HEADER + FRAME_SEQUENCE)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// The rows of a frame (header included), in order; an error if it is malformed.
pub fn rows(frame: &[u8]) -> Result<Vec<Row<'_>>> {
    let malformed = || Error::Store("a write-ahead log frame is malformed".into());
    let mut rest = frame
        .get(FRAME_HEADER + FRAME_SEQUENCE..)
        .ok_or_else(malformed)?;
    let mut take = |n: usize| -> Result<&[u8]> {
        if rest.len() < n {
            return Err(malformed());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut rows = Vec::new();
    let u32_at = |b: &[u8]| u32_at(b) as usize;
    loop {
        let Ok(table) = take(1) else { break };
        let table = match table[0] {
            0 => Table::Jobs,
            1 => Table::Executions,
            2 => Table::Events,
            3 => Table::Nodes,
            4 => Table::Blocks,
            5 => Table::Meta,
            6 => Table::Names,
            7 => Table::Modules,
            8 => Table::Shards,
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

/// What to do with a damaged or missing log at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to start ([`Error::LogDamaged`]), leaving every file as it is.
    #[default]
    Refuse,
    /// Keep the frames before the damage, move the damaged log aside (`state.wal.damaged-
    /// <unix time>`), start a new log, and log what was lost. A missing log is replaced
    /// by a new one.
    MoveAside,
}

/// Where and how a log is damaged; its `Display` says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    pub path: PathBuf,
    /// Byte offset of the first unreadable byte (the frame that fails), if the file exists.
    pub offset: Option<u64>,
    /// Frames read intact before it.
    pub good_frames: usize,
    /// Bytes from the damage to the end of the file.
    pub lost_bytes: u64,
    pub what: String,
}

impl std::fmt::Display for LogDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the write-ahead log {} ", self.path.display())?;
        match self.offset {
            Some(offset) => write!(
                f,
                "is damaged at byte {offset} (frame {}, after {} intact frames; {} bytes from \
                 there to the end): {}",
                self.good_frames + 1,
                self.good_frames,
                self.lost_bytes,
                self.what
            )?,
            None => write!(f, "{}", self.what)?,
        }
        write!(
            f,
            ". Writes acknowledged after that point are in the damaged part. Nothing was \
             changed. Restore the data directory from a backup, or start once with \
             --recover-wal to keep what is intact, move the damaged log aside and go on \
             without the rest"
        )
    }
}

/// What [`Wal::open`] found.
pub enum Opened {
    /// The log, to go on with.
    Log(Wal),
    /// Recovery: once the database holds the intact frames and records `id` (in one
    /// commit), a new empty log with that id replaces the damaged or missing one
    /// ([`Wal::create`]).
    Replace { id: u64 },
}

/// A new log id.
fn new_id() -> u64 {
    uuid::Uuid::now_v7().as_u64_pair().1 | 1
}

/// The log file.
pub struct Wal {
    file: File,
    path: PathBuf,
    length: u64,
    id: u64,
    /// The sequence number the next frame gets.
    next_frame: u64,
}

/// What [`scan`] found in a log's bytes after its header.
struct Scan {
    frames: Vec<Vec<u8>>,
    /// End of the last intact frame.
    end: usize,
    /// Why the bytes after `end` are damage rather than a torn tail, if they are.
    damage: Option<String>,
}

fn u32_at(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().unwrap_or_default())
}

/// Reads frames from `at` until the end or the first frame that does not check out, and
/// tells a torn tail (see the module's comment) from damage.
fn scan(bytes: &[u8], mut at: usize) -> Scan {
    let mut frames = Vec::new();
    let damage = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        // A torn tail is part of one append, and an append is smaller than DIRECT_BYTES
        // (larger groups skip the log): more than that after the last intact frame is
        // damage, whatever it looks like.
        let header_ok = rest.len() >= FRAME_HEADER
            && crc32fast::hash(&rest[..8]) == u32_at(&rest[8..FRAME_HEADER]);
        if rest.len() >= DIRECT_BYTES && !header_ok {
            break Some(format!(
                "{} unreadable bytes ({}) follow the last intact frame, more than one append writes",
                rest.len(),
                if rest.iter().all(|b| *b == 0) {
                    "zeros"
                } else {
                    "not a frame"
                }
            ));
        }
        if rest.iter().all(|b| *b == 0) {
            break None; // space the file grew by, never written: torn
        }
        let Some(header) = rest.get(..FRAME_HEADER) else {
            break None; // a header cut short by the end of the file: torn
        };
        if crc32fast::hash(&header[..8]) != u32_at(&header[8..12]) {
            break Some("a frame header fails its checksum".to_owned());
        }
        let length = u32_at(&header[..4]) as usize;
        let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + length) else {
            break None; // cut short by the end of the file: torn
        };
        if crc32fast::hash(payload) != u32_at(&header[4..8]) {
            if FRAME_HEADER + length == rest.len() && rest.len() < DIRECT_BYTES {
                tracing::warn!(
                    offset = at,
                    bytes = rest.len(),
                    "the last write-ahead log frame fails its checksum; taking it for a write \
                     cut short by a crash (never acknowledged) and cutting it off"
                );
                break None;
            }
            break Some(format!(
                "a frame of {length} bytes fails its checksum and more data follows it"
            ));
        }
        frames.push(rest[..FRAME_HEADER + length].to_vec());
        at += FRAME_HEADER + length;
    };
    Scan {
        frames,
        end: at,
        damage,
    }
}

impl Wal {
    /// Opens the log at `path` for the database whose log id is `expected` (None for a
    /// database that has none yet: a new one, which gets a new log) and returns it with
    /// the complete frames it holds, in order. A torn tail is cut off; damage, a missing
    /// log the database expects, or a log of another database is
    /// [`Error::LogDamaged`] unless `recovery` says to go on without it
    /// ([`Opened::Replace`]). The log's id is what the database must record.
    pub fn open(
        path: &Path,
        expected: Option<u64>,
        recovery: Recovery,
    ) -> Result<(Opened, Vec<Vec<u8>>)> {
        let context = |what: &str| format!("{what} {}", path.display());
        let damage =
            |offset: Option<u64>, good_frames: usize, lost_bytes: u64, what: String| LogDamage {
                path: path.to_owned(),
                offset,
                good_frames,
                lost_bytes,
                what,
            };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(context("reading"), e)),
        };
        let (frames, problem) = match (&bytes, expected) {
            (None, None) => (Vec::new(), None),
            (None, Some(id)) => (
                Vec::new(),
                Some(damage(
                    None,
                    0,
                    0,
                    format!("is missing, but the database expects its log (id {id:016x})"),
                )),
            ),
            (Some(bytes), _) if bytes.is_empty() && expected.is_none() => (Vec::new(), None),
            (Some(bytes), _) => {
                let header_ok = bytes.len() >= FILE_HEADER && &bytes[..8] == MAGIC;
                let id = header_ok
                    .then(|| u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()));
                if !header_ok {
                    let what = "does not start with a Shoal log header (damaged, or written by an \
                                incompatible version)";
                    (
                        Vec::new(),
                        Some(damage(Some(0), 0, bytes.len() as u64, what.into())),
                    )
                } else if expected.is_some() && id != expected {
                    let what = format!(
                        "belongs to another database (log id {:016x}, the database expects {:016x})",
                        id.unwrap_or_default(),
                        expected.unwrap_or_default()
                    );
                    (Vec::new(), Some(damage(None, 0, 0, what)))
                } else {
                    let scan = scan(bytes, FILE_HEADER);
                    let lost = (bytes.len() - scan.end) as u64;
                    let problem = scan
                        .damage
                        .map(|what| damage(Some(scan.end as u64), scan.frames.len(), lost, what));
                    if problem.is_none() && lost > 0 {
                        tracing::warn!(
                            path = %path.display(),
                            offset = scan.end,
                            bytes = lost,
                            "cutting off an incomplete write-ahead log frame (a write that was never acknowledged)"
                        );
                        let file = File::options()
                            .write(true)
                            .open(path)
                            .map_err(|e| Error::io(context("opening"), e))?;
                        file.set_len(scan.end as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| Error::io(context("truncating"), e))?;
                    }
                    let keep_id = problem.is_none().then_some(id).flatten();
                    if let Some(id) = keep_id {
                        let wal = Wal::reopen(path, id, scan.end as u64)?;
                        return Ok((Opened::Log(wal), scan.frames));
                    }
                    (scan.frames, problem)
                }
            }
        };
        if let Some(problem) = problem {
            if recovery == Recovery::Refuse {
                return Err(Error::LogDamaged(problem));
            }
            if bytes.is_some() {
                // Copied, not moved: the damaged log stays in place until the database has
                // taken the intact frames and the new log's id in one commit, so a crash
                // during recovery loses nothing (run it again).
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let aside = path.with_extension(format!(
                    "wal.damaged-{}.{:09}",
                    now.as_secs(),
                    now.subsec_nanos()
                ));
                std::fs::copy(path, &aside)
                    .and_then(|_| File::open(&aside)?.sync_all())
                    .map_err(|e| Error::io(context("copying aside"), e))?;
                tracing::error!(
                    damage = %problem,
                    kept_frames = frames.len(),
                    copied_to = %aside.display(),
                    "recovering: the damaged write-ahead log is kept aside; the intact frames \
                     before the damage are applied, the writes after it are lost"
                );
            } else {
                tracing::error!(
                    damage = %problem,
                    "recovering: starting a new write-ahead log; writes acknowledged since the \
                     last checkpoint are lost"
                );
            }
            return Ok((Opened::Replace { id: new_id() }, frames));
        }
        Ok((Opened::Log(Wal::create(path, new_id())?), frames))
    }

    /// Starts a new, empty log with id `id` (replacing what is at `path`), durably.
    pub fn create(path: &Path, id: u64) -> Result<Wal> {
        let context = |what: &str| format!("{what} {}", path.display());
        let temp = path.with_extension("wal.new");
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&id.to_le_bytes());
        std::fs::write(&temp, &header)
            .and_then(|()| File::open(&temp)?.sync_all())
            .and_then(|()| std::fs::rename(&temp, path))
            .and_then(|()| match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
                _ => Ok(()),
            })
            .map_err(|e| Error::io(context("creating"), e))?;
        Wal::reopen(path, id, FILE_HEADER as u64)
    }

    fn reopen(path: &Path, id: u64, length: u64) -> Result<Wal> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(Wal {
            file,
            path: path.to_owned(),
            length,
            id,
            next_frame: 1,
        })
    }

    /// The log's id, which the database records.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A sequence number for the next frame.
    pub fn next_sequence(&mut self) -> u64 {
        let sequence = self.next_frame;
        self.next_frame += 1;
        sequence
    }

    /// The sequence number of the last frame made so far (0 before any).
    pub fn last_sequence(&self) -> u64 {
        self.next_frame - 1
    }

    /// Makes later frames number after `sequence` (the highest the database or the log
    /// already has).
    pub fn continue_after(&mut self, sequence: u64) {
        self.next_frame = self.next_frame.max(sequence + 1);
    }

    /// Appends frames and waits until they are on disk (one sync for all). On an error
    /// (a full disk) the log is cut back to where it was, so no part of the failed frames
    /// stays behind to be taken for damage (or applied) later.
    pub fn append(&mut self, frames: &[Vec<u8>]) -> io::Result<()> {
        let before = self.length;
        let mut at = before;
        let written = frames
            .iter()
            .try_for_each(|frame| {
                self.file.write_all_at(frame, at)?;
                at += frame.len() as u64;
                Ok(())
            })
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.length = at;
                Ok(())
            }
            Err(error) => {
                if let Err(cut) = self.truncate(before) {
                    tracing::error!(error = %cut, "cannot cut a failed append out of the write-ahead log");
                }
                Err(error)
            }
        }
    }

    /// Cuts the log back to `length` bytes (the end of an earlier append), durably.
    pub fn truncate(&mut self, length: u64) -> io::Result<()> {
        self.file.set_len(length)?;
        self.file.sync_all()?;
        self.length = length;
        Ok(())
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// Whether the log holds no frame.
    pub fn is_empty(&self) -> bool {
        self.length <= FILE_HEADER as u64
    }

    /// Empties the log (its header stays), once everything in it is durable in the
    /// database.
    pub fn clear(&mut self) -> Result<()> {
        self.file
            .set_len(FILE_HEADER as u64)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(format!("emptying {}", self.path.display()), e))?;
        self.length = FILE_HEADER as u64;
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
        builder.finish(1)
    }

    fn job_frame(key: &str) -> Vec<u8> {
        frame(&[(Table::Jobs, key, 0, b"job")])
    }

    /// The log an open found, which must be one to go on with.
    fn log(opened: Opened) -> Wal {
        match opened {
            Opened::Log(wal) => wal,
            Opened::Replace { .. } => panic!("a log to replace"),
        }
    }

    /// Opens `path` for a database expecting `expected`, taking the log.
    fn open(path: &Path, expected: Option<u64>) -> (Wal, Vec<Vec<u8>>) {
        let (opened, frames) = Wal::open(path, expected, Recovery::Refuse).expect("open");
        (log(opened), frames)
    }

    /// A log holding `frames`, written as the store writes them; returns its id.
    fn written(path: &Path, frames: &[Vec<u8>]) -> u64 {
        let (mut wal, old) = open(path, None);
        assert!(old.is_empty());
        wal.append(frames).expect("append");
        wal.id()
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
        let third = frame(&[(Table::Nodes, "e1", 0, b"node")]);
        // Half of a third frame, as a crash during its write leaves it.
        let id = written(
            &path,
            &[
                first.clone(),
                second.clone(),
                third[..third.len() / 2].to_vec(),
            ],
        );
        let (wal, frames) = open(&path, Some(id));
        assert_eq!(frames, [first.clone(), second.clone()]);
        assert_eq!(wal.id(), id);
        assert_eq!(wal.len(), std::fs::metadata(&path).expect("stat").len());
        drop(wal);
        // Space the file grew by but that was never written (zeros) is torn too, and so is
        // a last frame whose payload never reached the disk.
        let mut unwritten = third.clone();
        unwritten[FRAME_HEADER..].fill(0);
        for tail in [vec![0u8; 300], unwritten] {
            let (mut wal, _) = open(&path, Some(id));
            wal.append(&[tail]).expect("append");
            drop(wal);
            let (_, frames) = open(&path, Some(id));
            assert_eq!(frames, [first.clone(), second.clone()]);
        }
        let frames = frames_of(&path, id);
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

    fn frames_of(path: &Path, id: u64) -> Vec<Vec<u8>> {
        open(path, Some(id)).1
    }

    /// One flipped byte in a frame that more frames follow is damage, not a torn tail:
    /// the log is refused with the offset, and left exactly as it was. Recovery keeps the
    /// frames before the damage and moves the damaged log aside.
    #[test]
    fn a_flipped_byte_mid_log_is_refused_then_recovered_explicitly() {
        for flip_in_header in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.wal");
            let good = job_frame("j1");
            let mut bad = job_frame("j2");
            let at = if flip_in_header { 1 } else { bad.len() - 1 };
            bad[at] ^= 0x40;
            let id = written(
                &path,
                &[good.clone(), bad, job_frame("j3"), job_frame("j4")],
            );
            let before = std::fs::read(&path).expect("read");
            let error = match Wal::open(&path, Some(id), Recovery::Refuse) {
                Err(error) => error,
                Ok(_) => panic!("a damaged log was accepted"),
            };
            let Error::LogDamaged(damage) = &error else {
                panic!("{error}")
            };
            let offset = (FILE_HEADER + good.len()) as u64;
            assert_eq!(damage.offset, Some(offset));
            assert_eq!(damage.good_frames, 1);
            let message = error.to_string();
            assert!(message.contains(&format!("at byte {offset}")), "{message}");
            assert!(message.contains("--recover-wal"), "{message}");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                before,
                "left as it was"
            );

            let (opened, frames) =
                Wal::open(&path, Some(id), Recovery::MoveAside).expect("recover");
            assert_eq!(frames, [good]);
            let Opened::Replace { id: new_id } = opened else {
                panic!("recovery replaces the log")
            };
            assert_eq!(
                std::fs::read(&path).expect("read"),
                before,
                "kept until replaced"
            );
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("state.wal.damaged-"))
                .collect();
            assert_eq!(aside.len(), 1);
            assert_eq!(
                std::fs::read(dir.path().join(&aside[0])).expect("read"),
                before
            );
            // Once the database took the frames, the new log replaces the damaged one.
            let wal = Wal::create(&path, new_id).expect("create");
            assert!(wal.is_empty());
            drop(wal);
            let (reopened, frames) = open(&path, Some(new_id));
            assert!(frames.is_empty() && reopened.is_empty());
        }
    }

    /// More unreadable bytes after the last intact frame than one append writes cannot be
    /// a torn write: a long run of zeros (lost blocks, a sparse copy) is damage.
    #[test]
    fn a_long_unreadable_tail_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.wal");
        let id = written(&path, &[job_frame("j1"), vec![0; DIRECT_BYTES + 1]]);
        let error = Wal::open(&path, Some(id), Recovery::Refuse)
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("unreadable bytes (zeros)"),
            "{error}"
        );
    }

    /// A database that expects a log finds it missing, or finds another database's log:
    /// both are refused, never taken for an empty log.
    #[test]
    fn a_missing_or_foreign_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.wal");
        let id = written(&path, &[job_frame("j1")]);
        std::fs::remove_file(&path).expect("rm");
        let error = Wal::open(&path, Some(id), Recovery::Refuse)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("is missing"), "{error}");
        let other = written(&path, &[job_frame("j1")]);
        assert_ne!(other, id);
        let error = Wal::open(&path, Some(id), Recovery::Refuse)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("another database"), "{error}");
        std::fs::remove_file(&path).expect("rm");
        let (opened, frames) = Wal::open(&path, Some(id), Recovery::MoveAside).expect("recover");
        assert!(frames.is_empty() && matches!(opened, Opened::Replace { .. }));
    }

    /// A payload whose rows lie about their lengths is an error, not a panic.
    #[test]
    fn a_malformed_payload_is_an_error() {
        let mut lying = FrameBuilder::default();
        lying.row(Table::Jobs, "j", 0, |b| b.extend_from_slice(b"x"));
        let mut lying = lying.finish(1);
        lying[FRAME_HEADER + FRAME_SEQUENCE + 1] = 200; // the key length, past the end
        assert!(rows(&lying).is_err());
    }
}
