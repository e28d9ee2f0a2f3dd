//! Sessions and the generation loop: the one crate that wires the model's forward pass
//! to sampling (and, later, KV-cache policies and speculative decoding).
//!
//! * [`Session`] owns one sequence's KV cache and remembers which tokens it holds, so a
//!   chat can send the whole conversation every turn and only the new suffix is
//!   computed (common-prefix reuse).
//! * [`Session::generate`] prefills a prompt in chunks, then samples token by token,
//!   reporting each token as a [`TokenEvent`] (text, log-probability, entropy, rank and
//!   optional top alternatives) to a callback that can stop generation early.
//! * [`EntropySwitching`] (module [`switching`]) generates with a small model and hands
//!   uncertain steps to a large one with the same tokenizer (lossy, off by default).
//! * [`chat_prompt_ids`] renders a conversation with the model's chat template and
//!   tokenises it the way a prompt is tokenised.
//!
//! Errors are [`EngineError`]s with one-line messages; nothing here panics on user
//! input (over-long prompts, bad sampler settings, a context that fills up).

pub mod byte_level;
pub mod constraint;
pub mod contrastive;
pub mod healing;
pub mod kv;
pub mod lookahead;
pub mod scheduler;
mod session;
pub mod speculative;
mod stop;
pub mod switching;

/// Re-exported so callers can name policies and budgets without the `kv` crate.
pub use ::kv::{policy_from_name, Budget, KvError, PolicyParams, POLICY_NAMES};
pub use byte_level::{model_vocabulary, ByteScorer, ModelLm};
pub use constraint::{ConstrainedSampler, ConstraintMode, ConstraintStats, Grammar, GrammarEnv};
pub use contrastive::{ContrastiveConfig, ContrastiveStats};
pub use kv::{KvController, KvOptions, KvStats};
pub use lookahead::{entropy_quantile, LookaheadConfig, LookaheadStats};
pub use scheduler::{
    EventSink, Scheduler, SchedulerConfig, SequenceEvent, SequenceId, SequenceRequest, StepStats,
};
pub use session::{
    Generation, GenerationParams, GenerationStats, GumbelTrace, PrefillInfo, Session, StopReason,
    TokenEvent, DEFAULT_PREFILL_CHUNK,
};
pub use speculative::{
    check_same_vocabulary, DraftModelConfig, SpeculativeConfig, SpeculativeGeneration,
    SpeculativeMethod, SpeculativeStats, Speculator,
};
pub use stop::StopMatcher;
pub use switching::{
    EntropySwitching, SwitchedToken, SwitchingConfig, SwitchingGeneration, SwitchingStats,
};

/// Re-exported so callers can configure sampling without naming the `sample` crate.
pub use sample::SamplerConfig;

use model::chat::ChatMessage;
use model::{LoadedModel, ModelError};
use sample::SampleError;

/// What can go wrong in a session. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// Checked before any computation: a prompt needs its own slots plus one for the
    /// first generated token.
    #[error("the prompt has {prompt} tokens but the context holds {n_ctx}: it needs at most {} (raise --ctx or shorten the prompt)", n_ctx.saturating_sub(1))]
    PromptTooLong { prompt: usize, n_ctx: usize },
    #[error("the prompt is empty: there is nothing to condition generation on")]
    EmptyPrompt,
    #[error("the model has no chat template")]
    NoChatTemplate,
    #[error("invalid setting: {0}")]
    Invalid(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Renders `messages` with the model's chat template (ending with the assistant's
/// header when `add_generation_prompt`) and tokenises the text as a prompt: special
/// tokens written by the template are parsed as special tokens.
///
/// Templates often write the BOS token themselves while the tokenizer also adds one;
/// the duplicate is dropped so the model sees a single BOS, as it did in training.
pub fn chat_prompt_ids(
    model: &LoadedModel,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    let template = model
        .chat_template
        .as_ref()
        .ok_or(EngineError::NoChatTemplate)?;
    let text = template.render(messages, add_generation_prompt)?;
    let mut ids = model.tokenizer.encode_prompt(&text)?;
    if let Some(bos) = model.tokenizer.bos_id() {
        if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
            ids.remove(0);
        }
    }
    Ok(ids)
}
