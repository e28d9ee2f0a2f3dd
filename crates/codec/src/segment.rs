//! Bytes to coded items: tokens where the tokenizer round-trips, raw bytes elsewhere.
//!
//! The decoder never runs the tokenizer: it writes each decoded token's bytes. So the
//! encoder may cut the input however it likes, as long as the items' bytes concatenate
//! to the input. It checks that for every piece it tokenises and falls back, in order,
//!
//! 1. the whole valid-UTF-8 run (the normal case),
//! 2. line by line, then character by character, for a run whose tokens do not give
//!    its bytes back (an SPM vocabulary maps a literal `▁` to a space; a normaliser may
//!    rewrite characters; a tokenizer may add a prefix space),
//! 3. byte tokens (byte-level BPE has one for every byte, SentencePiece byte fallback
//!    has `<0x00>`..`<0xFF>`) for bytes that are not valid UTF-8 or not round-tripped,
//! 4. an escape followed by the raw byte, coded uniformly, for a byte the vocabulary
//!    has no token for.

/// One coded item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Token(u32),
    /// A raw byte behind an escape symbol.
    Escaped(u8),
}

/// What the decoder needs to know about the vocabulary, and what the encoder needs to
/// pick byte tokens.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// Bytes of each token id (empty: the token cannot be coded).
    pub pieces: Vec<Vec<u8>>,
    /// For each byte, the lowest token id whose bytes are exactly that byte.
    pub byte_token: [Option<u32>; 256],
}

impl Vocab {
    pub fn new(pieces: Vec<Vec<u8>>) -> Vocab {
        let mut byte_token = [None; 256];
        for (id, p) in pieces.iter().enumerate() {
            if let [b] = p[..] {
                byte_token[b as usize].get_or_insert(id as u32);
            }
        }
        Vocab { pieces, byte_token }
    }

    /// Whether a token can be coded: it exists and has bytes.
    pub fn codable(&self, id: u32) -> bool {
        self.pieces.get(id as usize).is_some_and(|p| !p.is_empty())
    }
}

/// Counters of the fallbacks, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Bytes coded as byte tokens (invalid UTF-8, or text the tokenizer does not
    /// round-trip).
    pub byte_token_bytes: u64,
    /// Bytes coded behind an escape.
    pub escaped_bytes: u64,
    /// Valid UTF-8 spans whose tokenisation did not round-trip.
    pub failed_spans: u64,
}

/// Tokenises byte strings into [`Item`]s whose bytes are exactly the input.
pub struct Segmenter<'a> {
    vocab: &'a Vocab,
    /// The tokenizer, text to ids (no BOS, special-token text treated as plain text);
    /// `None` when it fails, which is handled like a failed round trip.
    encode: &'a dyn Fn(&str) -> Option<Vec<u32>>,
    pub stats: SegmentStats,
}

impl<'a> Segmenter<'a> {
    pub fn new(vocab: &'a Vocab, encode: &'a dyn Fn(&str) -> Option<Vec<u32>>) -> Self {
        Segmenter {
            vocab,
            encode,
            stats: SegmentStats::default(),
        }
    }

    /// Appends the items of `bytes` to `out`.
    pub fn segment(&mut self, mut bytes: &[u8], out: &mut Vec<Item>) {
        while !bytes.is_empty() {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    self.text(s, out);
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if let Ok(s) = std::str::from_utf8(&bytes[..valid]) {
                        self.text(s, out);
                    }
                    // An incomplete sequence at the end has no error_len: all of it.
                    let bad = e.error_len().unwrap_or(bytes.len() - valid);
                    self.raw(&bytes[valid..valid + bad], out);
                    bytes = &bytes[valid + bad..];
                }
            }
        }
    }

    /// Tokens of `s` if they give its bytes back exactly.
    fn try_tokens(&self, s: &str) -> Option<Vec<u32>> {
        let ids = (self.encode)(s)?;
        let mut rest = s.as_bytes();
        for &id in &ids {
            if !self.vocab.codable(id) {
                return None;
            }
            rest = rest.strip_prefix(self.vocab.pieces[id as usize].as_slice())?;
        }
        rest.is_empty().then_some(ids)
    }

    fn text(&mut self, s: &str, out: &mut Vec<Item>) {
        if s.is_empty() {
            return;
        }
        if let Some(ids) = self.try_tokens(s) {
            out.extend(ids.into_iter().map(Item::Token));
            return;
        }
        self.stats.failed_spans += 1;
        let lines: Vec<&str> = s.split_inclusive('\n').collect();
        if lines.len() > 1 {
            for line in lines {
                self.text(line, out);
            }
            return;
        }
        // One line that does not round-trip: character by character.
        let mut chars = s.char_indices().peekable();
        if s.chars().nth(1).is_none() {
            self.raw(s.as_bytes(), out);
            return;
        }
        while let Some((i, _)) = chars.next() {
            let end = chars.peek().map_or(s.len(), |&(j, _)| j);
            let piece = &s[i..end];
            match self.try_tokens(piece) {
                Some(ids) => out.extend(ids.into_iter().map(Item::Token)),
                None => self.raw(piece.as_bytes(), out),
            }
        }
    }

    fn raw(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        for &b in bytes {
            match self.vocab.byte_token[b as usize] {
                Some(id) => {
                    self.stats.byte_token_bytes += 1;
                    out.push(Item::Token(id));
                }
                None => {
                    self.stats.escaped_bytes += 1;
                    out.push(Item::Escaped(b));
                }
            }
        }
    }
}

/// Where to cut a buffer of input so the tokenizer sees whole lines: after the last
/// newline, else after the last space, else before an incomplete UTF-8 character at
/// the end, else everything. The cut only affects how well the text compresses, never
/// whether it round-trips.
pub fn cut_point(buf: &[u8]) -> usize {
    if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
        return i + 1;
    }
    if let Some(i) = buf.iter().rposition(|&b| b == b' ') {
        return i + 1;
    }
    // Back off over continuation bytes to the start of the last character, if that
    // character is incomplete.
    let n = buf.len();
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if need > back { n - back } else { n };
        }
    }
    n
}

/// Bytes of a sequence of items.
pub fn items_bytes(vocab: &Vocab, items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        match *it {
            Item::Token(id) => out.extend_from_slice(&vocab.pieces[id as usize]),
            Item::Escaped(b) => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: every ASCII letter and space, "ab", and byte tokens for
    /// 0x00..0x80 only; its "tokenizer" maps '~' to a space (does not round-trip).
    fn toy() -> Vocab {
        let mut pieces: Vec<Vec<u8>> = (0u8..0x80).map(|b| vec![b]).collect();
        pieces.push(b"ab".to_vec()); // 128
        pieces.push(Vec::new()); // 129: unused
        Vocab::new(pieces)
    }

    fn toy_encode(s: &str) -> Option<Vec<u32>> {
        let mut ids = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"ab") {
                ids.push(128);
                i += 2;
            } else if b[i] == b'~' {
                ids.push(b' ' as u32);
                i += 1;
            } else if b[i] < 0x80 {
                ids.push(b[i] as u32);
                i += 1;
            } else {
                return None;
            }
        }
        Some(ids)
    }

    fn seg(input: &[u8]) -> (Vec<Item>, SegmentStats) {
        let v = toy();
        let enc = toy_encode;
        let mut s = Segmenter::new(&v, &enc);
        let mut out = Vec::new();
        s.segment(input, &mut out);
        assert_eq!(items_bytes(&v, &out), input);
        (out, s.stats)
    }

    #[test]
    fn plain_text_is_tokens() {
        let (items, st) = seg(b"abc ab");
        assert_eq!(items, [128, 99, 32, 128].map(Item::Token));
        assert_eq!(st, SegmentStats::default());
    }

    #[test]
    fn failed_round_trip_falls_back_locally() {
        let (items, st) = seg(b"ab ab\nx~ab\nab");
        assert_eq!(st.failed_spans, 2, "{st:?}"); // the run, then its line
        assert!(items.contains(&Item::Token(128)));
        assert_eq!(st.byte_token_bytes, 1); // only the '~'
    }

    #[test]
    fn bytes_without_tokens_are_escaped() {
        let (items, st) = seg(b"a\xff\x00\xc3\xa9b");
        assert_eq!(st.escaped_bytes, 3, "{st:?}"); // 0xff, and é (no token above 0x7f)
        assert!(items.contains(&Item::Escaped(0xff)));
        assert!(items.contains(&Item::Token(0)));
    }

    #[test]
    fn cut_points() {
        assert_eq!(cut_point(b"ab\ncd"), 3);
        assert_eq!(cut_point(b"ab cd"), 3);
        assert_eq!(cut_point(b"abc\xc3"), 3);
        assert_eq!(cut_point(b"abc\xe2\x96"), 3);
        assert_eq!(cut_point(b"abc\xe2\x96\x81"), 6);
        assert_eq!(cut_point(b"abc"), 3);
    }
}
