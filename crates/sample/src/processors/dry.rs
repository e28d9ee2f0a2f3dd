//! DRY, "don't repeat yourself" (llama.cpp's `dry`, after koboldcpp PR 982):
//! penalises the tokens that would extend a verbatim repeat of the recent
//! context, exponentially in the repeat's length.
//!
//! For each position `j` of the window (oldest first, the last position
//! excluded), let `L_j` be the length of the longest common suffix of
//! `window[..=j]` and the whole window: if the next token were
//! `window[j + 1]`, the text would repeat `L_j + 1` tokens. A token's repeat
//! length is the largest `L_j` over the positions it follows; if that is at
//! least `allowed_length`, its logit loses
//! `multiplier * base^(L - allowed_length)` (the exponent capped so the
//! penalty stays a finite `f32`).
//!
//! Sequence breakers (by default newline, `:`, `"` and `*`) stop repeats:
//! lengths are capped at the distance to the most recent breaker occurrence,
//! and a token that is itself a one-token breaker is never penalised.
//! Lengths come from a Z-algorithm over the reversed window, O(window).

use super::{LogitsProcessor, SampleContext};
use crate::candidates::Candidates;

/// llama.cpp's default DRY sequence breakers (as text; convert them with
/// [`dry_sequence_breakers`]).
pub const DEFAULT_DRY_SEQUENCE_BREAKERS: &[&str] = &["\n", ":", "\"", "*"];

/// Breaker strings longer than this (in bytes) are cut, as llama.cpp does.
const MAX_BREAKER_BYTES: usize = 40;
/// Tails longer than this (in tokens) are cut, as llama.cpp does.
const MAX_TAIL_TOKENS: usize = 20;

/// Turns breaker strings into the token sequences DRY matches, by
/// llama.cpp's rules (`get_overlapping_token_sequences`): for each breaker,
/// every token whose text contains it is a one-token breaker; a token whose
/// text ends with a prefix of the breaker becomes the head of a sequence
/// whose tail is the tokenization of the rest of the breaker (at most 20
/// tokens). Breakers are cut to 40 bytes; empty ones are skipped.
///
/// `piece(id)` gives a token's bytes and `tokenize(bytes)` the tokens of a
/// byte string (no special tokens); this crate knows no tokenizer. Costs one
/// `piece` call per vocabulary entry per breaker: build once per model.
pub fn dry_sequence_breakers(
    breakers: &[&str],
    n_vocab: u32,
    mut piece: impl FnMut(u32) -> Vec<u8>,
    mut tokenize: impl FnMut(&[u8]) -> Vec<u32>,
) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let pieces: Vec<Vec<u8>> = (0..n_vocab).map(&mut piece).collect();
    for b in breakers {
        let s = &b.as_bytes()[..b.len().min(MAX_BREAKER_BYTES)];
        if s.is_empty() {
            continue;
        }
        for (id, word) in pieces.iter().enumerate() {
            let id = id as u32;
            if word.windows(s.len()).any(|w| w == s) {
                if !out.iter().any(|seq| seq.len() == 1 && seq[0] == id) {
                    out.push(vec![id]);
                }
                continue;
            }
            // Every occurrence of the breaker's first byte whose rest of the
            // word matches the start of the breaker: the word ends inside it.
            for pos in (0..word.len()).filter(|&p| word[p] == s[0]) {
                let overlap = word.len() - pos;
                if overlap < s.len() && word[pos..] == s[..overlap] {
                    let mut tail = tokenize(&s[overlap..]);
                    tail.truncate(MAX_TAIL_TOKENS);
                    let mut seq = Vec::with_capacity(tail.len() + 1);
                    seq.push(id);
                    seq.extend(tail);
                    if !out.contains(&seq) {
                        out.push(seq);
                    }
                }
            }
        }
    }
    out
}

/// The DRY stage; see the module docs.
#[derive(Clone, Debug)]
pub struct Dry {
    multiplier: f32,
    base: f32,
    allowed_length: usize,
    last_n: usize,
    /// `(head, tail)` pairs sorted by head: a breaker is its head token
    /// followed by the tail tokens.
    breakers: Vec<(u32, Vec<u32>)>,
    /// Scratch: `L_j` per window position.
    repeat: Vec<usize>,
    /// Scratch: `(token, longest repeat it would extend)`.
    extends: Vec<(u32, usize)>,
    ids: Vec<u32>,
    penalties: Vec<f32>,
}

impl Dry {
    /// Registry name.
    pub const NAME: &'static str = "dry";

    /// `multiplier` 0, `base` below 1 or `last_n` 0 turn it off. Each
    /// breaker is a token sequence (head first); empty ones are ignored.
    pub fn new(
        multiplier: f32,
        base: f32,
        allowed_length: usize,
        last_n: usize,
        breakers: &[Vec<u32>],
    ) -> Self {
        let mut b: Vec<(u32, Vec<u32>)> = breakers
            .iter()
            .filter_map(|seq| seq.split_first().map(|(&h, t)| (h, t.to_vec())))
            .collect();
        b.sort();
        b.dedup();
        Dry {
            multiplier,
            base,
            allowed_length,
            last_n,
            breakers: b,
            repeat: Vec::new(),
            extends: Vec::new(),
            ids: Vec::new(),
            penalties: Vec::new(),
        }
    }

    /// The tails of the breakers whose head is `token`.
    fn tails(&self, token: u32) -> &[(u32, Vec<u32>)] {
        let lo = self.breakers.partition_point(|(h, _)| *h < token);
        let hi = self.breakers.partition_point(|(h, _)| *h <= token);
        &self.breakers[lo..hi]
    }

    /// True if `token` alone is a breaker (never penalised).
    fn is_single_breaker(&self, token: u32) -> bool {
        self.tails(token).iter().any(|(_, t)| t.is_empty())
    }

    /// How far back repeats may reach: the distance (in tokens from the end)
    /// to the most recent complete breaker, or the window length.
    fn repeat_limit(&self, w: &[u32]) -> usize {
        let n = w.len();
        // `rat(i)`: the i-th token from the end (0 = the last one).
        let rat = |i: usize| w[n - 1 - i];
        for i in 0..n {
            let mut longest: Option<usize> = None;
            for (_, tail) in self.tails(rat(i)) {
                let len = tail.len();
                // The tail follows the head, so it sits nearer the end.
                let fits = len <= i && longest.is_none_or(|l| len > l);
                if fits && tail.iter().enumerate().all(|(o, &t)| t == rat(i - o - 1)) {
                    longest = Some(len);
                }
            }
            if let Some(len) = longest {
                return i - len;
            }
        }
        n
    }

    /// Fills `self.repeat[j]` with `min(L_j, limit)` for every window
    /// position: the Z-algorithm on the reversed window, where the Z-value
    /// at shift `k` is `L_{n-1-k}`.
    fn repeat_lengths(&mut self, w: &[u32], limit: usize) {
        let n = w.len();
        let rat = |i: usize| w[n - 1 - i];
        self.repeat.clear();
        self.repeat.resize(n, 0);
        let last = n - 1;
        // The Z-box [lt, rt]: the reversed window matches its own prefix there.
        let (mut lt, mut rt) = (0usize, 0usize);
        for k in 1..n {
            if k > rt {
                let mut m = 0;
                while m + k < n && rat(m) == rat(m + k) {
                    m += 1;
                }
                self.repeat[last - k] = m.min(limit);
                if m > 0 {
                    lt = k;
                    rt = k + m - 1;
                }
            } else {
                let p = k - lt;
                let right = rt - k + 1;
                // Stored values are capped at `limit`; a capped value below
                // `right` is still exact after capping again.
                if self.repeat[last - p] < right {
                    self.repeat[last - k] = self.repeat[last - p].min(limit);
                } else {
                    let mut i = rt + 1;
                    while i < n && rat(i) == rat(i - k) {
                        i += 1;
                    }
                    self.repeat[last - k] = (i - k).min(limit);
                    lt = k;
                    rt = i - 1;
                }
            }
        }
    }
}

impl LogitsProcessor for Dry {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, ctx: &SampleContext<'_>) {
        if self.multiplier == 0.0 || self.base.is_nan() || self.base < 1.0 || self.last_n == 0 {
            return;
        }
        let h = ctx.history;
        let w = &h[h.len().saturating_sub(self.last_n)..];
        let n = w.len();
        if n <= self.allowed_length {
            return;
        }
        let limit = self.repeat_limit(w);
        if limit < self.allowed_length {
            return;
        }
        self.repeat_lengths(w, limit);

        // The token after each repeated suffix would extend it.
        self.extends.clear();
        for j in 0..n - 1 {
            let len = self.repeat[j];
            if len >= self.allowed_length {
                self.extends.push((w[j + 1], len));
            }
        }
        if self.extends.is_empty() {
            return;
        }
        // Longest repeat per token: sort by id, then by length descending.
        self.extends
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.extends.dedup_by_key(|e| e.0);

        // Cap the exponent so base^exp stays below f32::MAX (llama.cpp).
        let base = f64::from(self.base);
        let max_exp = if self.base > 1.000_001 {
            (88.722_839_1 / base.ln()) as usize
        } else {
            0
        };
        self.ids.clear();
        self.penalties.clear();
        for i in 0..self.extends.len() {
            let (token, len) = self.extends[i];
            if self.is_single_breaker(token) {
                continue;
            }
            let mut exp = len - self.allowed_length;
            if max_exp > 0 && exp > max_exp {
                exp = max_exp;
            }
            let exp = i32::try_from(exp).unwrap_or(i32::MAX);
            let penalty = f64::from(self.multiplier) * base.powi(exp);
            self.ids.push(token);
            self.penalties.push(penalty as f32);
        }
        let penalties = &self.penalties;
        cands.update_ids_indexed(&self.ids, |i, l| *l -= penalties[i]);
    }
}
