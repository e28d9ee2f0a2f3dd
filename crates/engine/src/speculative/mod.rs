//! Lossless speculative decoding: a drafter from the `spec` crate guesses a token
//! tree, the model verifies the whole tree in one forward pass (tree attention mask,
//! explicit positions), the path that plain decoding would have taken is kept in the
//! KV cache and everything else is dropped. Verification is done by the request's own
//! sampler: from the root, it chooses the next token from the node's row exactly as
//! [`Session::generate`] would (same row bits, same sampler state and history) and
//! descends while that token is a drafted child. So the output is token for token that
//! of `generate` with the same sampler and seed, greedy or sampled; only the number of
//! forward passes changes. (For a one-hot draft this accepts a drafted token with the
//! target probability `p(x)` and otherwise draws from `p` without it: the acceptance of
//! Leviathan et al.'s rejection scheme, with the sample path kept as well.)
//!
//! ```text
//!   logits ─sampler─▶ root ─drafter─▶ tree ─forward(mask, base + depth)─▶ rows
//!      ▲                                                                   │
//!      └── choice off the tree ◀─ retain_slots(prefix + path) ◀─ walk with the sampler
//! ```
//!
//! Drafters: `lookup`, `recycle` and `ngram-adaptive` need no model (the `spec` crate); `draft` runs a
//! smaller model with the same tokenizer, which keeps its own cache in sync with the
//! accepted tokens ([`draft_model`]); `skip` runs the target itself with some layers
//! skipped, on the target's cache, which it leaves as it found it ([`skip`]).

use std::ops::ControlFlow;
use std::str::FromStr;
use std::time::{Duration, Instant};

use model::LoadedModel;
use model::{Batch, LogitsFor};
use sample::{token_report, Sampler, StageReport};
use spec::{
    AdaptiveBudget, AdaptiveConfig, CostModel, Drafter, GrowConfig, LookupConfig, LookupDrafter,
    NgramAdaptiveDrafter, RecycleConfig, RecycleDrafter, TokenTree,
};

mod draft_model;
mod grow;
pub mod skip;

pub use draft_model::check_same_vocabulary;
use draft_model::DraftModel;
use skip::SkipDrafter;
pub use skip::{SkipConfig, SkipPlan};
/// The `ngram-adaptive` drafter's settings ([`SpeculativeConfig::ngram`]).
pub use spec::NgramAdaptiveConfig;

use crate::session::{Generation, GenerationParams, GenerationStats, StopReason, TokenEvent};
use crate::stop::TokenText;
use crate::{EngineError, Result, Session};

/// Which drafter proposes the speculative tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeculativeMethod {
    /// Prompt lookup: n-gram matches over the prompt and the generated text.
    Lookup,
    /// Token Recycling: the model's own top-k successors from earlier verifications.
    Recycle,
    /// ADED: an online tri-gram table over the context and the verified rows.
    NgramAdaptive,
    /// A smaller model sharing the target's tokenizer ([`Speculator::with_draft_model`]).
    Draft,
    /// The target with some layers skipped ([`Speculator::with_skip_layers`]).
    Skip,
}

impl SpeculativeMethod {
    pub const ALL: [SpeculativeMethod; 5] = [
        SpeculativeMethod::Lookup,
        SpeculativeMethod::Recycle,
        SpeculativeMethod::NgramAdaptive,
        SpeculativeMethod::Draft,
        SpeculativeMethod::Skip,
    ];

    /// The drafters that need no second model ([`Speculator::new`] builds them).
    pub const MODEL_FREE: [SpeculativeMethod; 3] = [
        SpeculativeMethod::Lookup,
        SpeculativeMethod::Recycle,
        SpeculativeMethod::NgramAdaptive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpeculativeMethod::Lookup => "lookup",
            SpeculativeMethod::Recycle => "recycle",
            SpeculativeMethod::NgramAdaptive => "ngram-adaptive",
            SpeculativeMethod::Draft => "draft",
            SpeculativeMethod::Skip => "skip",
        }
    }

    /// Whether this drafter runs a draft model.
    pub fn needs_draft_model(self) -> bool {
        self == SpeculativeMethod::Draft
    }

    /// Whether this drafter runs a model (a draft model, or the target skipping
    /// layers): it grows its draft by the model's confidence (`p_min`, trees).
    pub fn runs_model(self) -> bool {
        matches!(self, SpeculativeMethod::Draft | SpeculativeMethod::Skip)
    }
}

impl std::fmt::Display for SpeculativeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpeculativeMethod {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lookup" => Ok(SpeculativeMethod::Lookup),
            "recycle" => Ok(SpeculativeMethod::Recycle),
            "ngram-adaptive" => Ok(SpeculativeMethod::NgramAdaptive),
            "draft" => Ok(SpeculativeMethod::Draft),
            "skip" => Ok(SpeculativeMethod::Skip),
            _ => Err(EngineError::Invalid(format!(
                "unknown speculative method {s:?} (expected lookup, recycle, ngram-adaptive, \
                 draft or skip)"
            ))),
        }
    }
}

/// How to speculate.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeculativeConfig {
    pub method: SpeculativeMethod,
    /// Most draft tokens (tree nodes below the root) verified per step.
    pub max_draft: usize,
    /// Shrink the draft when little is accepted, down to plain decoding, and probe
    /// again later. Off: always offer `max_draft`.
    pub adaptive: bool,
    /// Extra cost of one verified draft token relative to a single-token step: the
    /// break-even the adaptive budget compares the acceptance with. `None`: measured
    /// while generating (see [`spec::CostModel`]).
    pub cost_per_token: Option<f64>,
    /// Plain steps before drafting is retried once the budget has dropped to 0.
    pub probe_after: usize,
    pub lookup: LookupConfig,
    pub recycle: RecycleConfig,
    pub ngram: NgramAdaptiveConfig,
    /// How `draft` and `skip` grow their drafts.
    pub draft: DraftModelConfig,
    /// Which layers `skip` skips.
    pub skip: SkipConfig,
}

/// How the `draft` drafter grows its draft from the draft model's distributions.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftModelConfig {
    /// Chain: stop drafting when the draft's top-1 probability falls below this
    /// (the SpecDec++ stopping rule on the draft's own confidence).
    pub p_min: f32,
    /// Nodes of a DySpec token tree (grown by path probability); 0 = a chain of at
    /// most `max_draft` tokens. Caps the adaptive budget in place of `max_draft`.
    pub tree_nodes: usize,
    /// Tree: a node is drafted only while its path probability (the product of the
    /// draft probabilities from the root) is at least this.
    pub path_min: f32,
    /// Tree: nodes added per draft-model forward (each round is one batch).
    pub tree_width: usize,
}

impl Default for DraftModelConfig {
    /// The defaults measured on Qwen2.5-Coder 0.5B drafting for 1.5B (docs/BENCHMARKS.md).
    fn default() -> Self {
        DraftModelConfig {
            p_min: 0.5,
            tree_nodes: 0,
            path_min: 0.2,
            tree_width: 4,
        }
    }
}

impl DraftModelConfig {
    /// The tree grower's settings.
    pub fn grow_config(&self) -> GrowConfig {
        if self.tree_nodes == 0 {
            GrowConfig::chain(self.p_min)
        } else {
            GrowConfig::tree(self.path_min, self.tree_width)
        }
    }
}

impl SpeculativeConfig {
    /// Defaults for `method`: 8 draft tokens, adaptive.
    pub fn new(method: SpeculativeMethod) -> SpeculativeConfig {
        let adaptive = AdaptiveConfig::default();
        SpeculativeConfig {
            method,
            max_draft: adaptive.max_budget,
            adaptive: true,
            cost_per_token: None,
            probe_after: adaptive.probe_after,
            lookup: LookupConfig::default(),
            recycle: RecycleConfig::default(),
            ngram: NgramAdaptiveConfig::default(),
            draft: DraftModelConfig::default(),
            skip: SkipConfig::default(),
        }
    }

    /// Checks every setting; errors are one line.
    pub fn validate(&self) -> Result<()> {
        self.adaptive_config()
            .validate()
            .map_err(EngineError::Invalid)?;
        match self.method {
            SpeculativeMethod::Lookup => self.lookup.validate(),
            SpeculativeMethod::Recycle => self.recycle.validate(),
            SpeculativeMethod::NgramAdaptive => self.ngram.validate(),
            SpeculativeMethod::Draft => self.draft.grow_config().validate(),
            SpeculativeMethod::Skip => {
                self.skip.validate()?;
                self.draft.grow_config().validate()
            }
        }
        .map_err(EngineError::Invalid)
    }

    fn adaptive_config(&self) -> AdaptiveConfig {
        let draft_model = self.method.runs_model();
        AdaptiveConfig {
            max_budget: if draft_model && self.draft.tree_nodes > 0 {
                self.draft.tree_nodes
            } else {
                self.max_draft
            },
            // The draft model stops by itself where it is unsure.
            self_limiting: draft_model,
            cost_per_token: self
                .cost_per_token
                .unwrap_or(AdaptiveConfig::default().cost_per_token),
            probe_after: self.probe_after,
            fixed: !self.adaptive,
            ..AdaptiveConfig::default()
        }
    }
}

/// Where drafts come from.
enum Source<'d> {
    /// A model-free drafter from the `spec` crate.
    Free(Box<dyn Drafter + Send>),
    /// A draft model with its own cache.
    Model(Box<DraftModel<'d>>),
    /// The target skipping layers, on the target's cache.
    Skip(Box<SkipDrafter>),
}

/// A drafter and its adaptive budget. Keep one across calls: Token Recycling's
/// successor map, the draft model's cache and the acceptance history carry over
/// (the paper's "hot start").
pub struct Speculator<'d> {
    method: SpeculativeMethod,
    source: Source<'d>,
    budget: AdaptiveBudget,
    /// `Some` when the draft cost is measured online.
    cost: Option<CostModel>,
}

impl Speculator<'static> {
    /// A model-free drafter (`lookup`, `recycle`, `ngram-adaptive`); `draft` needs
    /// [`Speculator::with_draft_model`].
    pub fn new(config: &SpeculativeConfig) -> Result<Speculator<'static>> {
        config.validate()?;
        let drafter: Box<dyn Drafter + Send> = match config.method {
            SpeculativeMethod::Lookup => Box::new(LookupDrafter::new(config.lookup.clone())),
            SpeculativeMethod::Recycle => Box::new(RecycleDrafter::new(config.recycle.clone())),
            SpeculativeMethod::NgramAdaptive => {
                Box::new(NgramAdaptiveDrafter::new(config.ngram.clone()))
            }
            SpeculativeMethod::Draft => {
                return Err(EngineError::Invalid(
                    "the draft drafter needs a draft model (--draft-model)".into(),
                ))
            }
            SpeculativeMethod::Skip => {
                return Err(EngineError::Invalid(
                    "the skip drafter needs the target model (Speculator::with_skip_layers)".into(),
                ))
            }
        };
        Ok(Speculator::with_source(config, Source::Free(drafter)))
    }

    /// The `skip` drafter for `target`: the layers of `config.skip.layers`, or, when
    /// none are given, those [`skip::calibrate`] chooses on the built-in text
    /// ([`skip::CALIBRATION_TEXT`]). [`Speculator::skip_plan`] tells which.
    pub fn with_skip_layers(
        config: &SpeculativeConfig,
        target: &LoadedModel,
    ) -> Result<Speculator<'static>> {
        config.validate()?;
        let n_layer = target.model.config.n_layer;
        let plan = match &config.skip.layers {
            Some(layers) => SkipPlan::given(layers, n_layer)?,
            None => skip::calibrate(target, &skip::calibration_tokens(target)?, &config.skip)?,
        };
        Speculator::with_skip_plan(config, plan)
    }

    /// The `skip` drafter with a plan already made (e.g. calibrated once and reused).
    pub fn with_skip_plan(
        config: &SpeculativeConfig,
        plan: SkipPlan,
    ) -> Result<Speculator<'static>> {
        config.validate()?;
        if config.method != SpeculativeMethod::Skip {
            return Err(EngineError::Invalid(format!(
                "a layer-skip plan is only used by the skip drafter, not by {}",
                config.method
            )));
        }
        let drafter = SkipDrafter::new(plan, config.draft.grow_config())?;
        Ok(Speculator::with_source(
            config,
            Source::Skip(Box::new(drafter)),
        ))
    }
}

impl<'d> Speculator<'d> {
    /// The `draft` drafter with `draft` as the draft model. Whether it shares the
    /// target's tokenizer is checked when generating ([`check_same_vocabulary`]).
    pub fn with_draft_model(
        config: &SpeculativeConfig,
        draft: &'d LoadedModel,
    ) -> Result<Speculator<'d>> {
        config.validate()?;
        if config.method != SpeculativeMethod::Draft {
            return Err(EngineError::Invalid(format!(
                "a draft model is only used by the draft drafter, not by {}",
                config.method
            )));
        }
        let drafter = DraftModel::new(draft, config.draft.grow_config())?;
        Ok(Speculator::with_source(
            config,
            Source::Model(Box::new(drafter)),
        ))
    }

    fn with_source(config: &SpeculativeConfig, source: Source<'d>) -> Speculator<'d> {
        Speculator {
            method: config.method,
            source,
            budget: AdaptiveBudget::new(config.adaptive_config()),
            cost: config.cost_per_token.is_none().then(CostModel::default),
        }
    }

    /// The draft model's session, for `draft` once it has run: its cache holds the
    /// committed tokens (the prompt and the accepted tokens).
    pub fn draft_session(&self) -> Option<&Session<'d>> {
        match &self.source {
            Source::Model(d) => d.session(),
            Source::Free(_) | Source::Skip(_) => None,
        }
    }

    /// The draft model's session, mutable (to inspect what a next step would give).
    /// Anything done to it is undone by the next generation, which brings the draft
    /// cache back to the committed tokens (keeping their common prefix).
    pub fn draft_session_mut(&mut self) -> Option<&mut Session<'d>> {
        match &mut self.source {
            Source::Model(d) => d.session_mut(),
            Source::Free(_) | Source::Skip(_) => None,
        }
    }

    /// The layers `skip` skips and how they were chosen.
    pub fn skip_plan(&self) -> Option<&SkipPlan> {
        match &self.source {
            Source::Skip(d) => Some(d.plan()),
            _ => None,
        }
    }

    pub fn method(&self) -> SpeculativeMethod {
        self.method
    }

    /// The draft budget the next step will use.
    pub fn budget(&self) -> usize {
        self.budget.budget()
    }

    /// The break-even cost of a draft token in use (measured or configured).
    pub fn cost_per_token(&self) -> f64 {
        self.budget.cost_per_token()
    }

    /// Bytes the drafter keeps between steps (a draft model's KV cache included).
    pub fn memory_bytes(&self) -> usize {
        match &self.source {
            Source::Free(d) => d.memory_bytes(),
            Source::Model(d) => d.memory_bytes(),
            // Draft entries live in the target's cache only while drafting.
            Source::Skip(_) => 0,
        }
    }
}

/// Counts of one speculative generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpeculativeStats {
    /// Verification forward passes (each emits its accepted drafts plus one token).
    pub steps: usize,
    /// Steps with a non-empty draft.
    pub drafting_steps: usize,
    /// Draft tokens verified (tree nodes below the root).
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
    /// Seconds spent in the drafter (proposing and observing), part of `decode_secs`.
    pub draft_secs: f64,
    /// Forward passes of the draft model over draft nodes (`draft`: the passes that
    /// catch its cache up with the accepted tokens are not counted; `skip`: the
    /// skip-model passes, the root's included).
    pub draft_forwards: usize,
    /// The budget at the end (0: adaptivity fell back to plain decoding).
    pub final_budget: usize,
    /// The break-even cost of a draft token at the end, relative to a plain step.
    pub cost_per_token: f64,
}

impl SpeculativeStats {
    /// Tokens gained per verification step: `1 + accepted / steps` (1 = plain decoding).
    pub fn mean_accepted_length(&self) -> f64 {
        if self.steps == 0 {
            1.0
        } else {
            1.0 + self.accepted as f64 / self.steps as f64
        }
    }

    /// Draft tokens verified per step.
    pub fn drafted_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.drafted as f64 / self.steps as f64
        }
    }

    /// Share of the drafted tokens that were accepted.
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// The result of [`Session::generate_speculative`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpeculativeGeneration {
    /// As from [`Session::generate`]; `stats.decode_steps` counts verification passes.
    pub generation: Generation,
    pub spec: SpeculativeStats,
}

/// Turns chosen tokens into [`TokenEvent`]s with exactly `Session::generate`'s stop
/// handling: end of generation, stop strings, `max_tokens`, a full context and the
/// callback's cancellation.
struct Emitter<'a, F> {
    params: &'a GenerationParams,
    tok: &'a model::tokenizer::Tokenizer,
    token_text: TokenText<'a>,
    prompt_len: usize,
    n_ctx: usize,
    generated: Vec<u32>,
    text: String,
    on_token: F,
    /// Time spent in the callback (excluded from the decode time).
    callback: Duration,
}

impl<F: FnMut(&TokenEvent) -> ControlFlow<()>> Emitter<'_, F> {
    /// Reports `id`, chosen from `logits`; `Some` when generation ends with it.
    fn emit(&mut self, choice: Choice, logits: &[f32]) -> Option<StopReason> {
        let id = choice.id;
        let index = self.generated.len();
        // The model's own view of the token (temperature 1).
        let report = token_report(logits, id, self.params.top_logprobs);
        self.generated.push(id);
        let limit = if index + 1 == self.params.max_tokens {
            Some(StopReason::MaxTokens)
        } else if self.prompt_len + index + 1 > self.n_ctx {
            // Plain decoding would have no slot to feed this token into.
            Some(StopReason::ContextFull)
        } else {
            None
        };
        let eog = self.params.stop_at_eog && self.tok.is_end_of_generation(id);
        let (shown, reason) = self.token_text.push(id, eog, limit);
        self.text.push_str(&shown);
        let event = TokenEvent {
            stages: choice.stages,
            sampled_prob: choice.sampled_prob,
            ..TokenEvent::chosen(index, id, shown, report, self.params, choice.step)
        };
        let t = Instant::now();
        let flow = (self.on_token)(&event);
        self.callback += t.elapsed();
        reason.or(flow.is_break().then_some(StopReason::Cancelled))
    }
}

impl<'m> Session<'m> {
    /// Generation with speculative decoding: the same tokens, events and stop
    /// behaviour as [`Session::generate`] with the same sampler settings (greedy or
    /// seeded sampling, penalties, bias, Gumbel-max), in fewer forward passes when the
    /// drafter guesses well. Forced tokens, lookahead and contrastive decoding are
    /// refused. Afterwards the cache holds the prompt and every generated token but
    /// the last, as after `generate`.
    pub fn generate_speculative(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        spec: &mut Speculator<'_>,
        on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<SpeculativeGeneration> {
        params.sampler.validate()?;
        check_speculative_params(params)?;
        match &spec.source {
            Source::Model(d) => check_same_vocabulary(self.model(), d.model())?,
            Source::Skip(d) => d.check_model(&self.model().model)?,
            Source::Free(_) => {}
        }
        let n_ctx = self.n_ctx();
        let t_prefill = Instant::now();
        let info = self.sync_prompt(prompt)?;
        // The draft model reads the prompt too; it counts as prefill.
        let forwards_before = match &mut spec.source {
            Source::Model(d) => {
                d.sync(prompt, n_ctx)?;
                d.forwards
            }
            Source::Skip(d) => d.forwards,
            Source::Free(_) => 0,
        };
        let prefill_secs = t_prefill.elapsed().as_secs_f64();

        let (loaded, state, tokens, logits) = self.parts_mut();
        let vocab = loaded.model.config.vocab_size;
        let mut em = Emitter {
            params,
            tok: &loaded.tokenizer,
            token_text: TokenText::new(&loaded.tokenizer, &params.stop),
            prompt_len: prompt.len(),
            n_ctx,
            generated: Vec::new(),
            text: String::new(),
            on_token,
            callback: Duration::ZERO,
        };
        let mut stats = SpeculativeStats::default();
        let mut chooser = Chooser::new(params);
        // The token chosen from the last accepted node's row: the next step's root.
        let mut next_root: Option<Choice> = None;
        let mut history = prompt.to_vec();
        let mut tree = TokenTree::new(0);
        let mut positions = Vec::new();
        let mut mask = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        let mut keep: Vec<usize> = Vec::new();
        let mut stop_reason = StopReason::MaxTokens;
        let start = Instant::now();

        if params.max_tokens > 0 {
            'outer: loop {
                // The next token: chosen from the logits after the cache, by the sampler
                // (at the previous step's last accepted node, or here at the start).
                let root_choice = match next_root.take() {
                    Some(c) => c,
                    None => chooser.choose(logits, &history)?,
                };
                let root = root_choice.id;
                history.push(root);
                if let Some(r) = em.emit(root_choice, logits) {
                    stop_reason = r;
                    break;
                }

                // Draft below the root, within the tokens still wanted and the context.
                let base = state.cache.len();
                let room = n_ctx - base - 1;
                let max_depth = (params.max_tokens - em.generated.len()).min(room);
                // Until a plain step has been timed, the draft cost is unknown.
                let timing_plain = spec.cost.as_ref().is_some_and(|c| !c.has_single());
                let budget = if timing_plain {
                    0
                } else {
                    spec.budget.budget().min(room)
                };
                tree.reset(root);
                let t_draft = Instant::now();
                let drafting = budget > 0 && max_depth > 0;
                if drafting {
                    match &mut spec.source {
                        Source::Free(d) => d.propose(&history, &mut tree, budget, max_depth),
                        Source::Model(d) => {
                            d.propose(&history, n_ctx, &mut tree, budget, max_depth)?
                        }
                        Source::Skip(d) => {
                            d.propose(&loaded.model, state, &mut tree, budget, max_depth)?
                        }
                    }
                }
                let step_draft_secs = t_draft.elapsed().as_secs_f64();
                stats.draft_secs += step_draft_secs;
                // A draft model spends its time even when it proposes nothing.
                let model_drafted =
                    drafting && matches!(spec.source, Source::Model(_) | Source::Skip(_));

                // Verify the whole tree in one pass: node i at position base + depth,
                // seeing the prefix and its ancestors.
                let n = tree.len();
                tree.positions(state.cache.next_position(), &mut positions);
                let batch = if n == 1 {
                    Batch::causal(tree.tokens(), &positions)
                } else {
                    tree.mask(base, &mut mask);
                    Batch {
                        tokens: tree.tokens(),
                        positions: &positions,
                        mask: Some(&mask),
                        logits: LogitsFor::All,
                    }
                };
                let t_forward = Instant::now();
                let out = loaded.model.forward(state, &batch, None)?;
                rows.clear();
                rows.extend_from_slice(&out[..n * vocab]);
                if let Some(cost) = &mut spec.cost {
                    // A draft model's time belongs to the cost of its draft tokens; a
                    // single-token step it ran for is not a plain step.
                    let secs = t_forward.elapsed().as_secs_f64();
                    if !model_drafted {
                        cost.record(n, secs);
                    } else if n > 1 {
                        cost.record(n, secs + step_draft_secs);
                    }
                    if let Some(c) = cost.cost_per_token() {
                        spec.budget.set_cost_per_token(c);
                    }
                }
                let row = |node: usize| &rows[node * vocab..(node + 1) * vocab];
                // Verification by the sampler itself: from the root, choose the next
                // token from the node's row exactly as plain decoding would (same row
                // bits, same sampler state and history); descend while it is a drafted
                // child. The first choice off the tree is the next root. Greedy or
                // seeded sampling, the output is plain decoding's.
                let mut path = vec![0usize];
                let mut accepted_choices: Vec<Choice> = Vec::new();
                loop {
                    let node = *path.last().unwrap_or(&0);
                    let c = chooser.choose(row(node), &history)?;
                    match tree.child(node, c.id) {
                        Some(child) => {
                            history.push(c.id);
                            path.push(child);
                            accepted_choices.push(c);
                        }
                        _ => {
                            next_root = Some(c);
                            break;
                        }
                    }
                }
                let n_accepted = path.len() - 1;
                stats.steps += 1;
                stats.drafted += tree.n_draft();
                stats.accepted += n_accepted;
                stats.drafting_steps += usize::from(n > 1);
                let t_observe = Instant::now();
                match &mut spec.source {
                    Source::Free(d) => d.observe(&tree, &rows, vocab, &path),
                    Source::Model(d) => d.observe(&tree, &path),
                    // Its entries were dropped before verification.
                    Source::Skip(_) => {}
                }
                // A draft-model pass that proposed nothing cost about a draft token
                // and gained nothing: the budget must see it, or an unsure draft
                // model would be run forever.
                let charged = if model_drafted {
                    tree.n_draft().max(1)
                } else {
                    tree.n_draft()
                };
                spec.budget.record(charged, n_accepted);
                stats.draft_secs += t_observe.elapsed().as_secs_f64();

                // Keep the prefix and the accepted path; drop rejected branches.
                if path.iter().enumerate().all(|(i, &node)| i == node) {
                    state.cache.truncate(base + path.len());
                } else {
                    keep.clear();
                    keep.extend(0..base);
                    keep.extend(path.iter().map(|&node| base + node));
                    state.cache.retain_slots(&keep);
                }
                tokens.extend(path.iter().map(|&node| tree.token(node)));
                let last = *path.last().unwrap_or(&0);
                logits.clear();
                logits.extend_from_slice(row(last));

                // Report the accepted drafts; each was chosen from its parent's row.
                for (j, (pair, choice)) in path.windows(2).zip(accepted_choices).enumerate() {
                    if let Some(r) = em.emit(choice, row(pair[0])) {
                        // As after plain decoding: the cache ends before the last
                        // token, the logits are those it was chosen from.
                        stop_reason = r;
                        let len = base + j + 1;
                        state.cache.truncate(len);
                        tokens.truncate(len);
                        logits.clear();
                        logits.extend_from_slice(row(pair[0]));
                        break 'outer;
                    }
                }
            }
        }
        let decode = start.elapsed().saturating_sub(em.callback);
        match &spec.source {
            Source::Model(d) => stats.draft_forwards = d.forwards - forwards_before,
            Source::Skip(d) => stats.draft_forwards = d.forwards - forwards_before,
            Source::Free(_) => {}
        }
        stats.final_budget = spec.budget.budget();
        stats.cost_per_token = spec.budget.cost_per_token();
        Ok(SpeculativeGeneration {
            generation: Generation {
                stats: GenerationStats {
                    prompt_tokens: prompt.len(),
                    reused_tokens: info.reused,
                    prefill_secs,
                    generated_tokens: em.generated.len(),
                    decode_steps: stats.steps,
                    decode_secs: decode.as_secs_f64(),
                    stop_reason,
                    ..GenerationStats::default()
                },
                tokens: em.generated,
                text: em.text,
            },
            spec: stats,
        })
    }
}

fn check_speculative_params(params: &GenerationParams) -> Result<()> {
    if params.forced.is_empty() && params.lookahead.is_none() && params.contrastive.is_none() {
        Ok(())
    } else {
        Err(EngineError::Invalid(
            "speculative decoding does not combine with forced tokens, lookahead or \
             contrastive decoding"
                .into(),
        ))
    }
}

/// A chosen token and what the sampler reported about it.
struct Choice {
    id: u32,
    stages: Vec<StageReport>,
    sampled_prob: Option<f64>,
    /// The sampler's step counter when it chose (the Gumbel trace's step).
    step: u64,
}

/// Chooses tokens exactly as [`Session::generate`] does: the request's sampler chain
/// (with Gumbel-max noise when asked), one sampler step per token, stage reports when
/// asked.
struct Chooser<'p> {
    params: &'p GenerationParams,
    sampler: Sampler,
    work: Vec<f32>,
}

impl<'p> Chooser<'p> {
    fn new(params: &'p GenerationParams) -> Chooser<'p> {
        let mut sampler = Sampler::new(params.sampler.clone());
        if params.gumbel_max {
            sampler = sampler.with_gumbel_max();
        }
        Chooser {
            params,
            sampler,
            work: Vec::new(),
        }
    }

    fn choose(&mut self, logits: &[f32], history: &[u32]) -> Result<Choice> {
        self.work.clear();
        self.work.extend_from_slice(logits);
        let step = self.sampler.step();
        if self.params.report_stages {
            let (id, report) = self.sampler.sample_with_report(
                &mut self.work,
                history,
                self.params.top_logprobs,
            )?;
            Ok(Choice {
                id,
                stages: report.stages,
                sampled_prob: Some(report.sampled_prob),
                step,
            })
        } else {
            Ok(Choice {
                id: self.sampler.sample(&mut self.work, history)?,
                stages: Vec::new(),
                sampled_prob: None,
                step,
            })
        }
    }
}
