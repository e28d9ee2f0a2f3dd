//! The archive format (version 1). All integers little-endian.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  89 'T' 'W' 'Z' 0D 0A 1A 0A  (PNG-style: catches text-mode mangling)
//! 8       2     format version (1)
//! 10      4     header body length L (the bytes from offset 14 up to the header CRC)
//! 14      L     header body:
//!                 1   mode: 0 = sliding windows, 1 = Equal-Info Windows
//!                 4   ctx: tokens the model sees at most
//!                 4   overlap: tokens carried into the next window (sliding mode)
//!                 4   window bytes (Equal-Info Windows; 0 otherwise)
//!                 4   start token id (u32::MAX: none; the first token is coded uniformly)
//!                 8   original length in bytes
//!                 4   CRC-32 of the original bytes
//!                 16  model weights hash (xxh3-128 of the weight tensors' bytes)
//!                 8   vocabulary hash (xxh3-64 of every token's bytes)
//!                 8   numerics fingerprint (xxh3-64 of the logits of a fixed probe)
//!                 1+n model name (length byte, UTF-8), for error messages only
//! 14+L    4     CRC-32 of bytes 0 .. 14+L
//! ...           payload: one range-coded stream (sliding), or windows of exactly
//!               `window bytes` each (Equal-Info Windows)
//! end-4   4     CRC-32 of every byte before it
//! ```
//!
//! A reader checks, in this order: magic, version, header CRC, the whole-archive CRC
//! (so a changed or truncated byte anywhere is refused before any model runs), the
//! model, and after decoding the length and the content CRC. Version 1 readers refuse
//! any other version; a later version may append header fields (L says how long).

use crate::CodecError;

pub const MAGIC: [u8; 8] = [0x89, b'T', b'W', b'Z', 0x0D, 0x0A, 0x1A, 0x0A];
pub const VERSION: u16 = 1;
/// Header body bytes before the model name.
const FIXED_BODY: usize = 1 + 4 + 4 + 4 + 4 + 8 + 4 + 16 + 8 + 8;

/// How the token stream is cut into model contexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One coded stream; the model context is at most `ctx` tokens, and when it is full
    /// a new one starts from the last `overlap` tokens.
    Sliding { ctx: u32, overlap: u32 },
    /// Windows of exactly `window_bytes` coded bytes each; the model context starts
    /// afresh at every window (and holds at most `ctx` tokens).
    EqualInfo { ctx: u32, window_bytes: u32 },
}

impl Mode {
    pub fn ctx(&self) -> u32 {
        match *self {
            Mode::Sliding { ctx, .. } | Mode::EqualInfo { ctx, .. } => ctx,
        }
    }
}

/// Which model an archive needs, and how to recognise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelId {
    pub weights: [u8; 16],
    pub vocab: u64,
    /// Not part of the identity: a file or alias name for messages.
    pub name: String,
}

impl ModelId {
    /// The short form used in messages: name and the first 8 bytes of the weights hash.
    pub fn describe(&self) -> String {
        format!("{} (weights {})", self.name, hex(&self.weights[..8]))
    }

    pub fn same_model(&self, other: &ModelId) -> bool {
        self.weights == other.weights && self.vocab == other.vocab
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub mode: Mode,
    pub start_token: Option<u32>,
    pub original_len: u64,
    pub content_crc: u32,
    pub model: ModelId,
    pub fingerprint: u64,
}

impl Header {
    /// Serialises the header, its CRC included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = truncate_utf8(&self.model.name, 255);
        let mut body = Vec::with_capacity(FIXED_BODY + 1 + name.len());
        let (mode, ctx, overlap, window) = match self.mode {
            Mode::Sliding { ctx, overlap } => (0u8, ctx, overlap, 0),
            Mode::EqualInfo { ctx, window_bytes } => (1u8, ctx, 0, window_bytes),
        };
        body.push(mode);
        body.extend_from_slice(&ctx.to_le_bytes());
        body.extend_from_slice(&overlap.to_le_bytes());
        body.extend_from_slice(&window.to_le_bytes());
        body.extend_from_slice(&self.start_token.unwrap_or(u32::MAX).to_le_bytes());
        body.extend_from_slice(&self.original_len.to_le_bytes());
        body.extend_from_slice(&self.content_crc.to_le_bytes());
        body.extend_from_slice(&self.model.weights);
        body.extend_from_slice(&self.model.vocab.to_le_bytes());
        body.extend_from_slice(&self.fingerprint.to_le_bytes());
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());

        let mut out = Vec::with_capacity(14 + body.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks the header at the start of `archive`; returns it and the
    /// offset where the payload starts. Checks the magic, the version and the header's
    /// CRC (not the whole archive's: see [`split_archive`]).
    pub fn parse(archive: &[u8]) -> Result<(Header, usize), CodecError> {
        if archive.len() < 8 || archive[..8] != MAGIC {
            return Err(CodecError::NotAnArchive);
        }
        if archive.len() < 14 {
            return Err(CodecError::Truncated);
        }
        let version = u16::from_le_bytes([archive[8], archive[9]]);
        if version != VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        let body_len = u32::from_le_bytes(le4(&archive[10..14])) as usize;
        let end = 14usize
            .checked_add(body_len)
            .filter(|&e| e.checked_add(4).is_some_and(|x| x <= archive.len()))
            .ok_or(CodecError::Truncated)?;
        let stored_crc = u32::from_le_bytes(le4(&archive[end..end + 4]));
        if crc32fast::hash(&archive[..end]) != stored_crc {
            return Err(CodecError::Corrupt("header checksum mismatch".into()));
        }
        let body = &archive[14..end];
        if body.len() < FIXED_BODY + 1 {
            return Err(CodecError::Corrupt("header too short".into()));
        }
        let mut r = Cursor { b: body, pos: 0 };
        let mode = r.u8();
        let ctx = r.u32();
        let overlap = r.u32();
        let window = r.u32();
        let mode = match mode {
            0 => Mode::Sliding { ctx, overlap },
            1 => Mode::EqualInfo {
                ctx,
                window_bytes: window,
            },
            m => return Err(CodecError::Corrupt(format!("unknown window mode {m}"))),
        };
        let start = r.u32();
        let original_len = r.u64();
        let content_crc = r.u32();
        let mut weights = [0u8; 16];
        weights.copy_from_slice(r.take(16));
        let vocab = r.u64();
        let fingerprint = r.u64();
        let name_len = r.u8() as usize;
        if r.pos + name_len > body.len() {
            return Err(CodecError::Corrupt("header too short".into()));
        }
        let name = String::from_utf8_lossy(r.take(name_len)).into_owned();
        let header = Header {
            mode,
            start_token: (start != u32::MAX).then_some(start),
            original_len,
            content_crc,
            model: ModelId {
                weights,
                vocab,
                name,
            },
            fingerprint,
        };
        header.validate()?;
        Ok((header, end + 4))
    }

    /// Settings any reader or writer must refuse.
    pub fn validate(&self) -> Result<(), CodecError> {
        match self.mode {
            Mode::Sliding { ctx, overlap } => {
                if ctx < 2 || overlap >= ctx - 1 {
                    return Err(CodecError::Settings(format!(
                        "ctx {ctx} with overlap {overlap}: ctx must be at least 2 and the overlap below ctx - 1"
                    )));
                }
            }
            Mode::EqualInfo { ctx, window_bytes } => {
                if ctx < 2 || window_bytes < MIN_WINDOW_BYTES {
                    return Err(CodecError::Settings(format!(
                        "ctx {ctx} with windows of {window_bytes} bytes: ctx must be at least 2 and windows at least {MIN_WINDOW_BYTES} bytes"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Smallest Equal-Info window: the rarest symbol (an escape: 16 + 8 bits, or a token
/// at the floor: 32 bits) plus the end of window (8 bits) and the coder's tail must
/// fit in one window.
pub const MIN_WINDOW_BYTES: u32 = 16;

/// Checks the archive's trailing CRC and returns the payload (between header and CRC).
pub fn split_archive(archive: &[u8], payload_start: usize) -> Result<&[u8], CodecError> {
    if archive.len() < payload_start + 4 {
        return Err(CodecError::Truncated);
    }
    let end = archive.len() - 4;
    let stored = u32::from_le_bytes(le4(&archive[end..]));
    if crc32fast::hash(&archive[..end]) != stored {
        return Err(CodecError::Corrupt(
            "archive checksum mismatch (changed or truncated)".into(),
        ));
    }
    Ok(&archive[payload_start..end])
}

fn le4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads fixed-size fields; the caller checked the length first.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(le4(self.take(4)))
    }
    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8));
        u64::from_le_bytes(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            mode: Mode::Sliding {
                ctx: 1024,
                overlap: 256,
            },
            start_token: Some(1),
            original_len: 12345,
            content_crc: 0xdeadbeef,
            model: ModelId {
                weights: [7; 16],
                vocab: 42,
                name: "smollm2-135m".into(),
            },
            fingerprint: 99,
        }
    }

    #[test]
    fn header_roundtrips() {
        let h = header();
        let mut b = h.to_bytes();
        let n = b.len();
        b.extend_from_slice(b"payload");
        assert_eq!(Header::parse(&b).unwrap(), (h, n));
    }

    #[test]
    fn every_header_byte_is_checked() {
        let b = header().to_bytes();
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 0x10;
            assert!(Header::parse(&m).is_err(), "byte {i} changed unnoticed");
        }
        for n in 0..b.len() {
            assert!(Header::parse(&b[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = header().to_bytes();
        b[8] = 2;
        match Header::parse(&b) {
            Err(CodecError::UnsupportedVersion(2)) => {}
            other => panic!("{other:?}"),
        }
    }
}
