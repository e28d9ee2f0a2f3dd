//! Sampling: turns a logits row into a token, and measures each token's
//! information (log-probability, entropy, rank).
//!
//! Works on plain `&[f32]` slices and knows nothing of tensors or models.
//!
//! * [`stats`]: numerically stable log-softmax, entropy, per-token stats,
//!   argmax and top-k log-probabilities.
//! * [`Sampler`]: a chain of [`LogitsProcessor`]s over a reusable
//!   [`Candidates`] buffer, then a draw with a seeded, platform-independent
//!   RNG. The default chain follows llama.cpp: repetition penalty -> top-k ->
//!   top-p -> min-p -> temperature -> softmax -> draw. Processors are also
//!   selectable by name ([`processor_from_name`], [`Sampler::with_chain`]), so
//!   later samplers (mirostat, typical, eta/epsilon...) slot in as one more
//!   type.
//!
//! NaN logits are treated as `-inf` everywhere; nothing here panics on odd
//! values (see each function's `# Panics` for caller bugs such as length
//! mismatches).

pub mod candidates;
pub mod config;
pub mod processors;
pub mod rng;
pub mod sampler;
pub mod stats;

pub use candidates::{Candidate, Candidates};
pub use config::{SampleError, SamplerConfig};
pub use processors::{
    processor_from_name, LogitsProcessor, MinP, RepetitionPenalty, SampleContext, Temperature,
    TopK, TopP, DEFAULT_CHAIN, PROCESSOR_NAMES,
};
pub use rng::Rng;
pub use sampler::Sampler;
pub use stats::{argmax, entropy, log_softmax, token_stats, top_k_logprobs, TokenStats};
