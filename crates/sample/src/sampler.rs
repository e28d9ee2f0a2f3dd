//! The sampler: runs the processor chain over a logits row and draws a token.

use std::fmt;

use crate::candidates::Candidates;
use crate::config::{SampleError, SamplerConfig};
use crate::processors::{
    processor_from_name, LogitsProcessor, MinP, RepetitionPenalty, SampleContext, Temperature,
    TopK, TopP,
};
use crate::rng::Rng;

/// Turns logits rows into tokens.
///
/// Owns its configuration, its seeded RNG, its processor chain and its
/// scratch buffers; after the first call, sampling a token allocates nothing
/// (the buffers keep their capacity).
///
/// The default chain is llama.cpp's order:
///
/// 1. repetition penalty (on the raw logits, by token id)
/// 2. top-k
/// 3. top-p
/// 4. min-p
/// 5. temperature
/// 6. softmax of what is left, and one draw with the seeded RNG.
///
/// Greedy decoding (`temperature <= 0`) runs only the processors that can
/// change the argmax (here: the repetition penalty) and returns the argmax,
/// ties to the lowest id; it never touches the RNG.
pub struct Sampler {
    config: SamplerConfig,
    /// `Some` if `config` failed validation: every `sample` returns it.
    invalid: Option<SampleError>,
    rng: Rng,
    chain: Vec<Box<dyn LogitsProcessor>>,
    cands: Candidates,
    weights: Vec<f64>,
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

impl Sampler {
    /// A sampler with the default chain. Never panics: an invalid `config`
    /// is reported by every call to [`Sampler::sample`] (check it up front
    /// with [`SamplerConfig::validate`] or use [`Sampler::with_chain`]).
    pub fn new(config: SamplerConfig) -> Self {
        let chain: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(RepetitionPenalty::new(
                config.repeat_penalty,
                config.repeat_last_n,
            )),
            Box::new(TopK::new(config.top_k)),
            Box::new(TopP::new(config.top_p)),
            Box::new(MinP::new(config.min_p)),
            Box::new(Temperature::new(config.temperature)),
        ];
        Self::build(config, chain)
    }

    /// A sampler whose chain is the named processors, in order (see
    /// [`crate::PROCESSOR_NAMES`]), each configured from `config`. Fails on
    /// an invalid config or an unknown name.
    pub fn with_chain(config: SamplerConfig, names: &[&str]) -> Result<Self, SampleError> {
        config.validate()?;
        let chain = names
            .iter()
            .map(|n| processor_from_name(n, &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::build(config, chain))
    }

    /// A sampler running exactly `chain` (for processors built by hand).
    /// `config` still supplies the seed and the greedy switch.
    pub fn with_processors(
        config: SamplerConfig,
        chain: Vec<Box<dyn LogitsProcessor>>,
    ) -> Result<Self, SampleError> {
        config.validate()?;
        Ok(Self::build(config, chain))
    }

    fn build(config: SamplerConfig, chain: Vec<Box<dyn LogitsProcessor>>) -> Self {
        Sampler {
            invalid: config.validate().err(),
            rng: Rng::seed_from_u64(config.seed),
            config,
            chain,
            cands: Candidates::new(),
            weights: Vec::new(),
        }
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

    /// Starts a new sequence: reseeds the RNG from the config and resets
    /// every processor's state, so the same inputs replay the same tokens.
    pub fn reset(&mut self) {
        self.rng = Rng::seed_from_u64(self.config.seed);
        for p in &mut self.chain {
            p.reset();
        }
    }

    /// Picks the next token from `logits`, given the `history` of tokens so
    /// far (for penalties).
    ///
    /// The row is copied into the sampler's candidates buffer and is
    /// currently left unchanged, but callers must not rely on that: the
    /// `&mut` lets future processors work on the row in place.
    ///
    /// Errors: an invalid config, an empty row, or a row where every logit
    /// is `-inf`/NaN. Never panics; NaN logits count as `-inf` and `+inf`
    /// logits share all the probability.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SampleError> {
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
        let greedy = self.config.is_greedy();
        let ctx = SampleContext::new(history);
        for p in &mut self.chain {
            if !(greedy && p.preserves_argmax()) {
                p.process(&mut self.cands, &ctx);
            }
        }

        let token = if greedy {
            match self.cands.best() {
                Some(c) if c.logit > f32::NEG_INFINITY => c.id,
                _ => return Err(SampleError::NoViableToken),
            }
        } else {
            self.draw()?
        };

        for p in &mut self.chain {
            p.accept(token, &self.cands);
        }
        Ok(token)
    }

    /// One draw from the softmax of the remaining candidates: inverse CDF
    /// with a uniform `u` in `[0, total)`, weights in `f64`.
    fn draw(&mut self) -> Result<u32, SampleError> {
        let total = self.cands.softmax_weights(&mut self.weights);
        if !(total > 0.0 && total.is_finite()) {
            return Err(SampleError::NoViableToken);
        }
        let u = self.rng.next_f64() * total;
        let mut cum = 0.0;
        let mut last_viable = None;
        for (c, &w) in self.cands.as_slice().iter().zip(&self.weights) {
            if w > 0.0 {
                cum += w;
                last_viable = Some(c.id);
                if u < cum {
                    return Ok(c.id);
                }
            }
        }
        // Rounding can leave `cum` a hair below `u`; the mass then belongs to
        // the last token with non-zero weight.
        last_viable.ok_or(SampleError::NoViableToken)
    }
}
