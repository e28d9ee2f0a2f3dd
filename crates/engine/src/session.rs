//! A [`Session`]: one sequence's KV cache, the tokens it holds, and the generation loop.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use model::{Batch, LoadedModel, ModelError, SequenceState};
use sample::{
    argmax, gumbel_noise, token_report, token_stats, top_k_logprobs, Sampler, SamplerConfig,
    StageReport,
};

use crate::contrastive::{contrast_in_place, ContrastiveConfig, ContrastiveStats};
use crate::kv::{KvController, KvOptions, KvStats};
use crate::lookahead::{LookaheadConfig, LookaheadStats};
use crate::stop::TokenText;
use crate::{EngineError, Result};

/// Tokens per forward call while prefilling. Long prompts are split so the forward
/// pass's scratch buffers (which grow with the batch: activations, attention scores)
/// stay small; 256 rows already keep the matrix kernels busy.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    /// Upper bound on generated tokens (an end-of-generation token counts).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop after an end-of-generation token (EOS, `<|im_end|>`, ...). Its text is not
    /// shown. Turn off to let the model run on past the end of its answer.
    pub stop_at_eog: bool,
    /// How many of the most likely alternatives to report per token (0 = none); costs
    /// a partial sort of the vocabulary per token.
    pub top_logprobs: usize,
    /// Stop as soon as the generated text contains one of these; the stop string and
    /// anything after it are not shown.
    pub stop: Vec<String>,
    /// Sample by the Gumbel-max trick with recorded, recomputable noise (same
    /// distribution as the default draw), so a generation can be replayed
    /// counterfactually: see [`GenerationParams::forced`].
    pub gumbel_max: bool,
    /// Tokens to take at the first steps instead of sampling (the sampler still sees
    /// them, and with Gumbel-max the noise steps advance). Replaying a recorded
    /// generation with one of these edited, and the same seed, gives the
    /// counterfactual continuation: what the model would have said after the edit
    /// with the same randomness.
    pub forced: Vec<u32>,
    /// Report each sampler stage's effect in every [`TokenEvent`] (a few extra passes
    /// over the vocabulary per token).
    pub report_stages: bool,
    /// Uncertainty-guided lookahead (AdaDec): at uncertain steps the token is chosen by
    /// a short greedy lookahead instead of by the sampler. `None` = off.
    pub lookahead: Option<LookaheadConfig>,
    /// Selective contrastive decoding (USCD) against a lame context. `None` = off.
    pub contrastive: Option<ContrastiveConfig>,
}

impl Default for GenerationParams {
    /// 128 greedy tokens, stopping at end of generation.
    fn default() -> Self {
        GenerationParams {
            max_tokens: 128,
            sampler: SamplerConfig::greedy(),
            stop_at_eog: true,
            top_logprobs: 0,
            stop: Vec::new(),
            gumbel_max: false,
            forced: Vec::new(),
            report_stages: false,
            lookahead: None,
            contrastive: None,
        }
    }
}

/// One generated token, as reported to the caller while generating.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenEvent {
    /// 0-based index among the generated tokens.
    pub index: usize,
    pub id: u32,
    /// Text to show now: complete UTF-8 only (a character split over tokens appears
    /// with its last token), minus anything that might begin a stop string (released
    /// once it cannot). Empty for an end-of-generation token. The concatenation over
    /// all events is [`Generation::text`].
    pub text: String,
    /// Natural log of the token's probability under the model (before sampler
    /// transformations such as temperature), so it measures the model, not the sampler.
    pub logprob: f32,
    /// Entropy of the model's distribution at this step, in nats.
    pub entropy: f32,
    /// Variance of the surprisal under the model's distribution (nats²).
    pub varentropy: f32,
    /// 0 when the token was the model's top choice.
    pub rank: usize,
    /// The `top_logprobs` most likely `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
    /// With [`GenerationParams::report_stages`]: what each sampler stage did (the
    /// probability mass of the model's distribution it removed, the candidates left).
    /// Empty otherwise, and at steps chosen by lookahead.
    pub stages: Vec<StageReport>,
    /// With `report_stages`: the probability of the token under the distribution it
    /// was drawn from (after every stage), e.g. for mirostat's observed surprise.
    pub sampled_prob: Option<f64>,
    /// The token was taken from [`GenerationParams::forced`], not sampled.
    pub forced: bool,
    /// With [`GenerationParams::gumbel_max`]: where this step's noise comes from, and
    /// the chosen token's noise value.
    pub gumbel: Option<GumbelTrace>,
}

impl TokenEvent {
    /// The event of token `id`, chosen at sampler step `step`: the model's view of it
    /// from `report`, and its Gumbel trace when `params.gumbel_max`. Stage reports and
    /// `forced` are the caller's to fill in.
    pub fn chosen(
        index: usize,
        id: u32,
        text: String,
        report: sample::TokenReport,
        params: &GenerationParams,
        step: u64,
    ) -> TokenEvent {
        TokenEvent {
            index,
            id,
            text,
            logprob: report.logprob,
            entropy: report.entropy,
            varentropy: report.varentropy,
            rank: report.rank,
            top: report.top,
            stages: Vec::new(),
            sampled_prob: None,
            forced: false,
            gumbel: params.gumbel_max.then(|| GumbelTrace {
                seed: params.sampler.seed,
                step,
                noise: gumbel_noise(params.sampler.seed, step, id),
            }),
        }
    }
}

/// The Gumbel noise of one step: every token's noise is
/// `sample::gumbel_noise(seed, step, id)`; `noise` is the chosen token's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GumbelTrace {
    pub seed: u64,
    pub step: u64,
    pub noise: f64,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StopReason {
    #[default]
    MaxTokens,
    EndOfGeneration,
    StopString,
    /// The next token would not fit the context.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxTokens => "max_tokens",
            StopReason::EndOfGeneration => "end_of_generation",
            StopReason::StopString => "stop_string",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts and timings of one [`Session::generate`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt passed in.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache.
    pub reused_tokens: usize,
    /// Seconds spent computing the other prompt tokens.
    pub prefill_secs: f64,
    pub generated_tokens: usize,
    /// Single-token forward passes (the last sampled token is never fed back, so this
    /// is usually `generated_tokens - 1`).
    pub decode_steps: usize,
    /// Seconds spent after the prefill in forward passes, sampling and statistics;
    /// time spent in the caller's callback (printing) is excluded.
    pub decode_secs: f64,
    pub stop_reason: StopReason,
    /// Pauses and extra work of uncertainty-guided lookahead (zero when off). Its
    /// forward passes are included in `decode_secs` but not in `decode_steps`.
    pub lookahead: LookaheadStats,
    /// Contrasted steps and the lame context's cost (zero when off).
    pub contrastive: ContrastiveStats,
}

impl GenerationStats {
    /// Prompt tokens actually computed.
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.reused_tokens
    }

    /// Prefill throughput (0 when nothing was computed).
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prefilled_tokens(), self.prefill_secs)
    }

    /// Decode throughput: forward passes per second, as llama.cpp reports "eval" speed
    /// (the first token comes from the prefill's logits and costs no pass).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if n == 0 || secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Every generated token, an end-of-generation token included.
    pub tokens: Vec<u32>,
    /// The text shown: the concatenation of the events' `text`.
    pub text: String,
    pub stats: GenerationStats,
}

/// What [`Session::sync_prompt`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillInfo {
    /// Tokens kept from the cache.
    pub reused: usize,
    /// Tokens computed.
    pub computed: usize,
}

/// One sequence: its KV cache and the tokens the cache holds, kept between calls so a
/// conversation only pays for what is new.
pub struct Session<'m> {
    model: &'m LoadedModel,
    state: SequenceState,
    /// The tokens whose keys and values are in the cache, in order (position = index).
    tokens: Vec<u32>,
    /// Logits after the last token of `tokens`; empty when unknown (after truncation).
    logits: Vec<f32>,
    prefill_chunk: usize,
    positions: Vec<usize>,
    /// KV eviction policy (`None`: the exact cache).
    kv: Option<KvController>,
}

impl<'m> Session<'m> {
    /// A session whose cache holds `n_ctx` tokens (prompt and generated together).
    /// The cache grows as it fills, so a large `n_ctx` costs nothing up front.
    pub fn new(model: &'m LoadedModel, n_ctx: usize) -> Result<Session<'m>> {
        if n_ctx == 0 {
            return Err(EngineError::Invalid(
                "the context size must be at least 1 token".into(),
            ));
        }
        Ok(Session {
            model,
            state: model.model.new_state(n_ctx),
            tokens: Vec::new(),
            logits: Vec::new(),
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            positions: Vec::new(),
            kv: None,
        })
    }

    /// Runs every forward call under a KV eviction policy (see [`crate::kv`]). With a
    /// policy that evicts, the cache no longer holds every token, so a prompt that does
    /// not extend the cached tokens is recomputed from scratch (no prefix reuse), and
    /// lookahead is refused.
    pub fn with_kv(mut self, options: &KvOptions) -> Result<Session<'m>> {
        self.kv = Some(options.controller(&self.model.model, self.n_ctx())?);
        Ok(self)
    }

    /// The KV policy's counters, when one is set.
    pub fn kv_stats(&self) -> Option<KvStats> {
        self.kv.as_ref().map(KvController::stats)
    }

    fn kv_evicts(&self) -> bool {
        self.kv.as_ref().is_some_and(KvController::evicts)
    }

    /// Sets the prefill chunk size (at least 1).
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Session<'m> {
        self.prefill_chunk = tokens.max(1);
        self
    }

    pub fn model(&self) -> &'m LoadedModel {
        self.model
    }

    /// Capacity of the context in tokens.
    pub fn n_ctx(&self) -> usize {
        self.state.cache.capacity()
    }

    /// The tokens in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The sequence state (KV cache), e.g. for memory accounting.
    pub fn state(&self) -> &SequenceState {
        &self.state
    }

    /// Logits after the last cached token, when known.
    pub fn logits(&self) -> Option<&[f32]> {
        (!self.logits.is_empty()).then_some(self.logits.as_slice())
    }

    /// Empties the cache.
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Keeps only the first `n` cached tokens.
    pub fn truncate(&mut self, n: usize) {
        if n < self.tokens.len() && self.kv_evicts() {
            // Slots no longer map to tokens: start over.
            self.state.cache.clear();
            self.tokens.clear();
            self.logits.clear();
            if let Some(kv) = &mut self.kv {
                kv.reset();
            }
        } else if n < self.tokens.len() {
            self.state.cache.truncate(n);
            self.tokens.truncate(n);
            self.logits.clear();
        }
    }

    /// Appends `ids` to the cache, computing them in chunks, and returns the logits
    /// after the last one. Fails before computing anything if they do not fit or hold
    /// an id outside the vocabulary.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<&[f32]> {
        if ids.is_empty() {
            return self.logits().ok_or(EngineError::EmptyPrompt);
        }
        let needed = self.tokens.len() + ids.len();
        if needed > self.n_ctx() {
            return Err(ModelError::ContextFull {
                needed,
                capacity: self.n_ctx(),
            }
            .into());
        }
        let vocab = self.model.model.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab} tokens)"
            ))
            .into());
        }
        for chunk in ids.chunks(self.prefill_chunk) {
            self.forward(chunk)?;
        }
        Ok(&self.logits)
    }

    /// Makes the cache hold exactly `prompt`, keeping the longest common prefix of
    /// what it holds and computing the rest (a chat resends the whole conversation
    /// each turn; only the new turn is computed). If the cache diverges from the
    /// prompt it is truncated where they part. At least the last prompt token is
    /// recomputed when its logits are not at hand.
    ///
    /// Errors before computing anything when the prompt leaves no room for a
    /// generated token (`prompt + 1 > n_ctx`) or is empty.
    pub fn sync_prompt(&mut self, prompt: &[u32]) -> Result<PrefillInfo> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() + 1 > self.n_ctx() {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                n_ctx: self.n_ctx(),
            });
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let have_logits =
            common == prompt.len() && common == self.tokens.len() && !self.logits.is_empty();
        if have_logits {
            return Ok(PrefillInfo {
                reused: common,
                computed: 0,
            });
        }
        let mut keep = common.min(prompt.len() - 1);
        if keep < self.tokens.len() && self.kv_evicts() {
            keep = 0;
        }
        self.truncate(keep);
        self.prefill(&prompt[keep..])?;
        Ok(PrefillInfo {
            reused: keep,
            computed: prompt.len() - keep,
        })
    }

    /// Generates a continuation of `prompt` (the whole context to condition on; a
    /// cached common prefix is reused). Each token is reported to `on_token` as soon
    /// as it is sampled; returning `ControlFlow::Break` stops generation
    /// ([`StopReason::Cancelled`]).
    ///
    /// Afterwards the cache holds the prompt and every generated token but the last
    /// (which was never fed back), so a following call that extends this text only
    /// computes the new part.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation> {
        params.sampler.validate()?;
        if let Some(la) = &params.lookahead {
            la.validate()?;
            if self.kv_evicts() {
                return Err(EngineError::Invalid(
                    "lookahead cannot be combined with a KV eviction policy".into(),
                ));
            }
        }
        if let Some(c) = &params.contrastive {
            c.validate()?;
            if params.lookahead.is_some() {
                return Err(EngineError::Invalid(
                    "lookahead and contrastive decoding both choose the token at uncertain \
                     steps; use one of them"
                        .into(),
                ));
            }
        }
        let mut lookahead_stats = LookaheadStats::default();
        let mut contrastive_stats = ContrastiveStats::default();
        // The lame context of contrastive decoding, created at its first use.
        let mut lame: Option<Session<'m>> = None;
        let mut lame_ids: Vec<u32> = Vec::new();
        let mut logprobs: Vec<f32> = Vec::new();
        let mut lame_logprobs: Vec<f32> = Vec::new();
        let mut sampler = Sampler::new(params.sampler.clone());
        if params.gumbel_max {
            sampler = sampler.with_gumbel_max();
        }
        let vocab = self.model.model.config.vocab_size;
        if let Some(&bad) = params.forced.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Invalid(format!(
                "forced token id {bad} is outside the vocabulary ({vocab} tokens)"
            )));
        }

        let t_prefill = Instant::now();
        let info = self.sync_prompt(prompt)?;
        let prefill_secs = t_prefill.elapsed().as_secs_f64();

        let tok = &self.model.tokenizer;
        let mut token_text = TokenText::new(tok, &params.stop);
        let mut history = prompt.to_vec();
        let mut work = Vec::with_capacity(self.logits.len());
        let mut generated = Vec::new();
        let mut text = String::new();
        let mut stop_reason = StopReason::MaxTokens;
        let mut decode = Duration::ZERO;
        let mut decode_steps = 0;

        let mut t = Instant::now();
        for index in 0..params.max_tokens {
            work.clear();
            work.extend_from_slice(&self.logits);
            // Whether `work` still holds the model's own logits (contrast rewrites it).
            let mut work_is_model = true;
            if let Some(c) = params
                .contrastive
                .as_ref()
                .filter(|c| sample::entropy(&self.logits) > c.entropy_threshold)
            {
                let t0 = Instant::now();
                let lame = match &mut lame {
                    Some(l) => l,
                    None => lame.insert(Session::new(self.model, self.n_ctx())?),
                };
                lame_ids.clear();
                lame_ids.extend_from_slice(&c.lame_prompt);
                lame_ids.extend_from_slice(&generated);
                contrastive_stats.lame_tokens += lame.sync_prompt(&lame_ids)?.computed;
                let lame_logits = lame.logits().ok_or(EngineError::EmptyPrompt)?;
                logprobs.resize(work.len(), 0.0);
                lame_logprobs.resize(work.len(), 0.0);
                sample::log_softmax(&self.logits, &mut logprobs);
                sample::log_softmax(lame_logits, &mut lame_logprobs);
                contrast_in_place(
                    &mut work,
                    &logprobs,
                    &lame_logprobs,
                    c.alpha,
                    c.plausibility,
                );
                work_is_model = false;
                contrastive_stats.contrasted += 1;
                if argmax(&work) != argmax(&self.logits) {
                    contrastive_stats.changed += 1;
                }
                contrastive_stats.secs += t0.elapsed().as_secs_f64();
            }
            let pause = params
                .lookahead
                .as_ref()
                .filter(|la| sample::entropy(&self.logits) > la.entropy_threshold);
            let mut stages = Vec::new();
            let mut sampled_prob = None;
            // The model's own view of the token (temperature 1, before any stage), when
            // the sampler's report already computed it on the model's logits.
            let mut model_view = None;
            let step = sampler.step();
            let id = match pause {
                _ if index < params.forced.len() => {
                    let t = params.forced[index];
                    sampled_prob = Some(sampler.force(&mut work, &history, t)?);
                    t
                }
                Some(la) => self.lookahead_choice(la, &mut lookahead_stats)?,
                None if params.report_stages => {
                    let (id, report) =
                        sampler.sample_with_report(&mut work, &history, params.top_logprobs)?;
                    stages = report.stages;
                    sampled_prob = Some(report.sampled_prob);
                    if work_is_model {
                        model_view = Some(report.token);
                    }
                    id
                }
                None => sampler.sample(&mut work, &history)?,
            };
            let report =
                model_view.unwrap_or_else(|| token_report(&self.logits, id, params.top_logprobs));
            generated.push(id);
            history.push(id);

            // Decide now whether this is the last token, so held-back text can be
            // released with it.
            let limit = if index + 1 == params.max_tokens {
                Some(StopReason::MaxTokens)
            } else if self.tokens.len() + 1 > self.n_ctx() {
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
            decode += t.elapsed();

            let event = TokenEvent {
                stages,
                sampled_prob,
                forced: index < params.forced.len(),
                ..TokenEvent::chosen(index, id, shown, report, params, step)
            };
            let flow = on_token(&event);
            t = Instant::now();
            if let Some(r) = reason {
                stop_reason = r;
                break;
            }
            if flow.is_break() {
                stop_reason = StopReason::Cancelled;
                break;
            }
            self.forward(&[id])?;
            decode_steps += 1;
        }
        decode += t.elapsed();

        Ok(Generation {
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                reused_tokens: info.reused,
                prefill_secs,
                generated_tokens: generated.len(),
                decode_steps,
                decode_secs: decode.as_secs_f64(),
                stop_reason,
                lookahead: lookahead_stats,
                contrastive: contrastive_stats,
            },
            tokens: generated,
            text,
        })
    }

    /// The AdaDec choice at an uncertain step (see [`crate::lookahead`]): each of the
    /// `top_k` most likely next tokens is extended greedily to a `depth`-token sequence
    /// (fewer when the context would overflow) and the candidate with the most likely
    /// sequence wins, ties going to the more likely candidate. The cache and logits
    /// are restored afterwards.
    fn lookahead_choice(
        &mut self,
        la: &LookaheadConfig,
        stats: &mut LookaheadStats,
    ) -> Result<u32> {
        let start = Instant::now();
        let base_len = self.tokens.len();
        let saved_logits = std::mem::take(&mut self.logits);
        let candidates = top_k_logprobs(&saved_logits, la.top_k);
        // `depth - 1` forward passes per candidate, each taking a cache slot.
        let depth = la.depth.min(self.n_ctx() - base_len + 1);
        let mut best: Option<(u32, f64)> = None;
        for &(candidate, logprob) in &candidates {
            let mut score = f64::from(logprob);
            let mut last = candidate;
            for _ in 1..depth {
                let step = self.forward(&[last]);
                if let Err(e) = step {
                    self.truncate(base_len);
                    self.logits = saved_logits;
                    return Err(e);
                }
                stats.forwards += 1;
                let next = argmax(&self.logits);
                score += f64::from(token_stats(&self.logits, next).logprob);
                last = next;
            }
            self.truncate(base_len);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((candidate, score));
            }
        }
        self.logits = saved_logits;
        let chosen = best.map_or_else(|| argmax(&self.logits), |(id, _)| id);
        stats.pauses += 1;
        if chosen != argmax(&self.logits) {
            stats.changed += 1;
        }
        stats.secs += start.elapsed().as_secs_f64();
        Ok(chosen)
    }

    /// The model, the sequence state, the cached tokens and the logits after them, for
    /// loops in this crate that append token trees and keep only some slots
    /// (speculative decoding). Callers leave `tokens` equal to what the cache holds and
    /// `logits` after its last token (or empty when unknown).
    pub(crate) fn parts_mut(
        &mut self,
    ) -> (
        &'m LoadedModel,
        &mut SequenceState,
        &mut Vec<u32>,
        &mut Vec<f32>,
    ) {
        (
            self.model,
            &mut self.state,
            &mut self.tokens,
            &mut self.logits,
        )
    }

    /// One forward call: appends `ids` at the next positions and keeps the logits.
    fn forward(&mut self, ids: &[u32]) -> Result<()> {
        let start = self.state.cache.next_position();
        self.positions.clear();
        self.positions.extend(start..start + ids.len());
        let batch = Batch::causal(ids, &self.positions);
        if let Some(kv) = &mut self.kv {
            kv.forward(&self.model.model, &mut self.state, &batch, &mut self.logits)?;
        } else {
            let logits = self.model.model.forward(&mut self.state, &batch, None)?;
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
        self.tokens.extend_from_slice(ids);
        Ok(())
    }
}
