//! Logits processors: the stages of the sampling chain.
//!
//! Each stage is a small named type implementing [`LogitsProcessor`] and
//! working in place on a [`Candidates`] buffer. The sampler runs them in order
//! and then draws from the softmax of whatever is left. Names, parameters and
//! semantics follow llama.cpp's `src/llama-sampling.cpp` wherever llama.cpp
//! has the sampler (epsilon and eta follow Hewitt et al. 2022 as
//! implemented in Hugging Face transformers).
//!
//! * [`truncation`]: top-k, top-p, min-p, locally typical, top-n-sigma,
//!   epsilon, eta, XTC, greedy.
//! * [`penalties`]: repetition/frequency/presence penalties and logit bias.
//! * [`dry`]: DRY, llama.cpp's repeat-extension penalty.
//! * [`temperature`]: fixed and entropy-adaptive (dynatemp) temperature.
//! * [`mirostat`]: Mirostat v1 and v2, whose target surprise `mu` persists
//!   across tokens (updated in [`LogitsProcessor::accept`]).
//!
//! Every truncating processor keeps at least one candidate, so a chain never
//! empties a row that had a finite logit. All probabilities are computed in
//! `f64` from the candidates the stage receives.

pub mod dry;
pub mod mirostat;
pub mod penalties;
pub mod temperature;
pub mod truncation;

pub use dry::{dry_sequence_breakers, Dry, DEFAULT_DRY_SEQUENCE_BREAKERS};
pub use mirostat::{Mirostat, MirostatV2};
pub use penalties::{LogitBias, Penalties};
pub use temperature::Temperature;
pub use truncation::{Epsilon, Eta, Greedy, MinP, TopK, TopNSigma, TopP, Typical, Xtc};

use crate::candidates::Candidates;
use crate::config::{SampleError, SamplerConfig};

/// What a processor may look at besides the candidates. A struct rather than
/// loose arguments so later needs (e.g. a grammar state) add a field instead
/// of changing every processor.
#[derive(Clone, Copy, Debug)]
pub struct SampleContext<'a> {
    /// Tokens generated (and prompted) so far, oldest first.
    pub history: &'a [u32],
    /// Size of the vocabulary (the logits row); 0 if unknown, in which case
    /// processors that need it (mirostat v1) use the number of candidates.
    pub n_vocab: usize,
}

impl<'a> SampleContext<'a> {
    /// A context over `history`, vocabulary size unknown.
    pub fn new(history: &'a [u32]) -> Self {
        SampleContext {
            history,
            n_vocab: 0,
        }
    }

    /// The same context with the vocabulary size set.
    pub fn with_vocab(self, n_vocab: usize) -> Self {
        SampleContext { n_vocab, ..self }
    }
}

/// One stage of the sampling chain.
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

    /// Called once per token with the chosen token and its probability under
    /// the distribution it was drawn from (1 for greedy), for stateful
    /// samplers (mirostat updates its target surprise here).
    fn accept(&mut self, _token: u32, _prob: f64) {}

    /// Forgets per-sequence state (a new generation starts).
    fn reset(&mut self) {}

    /// A named value the last `process` call chose, for reports: the
    /// temperature dynatemp used, mirostat's `mu` or `k`.
    fn state(&self) -> Option<(&'static str, f32)> {
        None
    }
}

/// Names of every processor [`processor_from_name`] knows (canonical
/// spellings; llama.cpp's aliases such as `top-k`, `typical`, `temp` or
/// `nucleus` are accepted too).
pub const PROCESSOR_NAMES: &[&str] = &[
    LogitBias::NAME,
    Penalties::NAME,
    Dry::NAME,
    TopNSigma::NAME,
    TopK::NAME,
    Typical::NAME,
    TopP::NAME,
    MinP::NAME,
    Epsilon::NAME,
    Eta::NAME,
    Xtc::NAME,
    Temperature::NAME,
    Mirostat::NAME,
    MirostatV2::NAME,
    Greedy::NAME,
];

/// llama.cpp's default `--samplers` order, exactly: penalties, DRY, then
/// truncations from the coarsest (top-n-sigma, top-k: cheap, and they shrink
/// the set the later ones sort) to the finest, XTC, and temperature last so
/// the truncations see the model's own probabilities.
pub const DEFAULT_CHAIN: &[&str] = &[
    Penalties::NAME,
    Dry::NAME,
    TopNSigma::NAME,
    TopK::NAME,
    Typical::NAME,
    TopP::NAME,
    MinP::NAME,
    Xtc::NAME,
    Temperature::NAME,
];

/// The canonical name of `name` (itself or one of llama.cpp's aliases), or
/// `None` if no processor is called that.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    if let Some(&n) = PROCESSOR_NAMES.iter().find(|&&n| n == name) {
        return Some(n);
    }
    Some(match name {
        "repetition_penalty" | "repeat_penalty" => Penalties::NAME,
        "top-k" => TopK::NAME,
        "top-p" | "nucleus" => TopP::NAME,
        "top-n-sigma" => TopNSigma::NAME,
        "typical-p" | "typical" | "typ-p" | "typ" | "typical_p" => Typical::NAME,
        "min-p" => MinP::NAME,
        "temp" => Temperature::NAME,
        "mirostat-v2" | "mirostat2" => MirostatV2::NAME,
        "logit-bias" => LogitBias::NAME,
        _ => return None,
    })
}

/// Parses a `--samplers`-style list: names separated by `;` (llama.cpp) or
/// `,`, whitespace ignored. Returns canonical names; fails on an unknown name
/// or an empty list.
pub fn parse_sampler_list(list: &str) -> Result<Vec<String>, SampleError> {
    let names = list
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            canonical_name(s)
                .map(str::to_owned)
                .ok_or_else(|| SampleError::UnknownProcessor(s.to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        return Err(SampleError::EmptyChain);
    }
    Ok(names)
}

/// Parses llama.cpp's one-letter `--sampling-seq` form (default `edskypmxt`):
/// e penalties, d dry, s top_n_sigma, k top_k, y typ_p, p top_p, m min_p,
/// x xtc, t temperature.
pub fn parse_sampler_chars(seq: &str) -> Result<Vec<String>, SampleError> {
    let names = seq
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| {
            Ok(match c {
                'e' => Penalties::NAME,
                'd' => Dry::NAME,
                's' => TopNSigma::NAME,
                'k' => TopK::NAME,
                'y' => Typical::NAME,
                'p' => TopP::NAME,
                'm' => MinP::NAME,
                'x' => Xtc::NAME,
                't' => Temperature::NAME,
                other => return Err(SampleError::UnknownProcessor(other.to_string())),
            }
            .to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        return Err(SampleError::EmptyChain);
    }
    Ok(names)
}

/// Builds the processor called `name` (or an alias), configured from
/// `config`.
pub fn processor_from_name(
    name: &str,
    config: &SamplerConfig,
) -> Result<Box<dyn LogitsProcessor>, SampleError> {
    let Some(canonical) = canonical_name(name) else {
        return Err(SampleError::UnknownProcessor(name.to_owned()));
    };
    let c = config;
    Ok(match canonical {
        LogitBias::NAME => Box::new(LogitBias::new(&c.logit_bias)),
        Penalties::NAME => Box::new(Penalties::new(
            c.repeat_last_n,
            c.repeat_penalty,
            c.frequency_penalty,
            c.presence_penalty,
        )),
        Dry::NAME => Box::new(Dry::new(
            c.dry_multiplier,
            c.dry_base,
            c.dry_allowed_length,
            c.dry_penalty_last_n,
            &c.dry_sequence_breakers,
        )),
        TopNSigma::NAME => Box::new(TopNSigma::new(c.top_n_sigma)),
        TopK::NAME => Box::new(TopK::new(c.top_k)),
        Typical::NAME => Box::new(Typical::new(c.typical_p)),
        TopP::NAME => Box::new(TopP::new(c.top_p)),
        MinP::NAME => Box::new(MinP::new(c.min_p)),
        Epsilon::NAME => Box::new(Epsilon::new(c.epsilon)),
        Eta::NAME => Box::new(Eta::new(c.eta)),
        Xtc::NAME => Box::new(Xtc::new(c.xtc_probability, c.xtc_threshold, c.seed)),
        Temperature::NAME => Box::new(Temperature::with_dynatemp(
            c.temperature,
            c.dynatemp_range,
            c.dynatemp_exponent,
        )),
        Mirostat::NAME => Box::new(Mirostat::new(c.mirostat_tau, c.mirostat_lr)),
        MirostatV2::NAME => Box::new(MirostatV2::new(c.mirostat_tau, c.mirostat_lr)),
        Greedy::NAME => Box::new(Greedy),
        other => return Err(SampleError::UnknownProcessor(other.to_owned())),
    })
}
