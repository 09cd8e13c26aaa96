//! Reading a file as it grows: complete lines only, across rename rotation, copy-truncate
//! rotation and a file deleted and created again, from a position that survives restarts.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes before the read offset kept to recognise a copy-truncated file.
const FINGERPRINT: usize = 64;

/// Which file a position is in: device and inode, so a rotated file is never taken for its
/// successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Where reading stands: the file, the offset of the first byte not yet published, and the
/// bytes just before it (to tell the file from a truncated and rewritten one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The file.
    pub file: FileId,
    /// Bytes of it consumed (always at a line start).
    pub offset: u64,
    /// The last bytes before `offset` ([`FINGERPRINT`] at most).
    #[serde(default)]
    pub before: Vec<u8>,
}

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without its newline, nor a `\r` before it).
    Text(Vec<u8>),
    /// A line longer than the bound, skipped whole.
    TooLong,
}

/// A followed file.
pub struct Tail {
    path: PathBuf,
    max_line: usize,
    open: Option<(File, FileId)>,
    /// Files that took the path since, oldest first, each read after the one before.
    next: VecDeque<(File, FileId)>,
    /// Bytes read past `offset`: the start of a line whose newline has not come yet.
    pending: Vec<u8>,
    /// The last bytes before `offset` ([`FINGERPRINT`] at most).
    before_offset: Vec<u8>,
    /// Set while skipping the rest of a line over `max_line`.
    skipping: bool,
    offset: u64,
}

impl Tail {
    /// Follows `path`, from `resume` when it names the file there now, else from its start
    /// (`from_start`, or a file created since the position was saved) or its end.
    pub fn new(path: &Path, max_line: usize, resume: Option<Position>, from_start: bool) -> Self {
        let mut tail = Self {
            path: path.to_owned(),
            max_line,
            open: None,
            next: VecDeque::new(),
            before_offset: Vec::new(),
            pending: Vec::new(),
            skipping: false,
            offset: 0,
        };
        if let Ok((file, id, len)) = open(path) {
            tail.open = Some((file, id));
            match resume {
                Some(p) if p.file == id && p.offset <= len => {
                    tail.offset = p.offset;
                    tail.before_offset = p.before;
                    if !tail.still_there() {
                        // Truncated and written again since the position was saved.
                        tail.offset = 0;
                        tail.before_offset.clear();
                    }
                }
                // Rotated while Herald was down: everything in the new file is new.
                Some(_) => tail.offset = 0,
                None if from_start => tail.offset = 0,
                None => {
                    tail.offset = len;
                    tail.remember_before_offset();
                }
            }
        }
        tail
    }

    /// The position after the last line returned.
    pub fn position(&self) -> Option<Position> {
        self.open.as_ref().map(|(_, id)| Position {
            file: *id,
            offset: self.offset,
            before: self.before_offset.clone(),
        })
    }

    /// Every complete line available now, at most `limit`. Follows rotations: each file that
    /// takes the path is opened when first seen and read after the one before it is read to
    /// its end (its last line without a newline included, since nobody will finish it), so a
    /// second rotation before the first file was finished loses nothing.
    pub fn read_lines(&mut self, limit: usize) -> io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        if self.open.is_none() {
            self.open = self.next.pop_front();
            if self.open.is_none() {
                self.reopen()?;
            }
        }
        let Some((_, id)) = &self.open else {
            return Ok(lines);
        };
        let id = *id;
        match std::fs::metadata(&self.path) {
            Ok(meta) if FileId::of(&meta) == id => {
                // Copied and truncated in place: the content is new from the start. A file
                // that grew past the old offset again is caught by the bytes before it.
                if meta.len() < self.offset || !self.still_there() {
                    self.offset = 0;
                    self.before_offset.clear();
                    self.pending.clear();
                    self.skipping = false;
                }
            }
            Ok(meta) => {
                let new = FileId::of(&meta);
                if !self.next.iter().any(|(_, queued)| *queued == new) {
                    if let Ok((file, opened, _)) = open(&self.path) {
                        self.next.push_back((file, opened));
                    }
                }
            }
            Err(_) => {}
        }
        self.read_available(&mut lines, limit)?;
        self.remember_before_offset();
        let rotated = !self.next.is_empty() || !self.path.exists();
        if rotated && lines.len() < limit {
            // The current file is read to its end and has a successor (or was deleted).
            if !self.pending.is_empty() && !self.skipping {
                let text = std::mem::take(&mut self.pending);
                self.offset += text.len() as u64;
                lines.push(Line::Text(text));
            }
            if let Some(next) = self.next.pop_front() {
                self.open = Some(next);
                self.pending.clear();
                self.before_offset.clear();
                self.skipping = false;
                self.offset = 0;
            }
        }
        Ok(lines)
    }

    /// Keeps the bytes just before `offset`, to recognise the file if it is truncated and
    /// written again past that offset before the next look.
    fn remember_before_offset(&mut self) {
        let Some((file, _)) = &self.open else { return };
        let len = self.offset.min(FINGERPRINT as u64);
        let mut bytes = vec![0u8; len as usize];
        self.before_offset = file
            .read_exact_at(&mut bytes, self.offset - len)
            .map(|()| bytes)
            .unwrap_or_default();
    }

    /// Whether the bytes before `offset` are still the ones read.
    fn still_there(&self) -> bool {
        let Some((file, _)) = &self.open else {
            return true;
        };
        let len = self.before_offset.len();
        let Some(start) = self.offset.checked_sub(len as u64) else {
            return false;
        };
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, start).is_ok() && bytes == self.before_offset
    }

    fn reopen(&mut self) -> io::Result<()> {
        match open(&self.path) {
            Ok((file, id, _)) => {
                self.open = Some((file, id));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Splits what the open file holds past `offset` into lines.
    fn read_available(&mut self, lines: &mut Vec<Line>, limit: usize) -> io::Result<()> {
        let Some((file, _)) = &mut self.open else {
            return Ok(());
        };
        let start = self.offset + self.pending.len() as u64;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0u8; 64 * 1024];
        while lines.len() < limit {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            let mut rest = &chunk[..n];
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let (head, tail) = (&rest[..nl], &rest[nl + 1..]);
                let consumed = self.pending.len() + head.len() + 1;
                self.offset += consumed as u64;
                if self.skipping || self.pending.len() + head.len() > self.max_line {
                    self.skipping = false;
                    self.pending.clear();
                    lines.push(Line::TooLong);
                } else {
                    let mut text = std::mem::take(&mut self.pending);
                    text.extend_from_slice(head);
                    if text.last() == Some(&b'\r') {
                        text.pop();
                    }
                    lines.push(Line::Text(text));
                }
                rest = tail;
            }
            if lines.len() >= limit {
                // Enough for now: the rest is read again, from `offset`, next time.
                break;
            }
            // Keep a partial line for its newline, but never more than the bound: past it
            // the line is skipped, not held.
            if self.skipping || self.pending.len() + rest.len() > self.max_line {
                self.offset += (self.pending.len() + rest.len()) as u64;
                self.pending.clear();
                self.skipping = true;
            } else {
                self.pending.extend_from_slice(rest);
            }
        }
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<(File, FileId, u64)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok((file, FileId::of(&meta), meta.len()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| match l {
                Line::Text(t) => String::from_utf8(t).unwrap(),
                Line::TooLong => "<too long>".into(),
            })
            .collect()
    }

    #[test]
    fn partial_lines_wait_rotations_are_followed() {
        let dir = std::env::temp_dir().join(format!("herald-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.log");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"one\ntw").unwrap();
        let mut tail = Tail::new(&path, 16, None, true);
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["one"]);
        file.write_all(b"o\r\n").unwrap();
        file.write_all(&[b'x'; 40]).unwrap();
        file.write_all(b"\nthree\nfour").unwrap();
        assert_eq!(
            texts(tail.read_lines(100).unwrap()),
            ["two", "<too long>", "three"]
        );
        // Renamed away with an unfinished last line; a new file takes its place.
        std::fs::rename(&path, dir.join("app.log.1")).unwrap();
        let mut file = File::create(&path).unwrap();
        file.write_all(b"five\n").unwrap();
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["four"]);
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["five"]);
        // Copied and truncated in place.
        file.set_len(0).unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(b"six\n").unwrap();
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["six"]);
        // Truncated and written past the old offset again before the next look.
        file.set_len(0).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"SIX\neight\n").unwrap();
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["SIX", "eight"]);
        // Deleted and created again.
        std::fs::remove_file(&path).unwrap();
        let mut file = File::create(&path).unwrap();
        file.write_all(b"nine\n").unwrap();
        assert_eq!(texts(tail.read_lines(100).unwrap()), Vec::<String>::new());
        assert_eq!(texts(tail.read_lines(100).unwrap()), ["nine"]);
        // A restart resumes at the saved position.
        file.write_all(b"seven\n").unwrap();
        let saved = tail.position();
        let mut again = Tail::new(&path, 16, saved.clone(), false);
        assert_eq!(texts(again.read_lines(100).unwrap()), ["seven"]);
        // Truncated and rewritten past the saved offset while Herald was down.
        file.set_len(0).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"ten\neleven\ntwelve\n").unwrap();
        let mut after = Tail::new(&path, 16, saved, false);
        assert_eq!(
            texts(after.read_lines(100).unwrap()),
            ["ten", "eleven", "twelve"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
