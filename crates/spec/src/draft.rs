//! Growing a draft from a draft model's own distributions: a chain stopped by the
//! draft's confidence (the SpecDec++ rule without a trained head), or a token tree
//! grown greedily by the estimated acceptance probability of each node (DySpec).
//!
//! The model runs elsewhere (the engine); here the draft's distributions arrive as
//! `(token, probability)` lists per node, and [`TreeGrower`] decides which tokens
//! become nodes and which nodes the draft model must evaluate next.
//!
//! A node's *path probability* is the product of the draft probabilities along its
//! path from the root. Under a calibrated draft it estimates the chance that the
//! target accepts the node (every token on its path must be accepted), which is what
//! a node is worth, while it costs one verified token. SpecDec++ stops drafting when
//! the predicted probability that some drafted token gets rejected exceeds a
//! threshold `h`, i.e. when the path probability drops below `1 - h`: `path_min`
//! here. DySpec grows the tree by always adding the candidate of highest path
//! probability: with both, the tree holds the nodes most likely to be accepted, and
//! stops early when the draft is unsure.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use crate::tree::TokenTree;

/// How a draft model's draft is grown.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowConfig {
    /// A token whose own draft probability (given its parent) is below this is never
    /// drafted: the draft's top-1 confidence stopping rule.
    pub p_min: f32,
    /// A node whose path probability is below this is never drafted (SpecDec++:
    /// stop when the chance that every drafted token is accepted gets too small).
    pub path_min: f32,
    /// Candidate children considered per evaluated node (1 = a chain).
    pub branch: usize,
    /// Most nodes added per round; each round's nodes are evaluated by the draft
    /// model in one batch (1 = one forward per token, strictly greedy DySpec).
    pub width: usize,
}

impl GrowConfig {
    /// A chain stopped when the draft's top-1 probability falls below `p_min`.
    pub fn chain(p_min: f32) -> GrowConfig {
        GrowConfig {
            p_min,
            path_min: 0.0,
            branch: 1,
            width: 1,
        }
    }

    /// A DySpec tree: candidates ranked by path probability, added while it is at
    /// least `path_min`, `width` per draft-model forward.
    pub fn tree(path_min: f32, width: usize) -> GrowConfig {
        GrowConfig {
            p_min: 0.0,
            path_min,
            branch: 4,
            width,
        }
    }

    /// One-line error for settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [("p-min", self.p_min), ("path-min", self.path_min)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("draft {name} must lie in [0, 1], got {p}"));
            }
        }
        if self.branch == 0 || self.width == 0 {
            return Err("draft branch and width must be at least 1".into());
        }
        Ok(())
    }
}

/// A token that may become a child of `parent`.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    path: f32,
    parent: usize,
    token: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Higher path probability first; ties to the older parent, then the lower id,
    /// so growth is deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        self.path
            .total_cmp(&other.path)
            .then(other.parent.cmp(&self.parent))
            .then(other.token.cmp(&self.token))
    }
}

/// Grows one step's draft tree from the draft model's distributions, round by round:
///
/// 1. [`offer`](Self::offer) the draft's top tokens after each evaluated node;
/// 2. [`grow`](Self::grow) adds the best candidates (highest path probability, at
///    most `width`) and returns the new nodes;
/// 3. the caller evaluates those of [`wants_eval`](Self::wants_eval) in one
///    draft-model batch and offers their distributions; repeat until `grow` adds
///    nothing.
#[derive(Clone, Debug)]
pub struct TreeGrower {
    config: GrowConfig,
    heap: BinaryHeap<Candidate>,
    /// Path probability of each tree node.
    path: Vec<f32>,
}

impl TreeGrower {
    /// Panics on an invalid config; call [`GrowConfig::validate`] on user input.
    pub fn new(config: GrowConfig) -> TreeGrower {
        if let Err(e) = config.validate() {
            panic!("TreeGrower::new: {e}");
        }
        TreeGrower {
            config,
            heap: BinaryHeap::new(),
            path: Vec::new(),
        }
    }

    pub fn config(&self) -> &GrowConfig {
        &self.config
    }

    /// Starts a new draft below the root of `tree` (which must hold only its root).
    pub fn begin(&mut self, tree: &TokenTree) {
        debug_assert_eq!(tree.len(), 1, "TreeGrower::begin: tree already grown");
        self.heap.clear();
        self.path.clear();
        self.path.push(1.0);
    }

    /// The draft's distribution after `node`: its most likely tokens with their
    /// probabilities, most likely first (only the first `branch` are read).
    pub fn offer(&mut self, node: usize, top: &[(u32, f32)]) {
        let base = self.path[node];
        for &(token, p) in top.iter().take(self.config.branch) {
            let path = base * p;
            if p >= self.config.p_min && path >= self.config.path_min && p > 0.0 {
                self.heap.push(Candidate {
                    path,
                    parent: node,
                    token,
                });
            }
        }
    }

    /// Adds the best candidates to `tree`: at most `width`, none beyond `budget`
    /// draft nodes in all or deeper than `max_depth`. Returns the new nodes (empty:
    /// the draft is complete).
    pub fn grow(&mut self, tree: &mut TokenTree, budget: usize, max_depth: usize) -> Range<usize> {
        let start = tree.len();
        while tree.len() - start < self.config.width && tree.n_draft() < budget {
            let Some(c) = self.heap.pop() else { break };
            if tree.depth(c.parent) >= max_depth {
                continue;
            }
            let (node, added) = tree.insert(c.parent, c.token);
            if added {
                self.path.push(c.path);
                debug_assert_eq!(self.path.len(), node + 1);
            }
        }
        start..tree.len()
    }

    /// Whether the draft model should evaluate `node` (its children could still be
    /// drafted): below `max_depth`, and its path probability leaves room for a child
    /// that passes both thresholds.
    pub fn wants_eval(&self, tree: &TokenTree, node: usize, max_depth: usize) -> bool {
        // A child's path probability is at most its parent's.
        tree.depth(node) < max_depth && self.path[node] >= self.config.path_min
    }

    /// Path probability of `node` (the root's is 1).
    pub fn path_probability(&self, node: usize) -> f32 {
        self.path[node]
    }
}

/// The `k` most likely tokens of a logit row with their probabilities, most likely
/// first (the draft's distribution at temperature 1).
pub fn top_probs(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    out.extend(
        sample::top_k_logprobs(logits, k)
            .into_iter()
            .map(|(id, lp)| (id, lp.exp())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_stops_when_the_draft_is_unsure() {
        let mut g = TreeGrower::new(GrowConfig::chain(0.5));
        let mut t = TokenTree::new(1);
        g.begin(&t);
        g.offer(0, &[(10, 0.9), (11, 0.05)]);
        assert_eq!(g.grow(&mut t, 8, 8), 1..2);
        assert!(g.wants_eval(&t, 1, 8));
        g.offer(1, &[(12, 0.7)]);
        assert_eq!(g.grow(&mut t, 8, 8), 2..3);
        // Top-1 below p_min: nothing more.
        g.offer(2, &[(13, 0.4), (14, 0.3)]);
        assert!(g.grow(&mut t, 8, 8).is_empty());
        assert_eq!(t.tokens(), &[1, 10, 12]);
        assert!((g.path_probability(2) - 0.63).abs() < 1e-6);
    }

    #[test]
    fn chain_respects_budget_and_depth() {
        let mut g = TreeGrower::new(GrowConfig::chain(0.0));
        let mut t = TokenTree::new(1);
        g.begin(&t);
        g.offer(0, &[(10, 0.9)]);
        assert_eq!(g.grow(&mut t, 1, 8), 1..2);
        g.offer(1, &[(11, 0.9)]);
        assert!(g.grow(&mut t, 1, 8).is_empty(), "budget of 1 used up");
        let mut t = TokenTree::new(1);
        g.begin(&t);
        g.offer(0, &[(10, 0.9)]);
        g.grow(&mut t, 8, 1);
        assert!(!g.wants_eval(&t, 1, 1), "at max depth");
    }

    #[test]
    fn tree_grows_by_path_probability() {
        // Root: 10 (0.6), 20 (0.3), 30 (0.1 < path_min).
        let mut g = TreeGrower::new(GrowConfig {
            width: 2,
            ..GrowConfig::tree(0.15, 2)
        });
        let mut t = TokenTree::new(1);
        g.begin(&t);
        g.offer(0, &[(10, 0.6), (20, 0.3), (30, 0.1)]);
        assert_eq!(g.grow(&mut t, 8, 8), 1..3);
        assert_eq!(t.tokens(), &[1, 10, 20]);
        // Below 10: 11 (path 0.54), 12 (0.06); below 20: 21 (0.15), 22 (0.12).
        g.offer(1, &[(11, 0.9), (12, 0.1)]);
        g.offer(2, &[(21, 0.5), (22, 0.4)]);
        assert_eq!(g.grow(&mut t, 8, 8), 3..5);
        assert_eq!(t.tokens(), &[1, 10, 20, 11, 21]);
        assert_eq!(t.parent(4), Some(2));
        // 11's children: 13 (0.27) beats everything left; 0.05 is below path_min.
        g.offer(3, &[(13, 0.5), (14, 0.1)]);
        assert_eq!(g.grow(&mut t, 8, 8), 5..6);
        assert_eq!(t.token(5), 13);
        assert!(g.grow(&mut t, 8, 8).is_empty());
    }

    #[test]
    fn top_probs_are_a_softmax() {
        let mut out = Vec::new();
        top_probs(&[0.0, (3.0f32).ln(), f32::NEG_INFINITY], 2, &mut out);
        assert_eq!(out[0].0, 1);
        assert!((out[0].1 - 0.75).abs() < 1e-6);
        assert!((out[1].1 - 0.25).abs() < 1e-6);
        assert!(GrowConfig::chain(1.5).validate().is_err());
        assert!(GrowConfig::tree(0.1, 0).validate().is_err());
    }
}
