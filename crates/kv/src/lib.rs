//! KV-cache eviction policies: which cached tokens each layer and KV head keeps when a
//! sequence holds more tokens than its budget.
//!
//! This crate knows nothing of models or tensors beyond plain slices. The engine
//! adapts the model's attention weights into [`LayerAttention`] and each cache lane
//! (one layer × one KV head: its own set of kept tokens) into a [`LaneView`], then:
//!
//! 1. after every forward call, hands the policy the attention weights of the new
//!    queries ([`KvPolicy::observe`], only when [`KvPolicy::wants_attention`]);
//! 2. for every lane holding more than `budget` entries, asks which entries to keep
//!    ([`KvPolicy::select`]);
//! 3. when logical slots that no lane holds any more are dropped from the cache, tells
//!    the policy the surviving slots ([`KvPolicy::retain_slots`]) so per-slot state
//!    stays aligned.
//!
//! Slots are the cache's logical token slots in insertion order; a lane holds an
//! increasing subset of them. Policies keep per-slot scores indexed by logical slot.
//!
//! | name | keeps | per-head sets | paper |
//! |---|---|---|---|
//! | `full` | everything (the exact reference) | – | – |
//! | `window` | `n_sink` first tokens + the most recent | no | StreamingLLM |
//! | `h2o` | highest accumulated attention + a recent window | yes | H2O |
//! | `tova` | highest attention from the newest query, averaged over the layer's heads | no | TOVA |
//! | `a2sf` | highest attention accumulated with a forgetting factor | yes | A2SF |
//! | `knorm` | keys with the lowest L2 norm | yes | "A simple and effective L2 norm-based strategy" |
//! | `keyformer` | highest accumulated Gumbel-softmax attention + a recent window | yes | Keyformer |
//! | `snapkv` | highest max-pooled attention from the last `window` queries + those queries | yes | SnapKV |
//!
//! Every policy but `full` and `window` also exposes its per-token scores
//! ([`KvPolicy::importance`]) for importance-aware mixed-precision storage: the
//! engine keeps the tokens a policy ranks highest at int8 and the rest at int4.

mod policies;

pub use policies::{A2sf, Full, H2o, KNorm, Keyformer, SnapKv, Tova, Window};

use std::fmt;
use std::str::FromStr;

/// What can go wrong when choosing a policy or a budget. Messages are one line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KvError {
    #[error("unknown KV policy {name:?}: expected one of {}", POLICY_NAMES.join(", "))]
    UnknownPolicy { name: String },
    #[error("invalid KV budget: {0}")]
    InvalidBudget(String),
    #[error("invalid KV policy parameter: {0}")]
    InvalidParam(String),
}

pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// Every policy [`policy_from_name`] knows.
pub const POLICY_NAMES: &[&str] = &[
    "full",
    "window",
    "h2o",
    "tova",
    "a2sf",
    "knorm",
    "snapkv",
    "keyformer",
];

/// The attention geometry a policy sizes its state for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (one lane per layer and KV head); divides `n_head`.
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn n_lanes(&self) -> usize {
        self.n_layer * self.n_head_kv
    }
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_head_kv
    }
    pub fn lane(&self, layer: usize, kv_head: usize) -> usize {
        layer * self.n_head_kv + kv_head
    }
}

/// Softmax attention weights of one layer for the queries of one forward call.
pub struct LayerAttention<'a> {
    pub layer: usize,
    pub n_tokens: usize,
    /// Query heads.
    pub n_head: usize,
    /// Logical slots in the cache after the call (the new tokens included).
    pub n_slots: usize,
    /// `[n_tokens, n_head, n_slots]`; slots a head cannot see (masked, or not held by
    /// its lane) hold 0.
    pub weights: &'a [f32],
}

impl LayerAttention<'_> {
    /// Weights of query `token`, head `head` over all slots.
    pub fn row(&self, token: usize, head: usize) -> &[f32] {
        let start = (token * self.n_head + head) * self.n_slots;
        &self.weights[start..start + self.n_slots]
    }
}

/// The entries one lane (layer × KV head) holds, oldest first.
pub struct LaneView<'a> {
    pub layer: usize,
    pub kv_head: usize,
    /// Logical slot of each entry, strictly increasing.
    pub slots: &'a [u32],
    /// Position of every logical slot of the cache (index with `slots`).
    pub positions: &'a [usize],
    /// Keys of the entries, `[len, head_dim]` (after RoPE; dequantised when the cache
    /// stores them quantised). Empty unless the policy [`KvPolicy::wants_keys`].
    pub keys: &'a [f32],
    pub head_dim: usize,
}

impl LaneView<'_> {
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// An eviction policy. One instance serves one sequence.
pub trait KvPolicy: Send {
    fn name(&self) -> &'static str;
    /// Forgets all state and sizes it for `shape` (called before a sequence starts).
    fn reset(&mut self, shape: &KvShape);
    /// Whether [`KvPolicy::observe`] needs the attention weights (materialising them
    /// costs memory and time, so policies that score keys alone say no).
    fn wants_attention(&self) -> bool {
        false
    }
    /// Attention weights of one layer for the queries of the last forward call.
    fn observe(&mut self, _attention: &LayerAttention<'_>) {}
    /// Called when `lane` holds more than `budget` entries: pushes onto `keep` (empty
    /// on entry) exactly `budget` strictly increasing entry indices to keep.
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>);
    /// The cache dropped every logical slot not in `keep` (strictly increasing) and
    /// renumbered the survivors `0..keep.len()`.
    fn retain_slots(&mut self, _keep: &[usize]) {}
    /// Whether [`KvPolicy::select`] and [`KvPolicy::importance`] read
    /// [`LaneView::keys`] (materialising them from a quantised cache costs time, so the
    /// engine passes an empty slice to policies that do not).
    fn wants_keys(&self) -> bool {
        false
    }
    /// Whether [`KvPolicy::importance`] gives scores.
    fn has_importance(&self) -> bool {
        false
    }
    /// Pushes onto `out` (empty on entry) one score per entry of `lane` (higher = more
    /// worth keeping), the ranking [`KvPolicy::select`] keeps by, without the recent
    /// window it always keeps. `lane` may be any increasing subset of a lane's
    /// entries. Mixed-precision KV storage (ZipCache, MiKV) keeps the highest-scored
    /// tokens at the higher precision. Policies without per-token scores (`full`,
    /// `window`) push nothing.
    fn importance(&mut self, _lane: &LaneView<'_>, _out: &mut Vec<f32>) {}
}

/// Tunable parameters of the policies; each reads the ones it uses.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyParams {
    /// `window`: attention-sink tokens kept at the start (StreamingLLM uses 4).
    pub n_sink: usize,
    /// `h2o`, `keyformer`: recent tokens always kept, as a fraction of the budget.
    pub recent_ratio: f64,
    /// `a2sf`: factor old accumulated scores are multiplied by at each new query.
    pub forget: f32,
    /// `snapkv`: observation window (the last queries whose attention scores tokens).
    pub obs_window: usize,
    /// `snapkv`: max-pooling kernel over neighbouring tokens (odd).
    pub pool_kernel: usize,
    /// `keyformer`: Gumbel-softmax temperature.
    pub tau: f32,
    /// `keyformer`: seed of the Gumbel noise.
    pub seed: u64,
}

impl Default for PolicyParams {
    fn default() -> Self {
        PolicyParams {
            n_sink: 4,
            recent_ratio: 0.5,
            forget: 0.9,
            obs_window: 32,
            pool_kernel: 5,
            tau: 1.0,
            seed: 0x5eed,
        }
    }
}

impl PolicyParams {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.recent_ratio) {
            return Err(KvError::InvalidParam(format!(
                "recent ratio {} is outside [0, 1]",
                self.recent_ratio
            )));
        }
        if !(self.forget > 0.0 && self.forget <= 1.0) {
            return Err(KvError::InvalidParam(format!(
                "forgetting factor {} is outside (0, 1]",
                self.forget
            )));
        }
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return Err(KvError::InvalidParam(format!(
                "temperature {} must be positive",
                self.tau
            )));
        }
        if self.obs_window == 0 {
            return Err(KvError::InvalidParam(
                "the observation window must hold at least 1 query".into(),
            ));
        }
        if self.pool_kernel.is_multiple_of(2) {
            return Err(KvError::InvalidParam(format!(
                "pooling kernel {} must be odd",
                self.pool_kernel
            )));
        }
        Ok(())
    }
}

/// The policy called `name` (case-insensitive), configured by `params`.
pub fn policy_from_name(name: &str, params: &PolicyParams) -> Result<Box<dyn KvPolicy>> {
    params.validate()?;
    let p = params.clone();
    Ok(match name.to_ascii_lowercase().as_str() {
        "full" => Box::new(Full),
        "window" | "streamingllm" => Box::new(Window::new(p.n_sink)),
        "h2o" => Box::new(H2o::new(p.recent_ratio)),
        "tova" => Box::new(Tova::default()),
        "a2sf" => Box::new(A2sf::new(p.forget)),
        "knorm" => Box::new(KNorm),
        "snapkv" => Box::new(SnapKv::new(p.obs_window, p.pool_kernel)),
        "keyformer" => Box::new(Keyformer::new(p.recent_ratio, p.tau, p.seed)),
        _ => {
            return Err(KvError::UnknownPolicy {
                name: name.to_string(),
            })
        }
    })
}

/// A KV budget: a number of tokens per lane, or a share of the context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Tokens(usize),
    /// Percent of the context, in (0, 100].
    Percent(f64),
}

impl Budget {
    /// Tokens per lane for a context of `n_ctx` tokens. Errors on a zero budget and on
    /// a budget larger than the context (it could never be reached: use `full`).
    pub fn resolve(self, n_ctx: usize) -> Result<usize> {
        let tokens = match self {
            Budget::Tokens(t) => t,
            Budget::Percent(p) => (p / 100.0 * n_ctx as f64).round() as usize,
        };
        if tokens == 0 {
            return Err(KvError::InvalidBudget(format!(
                "{self} is 0 tokens for a {n_ctx}-token context: the cache must keep at least 1 token"
            )));
        }
        if tokens > n_ctx {
            return Err(KvError::InvalidBudget(format!(
                "{self} exceeds the {n_ctx}-token context: it would never evict (use --kv-policy full)"
            )));
        }
        Ok(tokens)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Tokens(t) => write!(f, "{t}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Budget {
    type Err = KvError;
    /// `256` (tokens) or `25%` (of the context).
    fn from_str(s: &str) -> Result<Budget> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| {
                KvError::InvalidBudget(format!("{s:?}: expected TOKENS or PERCENT%"))
            })?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(KvError::InvalidBudget(format!(
                    "{s:?}: a percentage must be in (0, 100]"
                )));
            }
            Ok(Budget::Percent(p))
        } else {
            s.parse()
                .map(Budget::Tokens)
                .map_err(|_| KvError::InvalidBudget(format!("{s:?}: expected TOKENS or PERCENT%")))
        }
    }
}

#[cfg(test)]
mod tests;
