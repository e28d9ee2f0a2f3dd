//! Information measures over one logits row: log-softmax, entropy, the
//! log-probability and rank of a token, argmax and the top-k list.
//!
//! Conventions shared by every function here (and by the samplers):
//!
//! * NaN logits are treated as `-inf` (a token that cannot be produced). A NaN
//!   usually means a numerical fault upstream; masking it is the only choice
//!   that keeps the rest of the row usable and never panics.
//! * `+inf` logits dominate: the distribution is uniform over the `+inf`
//!   entries and zero elsewhere (the limit of letting those logits grow).
//! * A row with no entry above `-inf` has no distribution; the functions that
//!   return probabilities then return NaN ("undefined"), never a made-up value.
//! * Order is "larger logit first, ties broken by the lower id", the same
//!   order llama.cpp's greedy sampler uses, so `argmax`, `rank` and
//!   `top_k_logprobs` always agree with each other.
//!
//! Sums are accumulated in `f64`: over a 150k-entry vocabulary an `f32` sum
//! loses several digits, which shows up directly in entropy and logprobs.

#[cfg(test)]
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::candidates::{rank_key, smallest_keys};

/// Statistics of one token under the softmax of a logits row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenStats {
    /// Natural log of the token's probability (`<= 0`, `-inf` if impossible).
    pub logprob: f32,
    /// Entropy of the whole distribution, in nats.
    pub entropy: f32,
    /// Position of the token in descending order (0 = the argmax).
    pub rank: usize,
}

/// NaN -> `-inf`; everything else unchanged.
#[inline]
pub(crate) fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// The canonical order: larger (sanitised) logit first, then lower id.
/// `-0.0` and `0.0` compare equal, as they do for `>`, so this agrees with
/// [`argmax`]. It is a strict total order over distinct ids. This is the
/// reference definition; the code uses the equivalent integer
/// `candidates::rank_key`, tested against it.
#[cfg(test)]
pub(crate) fn cmp_desc(a_id: u32, a: f32, b_id: u32, b: f32) -> Ordering {
    sanitize(b)
        .partial_cmp(&sanitize(a))
        .unwrap_or(Ordering::Equal)
        .then(a_id.cmp(&b_id))
}

/// The normaliser of a row: `log Z = max + ln(sum exp(x - max))`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Normalizer {
    /// No entry above `-inf` (or an empty row): no distribution exists.
    Undefined,
    /// `count` entries are `+inf` and share all the mass.
    Infinite { count: usize },
    /// The ordinary case.
    Finite { max: f64, ln_sum: f64 },
}

impl Normalizer {
    pub(crate) fn of(logits: impl Iterator<Item = f32> + Clone) -> Self {
        let max = logits
            .clone()
            .map(sanitize)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            Normalizer::Undefined
        } else if max == f32::INFINITY {
            let count = logits.filter(|&x| x == f32::INFINITY).count();
            Normalizer::Infinite { count }
        } else {
            let max = f64::from(max);
            let sum: f64 = logits.map(|x| (f64::from(sanitize(x)) - max).exp()).sum();
            Normalizer::Finite {
                max,
                ln_sum: sum.ln(),
            }
        }
    }

    /// Log-probability of an entry with logit `x` (in `f64`).
    pub(crate) fn logprob(&self, x: f32) -> f64 {
        let x = sanitize(x);
        match *self {
            Normalizer::Undefined => f64::NAN,
            Normalizer::Infinite { count } => {
                if x == f32::INFINITY {
                    -(count as f64).ln()
                } else {
                    f64::NEG_INFINITY
                }
            }
            Normalizer::Finite { max, ln_sum } => (f64::from(x) - max) - ln_sum,
        }
    }
}

/// The normaliser, entropy and varentropy of a row in one pass of `exp`
/// (exact `f64`): with `d = x - max`, `S0 = sum e^d`, `S1 = sum e^d d` and
/// `S2 = sum e^d d^2`, the surprisal is `ln S0 - d`, so
/// `H = ln S0 - S1/S0` and `Var = S2/S0 - (S1/S0)^2` (the variance of `d`).
/// `S0` is summed in the same order as [`Normalizer::of`], so log-probs
/// agree bit for bit with [`log_softmax`].
#[derive(Clone, Copy, Debug)]
pub struct Moments {
    pub(crate) norm: Normalizer,
    entropy: f64,
    varentropy: f64,
}

/// The row's normaliser and entropy moments: the `exp` pass of [`token_report`],
/// which does not depend on the token, so a batch can compute its rows' moments
/// ahead, in parallel, and report with [`token_report_with`].
pub fn moments(logits: &[f32]) -> Moments {
    moments_impl(logits, None)
}

/// [`moments`], also writing every token's probability into `probs`
/// (cleared first): one `exp` pass serves both.
pub(crate) fn moments_and_probs(logits: &[f32], probs: &mut Vec<f64>) -> Moments {
    probs.clear();
    let m = moments_impl(logits, Some(&mut *probs));
    match m.norm {
        Normalizer::Finite { ln_sum, .. } => {
            let z = ln_sum.exp();
            probs.iter_mut().for_each(|w| *w /= z);
        }
        _ => {
            probs.clear();
            probs.extend(logits.iter().map(|&x| m.norm.logprob(x).exp()));
        }
    }
    m
}

fn moments_impl(logits: &[f32], mut weights: Option<&mut Vec<f64>>) -> Moments {
    let max = logits
        .iter()
        .map(|&x| sanitize(x))
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Moments {
            norm: Normalizer::Undefined,
            entropy: f64::NAN,
            varentropy: f64::NAN,
        };
    }
    if max == f32::INFINITY {
        let count = logits.iter().filter(|&&x| x == f32::INFINITY).count();
        return Moments {
            norm: Normalizer::Infinite { count },
            entropy: (count as f64).ln(),
            varentropy: 0.0,
        };
    }
    let max = f64::from(max);
    let (mut s0, mut s1, mut s2) = (0.0f64, 0.0f64, 0.0f64);
    for &x in logits {
        let d = f64::from(sanitize(x)) - max;
        let w = d.exp();
        if let Some(ws) = weights.as_deref_mut() {
            ws.push(w);
        }
        s0 += w;
        // p = 0 contributes 0, not 0 * -inf = NaN.
        if w > 0.0 {
            s1 += w * d;
            s2 += w * d * d;
        }
    }
    let ln_sum = s0.ln();
    let mean = s1 / s0;
    Moments {
        norm: Normalizer::Finite { max, ln_sum },
        // Rounding can leave a one-hot row at -1e-17; both are >= 0.
        entropy: (ln_sum - mean).max(0.0),
        varentropy: (s2 / s0 - mean * mean).max(0.0),
    }
}

/// Entropy given the row's normaliser: `H = -sum p ln p`.
pub(crate) fn entropy_of(logits: impl Iterator<Item = f32>, norm: &Normalizer) -> f64 {
    match *norm {
        Normalizer::Undefined => f64::NAN,
        Normalizer::Infinite { count } => (count as f64).ln(),
        Normalizer::Finite { .. } => {
            let h: f64 = logits
                .map(|x| {
                    let lp = norm.logprob(x);
                    // p = 0 contributes 0 (the limit of p ln p), not 0 * -inf = NaN.
                    if lp == f64::NEG_INFINITY {
                        0.0
                    } else {
                        -lp.exp() * lp
                    }
                })
                .sum();
            // Rounding can leave a one-hot row at -1e-17; entropy is >= 0.
            h.max(0.0)
        }
    }
}

/// Writes `log softmax(logits)` into `out`.
///
/// Stable: the maximum is subtracted before exponentiating, and the sum is
/// accumulated in `f64`. If the row has no entry above `-inf`, `out` is filled
/// with NaN (the distribution is undefined).
///
/// # Panics
/// If `out.len() != logits.len()` (a caller bug, like a slice copy).
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    assert_eq!(
        logits.len(),
        out.len(),
        "log_softmax: output length must equal logits length"
    );
    let norm = Normalizer::of(logits.iter().copied());
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = norm.logprob(x) as f32;
    }
}

/// Entropy of `softmax(logits)` in nats: 0 for a one-hot row, `ln n` for a
/// uniform one. NaN for an empty row or one with no entry above `-inf`.
pub fn entropy(logits: &[f32]) -> f32 {
    moments(logits).entropy as f32
}

/// Varentropy of `softmax(logits)`: the variance of the surprisal `-ln p`
/// of a token drawn from it, in nats squared. 0 for one-hot and uniform rows
/// (every drawable token is equally surprising); large when a few likely
/// tokens sit beside a long tail of unlikely ones. NaN when no distribution
/// exists.
pub fn varentropy(logits: &[f32]) -> f32 {
    moments(logits).varentropy as f32
}

/// Everything the model's own distribution (temperature 1, before any
/// sampler stage) says about one chosen token: its log-probability and rank,
/// the entropy and varentropy of the distribution, and the most likely
/// alternatives. See [`token_report`].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenReport {
    /// The token.
    pub id: u32,
    /// Natural log of its probability (`<= 0`).
    pub logprob: f32,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
    /// The same entropy in bits (`entropy / ln 2`).
    pub entropy_bits: f32,
    /// Variance of the surprisal `-ln p` under the distribution (nats^2).
    pub varentropy: f32,
    /// Position of the token in descending order (0 = the argmax), ties by id.
    pub rank: usize,
    /// The most likely tokens as `(id, logprob)`, best first (as
    /// [`top_k_logprobs`]); empty when none were asked for.
    pub top: Vec<(u32, f32)>,
}

impl TokenReport {
    /// The token's surprisal in bits, `-log2 p` (what mirostat's tau targets).
    pub fn surprise_bits(&self) -> f32 {
        -self.logprob / std::f32::consts::LN_2
    }
}

/// The [`TokenReport`] of `token` under `softmax(logits)`, with the `top_k`
/// most likely alternatives. O(n) plus a `top_k` selection.
///
/// # Panics
/// If `token` is not an index of `logits` (as [`token_stats`]).
pub fn token_report(logits: &[f32], token: u32, top_k: usize) -> TokenReport {
    token_report_with(logits, token, top_k, &moments(logits))
}

/// [`token_report`] with the row's [`moments`] already computed (the same result).
///
/// # Panics
/// If `token` is not an index of `logits` (as [`token_report`]).
pub fn token_report_with(logits: &[f32], token: u32, top_k: usize, m: &Moments) -> TokenReport {
    assert!(
        (token as usize) < logits.len(),
        "token_report: token {token} out of range for {} logits",
        logits.len()
    );
    let xt = logits[token as usize];
    let h = m.entropy;
    TokenReport {
        id: token,
        logprob: m.norm.logprob(xt) as f32,
        entropy: h as f32,
        entropy_bits: (h / std::f64::consts::LN_2) as f32,
        varentropy: m.varentropy as f32,
        rank: rank_of(logits, token),
        top: top_k_with(logits, top_k, &m.norm),
    }
}

/// How many entries come before `token` in the canonical order.
fn rank_of(logits: &[f32], token: u32) -> usize {
    let kt = rank_key(token, logits[token as usize]);
    logits
        .iter()
        .enumerate()
        .filter(|&(j, &x)| rank_key(j as u32, x) < kt)
        .count()
}

/// Log-probability, distribution entropy and rank of `token` in one call
/// (one normaliser pass shared by both measures).
///
/// `rank` counts the entries ordered before `token`: larger logit, or equal
/// logit and lower id. So `rank == 0` exactly when `argmax(logits) == token`,
/// and `top_k_logprobs(logits, k)[rank].0 == token` whenever `rank < k`.
///
/// # Panics
/// If `token` is not an index of `logits` (a vocabulary mismatch between the
/// tokenizer and the model, which must not be silently measured).
pub fn token_stats(logits: &[f32], token: u32) -> TokenStats {
    let t = token as usize;
    assert!(
        t < logits.len(),
        "token_stats: token {token} out of range for {} logits",
        logits.len()
    );
    let m = moments(logits);
    TokenStats {
        logprob: m.norm.logprob(logits[t]) as f32,
        entropy: m.entropy as f32,
        rank: rank_of(logits, token),
    }
}

/// Index of the largest logit; ties go to the lowest index (llama.cpp's
/// greedy behaviour), NaN counts as `-inf`. A row with no entry above `-inf`
/// returns 0.
///
/// # Panics
/// If `logits` is empty: there is no index to return. (`Sampler::sample`
/// reports an empty row as an error instead.)
pub fn argmax(logits: &[f32]) -> u32 {
    assert!(!logits.is_empty(), "argmax: empty logits");
    let mut best = 0usize;
    let mut best_x = sanitize(logits[0]);
    for (i, &x) in logits.iter().enumerate().skip(1) {
        let x = sanitize(x);
        if x > best_x {
            best = i;
            best_x = x;
        }
    }
    best as u32
}

/// The `k` most likely tokens as `(id, logprob)`, most likely first, ties by
/// lower id. `k` larger than the row is clamped. Costs O(n + k log k): a
/// selection pass, then only the `k` winners are sorted.
///
/// If the row has no entry above `-inf`, the logprobs are NaN.
pub fn top_k_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    top_k_with(logits, k, &Normalizer::of(logits.iter().copied()))
}

/// [`top_k_logprobs`] with the normaliser already known. Small `k`: one
/// pass with a bounded heap of rank keys; large `k`: a selection.
fn top_k_with(logits: &[f32], k: usize, norm: &Normalizer) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let keys = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| rank_key(i as u32, x));
    let mut best: Vec<u64> = if k.saturating_mul(16) <= logits.len() {
        let mut heap = BinaryHeap::with_capacity(k);
        smallest_keys(keys, k, &mut heap);
        heap.into_vec()
    } else {
        let mut all: Vec<u64> = keys.collect();
        if k < all.len() {
            all.select_nth_unstable(k - 1);
            all.truncate(k);
        }
        all
    };
    best.sort_unstable();
    best.into_iter()
        .map(|key| {
            let id = key as u32;
            (id, norm.logprob(logits[id as usize]) as f32)
        })
        .collect()
}
