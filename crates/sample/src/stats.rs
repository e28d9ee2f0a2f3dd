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

use std::cmp::Ordering;

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
/// [`argmax`]. It is a strict total order over distinct ids.
#[inline]
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

/// Entropy given the row's normaliser: `H = -sum p ln p`.
fn entropy_with(logits: &[f32], norm: &Normalizer) -> f64 {
    match *norm {
        Normalizer::Undefined => f64::NAN,
        Normalizer::Infinite { count } => (count as f64).ln(),
        Normalizer::Finite { .. } => {
            let h: f64 = logits
                .iter()
                .map(|&x| {
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
    let norm = Normalizer::of(logits.iter().copied());
    entropy_with(logits, &norm) as f32
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
    let norm = Normalizer::of(logits.iter().copied());
    let xt = logits[t];
    let rank = logits
        .iter()
        .enumerate()
        .filter(|&(j, &x)| cmp_desc(j as u32, x, token, xt) == Ordering::Less)
        .count();
    TokenStats {
        logprob: norm.logprob(xt) as f32,
        entropy: entropy_with(logits, &norm) as f32,
        rank,
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
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |&a: &u32, &b: &u32| cmp_desc(a, logits[a as usize], b, logits[b as usize]);
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    let norm = Normalizer::of(logits.iter().copied());
    ids.into_iter()
        .map(|id| (id, norm.logprob(logits[id as usize]) as f32))
        .collect()
}
