//! KV-cache eviction policies wired into the forward pass: a [`KvController`] runs
//! each forward call with the policy watching the attention weights, then shrinks
//! every lane (layer × KV head) of the cache that holds more than the budget.
//!
//! Behaviour, by design:
//! * The budget is per lane, in tokens; [`Budget::Percent`] is a share of the context
//!   (`n_ctx`). Zero, or more than the context, is an error ([`KvOptions::controller`]).
//! * Eviction runs after every forward call, so during a prefill chunk the cache holds
//!   up to `budget + chunk` tokens; between calls every lane holds at most `budget`.
//! * Kept tokens keep their original RoPE positions, and positions keep counting past
//!   evicted tokens: the context size still bounds the total number of tokens of a
//!   sequence (RoPE past the trained context is out of distribution); the budget bounds
//!   memory.
//! * `full` never evicts and never materialises attention weights: with f16 storage it
//!   runs exactly the no-policy path.
//! * KV quantisation ([`KvQuant`], `--kv-dtype int8|int4|mixed`) combines with any
//!   policy: the controller sets the cache's storage before each forward call and,
//!   after eviction, quantises every lane's settled entries (complete groups out of
//!   the residual window; see `model::kv_cache`). Eviction sees quantised lanes as any
//!   others; policies that read keys (`knorm`) get them dequantised.
//! * `mixed` keeps the share `mixed_keep` of each new group that the policy's
//!   [`KvPolicy::importance`] ranks highest at int8, the rest at int4. `full` and
//!   `window` have no scores, so with `mixed` the controller runs an `h2o` scorer
//!   beside them (accumulated attention, as MiKV uses), which materialises the
//!   attention weights.
//! * When the cache was truncated behind the controller's back (a session reusing a
//!   prefix), the policy and scorer forget the dropped slots before the next call.

use kv::{Budget, KvPolicy, KvShape, LaneView, LayerAttention, PolicyParams};
use model::kv_cache::SettleCandidates;
pub use model::kv_cache::{KvDtype, KvQuant};
use model::{AttentionObserver, AttentionWeights, Batch, Model, ModelConfig, SequenceState};

use crate::{EngineError, Result};

/// A policy by name, its budget and parameters, and the storage type (what
/// `--kv-policy`/`--kv-budget`/`--kv-dtype` set).
#[derive(Clone, Debug, PartialEq)]
pub struct KvOptions {
    pub policy: String,
    /// Required for every policy but `full` (which ignores it).
    pub budget: Option<Budget>,
    pub params: PolicyParams,
    /// How keys and values are stored (f16 by default).
    pub quant: KvQuant,
    /// Move kept tokens to positions inside the cache after each eviction
    /// (StreamingLLM's choice; `window` only) instead of keeping their original RoPE
    /// positions (the default).
    pub reposition: bool,
}

impl Default for KvOptions {
    /// `full` in f16: the exact cache.
    fn default() -> Self {
        KvOptions {
            policy: "full".into(),
            budget: None,
            params: PolicyParams::default(),
            quant: KvQuant::default(),
            reposition: false,
        }
    }
}

impl KvOptions {
    pub fn new(policy: &str, budget: Option<Budget>) -> KvOptions {
        KvOptions {
            policy: policy.into(),
            budget,
            ..KvOptions::default()
        }
    }

    /// The same options with keys and values stored as `quant` says.
    pub fn with_quant(mut self, quant: KvQuant) -> KvOptions {
        self.quant = quant;
        self
    }

    /// Whether the policy is `full` (it never evicts).
    pub fn is_full(&self) -> bool {
        self.policy.eq_ignore_ascii_case("full")
    }

    /// Whether these options are the exact cache (`full`, f16): no controller needed.
    pub fn is_exact(&self) -> bool {
        self.is_full() && !self.quant.is_quantized()
    }

    /// A controller for `model` with a context of `n_ctx` tokens. Errors on an unknown
    /// policy, a missing, zero or larger-than-context budget, and bad parameters.
    pub fn controller(&self, model: &Model, n_ctx: usize) -> Result<KvController> {
        let policy = kv::policy_from_name(&self.policy, &self.params).map_err(invalid)?;
        let budget = if self.is_full() {
            usize::MAX
        } else {
            let b = self.budget.ok_or_else(|| {
                EngineError::Invalid(format!(
                    "KV policy {} needs a budget (--kv-budget TOKENS or PERCENT%)",
                    self.policy
                ))
            })?;
            b.resolve(n_ctx).map_err(invalid)?
        };
        let c = &model.config;
        self.quant
            .validate(c.head_dim)
            .map_err(|e| EngineError::Invalid(format!("KV quantisation: {e}")))?;
        if self.reposition {
            if !self.policy.eq_ignore_ascii_case("window") {
                return Err(EngineError::Invalid(format!(
                    "re-positioning kept tokens (--kv-positions cache) is defined for the \
                     window policy, not {}",
                    self.policy
                )));
            }
            if self.quant.is_quantized() {
                return Err(EngineError::Invalid(
                    "re-positioning kept tokens needs full-precision keys (--kv-dtype f16)".into(),
                ));
            }
        }
        let shape = KvShape {
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };
        let mut ctl = KvController::new(policy, budget, shape).with_quant(self.quant);
        if self.reposition {
            ctl.reposition = Some(c.clone());
        }
        Ok(ctl)
    }
}

fn invalid(e: kv::KvError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

/// Counters of one controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Lane entries evicted.
    pub evicted: usize,
    /// Largest [`model::KvCache::memory_bytes`] seen after a forward call's eviction.
    pub peak_bytes: usize,
}

/// Runs forward calls under an eviction policy with a per-lane budget, and keeps the
/// cache's storage type.
pub struct KvController {
    policy: Box<dyn KvPolicy>,
    budget: usize,
    shape: KvShape,
    quant: KvQuant,
    /// `mixed` with a policy without scores: the policy that ranks tokens instead.
    scorer: Option<Box<dyn KvPolicy>>,
    /// Logical slots in the cache after the last call (to notice truncation).
    seen_slots: usize,
    keep: Vec<usize>,
    kept: Vec<usize>,
    /// Dequantised keys of a lane for policies that read keys.
    keys: Vec<f32>,
    stats: KvStats,
    /// The model's RoPE settings when kept tokens are re-positioned after eviction.
    reposition: Option<ModelConfig>,
}

impl KvController {
    /// `budget` tokens per lane (`usize::MAX`: never evict); f16 storage.
    pub fn new(mut policy: Box<dyn KvPolicy>, budget: usize, shape: KvShape) -> KvController {
        policy.reset(&shape);
        KvController {
            policy,
            budget,
            shape,
            quant: KvQuant::default(),
            scorer: None,
            seen_slots: 0,
            keep: Vec::new(),
            kept: Vec::new(),
            keys: Vec::new(),
            stats: KvStats::default(),
            reposition: None,
        }
    }

    /// Stores keys and values as `quant` says (validated by [`KvOptions::controller`];
    /// the cache checks again when it is applied).
    pub fn with_quant(mut self, quant: KvQuant) -> KvController {
        self.quant = quant;
        self.scorer = (quant.dtype == KvDtype::Mixed && !self.policy.has_importance()).then(|| {
            let mut h2o: Box<dyn KvPolicy> = Box::new(kv::H2o::new(0.0));
            h2o.reset(&self.shape);
            h2o
        });
        self
    }

    /// The storage settings.
    pub fn quant(&self) -> &KvQuant {
        &self.quant
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Tokens per lane (`usize::MAX` for `full`).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether kept tokens move to positions inside the cache after eviction (then the
    /// next token's position is the cache length, `KvCache::next_position`).
    pub fn repositions(&self) -> bool {
        self.reposition.is_some()
    }

    /// Whether this controller can ever evict (false for `full`).
    pub fn evicts(&self) -> bool {
        self.budget != usize::MAX
    }

    pub fn stats(&self) -> KvStats {
        self.stats
    }

    /// Forgets the policy's state (call with an emptied cache).
    pub fn reset(&mut self) {
        self.policy.reset(&self.shape);
        if let Some(s) = &mut self.scorer {
            s.reset(&self.shape);
        }
        self.seen_slots = 0;
        self.stats = KvStats::default();
    }

    /// The policy that must see this call's attention weights: the evicting policy
    /// when it scores by attention, else a `mixed` scorer that does; `None` when no
    /// weights are needed (then none are materialised).
    fn watcher(&mut self) -> Option<&mut dyn KvPolicy> {
        if self.evicts() && self.policy.wants_attention() {
            return Some(self.policy.as_mut());
        }
        match &mut self.scorer {
            Some(s) if s.wants_attention() => Some(s.as_mut()),
            _ => None,
        }
    }

    /// Applies the storage settings to the cache and, when the cache lost slots since
    /// the last call (truncation by the caller), makes the policies forget them.
    fn sync(&mut self, state: &mut SequenceState) -> Result<()> {
        state.cache.set_quant(self.quant)?;
        let n = state.cache.len();
        if n < self.seen_slots {
            self.kept.clear();
            self.kept.extend(0..n);
            self.policy.retain_slots(&self.kept);
            if let Some(s) = &mut self.scorer {
                s.retain_slots(&self.kept);
            }
        }
        self.seen_slots = n;
        Ok(())
    }

    /// One forward call: appends the batch, copies the requested logits into
    /// `logits`, then evicts down to the budget.
    pub fn forward(
        &mut self,
        model: &Model,
        state: &mut SequenceState,
        batch: &Batch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        self.forward_deferred(model, state, batch, logits)?;
        self.enforce_budget(state)
    }

    /// Like [`Self::forward`] but without evicting: the policy observes, the cache
    /// grows. For compressing once after a whole prompt (SnapKV's setting), call
    /// [`Self::enforce_budget`] at its end.
    pub fn forward_deferred(
        &mut self,
        model: &Model,
        state: &mut SequenceState,
        batch: &Batch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        self.sync(state)?;
        let out = match self.watcher() {
            Some(policy) => {
                let mut obs = PolicyObserver { policy };
                model.forward(state, batch, Some(&mut obs))?
            }
            None => model.forward(state, batch, None)?,
        };
        logits.clear();
        logits.extend_from_slice(out);
        Ok(())
    }

    /// The observer to pass with this sequence to a batched forward call
    /// ([`model::Model::forward_many`]); `None` when no policy needs attention
    /// weights (then none are materialised). Call [`KvController::enforce_budget`]
    /// after the pass.
    pub fn observer(&mut self) -> Option<PolicyObserver<'_>> {
        self.watcher().map(|policy| PolicyObserver { policy })
    }

    /// Evicts every lane down to the budget (nothing for `full`), then quantises the
    /// entries that left the residual window (nothing for f16).
    pub fn enforce_budget(&mut self, state: &mut SequenceState) -> Result<()> {
        // A batched caller ran the forward pass without `sync`: the first batch of a
        // sequence was stored at full precision and is quantised here.
        state.cache.set_quant(self.quant)?;
        if self.evicts() {
            self.evict(state)?;
        }
        if let Some(config) = &self.reposition {
            model::reposition_cache(config, &mut state.cache)?;
        }
        if self.quant.is_quantized() {
            self.quantize(state);
            self.stats.peak_bytes = self.stats.peak_bytes.max(state.cache.memory_bytes());
        }
        self.seen_slots = state.cache.len();
        Ok(())
    }

    /// Quantises every lane's settled entries; with `mixed`, ranked by the policy's
    /// (or the scorer's) importance.
    fn quantize(&mut self, state: &mut SequenceState) {
        if self.quant.dtype != KvDtype::Mixed {
            state.cache.quantize_settled(None);
            return;
        }
        let scorer: &mut dyn KvPolicy = match &mut self.scorer {
            Some(s) => s.as_mut(),
            None => self.policy.as_mut(),
        };
        let wants_keys = scorer.wants_keys();
        let mut importance = |c: &SettleCandidates<'_>, out: &mut Vec<f32>| {
            let view = LaneView {
                layer: c.layer,
                kv_head: c.kv_head,
                slots: c.slots,
                positions: c.positions,
                keys: if wants_keys { c.keys } else { &[] },
                head_dim: c.head_dim,
            };
            scorer.importance(&view, out);
        };
        state.cache.quantize_settled(Some(&mut importance));
    }

    /// Shrinks every lane holding more than the budget, then drops the slots no lane
    /// holds.
    fn evict(&mut self, state: &mut SequenceState) -> Result<()> {
        let cache = &mut state.cache;
        let mut changed = false;
        for layer in 0..self.shape.n_layer {
            for g in 0..self.shape.n_head_kv {
                let lane = cache.lane(layer, g);
                if lane.len() <= self.budget {
                    continue;
                }
                self.keep.clear();
                // Keys only for policies that read them; dequantised when needed.
                let keys: &[f32] = if !self.policy.wants_keys() {
                    &[]
                } else if lane.n_quantized() == 0 {
                    lane.keys()
                } else {
                    lane.dequantize_keys(self.shape.head_dim, &mut self.keys);
                    &self.keys
                };
                let view = LaneView {
                    layer,
                    kv_head: g,
                    slots: lane.slots(),
                    positions: cache.positions(),
                    keys,
                    head_dim: self.shape.head_dim,
                };
                self.policy.select(&view, self.budget, &mut self.keep);
                let len = lane.len();
                let ok = self.keep.len() == self.budget
                    && self.keep.windows(2).all(|w| w[0] < w[1])
                    && self.keep.last().is_some_and(|&e| e < len);
                if !ok {
                    return Err(EngineError::Invalid(format!(
                        "KV policy {} kept an invalid set of entries (a bug in the policy)",
                        self.policy.name()
                    )));
                }
                self.stats.evicted += len - self.budget;
                cache.retain_lane(layer, g, &self.keep);
                changed = true;
            }
        }
        if changed {
            let before = cache.len();
            cache.drop_unused_slots(&mut self.kept);
            if self.kept.len() < before {
                self.policy.retain_slots(&self.kept);
                if let Some(s) = &mut self.scorer {
                    s.retain_slots(&self.kept);
                }
            }
        }
        self.stats.peak_bytes = self.stats.peak_bytes.max(cache.memory_bytes());
        Ok(())
    }
}

/// Hands the model's attention weights to a policy.
pub struct PolicyObserver<'a> {
    policy: &'a mut dyn KvPolicy,
}

impl AttentionObserver for PolicyObserver<'_> {
    fn observe(&mut self, w: &AttentionWeights<'_>) {
        self.policy.observe(&LayerAttention {
            layer: w.layer,
            n_tokens: w.n_tokens,
            n_head: w.n_head,
            n_slots: w.n_slots,
            weights: w.weights,
        });
    }
}
