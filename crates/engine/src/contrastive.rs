//! Uncertainty-aware selective contrastive decoding (USCD): where the model is unsure
//! (entropy of its next-token distribution above a threshold), subtract a weighted
//! log-distribution computed from a "lame" context, the same prompt with its few-shot
//! examples removed, so tokens the model would predict anyway without the examples lose
//! weight; elsewhere decode normally.
//!
//! As in contrastive decoding (Li et al., 2023), only tokens the model itself finds
//! plausible compete: a token whose probability is below `plausibility` times the
//! most likely token's is excluded before the contrast, so the subtraction cannot
//! promote a token the model considers implausible.
//!
//! The lame context lives in its own KV cache and is brought up to date lazily: only
//! at an uncertain step are the tokens generated since its last use computed, in one
//! batch.

use crate::{EngineError, Result};

/// Settings of selective contrastive decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct ContrastiveConfig {
    /// The lame prompt (e.g. the prompt without its few-shot examples), tokenised.
    pub lame_prompt: Vec<u32>,
    /// Weight of the lame log-distribution: `score = log p - alpha * log p_lame`.
    pub alpha: f32,
    /// Contrast only at steps whose entropy (nats) exceeds this.
    pub entropy_threshold: f32,
    /// Tokens with `p < plausibility * max p` are excluded at contrasted steps.
    pub plausibility: f32,
}

impl ContrastiveConfig {
    pub fn validate(&self) -> Result<()> {
        if self.lame_prompt.is_empty() {
            return Err(EngineError::Invalid(
                "contrastive decoding needs a non-empty lame prompt".into(),
            ));
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return Err(EngineError::Invalid(format!(
                "the contrastive weight alpha must be a finite number >= 0 (got {})",
                self.alpha
            )));
        }
        if !self.entropy_threshold.is_finite() || self.entropy_threshold < 0.0 {
            return Err(EngineError::Invalid(format!(
                "the contrastive entropy threshold must be a finite number >= 0 (got {})",
                self.entropy_threshold
            )));
        }
        if !(0.0..=1.0).contains(&self.plausibility) {
            return Err(EngineError::Invalid(format!(
                "the plausibility cut must lie in [0, 1] (got {})",
                self.plausibility
            )));
        }
        Ok(())
    }
}

/// What contrastive decoding did in one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContrastiveStats {
    /// Steps whose entropy exceeded the threshold.
    pub contrasted: usize,
    /// Contrasted steps whose greedy token changed.
    pub changed: usize,
    /// Tokens computed in the lame context (its prompt included).
    pub lame_tokens: usize,
    pub secs: f64,
}

/// Replaces `logits` (the model's, which become scores for the sampler) by the
/// contrast `log p - alpha * log p_lame` over the plausible tokens and `-inf`
/// elsewhere. `logprobs` and `lame_logprobs` are the two log-softmaxes.
// logits, logprobs, lame_logprobs: [vocab]
pub fn contrast_in_place(
    logits: &mut [f32],
    logprobs: &[f32],
    lame_logprobs: &[f32],
    alpha: f32,
    plausibility: f32,
) {
    let max = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let cut = if plausibility > 0.0 {
        max + plausibility.ln()
    } else {
        f32::NEG_INFINITY
    };
    for ((l, &lp), &lame) in logits.iter_mut().zip(logprobs).zip(lame_logprobs) {
        *l = if lp >= cut && lp.is_finite() {
            lp - alpha * lame
        } else {
            f32::NEG_INFINITY
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrast_demotes_what_the_lame_context_also_predicts() {
        // p = [0.5, 0.3, 0.19, 0.01]; the lame context strongly predicts token 0.
        let p = [0.5f32, 0.3, 0.19, 0.01];
        let lame = [0.9f32, 0.05, 0.04, 0.01];
        let lp: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let llp: Vec<f32> = lame.iter().map(|x| x.ln()).collect();
        let mut logits = vec![0.0; 4];
        contrast_in_place(&mut logits, &lp, &llp, 0.5, 0.1);
        // Token 3 is below 0.1 * 0.5: excluded.
        assert_eq!(logits[3], f32::NEG_INFINITY);
        for i in 0..3 {
            assert!((logits[i] - (lp[i] - 0.5 * llp[i])).abs() < 1e-6);
        }
        // Token 1 now beats token 0.
        assert!(logits[1] > logits[0]);
        // alpha 0 is the model itself over the plausible set.
        contrast_in_place(&mut logits, &lp, &llp, 0.0, 0.0);
        assert_eq!(logits, lp);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let ok = ContrastiveConfig {
            lame_prompt: vec![1, 2],
            alpha: 0.5,
            entropy_threshold: 1.0,
            plausibility: 0.1,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            ContrastiveConfig {
                lame_prompt: vec![],
                ..ok.clone()
            },
            ContrastiveConfig {
                alpha: -1.0,
                ..ok.clone()
            },
            ContrastiveConfig {
                entropy_threshold: f32::INFINITY,
                ..ok.clone()
            },
            ContrastiveConfig {
                plausibility: 1.5,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
