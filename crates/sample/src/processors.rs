//! Logits processors: the steps of the sampling chain.
//!
//! Each processor is a small named type implementing [`LogitsProcessor`] and
//! working in place on a [`Candidates`] buffer. The sampler runs them in order
//! and then draws from the softmax of whatever is left. A new sampler
//! (mirostat, locally typical, eta/epsilon, entropy-adaptive temperature...)
//! is one more type here plus one line in [`processor_from_name`].
//!
//! Every truncating processor keeps at least one candidate, so a chain never
//! empties a row that had a finite logit.

use crate::candidates::Candidates;
use crate::config::{SampleError, SamplerConfig};

/// What a processor may look at besides the candidates. A struct rather than
/// loose arguments so later needs (e.g. a grammar state) add a field instead
/// of changing every processor.
#[derive(Clone, Copy, Debug)]
pub struct SampleContext<'a> {
    /// Tokens generated (and prompted) so far, oldest first.
    pub history: &'a [u32],
}

impl<'a> SampleContext<'a> {
    /// A context over `history`.
    pub fn new(history: &'a [u32]) -> Self {
        SampleContext { history }
    }
}

/// One step of the sampling chain.
pub trait LogitsProcessor: Send {
    /// Stable name, as used by [`processor_from_name`].
    fn name(&self) -> &'static str;

    /// Narrows or reshapes the candidates in place.
    fn process(&mut self, cands: &mut Candidates, ctx: &SampleContext<'_>);

    /// True if this processor can never change which candidate is the
    /// argmax (truncations that keep the best token, temperature). Greedy
    /// decoding skips such processors: they cannot change its answer, and
    /// skipping them spares a sort of the whole vocabulary per token.
    fn preserves_argmax(&self) -> bool {
        false
    }

    /// Called with the chosen token and the final candidates, for stateful
    /// samplers (mirostat updates its target surprise here).
    fn accept(&mut self, _token: u32, _cands: &Candidates) {}

    /// Forgets per-sequence state (a new generation starts).
    fn reset(&mut self) {}
}

/// Names of every processor [`processor_from_name`] knows.
pub const PROCESSOR_NAMES: &[&str] = &[
    RepetitionPenalty::NAME,
    TopK::NAME,
    TopP::NAME,
    MinP::NAME,
    Temperature::NAME,
];

/// llama.cpp's default order: penalties, then truncations from the coarsest
/// (top-k, cheap and shrinks the set the later ones sort) to the finest, and
/// temperature last so the truncations see the model's own probabilities.
pub const DEFAULT_CHAIN: &[&str] = &[
    RepetitionPenalty::NAME,
    TopK::NAME,
    TopP::NAME,
    MinP::NAME,
    Temperature::NAME,
];

/// Builds the processor called `name`, configured from `config`.
pub fn processor_from_name(
    name: &str,
    config: &SamplerConfig,
) -> Result<Box<dyn LogitsProcessor>, SampleError> {
    Ok(match name {
        RepetitionPenalty::NAME => Box::new(RepetitionPenalty::new(
            config.repeat_penalty,
            config.repeat_last_n,
        )),
        TopK::NAME => Box::new(TopK::new(config.top_k)),
        TopP::NAME => Box::new(TopP::new(config.top_p)),
        MinP::NAME => Box::new(MinP::new(config.min_p)),
        Temperature::NAME => Box::new(Temperature::new(config.temperature)),
        other => return Err(SampleError::UnknownProcessor(other.to_owned())),
    })
}

/// Penalises tokens seen in the last `last_n` history tokens, the way
/// llama.cpp's `penalty_repeat` does: a positive logit is divided by
/// `penalty`, a non-positive one multiplied, so with `penalty > 1` a repeated
/// token always becomes less likely. Each distinct token is penalised once,
/// however often it repeats.
#[derive(Clone, Debug)]
pub struct RepetitionPenalty {
    penalty: f32,
    last_n: usize,
    /// Sorted distinct tokens of the window (scratch, reused).
    window: Vec<u32>,
}

impl RepetitionPenalty {
    /// Registry name.
    pub const NAME: &'static str = "repetition_penalty";

    /// `penalty` 1 or `last_n` 0 turns it off.
    pub fn new(penalty: f32, last_n: usize) -> Self {
        RepetitionPenalty {
            penalty,
            last_n,
            window: Vec::new(),
        }
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, ctx: &SampleContext<'_>) {
        if self.penalty == 1.0 || self.last_n == 0 || ctx.history.is_empty() {
            return;
        }
        let h = ctx.history;
        let start = h.len().saturating_sub(self.last_n);
        self.window.clear();
        self.window.extend_from_slice(&h[start..]);
        self.window.sort_unstable();
        self.window.dedup();
        let penalty = self.penalty;
        cands.update_ids(&self.window, |l| {
            if *l <= 0.0 {
                *l *= penalty;
            } else {
                *l /= penalty;
            }
        });
    }
}

/// Keeps the `k` most likely candidates (`0` = off).
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
/// whose cumulative probability is `>= p` (`p >= 1` = off). Probabilities are
/// those of the candidates it receives, accumulated in `f64`.
#[derive(Clone, Debug)]
pub struct TopP {
    p: f32,
    weights: Vec<f64>,
}

impl TopP {
    /// Registry name.
    pub const NAME: &'static str = "top_p";

    /// `p >= 1` turns it off.
    pub fn new(p: f32) -> Self {
        TopP {
            p,
            weights: Vec::new(),
        }
    }
}

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.p >= 1.0 || cands.len() <= 1 {
            return;
        }
        cands.sort_desc();
        let total = cands.softmax_weights(&mut self.weights);
        if !(total > 0.0 && total.is_finite()) {
            return;
        }
        let target = f64::from(self.p) * total;
        let mut cum = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            cum += w;
            if cum >= target {
                cands.truncate(i + 1);
                return;
            }
        }
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}

/// Min-p: drops candidates whose probability is below `min_p` times the
/// largest one. Computed in logit space (`logit >= max + ln(min_p)`), which
/// needs neither a softmax nor a sort. `0` = off.
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

/// Divides the logits by the temperature: `< 1` sharpens, `> 1` flattens.
/// A temperature `<= 0` keeps only the best candidate (greedy), as in
/// llama.cpp.
#[derive(Clone, Debug)]
pub struct Temperature {
    t: f32,
}

impl Temperature {
    /// Registry name.
    pub const NAME: &'static str = "temperature";

    /// `t == 1` leaves the logits unchanged.
    pub fn new(t: f32) -> Self {
        Temperature { t }
    }
}

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.t <= 0.0 {
            cands.keep_top_k(1);
        } else if self.t != 1.0 {
            let t = self.t;
            cands.map_logits(|l| l / t);
        }
    }

    fn preserves_argmax(&self) -> bool {
        true
    }
}
