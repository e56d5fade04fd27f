//! What crosses a link between two groups of stages trained at once (decoupled greedy
//! learning, issue "Decoupled greedy learning"): one batch's activations with its labels
//! and its index, behind a small versioned header. A frame is plain data: nothing in it
//! is code or an object to deserialize, and a receiver refuses, naming the link and the
//! frame, any frame whose header does not match what it expects.
//!
//! Layout, little-endian (ARCHITECTURE.md, "Artifact contracts"):
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `LWLF` |
//! | 2 | format version ([`LINK_VERSION`]) |
//! | 1 | dtype (1: f32) |
//! | 1 | rank of one example's shape (1 to 4) |
//! | 1 | kind: 0 a training batch, 1 a chunk of the validation split, 2 the end of the stream |
//! | 4 | link number (the boundary after stage `link`, 1-based) |
//! | 8 | index (a training batch's step number from 0; a validation chunk's number from 0 over the run) |
//! | 4 | rows (examples in the batch; 0 only at the end of the stream) |
//! | 4 × rank | one example's shape (NHWC without N: `[h, w, c]`; a dense row: `[width]`) |
//! | 4 | CRC-32 of every other byte of the frame, header included |
//! | 4 × rows × ∏shape | activations, f32 |
//! | rows | labels, one byte each |

use anyhow::{bail, Result};

/// The frame format's version.
pub const LINK_VERSION: u16 = 1;
/// A frame's first bytes.
pub const LINK_MAGIC: [u8; 4] = *b"LWLF";
/// The largest rank of one example's shape.
pub const MAX_RANK: usize = 4;
/// The dtype code of f32 activations.
const DTYPE_F32: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A training batch: its index is the step number.
    Train,
    /// A chunk of the validation split, at the end of the sender's epoch.
    Val,
    /// The sender has finished: no rows.
    End,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Train => 0,
            FrameKind::Val => 1,
            FrameKind::End => 2,
        }
    }

    fn of(code: u8) -> Option<Self> {
        [FrameKind::Train, FrameKind::Val, FrameKind::End].into_iter().find(|k| k.code() == code)
    }

    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Train => "training batch",
            FrameKind::Val => "validation chunk",
            FrameKind::End => "end of stream",
        }
    }
}

/// A batch crossing a link.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// The link (the boundary after stage `link`, 1-based).
    pub link: u32,
    /// The sender's index of it (per kind).
    pub batch: u64,
    /// One example's shape.
    pub shape: Vec<u32>,
    /// The activations, `rows × ∏shape` values.
    pub values: Vec<f32>,
    /// One label per row.
    pub labels: Vec<u8>,
}

/// What a receiver expects of the next frame on its link.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Its link.
    pub link: u32,
    /// The kind and index it waits for (none: any, as an asynchronous receiver takes).
    pub next: Option<(FrameKind, u64)>,
    /// One example's shape.
    pub shape: Vec<u32>,
    /// The most rows a batch may hold.
    pub max_rows: u32,
}

/// The CRC-32 of a frame's bytes but the four at `crc_at` (where it is kept).
fn checksum(bytes: &[u8], crc_at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..crc_at]);
    h.update(&bytes[crc_at + 4..]);
    h.finalize()
}

fn header_len(rank: usize) -> usize {
    4 + 2 + 1 + 1 + 1 + 4 + 8 + 4 + 4 * rank + 4
}

impl Frame {
    /// The frame's bytes. Refuses a frame whose values or labels do not fit its shape
    /// and rows (a sender's bug, said before anything is sent).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let rows = self.labels.len();
        let per: usize = self.shape.iter().map(|&d| d as usize).product();
        let rows_fit = (rows == 0) == (self.kind == FrameKind::End);
        if self.shape.is_empty() || self.shape.len() > MAX_RANK || self.values.len() != rows * per || !rows_fit {
            bail!(
                "link {}, frame {}: {} values and {rows} labels do not fit rows of shape {:?}",
                self.link,
                self.batch,
                self.values.len(),
                self.shape
            );
        }
        let mut out = Vec::with_capacity(header_len(self.shape.len()) + 4 * self.values.len() + rows);
        out.extend_from_slice(&LINK_MAGIC);
        out.extend_from_slice(&LINK_VERSION.to_le_bytes());
        out.push(DTYPE_F32);
        out.push(self.shape.len() as u8);
        out.push(self.kind.code());
        out.extend_from_slice(&self.link.to_le_bytes());
        out.extend_from_slice(&self.batch.to_le_bytes());
        out.extend_from_slice(&(rows as u32).to_le_bytes());
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let crc_at = out.len();
        out.extend_from_slice(&[0; 4]);
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.labels);
        let crc = checksum(&out, crc_at);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// The frame in `bytes`, checked against what the receiver expects: the magic, the
    /// version, the dtype, the link, the batch index, the shape, the rows, the length and
    /// the checksum, each refused by name with the link and the frame.
    pub fn decode(bytes: &[u8], expected: &Expected) -> Result<Frame> {
        let link = expected.link;
        let at = |what: String| -> anyhow::Error { anyhow::anyhow!("link {link}: {what}: frame refused") };
        let fixed = header_len(0);
        if bytes.len() < fixed {
            return Err(at(format!("{} bytes, shorter than a frame header", bytes.len())));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        if bytes[..4] != LINK_MAGIC {
            return Err(at("not a layerwise link frame (no `LWLF` magic)".into()));
        }
        let version = u16_at(4);
        if version != LINK_VERSION {
            return Err(at(format!(
                "format version {version}, this build speaks {LINK_VERSION}: run the same layerwise build in every group"
            )));
        }
        let (dtype, rank) = (bytes[6], bytes[7] as usize);
        let (got_link, batch, rows) = (u32_at(9), u64_at(13), u32_at(21));
        let Some(kind) = FrameKind::of(bytes[8]) else {
            return Err(at(format!("frame {batch} has kind code {} (0 to 2)", bytes[8])));
        };
        let frame = format!("{} {batch}", kind.name());
        if got_link != link {
            return Err(at(format!("{frame} is for link {got_link}")));
        }
        if let Some((want_kind, want)) = expected.next.filter(|&n| n != (kind, batch)) {
            return Err(at(format!(
                "{frame} arrived where {} {want} was expected (out of order or lost)",
                want_kind.name()
            )));
        }
        if dtype != DTYPE_F32 {
            return Err(at(format!("{frame} has dtype code {dtype}, not f32 ({DTYPE_F32})")));
        }
        if rank == 0 || rank > MAX_RANK || bytes.len() < header_len(rank) {
            return Err(at(format!("{frame} has a shape of rank {rank} (1 to {MAX_RANK})")));
        }
        let shape: Vec<u32> = (0..rank).map(|i| u32_at(25 + 4 * i)).collect();
        // The end of a stream has no rows, so no shape to check.
        if shape != expected.shape && kind != FrameKind::End {
            return Err(at(format!(
                "{frame} carries examples of shape {shape:?}, the link carries {:?}",
                expected.shape
            )));
        }
        let (least, most) = if kind == FrameKind::End { (0, 0) } else { (1, expected.max_rows) };
        if rows < least || rows > most {
            return Err(at(format!("{frame} holds {rows} rows ({least} to {most})")));
        }
        let per: u64 = shape.iter().map(|&d| d as u64).product();
        let body = (rows as u64) * (4 * per + 1);
        let start = header_len(rank);
        if (bytes.len() - start) as u64 != body {
            return Err(at(format!(
                "{frame} has {} bytes after its header, its rows and shape make {body}",
                bytes.len() - start
            )));
        }
        let crc = u32_at(start - 4);
        if checksum(bytes, start - 4) != crc {
            return Err(at(format!("{frame}'s checksum does not match its content (damaged in transit)")));
        }
        let n = (rows as u64 * per) as usize;
        let values =
            bytes[start..start + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let labels = bytes[start + 4 * n..].to_vec();
        Ok(Frame { kind, link, batch, shape, values, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::{Expected, Frame, FrameKind, LINK_VERSION};

    fn frame() -> Frame {
        Frame {
            kind: FrameKind::Train,
            link: 2,
            batch: 7,
            shape: vec![2, 2, 3],
            values: (0..24).map(|i| i as f32 * 0.5 - 3.0).collect(),
            labels: vec![4, 9],
        }
    }

    fn expected() -> Expected {
        Expected { link: 2, next: Some((FrameKind::Train, 7)), shape: vec![2, 2, 3], max_rows: 128 }
    }

    #[test]
    fn a_frame_round_trips() {
        let f = frame();
        assert_eq!(Frame::decode(&f.encode().unwrap(), &expected()).unwrap(), f);
        // An asynchronous receiver takes any batch index.
        let any = Expected { next: None, ..expected() };
        assert_eq!(Frame::decode(&f.encode().unwrap(), &any).unwrap().batch, 7);
    }

    #[test]
    fn a_wrong_frame_is_refused_naming_the_link_and_the_frame() {
        let good = frame().encode().unwrap();
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            edit(&mut b);
            format!("{:#}", Frame::decode(&b, &expected()).unwrap_err())
        };
        let cases: [(&str, String); 10] = [
            ("format version 9", with(&|b| b[4..6].copy_from_slice(&9u16.to_le_bytes()))),
            ("is for link 3", with(&|b| b[9..13].copy_from_slice(&3u32.to_le_bytes()))),
            ("batch 8 arrived where training batch 7", with(&|b| b[13..21].copy_from_slice(&8u64.to_le_bytes()))),
            ("validation chunk 7 arrived where training batch 7", with(&|b| b[8] = 1)),
            ("kind code 9", with(&|b| b[8] = 9)),
            ("shape [2, 2, 4]", with(&|b| b[33..37].copy_from_slice(&4u32.to_le_bytes()))),
            ("checksum does not match", with(&|b| *b.last_mut().unwrap() ^= 1)),
            ("checksum does not match", with(&|b| b[60] ^= 0x10)),
            ("bytes after its header", with(&|b| b.truncate(b.len() - 1))),
            ("no `LWLF` magic", with(&|b| b[0] = b'X')),
        ];
        for (needle, e) in cases {
            assert!(e.contains(needle) && e.starts_with("link 2:") && e.contains("refused"), "{needle}: {e}");
        }
        assert!(with(&|b| b[13..21].copy_from_slice(&8u64.to_le_bytes())).contains("training batch 8"));
        assert!(with(&|b| b[4..6].copy_from_slice(&9u16.to_le_bytes())).contains(&LINK_VERSION.to_string()));
        // An asynchronous receiver takes any batch index, but not a damaged one.
        let any = Expected { next: None, ..expected() };
        let mut b = good.clone();
        b[13] ^= 4;
        assert!(format!("{:#}", Frame::decode(&b, &any).unwrap_err()).contains("checksum"));
        // Every truncation is refused, none panics.
        for n in 0..good.len() {
            assert!(Frame::decode(&good[..n], &expected()).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn a_frame_that_does_not_fit_its_shape_is_not_sent() {
        let f = Frame { values: vec![0.0; 5], ..frame() };
        assert!(format!("{:#}", f.encode().unwrap_err()).contains("link 2, frame 7"));
        // Rows only where the stream goes on; none at its end.
        assert!(Frame { values: vec![], labels: vec![], ..frame() }.encode().is_err());
        let end = Frame { kind: FrameKind::End, values: vec![], labels: vec![], ..frame() };
        let want = Expected { next: Some((FrameKind::End, 7)), ..expected() };
        assert_eq!(Frame::decode(&end.encode().unwrap(), &want).unwrap(), end);
        assert!(Frame { kind: FrameKind::End, ..frame() }.encode().is_err());
    }
}
