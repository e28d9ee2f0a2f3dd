//! Perplexity by llama.cpp's method (`tools/perplexity/perplexity.cpp`, the default
//! mode without `--ppl-stride`), so our figure and `llama-perplexity`'s can be compared
//! on the same GGUF file and text:
//!
//! 1. The whole text is tokenised once, with the model's own special-token rule (BOS
//!    when the model adds one) and without parsing special tokens written in the text
//!    (`common_tokenize(ctx, text, true)`).
//! 2. The tokens are cut into `n_windows = n_tokens / ctx` non-overlapping windows of
//!    `ctx` tokens; the remainder is dropped. llama.cpp refuses texts shorter than
//!    `2 * ctx` tokens, and so do we.
//! 3. Each window is evaluated from an empty cache. When the model adds BOS, the
//!    window's first token is *replaced* by BOS (not prepended), so every window is
//!    exactly `ctx` tokens and starts the way a prompt starts.
//! 4. Only the second half is scored, so every prediction has at least `ctx / 2` tokens
//!    of context: with `first = ctx / 2`, the logits of positions `first ..= ctx - 2`
//!    predict the tokens at `first + 1 ..= ctx - 1`, i.e. `ctx - first - 1` tokens per
//!    window (255 at ctx 512). The window's last logits predict nothing and are skipped.
//! 5. PPL = exp(mean NLL) over all scored tokens; its standard error is llama.cpp's
//!    `ppl * sqrt(var(NLL) / (count - 1))` (first-order error propagation through exp).

use std::time::Instant;

use engine::{KvController, KvOptions};
use model::{Batch, LoadedModel, LogitsFor, Model, SequenceState};

use crate::{EvalError, Result};

/// The outcome of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityReport {
    /// exp(mean NLL) in nats.
    pub ppl: f64,
    /// llama.cpp's standard error of `ppl` (the `+/-` of its "Final estimate" line).
    pub ppl_stderr: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// Tokens in the whole text (with BOS if the model adds it).
    pub n_text_tokens: usize,
    /// Window length.
    pub ctx: usize,
    /// Windows evaluated (`n_text_tokens / ctx`).
    pub n_windows: usize,
    /// Tokens whose NLL was summed.
    pub n_scored: usize,
    /// UTF-8 bytes of the scored tokens; see [`bits_per_byte`](Self::bits_per_byte).
    pub scored_bytes: usize,
    /// Total NLL of the scored tokens in bits, divided by `scored_bytes`: the
    /// tokenizer-independent cost of the text. `scored_bytes` is the sum over the scored
    /// tokens of the length of each token's raw bytes (`Tokenizer::token_bytes`: its
    /// byte-level BPE bytes, or its SPM piece with `▁` as a space, or the byte of a
    /// `<0xNN>` token). Summed over a whole text this is the text's byte length (plus
    /// one space per SPM space prefix); here it covers exactly the tokens whose
    /// probabilities were counted, so numerator and denominator describe the same
    /// bytes. NaN if the scored tokens have no bytes.
    pub bits_per_byte: f64,
    /// Wall time of the evaluation (tokenisation excluded).
    pub seconds: f64,
    /// Tokens run through the model (`n_windows * ctx`) per second of `seconds`.
    pub tokens_per_second: f64,
}

/// The running sums of the evaluation: everything the report is computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NllSums {
    /// Sum of NLL (nats).
    pub nll: f64,
    /// Sum of NLL squared (for the standard error).
    pub nll_sq: f64,
    pub count: usize,
    pub bytes: usize,
}

impl NllSums {
    /// Adds one scored token with negative log-likelihood `nll` (nats) and `bytes` bytes.
    pub fn add(&mut self, nll: f64, bytes: usize) {
        self.nll += nll;
        self.nll_sq += nll * nll;
        self.count += 1;
        self.bytes += bytes;
    }

    pub fn mean_nll(&self) -> f64 {
        self.nll / self.count as f64
    }

    pub fn ppl(&self) -> f64 {
        self.mean_nll().exp()
    }

    /// llama.cpp's standard error: `ppl * sqrt((E[nll²] - E[nll]²) / (count - 1))`;
    /// NaN with fewer than two tokens or a non-positive variance (llama.cpp prints an
    /// error instead of a figure then).
    pub fn ppl_stderr(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let mean = self.mean_nll();
        let var = self.nll_sq / self.count as f64 - mean * mean;
        if var > 0.0 {
            (var / (self.count - 1) as f64).sqrt() * self.ppl()
        } else {
            f64::NAN
        }
    }

    /// Total NLL in bits over total bytes.
    pub fn bits_per_byte(&self) -> f64 {
        if self.bytes == 0 {
            return f64::NAN;
        }
        self.nll / std::f64::consts::LN_2 / self.bytes as f64
    }
}

/// Negative log-likelihood (nats) of `target` under the softmax of `logits`, computed as
/// llama.cpp does (max subtracted in f32, `expf` terms summed in f64), so our sums round
/// like theirs.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[target as usize] - max) - sum_exp.ln())
}

/// What the window loop needs from a model; the real one is [`ModelScorer`], tests use
/// synthetic ones.
pub trait Scorer {
    fn vocab_size(&self) -> usize;
    /// Forgets every token seen so far (a new window starts from an empty cache).
    fn reset(&mut self);
    /// Appends `tokens` at `positions` and returns the logits `[rows.len(), vocab]` of
    /// the given batch rows, in that order.
    fn forward(&mut self, tokens: &[u32], positions: &[usize], rows: &[usize]) -> Result<&[f32]>;
}

/// A [`Model`] with one sequence's state of `ctx` slots, optionally under a KV policy
/// and storage type.
pub struct ModelScorer<'m> {
    model: &'m Model,
    state: SequenceState,
    kv: Option<KvController>,
    logits: Vec<f32>,
    memory: KvMemory,
}

/// The most KV-cache memory a run held after any forward call (measured from the
/// storage; see `model::KvCache::memory_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvMemory {
    /// Bytes held, full-precision entries in their f32 containers.
    pub peak_bytes: usize,
    /// The same with full-precision entries counted as true f16.
    pub peak_bytes_f16: usize,
}

impl<'m> ModelScorer<'m> {
    pub fn new(model: &'m Model, ctx: usize) -> Self {
        ModelScorer {
            model,
            state: model.new_state(ctx),
            kv: None,
            logits: Vec::new(),
            memory: KvMemory::default(),
        }
    }

    /// Every forward call under `kv` (eviction after each call, quantised storage);
    /// the exact options run the plain path.
    pub fn with_kv(model: &'m Model, ctx: usize, kv: &KvOptions) -> Result<Self> {
        let mut s = ModelScorer::new(model, ctx);
        if !kv.is_exact() {
            let ctl = kv
                .controller(model, ctx)
                .map_err(|e| EvalError::Input(e.to_string()))?;
            s.kv = Some(ctl);
        }
        Ok(s)
    }

    /// The most KV memory held after a forward call so far.
    pub fn memory(&mut self) -> KvMemory {
        self.note_memory();
        self.memory
    }

    fn note_memory(&mut self) {
        let cache = &self.state.cache;
        let m = &mut self.memory;
        m.peak_bytes = m.peak_bytes.max(cache.memory_bytes());
        m.peak_bytes_f16 = m.peak_bytes_f16.max(cache.memory_bytes_f16());
    }
}

impl Scorer for ModelScorer<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn reset(&mut self) {
        self.note_memory();
        self.state.cache.clear();
        if let Some(kv) = &mut self.kv {
            kv.reset();
        }
    }

    fn forward(&mut self, tokens: &[u32], positions: &[usize], rows: &[usize]) -> Result<&[f32]> {
        let batch = Batch {
            tokens,
            positions,
            mask: None,
            logits: LogitsFor::Rows(rows),
        };
        match &mut self.kv {
            Some(kv) => {
                // A re-positioning cache continues at its own length.
                let moved: Vec<usize>;
                let batch = if kv.repositions() {
                    let p0 = self.state.cache.next_position();
                    moved = (p0..p0 + tokens.len()).collect();
                    Batch {
                        positions: &moved,
                        ..batch
                    }
                } else {
                    batch
                };
                kv.forward(self.model, &mut self.state, &batch, &mut self.logits)
                    .map_err(|e| EvalError::Input(e.to_string()))?;
                self.note_memory();
                Ok(&self.logits)
            }
            // The logits live in the state, so memory is noted at the next call.
            None => {
                self.note_memory();
                Ok(self.model.forward(&mut self.state, &batch, None)?)
            }
        }
    }
}

/// Checks `ctx` against the model's training context and tokenises `text` as data
/// (BOS when the model adds one; special-token markup written in the text is not
/// parsed). Returns the tokens, the BOS id that windows start with (`None` when the
/// model adds none) and a scorer with a cache of `ctx` slots.
pub(crate) fn prepare_text<'m>(
    model: &'m LoadedModel,
    text: &str,
    ctx: usize,
) -> Result<(Vec<u32>, Option<u32>, ModelScorer<'m>)> {
    let n_ctx_train = model.model.config.context_length;
    if ctx > n_ctx_train {
        return Err(EvalError::Input(format!(
            "a context of {ctx} tokens is larger than the model's context ({n_ctx_train} tokens)"
        )));
    }
    let tok = &model.tokenizer;
    let tokens = tok.encode(text, true, false)?;
    let bos = if tok.adds_bos() { tok.bos_id() } else { None };
    Ok((tokens, bos, ModelScorer::new(&model.model, ctx)))
}

/// Perplexity of `text` under `model` with windows of `ctx` tokens, each run in
/// sub-batches of at most `batch` tokens (which bounds the logits held at once to
/// `batch * vocab` floats; the result does not depend on it beyond float rounding).
///
/// `progress(windows_done, n_windows, running_ppl)` is called once before the first
/// window (with `running_ppl` NaN) and after every window.
///
/// Errors: `ctx` beyond the model's training context, `ctx < 4`, `batch == 0`, a text
/// of fewer than `2 * ctx` tokens.
pub fn perplexity(
    model: &LoadedModel,
    text: &str,
    ctx: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    // llama-perplexity: common_tokenize(ctx, text, add_special = true, parse_special = false).
    let (tokens, bos, mut scorer) = prepare_text(model, text, ctx)?;
    let tok = &model.tokenizer;
    perplexity_of_tokens(
        &mut scorer,
        &tokens,
        ctx,
        batch,
        bos,
        &|t| tok.token_bytes(t).len(),
        progress,
    )
}

/// [`perplexity`] with every window's cache under the KV options `kv` (policy, budget
/// and storage type; a percentage budget is of `ctx`): eviction and quantisation run
/// after every sub-batch of `batch` tokens, so `batch` is their granularity (a
/// sub-batch attends its own tokens at full precision). Also returns the most KV
/// memory any window held.
pub fn perplexity_kv(
    model: &LoadedModel,
    text: &str,
    ctx: usize,
    batch: usize,
    kv: &KvOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<(PerplexityReport, KvMemory)> {
    let (tokens, bos, _) = prepare_text(model, text, ctx)?;
    let mut scorer = ModelScorer::with_kv(&model.model, ctx, kv)?;
    let tok = &model.tokenizer;
    let report = perplexity_of_tokens(
        &mut scorer,
        &tokens,
        ctx,
        batch,
        bos,
        &|t| tok.token_bytes(t).len(),
        progress,
    )?;
    Ok((report, scorer.memory()))
}

/// The window loop of [`perplexity`] over already tokenised text. `bos`: the token that
/// replaces each window's first token (`None` when the model adds no BOS);
/// `token_bytes(t)`: the byte length of token `t` for bits per byte.
pub fn perplexity_of_tokens(
    scorer: &mut dyn Scorer,
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    bos: Option<u32>,
    token_bytes: &dyn Fn(u32) -> usize,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    if ctx < 4 {
        return Err(EvalError::Input(format!(
            "the context must be at least 4 tokens (got {ctx})"
        )));
    }
    if batch == 0 {
        return Err(EvalError::Input("the batch size must be at least 1".into()));
    }
    if tokens.len() < 2 * ctx {
        return Err(EvalError::Input(format!(
            "the text tokenizes to {} tokens; a context of {ctx} needs at least {} \
             (two windows, as llama-perplexity requires)",
            tokens.len(),
            2 * ctx
        )));
    }
    let vocab = scorer.vocab_size();
    let n_windows = tokens.len() / ctx;
    let first = ctx / 2;
    let mut sums = NllSums::default();
    let mut window = vec![0u32; ctx];
    let positions: Vec<usize> = (0..ctx).collect();
    let mut rows = Vec::with_capacity(batch.min(ctx));
    let start = Instant::now();
    progress(0, n_windows, f64::NAN);

    for w in 0..n_windows {
        window.copy_from_slice(&tokens[w * ctx..(w + 1) * ctx]);
        if let Some(b) = bos {
            window[0] = b;
        }
        scorer.reset();
        let mut b0 = 0;
        while b0 < ctx {
            let b1 = (b0 + batch).min(ctx);
            // Rows (relative to the sub-batch) whose logits predict a scored token.
            rows.clear();
            rows.extend((b0.max(first)..b1.min(ctx - 1)).map(|p| p - b0));
            let logits = scorer.forward(&window[b0..b1], &positions[b0..b1], &rows)?;
            if logits.len() < rows.len() * vocab {
                return Err(EvalError::Input(format!(
                    "the model returned {} logits for {} rows of {vocab}",
                    logits.len(),
                    rows.len()
                )));
            }
            for (k, &r) in rows.iter().enumerate() {
                let target = window[b0 + r + 1];
                let nll = token_nll(&logits[k * vocab..(k + 1) * vocab], target);
                sums.add(nll, token_bytes(target));
            }
            b0 = b1;
        }
        progress(w + 1, n_windows, sums.ppl());
    }

    let seconds = start.elapsed().as_secs_f64();
    Ok(PerplexityReport {
        ppl: sums.ppl(),
        ppl_stderr: sums.ppl_stderr(),
        mean_nll: sums.mean_nll(),
        n_text_tokens: tokens.len(),
        ctx,
        n_windows,
        n_scored: sums.count,
        scored_bytes: sums.bytes,
        bits_per_byte: sums.bits_per_byte(),
        seconds,
        tokens_per_second: (n_windows * ctx) as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits that depend only on the previous token (a bigram model), recording every
    /// call, so the window logic can be checked exactly.
    struct Bigram {
        vocab: usize,
        seen: Vec<u32>,
        calls: Vec<(Vec<u32>, Vec<usize>, Vec<usize>)>,
        out: Vec<f32>,
    }

    impl Bigram {
        fn new(vocab: usize) -> Self {
            Bigram {
                vocab,
                seen: Vec::new(),
                calls: Vec::new(),
                out: Vec::new(),
            }
        }
        /// logit of `next` after `prev`: favours `prev + 1`.
        fn logits(&self, prev: u32) -> Vec<f32> {
            (0..self.vocab as u32)
                .map(|t| {
                    if t == (prev + 1) % self.vocab as u32 {
                        2.0
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    }

    impl Scorer for Bigram {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn reset(&mut self) {
            self.seen.clear();
        }
        fn forward(
            &mut self,
            tokens: &[u32],
            positions: &[usize],
            rows: &[usize],
        ) -> Result<&[f32]> {
            assert_eq!(
                positions[0],
                self.seen.len(),
                "positions continue the window"
            );
            self.calls
                .push((tokens.to_vec(), positions.to_vec(), rows.to_vec()));
            self.seen.extend_from_slice(tokens);
            self.out.clear();
            for &r in rows {
                let l = self.logits(tokens[r]);
                self.out.extend(l);
            }
            Ok(&self.out)
        }
    }

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        struct Uniform(Vec<f32>);
        impl Scorer for Uniform {
            fn vocab_size(&self) -> usize {
                10
            }
            fn reset(&mut self) {}
            fn forward(&mut self, _: &[u32], _: &[usize], rows: &[usize]) -> Result<&[f32]> {
                self.0 = vec![0.5; rows.len() * 10];
                Ok(&self.0)
            }
        }
        let tokens: Vec<u32> = (0..100).map(|i| i % 10).collect();
        let r = perplexity_of_tokens(
            &mut Uniform(vec![]),
            &tokens,
            16,
            5,
            None,
            &|_| 2,
            &mut |_, _, _| {},
        )
        .unwrap();
        assert!((r.ppl - 10.0).abs() < 1e-9, "{}", r.ppl);
        assert_eq!(r.n_windows, 6);
        assert_eq!(r.n_scored, 6 * (16 - 8 - 1));
        // Every token costs ln 10 nats = log2 10 bits over 2 bytes.
        assert!((r.bits_per_byte - 10f64.log2() / 2.0).abs() < 1e-12);
        assert_eq!(r.scored_bytes, 2 * r.n_scored);
        // Constant NLL: zero variance, no standard error (as in llama.cpp).
        assert!(r.ppl_stderr.is_nan());
    }

    #[test]
    fn windows_replace_the_first_token_with_bos_and_score_the_second_half() {
        let vocab = 7;
        // Mostly +1 steps (likely under the bigram), every third a +2 step: NLLs vary.
        let tokens: Vec<u32> = (0..25u32).map(|i| (i + i / 3) % vocab as u32).collect();
        let ctx = 8;
        let mut s = Bigram::new(vocab);
        let mut ticks = Vec::new();
        let r = perplexity_of_tokens(
            &mut s,
            &tokens,
            ctx,
            3,
            Some(6),
            &|t| t as usize,
            &mut |d, n, _| ticks.push((d, n)),
        )
        .unwrap();
        assert_eq!(ticks, vec![(0, 3), (1, 3), (2, 3), (3, 3)]);
        assert_eq!(r.n_windows, 3);
        // Window 1 (tokens 8..16), sub-batches of 3: [6, t9, t10], [t11..t14), [t14, t15].
        let w1: Vec<_> = s.calls[3..6].to_vec();
        assert_eq!(w1[0].0, vec![6, tokens[9], tokens[10]]);
        assert_eq!(w1[0].2, Vec::<usize>::new());
        // Positions 4, 5 are scored rows 1, 2 of the second sub-batch; position 6 is row
        // 0 of the third; position 7 (the last) is never asked for.
        assert_eq!(w1[1].1, vec![3, 4, 5]);
        assert_eq!(w1[1].2, vec![1, 2]);
        assert_eq!(w1[2].1, vec![6, 7]);
        assert_eq!(w1[2].2, vec![0]);

        // Expected sums from the bigram model directly.
        let mut want = NllSums::default();
        for w in 0..3 {
            let win = &tokens[w * ctx..(w + 1) * ctx];
            for p in ctx / 2..ctx - 1 {
                want.add(
                    token_nll(&s.logits(win[p]), win[p + 1]),
                    win[p + 1] as usize,
                );
            }
        }
        assert_eq!(r.n_scored, want.count);
        assert!((r.ppl - want.ppl()).abs() < 1e-12);
        assert!(r.ppl_stderr.is_finite());
        assert!((r.ppl_stderr - want.ppl_stderr()).abs() < 1e-12);
        assert_eq!(r.scored_bytes, want.bytes);
    }

    #[test]
    fn the_batch_size_does_not_change_the_result() {
        let tokens: Vec<u32> = (0..40u32).map(|i| (i * i + 1) % 11).collect();
        let run = |batch| {
            let mut s = Bigram::new(11);
            perplexity_of_tokens(&mut s, &tokens, 10, batch, None, &|_| 1, &mut |_, _, _| {})
                .unwrap()
        };
        let a = run(1);
        for b in [2, 3, 7, 10, 64] {
            let r = run(b);
            assert_eq!(r.ppl, a.ppl, "batch {b}");
            assert_eq!(r.n_scored, a.n_scored);
        }
    }

    #[test]
    fn short_texts_and_bad_sizes_are_errors() {
        let mut s = Bigram::new(5);
        let tokens = vec![1u32; 15];
        let e = perplexity_of_tokens(&mut s, &tokens, 8, 4, None, &|_| 1, &mut |_, _, _| {})
            .unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert!(
            perplexity_of_tokens(&mut s, &tokens, 2, 4, None, &|_| 1, &mut |_, _, _| {}).is_err()
        );
        assert!(
            perplexity_of_tokens(&mut s, &tokens, 4, 0, None, &|_| 1, &mut |_, _, _| {}).is_err()
        );
    }

    #[test]
    fn nll_and_bits_per_byte_arithmetic() {
        // Two tokens: p = 1/2 and p = 1/4 -> 1 + 2 bits over 3 bytes.
        let mut s = NllSums::default();
        s.add(token_nll(&[0.0, 0.0], 1), 1);
        s.add(token_nll(&[(3f32).ln(), 0.0], 1), 2);
        assert!((s.bits_per_byte() - 1.0).abs() < 1e-7);
        assert!((s.ppl() - 8f64.sqrt()).abs() < 1e-6);
        // Standard error: nll = ln2, 2ln2; var = (ln2)^2/4; sqrt(var/1) * ppl.
        let want = (2f64.ln() / 2.0) * 8f64.sqrt();
        assert!(
            (s.ppl_stderr() - want).abs() < 1e-6,
            "{} vs {want}",
            s.ppl_stderr()
        );
        assert!(NllSums::default().bits_per_byte().is_nan());
    }

    #[test]
    fn token_nll_is_stable_for_large_logits() {
        let l = [1000.0f32, 1000.0, 1000.0, 1000.0];
        assert!((token_nll(&l, 2) - 4f64.ln()).abs() < 1e-9);
    }
}
