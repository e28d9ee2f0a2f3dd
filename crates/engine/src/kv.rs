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
//! * `full` never evicts and never materialises attention weights: it runs exactly the
//!   no-policy path.

use kv::{Budget, KvPolicy, KvShape, LaneView, LayerAttention, PolicyParams};
use model::{AttentionObserver, AttentionWeights, Batch, Model, SequenceState};

use crate::{EngineError, Result};

/// A policy by name, its budget and parameters (what `--kv-policy`/`--kv-budget` set).
#[derive(Clone, Debug, PartialEq)]
pub struct KvOptions {
    pub policy: String,
    /// Required for every policy but `full` (which ignores it).
    pub budget: Option<Budget>,
    pub params: PolicyParams,
}

impl Default for KvOptions {
    /// `full`: the exact cache.
    fn default() -> Self {
        KvOptions {
            policy: "full".into(),
            budget: None,
            params: PolicyParams::default(),
        }
    }
}

impl KvOptions {
    pub fn new(policy: &str, budget: Option<Budget>) -> KvOptions {
        KvOptions {
            policy: policy.into(),
            budget,
            params: PolicyParams::default(),
        }
    }

    /// Whether these options are the exact cache.
    pub fn is_full(&self) -> bool {
        self.policy.eq_ignore_ascii_case("full")
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
        let shape = KvShape {
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
        };
        Ok(KvController::new(policy, budget, shape))
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

/// Runs forward calls under an eviction policy with a per-lane budget.
pub struct KvController {
    policy: Box<dyn KvPolicy>,
    budget: usize,
    shape: KvShape,
    keep: Vec<usize>,
    kept: Vec<usize>,
    stats: KvStats,
}

impl KvController {
    /// `budget` tokens per lane (`usize::MAX`: never evict).
    pub fn new(mut policy: Box<dyn KvPolicy>, budget: usize, shape: KvShape) -> KvController {
        policy.reset(&shape);
        KvController {
            policy,
            budget,
            shape,
            keep: Vec::new(),
            kept: Vec::new(),
            stats: KvStats::default(),
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Tokens per lane (`usize::MAX` for `full`).
    pub fn budget(&self) -> usize {
        self.budget
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
        self.stats = KvStats::default();
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
        let watch = self.evicts() && self.policy.wants_attention();
        let out = if watch {
            let mut obs = PolicyObserver {
                policy: self.policy.as_mut(),
            };
            model.forward(state, batch, Some(&mut obs))?
        } else {
            model.forward(state, batch, None)?
        };
        logits.clear();
        logits.extend_from_slice(out);
        Ok(())
    }

    /// Evicts every lane down to the budget (nothing for `full`).
    /// The observer to pass with this sequence to a batched forward call
    /// ([`model::Model::forward_many`]); `None` when the policy needs no attention
    /// weights (then none are materialised). Call [`KvController::enforce_budget`]
    /// after the pass.
    pub fn observer(&mut self) -> Option<PolicyObserver<'_>> {
        (self.evicts() && self.policy.wants_attention()).then(|| PolicyObserver {
            policy: self.policy.as_mut(),
        })
    }

    pub fn enforce_budget(&mut self, state: &mut SequenceState) -> Result<()> {
        if self.evicts() {
            self.evict(state)?;
        }
        Ok(())
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
                let view = LaneView {
                    layer,
                    kv_head: g,
                    slots: lane.slots(),
                    positions: cache.positions(),
                    keys: lane.keys(),
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
