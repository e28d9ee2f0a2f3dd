//! The candidates buffer: the `(id, logit)` pairs still in play while the
//! processor chain narrows a logits row down to a distribution.
//!
//! Why a separate buffer rather than working on the logits slice: truncating
//! samplers (top-k, top-p, min-p, typical, mirostat...) want to sort and drop
//! entries, which needs each logit to carry its id. The buffer is reused
//! across tokens, so after the first call no token allocates.
//!
//! The buffer tracks two facts so processors can skip work:
//! * `identity`: entry `i` has id `i` and the row is complete (true right after
//!   [`Candidates::fill`]), so a lookup by id is O(1);
//! * `prefix`: the first `prefix` entries are the best ones, in canonical order
//!   (larger logit first, ties by lower id), and every later entry is worse.
//!   `prefix == len` means fully sorted, so a second sorting processor costs
//!   nothing, and a scan that only needs the top few hundred entries never
//!   sorts the whole vocabulary ([`Candidates::scan_sorted`]).
//!
//! Nothing here sorts a full vocabulary on the common paths: orderings use
//! one integer key per candidate (`rank_key`), a small top-k is a single
//! pass with a bounded heap, and mass cuts (top-p, typical) histogram the
//! probability by score and sort only the bucket where the cut falls.

use std::collections::BinaryHeap;

use crate::fastmath;
use crate::stats::{sanitize, Normalizer};

/// One token still in play.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Token id (index in the original logits row).
    pub id: u32,
    /// Current (processed) logit; never NaN after [`Candidates::fill`].
    pub logit: f32,
}

/// The canonical order as one integer: ascending keys = larger logit first,
/// ties by lower id (NaN counts as `-inf`, `-0.0` as `0.0`, as in
/// [`crate::stats`]). Integer comparisons make selections and sorts several
/// times faster than a float comparator with a tie-break.
#[inline]
pub(crate) fn rank_key(id: u32, logit: f32) -> u64 {
    let x = if logit.is_nan() {
        f32::NEG_INFINITY
    } else if logit == 0.0 {
        0.0
    } else {
        logit
    };
    let b = x.to_bits();
    // Order-preserving map of floats onto u32 (larger float, larger u32).
    let ord = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    (u64::from(!ord) << 32) | u64::from(id)
}

/// The candidate a [`rank_key`] encodes.
#[inline]
fn from_rank_key(key: u64) -> Candidate {
    let ord = !((key >> 32) as u32);
    let b = if ord & 0x8000_0000 != 0 {
        ord & 0x7fff_ffff
    } else {
        !ord
    };
    Candidate {
        id: key as u32,
        logit: f32::from_bits(b),
    }
}

#[inline]
fn cand_key(c: &Candidate) -> u64 {
    rank_key(c.id, c.logit)
}

/// Leaves the `k` smallest of `keys` in `heap` (a max-heap, cleared first):
/// one pass in which most keys cost a single comparison with the worst one
/// kept so far.
pub(crate) fn smallest_keys(
    mut keys: impl Iterator<Item = u64>,
    k: usize,
    heap: &mut BinaryHeap<u64>,
) {
    heap.clear();
    heap.extend(keys.by_ref().take(k));
    let mut worst = heap.peek().copied().unwrap_or(u64::MAX);
    for key in keys {
        if key < worst {
            if let Some(mut top) = heap.peek_mut() {
                *top = key;
            }
            worst = heap.peek().copied().unwrap_or(u64::MAX);
        }
    }
}

/// How many entries the first round of an incremental scan sorts. llama.cpp's
/// top-p uses the same first guess: nucleus sets are usually far smaller.
const FIRST_CHUNK: usize = 256;

/// Visits `items` in ascending `key` order, sorting only as far as the visit
/// goes: selects the next chunk (256 entries, then 4x larger each round)
/// with `select_nth_unstable_by_key`, sorts just that chunk, and calls
/// `visit` on each entry until it returns `true`. `items[..done]` must
/// already be sorted and before everything after it.
///
/// Returns `(stop, sorted)`: the index at which `visit` returned `true`
/// (`None` if it never did) and how long the sorted prefix now is. A scan that
/// stops within the first few hundred entries costs O(n); the worst case is a
/// few selection passes plus a full sort.
pub(crate) fn scan_in_order<T, K: Ord>(
    items: &mut [T],
    mut done: usize,
    key: impl Fn(&T) -> K,
    mut visit: impl FnMut(usize, &T) -> bool,
) -> (Option<usize>, usize) {
    let n = items.len();
    // Entries already in place are visited without further work.
    for (i, item) in items[..done.min(n)].iter().enumerate() {
        if visit(i, item) {
            return (Some(i), done);
        }
    }
    let mut chunk = FIRST_CHUNK;
    while done < n {
        let end = done.saturating_add(chunk).min(n);
        let rest = &mut items[done..];
        if end < n {
            rest.select_nth_unstable_by_key(end - done - 1, &key);
        }
        rest[..end - done].sort_unstable_by_key(&key);
        for (i, item) in items.iter().enumerate().take(end).skip(done) {
            if visit(i, item) {
                return (Some(i), end);
            }
        }
        done = end;
        chunk = chunk.saturating_mul(4);
    }
    (None, n)
}

/// A reusable buffer of candidates; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    items: Vec<Candidate>,
    identity: bool,
    /// Length of the sorted best-first prefix (see the module docs).
    prefix: usize,
    /// Scratch for small top-k selections: rank keys of the best so far.
    heap: BinaryHeap<u64>,
    keys: Vec<u64>,
    /// Scratch for [`Candidates::cut_by_mass`]: per-candidate weight and
    /// bucket.
    weights: Vec<f32>,
    buckets: Vec<u8>,
    members: Vec<((u64, u64), f32)>,
}

impl Candidates {
    /// An empty buffer; it grows to the vocabulary size on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a full logits row (NaN becomes `-inf`), reusing the allocation.
    ///
    /// # Panics
    /// If the row has more than `u32::MAX` entries (ids are `u32`).
    pub fn fill(&mut self, logits: &[f32]) {
        assert!(
            u32::try_from(logits.len()).is_ok(),
            "Candidates::fill: vocabulary larger than u32::MAX"
        );
        self.items.clear();
        self.items
            .extend(logits.iter().enumerate().map(|(i, &x)| Candidate {
                id: i as u32,
                logit: sanitize(x),
            }));
        self.identity = true;
        self.prefix = 0;
    }

    /// Number of candidates left.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no candidate is left.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The candidates in their current order.
    pub fn as_slice(&self) -> &[Candidate] {
        &self.items
    }

    /// True when the entries are in canonical descending order.
    pub fn is_sorted(&self) -> bool {
        self.prefix >= self.items.len()
    }

    /// Largest logit (`-inf` when empty or fully masked).
    pub fn max_logit(&self) -> f32 {
        if self.prefix > 0 {
            return self.items[0].logit;
        }
        self.items
            .iter()
            .map(|c| sanitize(c.logit))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// The best candidate in canonical order (larger logit, then lower id).
    pub fn best(&self) -> Option<Candidate> {
        if self.prefix > 0 {
            return self.items.first().copied();
        }
        // Two simple passes (max, then the lowest id at the max) are much
        // faster than a keyed minimum over the whole row.
        let max = self.max_logit();
        self.items
            .iter()
            .filter(|c| c.logit == max || (c.logit.is_nan() && max == f32::NEG_INFINITY))
            .min_by_key(|c| c.id)
            .copied()
    }

    /// Sorts into canonical order (a no-op if already sorted; only the part
    /// after the sorted prefix is sorted otherwise).
    pub fn sort_desc(&mut self) {
        if !self.is_sorted() {
            self.items[self.prefix..].sort_unstable_by_key(cand_key);
            self.prefix = self.items.len();
            self.identity = false;
        }
    }

    /// Makes the first `min(k, len)` entries the best ones in canonical
    /// order, without dropping any. O(n + k log k).
    pub fn sort_top(&mut self, k: usize) {
        let k = k.min(self.items.len());
        if k <= self.prefix {
            return;
        }
        let rest = &mut self.items[self.prefix..];
        let want = k - self.prefix;
        if want < rest.len() {
            rest.select_nth_unstable_by_key(want - 1, cand_key);
        }
        rest[..want].sort_unstable_by_key(cand_key);
        self.prefix = k;
        self.identity = false;
    }

    /// Keeps the `k` best candidates, sorted. Selects before sorting, so the
    /// cost is O(n + k log k) rather than a full O(n log n) sort.
    pub fn keep_top_k(&mut self, k: usize) {
        if k == 0 {
            self.items.clear();
            self.prefix = 0;
            self.identity = false;
            return;
        }
        // A small k over an unsorted row: one pass with a bounded heap of
        // rank keys (most entries cost one integer comparison) beats a
        // selection pass that moves every entry.
        if self.prefix == 0 && k.saturating_mul(16) <= self.items.len() {
            self.keep_top_k_heap(k);
            return;
        }
        self.sort_top(k);
        self.truncate(k);
        // Everything left is the sorted prefix.
        self.prefix = self.items.len();
    }

    /// [`Candidates::keep_top_k`] for `1 <= k < len` on an unsorted buffer.
    fn keep_top_k_heap(&mut self, k: usize) {
        let heap = &mut self.heap;
        smallest_keys(self.items.iter().map(cand_key), k, heap);
        self.keys.clear();
        self.keys.extend(heap.drain());
        self.keys.sort_unstable();
        self.items.clear();
        self.items
            .extend(self.keys.iter().map(|&key| from_rank_key(key)));
        self.prefix = self.items.len();
        self.identity = false;
    }

    /// Visits the candidates best first, sorting only as far as needed, until
    /// `visit(index, candidate)` returns `true`; returns that index (`None`
    /// if it never did). Nothing is dropped; the visited part stays sorted.
    pub fn scan_sorted(&mut self, visit: impl FnMut(usize, &Candidate) -> bool) -> Option<usize> {
        let (stop, sorted) = scan_in_order(&mut self.items, self.prefix, cand_key, visit);
        if sorted > self.prefix {
            self.prefix = sorted;
            self.identity = false;
        }
        stop
    }

    /// Keeps the first `n` candidates in the current order.
    pub fn truncate(&mut self, n: usize) {
        if n < self.items.len() {
            self.items.truncate(n);
            self.identity = false;
            self.prefix = self.prefix.min(n);
        }
    }

    /// Drops the first `n` candidates (XTC removes the most likely ones).
    pub fn remove_front(&mut self, n: usize) {
        let n = n.min(self.items.len());
        if n > 0 {
            self.items.drain(..n);
            self.identity = false;
            self.prefix = self.prefix.saturating_sub(n);
        }
    }

    /// Keeps the candidates for which `keep` is true, preserving order.
    pub fn retain(&mut self, keep: impl FnMut(&Candidate) -> bool) {
        Self::retain_in(&mut self.items, &mut self.prefix, &mut self.identity, keep);
    }

    /// [`Candidates::retain`] on the fields, so `keep` may borrow the
    /// other scratch buffers.
    fn retain_in(
        items: &mut Vec<Candidate>,
        prefix: &mut usize,
        identity: &mut bool,
        mut keep: impl FnMut(&Candidate) -> bool,
    ) {
        let before = items.len();
        let mut seen = 0usize;
        let mut prefix_kept = 0usize;
        // `Vec::retain` visits each element once, in order.
        items.retain(|c| {
            let k = keep(c);
            if seen < *prefix && k {
                prefix_kept += 1;
            }
            seen += 1;
            k
        });
        if items.len() != before {
            *identity = false;
            // Survivors of a sorted prefix are still the best, still sorted.
            *prefix = prefix_kept;
        }
    }

    /// Applies `f` to every logit. The order may change, so the buffer is
    /// marked unsorted. NaN results are stored as `-inf`.
    pub fn map_logits(&mut self, mut f: impl FnMut(f32) -> f32) {
        for c in &mut self.items {
            c.logit = sanitize(f(c.logit));
        }
        self.prefix = 0;
    }

    /// Applies `f` to the logit of every candidate whose id is in `ids`
    /// (which must be sorted ascending and deduplicated; ids not present are
    /// ignored). O(|ids|) on a freshly filled row, O(n log |ids|) otherwise.
    pub fn update_ids(&mut self, ids: &[u32], mut f: impl FnMut(&mut f32)) {
        self.update_ids_indexed(ids, |_, l| f(l));
    }

    /// Like [`Candidates::update_ids`], but `f` also gets the position of the
    /// id in `ids` (to look up a per-id count or bias). NaN results are
    /// stored as `-inf`.
    pub fn update_ids_indexed(&mut self, ids: &[u32], mut f: impl FnMut(usize, &mut f32)) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must be sorted");
        if ids.is_empty() {
            return;
        }
        let mut apply = |i: usize, l: &mut f32| {
            f(i, l);
            *l = sanitize(*l);
        };
        if self.identity {
            for (i, &id) in ids.iter().enumerate() {
                if let Some(c) = self.items.get_mut(id as usize) {
                    apply(i, &mut c.logit);
                }
            }
        } else {
            for c in &mut self.items {
                if let Ok(i) = ids.binary_search(&c.id) {
                    apply(i, &mut c.logit);
                }
            }
        }
        self.prefix = 0;
    }

    /// The normaliser of the current logits through the vectorised `exp`
    /// (log-sum relative error < 4e-7, as llama.cpp's `float` softmax), and
    /// the entropy (nats) in the same pass: `H = ln S0 - S1 / S0` with
    /// `S0 = sum e^d`, `S1 = sum e^d d`, `d = logit - max`. Rows with `+inf`
    /// or no finite logit use the exact path.
    pub(crate) fn fast_normalizer(&self) -> (Normalizer, f64) {
        let max = self.max_logit();
        if !max.is_finite() {
            let norm = self.normalizer();
            let h = self.entropy_with(&norm);
            return (norm, h);
        }
        let (s0, s1) = fastmath::exp_moments(&self.items, |c| c.logit, max);
        let ln_sum = s0.ln();
        let norm = Normalizer::Finite {
            max: f64::from(max),
            ln_sum,
        };
        (norm, (ln_sum - s1 / s0).max(0.0))
    }

    /// Keeps the candidates that come first in ascending `key` order until
    /// their cumulative weight reaches `target` (exceeds it if `strict`),
    /// as a fraction of the total weight: the cut of top-p (key = logit
    /// descending) and locally typical sampling (key = distance of the
    /// surprisal from the entropy). `weight` is the unnormalised
    /// probability; `bucket` must be non-decreasing in `key` (a coarse
    /// version of it: 256 buckets).
    ///
    /// O(n): the weights and buckets are computed in two vectorisable
    /// passes, the weight is histogrammed by bucket, and only the bucket
    /// where the cumulative weight crosses the target is sorted; one more
    /// pass keeps everything before the cut. Returns false (nothing
    /// removed) if the target is never reached.
    pub(crate) fn cut_by_mass(
        &mut self,
        key: impl Fn(&Candidate) -> (u64, u64),
        bucket: impl Fn(&Candidate) -> u8,
        weight: impl Fn(&Candidate) -> f32,
        target: f64,
        strict: bool,
    ) -> bool {
        self.weights.clear();
        self.weights.extend(self.items.iter().map(&weight));
        self.buckets.clear();
        self.buckets.extend(self.items.iter().map(&bucket));
        let mut mass = [0.0f64; 256];
        for (&b, &w) in self.buckets.iter().zip(&self.weights) {
            mass[usize::from(b)] += f64::from(w);
        }
        let total: f64 = mass.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return false;
        }
        let goal = target * total;
        let reached = |x: f64| if strict { x > goal } else { x >= goal };
        let mut cum = 0.0;
        let mut cut = None;
        for (b, &m) in mass.iter().enumerate() {
            if reached(cum + m) {
                cut = Some(b as u8);
                break;
            }
            cum += m;
        }
        let Some(cut) = cut else { return false };
        // Sort the crossing bucket only; its members in order until the goal.
        let members = &mut self.members;
        members.clear();
        members.extend(
            self.items
                .iter()
                .zip(&self.buckets)
                .zip(&self.weights)
                .filter(|((_, &b), _)| b == cut)
                .map(|((c, _), &w)| (key(c), w)),
        );
        members.sort_unstable_by_key(|&(k, _)| k);
        let mut last = members.last().map(|&(k, _)| k);
        for &(k, w) in members.iter() {
            cum += f64::from(w);
            if reached(cum) {
                last = Some(k);
                break;
            }
        }
        let Some(last) = last else { return false };
        let before = self.items.len();
        let buckets = &self.buckets;
        let mut i = 0;
        Self::retain_in(&mut self.items, &mut self.prefix, &mut self.identity, |c| {
            let b = buckets[i];
            i += 1;
            b < cut || (b == cut && key(c) <= last)
        });
        self.items.len() != before
    }

    /// The normaliser (max and log-sum-exp) of the current logits.
    pub(crate) fn normalizer(&self) -> Normalizer {
        Normalizer::of(self.items.iter().map(|c| c.logit))
    }

    /// Entropy (nats) of the softmax of the current logits, given their
    /// normaliser; NaN if no distribution exists.
    pub(crate) fn entropy_with(&self, norm: &Normalizer) -> f64 {
        crate::stats::entropy_of(self.items.iter().map(|c| c.logit), norm)
    }

    /// The draw's weights: like [`Candidates::softmax_weights`] but in
    /// `f32` through a vectorised `exp` (relative error < 4e-7, see
    /// [`crate::fastmath`]), summed in `f64`. Several times faster over a
    /// full vocabulary; `+inf` and fully masked rows as the exact version.
    pub(crate) fn draw_weights(&self, out: &mut Vec<f32>) -> f64 {
        let max = self.max_logit();
        if max == f32::NEG_INFINITY {
            out.clear();
            out.resize(self.items.len(), 0.0);
            0.0
        } else if max == f32::INFINITY {
            out.clear();
            out.extend(
                self.items
                    .iter()
                    .map(|c| f32::from(u8::from(c.logit == f32::INFINITY))),
            );
            fastmath::sum_f64(out)
        } else {
            fastmath::exp_shifted_into(self.items.iter().map(|c| c.logit), max, out)
        }
    }

    /// Writes the unnormalised softmax weights `exp(logit - max)` (in `f64`)
    /// into `out`, one per candidate in the current order, and returns their
    /// sum. `+inf` logits get weight 1 and all others 0; a fully masked buffer
    /// returns 0. Probabilities are `out[i] / sum`.
    pub fn softmax_weights(&self, out: &mut Vec<f64>) -> f64 {
        out.clear();
        let norm = self.normalizer();
        match norm {
            Normalizer::Undefined => {
                out.resize(self.items.len(), 0.0);
                0.0
            }
            Normalizer::Infinite { count } => {
                out.extend(
                    self.items
                        .iter()
                        .map(|c| f64::from(u8::from(c.logit == f32::INFINITY))),
                );
                count as f64
            }
            Normalizer::Finite { max, .. } => {
                out.extend(
                    self.items
                        .iter()
                        .map(|c| (f64::from(sanitize(c.logit)) - max).exp()),
                );
                out.iter().sum()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(c: &Candidates) -> Vec<u32> {
        c.as_slice().iter().map(|c| c.id).collect()
    }

    #[test]
    fn fill_masks_nan_and_is_identity() {
        let mut c = Candidates::new();
        c.fill(&[1.0, f32::NAN, -2.0]);
        assert_eq!(c.as_slice()[1].logit, f32::NEG_INFINITY);
        assert_eq!(ids(&c), vec![0, 1, 2]);
        assert!(!c.is_sorted());
    }

    #[test]
    fn keep_top_k_orders_ties_by_id() {
        let mut c = Candidates::new();
        c.fill(&[1.0, 3.0, 3.0, 0.0, 2.0]);
        c.keep_top_k(3);
        assert_eq!(ids(&c), vec![1, 2, 4]);
        assert!(c.is_sorted());
        c.keep_top_k(10);
        assert_eq!(ids(&c), vec![1, 2, 4]);
    }

    #[test]
    fn update_ids_works_in_both_layouts() {
        let mut c = Candidates::new();
        c.fill(&[1.0, 2.0, 3.0]);
        c.update_ids(&[0, 2, 99], |l| *l *= 10.0);
        assert_eq!(c.as_slice()[0].logit, 10.0);
        assert_eq!(c.as_slice()[2].logit, 30.0);
        c.sort_desc();
        c.update_ids(&[1], |l| *l = -1.0);
        let one = c.as_slice().iter().find(|c| c.id == 1).unwrap();
        assert_eq!(one.logit, -1.0);
        assert!(!c.is_sorted());
    }

    #[test]
    fn softmax_weights_handle_infinities() {
        let mut c = Candidates::new();
        let mut w = Vec::new();
        c.fill(&[f32::INFINITY, 0.0, f32::INFINITY]);
        assert_eq!(c.softmax_weights(&mut w), 2.0);
        assert_eq!(w, vec![1.0, 0.0, 1.0]);
        c.fill(&[f32::NEG_INFINITY, f32::NAN]);
        assert_eq!(c.softmax_weights(&mut w), 0.0);
        c.fill(&[0.0, 0.0]);
        assert_eq!(c.softmax_weights(&mut w), 2.0);
    }

    #[test]
    fn scan_sorted_sorts_only_what_it_visits() {
        let mut c = Candidates::new();
        let row: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1000) as f32).collect();
        c.fill(&row);
        let mut seen = Vec::new();
        let stop = c.scan_sorted(|i, cand| {
            seen.push(cand.logit);
            i == 9
        });
        assert_eq!(stop, Some(9));
        assert!(seen.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(seen[0], 999.0);
        assert!(!c.is_sorted() && c.len() == 5000);
        // A scan past the first chunk keeps going and ends fully sorted.
        assert_eq!(c.scan_sorted(|_, _| false), None);
        assert!(c.is_sorted());
        assert!(c
            .as_slice()
            .windows(2)
            .all(|w| cand_key(&w[0]) < cand_key(&w[1])));
    }

    #[test]
    fn prefix_survives_retain_truncate_and_remove_front() {
        let mut c = Candidates::new();
        c.fill(&[5.0, 1.0, 4.0, 3.0, 2.0, 0.0]);
        c.sort_top(3);
        assert_eq!(ids(&c)[..3], [0, 2, 3]);
        c.retain(|x| x.id != 2);
        assert_eq!(c.best().unwrap().id, 0);
        assert_eq!(ids(&c)[..2], [0, 3]);
        c.remove_front(1);
        assert_eq!(c.best().unwrap().id, 3);
        c.keep_top_k(2);
        assert_eq!(ids(&c), vec![3, 4]);
        assert!(c.is_sorted());
    }

    #[test]
    fn rank_key_is_the_canonical_order_and_round_trips() {
        let vals = [
            f32::NEG_INFINITY,
            -1e30,
            -2.5,
            -0.0,
            0.0,
            1e-40,
            3.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for (i, &a) in vals.iter().enumerate() {
            for (j, &b) in vals.iter().enumerate() {
                for (ia, ib) in [(1u32, 2u32), (2, 1)] {
                    let want = crate::stats::cmp_desc(ia, a, ib, b);
                    let got = rank_key(ia, a).cmp(&rank_key(ib, b));
                    assert_eq!(got, want, "{a} (id {ia}) vs {b} (id {ib}) [{i},{j}]");
                }
            }
            let c = from_rank_key(rank_key(7, a));
            assert_eq!(c.id, 7);
            assert!(c.logit == a || (a == 0.0 && c.logit == 0.0));
        }
        assert_eq!(rank_key(3, f32::NAN), rank_key(3, f32::NEG_INFINITY));
    }

    #[test]
    fn heap_and_select_top_k_agree() {
        let row: Vec<f32> = (0..4000)
            .map(|i| ((i * 7919) % 613) as f32 * 0.5 - 100.0)
            .collect();
        for k in [1, 2, 40, 249, 250, 251, 1000, 3999, 4000] {
            let mut heap = Candidates::new();
            heap.fill(&row);
            heap.keep_top_k(k);
            let mut sel = Candidates::new();
            sel.fill(&row);
            sel.sort_desc();
            sel.truncate(k);
            assert_eq!(heap.as_slice(), sel.as_slice(), "k = {k}");
            assert!(heap.is_sorted());
        }
    }

    #[test]
    fn draw_weights_match_the_exact_weights() {
        let mut c = Candidates::new();
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 31) % 97) as f32 * 0.3 - 10.0)
            .collect();
        c.fill(&row);
        let (mut fast, mut exact) = (Vec::new(), Vec::new());
        let zf = c.draw_weights(&mut fast);
        let ze = c.softmax_weights(&mut exact);
        assert!(((zf - ze) / ze).abs() < 1e-6);
        for (f, e) in fast.iter().zip(&exact) {
            assert!(((f64::from(*f) - e) / e).abs() < 1e-6);
        }
        c.fill(&[f32::INFINITY, 0.0, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(c.draw_weights(&mut fast), 2.0);
        assert_eq!(fast, vec![1.0, 0.0, 1.0, 0.0]);
        c.fill(&[f32::NEG_INFINITY; 3]);
        assert_eq!(c.draw_weights(&mut fast), 0.0);
    }
}
