//! ADED (Liu et al. 2024, "Adaptive Draft-Verification for Efficient Large Language
//! Model Decoding"): an online tri-gram table approximates the target's next-token
//! distribution and drafts the continuation by path probability. It learns from two
//! sources, every step:
//!
//! - the context (prompt and generated text): each token counts as one observation of
//!   what follows its two predecessors (and its one predecessor, the bigram fallback);
//! - the verification rows: the target's real distribution after every drafted node,
//!   whose top-k tokens are added with their probabilities. This is what lets the
//!   table adapt beyond plain n-gram lookup: the runners-up of rejected branches and
//!   the successors of tokens that never occurred in the text are learnt too.
//!
//! Older evidence decays (every update of a row scales its weights first), so a row
//! follows the text as it changes. The draft is a best-first expansion: the node of
//! highest path probability (product of row probabilities from the root) is added
//! next, while it is at least `min_path_prob`, under the node budget.
//!
//! Memory is bounded: at most `successors` candidates per row, at most
//! `max_contexts` rows (tri-gram and bigram rows together); when the table is full the
//! least recently updated quarter is dropped.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::tree::TokenTree;
use crate::Drafter;

/// Most successor candidates kept per context.
pub const MAX_SUCCESSORS: usize = 8;

/// Marks "no token" in a bigram key's first slot.
const NONE: u32 = u32::MAX;

/// Mass every new row starts with, as if one unknown token had been seen: a single
/// observation of a successor then means probability 1/2, not certainty.
const ROW_PRIOR: f32 = 1.0;

/// Logits this far below a row's maximum add at most `e^-16 * vocab` to the softmax
/// sum (whose largest term is 1): under 2% for a 152k vocabulary, 0.6% for 49k. They
/// are left out, which bounds the argument of [`exp_approx`].
const SOFTMAX_CUTOFF: f32 = 16.0;

/// Settings of [`NgramAdaptiveDrafter`].
#[derive(Clone, Debug, PartialEq)]
pub struct NgramAdaptiveConfig {
    /// Successor candidates kept per context, and top-k read from each verified row
    /// (1..=8).
    pub successors: usize,
    /// Most contexts (tri-gram and bigram rows together) in the table.
    pub max_contexts: usize,
    /// Factor applied to a row's weights before each update (0: keep only the newest
    /// evidence, 1: plain counts).
    pub decay: f32,
    /// Weight of one occurrence in the context, relative to a verified row (whose
    /// top-k tokens add their probabilities, together at most 1).
    pub context_weight: f32,
    /// Smallest path probability (product of row probabilities from the root) drafted.
    pub min_path_prob: f32,
}

impl Default for NgramAdaptiveConfig {
    fn default() -> Self {
        NgramAdaptiveConfig {
            successors: MAX_SUCCESSORS,
            // 89 bytes per bucket; 28k rows fit 32k buckets: about 2.9 MB.
            max_contexts: 28_000,
            decay: 0.9,
            context_weight: 1.0,
            min_path_prob: 0.1,
        }
    }
}

impl NgramAdaptiveConfig {
    /// One-line error for settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.successors == 0 || self.successors > MAX_SUCCESSORS {
            return Err(format!(
                "ngram-adaptive successors must be 1..={MAX_SUCCESSORS}, got {}",
                self.successors
            ));
        }
        if self.max_contexts < 4 {
            return Err(format!(
                "ngram-adaptive needs room for at least 4 contexts, got {}",
                self.max_contexts
            ));
        }
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(format!(
                "ngram-adaptive decay must be in [0, 1], got {}",
                self.decay
            ));
        }
        if !(self.context_weight >= 0.0 && self.context_weight.is_finite()) {
            return Err(format!(
                "ngram-adaptive context weight must be finite and >= 0, got {}",
                self.context_weight
            ));
        }
        if !(0.0..=1.0).contains(&self.min_path_prob) {
            return Err(format!(
                "ngram-adaptive min path probability must be in [0, 1], got {}",
                self.min_path_prob
            ));
        }
        Ok(())
    }
}

/// What followed one context: up to [`MAX_SUCCESSORS`] candidates with decayed
/// weights, and the decayed total mass (candidates, evicted candidates, the part of
/// verified distributions outside their top-k, and the prior), so `weight / total` is
/// a probability.
#[derive(Clone, Copy, Debug)]
struct Row {
    tokens: [u32; MAX_SUCCESSORS],
    weights: [f32; MAX_SUCCESSORS],
    len: u8,
    total: f32,
    /// Update counter at the last update (unique: pruning order is deterministic).
    stamp: u64,
}

impl Row {
    fn new() -> Row {
        Row {
            tokens: [NONE; MAX_SUCCESSORS],
            weights: [0.0; MAX_SUCCESSORS],
            len: 0,
            total: ROW_PRIOR,
            stamp: 0,
        }
    }

    fn decay(&mut self, factor: f32) {
        if factor < 1.0 {
            for w in &mut self.weights[..usize::from(self.len)] {
                *w *= factor;
            }
            // The prior decays with the rest but never below itself: a row that was
            // only ever seen once stays uncertain.
            self.total = (self.total * factor).max(ROW_PRIOR);
        }
    }

    /// Adds `weight` to `token`; a new token replaces the lightest candidate when the
    /// row is full (if it is heavier), so fresh evidence can enter.
    fn add(&mut self, token: u32, weight: f32, capacity: usize) {
        let len = usize::from(self.len);
        if let Some(i) = self.tokens[..len].iter().position(|&t| t == token) {
            self.weights[i] += weight;
        } else if len < capacity {
            self.tokens[len] = token;
            self.weights[len] = weight;
            self.len += 1;
        } else if let Some((i, _)) = self.weights[..len]
            .iter()
            .enumerate()
            .filter(|&(_, &w)| w <= weight)
            .min_by(|a, b| a.1.total_cmp(b.1))
        {
            self.tokens[i] = token;
            self.weights[i] = weight;
        }
    }

    /// Candidates as `(probability, token)`, most likely first, ties to the lower id.
    fn ranked(&self, out: &mut Vec<(f32, u32)>) {
        out.clear();
        let len = usize::from(self.len);
        out.extend(
            self.weights[..len]
                .iter()
                .zip(&self.tokens[..len])
                .map(|(&w, &t)| (w / self.total, t)),
        );
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }
}

fn trigram_key(first: u32, second: u32) -> u64 {
    (u64::from(first) << 32) | u64::from(second)
}

fn bigram_key(token: u32) -> u64 {
    trigram_key(NONE, token)
}

/// A node waiting to be drafted, ordered by path probability (then by the order it
/// was found, earlier first, so equal probabilities give the same tree every time).
#[derive(Debug)]
struct Candidate {
    prob: f32,
    order: usize,
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
    fn cmp(&self, other: &Self) -> Ordering {
        self.prob
            .total_cmp(&other.prob)
            .then(other.order.cmp(&self.order))
    }
}

/// The ADED drafter. Its table persists across generations, so it keeps improving
/// over a session.
#[derive(Debug)]
pub struct NgramAdaptiveDrafter {
    config: NgramAdaptiveConfig,
    /// Context → successors; tri-gram keys `(t-2, t-1)`, bigram keys `(NONE, t-1)`.
    rows: HashMap<u64, Row>,
    /// Counter of row updates (see [`Row::stamp`]).
    updates: u64,
    /// The context already counted (the last `propose`'s); a new context counts only
    /// what follows the prefix it shares with this one.
    seen: Vec<u32>,
    /// The token before the last proposal's root, while that proposal awaits its
    /// verification (a root's tri-gram context is not in the tree).
    root_context: Option<(u32, u32)>,
    /// Scratch: the draft being grown, a verified row's top-k.
    frontier: Frontier,
    top: Vec<(f32, u32)>,
}

impl NgramAdaptiveDrafter {
    /// Panics on an invalid config; call [`NgramAdaptiveConfig::validate`] on user input.
    pub fn new(config: NgramAdaptiveConfig) -> NgramAdaptiveDrafter {
        if let Err(e) = config.validate() {
            panic!("NgramAdaptiveDrafter::new: {e}");
        }
        NgramAdaptiveDrafter {
            config,
            rows: HashMap::new(),
            updates: 0,
            seen: Vec::new(),
            root_context: None,
            frontier: Frontier::default(),
            top: Vec::with_capacity(MAX_SUCCESSORS + 1),
        }
    }

    /// Contexts (tri-gram and bigram rows) in the table.
    pub fn contexts(&self) -> usize {
        self.rows.len()
    }

    /// The successors of `(first, second)` as `(probability, token)`, most likely
    /// first; `first = None` reads the bigram row of `second`.
    pub fn successors(&self, first: Option<u32>, second: u32) -> Vec<(f32, u32)> {
        let key = first.map_or_else(|| bigram_key(second), |f| trigram_key(f, second));
        let mut out = Vec::new();
        if let Some(row) = self.rows.get(&key) {
            row.ranked(&mut out);
        }
        out
    }

    /// Counts the tokens of `context` not counted yet: those after the prefix it
    /// shares with the context of the last call (all of it after a new prompt).
    pub fn update_context(&mut self, context: &[u32]) {
        let shared = if context.starts_with(&self.seen) {
            self.seen.len()
        } else {
            // Another text (a new prompt, a shorter history): recount from where the
            // two differ; what was learnt from the old text stays in the table.
            self.seen
                .iter()
                .zip(context)
                .take_while(|(a, b)| a == b)
                .count()
        };
        self.seen.truncate(shared);
        let weight = self.config.context_weight;
        for i in shared.max(1)..context.len() {
            let token = context[i];
            self.add(bigram_key(context[i - 1]), &[(weight, token)], weight);
            if i >= 2 {
                let key = trigram_key(context[i - 2], context[i - 1]);
                self.add(key, &[(weight, token)], weight);
            }
        }
        self.seen.extend_from_slice(&context[shared..]);
    }

    /// Records the target's distribution after `(first, second)` (`first = None`: only
    /// the bigram row) from its logits row: the top-k tokens with their probabilities.
    pub fn update_logits(&mut self, first: Option<u32>, second: u32, logits: &[f32]) {
        if !softmax_top_k(logits, self.config.successors, &mut self.top) {
            return;
        }
        let top = std::mem::take(&mut self.top);
        if let Some(f) = first {
            self.add(trigram_key(f, second), &top, 1.0);
        }
        self.add(bigram_key(second), &top, 1.0);
        self.top = top;
    }

    /// One update of `key`'s row: decay, then add `candidates` and `mass` to the total.
    fn add(&mut self, key: u64, candidates: &[(f32, u32)], mass: f32) {
        if !self.rows.contains_key(&key) && self.rows.len() >= self.config.max_contexts {
            self.prune();
        }
        self.updates += 1;
        let (decay, capacity, stamp) = (self.config.decay, self.config.successors, self.updates);
        let row = self.rows.entry(key).or_insert_with(Row::new);
        row.decay(decay);
        for &(weight, token) in candidates {
            row.add(token, weight, capacity);
        }
        row.total += mass;
        row.stamp = stamp;
    }

    /// Drops the least recently updated quarter of the rows (stamps are unique, so
    /// which rows go does not depend on the map's order). The survivors move to a
    /// fresh map of exactly `max_contexts` capacity: erasing in place leaves
    /// tombstones, and the next inserts could then double the table instead of
    /// reusing the room.
    fn prune(&mut self) {
        let mut stamps: Vec<u64> = self.rows.values().map(|r| r.stamp).collect();
        let cut = stamps.len() / 4;
        let (_, &mut threshold, _) = stamps.select_nth_unstable(cut);
        let mut kept = HashMap::with_capacity(self.config.max_contexts);
        kept.extend(self.rows.drain().filter(|(_, r)| r.stamp >= threshold));
        self.rows = kept;
    }

    /// The successor row for a node whose last two tokens are `(first, second)`: the
    /// tri-gram row when it is known, else the bigram row of `second`.
    fn row(&self, first: Option<u32>, second: u32) -> Option<&Row> {
        first
            .and_then(|f| self.rows.get(&trigram_key(f, second)))
            .or_else(|| self.rows.get(&bigram_key(second)))
    }
}

/// The draft being grown: nodes waiting to be added, best first.
#[derive(Debug, Default)]
struct Frontier {
    heap: BinaryHeap<Candidate>,
    /// Scratch for a row's ranked successors.
    ranked: Vec<(f32, u32)>,
    /// Candidates found so far (their tie-break order).
    found: usize,
}

impl Frontier {
    fn clear(&mut self) {
        self.heap.clear();
        self.found = 0;
    }

    /// Adds the successors of `node` (last two tokens `first`, `second`, path
    /// probability `prob`) whose path probability clears the drafter's floor.
    fn push_children(
        &mut self,
        drafter: &NgramAdaptiveDrafter,
        node: usize,
        first: Option<u32>,
        second: u32,
        prob: f32,
    ) {
        match drafter.row(first, second) {
            Some(row) => row.ranked(&mut self.ranked),
            None => self.ranked.clear(),
        }
        for &(p, token) in &self.ranked {
            let path = prob * p;
            // Ranked rows: every later successor is at most as likely.
            if path < drafter.config.min_path_prob || path <= 0.0 {
                break;
            }
            self.found += 1;
            self.heap.push(Candidate {
                prob: path,
                order: self.found,
                parent: node,
                token,
            });
        }
    }
}

impl Drafter for NgramAdaptiveDrafter {
    fn name(&self) -> &'static str {
        "ngram-adaptive"
    }

    fn propose(&mut self, context: &[u32], tree: &mut TokenTree, budget: usize, max_depth: usize) {
        self.update_context(context);
        let root = tree.token(0);
        let before_root = (context.len() >= 2 && context.last() == Some(&root))
            .then(|| context[context.len() - 2]);
        self.root_context = before_root.map(|b| (b, root));
        if budget == 0 || max_depth == 0 {
            return;
        }
        let mut frontier = std::mem::take(&mut self.frontier);
        frontier.clear();
        frontier.push_children(self, 0, before_root, root, 1.0);
        let mut added = 0;
        while added < budget {
            let Some(best) = frontier.heap.pop() else {
                break;
            };
            let (node, new) = tree.insert(best.parent, best.token);
            if !new {
                continue;
            }
            added += 1;
            if tree.depth(node) < max_depth {
                let parent_token = Some(tree.token(best.parent));
                frontier.push_children(self, node, parent_token, best.token, best.prob);
            }
        }
        self.frontier = frontier;
    }

    fn observe(&mut self, tree: &TokenTree, logits: &[f32], vocab: usize, _accepted: &[usize]) {
        // The root's tri-gram context is known only when this tree is the one the
        // last proposal grew (a plain step verifies a root nobody proposed from).
        let root_context = self
            .root_context
            .take()
            .filter(|&(_, root)| tree.token(0) == root);
        if vocab == 0 {
            return;
        }
        for (node, row) in logits.chunks_exact(vocab).enumerate().take(tree.len()) {
            let first = match tree.parent(node) {
                Some(parent) => Some(tree.token(parent)),
                None => root_context.map(|(before, _)| before),
            };
            self.update_logits(first, tree.token(node), row);
        }
    }

    fn wants_logits(&self) -> bool {
        true
    }

    fn memory_bytes(&self) -> usize {
        // Key, row and hashbrown's control byte per bucket, plus the counted context.
        self.rows.capacity() * (std::mem::size_of::<(u64, Row)>() + 1)
            + self.seen.capacity() * std::mem::size_of::<u32>()
    }
}

/// The `k` most likely tokens of a logits row as `(probability, id)`, most likely
/// first, ties to the lower id (rank 0 is the greedy choice). False when the row has
/// no finite logit.
fn softmax_top_k(row: &[f32], k: usize, out: &mut Vec<(f32, u32)>) -> bool {
    out.clear();
    for (i, &x) in row.iter().enumerate() {
        if !x.is_finite() || (out.len() == k && x <= out[k - 1].0) {
            continue;
        }
        // Insert after every entry >= x (earlier ids win ties).
        let at = out.partition_point(|&(v, _)| v >= x);
        if out.len() == k {
            out.pop();
        }
        out.insert(at, (x, i as u32));
    }
    let Some(&(max, _)) = out.first() else {
        return false;
    };
    let sum = softmax_denominator(row, max);
    for entry in out.iter_mut() {
        entry.0 = exp_approx(entry.0 - max) / sum;
    }
    true
}

/// `Σ exp(x - max)` over the finite logits within [`SOFTMAX_CUTOFF`] of `max` (the
/// largest finite logit). Called for every verified row (tens of thousands of logits,
/// up to 9 rows a step), so it is written to vectorise: 8 independent partial sums,
/// a branch-free `exp`, no libm call. With `f32::exp` it cost about 4x Token
/// Recycling's whole update.
fn softmax_denominator(row: &[f32], max: f32) -> f32 {
    let floor = max - SOFTMAX_CUTOFF;
    // NaN and infinities fail one of the comparisons.
    let term = |x: f32| {
        let e = exp_approx((x - max).max(-SOFTMAX_CUTOFF));
        if x > floor && x <= max {
            e
        } else {
            0.0
        }
    };
    let mut partial = [0.0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| term(x)).sum();
    for chunk in chunks {
        for (acc, &x) in partial.iter_mut().zip(chunk) {
            *acc += term(x);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `e^x` for `x` in `[-SOFTMAX_CUTOFF, 0]`, within 1e-5 relative: `2^(x log2 e)` split
/// into an integer power of two (built in the exponent bits) and `2^f`, `f` in
/// `[-1/2, 1/2]`, by its degree-5 Taylor polynomial. Only float adds and multiplies
/// and integer bit operations, so that the loop over a row vectorises.
fn exp_approx(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // t = x log2 e shifted to be positive (>= 0.9 for x >= -16).
    const SHIFT: f32 = 24.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let rounded = t + ROUND;
    let whole = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let f = t - (rounded - ROUND);
    let ln2 = std::f32::consts::LN_2;
    let poly = 1.0
        + f * (ln2
            + f * (ln2 * ln2 / 2.0
                + f * (ln2 * ln2 * ln2 / 6.0
                    + f * (ln2 * ln2 * ln2 * ln2 / 24.0 + f * (ln2.powi(5) / 120.0)))));
    // 2^(whole - 24): biased exponent whole - 24 + 127 >= 103, a normal number.
    let scale = f32::from_bits(whole.wrapping_add(127 - SHIFT as u32) << 23);
    poly * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drafter() -> NgramAdaptiveDrafter {
        NgramAdaptiveDrafter::new(NgramAdaptiveConfig::default())
    }

    fn propose(
        d: &mut NgramAdaptiveDrafter,
        ctx: &[u32],
        budget: usize,
        depth: usize,
    ) -> TokenTree {
        let mut t = TokenTree::new(*ctx.last().unwrap());
        d.propose(ctx, &mut t, budget, depth);
        t
    }

    /// A logits row of `vocab` where `ranked` tokens lead by wide margins.
    fn row(vocab: usize, ranked: &[u32]) -> Vec<f32> {
        let mut r = vec![0.0; vocab];
        for (i, &t) in ranked.iter().enumerate() {
            r[t as usize] = 20.0 - 4.0 * i as f32;
        }
        r
    }

    #[test]
    fn softmax_top_k_gives_probabilities_by_rank() {
        let mut out = Vec::new();
        assert!(softmax_top_k(&[0.0, 2.0, 2.0, f32::NAN, 1.0], 2, &mut out));
        let ids: Vec<u32> = out.iter().map(|e| e.1).collect();
        assert_eq!(ids, vec![1, 2]);
        let z = 2.0 * 2f32.exp() + 1f32.exp() + 1.0;
        assert!((out[0].0 - 2f32.exp() / z).abs() < 1e-4);
        assert_eq!(out[0].0, out[1].0);
        assert!(!softmax_top_k(&[f32::NEG_INFINITY, f32::NAN], 2, &mut out));
        // A long row with infinities, far-off logits and a remainder after the
        // 8-wide chunks.
        let row: Vec<f32> = (0..1003)
            .map(|i| match i {
                5 => f32::INFINITY,
                6 => f32::NEG_INFINITY,
                _ => ((i * 37) % 101) as f32 * 0.3 - 20.0,
            })
            .collect();
        assert!(softmax_top_k(&row, 3, &mut out));
        // The largest finite logit is 100 * 0.3 - 20 = 10.
        let max_logit = 10.0f64;
        let sum: f64 = row
            .iter()
            .map(|&x| f64::from(x))
            .filter(|&x| x.is_finite() && x > max_logit - f64::from(SOFTMAX_CUTOFF))
            .map(|x| (x - max_logit).exp())
            .sum();
        let want = 1.0 / sum;
        let got = f64::from(out[0].0);
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    }

    #[test]
    fn exp_approx_is_close_to_exp() {
        for i in 0..=1600 {
            let x = -(i as f32) / 100.0;
            let (got, want) = (exp_approx(x), x.exp());
            assert!((got - want).abs() <= 1e-5 * want, "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn drafts_what_followed_a_trigram() {
        let mut d = drafter();
        // "2 3" was followed by 4 5 6; the context ends with 2 3 again.
        let ctx = [1, 2, 3, 4, 5, 6, 9, 8, 2, 3];
        let t = propose(&mut d, &ctx, 8, 8);
        assert_eq!(&t.tokens()[..3], &[3, 4, 5]);
        assert_eq!(t.path_to(2), vec![0, 1, 2]);
        // The tri-gram (2, 3) beats the bigram row of 3 when both are known.
        let ctx = [7, 3, 1, 2, 3, 4, 7, 3, 1, 7, 3, 1, 2, 3];
        let t = propose(&mut d, &ctx, 1, 8);
        assert_eq!(t.tokens(), &[3, 4]);
        // An unseen tri-gram falls back to the bigram row: "9 3" never occurred, but
        // 3 was followed by 1 twice and by 4 once.
        let ctx = [7, 3, 1, 2, 3, 4, 7, 3, 1, 7, 3, 1, 2, 3, 9, 3];
        let mut d = drafter();
        let t = propose(&mut d, &ctx, 1, 8);
        assert_eq!(t.tokens(), &[3, 1]);
        // Nothing known: nothing drafted.
        let mut d = drafter();
        assert_eq!(propose(&mut d, &[5, 6], 8, 8).len(), 1);
        assert_eq!(propose(&mut drafter(), &[5], 8, 8).len(), 1);
        // The table outlives a generation: 5 was followed by 6 in the last text.
        assert_eq!(propose(&mut d, &[5], 8, 8).tokens(), &[5, 6]);
    }

    #[test]
    fn counts_each_context_token_once() {
        let mut d = drafter();
        let ctx = [1, 2, 3, 1, 2];
        propose(&mut d, &ctx[..3], 0, 0);
        propose(&mut d, &ctx, 0, 0);
        let once = d.successors(Some(1), 2);
        // Called again with the same and a longer context: nothing counted twice.
        propose(&mut d, &ctx, 0, 0);
        assert_eq!(d.successors(Some(1), 2), once);
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].1, 3);
        // A different (shorter) text is counted from where it differs.
        propose(&mut d, &[1, 2, 7], 0, 0);
        let after = d.successors(Some(1), 2);
        assert_eq!(after.len(), 2);
        assert!(after.iter().any(|&(_, t)| t == 7));
    }

    #[test]
    fn learns_from_observed_logits() {
        let mut d = drafter();
        let vocab = 32;
        let ctx = [10, 11];
        // Nothing known about 11 yet; the verification of the root says 12, then 13.
        let mut t = propose(&mut d, &ctx, 4, 4);
        assert_eq!(t.len(), 1);
        d.observe(&t, &row(vocab, &[12, 20]), vocab, &[0]);
        assert_eq!(d.successors(Some(10), 11)[0].1, 12);
        assert_eq!(d.successors(None, 11)[0].1, 12);
        // Now the root's successor is drafted, its row observed in turn.
        t = propose(&mut d, &ctx, 4, 4);
        assert_eq!(t.tokens(), &[11, 12]);
        let rows = [row(vocab, &[12]), row(vocab, &[13, 21])].concat();
        d.observe(&t, &rows, vocab, &[0, 1]);
        assert_eq!(d.successors(Some(11), 12)[0].1, 13);
        t = propose(&mut d, &ctx, 4, 4);
        assert_eq!(&t.tokens()[..3], &[11, 12, 13]);
        // A plain step (no proposal for this root) learns the bigram row only.
        let plain = TokenTree::new(14);
        d.observe(&plain, &row(vocab, &[15]), vocab, &[0]);
        assert_eq!(d.successors(None, 14)[0].1, 15);
        assert!(d.successors(Some(11), 14).is_empty());
        // Evidence decays: a changed distribution takes over the row.
        for _ in 0..30 {
            let t = propose(&mut d, &ctx, 0, 0);
            d.observe(&t, &row(vocab, &[22]), vocab, &[0]);
        }
        assert_eq!(d.successors(Some(10), 11)[0].1, 22);
    }

    #[test]
    fn respects_budget_depth_and_probability_floor() {
        let mut d = drafter();
        // A long repeated sequence: every tri-gram has one sure successor.
        let cycle: Vec<u32> = (0..10).collect();
        let ctx: Vec<u32> = cycle.iter().cycle().take(45).copied().collect();
        let t = propose(&mut d, &ctx, 5, 16);
        assert_eq!(t.n_draft(), 5);
        assert_eq!(t.tokens(), &[4, 5, 6, 7, 8, 9]);
        let t = propose(&mut d, &ctx, 16, 3);
        assert_eq!(t.max_depth(), 3);
        assert!(t.n_draft() <= 16);
        let t = propose(&mut d, &ctx, 0, 16);
        assert_eq!(t.len(), 1);
        // A floor of 1 drafts nothing (row probabilities stay below 1).
        let mut strict = NgramAdaptiveDrafter::new(NgramAdaptiveConfig {
            min_path_prob: 1.0,
            ..NgramAdaptiveConfig::default()
        });
        assert_eq!(propose(&mut strict, &ctx, 8, 8).len(), 1);
        // Branches: the root's two successors both drafted, best first.
        let mut d = drafter();
        let vocab = 8;
        let t = propose(&mut d, &[1, 2], 4, 4);
        let mut r = vec![0.0; vocab];
        r[3] = 5.0;
        r[4] = 5.0 - 0.3;
        d.observe(&t, &r, vocab, &[0]);
        let t = propose(&mut d, &[1, 2], 4, 4);
        assert_eq!(t.tokens(), &[2, 3, 4]);
        assert_eq!((t.parent(1), t.parent(2)), (Some(0), Some(0)));
    }

    #[test]
    fn memory_stays_bounded_under_a_long_random_stream() {
        let config = NgramAdaptiveConfig {
            max_contexts: 1000,
            ..NgramAdaptiveConfig::default()
        };
        let mut d = NgramAdaptiveDrafter::new(config);
        let vocab = 64;
        // xorshift: a reproducible stream over a 5000-token vocabulary.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 5000) as u32
        };
        let mut ctx = vec![next(), next()];
        let mut peak = 0;
        for step in 0..5000 {
            ctx.push(next());
            let t = propose(&mut d, &ctx, 4, 4);
            if step % 3 == 0 {
                let rows: Vec<f32> = (0..t.len())
                    .flat_map(|i| row(vocab, &[(i as u32 * 7 + step) % 64, 1]))
                    .collect();
                d.observe(&t, &rows, vocab, &[0]);
            }
            assert!(d.contexts() <= 1000);
            peak = peak.max(d.memory_bytes());
        }
        // The table's part of the memory stays within its cap (the counted context
        // is the caller's history, 4 bytes a token).
        let table = peak - d.seen.capacity() * 4;
        assert!(table < 2048 * 100, "{table} bytes");
        // And the drafts it gives are the same every time for the same input.
        let mut a = NgramAdaptiveDrafter::new(NgramAdaptiveConfig::default());
        let mut b = NgramAdaptiveDrafter::new(NgramAdaptiveConfig::default());
        let short: Vec<u32> = ctx[..2000].iter().map(|t| t % 40).collect();
        assert_eq!(
            propose(&mut a, &short, 8, 8).tokens(),
            propose(&mut b, &short, 8, 8).tokens()
        );
        assert!(NgramAdaptiveDrafter::new(NgramAdaptiveConfig::default()).memory_bytes() < 3 << 20);
    }

    #[test]
    fn validates_settings() {
        assert!(NgramAdaptiveConfig::default().validate().is_ok());
        let bad = [
            NgramAdaptiveConfig {
                successors: 0,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                successors: MAX_SUCCESSORS + 1,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                max_contexts: 0,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                decay: 1.5,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                decay: f32::NAN,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                context_weight: f32::INFINITY,
                ..NgramAdaptiveConfig::default()
            },
            NgramAdaptiveConfig {
                min_path_prob: -0.1,
                ..NgramAdaptiveConfig::default()
            },
        ];
        for config in bad {
            let e = config.validate().unwrap_err();
            assert!(e.starts_with("ngram-adaptive") && !e.contains('\n'), "{e}");
        }
    }
}
