//! Continuous batching: many sequences advanced together, one forward pass per step.
//!
//! A [`Scheduler`] owns the active sequences, each with its own KV cache, sampler and
//! stop handling. Every [`Scheduler::step`] builds one batch over all of them — the
//! next prompt chunk of sequences still prefilling, the last sampled token of
//! sequences decoding — runs it with [`model::Model::forward_many`] (weights read once
//! for all rows), then samples a token for each sequence whose prompt is done and
//! reports it to that sequence's sink. New requests are admitted between steps, so a
//! request never waits for the running ones to finish.
//!
//! Prefill is chunked: at most [`SchedulerConfig::prefill_chunk`] prompt tokens enter
//! a step (shared by the prefilling sequences, oldest first), so a long prompt delays
//! the running streams by at most one chunk per step.
//!
//! Batching changes no result: the forward rows of a batched pass are bit-identical to
//! the same sequence run alone (tests/scheduler.rs checks greedy outputs of concurrent
//! requests against [`crate::Session::generate`]).
//!
//! Speculative decoding per sequence ([`SequenceRequest::speculative`], the model-free
//! drafters `lookup`, `recycle` and `ngram-adaptive`): a decoding sequence with a drafter feeds its
//! pending token plus a draft tree (tree attention mask, positions by depth) instead of
//! one token, in the same batched pass as everyone else. The rows are then walked from
//! the root with the sequence's own sampler: the token it picks from a node's row is
//! exactly what plain decoding would pick there (same row bits, same sampler state),
//! and when that token is a child of the node the walk goes on to the child's row. The
//! output is therefore identical to plain decoding for every sampler, greedy or
//! seeded; drafts only change how many tokens one pass yields. Rejected nodes leave
//! the cache; an [`AdaptiveBudget`] shrinks the draft when little is accepted.
//!
//! Prefix cache: the caches of sequences that finished normally (exact KV only) are
//! kept, most recent last, up to [`SchedulerConfig::prefix_cache`] of them. A new
//! request takes the one sharing the longest prefix with its prompt (at least
//! [`MIN_PREFIX_REUSE`] tokens), cut back to that prefix, and prefills only the rest.
//! Forward rows do not depend on how a prompt was chunked, so reuse changes no output.

use std::ops::ControlFlow;
use std::sync::OnceLock;
use std::time::Instant;

use model::{
    AttentionObserver, Batch, ForwardScratch, LoadedModel, LogitsFor, SequenceBatch, SequenceState,
};
use sample::{token_report, token_report_with, Sampler};
use spec::{
    AdaptiveBudget, AdaptiveConfig, Drafter, LookupConfig, LookupDrafter, NgramAdaptiveConfig,
    NgramAdaptiveDrafter, RecycleConfig, RecycleDrafter, TokenTree,
};

use crate::constraint::{ConstrainedSampler, ConstraintMode, Grammar};
use crate::kv::{KvController, KvOptions, PolicyObserver};
use crate::session::{Generation, GenerationParams, GenerationStats, StopReason, TokenEvent};
use crate::speculative::SpeculativeMethod;
use crate::stop::TokenText;
use crate::{EngineError, Result};

/// Limits of a [`Scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences decoded together (the server's `--parallel`).
    pub max_sequences: usize,
    /// Context of each sequence (prompt + generated tokens).
    pub n_ctx: usize,
    /// Prompt tokens per step, over all prefilling sequences.
    pub prefill_chunk: usize,
    /// Finished sequences' caches kept for reuse by prompts that share a prefix
    /// (0: no prefix cache).
    pub prefix_cache: usize,
}

/// Shortest shared prefix worth taking a cached sequence for.
pub const MIN_PREFIX_REUSE: usize = 16;

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_sequences: 4,
            n_ctx: 2048,
            prefill_chunk: 128,
            prefix_cache: 4,
        }
    }
}

/// One request: a prompt and how to continue it.
#[derive(Clone, Debug, Default)]
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// KV eviction policy of this sequence (`None`: the exact cache).
    pub kv: Option<KvOptions>,
    /// Output constrained by a grammar (JSON schema, ...), and how it is enforced.
    pub grammar: Option<(Grammar, ConstraintMode)>,
    /// Speculative decoding with a model-free drafter (`lookup`, `recycle` or
    /// `ngram-adaptive`); the output is the same as without (see the module
    /// documentation).
    pub speculative: Option<SpeculativeMethod>,
}

/// What a sequence's sink is told.
#[derive(Debug)]
pub enum SequenceEvent<'a> {
    /// A generated token (the same event [`crate::Session::generate`] reports).
    Token(&'a TokenEvent),
    /// Generation ended normally; the sequence is gone. `kv_bytes`: what its cache
    /// held at the end (measured from the storage).
    Finished {
        generation: &'a Generation,
        kv_bytes: usize,
    },
    /// Generation failed; the sequence is gone.
    Failed(&'a EngineError),
}

/// Receives a sequence's events on the scheduler's thread. Returning
/// `ControlFlow::Break` (e.g. because the client went away) ends the sequence at once
/// and frees its cache; no further events are sent to it.
pub type EventSink = Box<dyn FnMut(SequenceEvent<'_>) -> ControlFlow<()> + Send>;

/// Identifies an admitted sequence.
pub type SequenceId = u64;

/// Counters of one [`Scheduler::step`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Sequences in the forward pass.
    pub sequences: usize,
    /// Prompt tokens computed.
    pub prompt_tokens: usize,
    /// Tokens sampled (one per sequence whose prompt was complete).
    pub generated_tokens: usize,
    /// Sequences that ended (finished, failed or cancelled) in this step.
    pub ended: usize,
    /// Draft tokens verified in this step (speculative sequences).
    pub drafted: usize,
    /// Draft tokens accepted in this step.
    pub accepted: usize,
    /// Prompt tokens taken from the prefix cache by sequences admitted since the last
    /// step (not computed).
    pub reused_tokens: usize,
    pub secs: f64,
}

struct Active<'m> {
    id: SequenceId,
    state: SequenceState,
    kv: Option<KvController>,
    params: GenerationParams,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The last sampled token, to be fed in the next step.
    pending: Option<u32>,
    sampler: Sampler,
    /// The grammar's state, when the output is constrained.
    constraint: Option<ConstrainedSampler>,
    text: TokenText<'m>,
    history: Vec<u32>,
    generated: Vec<u32>,
    shown: String,
    started: Instant,
    prefill_secs: f64,
    decode_steps: usize,
    sink: EventSink,
    /// Tokens of this step's batch, with their positions.
    rows: Vec<u32>,
    positions: Vec<usize>,
    /// The drafter, when this sequence decodes speculatively.
    spec: Option<Speculation>,
    /// Prompt tokens taken from the prefix cache.
    reused: usize,
    /// Whether the sequence ended normally (its cache may then be kept for reuse).
    finished: bool,
}

/// A finished sequence's cache and the tokens it holds.
struct CachedPrefix {
    tokens: Vec<u32>,
    state: SequenceState,
}

/// A sequence's speculative state: its drafter, adaptive budget and this step's tree.
struct Speculation {
    drafter: Box<dyn Drafter + Send>,
    budget: AdaptiveBudget,
    tree: TokenTree,
    /// This step's tree attention mask, `[nodes, cache + nodes]`.
    mask: Vec<bool>,
    /// Cache length before this step's tree (the tree's first slot).
    base: usize,
    /// Whether this step verifies a tree (more than the root).
    verifying: bool,
}

impl Speculation {
    fn new(method: SpeculativeMethod) -> Result<Speculation> {
        let drafter: Box<dyn Drafter + Send> = match method {
            SpeculativeMethod::Lookup => Box::new(LookupDrafter::new(LookupConfig::default())),
            SpeculativeMethod::Recycle => Box::new(RecycleDrafter::new(RecycleConfig::default())),
            SpeculativeMethod::NgramAdaptive => {
                Box::new(NgramAdaptiveDrafter::new(NgramAdaptiveConfig::default()))
            }
            other => return Err(not_batched(other)),
        };
        Ok(Speculation {
            drafter,
            budget: AdaptiveBudget::new(AdaptiveConfig::default()),
            tree: TokenTree::new(0),
            mask: Vec::new(),
            base: 0,
            verifying: false,
        })
    }
}

fn not_batched(method: SpeculativeMethod) -> EngineError {
    EngineError::Invalid(format!(
        "speculative method {method} is not available in batched generation (valid: {})",
        SpeculativeMethod::MODEL_FREE.map(|m| m.as_str()).join(", ")
    ))
}

/// Advances many sequences together; see the module documentation.
pub struct Scheduler<'m> {
    model: &'m LoadedModel,
    config: SchedulerConfig,
    active: Vec<Active<'m>>,
    scratch: ForwardScratch,
    work: Vec<f32>,
    next_id: SequenceId,
    /// Finished caches, least recently finished first.
    prefixes: Vec<CachedPrefix>,
    /// Prompt tokens reused since the last step (reported by the next step).
    reused_since_step: usize,
}

impl<'m> Scheduler<'m> {
    pub fn new(model: &'m LoadedModel, config: SchedulerConfig) -> Result<Scheduler<'m>> {
        if config.max_sequences == 0 || config.n_ctx < 2 || config.prefill_chunk == 0 {
            return Err(EngineError::Invalid(
                "the scheduler needs at least 1 sequence, a context of 2 tokens and a \
                 prefill chunk of 1 token"
                    .into(),
            ));
        }
        Ok(Scheduler {
            model,
            config,
            active: Vec::new(),
            scratch: ForwardScratch::default(),
            work: Vec::new(),
            next_id: 0,
            prefixes: Vec::new(),
            reused_since_step: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Sequences being prefilled or decoded.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Whether another sequence can be admitted now.
    pub fn has_room(&self) -> bool {
        self.active.len() < self.config.max_sequences
    }

    /// Bytes of keys and values held by all active sequences, measured from their
    /// caches.
    pub fn kv_bytes(&self) -> usize {
        self.active
            .iter()
            .map(|a| a.state.cache.memory_bytes())
            .sum()
    }

    /// Bytes held by the prefix cache's kept sequences (not counted by
    /// [`Scheduler::kv_bytes`]).
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefixes
            .iter()
            .map(|p| p.state.cache.memory_bytes())
            .sum()
    }

    /// Drops every cached prefix.
    pub fn clear_prefix_cache(&mut self) {
        self.prefixes.clear();
    }

    /// A cached state sharing at least [`MIN_PREFIX_REUSE`] tokens with `prompt`
    /// (the longest such), cut back to the shared part; at least one prompt token is
    /// left to compute, for the logits.
    fn take_prefix(&mut self, prompt: &[u32]) -> Option<(SequenceState, usize)> {
        let shared = |t: &[u32]| t.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let (best, n) = self
            .prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| (i, shared(&p.tokens).min(prompt.len() - 1)))
            .max_by_key(|&(i, n)| (n, i))?;
        if n < MIN_PREFIX_REUSE {
            return None;
        }
        let mut state = self.prefixes.remove(best).state;
        state.cache.truncate(n);
        Some((state, n))
    }

    /// Keeps an ended sequence's cache for reuse when it finished normally on the
    /// exact cache: what it holds is the prompt and the generated tokens fed back (a
    /// speculative sequence may hold unverified draft entries past that: only its
    /// prompt is kept).
    fn keep_prefix(&mut self, a: Active<'_>) {
        if self.config.prefix_cache == 0 || !a.finished || a.kv.is_some() {
            return;
        }
        let mut state = a.state;
        let n = if a.spec.is_some() {
            a.prompt.len()
        } else {
            a.history.len().saturating_sub(1)
        }
        .min(state.cache.len());
        if n < MIN_PREFIX_REUSE {
            return;
        }
        state.cache.truncate(n);
        let mut tokens = a.history;
        tokens.truncate(n);
        // The same tokens cached twice: keep only the newer.
        self.prefixes.retain(|p| p.tokens != tokens);
        self.prefixes.push(CachedPrefix { tokens, state });
        if self.prefixes.len() > self.config.prefix_cache {
            self.prefixes.remove(0);
        }
    }

    /// Checks a request without admitting it: the errors [`Scheduler::admit`] would
    /// give, so a server can answer 400 before queueing.
    pub fn validate(model: &LoadedModel, n_ctx: usize, req: &SequenceRequest) -> Result<()> {
        req.params.sampler.validate()?;
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if req.prompt.len() + 1 > n_ctx {
            return Err(EngineError::PromptTooLong {
                prompt: req.prompt.len(),
                n_ctx,
            });
        }
        if req.params.max_tokens == 0 {
            return Err(EngineError::Invalid("max_tokens must be at least 1".into()));
        }
        let vocab = model.model.config.vocab_size;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab} tokens)"
            )));
        }
        if req.params.lookahead.is_some() || req.params.contrastive.is_some() {
            return Err(EngineError::Invalid(
                "lookahead and contrastive decoding are not available in batched generation".into(),
            ));
        }
        if let Some(kv) = &req.kv {
            kv.controller(&model.model, n_ctx)?;
        }
        if let Some(method) = req.speculative {
            if !SpeculativeMethod::MODEL_FREE.contains(&method) {
                return Err(not_batched(method));
            }
            if req.kv.as_ref().is_some_and(|kv| !kv.is_exact()) {
                // Eviction would score and drop draft entries before verification.
                return Err(EngineError::Invalid(
                    "speculative decoding needs the exact KV cache (kv_policy full, kv_dtype f16)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Admits a request; its events go to `sink`. Fails (without calling the sink)
    /// when there is no room or the request is invalid.
    pub fn admit(&mut self, req: SequenceRequest, sink: EventSink) -> Result<SequenceId> {
        if !self.has_room() {
            return Err(EngineError::Invalid(format!(
                "all {} sequences are busy",
                self.config.max_sequences
            )));
        }
        Scheduler::validate(self.model, self.config.n_ctx, &req)?;
        let kv = match &req.kv {
            Some(o) if !o.is_exact() => Some(o.controller(&self.model.model, self.config.n_ctx)?),
            _ => None,
        };
        let constraint = match &req.grammar {
            Some((g, mode)) => Some(ConstrainedSampler::new(g, *mode)?),
            None => None,
        };
        let spec = req.speculative.map(Speculation::new).transpose()?;
        let mut sampler = Sampler::new(req.params.sampler.clone());
        if req.params.gumbel_max {
            sampler = sampler.with_gumbel_max();
        }
        // Only the exact cache is shared: a policy or quantisation changes entries.
        let reuse = if kv.is_none() {
            self.take_prefix(&req.prompt)
        } else {
            None
        };
        let (state, reused) = match reuse {
            Some((state, n)) => (state, n),
            None => (self.model.model.new_state(self.config.n_ctx), 0),
        };
        self.reused_since_step += reused;
        let id = self.next_id;
        self.next_id += 1;
        self.active.push(Active {
            id,
            state,
            kv,
            text: TokenText::new(&self.model.tokenizer, &req.params.stop),
            history: req.prompt.clone(),
            prompt: req.prompt,
            params: req.params,
            prefilled: reused,
            pending: None,
            sampler,
            constraint,
            generated: Vec::new(),
            shown: String::new(),
            started: Instant::now(),
            prefill_secs: 0.0,
            decode_steps: 0,
            sink,
            rows: Vec::new(),
            positions: Vec::new(),
            spec,
            reused,
            finished: false,
        });
        Ok(id)
    }

    /// Ends a sequence now (its sink gets nothing more). Returns whether it was active.
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        let before = self.active.len();
        self.active.retain(|a| a.id != id);
        self.active.len() < before
    }

    /// Ends every sequence with `error` (e.g. at shutdown).
    pub fn fail_all(&mut self, error: &EngineError) {
        for mut a in self.active.drain(..) {
            let _ = (a.sink)(SequenceEvent::Failed(error));
        }
    }

    /// One batched forward pass over every active sequence, then one sampled token for
    /// each sequence whose prompt is complete. Does nothing without active sequences.
    pub fn step(&mut self) -> StepStats {
        let start = Instant::now();
        let mut stats = StepStats {
            reused_tokens: std::mem::take(&mut self.reused_since_step),
            ..StepStats::default()
        };
        if self.active.is_empty() {
            return stats;
        }
        // Rows of this step: decoding sequences feed their pending token; prefilling
        // ones share the chunk budget, oldest first.
        let mut budget = self.config.prefill_chunk;
        let n_ctx = self.config.n_ctx;
        for a in &mut self.active {
            a.rows.clear();
            a.positions.clear();
            let next_pos = a.state.cache.next_position();
            if let Some(t) = a.pending {
                if let Some(spec) = &mut a.spec {
                    // Root = the pending token; drafts below it, within the tokens
                    // still wanted and the context.
                    let base = a.state.cache.len();
                    let room = n_ctx.saturating_sub(base + 1);
                    let max_depth = a
                        .params
                        .max_tokens
                        .saturating_sub(a.generated.len())
                        .min(room);
                    let n_draft = spec.budget.budget().min(room);
                    spec.tree.reset(t);
                    if n_draft > 0 && max_depth > 0 {
                        spec.drafter
                            .propose(&a.history, &mut spec.tree, n_draft, max_depth);
                    }
                    spec.base = base;
                    spec.verifying = spec.tree.len() > 1;
                    spec.tree.positions(next_pos, &mut a.positions);
                    a.rows.extend_from_slice(spec.tree.tokens());
                    if spec.verifying {
                        spec.tree.mask(base, &mut spec.mask);
                    }
                } else {
                    a.rows.push(t);
                    a.positions.push(next_pos);
                }
            } else if a.prefilled < a.prompt.len() && budget > 0 {
                let n = (a.prompt.len() - a.prefilled).min(budget);
                budget -= n;
                a.rows
                    .extend_from_slice(&a.prompt[a.prefilled..a.prefilled + n]);
                a.positions.extend(next_pos..next_pos + n);
            }
        }

        // The forward pass. Observers only for sequences whose KV policy watches
        // attention; they live in `parts` so the batch can borrow them.
        let model = &self.model.model;
        let mut in_batch: Vec<usize> = Vec::with_capacity(self.active.len());
        let mut parts: Vec<BatchPart> = Vec::with_capacity(self.active.len());
        for (k, a) in self.active.iter_mut().enumerate() {
            if a.rows.is_empty() {
                continue;
            }
            in_batch.push(k);
            let tree_mask = a
                .spec
                .as_ref()
                .filter(|s| s.verifying)
                .map(|s| s.mask.as_slice());
            parts.push(BatchPart {
                cache: &mut a.state.cache,
                observer: a.kv.as_mut().and_then(KvController::observer),
                rows: &a.rows,
                positions: &a.positions,
                tree_mask,
            });
        }
        stats.sequences = parts.len();
        let mut seqs: Vec<SequenceBatch> = parts
            .iter_mut()
            .map(|p| SequenceBatch {
                cache: &mut *p.cache,
                batch: match p.tree_mask {
                    // A draft tree: every node's row is verified.
                    Some(mask) => Batch {
                        tokens: p.rows,
                        positions: p.positions,
                        mask: Some(mask),
                        logits: LogitsFor::All,
                    },
                    None => Batch {
                        logits: LogitsFor::Last,
                        ..Batch::causal(p.rows, p.positions)
                    },
                },
                observer: p.observer.as_mut().map(|o| o as &mut dyn AttentionObserver),
            })
            .collect();
        let result = model.forward_many(&mut self.scratch, &mut seqs);
        drop(seqs);
        drop(parts);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A model error here is a resource problem or a bug shared by the batch
                // (inputs were validated at admission): fail every sequence in it.
                let err = EngineError::from(e);
                for &k in in_batch.iter().rev() {
                    let mut a = self.active.remove(k);
                    let _ = (a.sink)(SequenceEvent::Failed(&err));
                    stats.ended += 1;
                }
                stats.secs = start.elapsed().as_secs_f64();
                return stats;
            }
        };

        // Sample for every sequence whose prompt is complete; note who ended.
        let vocab = model.config.vocab_size;
        let tok = &self.model.tokenizer;
        // Logits rows of each sequence in the batch (`row_of[i]..row_of[i + 1]`), and
        // the exp pass of the token reports of the rows that will emit a token: it does
        // not depend on the token, so it runs ahead on the pool (the rest of sampling
        // is serial).
        let mut row_of = Vec::with_capacity(in_batch.len() + 1);
        let mut verifying = Vec::with_capacity(in_batch.len());
        let mut emitting = Vec::with_capacity(in_batch.len());
        row_of.push(0);
        for &k in &in_batch {
            let a = &self.active[k];
            let tree = a.spec.as_ref().is_some_and(|s| s.verifying);
            let n_rows = if tree { a.rows.len() } else { 1 };
            row_of.push(row_of[row_of.len() - 1] + n_rows);
            verifying.push(tree);
            let completes = a.pending.is_some() || a.prefilled + a.rows.len() >= a.prompt.len();
            emitting.push(!tree && completes);
        }
        let moments: Vec<OnceLock<sample::Moments>> =
            in_batch.iter().map(|_| OnceLock::new()).collect();
        if emitting.iter().filter(|&&e| e).count() > 1 {
            model.run_parallel(in_batch.len(), &|i| {
                if emitting[i] {
                    let row = &logits[row_of[i] * vocab..(row_of[i] + 1) * vocab];
                    let _ = moments[i].set(sample::moments(row));
                }
            });
        }
        let mut ended: Vec<usize> = Vec::new();
        for (i, &k) in in_batch.iter().enumerate() {
            let a = &mut self.active[k];
            let rows = &logits[row_of[i] * vocab..row_of[i + 1] * vocab];
            let outcome = if verifying[i] {
                verify_tree(a, rows, vocab, &mut self.work, tok, n_ctx, &mut stats)
            } else {
                let decoding = a.pending.is_some();
                let pre = moments[i].get();
                let r = sample_next(a, rows, pre, &mut self.work, tok, n_ctx, &mut stats);
                if let (true, Ok(true), Some(spec)) = (decoding, &r, &mut a.spec) {
                    // A plain step of a speculative sequence: the drafter still learns
                    // from the row (Token Recycling), and the budget counts it (a
                    // probe follows some plain steps).
                    spec.drafter.observe(&spec.tree, rows, vocab, &[0]);
                    spec.budget.record(0, 0);
                }
                r
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => ended.push(k),
                Err(e) => {
                    let _ = (a.sink)(SequenceEvent::Failed(&e));
                    ended.push(k);
                }
            }
        }
        for &k in ended.iter().rev() {
            let a = self.active.remove(k);
            self.keep_prefix(a);
        }
        stats.ended = ended.len();
        stats.secs = start.elapsed().as_secs_f64();
        stats
    }
}

/// One sequence's borrowed part of a batched pass.
struct BatchPart<'a> {
    cache: &'a mut model::KvCache,
    observer: Option<PolicyObserver<'a>>,
    rows: &'a [u32],
    positions: &'a [usize],
    /// A speculative sequence's tree mask (its rows are a draft tree).
    tree_mask: Option<&'a [bool]>,
}

/// After a forward pass: applies the KV budget, and when the prompt is complete samples
/// the next token and reports it. Returns whether the sequence goes on.
fn sample_next(
    a: &mut Active<'_>,
    logits: &[f32],
    moments: Option<&sample::Moments>,
    work: &mut Vec<f32>,
    tok: &model::Tokenizer,
    n_ctx: usize,
    stats: &mut StepStats,
) -> Result<bool> {
    if let Some(kv) = &mut a.kv {
        kv.enforce_budget(&mut a.state)?;
    }
    if a.pending.is_some() {
        a.decode_steps += 1;
    } else {
        a.prefilled += a.rows.len();
        stats.prompt_tokens += a.rows.len();
        if a.prefilled < a.prompt.len() {
            return Ok(true);
        }
        a.prefill_secs = a.started.elapsed().as_secs_f64();
    }
    emit_token(a, logits, moments, work, tok, n_ctx, stats)
}

/// A speculative sequence after its tree was verified: walks the rows from the root
/// with the sequence's own sampler (each pick is the token plain decoding would make
/// from that row), descending while the pick is a drafted child; keeps the walked path
/// in the cache and drops the rest. Returns whether the sequence goes on.
// rows: [tree nodes, vocab]
fn verify_tree(
    a: &mut Active<'_>,
    rows: &[f32],
    vocab: usize,
    work: &mut Vec<f32>,
    tok: &model::Tokenizer,
    n_ctx: usize,
    stats: &mut StepStats,
) -> Result<bool> {
    let Some(mut spec) = a.spec.take() else {
        return Err(EngineError::Invalid("verify_tree without a drafter".into()));
    };
    a.decode_steps += 1;
    let mut path = vec![0usize];
    let goes_on = loop {
        let node = *path.last().unwrap_or(&0);
        let row = &rows[node * vocab..(node + 1) * vocab];
        if !emit_token(a, row, None, work, tok, n_ctx, stats)? {
            break false;
        }
        match a.pending.and_then(|t| spec.tree.child(node, t)) {
            Some(child) => path.push(child),
            None => break true,
        }
    };
    let accepted = path.len() - 1;
    stats.drafted += spec.tree.n_draft();
    stats.accepted += accepted;
    if goes_on {
        // Keep the prefix and the walked path.
        let base = spec.base;
        if path.iter().enumerate().all(|(i, &node)| i == node) {
            a.state.cache.truncate(base + path.len());
        } else {
            let keep: Vec<usize> = (0..base).chain(path.iter().map(|&n| base + n)).collect();
            a.state.cache.retain_slots(&keep);
        }
        spec.drafter.observe(&spec.tree, rows, vocab, &path);
        spec.budget.record(spec.tree.n_draft(), accepted);
    }
    a.spec = Some(spec);
    Ok(goes_on)
}

/// Samples the next token from `logits` and reports it (with the row's `moments` when
/// they were computed ahead); ends the sequence on a stop condition. Returns whether
/// the sequence goes on (its token is then pending).
fn emit_token(
    a: &mut Active<'_>,
    logits: &[f32],
    moments: Option<&sample::Moments>,
    work: &mut Vec<f32>,
    tok: &model::Tokenizer,
    n_ctx: usize,
    stats: &mut StepStats,
) -> Result<bool> {
    let params = &a.params;
    let index = a.generated.len();
    work.clear();
    work.extend_from_slice(logits);
    let step = a.sampler.step();
    let forced = index < params.forced.len();
    let id = if forced {
        let t = params.forced[index];
        a.sampler.force(work, &a.history, t)?;
        t
    } else if let Some(cs) = &mut a.constraint {
        // Chooses with the sampler among the tokens the grammar allows.
        cs.choose(logits, work, &mut a.sampler, &a.history)?
    } else {
        a.sampler.sample(work, &a.history)?
    };
    let report = match moments {
        Some(m) => token_report_with(logits, id, params.top_logprobs, m),
        None => token_report(logits, id, params.top_logprobs),
    };
    a.generated.push(id);
    a.history.push(id);
    stats.generated_tokens += 1;

    // Whether this is the last token: it could not be fed back, or max_tokens is hit.
    let grammar_done = a
        .constraint
        .as_ref()
        .is_some_and(ConstrainedSampler::is_finished);
    let limit = if grammar_done {
        // The grammar is complete: this token ends the output.
        Some(StopReason::EndOfGeneration)
    } else if index + 1 == params.max_tokens {
        Some(StopReason::MaxTokens)
    } else if a.prompt.len() + a.generated.len() > n_ctx {
        Some(StopReason::ContextFull)
    } else {
        None
    };
    let (shown, reason) = a.text.push(
        id,
        params.stop_at_eog && tok.is_end_of_generation(id),
        limit,
    );
    a.shown.push_str(&shown);
    let event = TokenEvent {
        forced,
        ..TokenEvent::chosen(index, id, shown, report, params, step)
    };
    if (a.sink)(SequenceEvent::Token(&event)).is_break() {
        return Ok(false);
    }
    if let Some(stop_reason) = reason {
        let decode_secs = a.started.elapsed().as_secs_f64() - a.prefill_secs;
        let generation = Generation {
            tokens: std::mem::take(&mut a.generated),
            text: std::mem::take(&mut a.shown),
            stats: GenerationStats {
                prompt_tokens: a.prompt.len(),
                reused_tokens: a.reused,
                prefill_secs: a.prefill_secs,
                generated_tokens: index + 1,
                decode_steps: a.decode_steps,
                decode_secs,
                stop_reason,
                ..GenerationStats::default()
            },
        };
        let kv_bytes = a.state.cache.memory_bytes();
        let _ = (a.sink)(SequenceEvent::Finished {
            generation: &generation,
            kv_bytes,
        });
        a.finished = true;
        return Ok(false);
    }
    a.pending = Some(id);
    Ok(true)
}
