//! Mirostat (Basu et al. 2021, "Mirostat: a neural text decoding algorithm
//! that directly controls perplexity"), v1 and v2, as in llama.cpp.
//!
//! Both keep a running threshold `mu` (bits), start it at `2 * tau`, truncate
//! the distribution with it, and after each token move it against the error
//! of the observed surprise: `mu -= lr * (-log2 p(token) - tau)`, `p` being
//! the token's probability under the truncated, renormalised distribution it
//! was drawn from (the sampler passes it to [`LogitsProcessor::accept`]).
//! So the average surprise of the generated text is steered to `tau`.
//! `mu` persists across tokens until `reset`.

use super::{LogitsProcessor, SampleContext};
use crate::candidates::Candidates;
use crate::stats::Normalizer;

/// Applies the mirostat update to `mu`; a probability of 0 (which a drawn
/// token never has) is ignored rather than sending `mu` to `-inf`.
fn update_mu(mu: &mut f64, tau: f32, lr: f32, prob: f64) {
    if prob > 0.0 {
        let surprise = -prob.log2();
        *mu -= f64::from(lr) * (surprise - f64::from(tau));
    }
}

/// Mirostat v1: estimates the Zipf exponent `s` of the distribution from its
/// `m = 100` most likely tokens, then keeps the top `k` with
/// `k = (eps * 2^mu / (1 - N^-eps))^(1/s)`, `eps = s - 1`, `N` the
/// vocabulary size.
#[derive(Clone, Debug)]
pub struct Mirostat {
    tau: f32,
    lr: f32,
    m: usize,
    mu: f64,
    last_k: usize,
}

impl Mirostat {
    /// Registry name.
    pub const NAME: &'static str = "mirostat";

    /// llama.cpp's `m`: how many top tokens estimate the Zipf exponent.
    pub const M: usize = 100;

    /// Target surprise `tau` (bits) and learning rate `lr`; `mu` starts at
    /// `2 * tau`.
    pub fn new(tau: f32, lr: f32) -> Self {
        Mirostat {
            tau,
            lr,
            m: Self::M,
            mu: 2.0 * f64::from(tau),
            last_k: 0,
        }
    }

    /// The current threshold `mu` (bits).
    pub fn mu(&self) -> f64 {
        self.mu
    }

    /// Sets `mu` (to resume a sequence, or for tests).
    pub fn set_mu(&mut self, mu: f64) {
        self.mu = mu;
    }

    /// How many tokens the last call kept.
    pub fn last_k(&self) -> usize {
        self.last_k
    }
}

impl LogitsProcessor for Mirostat {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, ctx: &SampleContext<'_>) {
        let len = cands.len();
        if len == 0 {
            return;
        }
        let n_vocab = if ctx.n_vocab > 0 { ctx.n_vocab } else { len } as f64;
        cands.sort_top(self.m);
        // Least-squares fit of ln(p_i / p_{i+1}) = s * ln((i+2)/(i+1)); the
        // probability ratio is a logit difference, exact and underflow-free.
        let top = &cands.as_slice()[..self.m.min(len)];
        let (mut sum_tb, mut sum_tt) = (0.0f64, 0.0f64);
        for (i, w) in top.windows(2).enumerate() {
            let b = f64::from(w[0].logit) - f64::from(w[1].logit);
            if !b.is_finite() {
                break;
            }
            let t = ((i + 2) as f64 / (i + 1) as f64).ln();
            sum_tb += t * b;
            sum_tt += t * t;
        }
        let s_hat = sum_tb / sum_tt;
        let eps = s_hat - 1.0;
        // eps / (1 - N^-eps) -> 1 / ln N as eps -> 0.
        let ratio = if eps.abs() < 1e-12 {
            1.0 / n_vocab.ln()
        } else {
            eps / (1.0 - n_vocab.powf(-eps))
        };
        let k = (ratio * self.mu.exp2()).powf(1.0 / s_hat);
        // NaN (fewer than two usable tokens, a flat top) keeps one, as
        // llama.cpp's int(k) clamp does.
        let k = if k >= len as f64 {
            len
        } else if k >= 1.0 {
            k as usize
        } else {
            1
        };
        self.last_k = k;
        cands.keep_top_k(k);
    }

    fn preserves_argmax(&self) -> bool {
        true
    }

    fn accept(&mut self, _token: u32, prob: f64) {
        update_mu(&mut self.mu, self.tau, self.lr, prob);
    }

    fn reset(&mut self) {
        self.mu = 2.0 * f64::from(self.tau);
        self.last_k = 0;
    }

    fn state(&self) -> Option<(&'static str, f32)> {
        Some(("mu", self.mu as f32))
    }
}

/// Mirostat 2.0: keeps the tokens whose surprise `-log2 p` is at most `mu`
/// (at least the best one). No sort: the cut is a log-probability threshold.
#[derive(Clone, Debug)]
pub struct MirostatV2 {
    tau: f32,
    lr: f32,
    mu: f64,
}

impl MirostatV2 {
    /// Registry name.
    pub const NAME: &'static str = "mirostat_v2";

    /// Target surprise `tau` (bits) and learning rate `lr`; `mu` starts at
    /// `2 * tau`.
    pub fn new(tau: f32, lr: f32) -> Self {
        MirostatV2 {
            tau,
            lr,
            mu: 2.0 * f64::from(tau),
        }
    }

    /// The current threshold `mu` (bits).
    pub fn mu(&self) -> f64 {
        self.mu
    }

    /// Sets `mu` (to resume a sequence, or for tests).
    pub fn set_mu(&mut self, mu: f64) {
        self.mu = mu;
    }
}

impl LogitsProcessor for MirostatV2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        let (norm, _) = cands.fast_normalizer();
        if matches!(norm, Normalizer::Undefined) {
            return;
        }
        // -log2 p <= mu  <=>  ln p >= -mu ln 2.
        let ln_threshold = -self.mu * std::f64::consts::LN_2;
        let Some(best) = cands.best() else { return };
        cands.retain(|c| c.id == best.id || norm.logprob(c.logit) >= ln_threshold);
    }

    fn preserves_argmax(&self) -> bool {
        true
    }

    fn accept(&mut self, _token: u32, prob: f64) {
        update_mu(&mut self.mu, self.tau, self.lr, prob);
    }

    fn reset(&mut self) {
        self.mu = 2.0 * f64::from(self.tau);
    }

    fn state(&self) -> Option<(&'static str, f32)> {
        Some(("mu", self.mu as f32))
    }
}
