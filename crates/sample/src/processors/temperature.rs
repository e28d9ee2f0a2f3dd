//! Temperature, fixed or entropy-adaptive (llama.cpp's `temp-ext`, the
//! "dynatemp" of `--dynatemp-range` / `--dynatemp-exp`).

use super::{LogitsProcessor, SampleContext};
use crate::candidates::Candidates;
use crate::stats::Normalizer;

/// Divides the logits by a temperature: `< 1` sharpens, `> 1` flattens; a
/// temperature `<= 0` keeps only the best candidate (greedy), as llama.cpp.
///
/// With `range > 0` the temperature adapts to the candidates' entropy `H`:
/// `T = T_min + (T_max - T_min) * (H / ln n)^exponent`, with
/// `T_min = max(0, t - range)`, `T_max = t + range` and `n` the number of
/// candidates (masked ones included, as llama.cpp). Confident
/// distributions are sharpened, uncertain ones flattened.
#[derive(Clone, Debug)]
pub struct Temperature {
    t: f32,
    range: f32,
    exponent: f32,
    /// The temperature the last call used (for reports).
    last: f32,
}

impl Temperature {
    /// Registry name.
    pub const NAME: &'static str = "temperature";

    /// A fixed temperature; `t == 1` leaves the logits unchanged.
    pub fn new(t: f32) -> Self {
        Self::with_dynatemp(t, 0.0, 1.0)
    }

    /// Entropy-adaptive temperature around `t` (`range <= 0` = fixed).
    pub fn with_dynatemp(t: f32, range: f32, exponent: f32) -> Self {
        Temperature {
            t,
            range,
            exponent,
            last: t,
        }
    }

    /// The temperature for candidates with normalised entropy `h_norm` in
    /// `[0, 1]`.
    pub fn dynamic(&self, h_norm: f64) -> f64 {
        let min_t = f64::from((self.t - self.range).max(0.0));
        let max_t = f64::from(self.t + self.range);
        min_t + (max_t - min_t) * h_norm.powf(f64::from(self.exponent))
    }

    fn apply(cands: &mut Candidates, t: f64) {
        if t <= 0.0 || t.is_nan() {
            cands.keep_top_k(1);
        } else if t != 1.0 {
            cands.map_logits(|l| (f64::from(l) / t) as f32);
        }
    }
}

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        if self.range.is_nan() || self.range <= 0.0 {
            self.last = self.t;
            Self::apply(cands, f64::from(self.t));
            return;
        }
        // One candidate: nothing to reshape (llama.cpp returns early too).
        if cands.len() <= 1 {
            return;
        }
        let (norm, h) = cands.fast_normalizer();
        if matches!(norm, Normalizer::Undefined) {
            return;
        }
        let h_norm = h / (cands.len() as f64).ln();
        let t = self.dynamic(h_norm);
        self.last = t as f32;
        Self::apply(cands, t);
    }

    fn preserves_argmax(&self) -> bool {
        true
    }

    fn state(&self) -> Option<(&'static str, f32)> {
        Some(("temperature", self.last))
    }
}
