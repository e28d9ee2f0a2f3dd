//! What [`crate::Sampler::sample_with_report`] says about one token: the
//! token's statistics under the model's own distribution, and how much of
//! that distribution each stage of the chain cut away.

use crate::stats::TokenReport;

/// One stage's effect, measured in probability mass of the model's own
/// distribution (temperature 1, before any stage), so stages are
/// comparable: a stage that removes tokens worth 3 % of the model's belief
/// reports `0.03`, whatever the stages before it did to the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    /// The stage's registry name (or `"greedy"` for greedy decoding's final
    /// argmax).
    pub name: &'static str,
    /// Original probability mass of the candidates this stage removed (or
    /// masked to `-inf`); `0` for stages that only reshape.
    pub removed_mass: f64,
    /// Candidates still viable (logit above `-inf`) after the stage.
    pub kept: usize,
    /// Original probability mass of those candidates.
    pub kept_mass: f64,
    /// A value the stage chose, if it reports one: the temperature
    /// entropy-adaptive temperature used, mirostat's `mu` (before this
    /// token's update), eta's threshold.
    pub state: Option<(&'static str, f32)>,
}

/// Telemetry of one sampled token; see [`crate::Sampler::sample_with_report`].
#[derive(Clone, Debug, PartialEq)]
pub struct SampleReport {
    /// The chosen token under the model's own distribution: log-probability,
    /// rank, entropy (nats and bits), varentropy, top alternatives.
    pub token: TokenReport,
    /// Every stage that ran, in order. Greedy decoding skips the stages that
    /// cannot change the argmax and ends with a `"greedy"` stage that removes
    /// everything but the chosen token.
    pub stages: Vec<StageReport>,
    /// Probability of the token under the (truncated, reshaped,
    /// renormalised) distribution it was actually drawn from; 1 for greedy.
    pub sampled_prob: f64,
}

impl SampleReport {
    /// Total original mass the chain removed: `1 - kept_mass()`, up to
    /// rounding.
    pub fn removed_mass(&self) -> f64 {
        self.stages.iter().map(|s| s.removed_mass).sum()
    }

    /// Original mass of the final candidates (1 if no stage ran).
    pub fn kept_mass(&self) -> f64 {
        self.stages.last().map_or(1.0, |s| s.kept_mass)
    }

    /// Surprise of the token under the distribution it was drawn from, in
    /// bits (`-log2 sampled_prob`): the quantity mirostat steers to tau.
    pub fn sampled_surprise_bits(&self) -> f64 {
        -self.sampled_prob.log2()
    }
}
