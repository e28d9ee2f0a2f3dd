//! Sampler settings and the error type.

use std::fmt;

/// Settings of the default processor chain.
///
/// `Default` is the model's own distribution, untouched: temperature 1 and
/// every truncation and penalty off, so a draw is exactly a sample from
/// `softmax(logits)`. Nothing is silently reshaped (llama.cpp's CLI defaults
/// of top-k 40 / top-p 0.95 / temp 0.8 are a UI choice, not a neutral one);
/// callers that want reproducible argmax decoding use [`SamplerConfig::greedy`].
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits before the final softmax. `<= 0` (in practice `0`)
    /// means greedy decoding: argmax, no randomness. Must not be NaN,
    /// negative or infinite.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose cumulative
    /// probability reaches `top_p`; `1.0` = off. Must lie in `(0, 1]`.
    pub top_p: f32,
    /// Drop tokens with probability below `min_p * p_max`; `0` = off.
    /// Must lie in `[0, 1)`.
    pub min_p: f32,
    /// Seed of the sampler's RNG; same seed + same logits = same tokens.
    pub seed: u64,
    /// Repetition penalty (llama.cpp semantics: a positive logit of a recent
    /// token is divided by it, a non-positive one multiplied); `1.0` = off.
    /// Must be finite and `> 0`.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the penalty looks at;
    /// `0` = off (as in llama.cpp), `usize::MAX` = the whole history.
    pub repeat_last_n: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
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

    /// True when sampling picks the argmax instead of drawing.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks every field; the first bad one is reported.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |field, value, expected| {
            Err(SampleError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        let t = self.temperature;
        if t.is_nan() || t.is_infinite() || t < 0.0 {
            return bad(
                "temperature",
                t,
                "a finite number >= 0 (0 = greedy, 1 = unchanged)",
            );
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return bad("top_p", p, "a number in (0, 1] (1 = off)");
        }
        let m = self.min_p;
        if !(0.0..1.0).contains(&m) {
            return bad("min_p", m, "a number in [0, 1) (0 = off)");
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return bad("repeat_penalty", r, "a finite number > 0 (1 = off)");
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
                "unknown sampler processor {name:?}; known: {}",
                crate::processors::PROCESSOR_NAMES.join(", ")
            ),
        }
    }
}

impl std::error::Error for SampleError {}
