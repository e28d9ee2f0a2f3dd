//! Speculative decoding, the model-independent half: everything here works on token
//! ids and plain logit rows, so it is tested in milliseconds without weights.
//!
//! One step of speculative decoding, as the engine drives it:
//!
//! 1. The next token (the *root*) is already known from the last logits.
//! 2. A [`Drafter`] guesses continuations of the root as a [`TokenTree`] (a chain is
//!    a tree with one child per node).
//! 3. The target model scores every node in one forward pass: node `i` sits at
//!    position `base + depth(i)` and sees the cached prefix plus its own ancestors
//!    ([`TokenTree::mask`]).
//! 4. [`verify_greedy`] walks down the tree while the drafted token equals the
//!    target's argmax at its parent; the accepted path is kept in the KV cache, the
//!    rest dropped, and the argmax after the last accepted node is the next root
//!    (the "bonus" token). For sampling, [`verify_chain_stochastic`] is the
//!    rejection scheme of Leviathan et al. / Chen et al., which leaves the output
//!    distribution exactly the target's.
//! 5. The drafter [`observe`](Drafter::observe)s the verified rows to adapt, and an
//!    [`AdaptiveBudget`] shrinks the draft when little is accepted (down to 0 =
//!    plain decoding) and probes again later.
//!
//! Drafters: [`LookupDrafter`] (prompt lookup: n-gram matches over the context) and
//! [`RecycleDrafter`] (Token Recycling: the target's top-k successors of every token
//! it has verified, kept in a bounded adjacency map, expanded along a static tree
//! template), and [`NgramAdaptiveDrafter`] (ADED: an online tri-gram table over the
//! context and the verified rows' top-k successors, drafted best-first by path
//! probability). A smaller draft model (run by the engine) grows its draft with a
//! [`TreeGrower`]: a chain stopped by the draft's own confidence (SpecDec++'s rule)
//! or a tree grown greedily by path probability (DySpec).

mod adaptive;
mod draft;
mod lookup;
mod ngram;
mod recycle;
mod tree;
mod verify;

pub use adaptive::{AdaptiveBudget, AdaptiveConfig, CostModel};
pub use draft::{top_probs, GrowConfig, TreeGrower};
pub use lookup::{LookupConfig, LookupDrafter};
pub use ngram::{NgramAdaptiveConfig, NgramAdaptiveDrafter};
pub use recycle::{RecycleConfig, RecycleDrafter, DEFAULT_TEMPLATE};
pub use tree::TokenTree;
pub use verify::{verify_chain_stochastic, verify_greedy, GreedyVerdict, StochasticVerdict};

/// Proposes draft tokens and learns from their verification.
pub trait Drafter {
    /// Short name for reports (`lookup`, `recycle`, `ngram-adaptive`).
    fn name(&self) -> &'static str;

    /// Grows `tree`, whose root (node 0) is the last token of `context` (the prompt
    /// and everything generated so far), by at most `budget` nodes, none deeper than
    /// `max_depth` below the root. Proposing nothing is always allowed.
    fn propose(&mut self, context: &[u32], tree: &mut TokenTree, budget: usize, max_depth: usize);

    /// The verification of `tree`: `logits` holds one row of `vocab` target logits per
    /// node (the distribution of the token after that node) and `accepted` the node
    /// indices kept, root first.
    fn observe(&mut self, _tree: &TokenTree, _logits: &[f32], _vocab: usize, _accepted: &[usize]) {}

    /// Whether [`observe`](Drafter::observe) reads the logits (callers may skip
    /// computing rows nobody reads otherwise).
    fn wants_logits(&self) -> bool {
        false
    }

    /// Bytes of state the drafter keeps between steps.
    fn memory_bytes(&self) -> usize {
        0
    }
}
