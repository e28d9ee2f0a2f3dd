//! Grammar-constrained decoding: JSON objects and JSON schemas (the server's
//! `response_format`), enforced token by token with [`llguidance`].
//!
//! Two ways to respect the grammar, chosen per request ([`ConstraintMode`]):
//!
//! * **mask**: every step, compute the full-vocabulary set of allowed tokens
//!   (`Matcher::compute_mask`), set every other logit to `-inf`, then run the
//!   sequence's normal sampler chain on the masked row.
//! * **awrs**: adaptive weighted rejection sampling (Lipkin et al. 2025, "Fast
//!   Controlled Generation from Language Models with Adaptive Weighted Rejection
//!   Sampling"). Draw a token from the *unconstrained* distribution the sampler
//!   chain produces, check only that token against the grammar, and when it is
//!   rejected, remove it (probability zero), renormalise and draw again: sampling
//!   without replacement until the first allowed token. The accepted token is then
//!   distributed exactly as the chain's distribution restricted to the allowed set,
//!   while a typical step costs one cheap check instead of a vocabulary-wide mask.
//!   After [`AwrsConfig::max_rejections`] rejections, or when the mass not yet
//!   rejected falls below [`AwrsConfig::min_remaining_mass`] (the allowed tokens are
//!   then improbable and rejection would take long), it computes the full mask once
//!   and draws from the remaining candidates it allows; this keeps exactness.
//!   Greedy decoding takes the highest-logit allowed token, exactly as mask mode
//!   does. (The paper's importance-weight estimates for SMC are not computed.)
//!
//! Both modes sample the same distribution when the sampler chain only reweights
//! tokens one by one (temperature, penalties, logit bias: the default chain with
//! its defaults). Truncating stages (top-k, top-p, min-p, typical, XTC, ...) see the
//! masked row in mask mode but the unconstrained row in AWRS: AWRS truncates first
//! and constrains second; when truncation removed every allowed token it falls back
//! to mask mode for that step. Mirostat (whose state depends on the chosen token's
//! probability) always uses mask mode.
//!
//! # Usage
//!
//! ```no_run
//! # fn demo(model: &model::LoadedModel, mut logits: Vec<f32>) -> engine::Result<()> {
//! use engine::constraint::{ConstrainedSampler, ConstraintMode, Grammar};
//! let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}},
//!                                 "required": ["name"]});
//! // Once per request (compiles the schema; the model's token trie is built once per
//! // vocabulary and cached). A bad schema is an `EngineError::Invalid`.
//! let grammar = Grammar::json_schema(model, &schema)?;
//! // Once per sequence (cheap: clones the compiled parser).
//! let mut cs = ConstrainedSampler::new(&grammar, ConstraintMode::Awrs)?;
//! let mut sampler = sample::Sampler::new(sample::SamplerConfig::default());
//! let (mut work, mut history) = (Vec::new(), Vec::new());
//! loop {
//!     // `logits`: the model's row for this sequence.
//!     let id = cs.choose(&logits, &mut work, &mut sampler, &history)?;
//!     if model.tokenizer.is_end_of_generation(id) || cs.is_finished() {
//!         break; // the grammar is complete (emit `id` first unless it is end-of-generation)
//!     }
//!     history.push(id);
//!     // ... feed `id` to the model, refresh `logits` ...
//! #   logits.clear();
//! }
//! # Ok(()) }
//! ```
//!
//! In a scheduler, call [`ConstrainedSampler::choose`] where `Sampler::sample` would be
//! called (it runs the sampler itself), then stop the sequence when the returned id is
//! an end-of-generation token or [`ConstrainedSampler::is_finished`] holds. A sequence
//! that hits `max_tokens` first ends with incomplete JSON, as in other servers.
//! [`ConstrainedSampler::stats`] gives per-sequence counters (checks per token,
//! fallbacks, time spent computing masks); [`ConstrainedSampler::last_checks`] the
//! checks of the last step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use model::tokenizer::TokenType;
use model::LoadedModel;
use sample::{gumbel_noise, Rng, Sampler};

use crate::{EngineError, Result};

/// How the grammar is enforced at each step (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConstraintMode {
    /// Full allowed-token mask every step, then the sampler chain.
    #[default]
    Mask,
    /// Adaptive weighted rejection sampling: check only drawn tokens.
    Awrs,
}

impl ConstraintMode {
    /// The names [`ConstraintMode::from_name`] accepts.
    pub const NAMES: [&'static str; 2] = ["mask", "awrs"];

    /// `"mask"` or `"awrs"`; anything else is an error naming the valid choices.
    pub fn from_name(name: &str) -> Result<ConstraintMode> {
        match name {
            "mask" => Ok(ConstraintMode::Mask),
            "awrs" => Ok(ConstraintMode::Awrs),
            _ => Err(EngineError::Invalid(format!(
                "unknown constraint mode {name:?}: valid modes are {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConstraintMode::Mask => "mask",
            ConstraintMode::Awrs => "awrs",
        }
    }
}

/// When AWRS gives up rejecting and computes the full mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwrsConfig {
    /// Rejected draws in one step before falling back to the mask.
    pub max_rejections: usize,
    /// Fall back once the probability mass not yet rejected (under the chain's
    /// distribution) is below this: the allowed tokens are improbable.
    pub min_remaining_mass: f64,
}

impl Default for AwrsConfig {
    fn default() -> Self {
        AwrsConfig {
            max_rejections: 16,
            min_remaining_mass: 1e-3,
        }
    }
}

/// Per-sequence counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConstraintStats {
    /// Tokens chosen.
    pub steps: usize,
    /// Single-token grammar checks (AWRS): accepted draws plus rejections.
    pub checks: usize,
    /// Draws the grammar rejected (AWRS).
    pub rejections: usize,
    /// Full-vocabulary masks computed (every step in mask mode; AWRS fallbacks).
    pub masks: usize,
    /// AWRS steps that fell back to the full mask.
    pub fallbacks: usize,
    /// Seconds spent computing masks.
    pub mask_secs: f64,
    /// Seconds spent in single-token checks.
    pub check_secs: f64,
    /// Seconds in [`ConstrainedSampler::choose`] altogether: grammar work, the sampler
    /// chain and AWRS's re-draws (everything but the forward pass).
    pub choose_secs: f64,
}

impl ConstraintStats {
    /// Mean single-token checks per chosen token.
    pub fn checks_per_token(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.checks as f64 / self.steps as f64
        }
    }
}

fn grammar_err(e: impl std::fmt::Display) -> EngineError {
    // llguidance errors can span lines; ours are one line.
    let msg = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    EngineError::Invalid(format!("grammar: {msg}"))
}

/// The token environment llguidance needs: a trie of every token's bytes (special
/// tokens prefixed with `0xFF`, so text can never spell them) and a tokenizer for
/// the few strings a grammar tokenizes itself (greedy over the trie: we never ask
/// llguidance for forced tokens, where canonical tokenization would matter).
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A vocabulary prepared for llguidance: the token trie and the parser factory.
/// Build it once per model ([`GrammarEnv::for_model`] caches it) and share it.
pub struct GrammarEnv {
    factory: ParserFactory,
    eos: u32,
    n_vocab: usize,
}

impl std::fmt::Debug for GrammarEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarEnv")
            .field("n_vocab", &self.n_vocab)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl GrammarEnv {
    /// An environment from raw token bytes: `tokens[id]` is what token `id` spells;
    /// entries starting with `0xFF` are special tokens (e.g. `b"\xFF<|im_end|>"`).
    /// `eos` are the end-of-generation ids (the first is the main one); they end a
    /// grammar once it is complete. Useful for tests on tiny vocabularies.
    pub fn from_tokens(tokens: Vec<Vec<u8>>, eos: &[u32]) -> Result<GrammarEnv> {
        let n_vocab = tokens.len();
        let n = u32::try_from(n_vocab)
            .map_err(|_| EngineError::Invalid("vocabulary too large".into()))?;
        let eos: Vec<u32> = eos.iter().copied().filter(|&t| t < n).collect();
        let Some(&main_eos) = eos.first() else {
            return Err(EngineError::Invalid(
                "grammar: the vocabulary has no end-of-generation token".into(),
            ));
        };
        let info = TokRxInfo {
            vocab_size: n,
            tok_eos: main_eos,
            tok_bos: None,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        // TokTrie asserts its invariants; ours hold by construction, but a panic
        // here must not take the server down.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &tokens).with_eos_tokens(&eos))
            .map_err(|_| EngineError::Invalid("grammar: could not build the token trie".into()))?;
        let env: TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_err)?;
        factory.quiet();
        Ok(GrammarEnv {
            factory,
            eos: main_eos,
            n_vocab,
        })
    }

    /// The environment of `model`'s vocabulary (built from scratch; see
    /// [`GrammarEnv::for_model`] for the cached one). Control and unknown-type tokens,
    /// and every end-of-generation token, are special.
    pub fn new(model: &LoadedModel) -> Result<GrammarEnv> {
        let tok = &model.tokenizer;
        let n_vocab = tok.vocab_size().max(model.model.config.vocab_size);
        let mut eos = Vec::new();
        if let Some(e) = tok.eos_id() {
            eos.push(e);
        }
        eos.extend(
            tok.end_of_generation_ids()
                .into_iter()
                .filter(|e| Some(*e) != tok.eos_id()),
        );
        let mut tokens = Vec::with_capacity(n_vocab);
        for id in 0..n_vocab as u32 {
            if id as usize >= tok.vocab_size() {
                // Logit rows padded past the tokenizer's vocabulary: never allowed.
                tokens.push(Vec::new());
                continue;
            }
            let special = tok.is_end_of_generation(id)
                || Some(id) == tok.bos_id()
                || matches!(
                    tok.token_type(id),
                    Some(TokenType::Control | TokenType::Unknown)
                );
            let bytes = tok.token_bytes(id);
            if special {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                if bytes.is_empty() {
                    b.extend_from_slice(format!("<[{id}]>").as_bytes());
                } else {
                    b.extend_from_slice(&bytes);
                }
                tokens.push(b);
            } else {
                tokens.push(bytes);
            }
        }
        Self::from_tokens(tokens, &eos)
    }

    /// [`GrammarEnv::new`], cached per vocabulary: the key is a hash of every
    /// token's bytes and type and of the end-of-generation set, so models sharing a
    /// vocabulary share one environment and a model loaded at a reused address never
    /// gets a stale one. Hashing costs about a millisecond; building, 0.1-1 s.
    pub fn for_model(model: &LoadedModel) -> Result<Arc<GrammarEnv>> {
        static CACHE: OnceLock<Mutex<HashMap<u64, Arc<GrammarEnv>>>> = OnceLock::new();
        let key = vocab_fingerprint(model);
        let cache = CACHE.get_or_init(Default::default);
        if let Some(env) = cache.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(env.clone());
        }
        let env = Arc::new(Self::new(model)?);
        let mut map = cache.lock().map_err(|_| poisoned())?;
        // A handful of vocabularies at most in one process; keep it bounded anyway.
        if map.len() >= 8 {
            map.clear();
        }
        Ok(map.entry(key).or_insert(env).clone())
    }

    /// Vocabulary size (the trie's; at least the logits row of the model).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The main end-of-generation id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<TokenParser> {
        // llguidance catches its own panics in `Matcher`, not in the factory.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(grammar)
        }))
        .map_err(|_| EngineError::Invalid("grammar: the compiler failed".into()))?
        .map_err(grammar_err)
    }
}

fn poisoned() -> EngineError {
    EngineError::Invalid("grammar: environment cache poisoned".into())
}

fn vocab_fingerprint(model: &LoadedModel) -> u64 {
    use std::hash::{Hash, Hasher};
    let tok = &model.tokenizer;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tok.vocab_size().hash(&mut h);
    model.model.config.vocab_size.hash(&mut h);
    tok.eos_id().hash(&mut h);
    tok.bos_id().hash(&mut h);
    tok.end_of_generation_ids().hash(&mut h);
    for id in 0..tok.vocab_size() as u32 {
        tok.token_bytes(id).hash(&mut h);
        format!("{:?}", tok.token_type(id)).hash(&mut h);
    }
    h.finish()
}

/// A compiled grammar, made once per request and shared by its sequences.
#[derive(Clone)]
pub struct Grammar {
    parser: TokenParser,
    env: Arc<GrammarEnv>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Compact JSON unless the schema says otherwise: with free whitespace a small model
/// can spend its whole budget on newlines.
fn with_default_json_options(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

impl Grammar {
    /// Output that is JSON valid against `schema` (draft 2020-12 and earlier; local
    /// `$ref`s). Errors name what llguidance could not compile.
    pub fn json_schema(model: &LoadedModel, schema: &serde_json::Value) -> Result<Grammar> {
        Self::json_schema_in(GrammarEnv::for_model(model)?, schema)
    }

    /// Any JSON object (OpenAI's `json_object`).
    pub fn json_object(model: &LoadedModel) -> Result<Grammar> {
        Self::json_schema(model, &serde_json::json!({"type": "object"}))
    }

    /// [`Grammar::json_schema`] in a given environment.
    pub fn json_schema_in(env: Arc<GrammarEnv>, schema: &serde_json::Value) -> Result<Grammar> {
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(EngineError::Invalid(
                "grammar: a JSON schema must be an object or a boolean".into(),
            ));
        }
        let g = TopLevelGrammar::from_json_schema(with_default_json_options(schema));
        let parser = env.compile(g)?;
        Ok(Grammar { parser, env })
    }

    /// Output matching a regular expression (Rust `regex` syntax), in `env`.
    pub fn regex_in(env: Arc<GrammarEnv>, regex: &str) -> Result<Grammar> {
        let parser = env.compile(TopLevelGrammar::from_regex(regex))?;
        Ok(Grammar { parser, env })
    }

    /// A grammar in llguidance's Lark dialect, in `env`.
    pub fn lark_in(env: Arc<GrammarEnv>, lark: &str) -> Result<Grammar> {
        let parser = env.compile(TopLevelGrammar::from_lark(lark.to_string()))?;
        Ok(Grammar { parser, env })
    }

    pub fn env(&self) -> &Arc<GrammarEnv> {
        &self.env
    }
}

/// How AWRS re-draws after a rejection (mirrors how the sampler drew).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Redraw {
    /// Next highest logit (ties to the lower id).
    Greedy,
    /// Next highest logit + Gumbel noise of the step (Gumbel-top-k = sampling
    /// without replacement, and recomputable like the sampler's own draw).
    Gumbel,
    /// Inverse CDF over the weights not yet rejected.
    Random,
}

impl Redraw {
    /// The key of a rejected entry.
    fn dead(self) -> f64 {
        match self {
            Redraw::Random => 0.0,
            Redraw::Greedy | Redraw::Gumbel => f64::NEG_INFINITY,
        }
    }
}

/// A candidate of an AWRS re-draw.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u32,
    /// Softmax weight under the chain's distribution (1 for greedy, unused there).
    weight: f64,
    /// What the re-draw ranks by: the logit (greedy), logit + Gumbel noise, or the
    /// weight (random); [`Redraw::dead`] once rejected.
    key: f64,
}

/// Best first: larger key, then lower id.
fn entry_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.key.total_cmp(&a.key).then(a.id.cmp(&b.id))
}

/// Chooses each token of one sequence under a grammar; see the module docs.
pub struct ConstrainedSampler {
    matcher: Matcher,
    mode: ConstraintMode,
    awrs: AwrsConfig,
    n_vocab: usize,
    eos: u32,
    stats: ConstraintStats,
    last_checks: usize,
    /// AWRS scratch: the best few candidates of a rejected step, best first, and the
    /// rejected ones from outside them.
    head: Vec<Entry>,
    tail_rejected: Vec<u32>,
}

impl std::fmt::Debug for ConstrainedSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstrainedSampler")
            .field("mode", &self.mode)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ConstrainedSampler {
    /// A fresh matcher for `grammar` (one per sequence).
    pub fn new(grammar: &Grammar, mode: ConstraintMode) -> Result<ConstrainedSampler> {
        let matcher = Matcher::new(Ok(grammar.parser.clone()));
        if let Some(e) = matcher.get_error() {
            return Err(grammar_err(e));
        }
        Ok(ConstrainedSampler {
            matcher,
            mode,
            awrs: AwrsConfig::default(),
            n_vocab: grammar.env.n_vocab,
            eos: grammar.env.eos,
            stats: ConstraintStats::default(),
            last_checks: 0,
            head: Vec::new(),
            tail_rejected: Vec::new(),
        })
    }

    /// Overrides when AWRS falls back to the mask.
    pub fn with_awrs_config(mut self, config: AwrsConfig) -> Self {
        self.awrs = config;
        self
    }

    pub fn mode(&self) -> ConstraintMode {
        self.mode
    }

    /// Whether the output so far is a complete sentence of the grammar (an
    /// end-of-generation token would be accepted).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar allows nothing more (it was completed and closed, an
    /// end-of-generation token was consumed, or the matcher failed): the engine
    /// ends the sequence.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The matcher's error, if it failed.
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }

    pub fn stats(&self) -> ConstraintStats {
        self.stats
    }

    /// Single-token checks of the last [`choose`](Self::choose) (AWRS; 0 for mask).
    pub fn last_checks(&self) -> usize {
        self.last_checks
    }

    /// The allowed tokens now, as a full-vocabulary bit set (for tests and tools).
    pub fn allowed_tokens(&mut self) -> Result<Vec<u32>> {
        let mask = self.compute_mask()?;
        Ok((0..self.n_vocab as u32)
            .filter(|&t| mask.is_allowed(t))
            .collect())
    }

    /// Advances the grammar with a token chosen elsewhere (a forced token, a prompt
    /// prefix the output must continue). Errors if the grammar rejects it.
    pub fn consume(&mut self, token: u32) -> Result<()> {
        if (token as usize) >= self.n_vocab {
            return Err(EngineError::Invalid(format!(
                "grammar: token id {token} is outside the vocabulary"
            )));
        }
        self.matcher.consume_token(token).map_err(grammar_err)
    }

    /// Chooses the next token from `logits` (the model's row) with the sequence's
    /// `sampler`, respecting the grammar, and advances the grammar with it. `work` is
    /// scratch (its contents are overwritten); `history` the tokens so far (prompt
    /// included) for penalties, as for `Sampler::sample`. Once the grammar is finished
    /// it returns the end-of-generation id without sampling.
    pub fn choose(
        &mut self,
        logits: &[f32],
        work: &mut Vec<f32>,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        self.last_checks = 0;
        if self.matcher.is_stopped() {
            if let Some(e) = self.matcher.get_error() {
                return Err(grammar_err(e));
            }
            return Ok(self.eos);
        }
        let start = Instant::now();
        let use_mask = self.mode == ConstraintMode::Mask || sampler.config().mirostat != 0;
        let token = if use_mask {
            self.choose_masked(logits, work, sampler, history)?
        } else {
            self.choose_awrs(logits, work, sampler, history)?
        };
        self.matcher.consume_token(token).map_err(grammar_err)?;
        self.stats.steps += 1;
        self.stats.choose_secs += start.elapsed().as_secs_f64();
        Ok(token)
    }

    fn compute_mask(&mut self) -> Result<SimpleVob> {
        let t = Instant::now();
        let mask = self.matcher.compute_mask().map_err(grammar_err);
        self.stats.masks += 1;
        self.stats.mask_secs += t.elapsed().as_secs_f64();
        mask
    }

    /// Whether `token` may come next (one check, counted).
    fn check(&mut self, token: u32) -> Result<bool> {
        self.stats.checks += 1;
        self.last_checks += 1;
        if token as usize >= self.n_vocab {
            self.stats.rejections += 1;
            return Ok(false);
        }
        let t = Instant::now();
        let n = self
            .matcher
            .validate_tokens(&[token])
            .map_err(grammar_err)?;
        self.stats.check_secs += t.elapsed().as_secs_f64();
        if n == 0 {
            self.stats.rejections += 1;
        }
        Ok(n == 1)
    }

    /// Mask mode: disallowed logits to `-inf`, then the sampler chain.
    fn choose_masked(
        &mut self,
        logits: &[f32],
        work: &mut Vec<f32>,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        let mask = self.compute_mask()?;
        apply_mask(logits, work, &mask, self.n_vocab);
        no_allowed_token(work)?;
        Ok(sampler.sample(work, history)?)
    }

    fn choose_awrs(
        &mut self,
        logits: &[f32],
        work: &mut Vec<f32>,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        work.clear();
        work.extend_from_slice(logits);
        if work.len() > self.n_vocab {
            work[self.n_vocab..].fill(f32::NEG_INFINITY);
        }
        // The first draw is the sampler's own: same chain, same RNG stream as an
        // unconstrained generation; most steps end here.
        let first = sampler.sample(work, history)?;
        if self.check(first)? {
            return Ok(first);
        }

        // Rejected: draw again from the chain's distribution without the rejected
        // tokens (sampling without replacement), checking each draw.
        let config = sampler.config();
        let redraw = if config.is_greedy() {
            Redraw::Greedy
        } else if sampler.is_gumbel_max() {
            Redraw::Gumbel
        } else {
            Redraw::Random
        };
        // The sampler's step counter has already moved past this draw.
        let step = sampler.step().saturating_sub(1);
        let seed = config.seed;
        let cands = sampler.last_candidates().as_slice();
        let max = cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let rule = DrawRule {
            redraw,
            seed,
            step,
            max,
        };

        // One pass: the total mass, and the best few entries (by the re-draw's key),
        // kept in order. Greedy and Gumbel re-draws never look past them; random
        // ones land past them only with the (usually small) tail mass.
        let h = self.awrs.max_rejections + 2;
        self.head.clear();
        let mut cut: Option<Entry> = None;
        let mut total = 0.0f64;
        let mut first_w = 0.0f64;
        for c in cands {
            let Some(e) = rule.entry(c.id, c.logit) else {
                continue;
            };
            total += e.weight;
            if c.id == first {
                first_w = e.weight;
                continue;
            }
            if cut.is_none_or(|k| entry_order(&e, &k).is_lt()) {
                self.head.push(e);
                if self.head.len() >= 4 * h {
                    self.head.select_nth_unstable_by(h - 1, entry_order);
                    self.head.truncate(h);
                    cut = Some(self.head[h - 1]);
                }
            }
        }
        if self.head.len() > h {
            self.head.select_nth_unstable_by(h - 1, entry_order);
            self.head.truncate(h);
        }
        self.head.sort_unstable_by(entry_order);
        // Entries ranking after `head_last` are the tail.
        let head_last = self.head.last().copied();
        self.tail_rejected.clear();
        let mut remaining = total - first_w;

        let mut rng = Rng::seed_from_u64(seed ^ 0x5eed_a3a5_0000_0000 ^ step.rotate_left(17));
        let mut rejections = 1usize;
        while rejections <= self.awrs.max_rejections
            && remaining > self.awrs.min_remaining_mass * total
        {
            let Some(e) = self.redraw(&rule, cands, first, head_last, remaining, &mut rng) else {
                break;
            };
            if self.check(e.id)? {
                return Ok(e.id);
            }
            rejections += 1;
            remaining -= e.weight;
            match self.head.iter_mut().find(|h| h.id == e.id) {
                Some(h) => h.key = redraw.dead(),
                None => self.tail_rejected.push(e.id),
            }
        }

        // Fallback: the full mask, and one draw from the chain's distribution over the
        // tokens it allows; exact, since every rejected token is disallowed anyway.
        self.stats.fallbacks += 1;
        let mask = self.compute_mask()?;
        let allowed = |c: &&sample::Candidate| mask.is_allowed(c.id);
        let choice = match redraw {
            Redraw::Greedy | Redraw::Gumbel => cands
                .iter()
                .filter(allowed)
                .filter_map(|c| rule.entry(c.id, c.logit))
                .min_by(entry_order),
            Redraw::Random => {
                let mass: f64 = cands
                    .iter()
                    .filter(allowed)
                    .filter_map(|c| rule.entry(c.id, c.logit))
                    .map(|e| e.weight)
                    .sum();
                let entries = cands
                    .iter()
                    .filter(allowed)
                    .filter_map(|c| rule.entry(c.id, c.logit));
                inverse_cdf(entries, rng.next_f64() * mass)
            }
        };
        if let Some(e) = choice {
            return Ok(e.id);
        }
        // The chain's truncation removed every allowed token: sample as mask mode
        // does (the sampler draws a second time this step).
        apply_mask(logits, work, &mask, self.n_vocab);
        no_allowed_token(work)?;
        Ok(sampler.sample(work, history)?)
    }

    /// The next draw among the live candidates (all but `first`, the rejected head
    /// entries and `tail_rejected`), whose mass is `remaining`.
    fn redraw(
        &self,
        rule: &DrawRule,
        cands: &[sample::Candidate],
        first: u32,
        head_last: Option<Entry>,
        remaining: f64,
        rng: &mut Rng,
    ) -> Option<Entry> {
        let dead = rule.redraw.dead();
        let mut live = self.head.iter().filter(|e| e.key != dead);
        match rule.redraw {
            // The head is best first, and nothing in the tail ranks higher.
            Redraw::Greedy | Redraw::Gumbel => live.next().copied(),
            Redraw::Random => {
                if !(remaining > 0.0 && remaining.is_finite()) {
                    return None;
                }
                let u = rng.next_f64() * remaining;
                let head_mass: f64 = live.clone().map(|e| e.weight).sum();
                if u < head_mass {
                    return inverse_cdf(live.clone().copied(), u)
                        .or_else(|| live.next_back().copied());
                }
                // The tail, in candidate order.
                let tail = cands.iter().filter_map(|c| {
                    let e = rule.entry(c.id, c.logit)?;
                    let in_head = head_last.is_some_and(|k| !entry_order(&e, &k).is_gt());
                    (c.id != first && !in_head && !self.tail_rejected.contains(&c.id)).then_some(e)
                });
                let mut last = None;
                inverse_cdf(tail.inspect(|e| last = Some(*e)), u - head_mass)
                    .or(last)
                    .or_else(|| self.head.iter().rev().find(|e| e.key != dead).copied())
            }
        }
    }
}

/// How a re-draw weighs and ranks one candidate.
struct DrawRule {
    redraw: Redraw,
    seed: u64,
    step: u64,
    /// Largest processed logit (`+inf` logits share all the mass).
    max: f32,
}

impl DrawRule {
    /// The entry of a candidate with processed logit `logit`; `None` if it has no mass.
    fn entry(&self, id: u32, logit: f32) -> Option<Entry> {
        if logit == f32::NEG_INFINITY || logit.is_nan() {
            return None;
        }
        // Greedy re-draws go by logit alone and stop by the rejection count, so they
        // skip the exponentials.
        let weight = match self.redraw {
            Redraw::Greedy => 1.0,
            _ if self.max == f32::INFINITY => f64::from(u8::from(logit == f32::INFINITY)),
            _ => (f64::from(logit) - f64::from(self.max)).exp(),
        };
        let key = match self.redraw {
            Redraw::Greedy => f64::from(logit),
            Redraw::Gumbel => f64::from(logit) + gumbel_noise(self.seed, self.step, id),
            Redraw::Random => weight,
        };
        Some(Entry { id, weight, key })
    }
}

/// The entry where the cumulative weight first exceeds `u` (`None` if it never does).
fn inverse_cdf(entries: impl Iterator<Item = Entry>, u: f64) -> Option<Entry> {
    let mut cum = 0.0;
    for e in entries {
        if e.weight > 0.0 {
            cum += e.weight;
            if u < cum {
                return Some(e);
            }
        }
    }
    None
}

/// What [`generate`] produced.
#[derive(Clone, Debug)]
pub struct ConstrainedOutput {
    /// Generated ids, without a final end-of-generation token.
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Whether the grammar was completed (an end-of-generation token was chosen or
    /// the grammar allowed nothing more) before `max_tokens`.
    pub finished: bool,
    /// Seconds in the decode loop (forward passes, grammar and sampling), after the
    /// prompt's prefill.
    pub decode_secs: f64,
    pub stats: ConstraintStats,
}

/// A whole constrained generation in a [`Session`]: makes the cache hold `prompt`
/// (reusing a common prefix), then chooses up to `max_tokens` tokens with `cs` and
/// `sampler`. For tools, tests and benchmarks; the server goes through the scheduler.
pub fn generate(
    session: &mut crate::Session<'_>,
    prompt: &[u32],
    cs: &mut ConstrainedSampler,
    sampler: &mut Sampler,
    max_tokens: usize,
) -> Result<ConstrainedOutput> {
    let model = session.model();
    session.sync_prompt(prompt)?;
    let mut history = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut work = Vec::new();
    let mut logits = session.logits().ok_or(EngineError::EmptyPrompt)?.to_vec();
    let mut finished = false;
    let start = Instant::now();
    while tokens.len() < max_tokens {
        let id = cs.choose(&logits, &mut work, sampler, &history)?;
        if model.tokenizer.is_end_of_generation(id) || id == cs.eos {
            finished = true;
            break;
        }
        tokens.push(id);
        history.push(id);
        if cs.is_finished() {
            finished = true;
            break;
        }
        if tokens.len() >= max_tokens || session.tokens().len() + 1 >= session.n_ctx() {
            break;
        }
        logits.clear();
        logits.extend_from_slice(session.prefill(&[id])?);
    }
    let decode_secs = start.elapsed().as_secs_f64();
    let text = model.tokenizer.decode(&tokens)?;
    Ok(ConstrainedOutput {
        tokens,
        text,
        finished,
        decode_secs,
        stats: cs.stats(),
    })
}

/// `work` = `logits` with every token the mask disallows (and every id past the
/// vocabulary) at `-inf`.
fn apply_mask(logits: &[f32], work: &mut Vec<f32>, mask: &SimpleVob, n_vocab: usize) {
    work.clear();
    work.extend(logits.iter().enumerate().map(|(i, &x)| {
        if i < n_vocab && mask.is_allowed(i as u32) {
            x
        } else {
            f32::NEG_INFINITY
        }
    }));
}

fn no_allowed_token(work: &[f32]) -> Result<()> {
    if work.iter().all(|&x| x == f32::NEG_INFINITY || x.is_nan()) {
        return Err(EngineError::Invalid(
            "grammar: no token of the vocabulary can continue the output".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_env() -> Arc<GrammarEnv> {
        let mut tokens: Vec<Vec<u8>> = ["a", "b", "c", "d", "ab", "bd", "x"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        tokens.push(b"\xFF<eos>".to_vec());
        Arc::new(GrammarEnv::from_tokens(tokens, &[7]).unwrap())
    }

    #[test]
    fn mode_names_round_trip() {
        for name in ConstraintMode::NAMES {
            assert_eq!(ConstraintMode::from_name(name).unwrap().name(), name);
        }
        let err = ConstraintMode::from_name("fast").unwrap_err().to_string();
        assert!(err.contains("mask, awrs"), "{err}");
    }

    #[test]
    fn bad_grammars_are_errors() {
        let env = tiny_env();
        assert!(Grammar::regex_in(env.clone(), "(").is_err());
        let bad = serde_json::json!({"type": "object", "properties": {"a": {"type": 5}}});
        let err = Grammar::json_schema_in(env.clone(), &bad).unwrap_err();
        assert!(!err.to_string().contains('\n'));
        assert!(Grammar::json_schema_in(env, &serde_json::json!(3)).is_err());
    }

    #[test]
    fn sampler_is_send() {
        fn send<T: Send>() {}
        send::<ConstrainedSampler>();
        send::<Grammar>();
        send::<Arc<GrammarEnv>>();
    }

    #[test]
    fn regex_mask_and_eos() {
        let g = Grammar::regex_in(tiny_env(), "(b|d)+c").unwrap();
        let mut cs = ConstrainedSampler::new(&g, ConstraintMode::Mask).unwrap();
        assert_eq!(cs.allowed_tokens().unwrap(), vec![1, 3, 5]);
        let mut s = Sampler::new(sample::SamplerConfig::greedy());
        let mut work = Vec::new();
        // "bd" has the best logit among allowed tokens.
        let logits = [9.0, 1.0, 0.0, 2.0, 8.0, 3.0, 9.0, 0.0];
        assert_eq!(cs.choose(&logits, &mut work, &mut s, &[]).unwrap(), 5);
        let logits = [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 9.0];
        assert_eq!(cs.choose(&logits, &mut work, &mut s, &[]).unwrap(), 2);
        assert!(cs.is_accepting());
        assert_eq!(cs.choose(&logits, &mut work, &mut s, &[]).unwrap(), 7);
        assert!(cs.is_finished());
    }
}
