//! The candidates buffer: the `(id, logit)` pairs still in play while the
//! processor chain narrows a logits row down to a distribution.
//!
//! Why a separate buffer rather than working on the logits slice: truncating
//! samplers (top-k, top-p, min-p, and later typical/mirostat) want to sort and
//! drop entries, which needs each logit to carry its id. The buffer is reused
//! across tokens, so after the first call no token allocates.
//!
//! The buffer tracks two facts so processors can skip work:
//! * `identity`: entry `i` has id `i` and the row is complete (true right after
//!   [`Candidates::fill`]), so a lookup by id is O(1);
//! * `sorted`: entries are in the canonical order (larger logit first, ties by
//!   lower id), so a second sorting processor costs nothing.

use crate::stats::{cmp_desc, sanitize, Normalizer};

/// One token still in play.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Token id (index in the original logits row).
    pub id: u32,
    /// Current (processed) logit; never NaN after [`Candidates::fill`].
    pub logit: f32,
}

/// A reusable buffer of candidates; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    items: Vec<Candidate>,
    identity: bool,
    sorted: bool,
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
        self.sorted = false;
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
        self.sorted
    }

    /// Largest logit (`-inf` when empty or fully masked).
    pub fn max_logit(&self) -> f32 {
        if self.sorted {
            return self.items.first().map_or(f32::NEG_INFINITY, |c| c.logit);
        }
        self.items
            .iter()
            .map(|c| sanitize(c.logit))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// The best candidate in canonical order (larger logit, then lower id).
    pub fn best(&self) -> Option<Candidate> {
        if self.sorted {
            return self.items.first().copied();
        }
        self.items
            .iter()
            .copied()
            .min_by(|a, b| cmp_desc(a.id, a.logit, b.id, b.logit))
    }

    /// Sorts into canonical order (a no-op if already sorted).
    pub fn sort_desc(&mut self) {
        if !self.sorted {
            self.items
                .sort_unstable_by(|a, b| cmp_desc(a.id, a.logit, b.id, b.logit));
            self.sorted = true;
            self.identity = false;
        }
    }

    /// Keeps the `k` best candidates, sorted. Selects before sorting, so the
    /// cost is O(n + k log k) rather than a full O(n log n) sort.
    pub fn keep_top_k(&mut self, k: usize) {
        if self.sorted {
            self.items.truncate(k);
            return;
        }
        let order = |a: &Candidate, b: &Candidate| cmp_desc(a.id, a.logit, b.id, b.logit);
        if k == 0 {
            self.items.clear();
        } else if k < self.items.len() {
            self.items.select_nth_unstable_by(k - 1, order);
            self.items.truncate(k);
        }
        self.items.sort_unstable_by(order);
        self.sorted = true;
        self.identity = false;
    }

    /// Keeps the first `n` candidates in the current order.
    pub fn truncate(&mut self, n: usize) {
        if n < self.items.len() {
            self.items.truncate(n);
            self.identity = false;
        }
    }

    /// Keeps the candidates for which `keep` is true, preserving order.
    pub fn retain(&mut self, keep: impl FnMut(&Candidate) -> bool) {
        let before = self.items.len();
        self.items.retain(keep);
        if self.items.len() != before {
            self.identity = false;
        }
    }

    /// Applies `f` to every logit. The order may change, so the buffer is
    /// marked unsorted.
    pub fn map_logits(&mut self, mut f: impl FnMut(f32) -> f32) {
        for c in &mut self.items {
            c.logit = f(c.logit);
        }
        self.sorted = false;
    }

    /// Applies `f` to the logit of every candidate whose id is in `ids`
    /// (which must be sorted ascending and deduplicated; ids not present are
    /// ignored). O(|ids|) on a freshly filled row, O(n log |ids|) otherwise.
    pub fn update_ids(&mut self, ids: &[u32], mut f: impl FnMut(&mut f32)) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must be sorted");
        if ids.is_empty() {
            return;
        }
        if self.identity {
            for &id in ids {
                if let Some(c) = self.items.get_mut(id as usize) {
                    f(&mut c.logit);
                }
            }
        } else {
            for c in &mut self.items {
                if ids.binary_search(&c.id).is_ok() {
                    f(&mut c.logit);
                }
            }
        }
        self.sorted = false;
    }

    /// Writes the unnormalised softmax weights `exp(logit - max)` (in `f64`)
    /// into `out`, one per candidate in the current order, and returns their
    /// sum. `+inf` logits get weight 1 and all others 0; a fully masked buffer
    /// returns 0. Probabilities are `out[i] / sum`.
    pub fn softmax_weights(&self, out: &mut Vec<f64>) -> f64 {
        out.clear();
        let norm = Normalizer::of(self.items.iter().map(|c| c.logit));
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
}
