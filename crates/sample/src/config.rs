//! Sampler settings and the error type.

use std::fmt;

use crate::processors::{canonical_name, DEFAULT_CHAIN};

/// `repeat_last_n` / `dry_penalty_last_n` value meaning "the whole history"
/// (llama.cpp's `-1`, which it resolves to the context size).
pub const WHOLE_HISTORY: usize = usize::MAX;

/// Sampler settings: every parameter of every stage, plus the chain itself.
///
/// Field names and meanings follow llama.cpp's `common_params_sampling`
/// (flag names in brackets). `Default` is the model's own distribution,
/// untouched: temperature 1 and every truncation and penalty off, so a draw is
/// exactly a sample from `softmax(logits)`. Nothing is silently reshaped
/// (llama.cpp's CLI defaults of top-k 40 / top-p 0.95 / min-p 0.05 / temp 0.8
/// are a UI choice, not a neutral one); callers that want reproducible argmax
/// decoding use [`SamplerConfig::greedy`]. The off-values of the other
/// settings are llama.cpp's defaults.
///
/// Which stages run, and in which order, is [`SamplerConfig::samplers`]
/// (llama.cpp's `--samplers`), except that a non-empty `logit_bias` always
/// runs first and `mirostat` 1 or 2 replaces the chain with
/// logit bias -> penalties -> temperature -> mirostat, as llama.cpp does.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits before the final softmax (`--temp`). `<= 0` (in
    /// practice `0`) means greedy decoding: argmax, no randomness. Must be
    /// finite and `>= 0`.
    pub temperature: f32,
    /// Entropy-adaptive temperature (`--dynatemp-range`): when `> 0`, the
    /// temperature stage uses a temperature between `temperature - range`
    /// (at least 0) and `temperature + range`, rising with the normalised
    /// entropy of the candidates. `0` = off. Must be finite and `>= 0`.
    pub dynatemp_range: f32,
    /// Shape of the entropy-to-temperature map (`--dynatemp-exp`): the
    /// normalised entropy is raised to this power. Must be finite and `>= 0`.
    pub dynatemp_exponent: f32,
    /// Keep only the `top_k` most likely tokens (`--top-k`); `0` = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose cumulative
    /// probability reaches `top_p` (`--top-p`); `1.0` = off. In `(0, 1]`.
    pub top_p: f32,
    /// Drop tokens with probability below `min_p * p_max` (`--min-p`);
    /// `0` = off. In `[0, 1)`.
    pub min_p: f32,
    /// Locally typical sampling (`--typical`, Meister et al. 2022): keep the
    /// tokens whose surprisal is closest to the entropy until their mass
    /// exceeds `typical_p`. `1.0` = off. In `(0, 1]`.
    pub typical_p: f32,
    /// Top-n-sigma (`--top-n-sigma`): keep tokens whose logit is within
    /// `top_n_sigma` standard deviations of the largest. `<= 0` = off
    /// (llama.cpp's default is -1). Must be finite.
    pub top_n_sigma: f32,
    /// Epsilon sampling (Hewitt et al. 2022): drop tokens with probability
    /// below `epsilon`. `0` = off. In `[0, 1)`. Not in llama.cpp: it runs
    /// only if `"epsilon"` is named in `samplers` (validation says so).
    pub epsilon: f32,
    /// Eta sampling (Hewitt et al. 2022): drop tokens with probability below
    /// `min(eta, sqrt(eta) * exp(-H))`, `H` the entropy in nats. `0` = off.
    /// In `[0, 1)`. Like `epsilon`, it must be named in `samplers`.
    pub eta: f32,
    /// XTC, "exclude top choices" (`--xtc-probability`): with this
    /// probability per token, remove every token above `xtc_threshold`
    /// except the least likely of them. `0` = off. In `[0, 1]`.
    pub xtc_probability: f32,
    /// XTC threshold (`--xtc-threshold`); above 0.5 XTC is off (at most one
    /// token can exceed it). In `[0, 1]`.
    pub xtc_threshold: f32,
    /// Mirostat (`--mirostat`): 0 = off, 1 = Mirostat (v1, m = 100),
    /// 2 = Mirostat 2.0. When on, it replaces the sampler chain (see above).
    pub mirostat: u8,
    /// Mirostat's target surprise in bits (`--mirostat-ent`). Finite, `> 0`.
    pub mirostat_tau: f32,
    /// Mirostat's learning rate (`--mirostat-lr`; llama.cpp's
    /// `mirostat_eta`). Finite, `> 0`.
    pub mirostat_lr: f32,
    /// Seed of the sampler's RNG; same seed + same logits = same tokens.
    pub seed: u64,
    /// Repetition penalty (`--repeat-penalty`): a positive logit of a recent
    /// token is divided by it, a non-positive one multiplied; `1.0` = off.
    /// Finite and `> 0`.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the penalties look at
    /// (`--repeat-last-n`); `0` = off, [`WHOLE_HISTORY`] = all of it.
    pub repeat_last_n: usize,
    /// Frequency penalty (`--frequency-penalty`): subtracts
    /// `count * frequency_penalty` from a token seen `count` times in the
    /// window. `0` = off. Finite.
    pub frequency_penalty: f32,
    /// Presence penalty (`--presence-penalty`): subtracts it once from every
    /// token seen in the window. `0` = off. Finite.
    pub presence_penalty: f32,
    /// DRY ("don't repeat yourself", `--dry-multiplier`): a token that would
    /// extend a repeat of length `L >= dry_allowed_length` loses
    /// `multiplier * base^(L - allowed_length)`. `0` = off. Finite, `>= 0`.
    pub dry_multiplier: f32,
    /// DRY base (`--dry-base`). Finite, `>= 1`.
    pub dry_base: f32,
    /// Repeats up to this length go unpunished (`--dry-allowed-length`).
    pub dry_allowed_length: usize,
    /// How many recent tokens DRY scans (`--dry-penalty-last-n`); `0` = off,
    /// [`WHOLE_HISTORY`] (llama.cpp's -1) = all of them.
    pub dry_penalty_last_n: usize,
    /// DRY sequence breakers as token sequences: a repeat never extends
    /// across one. llama.cpp takes strings (default `\n`, `:`, `"`, `*`,
    /// [`crate::DEFAULT_DRY_SEQUENCE_BREAKERS`]); turn them into token
    /// sequences with [`crate::dry_sequence_breakers`] and the tokenizer.
    pub dry_sequence_breakers: Vec<Vec<u32>>,
    /// Added to the logits of the given tokens before anything else
    /// (`--logit-bias`); `-inf` bans a token. Entries for the same token add
    /// up; ids outside the vocabulary are ignored. Each bias must be finite
    /// or `-inf`.
    pub logit_bias: Vec<(u32, f32)>,
    /// The chain, by name, in order (`--samplers`, e.g. from
    /// [`crate::parse_sampler_list`]); llama.cpp's aliases are accepted.
    /// Defaults to [`DEFAULT_CHAIN`]. Must not be empty.
    pub samplers: Vec<String>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            top_n_sigma: -1.0,
            epsilon: 0.0,
            eta: 0.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_lr: 0.1,
            seed: 0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: WHOLE_HISTORY,
            dry_sequence_breakers: Vec::new(),
            logit_bias: Vec::new(),
            samplers: DEFAULT_CHAIN.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: temperature 0, everything else default (off).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// True when sampling picks the argmax instead of drawing: temperature
    /// `<= 0` and no entropy-adaptive range that could lift it above 0.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 && !(self.dynatemp_range > 0.0 && self.mirostat == 0)
    }

    /// True if the chain contains the stage `name` (aliases resolved).
    pub(crate) fn has_stage(&self, name: &str) -> bool {
        self.samplers
            .iter()
            .any(|s| canonical_name(s) == Some(name))
    }

    /// Checks every field; the first bad one is reported, in one line that
    /// names the field, the value and what would be accepted.
    pub fn validate(&self) -> Result<(), SampleError> {
        self.validate_values()?;
        self.validate_chain()
    }

    /// The chain checks of [`SamplerConfig::validate`]: `samplers` is not
    /// empty, every name is known, and epsilon/eta are not set without
    /// their stage.
    fn validate_chain(&self) -> Result<(), SampleError> {
        if self.samplers.is_empty() {
            return Err(SampleError::EmptyChain);
        }
        if let Some(unknown) = self.samplers.iter().find(|s| canonical_name(s).is_none()) {
            return Err(SampleError::UnknownProcessor(unknown.clone()));
        }
        // Epsilon and eta have no place in llama.cpp's chain, so there is no
        // default position to put them in: ask rather than silently ignore.
        if self.mirostat == 0 {
            if self.epsilon > 0.0 && !self.has_stage("epsilon") {
                return Err(SampleError::StageNotInChain {
                    field: "epsilon",
                    stage: "epsilon",
                });
            }
            if self.eta > 0.0 && !self.has_stage("eta") {
                return Err(SampleError::StageNotInChain {
                    field: "eta",
                    stage: "eta",
                });
            }
        }
        Ok(())
    }

    /// The value checks of [`SamplerConfig::validate`] (every field but the
    /// chain).
    pub(crate) fn validate_values(&self) -> Result<(), SampleError> {
        let bad = |field, value, expected| {
            Err(SampleError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        let finite_at_least = |x: f32, min: f32| x.is_finite() && x >= min;
        let t = self.temperature;
        if !finite_at_least(t, 0.0) {
            return bad(
                "temperature",
                t,
                "a finite number >= 0 (0 = greedy, 1 = unchanged)",
            );
        }
        if !finite_at_least(self.dynatemp_range, 0.0) {
            return bad(
                "dynatemp_range",
                self.dynatemp_range,
                "a finite number >= 0 (0 = off)",
            );
        }
        if !finite_at_least(self.dynatemp_exponent, 0.0) {
            return bad(
                "dynatemp_exponent",
                self.dynatemp_exponent,
                "a finite number >= 0 (1 = linear)",
            );
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return bad("top_p", p, "a number in (0, 1] (1 = off)");
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "a number in [0, 1) (0 = off)");
        }
        let y = self.typical_p;
        if !(y > 0.0 && y <= 1.0) {
            return bad("typical_p", y, "a number in (0, 1] (1 = off)");
        }
        if !self.top_n_sigma.is_finite() {
            return bad(
                "top_n_sigma",
                self.top_n_sigma,
                "a finite number (<= 0 = off)",
            );
        }
        if !(0.0..1.0).contains(&self.epsilon) {
            return bad("epsilon", self.epsilon, "a number in [0, 1) (0 = off)");
        }
        if !(0.0..1.0).contains(&self.eta) {
            return bad("eta", self.eta, "a number in [0, 1) (0 = off)");
        }
        if !(0.0..=1.0).contains(&self.xtc_probability) {
            return bad(
                "xtc_probability",
                self.xtc_probability,
                "a number in [0, 1] (0 = off)",
            );
        }
        if !(0.0..=1.0).contains(&self.xtc_threshold) {
            return bad(
                "xtc_threshold",
                self.xtc_threshold,
                "a number in [0, 1] (> 0.5 = off)",
            );
        }
        if self.mirostat > 2 {
            return bad(
                "mirostat",
                f32::from(self.mirostat),
                "0 (off), 1 (Mirostat) or 2 (Mirostat 2.0)",
            );
        }
        if !(self.mirostat_tau.is_finite() && self.mirostat_tau > 0.0) {
            return bad(
                "mirostat_tau",
                self.mirostat_tau,
                "a finite number > 0 (target surprise in bits)",
            );
        }
        if !(self.mirostat_lr.is_finite() && self.mirostat_lr > 0.0) {
            return bad(
                "mirostat_lr",
                self.mirostat_lr,
                "a finite number > 0 (learning rate)",
            );
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return bad("repeat_penalty", r, "a finite number > 0 (1 = off)");
        }
        if !self.frequency_penalty.is_finite() {
            return bad(
                "frequency_penalty",
                self.frequency_penalty,
                "a finite number (0 = off)",
            );
        }
        if !self.presence_penalty.is_finite() {
            return bad(
                "presence_penalty",
                self.presence_penalty,
                "a finite number (0 = off)",
            );
        }
        if !finite_at_least(self.dry_multiplier, 0.0) {
            return bad(
                "dry_multiplier",
                self.dry_multiplier,
                "a finite number >= 0 (0 = off)",
            );
        }
        if !finite_at_least(self.dry_base, 1.0) {
            return bad("dry_base", self.dry_base, "a finite number >= 1");
        }
        if let Some(&(_, b)) = self
            .logit_bias
            .iter()
            .find(|&&(_, b)| b.is_nan() || b == f32::INFINITY)
        {
            return bad("logit_bias", b, "a finite bias, or -inf to ban the token");
        }
        Ok(())
    }
}

/// Why a token could not be sampled, or a sampler not built.
#[derive(Clone, Debug, PartialEq)]
pub enum SampleError {
    /// The logits row was empty.
    EmptyLogits,
    /// Every logit was `-inf` or NaN (or a processor removed every
    /// candidate): there is no distribution to sample from.
    NoViableToken,
    /// A configuration field is out of range.
    InvalidConfig {
        /// Name of the field in [`SamplerConfig`].
        field: &'static str,
        /// The rejected value.
        value: f32,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A processor name not known to [`crate::processor_from_name`].
    UnknownProcessor(String),
    /// `samplers` names no stage at all.
    EmptyChain,
    /// A setting is on but the stage that would apply it is not in the
    /// chain (only for stages llama.cpp's default chain lacks).
    StageNotInChain {
        /// Name of the field in [`SamplerConfig`].
        field: &'static str,
        /// The stage to add to `samplers`.
        stage: &'static str,
    },
    /// A forced token id outside the vocabulary.
    TokenOutOfRange { token: u32, n_vocab: usize },
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleError::EmptyLogits => write!(f, "cannot sample from an empty logits row"),
            SampleError::NoViableToken => write!(
                f,
                "no token can be sampled: every logit is -inf or NaN (or all were filtered out)"
            ),
            SampleError::InvalidConfig {
                field,
                value,
                expected,
            } => write!(
                f,
                "invalid sampler setting {field} = {value}: expected {expected}"
            ),
            SampleError::UnknownProcessor(name) => write!(
                f,
                "unknown sampler {name:?}; known: {}",
                crate::processors::PROCESSOR_NAMES.join(", ")
            ),
            SampleError::EmptyChain => write!(
                f,
                "the sampler chain is empty: name at least one sampler (llama.cpp's default is {})",
                DEFAULT_CHAIN.join(";")
            ),
            SampleError::StageNotInChain { field, stage } => write!(
                f,
                "sampler setting {field} is set but the chain has no {stage:?} stage: \
                 add it to the samplers list (e.g. after min_p)"
            ),
            SampleError::TokenOutOfRange { token, n_vocab } => write!(
                f,
                "token id {token} is outside the vocabulary ({n_vocab} tokens)"
            ),
        }
    }
}

impl std::error::Error for SampleError {}
