//! Truncation samplers: each keeps a subset of the candidates (the ones it
//! drops leave the distribution; the survivors are renormalised by the final
//! softmax). All keep at least the best candidate, except XTC, which by
//! design removes the best ones but always leaves one.

use super::{LogitsProcessor, SampleContext};
use crate::candidates::{rank_key, Candidate, Candidates};
use crate::fastmath::exp_neg;
use crate::rng::Rng;
use crate::stats::Normalizer;

/// Keeps the `k` most likely candidates (`0` = off). Ties at the boundary go
/// to the lower id.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// Registry name.
    pub const NAME: &'static str = "top_k";

    /// `k == 0` turns it off; `k` above the vocabulary size keeps everything.
    pub fn new(k: usize) -> Self {
        TopK { k }
    }
}

impl LogitsProcessor for TopK {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.k > 0 {
            cands.keep_top_k(self.k);
        }
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Nucleus sampling: keeps the smallest prefix of the sorted candidates
/// whose cumulative probability is `>= p` (`p >= 1` = off), as llama.cpp.
/// Probabilities are those of the candidates it receives (weights from the
/// vectorised `exp`, sums in `f64`). O(n) without a sort: the mass is
/// histogrammed in buckets of 1/8 nat below the max logit and only the
/// bucket where the nucleus ends is sorted (llama.cpp buckets too).
#[derive(Clone, Debug)]
pub struct TopP {
    p: f32,
}

impl TopP {
    /// Registry name.
    pub const NAME: &'static str = "top_p";

    /// `p >= 1` turns it off.
    pub fn new(p: f32) -> Self {
        TopP { p }
    }
}

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.p.is_nan() || self.p >= 1.0 || cands.len() <= 1 {
            return;
        }
        let max = cands.max_logit();
        if max == f32::NEG_INFINITY {
            return;
        }
        if max == f32::INFINITY {
            // The +inf candidates hold all the mass: keep as many of them as
            // the nucleus needs.
            let count = cands
                .as_slice()
                .iter()
                .filter(|c| c.logit == f32::INFINITY)
                .count();
            let need = ((f64::from(self.p) * count as f64).ceil() as usize).clamp(1, count);
            cands.keep_top_k(need);
            return;
        }
        // Canonical order; buckets of 1/8 nat below the max (monotone in
        // the logit, so consistent with the order); weights e^(logit - max).
        cands.cut_by_mass(
            |c| (rank_key(c.id, c.logit), 0),
            |c| ((max - c.logit) * 8.0).min(255.0) as u8,
            |c| exp_neg(c.logit - max),
            f64::from(self.p),
            false,
        );
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Min-p: drops candidates whose probability is below `min_p` times the
/// largest one. Computed in logit space (`logit >= max + ln(min_p)`, as
/// llama.cpp), which needs neither a softmax nor a sort. `0` = off.
#[derive(Clone, Debug)]
pub struct MinP {
    min_p: f32,
}

impl MinP {
    /// Registry name.
    pub const NAME: &'static str = "min_p";

    /// `min_p <= 0` turns it off.
    pub fn new(min_p: f32) -> Self {
        MinP { min_p }
    }
}

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        // Off for 0, and for NaN (which a validated config never holds).
        if self.min_p.is_nan() || self.min_p <= 0.0 {
            return;
        }
        let max = cands.max_logit();
        if max == f32::NEG_INFINITY {
            return;
        }
        // The best candidate always passes (ln(min_p) <= 0 for min_p <= 1).
        let threshold = f64::from(max) + f64::from(self.min_p).ln();
        cands.retain(|c| f64::from(c.logit) >= threshold);
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Locally typical sampling (Meister et al. 2022, llama.cpp's `typ_p`):
/// orders the candidates by how close their surprisal `-ln p` is to the
/// entropy `H` of the distribution, and keeps them in that order until the
/// cumulative probability exceeds `p` (strictly, as llama.cpp). Equal
/// scores are ordered like the canonical order (larger logit, lower id).
///
/// Unlike the other truncations it can drop the most likely token (when its
/// surprisal is far below the entropy), so greedy decoding runs it too.
#[derive(Clone, Debug)]
pub struct Typical {
    p: f32,
}

impl Typical {
    /// Registry name (llama.cpp's).
    pub const NAME: &'static str = "typ_p";

    /// `p >= 1` turns it off.
    pub fn new(p: f32) -> Self {
        Typical { p }
    }
}

impl LogitsProcessor for Typical {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.p.is_nan() || self.p >= 1.0 || cands.len() <= 1 {
            return;
        }
        let (norm, h) = cands.fast_normalizer();
        let Normalizer::Finite { max, .. } = norm else {
            // No distribution, or +inf candidates sharing all the mass
            // (equally typical): nothing to cut.
            return;
        };
        let max32 = max as f32;
        // Distance of the surprisal from the entropy; an impossible token is
        // infinitely far from typical.
        let score = |c: &Candidate| {
            let lp = norm.logprob(c.logit);
            if lp == f64::NEG_INFINITY {
                f64::INFINITY
            } else {
                (-lp - h).abs()
            }
        };
        cands.cut_by_mass(
            // Non-negative floats sort like their bits; ties canonically.
            |c| (score(c).to_bits(), rank_key(c.id, c.logit)),
            |c| (score(c) * 8.0).min(255.0) as u8,
            |c| exp_neg(c.logit - max32),
            f64::from(self.p),
            true,
        );
    }
}

/// Top-n-sigma (llama.cpp's `top_n_sigma`): masks every candidate whose
/// logit is more than `n` standard deviations below the largest. Mean and
/// standard deviation (population) are over the finite logits. `n <= 0` =
/// off. Masked candidates are set to `-inf`, as llama.cpp does, so a later
/// entropy-adaptive temperature still counts them in the maximum entropy.
#[derive(Clone, Debug)]
pub struct TopNSigma {
    n: f32,
}

impl TopNSigma {
    /// Registry name.
    pub const NAME: &'static str = "top_n_sigma";

    /// `n <= 0` turns it off.
    pub fn new(n: f32) -> Self {
        TopNSigma { n }
    }
}

impl LogitsProcessor for TopNSigma {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.n.is_nan() || self.n <= 0.0 || cands.len() <= 1 {
            return;
        }
        let max = f64::from(cands.max_logit());
        // No finite logit, or a +inf one that holds all the mass anyway.
        if !max.is_finite() {
            return;
        }
        let logits = cands.as_slice();
        let (count, mean) = finite_mean(logits);
        let var = finite_sq_dev(logits, mean) / count as f64;
        let threshold = max - f64::from(self.n) * var.sqrt();
        let masked = cands
            .as_slice()
            .iter()
            .any(|c| f64::from(c.logit) < threshold && c.logit > f32::NEG_INFINITY);
        if masked {
            cands.map_logits(|l| {
                if f64::from(l) < threshold {
                    f32::NEG_INFINITY
                } else {
                    l
                }
            });
        }
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Number and mean of the finite logits (at least one must be finite),
/// summed in eight `f64` lanes so the pass vectorises.
fn finite_mean(cands: &[Candidate]) -> (usize, f64) {
    let (mut sum, mut count) = ([0.0f64; 8], [0u64; 8]);
    let chunks = cands.chunks_exact(8);
    let rest = chunks.remainder();
    let term = |c: &Candidate| {
        let fin = c.logit.is_finite();
        (if fin { f64::from(c.logit) } else { 0.0 }, u64::from(fin))
    };
    for chunk in chunks {
        for ((s, n), c) in sum.iter_mut().zip(count.iter_mut()).zip(chunk) {
            let (x, k) = term(c);
            *s += x;
            *n += k;
        }
    }
    let (mut s, mut n) = (sum.iter().sum::<f64>(), count.iter().sum::<u64>());
    for c in rest {
        let (x, k) = term(c);
        s += x;
        n += k;
    }
    (n as usize, s / n as f64)
}

/// Sum of squared deviations from `mean` over the finite logits.
fn finite_sq_dev(cands: &[Candidate], mean: f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let term = |c: &Candidate| {
        let d = f64::from(c.logit) - mean;
        if c.logit.is_finite() {
            d * d
        } else {
            0.0
        }
    };
    let chunks = cands.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, c) in acc.iter_mut().zip(chunk) {
            *a += term(c);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(term).sum::<f64>()
}

/// Keeps the candidates whose log-probability is at least `ln_threshold`,
/// and always those tied with the best (Hugging Face's `min_tokens_to_keep`
/// = 1 rule, which compares against the top logit).
fn keep_above(cands: &mut Candidates, norm: &Normalizer, ln_threshold: f64) {
    let max = cands.max_logit();
    cands.retain(|c| c.logit >= max || norm.logprob(c.logit) >= ln_threshold);
}

/// Epsilon sampling (Hewitt, Manning & Liang 2022, "Truncation Sampling as
/// Language Model Desmoothing"): drops candidates with probability below a
/// fixed `epsilon`. `0` = off. Not in llama.cpp; semantics of Hugging Face's
/// `EpsilonLogitsWarper`.
#[derive(Clone, Debug)]
pub struct Epsilon {
    epsilon: f32,
}

impl Epsilon {
    /// Registry name.
    pub const NAME: &'static str = "epsilon";

    /// `epsilon <= 0` turns it off.
    pub fn new(epsilon: f32) -> Self {
        Epsilon { epsilon }
    }
}

impl LogitsProcessor for Epsilon {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.epsilon.is_nan() || self.epsilon <= 0.0 || cands.len() <= 1 {
            return;
        }
        let (norm, _) = cands.fast_normalizer();
        if matches!(norm, Normalizer::Undefined) {
            return;
        }
        keep_above(cands, &norm, f64::from(self.epsilon).ln());
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Eta sampling (Hewitt et al. 2022): an entropy-dependent epsilon. Drops
/// candidates with probability below `min(eta, sqrt(eta) * exp(-H))`, `H`
/// the entropy (nats) of the candidates it receives, so a flat distribution
/// is cut less than a peaked one. `0` = off. Semantics of Hugging Face's
/// `EtaLogitsWarper`.
#[derive(Clone, Debug)]
pub struct Eta {
    eta: f32,
    last_threshold: f32,
}

impl Eta {
    /// Registry name.
    pub const NAME: &'static str = "eta";

    /// `eta <= 0` turns it off.
    pub fn new(eta: f32) -> Self {
        Eta {
            eta,
            last_threshold: f32::NAN,
        }
    }
}

impl LogitsProcessor for Eta {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.eta.is_nan() || self.eta <= 0.0 || cands.len() <= 1 {
            return;
        }
        let (norm, h) = cands.fast_normalizer();
        if matches!(norm, Normalizer::Undefined) {
            return;
        }
        let eta = f64::from(self.eta);
        let threshold = eta.min(eta.sqrt() * (-h).exp());
        self.last_threshold = threshold as f32;
        keep_above(cands, &norm, threshold.ln());
    }

    fn preserves_argmax(&self) -> bool {
        true
    }

    fn state(&self) -> Option<(&'static str, f32)> {
        Some(("threshold", self.last_threshold))
    }
}

/// XTC, "exclude top choices" (llama.cpp's `xtc`): with probability
/// `probability` per token, removes every candidate whose probability is at
/// least `threshold` except the least likely of them, steering away from
/// the obvious choice while keeping a viable one. Off when `probability <=
/// 0` or `threshold > 0.5`.
///
/// The coin flip uses the XTC stage's own RNG, seeded from the sampler seed
/// (on a separate stream from the draw's, so the two are not correlated);
/// `reset` reseeds it. Since it can remove the argmax, greedy decoding runs
/// it too, as llama.cpp does.
#[derive(Clone, Debug)]
pub struct Xtc {
    probability: f32,
    threshold: f32,
    seed: u64,
    rng: Rng,
}

impl Xtc {
    /// Registry name.
    pub const NAME: &'static str = "xtc";

    /// Mixed into the seed so XTC's stream differs from the draw's.
    const STREAM: u64 = 0x5854_435f_5354_524d; // "XTC_STRM"

    /// XTC with its own RNG seeded from `seed`.
    pub fn new(probability: f32, threshold: f32, seed: u64) -> Self {
        Xtc {
            probability,
            threshold,
            seed,
            rng: Rng::seed_from_u64(seed ^ Self::STREAM),
        }
    }
}

impl LogitsProcessor for Xtc {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        let off = self.probability.is_nan() || self.probability <= 0.0;
        if off || self.threshold.is_nan() || self.threshold > 0.5 || cands.len() < 2 {
            return;
        }
        if self.rng.next_f64() > f64::from(self.probability) {
            return;
        }
        let (norm, _) = cands.fast_normalizer();
        if matches!(norm, Normalizer::Undefined) {
            return;
        }
        // At most 1/threshold candidates reach the threshold: find them in
        // one pass instead of sorting. The least likely of them (largest
        // rank key) survives; all the others go.
        let ln_threshold = f64::from(self.threshold).ln();
        let above =
            |c: &Candidate| c.logit > f32::NEG_INFINITY && norm.logprob(c.logit) >= ln_threshold;
        let (mut count, mut last) = (0usize, 0u64);
        for c in cands.as_slice().iter().filter(|c| above(c)) {
            count += 1;
            last = last.max(rank_key(c.id, c.logit));
        }
        if count >= 2 {
            cands.retain(|c| !above(c) || rank_key(c.id, c.logit) == last);
        }
    }

    fn reset(&mut self) {
        self.rng = Rng::seed_from_u64(self.seed ^ Self::STREAM);
    }
}

/// Keeps only the best candidate (llama.cpp's `greedy`): larger logit, ties
/// to the lower id.
#[derive(Clone, Copy, Debug, Default)]
pub struct Greedy;

impl Greedy {
    /// Registry name.
    pub const NAME: &'static str = "greedy";
}

impl LogitsProcessor for Greedy {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        cands.keep_top_k(1);
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}
