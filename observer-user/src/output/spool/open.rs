//! Opening the spool: the segments from the head on, checked frame by frame, and every
//! sink's cursor placed where its last run left it.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::Read as _,
    path::Path,
};

use super::{
    cursor::{self, Cursor},
    io_err, read_frame, read_head,
    reserve::Reserve,
    segment_path, segment_seq, Frame, Pending, Position, Spool, SpoolError, SpoolStats, WhenFull,
};

impl Spool {
    /// Opens (or creates) the spool in `dir` for these sinks, recovering what a previous
    /// run left: every sink resumes at its own cursor (a sink without one, at the head).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        when_full: WhenFull,
        sinks: &[&str],
    ) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let head = read_head(dir).map_err(io_err(dir))?;
        let mut segments: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .filter_map(|e| segment_seq(&e.file_name().to_string_lossy()))
            .collect();
        segments.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            when_full,
            pending: VecDeque::new(),
            next_seq: 0,
            pending_bytes: 0,
            pending_events: 0,
            cursors: Vec::new(),
            // Never behind the head: records appended there would count as acknowledged.
            tail_segment: segments.last().copied().unwrap_or(0).max(head.0),
            tail_size: 0,
            tail: None,
            reserve: Reserve::new(dir),
            stats: SpoolStats::default(),
        };
        for &seq in &segments {
            let path = segment_path(dir, seq);
            if seq < head.0 {
                // Fully acknowledged before the last run ended.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let start = if seq == head.0 { head.1 } else { 0 };
            let size = spool.scan_segment(seq, start)?;
            if seq == spool.tail_segment {
                spool.tail_size = size;
            }
        }
        spool.open_cursors(sinks)?;
        Ok(spool)
    }

    /// Places every sink's cursor, removes what all of them settled already, and forgets
    /// cursors of sinks no longer configured.
    fn open_cursors(&mut self, sinks: &[&str]) -> Result<(), SpoolError> {
        let end = self.next_seq;
        let seq_at = |pending: &VecDeque<Pending>, at: Position| {
            pending
                .iter()
                .find(|p| p.position() >= at)
                .map_or(end, |p| p.seq)
        };
        for name in sinks {
            let saved = cursor::read(&self.dir, name).map_err(io_err(&self.dir))?;
            let mut cursor = Cursor::new(name);
            if let Some(saved) = saved {
                cursor.next = seq_at(&self.pending, saved.next);
                cursor.given_up = self
                    .pending
                    .iter()
                    .filter(|p| p.seq < cursor.next && saved.given_up.contains(&p.position()))
                    .map(|p| p.seq)
                    .collect();
            } else {
                cursor.next = self.pending.front().map_or(end, |p| p.seq);
            }
            self.cursors.push(cursor);
        }
        // Settled by every sink, but the head had not moved yet.
        while let Some(front) = self.pending.front() {
            if self.cursors.is_empty() || self.cursors.iter().any(|c| c.next <= front.seq) {
                break;
            }
            self.stats.settled_on_open += 1;
            self.pop_front();
        }
        for cursor in &mut self.cursors {
            for p in &self.pending {
                if p.seq >= cursor.next {
                    cursor.pending_events += p.events;
                    cursor.pending_batches += 1;
                } else if cursor.given_up.contains(&p.seq) {
                    cursor.recovered_given_up += p.events;
                } else {
                    cursor.recovered_delivered += p.events;
                }
            }
        }
        cursor::remove_others(&self.dir, sinks).map_err(io_err(&self.dir))
    }

    /// Reads the frames of a segment from `start`, truncating at the first bad one.
    /// Returns the segment's (possibly truncated) size.
    fn scan_segment(&mut self, seq: u64, start: u64) -> Result<u64, SpoolError> {
        let path = segment_path(&self.dir, seq);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(&path))?;
        let mut offset = start.min(data.len() as u64);
        loop {
            match read_frame(&data, offset) {
                Frame::Entry { entry, bytes } => {
                    self.pending.push_back(Pending {
                        seq: self.next_seq,
                        segment: seq,
                        offset,
                        bytes,
                        events: entry.events,
                    });
                    self.next_seq += 1;
                    self.pending_bytes += bytes;
                    self.pending_events += entry.events;
                    offset += bytes;
                }
                Frame::End => return Ok(offset),
                Frame::Bad => {
                    self.stats.torn += 1;
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(offset))
                        .map_err(io_err(&path))?;
                    return Ok(offset);
                }
            }
        }
    }
}
