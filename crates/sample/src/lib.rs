//! Sampling: turns a logits row into a token, and measures each token's
//! information (log-probability, entropy, varentropy, rank) and what each
//! sampling stage did to the model's distribution.
//!
//! Works on plain `&[f32]` slices and knows nothing of tensors or models.
//!
//! * [`stats`]: numerically stable log-softmax, entropy, varentropy,
//!   per-token stats and reports, argmax and top-k log-probabilities.
//! * [`processors`]: the sampler stages, each a named [`LogitsProcessor`]
//!   with llama.cpp's flag names and semantics: logit bias, penalties
//!   (repeat/frequency/presence), DRY, top-n-sigma, top-k, locally typical,
//!   top-p, min-p, epsilon, eta, XTC, temperature (fixed or entropy-adaptive),
//!   Mirostat v1/v2, greedy.
//! * [`Sampler`]: a chain of processors named at run time
//!   ([`SamplerConfig::samplers`], default [`DEFAULT_CHAIN`], llama.cpp's
//!   order) over a reusable [`Candidates`] buffer, then a draw with a
//!   seeded, platform-independent RNG. [`Sampler::sample_with_report`] also
//!   returns a [`SampleReport`]: the token's statistics and, per stage, the
//!   probability mass removed.
//!
//! NaN logits are treated as `-inf` everywhere; nothing here panics on odd
//! values (see each function's `# Panics` for caller bugs such as length
//! mismatches).

pub mod candidates;
pub mod config;
mod fastmath;
pub mod processors;
pub mod report;
pub mod rng;
pub mod sampler;
pub mod stats;

pub use candidates::{Candidate, Candidates};
pub use config::{SampleError, SamplerConfig, WHOLE_HISTORY};
pub use processors::{
    canonical_name, dry_sequence_breakers, parse_sampler_chars, parse_sampler_list,
    processor_from_name, Dry, Epsilon, Eta, Greedy, LogitBias, LogitsProcessor, MinP, Mirostat,
    MirostatV2, Penalties, SampleContext, Temperature, TopK, TopNSigma, TopP, Typical, Xtc,
    DEFAULT_CHAIN, DEFAULT_DRY_SEQUENCE_BREAKERS, PROCESSOR_NAMES,
};
pub use report::{SampleReport, StageReport};
pub use rng::{gumbel_noise, Rng};
pub use sampler::Sampler;
pub use stats::{
    argmax, entropy, log_softmax, moments, token_report, token_report_with, token_stats,
    top_k_logprobs, varentropy, Moments, TokenReport, TokenStats,
};
