//! Entropy-adaptive model switching (EAD): a small model generates, and while it is
//! uncertain a large model with the same tokenizer takes over.
//!
//! Every step the small model computes its next-token distribution. Its entropy (nats)
//! enters a rolling window of the last `window` steps; while the window's mean exceeds
//! `threshold` the token is chosen from the large model's distribution instead. The
//! large model keeps its own KV cache, which lags behind the context while the small
//! model generates; when it is asked for a token it first catches up on every token it
//! has not seen (the prompt at its first use, then the small model's tokens) in one
//! batched forward, then gives its distribution after the context.
//!
//! This is lossy (the output is neither model's alone) and off by default: the default
//! threshold, `+inf`, never switches, and with it the output is exactly the small
//! model's plain decoding. With `-inf` every token comes from the large model and the
//! output is exactly the large model's plain decoding (a forward row does not depend on
//! the batch it is computed in, so catching up in one batch changes nothing).
//!
//! The small model runs every step, even while the large one decides: its entropy is
//! what ends a switch.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Instant;

use model::LoadedModel;
use sample::Sampler;

use crate::stop::TokenText;
use crate::{check_same_vocabulary, EngineError, GenerationParams, Result, Session, StopReason};

/// When to hand a token to the large model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchingConfig {
    /// The large model decides while the rolling mean of the small model's entropy
    /// (nats) exceeds this. `+inf`: never (the default); `-inf`: always.
    pub threshold: f64,
    /// Steps in the rolling mean (the current step included); at the start of a
    /// generation the mean is over the steps so far.
    pub window: usize,
}

impl Default for SwitchingConfig {
    /// Off: every token from the small model.
    fn default() -> Self {
        SwitchingConfig {
            threshold: f64::INFINITY,
            window: 4,
        }
    }
}

impl SwitchingConfig {
    /// A window of at least one step and a threshold that is not NaN (a NaN would
    /// compare false with everything and silently turn switching off).
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(EngineError::Invalid(
                "the entropy window must hold at least 1 step".into(),
            ));
        }
        if self.threshold.is_nan() {
            return Err(EngineError::Invalid(
                "the entropy threshold is NaN; give a number (inf: never switch)".into(),
            ));
        }
        Ok(())
    }
}

/// One generated token and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchedToken {
    /// 0-based index among the generated tokens.
    pub index: usize,
    pub id: u32,
    /// The text shown for it (complete UTF-8; stop strings held back).
    pub text: String,
    /// Whether the large model chose it.
    pub from_large: bool,
    /// The small model's entropy at this step, nats.
    pub small_entropy: f64,
    /// The rolling mean that decided, nats.
    pub rolling_entropy: f64,
}

/// Counts and timings of one switched generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchingStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Tokens the large model chose.
    pub large_tokens: usize,
    /// Catch-ups of the large model: each computes the tokens it has not seen in one
    /// batch (split only past [`crate::DEFAULT_PREFILL_CHUNK`] tokens, like any prefill).
    pub large_catch_ups: usize,
    /// Tokens the large model computed (its prompt prefill included).
    pub large_computed: usize,
    /// Wall-clock seconds of the whole call (prompt prefill included; the callback's
    /// time excluded).
    pub secs: f64,
    pub stop_reason: StopReason,
}

impl SwitchingStats {
    /// Share of the generated tokens the large model chose (0 when nothing was
    /// generated).
    pub fn large_share(&self) -> f64 {
        if self.generated_tokens == 0 {
            0.0
        } else {
            self.large_tokens as f64 / self.generated_tokens as f64
        }
    }
}

/// The result of [`EntropySwitching::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchingGeneration {
    /// Every generated token, an end-of-generation token included.
    pub tokens: Vec<u32>,
    /// Per token: whether the large model chose it.
    pub from_large: Vec<bool>,
    /// The text shown: the concatenation of the tokens' `text`.
    pub text: String,
    pub stats: SwitchingStats,
}

/// Two sessions over models with one tokenizer, and the switching rule.
pub struct EntropySwitching<'m> {
    small: Session<'m>,
    large: Session<'m>,
    config: SwitchingConfig,
}

impl<'m> EntropySwitching<'m> {
    /// Fails when the models' vocabularies or tokenizers differ (a token id would mean
    /// different text to each), or the config is invalid.
    pub fn new(
        small: &'m LoadedModel,
        large: &'m LoadedModel,
        n_ctx: usize,
        config: SwitchingConfig,
    ) -> Result<EntropySwitching<'m>> {
        config.validate()?;
        check_same_vocabulary(large, small).map_err(|e| {
            EngineError::Invalid(format!(
                "entropy switching needs one tokenizer for both models ({e})"
            ))
        })?;
        Ok(EntropySwitching {
            small: Session::new(small, n_ctx)?,
            large: Session::new(large, n_ctx)?,
            config,
        })
    }

    pub fn config(&self) -> SwitchingConfig {
        self.config
    }

    /// Generates a continuation of `prompt`. Uses `params.max_tokens`, `sampler`,
    /// `stop_at_eog` and `stop`; the other settings (lookahead, contrastive, forced
    /// tokens, reports) belong to [`Session::generate`] and are refused here rather
    /// than ignored. `on_token` sees every token; `Break` stops
    /// ([`StopReason::Cancelled`]).
    ///
    /// Each call starts both caches afresh from the prompt's common prefix with what
    /// they held, like [`Session::generate`].
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_token: impl FnMut(&SwitchedToken) -> ControlFlow<()>,
    ) -> Result<SwitchingGeneration> {
        params.sampler.validate()?;
        if params.lookahead.is_some()
            || params.contrastive.is_some()
            || !params.forced.is_empty()
            || params.gumbel_max
        {
            return Err(EngineError::Invalid(
                "entropy switching supports max_tokens, sampler, stop_at_eog and stop only".into(),
            ));
        }
        let started = Instant::now();
        let mut callback_secs = 0.0;
        // The large model's cache may hold an earlier generation: keep only what is a
        // prefix of this prompt, so catching up appends exactly the missing tokens.
        let large_common = self
            .large
            .tokens()
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        self.large.truncate(large_common);
        self.small.sync_prompt(prompt)?;

        let n_ctx = self.small.n_ctx();
        let tok = &self.small.model().tokenizer;
        let mut token_text = TokenText::new(tok, &params.stop);
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut context = prompt.to_vec();
        let mut recent_entropy: VecDeque<f64> = VecDeque::with_capacity(self.config.window);
        let mut work: Vec<f32> = Vec::new();
        let mut tokens = Vec::new();
        let mut from_large = Vec::new();
        let mut text = String::new();
        let mut stats = SwitchingStats {
            prompt_tokens: prompt.len(),
            ..SwitchingStats::default()
        };

        for index in 0..params.max_tokens {
            let small_logits = self.small.logits().ok_or(EngineError::EmptyPrompt)?;
            let small_entropy = f64::from(sample::entropy(small_logits));
            if recent_entropy.len() == self.config.window {
                recent_entropy.pop_front();
            }
            recent_entropy.push_back(small_entropy);
            let rolling_entropy = recent_entropy.iter().sum::<f64>() / recent_entropy.len() as f64;
            let use_large = rolling_entropy > self.config.threshold;

            work.clear();
            if use_large {
                let unseen = &context[self.large.tokens().len()..];
                if !unseen.is_empty() {
                    stats.large_catch_ups += 1;
                    stats.large_computed += unseen.len();
                }
                let large_logits = self.large.prefill(unseen)?;
                work.extend_from_slice(large_logits);
                stats.large_tokens += 1;
            } else {
                work.extend_from_slice(small_logits);
            }
            let id = sampler.sample(&mut work, &context)?;
            context.push(id);
            tokens.push(id);
            from_large.push(use_large);

            // Both caches must be able to take every token of the context next step.
            let limit = if index + 1 == params.max_tokens {
                Some(StopReason::MaxTokens)
            } else if context.len() > n_ctx {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            let (shown, reason) = token_text.push(
                id,
                params.stop_at_eog && tok.is_end_of_generation(id),
                limit,
            );
            text.push_str(&shown);
            let event = SwitchedToken {
                index,
                id,
                text: shown,
                from_large: use_large,
                small_entropy,
                rolling_entropy,
            };
            let callback_start = Instant::now();
            let flow = on_token(&event);
            callback_secs += callback_start.elapsed().as_secs_f64();
            if let Some(r) = reason {
                stats.stop_reason = r;
                break;
            }
            if flow.is_break() {
                stats.stop_reason = StopReason::Cancelled;
                break;
            }
            self.small.prefill(&[id])?;
        }

        stats.generated_tokens = tokens.len();
        stats.secs = (started.elapsed().as_secs_f64() - callback_secs).max(0.0);
        Ok(SwitchingGeneration {
            tokens,
            from_large,
            text,
            stats,
        })
    }
}
