//! The sampler: runs the processor chain over a logits row and draws a token.

use std::fmt;

use crate::candidates::Candidates;
use crate::config::{SampleError, SamplerConfig};
use crate::fastmath;
use crate::processors::{
    processor_from_name, LogitBias, LogitsProcessor, Mirostat, MirostatV2, Penalties,
    SampleContext, Temperature,
};
use crate::report::{SampleReport, StageReport};
use crate::rng::{gumbel_noise, Rng};
use crate::stats::{moments_and_probs, token_report, token_report_with, Moments};

/// Turns logits rows into tokens.
///
/// Owns its configuration, its seeded RNG, its processor chain (with any
/// per-sequence state, such as mirostat's `mu`) and its scratch buffers;
/// after the first call, [`Sampler::sample`] allocates nothing (the buffers
/// keep their capacity).
///
/// The chain is built from the config as llama.cpp's `common_sampler_init`
/// does: a logit-bias stage first if any bias is set (unless `samplers`
/// names `logit_bias` at a place of its own), then either the named
/// `samplers` (default [`crate::DEFAULT_CHAIN`]: penalties -> dry ->
/// top_n_sigma -> top_k -> typ_p -> top_p -> min_p -> xtc -> temperature) or,
/// with `mirostat` 1 or 2, penalties -> temperature -> mirostat (current
/// llama.cpp leaves the penalties out there; they are off by default, and a
/// user who sets them expects them to apply). Then the softmax of what is
/// left, and one draw with the seeded RNG.
///
/// Greedy decoding (`temperature <= 0`) runs only the stages that can
/// change the argmax (penalties, DRY, logit bias, typical, XTC) and returns
/// the argmax, ties to the lowest id; the draw's RNG is never touched.
pub struct Sampler {
    config: SamplerConfig,
    /// `Some` if `config` failed validation: every `sample` returns it.
    invalid: Option<SampleError>,
    rng: Rng,
    chain: Vec<Box<dyn LogitsProcessor>>,
    cands: Candidates,
    weights: Vec<f32>,
    /// Report scratch: the model's probability of each token, by id.
    base: Vec<f64>,
    /// Draw by Gumbel-max with counter-based noise instead of the RNG stream.
    gumbel: bool,
    /// Set by [`Sampler::force`] for one call: the token to take instead of drawing.
    forced: Option<u32>,
    /// Draws so far (the Gumbel noise's step index).
    step: u64,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("config", &self.config)
            .field("chain", &self.processor_names())
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

/// The processors `config` asks for (see [`Sampler`]).
fn build_chain(config: &SamplerConfig) -> Result<Vec<Box<dyn LogitsProcessor>>, SampleError> {
    let mut chain: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    // Bias first, unless the chain names its place explicitly.
    let named_bias = config.mirostat == 0 && config.has_stage(LogitBias::NAME);
    if !config.logit_bias.is_empty() && !named_bias {
        chain.push(Box::new(LogitBias::new(&config.logit_bias)));
    }
    if config.mirostat == 0 {
        for name in &config.samplers {
            chain.push(processor_from_name(name, config)?);
        }
    } else {
        chain.push(Box::new(Penalties::new(
            config.repeat_last_n,
            config.repeat_penalty,
            config.frequency_penalty,
            config.presence_penalty,
        )));
        // llama.cpp uses the plain temperature here, never dynatemp.
        chain.push(Box::new(Temperature::new(config.temperature)));
        if config.mirostat == 1 {
            chain.push(Box::new(Mirostat::new(
                config.mirostat_tau,
                config.mirostat_lr,
            )));
        } else {
            chain.push(Box::new(MirostatV2::new(
                config.mirostat_tau,
                config.mirostat_lr,
            )));
        }
    }
    Ok(chain)
}

/// Viable candidates and their mass under the model's distribution `base`.
fn viable_mass(cands: &Candidates, base: &[f64]) -> (usize, f64) {
    cands
        .as_slice()
        .iter()
        .filter(|c| c.logit > f32::NEG_INFINITY)
        .fold((0, 0.0), |(n, m), c| (n + 1, m + base[c.id as usize]))
}

/// Appends the report of a stage that just ran.
fn push_stage(
    stages: &mut Vec<StageReport>,
    name: &'static str,
    state: Option<(&'static str, f32)>,
    cands: &Candidates,
    base: &[f64],
    before: (usize, f64),
) -> (usize, f64) {
    let (kept, mass) = viable_mass(cands, base);
    // Stages only ever remove candidates, so an unchanged count is an
    // unchanged set: report exactly zero rather than summation noise.
    let (kept_mass, removed_mass) = if kept == before.0 {
        (before.1, 0.0)
    } else {
        (mass, (before.1 - mass).max(0.0))
    };
    stages.push(StageReport {
        name,
        removed_mass,
        kept,
        kept_mass,
        state,
    });
    (kept, kept_mass)
}

impl Sampler {
    /// A sampler for `config`. Never panics: an invalid `config` is reported
    /// by every call to [`Sampler::sample`] (check it up front with
    /// [`SamplerConfig::validate`] or use [`Sampler::try_new`]).
    pub fn new(config: SamplerConfig) -> Self {
        let (chain, invalid) = match config.validate().and_then(|()| build_chain(&config)) {
            Ok(chain) => (chain, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Sampler {
            invalid,
            rng: Rng::seed_from_u64(config.seed),
            config,
            chain,
            cands: Candidates::new(),
            weights: Vec::new(),
            base: Vec::new(),
            gumbel: false,
            forced: None,
            step: 0,
        }
    }

    /// A sampler for `config`, or the reason the config is invalid.
    pub fn try_new(config: SamplerConfig) -> Result<Self, SampleError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// [`Sampler::try_new`] with `config.samplers` replaced by `names`
    /// (canonical names or llama.cpp aliases, see [`crate::PROCESSOR_NAMES`]),
    /// each configured from `config`. As in llama.cpp, `mirostat` 1 or 2
    /// still replaces the chain. Fails on an invalid config or an unknown
    /// name.
    pub fn with_chain(config: SamplerConfig, names: &[&str]) -> Result<Self, SampleError> {
        Self::try_new(SamplerConfig {
            samplers: names.iter().map(|s| s.to_string()).collect(),
            ..config
        })
    }

    /// A sampler running exactly `chain` (for processors built by hand).
    /// `config` still supplies the seed and the greedy switch; its
    /// `samplers`, `mirostat` and `logit_bias` are not used (nor checked).
    pub fn with_processors(
        config: SamplerConfig,
        chain: Vec<Box<dyn LogitsProcessor>>,
    ) -> Result<Self, SampleError> {
        config.validate_values()?;
        Ok(Sampler {
            invalid: None,
            rng: Rng::seed_from_u64(config.seed),
            config,
            chain,
            cands: Candidates::new(),
            weights: Vec::new(),
            base: Vec::new(),
            gumbel: false,
            forced: None,
            step: 0,
        })
    }

    /// The configuration this sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Names of the processors in the chain, in order.
    pub fn processor_names(&self) -> Vec<&'static str> {
        self.chain.iter().map(|p| p.name()).collect()
    }

    /// The candidates left after the last call's chain (for inspection).
    pub fn last_candidates(&self) -> &Candidates {
        &self.cands
    }

    /// The named state values of the chain's stages (mirostat's `mu`, the
    /// last dynamic temperature...), in chain order.
    pub fn stage_states(&self) -> Vec<(&'static str, (&'static str, f32))> {
        self.chain
            .iter()
            .filter_map(|p| p.state().map(|s| (p.name(), s)))
            .collect()
    }

    /// Starts a new sequence: reseeds the RNGs from the config and resets
    /// every processor's state (mirostat's `mu` back to `2 * tau`), so the
    /// same inputs replay the same tokens.
    pub fn reset(&mut self) {
        self.rng = Rng::seed_from_u64(self.config.seed);
        self.step = 0;
        for p in &mut self.chain {
            p.reset();
        }
    }

    /// Draws by the Gumbel-max trick: the token is
    /// `argmax_i(logit_i + g_i)` over the candidates left by the chain (logits
    /// already divided by the temperature), with `g_i =`
    /// [`gumbel_noise`](crate::rng::gumbel_noise)`(seed, step, i)`. This is an
    /// exact sample from the same distribution as the default draw, and the
    /// noise of every step can be recomputed, so a generation can be replayed
    /// after an edit to a past token with the same noise (a counterfactual).
    pub fn with_gumbel_max(mut self) -> Self {
        self.gumbel = true;
        self
    }

    /// Whether draws use the Gumbel-max trick.
    pub fn is_gumbel_max(&self) -> bool {
        self.gumbel
    }

    /// The step index the next draw will use (draws and forced tokens so far).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Runs the chain on `logits` like [`Sampler::sample`] but takes `token`
    /// instead of drawing one: stateful stages (mirostat, penalties) see it as
    /// the chosen token, and the step counter advances, so the draws after a
    /// forced token are those a recorded generation would have made. Returns the
    /// token's probability under the final distribution (0 if the chain
    /// removed it). Errors like `sample`, and for a token outside the row.
    pub fn force(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        token: u32,
    ) -> Result<f64, SampleError> {
        if token as usize >= logits.len() {
            return Err(SampleError::TokenOutOfRange {
                token,
                n_vocab: logits.len(),
            });
        }
        self.forced = Some(token);
        let r = self.run(logits, history, None).map(|(_, p)| p);
        self.forced = None;
        r
    }

    /// Picks the next token from `logits`, given the `history` of tokens so
    /// far (prompt included, oldest first; for penalties and DRY).
    ///
    /// The row is copied into the sampler's candidates buffer and is
    /// currently left unchanged, but callers must not rely on that: the
    /// `&mut` lets future processors work on the row in place.
    ///
    /// Errors: an invalid config, an empty row, or a row where every logit
    /// is `-inf`/NaN. Never panics; NaN logits count as `-inf` and `+inf`
    /// logits share all the probability.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SampleError> {
        self.run(logits, history, None).map(|(t, _)| t)
    }

    /// [`Sampler::sample`] plus telemetry: the token's log-probability,
    /// rank, entropy (nats and bits) and varentropy under the model's own
    /// distribution (temperature 1, before any stage), its `top_logprobs`
    /// most likely alternatives, and for each stage the probability mass
    /// of that distribution it removed. Draws exactly as `sample` does (same
    /// seed, same tokens), at the cost of a few extra passes over the row
    /// and some allocation.
    pub fn sample_with_report(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        top_logprobs: usize,
    ) -> Result<(u32, SampleReport), SampleError> {
        let mut stages = Vec::with_capacity(self.chain.len() + 1);
        let mut moments = None;
        let (token, prob) = self.run(logits, history, Some((&mut stages, &mut moments)))?;
        let token_report = match &moments {
            Some(m) => token_report_with(logits, token, top_logprobs, m),
            None => token_report(logits, token, top_logprobs),
        };
        let report = SampleReport {
            token: token_report,
            stages,
            sampled_prob: prob,
        };
        Ok((token, report))
    }

    /// The chain and the draw; returns the token and its probability under
    /// the final distribution. Stage reports are collected only if asked.
    fn run(
        &mut self,
        logits: &[f32],
        history: &[u32],
        report: Option<(&mut Vec<StageReport>, &mut Option<Moments>)>,
    ) -> Result<(u32, f64), SampleError> {
        if let Some(e) = &self.invalid {
            return Err(e.clone());
        }
        if logits.is_empty() {
            return Err(SampleError::EmptyLogits);
        }
        if u32::try_from(logits.len()).is_err() {
            // Token ids are u32; no real vocabulary comes near this.
            return Err(SampleError::NoViableToken);
        }
        self.cands.fill(logits);
        // Sized for the whole row once, so a later token that keeps more
        // candidates than the first never reallocates.
        self.weights.clear();
        self.weights.reserve(logits.len());
        let greedy = self.config.is_greedy();
        let ctx = SampleContext::new(history).with_vocab(logits.len());

        let mut viable = (0, 0.0);
        let mut stages = None;
        if let Some((st, moments)) = report {
            // One exact pass gives the model's probabilities (for the stage
            // masses) and the statistics of the token report.
            *moments = Some(moments_and_probs(logits, &mut self.base));
            viable = viable_mass(&self.cands, &self.base);
            stages = Some(st);
        }
        for p in &mut self.chain {
            if greedy && p.preserves_argmax() {
                continue;
            }
            p.process(&mut self.cands, &ctx);
            if let Some(st) = stages.as_deref_mut() {
                viable = push_stage(st, p.name(), p.state(), &self.cands, &self.base, viable);
            }
        }

        let (token, prob) = if let Some(t) = self.forced {
            (t, self.prob_of(t))
        } else if greedy {
            match self.cands.best() {
                Some(c) if c.logit > f32::NEG_INFINITY => {
                    if let Some(st) = stages {
                        let kept_mass = self.base[c.id as usize];
                        st.push(StageReport {
                            name: "greedy",
                            removed_mass: (viable.1 - kept_mass).max(0.0),
                            kept: 1,
                            kept_mass,
                            state: None,
                        });
                    }
                    (c.id, 1.0)
                }
                _ => return Err(SampleError::NoViableToken),
            }
        } else if self.gumbel {
            self.draw_gumbel()?
        } else {
            self.draw()?
        };
        self.step += 1;

        for p in &mut self.chain {
            p.accept(token, prob);
        }
        Ok((token, prob))
    }

    /// One draw from the softmax of the remaining candidates: inverse CDF
    /// with a uniform `u` in `[0, total)`, weights from the vectorised `exp`
    /// and sums in `f64`. Returns the token and its probability.
    /// Gumbel-max draw over the current candidates (see [`Sampler::with_gumbel_max`]).
    fn draw_gumbel(&mut self) -> Result<(u32, f64), SampleError> {
        let seed = self.config.seed;
        let step = self.step;
        let best = self
            .cands
            .as_slice()
            .iter()
            .filter(|c| c.logit > f32::NEG_INFINITY)
            .map(|c| (c.id, f64::from(c.logit) + gumbel_noise(seed, step, c.id)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best {
            Some((id, _)) => Ok((id, self.prob_of(id))),
            None => Err(SampleError::NoViableToken),
        }
    }

    /// Probability of `id` under the softmax of the current candidates (0 if absent).
    fn prob_of(&mut self, id: u32) -> f64 {
        let total = self.cands.draw_weights(&mut self.weights);
        if !(total > 0.0 && total.is_finite()) {
            return 0.0;
        }
        self.cands
            .as_slice()
            .iter()
            .zip(&self.weights)
            .find(|(c, _)| c.id == id)
            .map_or(0.0, |(_, &w)| f64::from(w) / total)
    }

    fn draw(&mut self) -> Result<(u32, f64), SampleError> {
        let total = self.cands.draw_weights(&mut self.weights);
        if !(total > 0.0 && total.is_finite()) {
            return Err(SampleError::NoViableToken);
        }
        let u = self.rng.next_f64() * total;
        let cands = self.cands.as_slice();
        // Skip whole blocks whose sum stays below `u` (vectorised sums),
        // then walk the block that crosses it.
        const BLOCK: usize = 64;
        let mut cum = 0.0;
        let mut start = 0;
        for block in self.weights.chunks(BLOCK) {
            let s = fastmath::sum_f64(block);
            if cum + s > u {
                break;
            }
            cum += s;
            start += block.len();
        }
        let mut last_viable = None;
        for (c, &w) in cands[start..].iter().zip(&self.weights[start..]) {
            if w > 0.0 {
                let w = f64::from(w);
                cum += w;
                last_viable = Some((c.id, w / total));
                if u < cum {
                    return Ok((c.id, w / total));
                }
            }
        }
        // Rounding can leave `cum` a hair below `u`; the mass then belongs to
        // the last token with non-zero weight.
        if last_viable.is_none() {
            last_viable = cands
                .iter()
                .zip(&self.weights)
                .rev()
                .find(|(_, &w)| w > 0.0)
                .map(|(c, &w)| (c.id, f64::from(w) / total));
        }
        last_viable.ok_or(SampleError::NoViableToken)
    }
}
