//! Scoring a text token by token: every token's log-probability, the entropy and
//! varentropy of the distribution it was drawn from, its rank, the most likely
//! alternatives; and from the same single pass the text's perplexity and the
//! Fast-DetectGPT sampling-discrepancy criterion.
//!
//! Unlike [`perplexity`](crate::perplexity), which reproduces llama.cpp's figure and so
//! scores only half of each window, this scores *every* token after the first. A text
//! longer than the context is covered by overlapping windows: each new window ends
//! `stride = ctx / 2` tokens further on and scores only the tokens not scored before, so
//! every prediction sees at least `ctx - stride` tokens of context.

use model::LoadedModel;
use sample::{token_report, TokenReport};

use crate::lastde::{lastde, lastde_pp, sample_logprobs, LastdeConfig};
use crate::perplexity::{prepare_text, Scorer};
use crate::{EvalError, Result};

/// One scored token.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredToken {
    /// Index of the token in the tokenised text (BOS, when added, is index 0).
    pub index: usize,
    /// The model's view of the token at this step: id, log-probability, entropy,
    /// varentropy, rank and alternatives, all under the full softmax at temperature 1.
    pub report: TokenReport,
}

/// The Fast-DetectGPT analytic criterion (Bao et al., 2024) with one model for both
/// sampling and scoring: for every scored token `t` with distribution `p_t`,
///
/// - `log_likelihood = Σ_t log p_t(x_t)`
/// - `expected = Σ_t E_{x~p_t}[log p_t(x)] = -Σ_t H(p_t)`
/// - `variance = Σ_t Var_{x~p_t}[log p_t(x)]` (the varentropy)
/// - `criterion = (log_likelihood - expected) / sqrt(variance)`.
///
/// Machine-generated text tends to be more likely than a sample from the model itself
/// would be (large criterion); human text less so.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingDiscrepancy {
    pub log_likelihood: f64,
    pub expected: f64,
    pub variance: f64,
}

impl SamplingDiscrepancy {
    pub fn add(&mut self, logprob: f64, entropy: f64, varentropy: f64) {
        self.log_likelihood += logprob;
        self.expected -= entropy;
        self.variance += varentropy;
    }

    /// NaN when nothing was added or every distribution was one-hot.
    pub fn criterion(&self) -> f64 {
        if self.variance > 0.0 {
            (self.log_likelihood - self.expected) / self.variance.sqrt()
        } else {
            f64::NAN
        }
    }
}

/// Everything computed from one scoring pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreReport {
    /// Tokens of the text (with BOS when the model adds it).
    pub n_text_tokens: usize,
    /// Tokens scored (`n_text_tokens - 1`).
    pub n_scored: usize,
    pub ctx: usize,
    /// Forward passes (windows) run.
    pub n_windows: usize,
    /// Mean negative log-likelihood, nats.
    pub mean_nll: f64,
    /// exp(mean NLL).
    pub ppl: f64,
    /// Mean entropy of the predicted distributions, nats.
    pub mean_entropy: f64,
    /// Total NLL in bits over the scored tokens' bytes.
    pub bits_per_byte: f64,
    pub discrepancy: SamplingDiscrepancy,
    /// Lastde: mean log-probability over the std of the multiscale diversity entropy of
    /// the log-probability sequence (`crate::lastde`, default settings).
    pub lastde: f64,
    /// Lastde++: Lastde standardised against sequences sampled from the model's own
    /// distributions at each position.
    pub lastde_pp: f64,
    pub seconds: f64,
}

/// Scores `text` under `model`; see the module documentation. `top_k` alternatives are
/// kept per token; `on_token` sees every scored token in text order, and
/// `progress(done, total)` counts scored tokens.
pub fn score_text(
    model: &LoadedModel,
    text: &str,
    ctx: usize,
    top_k: usize,
    on_token: &mut dyn FnMut(&ScoredToken),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ScoreReport> {
    let (tokens, bos, mut scorer) = prepare_text(model, text, ctx)?;
    let tok = &model.tokenizer;
    score_tokens(
        &mut scorer,
        &tokens,
        ctx,
        bos,
        top_k,
        &|t| tok.token_bytes(t).len(),
        on_token,
        progress,
    )
}

/// The window loop of [`score_text`] over tokenised text. `bos`, when given, replaces
/// the first token of every window after the first (the first already starts with it),
/// so each window starts the way a prompt does.
#[allow(clippy::too_many_arguments)]
pub fn score_tokens(
    scorer: &mut dyn Scorer,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    top_k: usize,
    token_bytes: &dyn Fn(u32) -> usize,
    on_token: &mut dyn FnMut(&ScoredToken),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ScoreReport> {
    if ctx < 4 {
        return Err(EvalError::Input(format!(
            "the context must be at least 4 tokens (got {ctx})"
        )));
    }
    if tokens.len() < 2 {
        return Err(EvalError::Input(format!(
            "the text tokenizes to {} token(s); scoring needs at least 2",
            tokens.len()
        )));
    }
    let vocab = scorer.vocab_size();
    let n = tokens.len();
    let n_scored = n - 1;
    let stride = ctx / 2;
    let start = std::time::Instant::now();

    let mut nll = 0.0f64;
    let mut entropy = 0.0f64;
    let mut bytes = 0usize;
    let mut discrepancy = SamplingDiscrepancy::default();
    // Lastde: the observed log-probabilities and, per sample, those of drawn tokens.
    let lastde_cfg = LastdeConfig::default();
    let mut observed: Vec<f64> = Vec::with_capacity(n_scored);
    let mut sampled: Vec<Vec<f64>> = vec![Vec::with_capacity(n_scored); lastde_cfg.samples];
    let (mut log_softmax, mut draws, mut uniforms) = (Vec::new(), Vec::new(), Vec::new());
    let mut rng = SplitMix64(SplitMix64::SEED);
    let mut n_windows = 0;
    let mut window: Vec<u32> = Vec::with_capacity(ctx);
    let mut positions: Vec<usize> = Vec::with_capacity(ctx);
    let mut rows: Vec<usize> = Vec::with_capacity(ctx);
    // Tokens [0, scored_to) have been scored (token 0 never is: nothing predicts it).
    let mut scored_to = 1;
    progress(0, n_scored);
    while scored_to < n {
        // The window ends at `end` and scores tokens [scored_to, end).
        let end = if n_windows == 0 {
            n.min(ctx)
        } else {
            n.min(scored_to + stride)
        };
        let begin = end.saturating_sub(ctx);
        window.clear();
        window.extend_from_slice(&tokens[begin..end]);
        if let (Some(b), true) = (bos, begin > 0) {
            window[0] = b;
        }
        positions.clear();
        positions.extend(0..window.len());
        // Row r's logits predict window token r + 1, i.e. text token begin + r + 1.
        rows.clear();
        rows.extend((scored_to - 1 - begin)..(end - 1 - begin));
        scorer.reset();
        let logits = scorer.forward(&window, &positions, &rows)?;
        if logits.len() < rows.len() * vocab {
            return Err(EvalError::Input(format!(
                "the model returned {} logits for {} rows of {vocab}",
                logits.len(),
                rows.len()
            )));
        }
        for (k, &r) in rows.iter().enumerate() {
            let index = begin + r + 1;
            let target = tokens[index];
            let row = &logits[k * vocab..(k + 1) * vocab];
            let report = token_report(row, target, top_k);
            observed.push(f64::from(report.logprob));
            log_softmax_into(row, &mut log_softmax);
            uniforms.clear();
            uniforms.extend((0..lastde_cfg.samples).map(|_| rng.next_f64()));
            sample_logprobs(&log_softmax, &uniforms, &mut draws);
            for (seq, &d) in sampled.iter_mut().zip(&draws) {
                seq.push(d);
            }
            nll -= f64::from(report.logprob);
            entropy += f64::from(report.entropy);
            bytes += token_bytes(target);
            discrepancy.add(
                f64::from(report.logprob),
                f64::from(report.entropy),
                f64::from(report.varentropy),
            );
            on_token(&ScoredToken { index, report });
        }
        n_windows += 1;
        scored_to = end;
        progress(scored_to - 1, n_scored);
    }

    let mean_nll = nll / n_scored as f64;
    Ok(ScoreReport {
        n_text_tokens: n,
        n_scored,
        ctx,
        n_windows,
        mean_nll,
        ppl: mean_nll.exp(),
        mean_entropy: entropy / n_scored as f64,
        bits_per_byte: if bytes > 0 {
            nll / std::f64::consts::LN_2 / bytes as f64
        } else {
            f64::NAN
        },
        discrepancy,
        lastde: lastde(&observed, &lastde_cfg),
        lastde_pp: lastde_pp(&observed, &sampled, &lastde_cfg),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `out = log_softmax(logits)` in f32.
pub(crate) fn log_softmax_into(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    out.clear();
    out.extend(logits.iter().map(|&l| l - lse));
}

/// A small deterministic generator for Lastde++'s draws (the same text always gets
/// the same samples).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The seed of Lastde++'s draws in [`score_tokens`] (`detect` replays them).
    pub(crate) const SEED: u64 = 0x1a57_de00;

    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Area under the ROC curve of a score that should be larger for `positives` than for
/// `negatives`: the probability that a random positive outscores a random negative,
/// ties counting one half (the Mann-Whitney U statistic over `|P| * |N|`). NaN values
/// are errors, an empty class gives NaN.
pub fn auroc(positives: &[f64], negatives: &[f64]) -> Result<f64> {
    if positives.iter().chain(negatives).any(|v| v.is_nan()) {
        return Err(EvalError::Input("AUROC of NaN scores".into()));
    }
    if positives.is_empty() || negatives.is_empty() {
        return Ok(f64::NAN);
    }
    let mut u = 0.0;
    for &p in positives {
        for &q in negatives {
            u += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    Ok(u / (positives.len() * negatives.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scorer whose logits depend only on the previous token (favouring prev + 1),
    /// recording what it was asked.
    struct Bigram {
        vocab: usize,
        calls: Vec<(Vec<u32>, Vec<usize>)>,
        out: Vec<f32>,
    }

    impl Scorer for Bigram {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn reset(&mut self) {}
        fn forward(
            &mut self,
            tokens: &[u32],
            _positions: &[usize],
            rows: &[usize],
        ) -> Result<&[f32]> {
            self.calls.push((tokens.to_vec(), rows.to_vec()));
            self.out.clear();
            for &r in rows {
                let prev = tokens[r];
                for t in 0..self.vocab as u32 {
                    self.out.push(if t == (prev + 1) % self.vocab as u32 {
                        2.0
                    } else {
                        0.0
                    });
                }
            }
            Ok(&self.out)
        }
    }

    fn run(tokens: &[u32], ctx: usize, bos: Option<u32>) -> (ScoreReport, Vec<usize>, Bigram) {
        let mut s = Bigram {
            vocab: 7,
            calls: Vec::new(),
            out: Vec::new(),
        };
        let mut seen = Vec::new();
        let r = score_tokens(
            &mut s,
            tokens,
            ctx,
            bos,
            2,
            &|_| 1,
            &mut |t| seen.push(t.index),
            &mut |_, _| {},
        )
        .unwrap();
        (r, seen, s)
    }

    #[test]
    fn every_token_after_the_first_is_scored_once_in_order() {
        let tokens: Vec<u32> = (0..23).map(|i| (i * 3 % 7) as u32).collect();
        for ctx in [4, 5, 8, 16, 23, 64] {
            let (r, seen, _) = run(&tokens, ctx, None);
            assert_eq!(seen, (1..23).collect::<Vec<_>>(), "ctx {ctx}");
            assert_eq!(r.n_scored, 22);
        }
    }

    #[test]
    fn windows_keep_at_least_half_a_context_of_history() {
        let tokens: Vec<u32> = (0..40).map(|i| (i % 7) as u32).collect();
        let (r, _, s) = run(&tokens, 8, Some(6));
        // First window 8 tokens scores 7; then 4 new tokens per window: 32 / 4 = 8 more.
        assert_eq!(r.n_windows, 9);
        for (w, (win, rows)) in s.calls.iter().enumerate() {
            assert!(win.len() <= 8);
            if w > 0 {
                assert_eq!(win[0], 6, "later windows start with BOS");
                assert_eq!(rows[0], 3, "4 tokens of context before the first scored");
            }
        }
    }

    #[test]
    fn perfectly_predicted_text_has_the_bigram_statistics() {
        // Every token is prev + 1: logprob = 2 - ln(e^2 + 6) under the bigram.
        let tokens: Vec<u32> = (0..30).map(|i| (i % 7) as u32).collect();
        let (r, _, _) = run(&tokens, 8, None);
        let z = (2f64).exp() + 6.0;
        let lp = 2.0 - z.ln();
        assert!((r.mean_nll + lp).abs() < 1e-5, "{} vs {}", r.mean_nll, -lp);
        let p_top = (2f64).exp() / z;
        let p_other = 1.0 / z;
        let h = -(p_top * p_top.ln() + 6.0 * p_other * p_other.ln());
        assert!((r.mean_entropy - h).abs() < 1e-5);
        // The text is more likely than the model's own samples: criterion > 0.
        assert!(r.discrepancy.criterion() > 0.0);
        let expected_sum = -h * r.n_scored as f64;
        assert!((r.discrepancy.expected - expected_sum).abs() < 1e-3);
    }

    #[test]
    fn too_short_text_and_tiny_context_are_errors() {
        let mut s = Bigram {
            vocab: 7,
            calls: Vec::new(),
            out: Vec::new(),
        };
        let noop = &mut |_: &ScoredToken| {};
        let e = score_tokens(&mut s, &[1], 8, None, 0, &|_| 1, noop, &mut |_, _| {});
        assert!(e.unwrap_err().to_string().contains("at least 2"));
        let e = score_tokens(&mut s, &[1, 2, 3], 2, None, 0, &|_| 1, noop, &mut |_, _| {});
        assert!(e.unwrap_err().to_string().contains("at least 4"));
    }

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]).unwrap(), 0.5);
        // Of the 4 pairs, (3, 2) is won and (2, 2) tied: (1 + 0.5) / 4.
        assert_eq!(auroc(&[2.0, 3.0], &[2.0, 4.0]).unwrap(), 0.375);
        assert!(auroc(&[f64::NAN], &[1.0]).is_err());
        assert!(auroc(&[], &[1.0]).unwrap().is_nan());
    }
}
