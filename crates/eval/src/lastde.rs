//! Lastde and Lastde++ (Xu et al., "Training-free LLM-generated text detection by
//! mining token probability sequences"): detectors built on the *sequence* of token
//! log-probabilities, not only its sum.
//!
//! - Diversity entropy (DE) of a sequence `x`: embed it into vectors of `dim`
//!   consecutive values, take the cosine similarity of each pair of neighbouring
//!   vectors, and measure the normalised Shannon entropy of those similarities over
//!   `bins` equal intervals of [-1, 1] (0: all alike, 1: spread evenly).
//! - Multiscale DE (MDE): DE of the sequence coarse-grained by a moving average of
//!   width `1..=scales` — local dynamics at several time scales.
//! - `Lastde(x) = mean log p / std(MDE)`: the global likelihood scaled by how much the
//!   local diversity varies across scales. Machine text (high likelihood, regular
//!   dynamics) scores higher.
//! - `Lastde++`: Lastde standardised against samples: token sequences drawn position
//!   by position from the model's own distributions (given the real prefix, as
//!   Fast-DetectGPT samples), `(Lastde(x) - mean) / sd` over the samples.
//!
//! Everything comes from the one scoring pass: the observed log-probabilities, and for
//! Lastde++ the log-probabilities of tokens sampled from each position's distribution.
//! The defaults (`dim` 3, 10 bins, 15 scales) are our reading of the paper's
//! settings; all are parameters.

/// Settings of the Lastde statistic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastdeConfig {
    /// Embedding dimension: values per vector.
    pub dim: usize,
    /// Intervals of [-1, 1] the cosine similarities are counted in.
    pub bins: usize,
    /// Moving-average widths 1..=scales.
    pub scales: usize,
    /// Lastde++: sampled sequences per text.
    pub samples: usize,
}

impl Default for LastdeConfig {
    fn default() -> Self {
        LastdeConfig {
            dim: 3,
            bins: 10,
            scales: 15,
            samples: 100,
        }
    }
}

/// Normalised diversity entropy of `x` (NaN when `x` is too short for two vectors).
pub fn diversity_entropy(x: &[f64], dim: usize, bins: usize) -> f64 {
    if dim == 0 || bins < 2 || x.len() < dim + 1 {
        return f64::NAN;
    }
    let n_vec = x.len() - dim + 1;
    let mut counts = vec![0usize; bins];
    for i in 0..n_vec - 1 {
        let (a, b) = (&x[i..i + dim], &x[i + 1..i + 1 + dim]);
        let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
        let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        // A zero vector has no direction: count it as orthogonal.
        let cos = if na > 0.0 && nb > 0.0 {
            (dot / (na * nb)).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let k = (((cos + 1.0) / 2.0 * bins as f64) as usize).min(bins - 1);
        counts[k] += 1;
    }
    let total = (n_vec - 1) as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.ln()
        })
        .sum();
    h / (bins as f64).ln()
}

/// The moving average of width `w` (length `x.len() - w + 1`).
fn moving_average(x: &[f64], w: usize) -> Vec<f64> {
    x.windows(w)
        .map(|win| win.iter().sum::<f64>() / w as f64)
        .collect()
}

/// DE at every scale `1..=scales` that leaves enough values (shorter texts get fewer).
pub fn multiscale_diversity_entropy(x: &[f64], c: &LastdeConfig) -> Vec<f64> {
    (1..=c.scales)
        .take_while(|&w| x.len() >= w + c.dim)
        .map(|w| diversity_entropy(&moving_average(x, w), c.dim, c.bins))
        .collect()
}

/// `mean(logprobs) / std(MDE(logprobs))`; NaN when there are fewer than two scales or
/// the MDE does not vary.
pub fn lastde(logprobs: &[f64], c: &LastdeConfig) -> f64 {
    if logprobs.is_empty() {
        return f64::NAN;
    }
    let mde = multiscale_diversity_entropy(logprobs, c);
    let sd = std_dev(&mde);
    let mean = logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    if sd > 0.0 {
        mean / sd
    } else {
        f64::NAN
    }
}

/// Lastde++: `(lastde(observed) - mean) / sd` of `lastde` over `samples` (sequences
/// of the log-probabilities of sampled tokens, each as long as `observed`).
pub fn lastde_pp(observed: &[f64], samples: &[Vec<f64>], c: &LastdeConfig) -> f64 {
    let values: Vec<f64> = samples
        .iter()
        .map(|s| lastde(s, c))
        .filter(|v| v.is_finite())
        .collect();
    if values.len() < 2 {
        return f64::NAN;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let sd = std_dev(&values);
    if sd > 0.0 {
        (lastde(observed, c) - mean) / sd
    } else {
        f64::NAN
    }
}

/// Sample standard deviation (n - 1); NaN below two values.
fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 || v.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Draws `k` token log-probabilities from one position's distribution, for Lastde++:
/// `logprobs` are the log-softmax of the logits; `uniforms` give one number in [0, 1)
/// per draw (inverse-CDF sampling, so a fixed generator makes the result repeatable).
pub fn sample_logprobs(logprobs: &[f32], uniforms: &[f64], out: &mut Vec<f64>) {
    out.clear();
    // The CDF once, then a binary search per draw.
    let mut cdf = Vec::with_capacity(logprobs.len());
    let mut acc = 0f64;
    for &lp in logprobs {
        acc += f64::from(lp).exp();
        cdf.push(acc);
    }
    for &u in uniforms {
        let target = u * acc;
        let i = cdf
            .partition_point(|&c| c <= target)
            .min(logprobs.len() - 1);
        out.push(f64::from(logprobs[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diversity_entropy_bounds_and_extremes() {
        let c = LastdeConfig::default();
        // A constant sequence: every neighbouring pair is identical (cos 1): DE 0.
        let flat = vec![-2.0; 50];
        assert_eq!(diversity_entropy(&flat, c.dim, c.bins), 0.0);
        // Noise spreads the similarities: DE well above 0, never above 1.
        let mut state = 12345u64;
        let noise: Vec<f64> = (0..400)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        let de = diversity_entropy(&noise, c.dim, c.bins);
        assert!(de > 0.5 && de <= 1.0, "{de}");
        assert!(diversity_entropy(&[1.0, 2.0], 3, 10).is_nan(), "too short");
    }

    #[test]
    fn hand_computed_diversity_entropy() {
        // dim 1: vectors are single values; cos = sign agreement (+1 or -1).
        // x = [1, -1, 1, 1]: pairs (1,-1) -1, (-1,1) -1, (1,1) +1 -> bins 0 and 1
        // (of 2) with 2/3 and 1/3: H = -(2/3 ln 2/3 + 1/3 ln 1/3) / ln 2.
        let de = diversity_entropy(&[1.0, -1.0, 1.0, 1.0], 1, 2);
        let expected =
            -((2.0f64 / 3.0) * (2.0f64 / 3.0).ln() + (1.0 / 3.0) * (1.0f64 / 3.0).ln()) / 2f64.ln();
        assert!((de - expected).abs() < 1e-12, "{de} vs {expected}");
    }

    #[test]
    fn multiscale_shortens_with_the_text() {
        let c = LastdeConfig::default();
        let x: Vec<f64> = (0..40).map(|i| -((i % 7) as f64) - 0.5).collect();
        assert_eq!(multiscale_diversity_entropy(&x, &c).len(), 15);
        assert_eq!(multiscale_diversity_entropy(&x[..10], &c).len(), 7);
        let l = lastde(&x, &c);
        assert!(l.is_finite() && l < 0.0, "log-probs are negative: {l}");
    }

    #[test]
    fn lastde_pp_standardises_against_samples() {
        let c = LastdeConfig::default();
        // Log-probabilities spread like real text's (near 0 for easy tokens, down to
        // -8 for surprising ones): neighbouring vectors point in different directions.
        let mut state = 99u64;
        let base: Vec<f64> = (0..80)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                -0.01 - 8.0 * u * u * u
            })
            .collect();
        // Samples: the same shape shifted down (less likely) by various amounts.
        let samples: Vec<Vec<f64>> = (1..=20)
            .map(|k| base.iter().map(|v| v - 0.1 * k as f64).collect())
            .collect();
        let z = lastde_pp(&base, &samples, &c);
        assert!(
            z.is_finite() && z > 0.0,
            "more likely than every sample: {z}"
        );
        assert!(lastde_pp(&base, &samples[..1], &c).is_nan());
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let lp: Vec<f32> = [0.5f32, 0.25, 0.25].iter().map(|p| p.ln()).collect();
        let uniforms: Vec<f64> = (0..1000).map(|i| (i as f64 + 0.5) / 1000.0).collect();
        let mut out = Vec::new();
        sample_logprobs(&lp, &uniforms, &mut out);
        let first = out
            .iter()
            .filter(|&&v| (v - 0.5f64.ln()).abs() < 1e-6)
            .count();
        assert!((first as f64 / 1000.0 - 0.5).abs() < 0.01, "{first}");
    }
}
