//! Exact next-byte probabilities from a tokenized language model.
//!
//! A token-level language model defines a distribution over token sequences, and through
//! each token's bytes a distribution over byte strings. This crate computes that byte
//! distribution's conditionals `P(b | x)` for a byte prefix `x` (any bytes, not only
//! UTF-8), one byte at a time, following Phan et al. 2024, *Exact Byte-Level
//! Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles*.
//!
//! # What is summed over
//!
//! Write `P(x)` for the probability that the model's byte stream *starts with* `x`.
//! A *cover encoding* of `x` is a token sequence `t_1 .. t_k` whose first `k - 1`
//! tokens spell a strict prefix of `x` and whose last token's bytes continue it to (or
//! past) the end of `x`. Every token sequence whose bytes start with `x` has exactly one
//! prefix that is a cover encoding (the shortest one that reaches the end of `x`), so
//!
//! ```text
//! P(x) = Σ_{c ∈ cover(x)} P_tok(c),        P(b | x) = P(x b) / P(x).
//! ```
//!
//! The sum runs over **all** tokenisations, canonical or not. The paper's
//! Byte-Token Representation Lemma restricts it to *valid* encodings (those the
//! tokenizer's `encode` could produce), which is exact only under the assumption that
//! the model gives non-canonical sequences probability zero; real models give them a
//! small but non-zero mass. Summing over all of them needs no tokenizer and no
//! assumption: it is the byte distribution the token model actually defines (sampling
//! tokens and writing their bytes produces bytes with exactly these probabilities).
//!
//! # Which tokens take part
//!
//! [`Vocabulary`] lists each token's bytes. Tokens with no bytes (control tokens,
//! unused slots) cannot spell text and would make tokenisations non-unique, so the token
//! distribution is renormalised over the *text* tokens plus the *end* tokens
//! ([`Vocabulary::new`]'s `end_tokens`, e.g. EOS). Ending is the 257th outcome
//! ([`ByteDistribution::end`]); with no end tokens the 256 bytes sum to one.
//!
//! # Cost, caching and pruning
//!
//! The state ([`ByteLevel`]) keeps, for the current prefix `x` of length `n`, every token
//! sequence `s` whose bytes are `x[..i]` for some `i <= n` and that can still matter:
//! those with `i = n` (a *boundary*: the next token starts here), and those with `i < n`
//! for which some token extends `x[i..n]` (an *overhang*: its next token covers `x`).
//! Each boundary sequence costs one evaluation by the model (those of one byte in one
//! [`TokenLm::next_logits_batch`] call); the next-token distribution it returns is kept
//! as prefix sums over the vocabulary sorted by bytes, so the tokens that extend
//! `x[i..n]` are a contiguous range and every next-byte mass is one subtraction.
//! Pushing a byte narrows each overhang's range and turns tokens that end exactly at
//! the new length into new boundary sequences: nothing is re-enumerated, and the model
//! evaluates each tokenisation of each prefix once.
//!
//! The number of tokenisations grows exponentially with the length of the text (it
//! multiplies across words), so [`Prune`] can drop unlikely boundary sequences before
//! their model call; [`Prune::exact`] (the default) drops nothing. With pruning the
//! results are **approximate**: the conditionals are those of the kept sequences,
//! renormalised. Two rigorous statements remain:
//!
//! * Every dropped sequence's future contribution is at most its mass when dropped, so
//!   with `K` the kept prefix mass and `D` the dropped mass, `δ = D / K` bounds every
//!   conditional: `P̂(b|x) / (1 + δ) <= P(b|x) <= P̂(b|x) + δ`
//!   ([`ByteDistribution::error_bound`]), and the prefix probability:
//!   `ln K <= ln P(x) <= ln K + ln(1 + δ)` ([`ByteLevel::log_prefix_bounds`]). `K`
//!   shrinks with every byte while `D` does not, so `δ` is informative for short
//!   strings only.
//! * The lower bound `ln K` stays tight: it falls below the chain of reported
//!   conditionals (`Σ ln P̂(b|x)`) by `-Σ ln(1 - f)`, `f` being the fraction of the
//!   prefix mass dropped at each byte. Real models give non-canonical tokenisations
//!   little mass, so `f` is tiny and the chain is within that gap of a true lower
//!   bound.

use std::error::Error as StdError;

/// What can go wrong. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ByteLevelError {
    #[error("invalid vocabulary: {0}")]
    Vocabulary(String),
    /// The token model failed (its own message).
    #[error("token model: {0}")]
    Model(Box<dyn StdError + Send + Sync>),
    #[error("the token model returned {got} logits, the vocabulary has {expected} tokens")]
    LogitsLength { got: usize, expected: usize },
    #[error("the token model returned a NaN logit for token {0}")]
    NanLogit(u32),
    #[error("the token model gives every text and end token probability zero")]
    NoMass,
    /// The byte cannot follow the prefix: no tokenisation spells it (or the model gives
    /// every one probability zero). The state is unchanged.
    #[error("byte 0x{byte:02x} has probability zero after {prefix_len} bytes (no token sequence spells it)")]
    ZeroProbability { byte: u8, prefix_len: usize },
}

pub type Result<T, E = ByteLevelError> = std::result::Result<T, E>;

/// The token model, asked for the next-token logits after a context.
///
/// `context` holds token ids of the [`Vocabulary`] only; a start token (BOS) the model
/// expects is the implementer's to prepend. [`ByteLevel`] asks for the contexts of one
/// step in lexicographic order, and after each byte tells it which sequences are
/// still in play ([`TokenLm::retain`]): an implementation can keep their KV cache (as a
/// token tree) and run only each context's new last token.
pub trait TokenLm {
    /// Writes the logits of every token id (`out.len()` = vocabulary size afterwards).
    fn next_logits(
        &mut self,
        context: &[u32],
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), Box<dyn StdError + Send + Sync>>;

    /// The logits after each of `contexts`, row after row (`out.len()` = contexts ×
    /// vocabulary size afterwards): one forward pass can serve a whole step. The
    /// default asks [`next_logits`](Self::next_logits) for them one at a time.
    fn next_logits_batch(
        &mut self,
        contexts: &[&[u32]],
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), Box<dyn StdError + Send + Sync>> {
        out.clear();
        let mut row = Vec::new();
        for c in contexts {
            self.next_logits(c, &mut row)?;
            out.extend_from_slice(&row);
        }
        Ok(())
    }

    /// Called after each byte with the token sequences still in play: every later
    /// context extends one of them, so a cache may forget everything else. The
    /// default keeps everything.
    fn retain(&mut self, live: &[&[u32]]) {
        let _ = live;
    }
}

/// The tokens' bytes, sorted for range queries.
#[derive(Clone, Debug)]
pub struct Vocabulary {
    /// Bytes of each token id; empty for tokens that are not text.
    pieces: Vec<Vec<u8>>,
    /// Tokens whose choice ends the byte stream.
    end_tokens: Vec<u32>,
    /// Text tokens (non-empty bytes, not end tokens) sorted by bytes, then id. Tokens
    /// with a given byte prefix form a contiguous range, shortest first.
    sorted: Vec<u32>,
    /// `sorted[first_byte[b]..first_byte[b + 1]]` are the tokens starting with byte `b`.
    first_byte: [usize; 257],
}

impl Vocabulary {
    /// `pieces[id]` is token `id`'s bytes (empty: not a text token, excluded);
    /// `end_tokens` end the stream (their bytes, if any, are ignored). An end id outside
    /// the vocabulary is an error.
    pub fn new(mut pieces: Vec<Vec<u8>>, end_tokens: Vec<u32>) -> Result<Vocabulary> {
        let mut end_tokens = end_tokens;
        end_tokens.sort_unstable();
        end_tokens.dedup();
        let n_tokens = pieces.len();
        for &e in &end_tokens {
            let piece = pieces.get_mut(e as usize).ok_or_else(|| {
                ByteLevelError::Vocabulary(format!(
                    "end token {e} is outside the vocabulary ({n_tokens} tokens)"
                ))
            })?;
            piece.clear();
        }
        if pieces.len() > u32::MAX as usize {
            return Err(ByteLevelError::Vocabulary("more than 2^32 tokens".into()));
        }
        let mut sorted: Vec<u32> = (0..pieces.len() as u32)
            .filter(|&id| !pieces[id as usize].is_empty())
            .collect();
        sorted.sort_by(|&a, &b| pieces[a as usize].cmp(&pieces[b as usize]).then(a.cmp(&b)));
        let mut first_byte = [0usize; 257];
        for (b, start) in first_byte.iter_mut().enumerate() {
            *start = sorted.partition_point(|&t| (pieces[t as usize][0] as usize) < b);
        }
        Ok(Vocabulary {
            pieces,
            end_tokens,
            sorted,
            first_byte,
        })
    }

    /// Number of token ids (text or not): the length of a logits row.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Token `id`'s bytes (empty for non-text and end tokens, and out-of-range ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    pub fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }

    /// Whether `id` takes part: a text token or an end token.
    pub fn is_allowed(&self, id: u32) -> bool {
        !self.piece(id).is_empty() || self.end_tokens.binary_search(&id).is_ok()
    }

    fn sorted_piece(&self, k: usize) -> &[u8] {
        &self.pieces[self.sorted[k] as usize]
    }

    /// Within `range` (tokens sharing a prefix of length `depth`, each longer than
    /// `depth`), the sub-range whose byte at `depth` is `b`.
    fn group(&self, (lo, hi): (usize, usize), depth: usize, b: u8) -> (usize, usize) {
        let slice = &self.sorted[lo..hi];
        let start = lo + slice.partition_point(|&t| self.pieces[t as usize][depth] < b);
        let end = lo + slice.partition_point(|&t| self.pieces[t as usize][depth] <= b);
        (start, end)
    }
}

/// When to drop unlikely tokenisations (see the crate documentation for the bound).
///
/// The most likely new boundary sequence of each byte is always kept, whatever the
/// settings: then a boundary exists at every position, and every byte that some
/// single-byte token spells keeps a non-zero probability (byte-level BPE and byte
/// fallback vocabularies have one for every byte), as it has without pruning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prune {
    /// Drop a new boundary sequence whose mass, relative to the prefix's, is below this.
    pub min_relative: f64,
    /// Keep at most this many new boundary sequences per byte (the most likely ones).
    pub max_new_boundaries: usize,
}

impl Prune {
    /// Drops nothing: the distributions are exact.
    pub const fn exact() -> Prune {
        Prune {
            min_relative: 0.0,
            max_new_boundaries: usize::MAX,
        }
    }
}

impl Default for Prune {
    fn default() -> Self {
        Prune::exact()
    }
}

/// The next-byte distribution after the current prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct ByteDistribution {
    /// `P(b | x)` for every byte.
    pub bytes: [f64; 256],
    /// `P(end | x)`: the stream ends here (an end token at a token boundary).
    pub end: f64,
    /// `δ`: 0 when exact; with pruning the true conditionals satisfy
    /// `bytes[b] / (1 + δ) <= P(b|x) <= bytes[b] + δ` (likewise `end`).
    pub error_bound: f64,
}

impl ByteDistribution {
    /// Entropy in nats over the 256 bytes and the end outcome.
    pub fn entropy(&self) -> f64 {
        self.bytes
            .iter()
            .chain(std::iter::once(&self.end))
            .filter(|&&p| p > 0.0)
            .map(|&p| -p * p.ln())
            .sum()
    }
}

/// Counters for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteLevelStats {
    /// Contexts evaluated: one per boundary sequence (those of one byte are asked for
    /// in one [`TokenLm::next_logits_batch`] call).
    pub model_calls: u64,
    /// Boundary sequences dropped by pruning (never evaluated).
    pub pruned: u64,
    /// Sequences held now (boundaries and overhangs).
    pub live_sequences: usize,
}

/// One token sequence whose bytes are `x[..start]`, with the part of its next-token
/// distribution that can still cover the prefix.
struct Sequence {
    tokens: Vec<u32>,
    /// `P_tok(tokens)` relative to the current prefix's kept mass.
    mass: f64,
    /// Byte length of `tokens`: where the next token starts.
    start: usize,
    /// Range of [`Vocabulary::sorted`] whose tokens extend `x[start..]` past its end
    /// (at a boundary: every text token).
    lo: usize,
    hi: usize,
    /// `cum[k - cum_lo]` = next-token probability of `sorted[cum_lo..k]`, for
    /// `k` in `cum_lo..=` the range's end.
    cum: Vec<f64>,
    cum_lo: usize,
    /// Next-token probability of the end tokens.
    end_prob: f64,
}

impl Sequence {
    fn range_mass(&self, a: usize, b: usize) -> f64 {
        self.cum[b - self.cum_lo] - self.cum[a - self.cum_lo]
    }

    fn prob(&self, k: usize) -> f64 {
        self.range_mass(k, k + 1)
    }
}

/// The byte-level view of a token model, advanced one byte at a time.
pub struct ByteLevel<'v, L: TokenLm> {
    vocab: &'v Vocabulary,
    lm: L,
    prune: Prune,
    prefix: Vec<u8>,
    sequences: Vec<Sequence>,
    /// Unnormalised next-byte masses (relative to the kept prefix mass, which is 1).
    next: [f64; 256],
    next_end: f64,
    /// Mass dropped by pruning so far, relative to the kept prefix mass.
    dropped: f64,
    /// `ln K`: the kept prefix mass in absolute terms (0 at the empty prefix).
    log_kept: f64,
    stats: ByteLevelStats,
    logits: Vec<f32>,
}

impl<'v, L: TokenLm> ByteLevel<'v, L> {
    /// Starts at the empty prefix (one model call, for the empty context).
    pub fn new(vocab: &'v Vocabulary, lm: L, prune: Prune) -> Result<Self> {
        let mut me = ByteLevel {
            vocab,
            lm,
            prune,
            prefix: Vec::new(),
            sequences: Vec::new(),
            next: [0.0; 256],
            next_end: 0.0,
            dropped: 0.0,
            log_kept: 0.0,
            stats: ByteLevelStats::default(),
            logits: Vec::new(),
        };
        me.add_boundaries(vec![(Vec::new(), 1.0)], 0)?;
        me.update_distribution()?;
        Ok(me)
    }

    /// The bytes pushed so far.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn stats(&self) -> ByteLevelStats {
        ByteLevelStats {
            live_sequences: self.sequences.len(),
            ..self.stats
        }
    }

    pub fn lm(&self) -> &L {
        &self.lm
    }

    pub fn lm_mut(&mut self) -> &mut L {
        &mut self.lm
    }

    /// `P(b | prefix)` for every byte, and of ending.
    pub fn distribution(&self) -> ByteDistribution {
        ByteDistribution {
            bytes: self.next,
            end: self.next_end,
            error_bound: self.dropped,
        }
    }

    /// Bounds on `ln P(prefix)`, the probability that the byte stream starts with the
    /// prefix: `(ln K, ln K + ln(1 + δ))`, `K` the kept mass. Equal when exact.
    pub fn log_prefix_bounds(&self) -> (f64, f64) {
        (self.log_kept, self.log_kept + self.dropped.ln_1p())
    }

    /// `ln P(b | prefix)`, without pushing (`-inf` for an impossible byte).
    pub fn logprob(&self, b: u8) -> f64 {
        self.next[b as usize].ln()
    }

    /// Appends byte `b` and returns `ln P(b | old prefix)`. A byte of probability zero
    /// is an error and leaves the state unchanged.
    pub fn push(&mut self, b: u8) -> Result<f64> {
        let p = self.next[b as usize];
        if p <= 0.0 {
            return Err(ByteLevelError::ZeroProbability {
                byte: b,
                prefix_len: self.prefix.len(),
            });
        }
        let n = self.prefix.len();
        let vocab = self.vocab;
        // Narrow every sequence to the tokens whose byte at this position is `b`; the
        // ones that end exactly here become new boundary sequences.
        let mut children: Vec<(Vec<u32>, f64)> = Vec::new();
        let mut kept = Vec::with_capacity(self.sequences.len());
        for mut s in std::mem::take(&mut self.sequences) {
            let depth = n - s.start;
            let (lo, hi) = if depth == 0 {
                (
                    vocab.first_byte[b as usize],
                    vocab.first_byte[b as usize + 1],
                )
            } else {
                vocab.group((s.lo, s.hi), depth, b)
            };
            // Shortest first: the tokens that are exactly `x[start..=n]` lead the range.
            let exact_end = lo
                + vocab.sorted[lo..hi]
                    .partition_point(|&t| vocab.pieces[t as usize].len() == depth + 1);
            for k in lo..exact_end {
                let mass = s.mass * s.prob(k);
                if mass > 0.0 {
                    let mut tokens = s.tokens.clone();
                    tokens.push(vocab.sorted[k]);
                    children.push((tokens, mass / p));
                }
            }
            if exact_end < hi {
                // Keep only the prefix sums of the narrowed range.
                s.cum = s.cum[exact_end - s.cum_lo..=hi - s.cum_lo].to_vec();
                s.cum_lo = exact_end;
                s.lo = exact_end;
                s.hi = hi;
                s.mass /= p;
                kept.push(s);
            }
        }
        self.prefix.push(b);
        self.dropped /= p;
        self.log_kept += p.ln();

        // Prune the new boundaries before paying for their model calls.
        children.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The most likely one is always kept (see [`Prune`]).
        let mut n_keep = children.len().min(1);
        for (k, c) in children.iter().enumerate().skip(1) {
            if k < self.prune.max_new_boundaries && c.1 >= self.prune.min_relative {
                n_keep = k + 1;
            } else {
                break;
            }
        }
        for c in &children[n_keep..] {
            self.dropped += c.1;
            self.stats.pruned += 1;
        }
        children.truncate(n_keep);
        // Lexicographic order lets a caching model reuse the previous context.
        children.sort_by(|a, b| a.0.cmp(&b.0));
        self.sequences = kept;
        self.add_boundaries(children, n + 1)?;
        self.update_distribution()?;
        let live: Vec<&[u32]> = self.sequences.iter().map(|s| s.tokens.as_slice()).collect();
        self.lm.retain(&live);
        Ok(p.ln())
    }

    /// Pushes every byte; returns the sum of their log-probabilities (stops at the first
    /// impossible byte with its error).
    pub fn push_all(&mut self, bytes: &[u8]) -> Result<f64> {
        let mut sum = 0.0;
        for &b in bytes {
            sum += self.push(b)?;
        }
        Ok(sum)
    }

    /// New boundary sequences at byte `start`: asks the model for their next-token
    /// distributions (one batch) and adds them.
    fn add_boundaries(&mut self, new: Vec<(Vec<u32>, f64)>, start: usize) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let vocab = self.vocab;
        let contexts: Vec<&[u32]> = new.iter().map(|(t, _)| t.as_slice()).collect();
        self.logits.clear();
        self.lm
            .next_logits_batch(&contexts, &mut self.logits)
            .map_err(ByteLevelError::Model)?;
        self.stats.model_calls += new.len() as u64;
        if self.logits.len() != new.len() * vocab.len() {
            return Err(ByteLevelError::LogitsLength {
                got: self.logits.len() / new.len(),
                expected: vocab.len(),
            });
        }
        for (row, (tokens, mass)) in self.logits.chunks_exact(vocab.len()).zip(new) {
            let s = boundary(vocab, row, tokens, mass, start)?;
            self.sequences.push(s);
        }
        Ok(())
    }

    /// Sums every sequence's next-byte masses and renormalises everything so the kept
    /// prefix mass is 1.
    fn update_distribution(&mut self) -> Result<()> {
        let vocab = self.vocab;
        let n = self.prefix.len();
        let mut next = [0.0f64; 256];
        let mut end = 0.0f64;
        for s in &self.sequences {
            let depth = n - s.start;
            if depth == 0 {
                for (b, m) in next.iter_mut().enumerate() {
                    *m += s.mass * s.range_mass(vocab.first_byte[b], vocab.first_byte[b + 1]);
                }
                end += s.mass * s.end_prob;
            } else {
                // Every token in the range is longer than `depth`: group by the byte there.
                let mut a = s.lo;
                while a < s.hi {
                    let b = vocab.sorted_piece(a)[depth];
                    let e = a + vocab.sorted[a..s.hi]
                        .partition_point(|&t| vocab.pieces[t as usize][depth] <= b);
                    next[b as usize] += s.mass * s.range_mass(a, e);
                    a = e;
                }
            }
        }
        let total: f64 = next.iter().sum::<f64>() + end;
        if !total.is_finite() || total <= 0.0 {
            return Err(ByteLevelError::NoMass);
        }
        for m in &mut next {
            *m /= total;
        }
        end /= total;
        for s in &mut self.sequences {
            s.mass /= total;
        }
        self.dropped /= total;
        // Exactly 1 without pruning (up to rounding): the kept cover encodings of the
        // prefix are all of them.
        self.log_kept += total.ln();
        self.next = next;
        self.next_end = end;
        Ok(())
    }
}

/// A boundary sequence from the model's logits after it: the next-token distribution
/// renormalised over text and end tokens, as prefix sums in sorted order.
fn boundary(
    vocab: &Vocabulary,
    logits: &[f32],
    tokens: Vec<u32>,
    mass: f64,
    start: usize,
) -> Result<Sequence> {
    let allowed = vocab.sorted.iter().chain(&vocab.end_tokens);
    let mut max = f32::NEG_INFINITY;
    for &t in allowed.clone() {
        let l = logits[t as usize];
        if l.is_nan() {
            return Err(ByteLevelError::NanLogit(t));
        }
        max = max.max(l);
    }
    if max == f32::NEG_INFINITY {
        return Err(ByteLevelError::NoMass);
    }
    // In f64 from the start: an f32 subtraction would round each weight by ~1e-7.
    let weight = |t: u32| (logits[t as usize] as f64 - max as f64).exp();
    let mut cum = Vec::with_capacity(vocab.sorted.len() + 1);
    let mut acc = 0.0f64;
    cum.push(0.0);
    for &t in &vocab.sorted {
        acc += weight(t);
        cum.push(acc);
    }
    let end: f64 = vocab.end_tokens.iter().map(|&t| weight(t)).sum();
    let total = acc + end;
    for c in &mut cum {
        *c /= total;
    }
    Ok(Sequence {
        tokens,
        mass,
        start,
        lo: 0,
        hi: vocab.sorted.len(),
        cum,
        cum_lo: 0,
        end_prob: end / total,
    })
}
