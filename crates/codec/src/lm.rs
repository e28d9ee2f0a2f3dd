//! The model side: the token stream coded under the model's next-token distributions.
//!
//! # Windows
//!
//! The model never holds more than `ctx` tokens (the start token included).
//!
//! * **Sliding** (default): one range-coded stream. The context starts with the start
//!   token (the vocabulary's BOS, else its EOS, else none: the first token is then coded
//!   uniformly). When it is full and another token must be fed, it restarts as the
//!   start token plus the last `overlap` tokens, prefilled in one batch, so every
//!   token after the first window is predicted from at least `overlap` tokens of
//!   context. Memory is bounded by `ctx` and the read block, whatever the input size.
//! * **Equal-Info Windows** (Lester et al., 2024, "Training LLMs over Neurally
//!   Compressed Text"): every window is exactly `window_bytes` bytes of code and starts
//!   from a fresh context (the start token alone). The encoder adds items while the
//!   window, ended with an end-of-window symbol, still fits; then it ends the window and
//!   pads it with zeros. A window also ends when its context is full.
//!
//! # Determinism
//!
//! The decoder feeds one token at a time (it learns each token only by decoding it).
//! The encoder may feed tokens in batches, which is much faster, only if batched rows
//! equal single-token rows bit for bit; [`LmCodec::probe`] checks that on the loaded
//! model (and thread count) before every compression, and the encoder falls back to
//! single-token steps otherwise. Context restarts prefill the same batch on both sides.
//! The probe's single-step logits are hashed into the archive: a decoder whose forward
//! pass computes different bits (another CPU's kernels, another build) refuses to start.

use std::cell::OnceCell;
use std::io::{Read, Write};
use std::time::Instant;

use model::{Batch, LoadedModel, LogitsFor, Model, SequenceState};
use xxhash_rust::xxh3::Xxh3;

use crate::cdf::{Quantiser, Symbol, TOTAL};
use crate::coder::{RangeDecoder, RangeEncoder};
use crate::container::{split_archive, Header, Mode, ModelId};
use crate::segment::{cut_point, Item, Segmenter, Vocab};
use crate::{identity, CodecError, Result};

/// How to compress.
#[derive(Clone, Copy, Debug)]
pub struct CompressOptions {
    pub mode: Mode,
    /// Most tokens per encoder forward pass (1: single-token steps, like the decoder).
    pub batch: usize,
    /// Bytes of input tokenised at a time (cut at a line end; affects only how well
    /// the text compresses).
    pub read_block: usize,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            mode: Mode::Sliding {
                ctx: 1024,
                overlap: 256,
            },
            batch: 64,
            read_block: 1 << 16,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompressStats {
    pub input_bytes: u64,
    pub archive_bytes: u64,
    /// Items coded: tokens plus escaped bytes.
    pub items: u64,
    pub byte_token_bytes: u64,
    pub escaped_bytes: u64,
    /// Context restarts (sliding) or windows (Equal-Info).
    pub windows: u64,
    /// Whether the encoder fed tokens in batches (the probe allowed it).
    pub batched: bool,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecompressStats {
    pub output_bytes: u64,
    pub items: u64,
    pub windows: u64,
    pub seconds: f64,
}

/// What [`LmCodec::probe`] found about the loaded model's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// xxh3-64 of the bits of the probe's single-step logits.
    pub fingerprint: u64,
    /// Whether a batch of tokens gave the same bits, row for row, as single steps.
    pub batch_matches_steps: bool,
}

/// A loaded model ready to compress and decompress.
pub struct LmCodec<'m> {
    model: &'m Model,
    tokenizer: &'m model::Tokenizer,
    vocab: Vocab,
    id: ModelId,
    start: Option<u32>,
    probe: OnceCell<Probe>,
}

/// Tokens of the probe: a prefill of `PROBE_PREFILL`, then `PROBE_STEPS` tokens fed one
/// by one (and, to compare, as one batch). 16 + 4 rows exercise both a full 16-row tile
/// and a partial one of the multi-row kernels.
const PROBE_PREFILL: usize = 4;
const PROBE_STEPS: usize = 20;

impl<'m> LmCodec<'m> {
    /// Prepares the vocabulary and hashes the model (tens of milliseconds per 100 MB of
    /// weights). `name` appears in archives and messages only.
    pub fn new(loaded: &'m LoadedModel, name: &str) -> Result<LmCodec<'m>> {
        let n = loaded.model.config.vocab_size;
        let tok = &loaded.tokenizer;
        let pieces: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                if id < tok.vocab_size() {
                    tok.token_bytes(id as u32)
                } else {
                    Vec::new()
                }
            })
            .collect();
        let vocab = Vocab::new(pieces);
        let id = identity::model_id(loaded, &vocab.pieces, name);
        // The model saw documents start after BOS (or after the previous document's
        // EOS); either is a better first context than nothing.
        let start = tok.bos_id().or(tok.eos_id()).filter(|&t| (t as usize) < n);
        Ok(LmCodec {
            model: &loaded.model,
            tokenizer: tok,
            vocab,
            id,
            start,
            probe: OnceCell::new(),
        })
    }

    pub fn model_id(&self) -> &ModelId {
        &self.id
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn quantiser(&self, end_of_window: bool) -> Result<Quantiser> {
        let codable = (0..self.vocab.pieces.len() as u32)
            .map(|id| self.vocab.codable(id))
            .collect();
        Quantiser::new(codable, end_of_window)
    }

    /// Runs the probe once per codec (see the module documentation).
    pub fn probe(&self) -> Result<Probe> {
        if let Some(p) = self.probe.get() {
            return Ok(*p);
        }
        let n = self.vocab.pieces.len();
        let codable: Vec<u32> = (0..n as u32).filter(|&i| self.vocab.codable(i)).collect();
        if codable.is_empty() {
            return Err(CodecError::Model(
                "the vocabulary has no token with bytes".into(),
            ));
        }
        // Spread over the vocabulary, deterministically.
        let mut tokens: Vec<u32> = (0..PROBE_PREFILL + PROBE_STEPS)
            .map(|k| codable[(k * 7919 + 13) % codable.len()])
            .collect();
        if let Some(s) = self.start {
            tokens[0] = s;
        }
        let (head, tail) = tokens.split_at(PROBE_PREFILL);
        let pos: Vec<usize> = (0..tokens.len()).collect();
        let cap = tokens.len();
        let m = self.model;

        let mut hasher = Xxh3::new();
        let mut bytes = Vec::with_capacity(n * 4);
        let mut hash_row = |row: &[f32]| {
            bytes.clear();
            bytes.extend(row.iter().flat_map(|x| x.to_bits().to_le_bytes()));
            hasher.update(&bytes);
        };
        let mut single = m.new_state(cap);
        let first = m.forward(
            &mut single,
            &Batch::causal(head, &pos[..PROBE_PREFILL]),
            None,
        )?;
        hash_row(first);
        let mut rows = Vec::with_capacity(tail.len() * n);
        for (k, t) in tail.iter().enumerate() {
            let p = PROBE_PREFILL + k;
            let row = m.forward(
                &mut single,
                &Batch::causal(std::slice::from_ref(t), &pos[p..p + 1]),
                None,
            )?;
            hash_row(row);
            rows.extend_from_slice(row);
        }
        let fingerprint = hasher.digest();

        let mut batched = m.new_state(cap);
        m.forward(
            &mut batched,
            &Batch::causal(head, &pos[..PROBE_PREFILL]),
            None,
        )?;
        let all = m.forward(
            &mut batched,
            &Batch {
                logits: LogitsFor::All,
                ..Batch::causal(tail, &pos[PROBE_PREFILL..])
            },
            None,
        )?;
        let batch_matches_steps = all.len() == rows.len()
            && all
                .iter()
                .zip(&rows)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        let p = Probe {
            fingerprint,
            batch_matches_steps,
        };
        let _ = self.probe.set(p);
        Ok(p)
    }

    fn check_mode(&self, mode: &Mode) -> Result<()> {
        let max = self.model.config.context_length;
        let ctx = mode.ctx() as usize;
        if max > 0 && ctx > max {
            return Err(CodecError::Settings(format!(
                "ctx {ctx} is longer than the model's context ({max} tokens)"
            )));
        }
        Ok(())
    }

    /// Compresses `len` bytes from `input`, whose CRC-32 is `crc` (the header carries
    /// both, so the input is read twice: once by the caller for them, once here; a
    /// mismatch means the input changed in between and is an error). Writes the whole
    /// archive to `out`.
    pub fn compress(
        &self,
        input: &mut dyn Read,
        len: u64,
        crc: u32,
        opts: &CompressOptions,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CompressStats> {
        let t0 = Instant::now();
        if opts.batch == 0 || opts.read_block == 0 {
            return Err(CodecError::Settings(
                "batch and read block must be at least 1".into(),
            ));
        }
        let probe = self.probe()?;
        let header = Header {
            mode: opts.mode,
            start_token: self.start,
            original_len: len,
            content_crc: crc,
            model: self.id.clone(),
            fingerprint: probe.fingerprint,
        };
        header.validate()?;
        self.check_mode(&opts.mode)?;
        let batch = if probe.batch_matches_steps {
            opts.batch
        } else {
            1
        };
        let mut sink = Sink {
            out,
            crc: crc32fast::Hasher::new(),
            n: 0,
        };
        sink.write(&header.to_bytes())?;

        let tok = self.tokenizer;
        let encode = |s: &str| tok.encode(s, false, false).ok();
        let mut seg = Segmenter::new(&self.vocab, &encode);
        let eiw = matches!(opts.mode, Mode::EqualInfo { .. });
        let mut enc = Encoder {
            codec: self,
            cx: Context::new(self.model, opts.mode.ctx() as usize, self.start),
            q: self.quantiser(eiw)?,
            mode: opts.mode,
            batch,
            coder: RangeEncoder::new(),
            prev: None,
            in_window: 0,
            windows: 0,
            items: 0,
        };
        enc.cx.restart(&[])?;

        let mut buf: Vec<u8> = Vec::with_capacity(opts.read_block);
        let mut items: Vec<Item> = Vec::new();
        let mut content_crc = crc32fast::Hasher::new();
        let mut done: u64 = 0;
        let mut eof = false;
        progress(0, len);
        while !eof || !buf.is_empty() {
            // Fill the block.
            while !eof && buf.len() < opts.read_block {
                let old = buf.len();
                buf.resize(opts.read_block, 0);
                let got = input.read(&mut buf[old..]);
                match got {
                    Ok(0) => {
                        buf.truncate(old);
                        eof = true;
                    }
                    Ok(k) => buf.truncate(old + k),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(old),
                    Err(e) => return Err(CodecError::Io(format!("reading the input: {e}"))),
                }
            }
            let cut = if eof { buf.len() } else { cut_point(&buf) };
            let cut = if cut == 0 { buf.len() } else { cut };
            if cut == 0 {
                break;
            }
            items.clear();
            seg.segment(&buf[..cut], &mut items);
            content_crc.update(&buf[..cut]);
            done += cut as u64;
            buf.drain(..cut);
            enc.items(&items, &mut sink)?;
            progress(done.min(len), len);
        }
        enc.finish(&mut sink)?;
        if done != len || content_crc.finalize() != crc {
            return Err(CodecError::Io(
                "the input changed while it was being compressed".into(),
            ));
        }
        let archive_crc = sink.crc.clone().finalize();
        sink.write(&archive_crc.to_le_bytes())?;
        sink.out.flush()?;
        Ok(CompressStats {
            input_bytes: len,
            archive_bytes: sink.n,
            items: enc.items,
            byte_token_bytes: seg.stats.byte_token_bytes,
            escaped_bytes: seg.stats.escaped_bytes,
            windows: enc.windows,
            batched: batch > 1,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Compresses a byte string held in memory.
    pub fn compress_bytes(&self, data: &[u8], opts: &CompressOptions) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.compress(
            &mut &data[..],
            data.len() as u64,
            crc32fast::hash(data),
            opts,
            &mut out,
            &mut |_, _| {},
        )?;
        Ok(out)
    }

    /// Checks an archive's header, checksum and model against this codec, without
    /// decoding. Returns the header and the payload.
    pub fn open<'a>(&self, archive: &'a [u8]) -> Result<(Header, &'a [u8])> {
        let (header, start) = Header::parse(archive)?;
        let payload = split_archive(archive, start)?;
        if !header.model.same_model(&self.id) {
            return Err(CodecError::WrongModel {
                archive: header.model.describe(),
                loaded: self.id.describe(),
            });
        }
        if let Some(s) = header.start_token {
            if (s as usize) >= self.vocab.pieces.len() {
                return Err(CodecError::Corrupt(format!("start token {s}")));
            }
        }
        Ok((header, payload))
    }

    /// Decompresses an archive (read whole: it is a fraction of the text) into `out`.
    /// On error, whatever was written to `out` must be discarded: the caller writes
    /// to a temporary file and keeps it only on success.
    pub fn decompress(
        &self,
        archive: &[u8],
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DecompressStats> {
        let t0 = Instant::now();
        let (header, payload) = self.open(archive)?;
        self.check_mode(&header.mode)?;
        let len = header.original_len;
        let probe = self.probe()?;
        if probe.fingerprint != header.fingerprint {
            return Err(CodecError::Numerics(format!(
                "this machine's forward pass computes different logits for {} than the one that made the archive (numerics fingerprint {:016x}, archive {:016x}): it cannot be decoded here",
                self.id.name, probe.fingerprint, header.fingerprint
            )));
        }
        let eiw = matches!(header.mode, Mode::EqualInfo { .. });
        let mut dec = Decoder {
            codec: self,
            cx: Context::new(self.model, header.mode.ctx() as usize, header.start_token),
            q: self.quantiser(eiw)?,
            out: std::io::BufWriter::with_capacity(1 << 16, out),
            crc: crc32fast::Hasher::new(),
            produced: 0,
            len,
            items: 0,
        };
        progress(0, len);
        let mut windows = 0;
        match header.mode {
            Mode::Sliding { overlap, .. } => {
                let mut rd = RangeDecoder::new(payload);
                dec.cx.restart(&[])?;
                let mut prev = None;
                while dec.produced < len {
                    let s = dec.item(&mut rd, &mut prev, Some(overlap as usize))?;
                    // A complete stream is never read past its end: this one was cut
                    // (or its header claims more text than it holds).
                    if rd.overran() {
                        return Err(CodecError::Truncated);
                    }
                    match s {
                        Symbol::EndOfWindow => {
                            return Err(CodecError::Corrupt(
                                "end of window in a sliding archive".into(),
                            ))
                        }
                        s => prev = token_of(s),
                    }
                    if dec.items.is_multiple_of(256) {
                        progress(dec.produced, len);
                    }
                }
                windows = dec.cx.restarts;
                if rd.position() != payload.len() {
                    return Err(CodecError::Corrupt(
                        "data after the end of the coded stream".into(),
                    ));
                }
            }
            Mode::EqualInfo { window_bytes, .. } => {
                let w = window_bytes as usize;
                if payload.len() % w != 0 {
                    return Err(CodecError::Corrupt(format!(
                        "payload of {} bytes is not a whole number of {w}-byte windows",
                        payload.len()
                    )));
                }
                for window in payload.chunks(w) {
                    if dec.produced >= len {
                        return Err(CodecError::Corrupt(
                            "windows after the end of the text".into(),
                        ));
                    }
                    windows += 1;
                    let mut rd = RangeDecoder::new(window);
                    dec.cx.restart(&[])?;
                    let mut prev = None;
                    loop {
                        match dec.item(&mut rd, &mut prev, None)? {
                            Symbol::EndOfWindow => break,
                            s => prev = token_of(s),
                        }
                    }
                    progress(dec.produced, len);
                }
            }
        }
        if dec.produced != len {
            return Err(CodecError::Truncated);
        }
        dec.out.flush()?;
        if dec.crc.clone().finalize() != header.content_crc {
            return Err(CodecError::Numerics(
                "the decoded text fails its checksum: this machine computed different probabilities than the compressing one".into(),
            ));
        }
        progress(len, len);
        Ok(DecompressStats {
            output_bytes: len,
            items: dec.items,
            windows,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Decompresses into memory.
    pub fn decompress_to_vec(&self, archive: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decompress(archive, &mut out, &mut |_, _| {})?;
        Ok(out)
    }
}

fn token_of(s: Symbol) -> Option<u32> {
    match s {
        Symbol::Token(t) => Some(t),
        _ => None,
    }
}

/// Writes archive bytes, keeping their CRC and count.
struct Sink<'w> {
    out: &'w mut dyn Write,
    crc: crc32fast::Hasher,
    n: u64,
}

impl Sink<'_> {
    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.crc.update(b);
        self.n += b.len() as u64;
        self.out
            .write_all(b)
            .map_err(|e| CodecError::Io(format!("writing the archive: {e}")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advance {
    Fed,
    /// The context is full and may not restart (Equal-Info Windows).
    Full,
}

/// The model's context: what is in the cache, and the logit rows of the last forward.
struct Context<'m> {
    model: &'m Model,
    state: SequenceState,
    ctx: usize,
    start: Option<u32>,
    history: Vec<u32>,
    positions: Vec<usize>,
    /// Rows of the last forward, one per token fed in it (`[n_rows, vocab]`).
    rows: Vec<f32>,
    fed: Vec<u32>,
    /// Which row holds the logits for the next item (`None`: no row yet).
    cur: Option<usize>,
    width: usize,
    restarts: u64,
}

impl<'m> Context<'m> {
    fn new(model: &'m Model, ctx: usize, start: Option<u32>) -> Context<'m> {
        Context {
            model,
            state: model.new_state(ctx),
            ctx,
            start,
            history: Vec::with_capacity(ctx),
            positions: Vec::with_capacity(ctx),
            rows: Vec::new(),
            fed: Vec::new(),
            cur: None,
            width: model.config.vocab_size,
            restarts: 0,
        }
    }

    /// Starts a fresh context holding the start token and `keep`, prefilled in one
    /// batch (the same batch in encoder and decoder).
    fn restart(&mut self, keep: &[u32]) -> Result<()> {
        self.state.cache.clear();
        self.history.clear();
        self.history.extend(self.start);
        self.history.extend_from_slice(keep);
        self.fed.clear();
        self.cur = None;
        if self.history.is_empty() {
            return Ok(());
        }
        self.positions.clear();
        self.positions.extend(0..self.history.len());
        let row = self.model.forward(
            &mut self.state,
            &Batch::causal(&self.history, &self.positions),
            None,
        )?;
        self.rows.clear();
        self.rows.extend_from_slice(row);
        self.fed.push(*self.history.last().unwrap_or(&0));
        self.cur = Some(0);
        Ok(())
    }

    /// Makes the current row the logits after `t`, the next token of the stream.
    /// `upcoming` yields the tokens after `t`, which may be fed in the same batch (at
    /// most `batch` tokens in all). When the context is full it restarts from the last
    /// `overlap` tokens, or, with `None`, reports [`Advance::Full`].
    fn advance(
        &mut self,
        t: u32,
        upcoming: &mut dyn Iterator<Item = u32>,
        batch: usize,
        overlap: Option<usize>,
    ) -> Result<Advance> {
        if let Some(c) = self.cur {
            if c + 1 < self.fed.len() {
                if self.fed[c + 1] != t {
                    return Err(CodecError::Model(
                        "internal error: tokens fed ahead differ from the stream".into(),
                    ));
                }
                self.cur = Some(c + 1);
                return Ok(Advance::Fed);
            }
        }
        if self.history.len() >= self.ctx {
            match overlap {
                Some(o) => {
                    let keep = self.history[self.history.len() - o..].to_vec();
                    self.restart(&keep)?;
                    self.restarts += 1;
                }
                None => return Ok(Advance::Full),
            }
        }
        let room = self.ctx - self.history.len();
        let n = batch.min(room).max(1);
        self.fed.clear();
        self.fed.push(t);
        self.fed.extend(upcoming.take(n - 1));
        let first = self.history.len();
        self.positions.clear();
        self.positions.extend(first..first + self.fed.len());
        let rows = self.model.forward(
            &mut self.state,
            &Batch {
                logits: LogitsFor::All,
                ..Batch::causal(&self.fed, &self.positions)
            },
            None,
        )?;
        self.rows.clear();
        self.rows.extend_from_slice(rows);
        self.history.extend_from_slice(&self.fed);
        self.cur = Some(0);
        Ok(Advance::Fed)
    }

    fn row(&self) -> Option<&[f32]> {
        self.cur
            .map(|c| &self.rows[c * self.width..(c + 1) * self.width])
    }
}

struct Encoder<'c, 'm> {
    codec: &'c LmCodec<'m>,
    cx: Context<'m>,
    q: Quantiser,
    mode: Mode,
    batch: usize,
    coder: RangeEncoder,
    /// The last item's token, not yet fed.
    prev: Option<u32>,
    /// Items in the current Equal-Info window.
    in_window: u64,
    windows: u64,
    items: u64,
}

impl Encoder<'_, '_> {
    /// Codes one item into `coder` under the current frequencies.
    fn code(q: &Quantiser, coder: &mut RangeEncoder, item: Item) {
        match item {
            Item::Token(id) => {
                let (c, f) = q.interval(Symbol::Token(id));
                coder.encode(c, f, TOTAL);
            }
            Item::Escaped(b) => {
                let (c, f) = q.interval(Symbol::Escape);
                coder.encode(c, f, TOTAL);
                coder.encode(b as u64, 1, 256);
            }
        }
    }

    fn items(&mut self, items: &[Item], sink: &mut Sink<'_>) -> Result<()> {
        for (i, &item) in items.iter().enumerate() {
            if let Item::Token(id) = item {
                if !self.codec.vocab.codable(id) {
                    return Err(CodecError::Model(format!("token {id} has no bytes")));
                }
            }
            let mut upcoming = items[i..].iter().filter_map(|it| match it {
                Item::Token(t) => Some(*t),
                Item::Escaped(_) => None,
            });
            match self.mode {
                Mode::Sliding { overlap, .. } => {
                    if let Some(t) = self.prev.take() {
                        self.cx
                            .advance(t, &mut upcoming, self.batch, Some(overlap as usize))?;
                    }
                    self.q.quantise(self.cx.row());
                    Self::code(&self.q, &mut self.coder, item);
                    sink.write(&self.coder.take_output())?;
                }
                Mode::EqualInfo { window_bytes, .. } => {
                    self.equal_info_item(item, &mut upcoming, window_bytes as usize, sink)?
                }
            }
            self.prev = match item {
                Item::Token(t) => Some(t),
                Item::Escaped(_) => None,
            };
            self.items += 1;
        }
        Ok(())
    }

    fn equal_info_item(
        &mut self,
        item: Item,
        upcoming: &mut dyn Iterator<Item = u32>,
        w: usize,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        loop {
            if let Some(t) = self.prev.take() {
                if self.cx.advance(t, upcoming, self.batch, None)? == Advance::Full {
                    self.close_window(w, sink)?;
                    continue;
                }
            }
            self.q.quantise(self.cx.row());
            let mut trial = self.coder.clone();
            Self::code(&self.q, &mut trial, item);
            let mut ended = trial.clone();
            let (c, f) = self.q.interval(Symbol::EndOfWindow);
            ended.encode(c, f, TOTAL);
            if ended.trimmed_len() <= w {
                self.coder = trial;
                self.in_window += 1;
                return Ok(());
            }
            if self.in_window == 0 {
                return Err(CodecError::Settings(format!(
                    "one symbol does not fit in a window of {w} bytes"
                )));
            }
            self.close_window(w, sink)?;
        }
    }

    /// Ends the current Equal-Info window: end-of-window symbol, padding to `w` bytes,
    /// and a fresh context for the next one.
    fn close_window(&mut self, w: usize, sink: &mut Sink<'_>) -> Result<()> {
        let (c, f) = self.q.interval(Symbol::EndOfWindow);
        let mut coder = std::mem::take(&mut self.coder);
        coder.encode(c, f, TOTAL);
        let mut bytes = coder.finish_trimmed();
        if bytes.len() > w {
            return Err(CodecError::Model(
                "internal error: an Equal-Info window overflowed".into(),
            ));
        }
        bytes.resize(w, 0);
        sink.write(&bytes)?;
        self.windows += 1;
        self.in_window = 0;
        self.prev = None;
        self.cx.restart(&[])
    }

    fn finish(&mut self, sink: &mut Sink<'_>) -> Result<()> {
        match self.mode {
            Mode::Sliding { .. } => {
                let coder = std::mem::take(&mut self.coder);
                sink.write(&coder.finish())?;
                self.windows = self.cx.restarts;
            }
            Mode::EqualInfo { window_bytes, .. } => {
                if self.in_window > 0 {
                    // The end-of-window symbol is coded under the frequencies after the
                    // last item: they do not depend on the logits, so no step is needed.
                    self.close_window(window_bytes as usize, sink)?;
                }
            }
        }
        Ok(())
    }
}

struct Decoder<'c, 'm, 'w> {
    codec: &'c LmCodec<'m>,
    cx: Context<'m>,
    q: Quantiser,
    out: std::io::BufWriter<&'w mut dyn Write>,
    crc: crc32fast::Hasher,
    produced: u64,
    len: u64,
    items: u64,
}

impl Decoder<'_, '_, '_> {
    /// Decodes one symbol and writes its bytes. `prev` is the last token, not yet fed:
    /// it is fed (restarting the context with `overlap`, or failing when the context is
    /// full with `None`) only when the symbol is not an end of window, exactly as the
    /// encoder, which ends a window without feeding its last token.
    fn item(
        &mut self,
        rd: &mut RangeDecoder<'_>,
        prev: &mut Option<u32>,
        overlap: Option<usize>,
    ) -> Result<Symbol> {
        let v = rd.target(TOTAL)?;
        let (ec, ef) = self.q.interval(Symbol::EndOfWindow);
        if ef > 0 && v >= ec {
            rd.consume(ec, ef);
            return Ok(Symbol::EndOfWindow);
        }
        if let Some(t) = prev.take() {
            if self.cx.advance(t, &mut std::iter::empty(), 1, overlap)? == Advance::Full {
                return Err(CodecError::Corrupt("a window overflows the context".into()));
            }
        }
        self.q.quantise(self.cx.row());
        let (s, c, f) = self.q.find(v);
        rd.consume(c, f);
        let byte;
        let bytes: &[u8] = match s {
            Symbol::EndOfWindow => return Ok(s),
            Symbol::Token(id) => &self.codec.vocab.pieces[id as usize],
            Symbol::Escape => {
                byte = [rd.decode_uniform(256)? as u8];
                &byte
            }
        };
        if self.produced + bytes.len() as u64 > self.len {
            return Err(CodecError::Corrupt(
                "the coded stream runs past the original length".into(),
            ));
        }
        self.crc.update(bytes);
        self.produced += bytes.len() as u64;
        self.items += 1;
        self.out
            .write_all(bytes)
            .map_err(|e| CodecError::Io(format!("writing the output: {e}")))?;
        Ok(s)
    }
}
