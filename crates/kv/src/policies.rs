//! The named policies. Scores live per lane, indexed by logical slot; `select` gathers
//! them for the lane's entries and keeps the best.

use crate::{KvPolicy, KvShape, LaneView, LayerAttention};

/// Keeps everything: the exact reference (the engine never asks it to select).
pub struct Full;

impl KvPolicy for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn reset(&mut self, _shape: &KvShape) {}
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        // Asked anyway: keep the most recent `budget`.
        keep.extend(lane.len() - budget..lane.len());
    }
}

/// StreamingLLM: the first `n_sink` tokens (attention sinks) and the most recent ones.
/// Kept tokens keep their original RoPE positions.
pub struct Window {
    n_sink: usize,
}

impl Window {
    pub fn new(n_sink: usize) -> Window {
        Window { n_sink }
    }
}

impl KvPolicy for Window {
    fn name(&self) -> &'static str {
        "window"
    }
    fn reset(&mut self, _shape: &KvShape) {}
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let sinks = self.n_sink.min(budget);
        keep.extend(0..sinks);
        keep.extend(lane.len() - (budget - sinks)..lane.len());
    }
}

/// Per-lane scores indexed by logical slot, grown as slots appear.
#[derive(Default)]
struct SlotScores {
    lanes: Vec<Vec<f32>>,
}

impl SlotScores {
    fn reset(&mut self, n_lanes: usize) {
        self.lanes = vec![Vec::new(); n_lanes];
    }
    fn lane_mut(&mut self, lane: usize, n_slots: usize) -> &mut Vec<f32> {
        let s = &mut self.lanes[lane];
        if s.len() < n_slots {
            s.resize(n_slots, 0.0);
        }
        s
    }
    fn get(&self, lane: usize, slot: u32) -> f32 {
        self.lanes[lane].get(slot as usize).copied().unwrap_or(0.0)
    }
    fn retain(&mut self, keep: &[usize]) {
        for s in &mut self.lanes {
            retain_indexed(s, keep);
        }
    }
}

/// `v := [v[keep[0]], v[keep[1]], ...]` (missing entries read 0); `keep` increasing.
fn retain_indexed(v: &mut Vec<f32>, keep: &[usize]) {
    for (dst, &src) in keep.iter().enumerate() {
        // src >= dst, so v[src] has not been overwritten yet.
        let x = v.get(src).copied().unwrap_or(0.0);
        if dst < v.len() {
            v[dst] = x;
        }
    }
    v.truncate(keep.len());
}

/// Pushes onto `keep` the `budget` entries of a `len`-entry lane to keep: the last
/// `recent` unconditionally, the rest by highest `score(entry)` (ties to the more
/// recent), in increasing order. `order` is scratch.
fn keep_top(
    len: usize,
    budget: usize,
    recent: usize,
    score: impl Fn(usize) -> f32,
    order: &mut Vec<usize>,
    keep: &mut Vec<usize>,
) {
    let recent = recent.min(budget);
    let older = len - recent;
    let k = budget - recent;
    order.clear();
    order.extend(0..older);
    if k < older {
        let better = |a: &usize, b: &usize| score(*b).total_cmp(&score(*a)).then_with(|| b.cmp(a));
        if k > 0 {
            order.select_nth_unstable_by(k - 1, better);
        }
        order.truncate(k);
        order.sort_unstable();
    }
    keep.extend_from_slice(order);
    keep.extend(older..len);
}

/// Attention accumulated per lane and slot over every query so far, summed over the
/// KV head's query heads, optionally multiplied by a forgetting factor before each
/// query (H2O and A2SF).
#[derive(Default)]
struct AccumulatedAttention {
    group: usize,
    n_head_kv: usize,
    acc: SlotScores,
}

impl AccumulatedAttention {
    fn reset(&mut self, shape: &KvShape) {
        self.group = shape.group();
        self.n_head_kv = shape.n_head_kv;
        self.acc.reset(shape.n_lanes());
    }
    fn observe(&mut self, a: &LayerAttention<'_>, forget: Option<f32>) {
        for g in 0..self.n_head_kv {
            let acc = self.acc.lane_mut(a.layer * self.n_head_kv + g, a.n_slots);
            for t in 0..a.n_tokens {
                if let Some(f) = forget {
                    acc.iter_mut().for_each(|s| *s *= f);
                }
                for h in g * self.group..(g + 1) * self.group {
                    for (s, &w) in acc.iter_mut().zip(a.row(t, h)) {
                        *s += w;
                    }
                }
            }
        }
    }
    /// The lane's score of entry `e`.
    fn score(&self, lane: &LaneView<'_>, e: usize) -> f32 {
        self.acc
            .get(lane.layer * self.n_head_kv + lane.kv_head, lane.slots[e])
    }
    fn importance(&self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        out.extend((0..lane.len()).map(|e| self.score(lane, e)));
    }
}

/// H2O (Heavy-Hitter Oracle): each lane keeps the tokens with the highest attention
/// accumulated over every query so far (summed over the KV head's query heads), plus
/// a window of recent tokens (`recent_ratio` of the budget; the paper splits evenly).
pub struct H2o {
    recent_ratio: f64,
    scores: AccumulatedAttention,
    order: Vec<usize>,
}

impl H2o {
    pub fn new(recent_ratio: f64) -> H2o {
        H2o {
            recent_ratio,
            scores: AccumulatedAttention::default(),
            order: Vec::new(),
        }
    }
}

impl KvPolicy for H2o {
    fn name(&self) -> &'static str {
        "h2o"
    }
    fn reset(&mut self, shape: &KvShape) {
        self.scores.reset(shape);
    }
    fn wants_attention(&self) -> bool {
        true
    }
    fn observe(&mut self, a: &LayerAttention<'_>) {
        self.scores.observe(a, None);
    }
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let recent = (budget as f64 * self.recent_ratio).round() as usize;
        let scores = &self.scores;
        let score = |e: usize| scores.score(lane, e);
        keep_top(lane.len(), budget, recent, score, &mut self.order, keep);
    }
    fn retain_slots(&mut self, keep: &[usize]) {
        self.scores.acc.retain(keep);
    }
    fn has_importance(&self) -> bool {
        true
    }
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        self.scores.importance(lane, out);
    }
}

/// TOVA (Token Omission Via Attention): keeps the tokens with the highest attention
/// from the newest query, averaged over all the layer's heads; every lane of a layer
/// keeps the same set.
#[derive(Default)]
pub struct Tova {
    /// Per layer, indexed by slot.
    last: SlotScores,
    order: Vec<usize>,
}

impl KvPolicy for Tova {
    fn name(&self) -> &'static str {
        "tova"
    }
    fn reset(&mut self, shape: &KvShape) {
        self.last.reset(shape.n_layer);
    }
    fn wants_attention(&self) -> bool {
        true
    }
    fn observe(&mut self, a: &LayerAttention<'_>) {
        let s = self.last.lane_mut(a.layer, a.n_slots);
        s.fill(0.0);
        let t = a.n_tokens - 1;
        let inv = 1.0 / a.n_head as f32;
        for h in 0..a.n_head {
            for (x, &w) in s.iter_mut().zip(a.row(t, h)) {
                *x += w * inv;
            }
        }
    }
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let last = &self.last;
        let score = |e: usize| last.get(lane.layer, lane.slots[e]);
        keep_top(lane.len(), budget, 0, score, &mut self.order, keep);
    }
    fn retain_slots(&mut self, keep: &[usize]) {
        self.last.retain(keep);
    }
    fn has_importance(&self) -> bool {
        true
    }
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        out.extend(lane.slots.iter().map(|&s| self.last.get(lane.layer, s)));
    }
}

/// A2SF: like H2O's accumulated attention, but before each new query the accumulated
/// scores are multiplied by a forgetting factor, so old tokens (which have had more
/// queries to collect attention from) do not win by seniority alone.
pub struct A2sf {
    forget: f32,
    scores: AccumulatedAttention,
    order: Vec<usize>,
}

impl A2sf {
    pub fn new(forget: f32) -> A2sf {
        A2sf {
            forget,
            scores: AccumulatedAttention::default(),
            order: Vec::new(),
        }
    }
}

impl KvPolicy for A2sf {
    fn name(&self) -> &'static str {
        "a2sf"
    }
    fn reset(&mut self, shape: &KvShape) {
        self.scores.reset(shape);
    }
    fn wants_attention(&self) -> bool {
        true
    }
    fn observe(&mut self, a: &LayerAttention<'_>) {
        self.scores.observe(a, Some(self.forget));
    }
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let scores = &self.scores;
        let score = |e: usize| scores.score(lane, e);
        keep_top(lane.len(), budget, 0, score, &mut self.order, keep);
    }
    fn retain_slots(&mut self, keep: &[usize]) {
        self.scores.acc.retain(keep);
    }
    fn has_importance(&self) -> bool {
        true
    }
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        self.scores.importance(lane, out);
    }
}

/// K-norm: keys with a low L2 norm tend to receive high attention, so each lane keeps
/// the keys with the lowest norms (no attention weights needed).
pub struct KNorm;

impl KvPolicy for KNorm {
    fn name(&self) -> &'static str {
        "knorm"
    }
    fn reset(&mut self, _shape: &KvShape) {}
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let mut scores = Vec::with_capacity(lane.len());
        self.importance(lane, &mut scores);
        let mut order = Vec::with_capacity(lane.len());
        keep_top(lane.len(), budget, 0, |e| scores[e], &mut order, keep);
    }
    fn wants_keys(&self) -> bool {
        true
    }
    fn has_importance(&self) -> bool {
        true
    }
    /// Minus the squared L2 norm of each key.
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        let hd = lane.head_dim;
        out.extend(
            lane.keys
                .chunks_exact(hd)
                .map(|k| -k.iter().map(|x| x * x).sum::<f32>()),
        );
    }
}

/// SnapKV: each lane keeps the tokens most attended by an observation window (the last
/// `window` queries; at the end of a prompt, its last tokens), scores summed over the
/// window and the KV head's query heads, then max-pooled over neighbouring tokens so
/// kept tokens bring their context; the window's own tokens are always kept.
///
/// The paper compresses once, after prefill. Here eviction runs after every forward
/// call, so in chunked prefill each chunk's last queries act as the window, and
/// during decoding the window slides over the last `window` generated queries.
pub struct SnapKv {
    window: usize,
    kernel: usize,
    group: usize,
    n_head_kv: usize,
    /// Per lane: the last `window` queries' weights (summed over the group), each a
    /// row indexed by slot, oldest first.
    rows: Vec<std::collections::VecDeque<Vec<f32>>>,
    order: Vec<usize>,
    pooled: Vec<f32>,
    raw: Vec<f32>,
}

impl SnapKv {
    pub fn new(window: usize, kernel: usize) -> SnapKv {
        SnapKv {
            window,
            kernel,
            group: 1,
            n_head_kv: 1,
            rows: Vec::new(),
            order: Vec::new(),
            pooled: Vec::new(),
            raw: Vec::new(),
        }
    }
}

impl KvPolicy for SnapKv {
    fn name(&self) -> &'static str {
        "snapkv"
    }
    fn reset(&mut self, shape: &KvShape) {
        self.group = shape.group();
        self.n_head_kv = shape.n_head_kv;
        self.rows = vec![Default::default(); shape.n_lanes()];
    }
    fn wants_attention(&self) -> bool {
        true
    }
    fn observe(&mut self, a: &LayerAttention<'_>) {
        let first = a.n_tokens.saturating_sub(self.window);
        for g in 0..self.n_head_kv {
            let rows = &mut self.rows[a.layer * self.n_head_kv + g];
            for t in first..a.n_tokens {
                let mut row = if rows.len() >= self.window {
                    rows.pop_front().unwrap_or_default()
                } else {
                    Vec::new()
                };
                row.clear();
                row.resize(a.n_slots, 0.0);
                for h in g * self.group..(g + 1) * self.group {
                    for (s, &w) in row.iter_mut().zip(a.row(t, h)) {
                        *s += w;
                    }
                }
                rows.push_back(row);
            }
        }
    }
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        self.pool(lane);
        let pooled = &self.pooled;
        let recent = self.window.min(budget);
        keep_top(
            lane.len(),
            budget,
            recent,
            |e| pooled[e],
            &mut self.order,
            keep,
        );
    }
    fn retain_slots(&mut self, keep: &[usize]) {
        for rows in &mut self.rows {
            for row in rows.iter_mut() {
                retain_indexed(row, keep);
            }
        }
    }
    fn has_importance(&self) -> bool {
        true
    }
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        self.pool(lane);
        out.extend_from_slice(&self.pooled);
    }
}

impl SnapKv {
    /// `self.pooled[e]`: the window's attention to entry `e`, max-pooled over
    /// neighbouring entries.
    fn pool(&mut self, lane: &LaneView<'_>) {
        let rows = &self.rows[lane.layer * self.n_head_kv + lane.kv_head];
        let len = lane.len();
        self.raw.clear();
        self.raw.extend(lane.slots.iter().map(|&s| {
            rows.iter()
                .map(|r| r.get(s as usize).copied().unwrap_or(0.0))
                .sum::<f32>()
        }));
        // Max-pool over neighbouring entries: [len] -> [len].
        let r = self.kernel / 2;
        self.pooled.clear();
        self.pooled.extend((0..len).map(|e| {
            self.raw[e.saturating_sub(r)..(e + r + 1).min(len)]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        }));
    }
}

/// Keyformer: like H2O, but each query's contribution is a Gumbel-softmax of its
/// attention logits, `softmax((logit + g) / tau)` with `g ~ Gumbel(0, 1)`, which
/// regularises the scores of tokens that would otherwise never be chosen; scores
/// accumulate over queries, and a recent window is always kept. The attention logits
/// are recovered from the softmax weights as `ln w` (the per-row constant cancels in
/// the softmax). Seeded: the same run evicts the same tokens.
pub struct Keyformer {
    recent_ratio: f64,
    tau: f32,
    seed: u64,
    rng: u64,
    group: usize,
    n_head_kv: usize,
    acc: SlotScores,
    noisy: Vec<f32>,
    order: Vec<usize>,
}

impl Keyformer {
    pub fn new(recent_ratio: f64, tau: f32, seed: u64) -> Keyformer {
        Keyformer {
            recent_ratio,
            tau,
            seed,
            rng: seed | 1,
            group: 1,
            n_head_kv: 1,
            acc: SlotScores::default(),
            noisy: Vec::new(),
            order: Vec::new(),
        }
    }

    /// A Gumbel(0, 1) draw (xorshift64*).
    fn gumbel(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        let u = (bits as f32 + 0.5) / (1u64 << 24) as f32; // (0, 1)
        -(-u.ln()).ln()
    }
}

impl KvPolicy for Keyformer {
    fn name(&self) -> &'static str {
        "keyformer"
    }
    fn reset(&mut self, shape: &KvShape) {
        self.group = shape.group();
        self.n_head_kv = shape.n_head_kv;
        self.acc.reset(shape.n_lanes());
        self.rng = self.seed | 1;
    }
    fn wants_attention(&self) -> bool {
        true
    }
    fn observe(&mut self, a: &LayerAttention<'_>) {
        let mut noisy = std::mem::take(&mut self.noisy);
        for g in 0..self.n_head_kv {
            for t in 0..a.n_tokens {
                for h in g * self.group..(g + 1) * self.group {
                    // noisy = softmax((ln w + gumbel) / tau) over the visible slots.
                    noisy.clear();
                    for &w in a.row(t, h) {
                        let x = if w > 0.0 {
                            (w.ln() + self.gumbel()) / self.tau
                        } else {
                            f32::NEG_INFINITY
                        };
                        noisy.push(x);
                    }
                    let max = noisy.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for x in noisy.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let acc = self.acc.lane_mut(a.layer * self.n_head_kv + g, a.n_slots);
                    for (s, &x) in acc.iter_mut().zip(noisy.iter()) {
                        *s += x / sum;
                    }
                }
            }
        }
        self.noisy = noisy;
    }
    fn select(&mut self, lane: &LaneView<'_>, budget: usize, keep: &mut Vec<usize>) {
        let id = lane.layer * self.n_head_kv + lane.kv_head;
        let recent = (budget as f64 * self.recent_ratio).round() as usize;
        let acc = &self.acc;
        let score = |e: usize| acc.get(id, lane.slots[e]);
        keep_top(lane.len(), budget, recent, score, &mut self.order, keep);
    }
    fn retain_slots(&mut self, keep: &[usize]) {
        self.acc.retain(keep);
    }
    fn has_importance(&self) -> bool {
        true
    }
    fn importance(&mut self, lane: &LaneView<'_>, out: &mut Vec<f32>) {
        let id = lane.layer * self.n_head_kv + lane.kv_head;
        out.extend(lane.slots.iter().map(|&s| self.acc.get(id, s)));
    }
}
