//! Machine-generated-text detection with the Fast-DetectGPT criterion
//! ([`SamplingDiscrepancy`](crate::SamplingDiscrepancy)), Lastde and Lastde++
//! ([`crate::lastde`]), evaluated the way the papers do: human passages against
//! passages the model writes from the same first sentence, both scored by the same
//! model, summarised as an AUROC and a ROC curve.
//!
//! Every detector is a function of per-token sequences (log-probability, entropy and
//! varentropy of each position's distribution, and Lastde++'s sampled
//! log-probabilities), and with a causal model position `t`'s values depend only on
//! tokens `..=t`. So one scoring pass of a passage gives its scores at every prefix
//! length: truncate the sequences and recompute ([`TokenSequences::scores`]).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use engine::{GenerationParams, SamplerConfig, Session};
use model::LoadedModel;

use crate::lastde::{lastde, lastde_pp, sample_logprobs, LastdeConfig};
use crate::perplexity::{prepare_text, Scorer};
use crate::score::{
    auroc, log_softmax_into, score_tokens, SamplingDiscrepancy, ScoreReport, SplitMix64,
};
use crate::{EvalError, Result};

/// The detectors, in the order of [`DetectorScores::as_array`].
pub const DETECTORS: [&str; 3] = ["Fast-DetectGPT", "Lastde", "Lastde++"];

/// Each detector's score of one text (larger: more likely machine-written; NaN where
/// undefined).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorScores {
    pub fast_detectgpt: f64,
    pub lastde: f64,
    pub lastde_pp: f64,
}

impl DetectorScores {
    pub fn as_array(&self) -> [f64; 3] {
        [self.fast_detectgpt, self.lastde, self.lastde_pp]
    }
}

/// The per-token statistics of one scored text, one entry per scored token (every
/// token after the first) in text order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenSequences {
    pub logprob: Vec<f64>,
    pub entropy: Vec<f64>,
    pub varentropy: Vec<f64>,
    /// Lastde++'s samples: `sampled[k][t]` is the log-probability of the `k`-th token
    /// drawn from position `t`'s distribution.
    pub sampled: Vec<Vec<f64>>,
}

impl TokenSequences {
    /// Scored tokens.
    pub fn len(&self) -> usize {
        self.logprob.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logprob.is_empty()
    }

    /// The detectors' scores of the first `len` scored tokens; `None` when the text has
    /// fewer. At the full length these are exactly the figures of
    /// [`score_text`](crate::score_text)'s report (same additions in the same order).
    pub fn scores(&self, len: usize) -> Option<DetectorScores> {
        if len == 0 || len > self.len() {
            return None;
        }
        let mut d = SamplingDiscrepancy::default();
        for t in 0..len {
            d.add(self.logprob[t], self.entropy[t], self.varentropy[t]);
        }
        let cfg = LastdeConfig::default();
        let samples: Vec<Vec<f64>> = self.sampled.iter().map(|s| s[..len].to_vec()).collect();
        Some(DetectorScores {
            fast_detectgpt: d.criterion(),
            lastde: lastde(&self.logprob[..len], &cfg),
            lastde_pp: lastde_pp(&self.logprob[..len], &samples, &cfg),
        })
    }
}

/// Wraps a scorer and, for every logits row it returns, draws Lastde++'s samples the
/// way [`score_tokens`] does (same generator, seed and order), so the sampled
/// sequences it keeps are the ones behind the report's `lastde_pp`, and can be cut to
/// any prefix. (`score_tokens` computes them but keeps them to itself.)
struct SamplingScorer<'a> {
    inner: &'a mut dyn Scorer,
    samples: usize,
    rng: SplitMix64,
    sampled: Vec<Vec<f64>>,
    log_softmax: Vec<f32>,
    uniforms: Vec<f64>,
    draws: Vec<f64>,
}

impl Scorer for SamplingScorer<'_> {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn forward(&mut self, tokens: &[u32], positions: &[usize], rows: &[usize]) -> Result<&[f32]> {
        let vocab = self.inner.vocab_size();
        let logits = self.inner.forward(tokens, positions, rows)?;
        // `score_tokens` checks the length too, after this; a short buffer must not
        // panic here first.
        for row in logits.chunks_exact(vocab).take(rows.len()) {
            log_softmax_into(row, &mut self.log_softmax);
            self.uniforms.clear();
            let rng = &mut self.rng;
            self.uniforms
                .extend((0..self.samples).map(|_| rng.next_f64()));
            sample_logprobs(&self.log_softmax, &self.uniforms, &mut self.draws);
            for (seq, &d) in self.sampled.iter_mut().zip(&self.draws) {
                seq.push(d);
            }
        }
        Ok(logits)
    }
}

/// [`score_tokens`] over `tokens` that also returns the per-token sequences.
pub fn score_token_sequences(
    scorer: &mut dyn Scorer,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    token_bytes: &dyn Fn(u32) -> usize,
) -> Result<(ScoreReport, TokenSequences)> {
    let samples = LastdeConfig::default().samples;
    let mut wrapped = SamplingScorer {
        inner: scorer,
        samples,
        rng: SplitMix64(SplitMix64::SEED),
        sampled: vec![Vec::with_capacity(tokens.len()); samples],
        log_softmax: Vec::new(),
        uniforms: Vec::new(),
        draws: Vec::new(),
    };
    let mut seq = TokenSequences::default();
    let report = score_tokens(
        &mut wrapped,
        tokens,
        ctx,
        bos,
        0,
        token_bytes,
        &mut |t| {
            seq.logprob.push(f64::from(t.report.logprob));
            seq.entropy.push(f64::from(t.report.entropy));
            seq.varentropy.push(f64::from(t.report.varentropy));
        },
        &mut |_, _| {},
    )?;
    seq.sampled = wrapped.sampled;
    Ok((report, seq))
}

/// Scores `text` under `model` (as [`score_text`](crate::score_text) does) and keeps
/// the per-token sequences.
pub fn score_text_sequences(
    model: &LoadedModel,
    text: &str,
    ctx: usize,
) -> Result<(ScoreReport, TokenSequences)> {
    let (tokens, bos, mut scorer) = prepare_text(model, text, ctx)?;
    let tok = &model.tokenizer;
    score_token_sequences(&mut scorer, &tokens, ctx, bos, &|t| {
        tok.token_bytes(t).len()
    })
}

/// Points `(false-positive rate, true-positive rate)` of the ROC curve of a score that
/// should be larger for `positives`: from (0, 0) to (1, 1), one point per distinct
/// score (thresholds from high to low). Tied positives and negatives move together, a
/// diagonal segment, so the trapezoid area under the points equals [`auroc`] (ties
/// count one half). NaN scores are left out; empty when either class has no score.
pub fn roc_curve(positives: &[f64], negatives: &[f64]) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, bool)> = positives
        .iter()
        .map(|&v| (v, true))
        .chain(negatives.iter().map(|&v| (v, false)))
        .filter(|(v, _)| !v.is_nan())
        .collect();
    let n_pos = all.iter().filter(|p| p.1).count();
    let n_neg = all.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut curve = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        let v = all[i].0;
        while i < all.len() && all[i].0 == v {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        curve.push((fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
    }
    curve
}

/// Trapezoid area under a curve of points in increasing x.
pub fn area_under(curve: &[(f64, f64)]) -> f64 {
    curve
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

/// One human-written passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    /// Where it comes from (a file name inside its package).
    pub source: String,
    pub text: String,
}

/// Reads passages from JSON lines `{"source": ..., "text": ...}` (as written by
/// `scripts/fetch_eval_text.py`). Blank lines are skipped; anything else malformed is an
/// error naming the line.
pub fn read_passages(path: &Path) -> Result<Vec<Passage>> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Io(format!("reading {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| EvalError::Input(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let text = v["text"]
            .as_str()
            .ok_or_else(|| bad("no string field \"text\""))?;
        let source = v["source"].as_str().unwrap_or("").to_string();
        out.push(Passage {
            source,
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// The passage's first sentence: up to and including the first `.`, `!` or `?` that is
/// followed by whitespace and comes after at least 30 characters. Without one, the
/// first 30 words. Never the whole passage (there must be something to continue).
pub fn first_sentence(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if i >= 30
            && matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_some_and(|c| c.is_ascii_whitespace())
        {
            return &text[..=i];
        }
    }
    let end = text
        .split_whitespace()
        .take(30)
        .last()
        .map(|w| w.as_ptr() as usize - text.as_ptr() as usize + w.len())
        .unwrap_or(0);
    if end >= text.len() {
        // One short sentence: continue from its first half.
        let mid = text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= text.len() / 2)
            .unwrap_or(0);
        &text[..mid]
    } else {
        &text[..end]
    }
}

/// How the machine passages are written.
#[derive(Clone, Debug)]
pub struct DetectOptions {
    /// Passages to use (the first `n`).
    pub n: usize,
    /// Sampler for the machine passages; passage `i` uses seed `sampler.seed + i`.
    pub sampler: SamplerConfig,
    /// Most tokens generated per passage; each machine passage is otherwise as long (in
    /// tokens) as its human counterpart.
    pub max_tokens: usize,
    /// Scoring window.
    pub ctx: usize,
    /// Prefix lengths (scored tokens) at which every detector is also evaluated, from
    /// the same scoring pass; empty for the full passages only.
    pub lengths: Vec<usize>,
}

/// One human/machine pair.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionPair {
    pub source: String,
    pub prompt: String,
    pub machine_text: String,
    pub human_tokens: usize,
    pub machine_tokens: usize,
    pub human_criterion: f64,
    pub machine_criterion: f64,
    /// Lastde and Lastde++ of each passage (`crate::lastde`).
    pub human_lastde: f64,
    pub machine_lastde: f64,
    pub human_lastde_pp: f64,
    pub machine_lastde_pp: f64,
    /// Every detector on the first `lengths[i]` scored tokens of each passage (`None`
    /// where the passage is shorter).
    pub human_at: Vec<Option<DetectorScores>>,
    pub machine_at: Vec<Option<DetectorScores>>,
}

/// All detectors at one prefix length.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthResult {
    /// Scored tokens of each passage.
    pub len: usize,
    /// Pairs in which both passages are at least that long (the others are left out,
    /// so both classes keep the same prompts).
    pub n: usize,
    /// AUROC per detector (order of [`DETECTORS`]; NaN when `n` is 0), undefined
    /// scores left out.
    pub auroc: [f64; 3],
    /// The machine (positive) and human (negative) scores per detector, for ROC curves.
    pub machine_scores: [Vec<f64>; 3],
    pub human_scores: [Vec<f64>; 3],
}

impl LengthResult {
    /// The ROC curve of detector `d` (index into [`DETECTORS`]).
    pub fn roc(&self, d: usize) -> Vec<(f64, f64)> {
        roc_curve(&self.machine_scores[d], &self.human_scores[d])
    }
}

/// The per-length results of `pairs` (whose `*_at` follow `lengths`).
pub fn by_length(pairs: &[DetectionPair], lengths: &[usize]) -> Result<Vec<LengthResult>> {
    let mut out = Vec::with_capacity(lengths.len());
    for (i, &len) in lengths.iter().enumerate() {
        let both: Vec<(DetectorScores, DetectorScores)> = pairs
            .iter()
            .filter_map(|p| Some((p.machine_at.get(i).copied()??, p.human_at.get(i).copied()??)))
            .collect();
        let finite =
            |v: Vec<f64>| -> Vec<f64> { v.into_iter().filter(|x| x.is_finite()).collect() };
        let machine_scores: [Vec<f64>; 3] =
            std::array::from_fn(|d| finite(both.iter().map(|b| b.0.as_array()[d]).collect()));
        let human_scores: [Vec<f64>; 3] =
            std::array::from_fn(|d| finite(both.iter().map(|b| b.1.as_array()[d]).collect()));
        let mut a = [f64::NAN; 3];
        for d in 0..3 {
            a[d] = auroc(&machine_scores[d], &human_scores[d])?;
        }
        out.push(LengthResult {
            len,
            n: both.len(),
            auroc: a,
            machine_scores,
            human_scores,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetectionReport {
    pub pairs: Vec<DetectionPair>,
    /// Probability that a machine passage scores above a human one (Fast-DetectGPT).
    pub auroc: f64,
    /// The same for Lastde and Lastde++ (passages where a score is undefined, e.g.
    /// too short for the scales, are left out).
    pub auroc_lastde: f64,
    pub auroc_lastde_pp: f64,
    /// One entry per `DetectOptions::lengths`.
    pub by_length: Vec<LengthResult>,
    pub seconds: f64,
}

impl DetectionReport {
    /// Mean and standard deviation of the human (`machine = false`) or machine criteria.
    pub fn mean_sd(&self, machine: bool) -> (f64, f64) {
        let v: Vec<f64> = self
            .pairs
            .iter()
            .map(|p| {
                if machine {
                    p.machine_criterion
                } else {
                    p.human_criterion
                }
            })
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    }
}

/// Writes a machine passage for each of the first `opts.n` passages (from its first
/// sentence), scores both with `model`, and returns the AUROC of the criterion.
/// `progress(done, total, pair)` is called after each pair (so a caller can keep the
/// pairs of a long run as they come).
pub fn detection_eval(
    model: &LoadedModel,
    passages: &[Passage],
    opts: &DetectOptions,
    progress: &mut dyn FnMut(usize, usize, &DetectionPair),
) -> Result<DetectionReport> {
    if passages.len() < opts.n {
        return Err(EvalError::Input(format!(
            "{} passages given, {} asked for",
            passages.len(),
            opts.n
        )));
    }
    if opts.lengths.contains(&0) {
        return Err(EvalError::Input(
            "a prefix length must be at least 1 token".into(),
        ));
    }
    if opts.n < 2 {
        return Err(EvalError::Input(
            "an AUROC needs at least 2 passages".into(),
        ));
    }
    let start = Instant::now();
    let tok = &model.tokenizer;
    let mut session = Session::new(model, opts.ctx).map_err(engine_error)?;
    let mut pairs = Vec::with_capacity(opts.n);
    for (i, p) in passages[..opts.n].iter().enumerate() {
        let prompt = first_sentence(&p.text);
        let prompt_ids = tok.encode(prompt, true, false)?;
        let human_ids = tok.encode(&p.text, true, false)?;
        let budget = human_ids
            .len()
            .saturating_sub(prompt_ids.len())
            .clamp(16, opts.max_tokens);
        let params = GenerationParams {
            max_tokens: budget,
            sampler: SamplerConfig {
                seed: opts.sampler.seed.wrapping_add(i as u64),
                ..opts.sampler.clone()
            },
            stop_at_eog: true,
            top_logprobs: 0,
            stop: Vec::new(),
            ..GenerationParams::default()
        };
        let generation = session
            .generate(&prompt_ids, &params, |_| ControlFlow::Continue(()))
            .map_err(engine_error)?;
        let machine_text = format!("{prompt}{}", generation.text);
        let (human, human_seq) = score_text_sequences(model, &p.text, opts.ctx)?;
        let (machine, machine_seq) = score_text_sequences(model, &machine_text, opts.ctx)?;
        let at = |seq: &TokenSequences| -> Vec<Option<DetectorScores>> {
            opts.lengths.iter().map(|&l| seq.scores(l)).collect()
        };
        pairs.push(DetectionPair {
            source: p.source.clone(),
            prompt: prompt.to_string(),
            machine_text,
            human_tokens: human.n_text_tokens,
            machine_tokens: machine.n_text_tokens,
            human_criterion: human.discrepancy.criterion(),
            machine_criterion: machine.discrepancy.criterion(),
            human_lastde: human.lastde,
            machine_lastde: machine.lastde,
            human_lastde_pp: human.lastde_pp,
            machine_lastde_pp: machine.lastde_pp,
            human_at: at(&human_seq),
            machine_at: at(&machine_seq),
        });
        if let Some(pair) = pairs.last() {
            progress(i + 1, opts.n, pair);
        }
    }
    let pos: Vec<f64> = pairs.iter().map(|p| p.machine_criterion).collect();
    let neg: Vec<f64> = pairs.iter().map(|p| p.human_criterion).collect();
    let finite = |v: Vec<f64>| -> Vec<f64> { v.into_iter().filter(|x| x.is_finite()).collect() };
    let auroc_of = |m: fn(&DetectionPair) -> f64, h: fn(&DetectionPair) -> f64| {
        auroc(
            &finite(pairs.iter().map(m).collect()),
            &finite(pairs.iter().map(h).collect()),
        )
    };
    let auroc_lastde = auroc_of(|p| p.machine_lastde, |p| p.human_lastde)?;
    let auroc_lastde_pp = auroc_of(|p| p.machine_lastde_pp, |p| p.human_lastde_pp)?;
    Ok(DetectionReport {
        auroc: auroc(&pos, &neg)?,
        auroc_lastde,
        auroc_lastde_pp,
        by_length: by_length(&pairs, &opts.lengths)?,
        pairs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn engine_error(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sentence_stops_at_the_first_full_stop_after_30_characters() {
        let t = "Python is an easy to learn language. It has efficient structures.";
        assert_eq!(first_sentence(t), "Python is an easy to learn language.");
        // "e.g. " inside the first 30 characters does not end the sentence.
        let t = "Use a list, e.g. a queue, when order matters a lot. Then more.";
        assert_eq!(
            first_sentence(t),
            "Use a list, e.g. a queue, when order matters a lot."
        );
        // No sentence end: the first 30 words.
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let t = words.join(" ");
        assert_eq!(first_sentence(&t), words[..30].join(" "));
        // One short sentence: its first half, never all of it.
        let t = "Short text here.";
        assert!(first_sentence(t).len() < t.len());
    }

    /// A causal toy model: row `r`'s logits depend on tokens `..=r` only (the previous
    /// token and the running sum), so prefixes score exactly like the whole.
    struct Toy {
        vocab: usize,
        out: Vec<f32>,
    }

    impl Scorer for Toy {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn reset(&mut self) {}
        fn forward(&mut self, tokens: &[u32], _: &[usize], rows: &[usize]) -> Result<&[f32]> {
            self.out.clear();
            for &r in rows {
                let sum: u32 = tokens[..=r].iter().sum();
                for v in 0..self.vocab as u32 {
                    let near = (v + self.vocab as u32 - (tokens[r] + 1) % self.vocab as u32)
                        % self.vocab as u32;
                    self.out
                        .push(-(near as f32) * 0.7 + ((sum * 7 + v * 3) % 5) as f32 * 0.3);
                }
            }
            Ok(&self.out)
        }
    }

    fn toy_text(n: usize) -> Vec<u32> {
        let mut state = 7u64;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 33) % 16) as u32
            })
            .collect()
    }

    fn toy_score(tokens: &[u32], ctx: usize) -> (ScoreReport, TokenSequences) {
        let mut toy = Toy {
            vocab: 16,
            out: Vec::new(),
        };
        score_token_sequences(&mut toy, tokens, ctx, None, &|_| 1).unwrap()
    }

    #[test]
    fn sequences_reproduce_the_report_and_prefixes_are_exact() {
        let tokens = toy_text(90);
        // Two windows (ctx 64): the draws must follow the report's across windows too.
        let (report, seq) = toy_score(&tokens, 64);
        assert_eq!(seq.len(), 89);
        let full = seq.scores(89).unwrap();
        assert_eq!(full.fast_detectgpt, report.discrepancy.criterion());
        assert_eq!(full.lastde, report.lastde);
        assert_eq!(full.lastde_pp, report.lastde_pp);
        assert!(full.as_array().iter().all(|v| v.is_finite()), "{full:?}");
        // Scoring only the first 41 tokens gives what truncating the full pass gives.
        let (short_report, _) = toy_score(&tokens[..41], 64);
        let cut = seq.scores(40).unwrap();
        assert_eq!(cut.fast_detectgpt, short_report.discrepancy.criterion());
        assert_eq!(cut.lastde, short_report.lastde);
        assert_eq!(cut.lastde_pp, short_report.lastde_pp);
        assert!(seq.scores(90).is_none() && seq.scores(0).is_none());
    }

    #[test]
    fn roc_curve_of_perfect_separation_goes_through_the_corner() {
        let c = roc_curve(&[3.0, 4.0, 5.0], &[0.0, 1.0]);
        assert_eq!(c.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.last(), Some(&(1.0, 1.0)));
        assert!(c.contains(&(0.0, 1.0)), "{c:?}");
        assert_eq!(area_under(&c), 1.0);
        assert_eq!(auroc(&[3.0, 4.0, 5.0], &[0.0, 1.0]).unwrap(), 1.0);
        // Reversed: through (1, 0), area 0.
        let c = roc_curve(&[0.0, 1.0], &[3.0, 4.0]);
        assert!(c.contains(&(1.0, 0.0)) && area_under(&c) == 0.0, "{c:?}");
        assert!(roc_curve(&[1.0], &[]).is_empty());
        assert!(roc_curve(&[f64::NAN], &[1.0]).is_empty());
    }

    #[test]
    fn roc_curve_ties_move_diagonally() {
        // Every score tied: one diagonal step, area one half.
        let c = roc_curve(&[1.0, 1.0], &[1.0, 1.0, 1.0]);
        assert_eq!(c, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(area_under(&c), 0.5);
        // A tie across classes at 2.0: one point for both.
        let c = roc_curve(&[3.0, 2.0], &[2.0, 1.0]);
        assert_eq!(c, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn roc_area_agrees_with_auroc() {
        let mut state = 3u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Coarse values, so that ties are common.
            ((state >> 40) % 20) as f64 / 4.0
        };
        for _ in 0..20 {
            let pos: Vec<f64> = (0..37).map(|_| next() + 1.0).collect();
            let neg: Vec<f64> = (0..23).map(|_| next()).collect();
            let c = roc_curve(&pos, &neg);
            assert!(c.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
            let a = auroc(&pos, &neg).unwrap();
            assert!(
                (area_under(&c) - a).abs() < 1e-12,
                "{} vs {a}",
                area_under(&c)
            );
        }
    }

    #[test]
    fn lengths_leave_out_short_pairs() {
        let s = |v: f64| {
            Some(DetectorScores {
                fast_detectgpt: v,
                lastde: v,
                lastde_pp: f64::NAN,
            })
        };
        let pair = |h: Vec<Option<DetectorScores>>, m: Vec<Option<DetectorScores>>| DetectionPair {
            source: String::new(),
            prompt: String::new(),
            machine_text: String::new(),
            human_tokens: 0,
            machine_tokens: 0,
            human_criterion: 0.0,
            machine_criterion: 0.0,
            human_lastde: 0.0,
            machine_lastde: 0.0,
            human_lastde_pp: 0.0,
            machine_lastde_pp: 0.0,
            human_at: h,
            machine_at: m,
        };
        let pairs = vec![
            pair(vec![s(0.0), s(0.0)], vec![s(1.0), s(1.0)]),
            pair(vec![s(0.5), s(2.0)], vec![s(2.0), None]),
        ];
        let r = by_length(&pairs, &[8, 16]).unwrap();
        assert_eq!((r[0].n, r[1].n), (2, 1));
        assert_eq!(r[0].auroc[0], 1.0);
        assert_eq!(r[1].auroc[0], 1.0);
        // Undefined scores are left out: no AUROC at all here.
        assert!(r[0].auroc[2].is_nan() && r[0].roc(2).is_empty());
        assert_eq!(r[0].roc(0).last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn passages_are_read_with_line_numbered_errors() {
        let dir = std::env::temp_dir().join(format!("tw-passages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(
            &good,
            "{\"source\": \"a\", \"text\": \"One.\"}\n\n{\"text\": \"Two.\"}\n",
        )
        .unwrap();
        let p = read_passages(&good).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].text, "Two.");
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"One.\"}\n{\"source\": 3}\n").unwrap();
        let e = read_passages(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2") && e.contains("text"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
