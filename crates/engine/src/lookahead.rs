//! Uncertainty-guided lookahead decoding (AdaDec, "Adaptive Decoding via Uncertainty-
//! Guided Lookahead"): decode greedily, but where the next-token distribution is
//! uncertain (entropy above a threshold) pause, extend each of the `top_k` most likely
//! tokens into a `depth`-token sequence by greedy decoding, and keep the candidate whose
//! sequence is most likely. Confident steps cost nothing extra; a pause costs
//! `top_k * (depth - 1)` single-token forward passes, and the KV cache is rolled back
//! after each candidate, so the text that follows is computed as if no lookahead had
//! happened.

use crate::{EngineError, Result};

/// When to pause and how far to look.
#[derive(Clone, Debug, PartialEq)]
pub struct LookaheadConfig {
    /// Pause when the entropy of the next-token distribution (nats, temperature 1)
    /// exceeds this.
    pub entropy_threshold: f32,
    /// Candidates expanded at a pause (the most likely ones).
    pub top_k: usize,
    /// Tokens per candidate sequence, the candidate included: the candidate plus
    /// `depth - 1` greedy tokens, each sequence scored by the sum of its `depth`
    /// log-probabilities.
    pub depth: usize,
}

impl LookaheadConfig {
    pub fn validate(&self) -> Result<()> {
        if !self.entropy_threshold.is_finite() || self.entropy_threshold < 0.0 {
            return Err(EngineError::Invalid(format!(
                "the lookahead entropy threshold must be a finite number >= 0 (got {})",
                self.entropy_threshold
            )));
        }
        if self.top_k < 2 {
            return Err(EngineError::Invalid(format!(
                "lookahead needs at least 2 candidates (got top-k {})",
                self.top_k
            )));
        }
        if self.depth == 0 {
            return Err(EngineError::Invalid(
                "the lookahead depth must be at least 1 token".into(),
            ));
        }
        Ok(())
    }
}

/// The entropy threshold that a fraction `quantile` of the given per-token entropies
/// lies at or below (linear interpolation between order statistics, like numpy's
/// default): calibrating on a text the model reads, a quantile of 0.9 pauses at about
/// the 10% most uncertain steps.
pub fn entropy_quantile(entropies: &[f32], quantile: f64) -> Result<f32> {
    if !(0.0..=1.0).contains(&quantile) {
        return Err(EngineError::Invalid(format!(
            "the calibration quantile must lie in [0, 1] (got {quantile})"
        )));
    }
    let mut v: Vec<f32> = entropies
        .iter()
        .copied()
        .filter(|e| e.is_finite())
        .collect();
    if v.is_empty() {
        return Err(EngineError::Invalid(
            "no entropies to calibrate the lookahead threshold on".into(),
        ));
    }
    v.sort_by(f32::total_cmp);
    let pos = quantile * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = (pos - lo as f64) as f32;
    Ok(v[lo] + (v[hi] - v[lo]) * frac)
}

/// What lookahead cost in one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LookaheadStats {
    /// Steps whose entropy exceeded the threshold.
    pub pauses: usize,
    /// Pauses where the chosen token differs from the greedy one.
    pub changed: usize,
    /// Extra single-token forward passes.
    pub forwards: usize,
    /// Seconds spent in them.
    pub secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let e = [4.0, 1.0, 3.0, 2.0, f32::NAN];
        assert_eq!(entropy_quantile(&e, 0.0).unwrap(), 1.0);
        assert_eq!(entropy_quantile(&e, 1.0).unwrap(), 4.0);
        assert_eq!(entropy_quantile(&e, 0.5).unwrap(), 2.5);
        // numpy.quantile([1, 2, 3, 4], 0.9) == 3.7
        assert!((entropy_quantile(&e, 0.9).unwrap() - 3.7).abs() < 1e-6);
        assert!(entropy_quantile(&e, 1.5).is_err());
        assert!(entropy_quantile(&[], 0.5).is_err());
    }

    #[test]
    fn bad_settings_are_rejected() {
        let ok = LookaheadConfig {
            entropy_threshold: 1.0,
            top_k: 3,
            depth: 4,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            LookaheadConfig {
                entropy_threshold: -1.0,
                ..ok.clone()
            },
            LookaheadConfig {
                entropy_threshold: f32::NAN,
                ..ok.clone()
            },
            LookaheadConfig {
                top_k: 1,
                ..ok.clone()
            },
            LookaheadConfig {
                depth: 0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
