//! The per-sequence key/value cache, stored per lane so each layer × KV head can keep
//! its own set of tokens.
//!
//! Keys and values are rounded to f16, as llama.cpp stores them by default, so the
//! attention sees the same numbers as the reference we test against. They are kept in
//! f32 containers for now: the attention kernels then need no conversion in their inner
//! loops, at twice the memory of true f16 storage.
//!
//! Layout:
//! * *Slots* are the cache's logical tokens in insertion order; each remembers the
//!   position it was computed at (`positions`), so dropping slots never recomputes
//!   RoPE: kept tokens keep their original positions.
//! * A *lane* is one (layer, KV head). It holds an increasing subset of the slots
//!   (`slots`, indices into `positions`) with their keys and values, contiguous per
//!   head: `k`, `v`: `[lane_len, head_dim]`.
//!
//! Without eviction every lane holds every slot, in order, and attention reads exactly
//! the numbers it read from the old `[slot, kv_dim]` layout in the same order, so
//! logits are bit-identical. An eviction policy shrinks lanes independently
//! ([`KvCache::retain_lane`]); slots that no lane holds any more are dropped with
//! [`KvCache::drop_unused_slots`], so memory stays bounded by the budget.

use half::f16;

use crate::config::ModelConfig;

/// One (layer, KV head): its kept slots and their keys and values.
#[derive(Clone, Debug, Default)]
pub struct KvLane {
    /// Logical slot of each entry, strictly increasing.
    slots: Vec<u32>,
    /// `[len, head_dim]`
    k: Vec<f32>,
    /// `[len, head_dim]`
    v: Vec<f32>,
}

impl KvLane {
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Logical slot of each entry.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }
    /// Keys: `[len, head_dim]`.
    pub fn keys(&self) -> &[f32] {
        &self.k
    }
    /// Values: `[len, head_dim]`.
    pub fn values(&self) -> &[f32] {
        &self.v
    }
}

pub struct KvCache {
    n_head_kv: usize,
    head_dim: usize,
    capacity: usize,
    /// Position of each logical slot.
    positions: Vec<usize>,
    /// `[n_layer * n_head_kv]`, lane `layer * n_head_kv + kv_head`.
    lanes: Vec<KvLane>,
    /// Scratch of `retain_slots`: new index of each old slot (`u32::MAX` = dropped).
    remap: Vec<u32>,
}

impl KvCache {
    pub fn new(config: &ModelConfig, capacity: usize) -> KvCache {
        KvCache::with_shape(config.n_layer, config.n_head_kv, config.head_dim, capacity)
    }

    fn with_shape(n_layer: usize, n_head_kv: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            n_head_kv,
            head_dim,
            capacity,
            positions: Vec::with_capacity(capacity.min(1 << 16)),
            lanes: vec![KvLane::default(); n_layer * n_head_kv],
            remap: Vec::new(),
        }
    }

    /// Logical slots (tokens held by at least one lane, or appended and not dropped).
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Position of each logical slot.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Position of the next token in a plain sequence (one past the last slot's).
    pub fn next_position(&self) -> usize {
        self.positions.last().map_or(0, |p| p + 1)
    }

    pub fn n_head_kv(&self) -> usize {
        self.n_head_kv
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn n_layer(&self) -> usize {
        self.lanes.len() / self.n_head_kv.max(1)
    }

    /// The lane of `layer`, KV head `kv_head`.
    pub fn lane(&self, layer: usize, kv_head: usize) -> &KvLane {
        &self.lanes[layer * self.n_head_kv + kv_head]
    }

    /// Whether every lane holds every slot (no eviction has happened).
    pub fn is_dense(&self) -> bool {
        self.lanes.iter().all(|l| l.len() == self.len())
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every slot from `len` on (e.g. rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len());
        self.positions.truncate(len);
        let hd = self.head_dim;
        for lane in &mut self.lanes {
            // Slots are increasing: the dropped ones are a suffix.
            let keep = lane.slots.partition_point(|&s| (s as usize) < len);
            lane.slots.truncate(keep);
            lane.k.truncate(keep * hd);
            lane.v.truncate(keep * hd);
        }
    }

    /// Keeps only the slots listed in `keep` (strictly increasing slot indices), moving
    /// them to the front in that order; everything else is dropped from every lane.
    /// Used to keep the accepted path of a speculative token tree, and by eviction
    /// policies. Panics if `keep` is not strictly increasing or names a slot past the
    /// end (a caller bug, not user input).
    pub fn retain_slots(&mut self, keep: &[usize]) {
        assert!(
            keep.windows(2).all(|w| w[0] < w[1]) && keep.last().is_none_or(|&s| s < self.len()),
            "retain_slots: slots must be increasing and < {}",
            self.len()
        );
        self.remap.clear();
        self.remap.resize(self.len(), u32::MAX);
        for (dst, &src) in keep.iter().enumerate() {
            self.remap[src] = dst as u32;
            self.positions[dst] = self.positions[src];
        }
        self.positions.truncate(keep.len());
        let hd = self.head_dim;
        for lane in &mut self.lanes {
            let mut dst = 0;
            for src in 0..lane.slots.len() {
                let new = self.remap[lane.slots[src] as usize];
                if new != u32::MAX {
                    move_entry(lane, hd, src, dst, new);
                    dst += 1;
                }
            }
            lane.slots.truncate(dst);
            lane.k.truncate(dst * hd);
            lane.v.truncate(dst * hd);
        }
    }

    /// Keeps only entries `keep` (strictly increasing entry indices) of one lane; the
    /// other lanes and the logical slots are untouched (see [`Self::drop_unused_slots`]).
    /// Panics on a bad `keep` (a policy bug, not user input).
    pub fn retain_lane(&mut self, layer: usize, kv_head: usize, keep: &[usize]) {
        let hd = self.head_dim;
        let lane = &mut self.lanes[layer * self.n_head_kv + kv_head];
        assert!(
            keep.windows(2).all(|w| w[0] < w[1]) && keep.last().is_none_or(|&e| e < lane.len()),
            "retain_lane: entries must be increasing and < {}",
            lane.len()
        );
        for (dst, &src) in keep.iter().enumerate() {
            let slot = lane.slots[src];
            move_entry(lane, hd, src, dst, slot);
        }
        lane.slots.truncate(keep.len());
        lane.k.truncate(keep.len() * hd);
        lane.v.truncate(keep.len() * hd);
    }

    /// Drops the logical slots that no lane holds, except the last one (it carries
    /// [`Self::next_position`]), and returns the surviving slots' old indices in `kept`
    /// (cleared first), as passed to [`Self::retain_slots`].
    pub fn drop_unused_slots(&mut self, kept: &mut Vec<usize>) {
        let n = self.len();
        let mut used = std::mem::take(&mut self.remap);
        used.clear();
        used.resize(n, 0);
        for lane in &self.lanes {
            for &s in &lane.slots {
                used[s as usize] = 1;
            }
        }
        if let Some(last) = used.last_mut() {
            *last = 1;
        }
        kept.clear();
        kept.extend((0..n).filter(|&s| used[s] != 0));
        self.remap = used;
        if kept.len() < n {
            self.retain_slots(kept);
        }
    }

    /// Reserves slots for `positions` in every lane (all layers are then written by the
    /// forward pass).
    pub(crate) fn begin_append(&mut self, positions: &[usize]) {
        let first = self.positions.len();
        self.positions.extend_from_slice(positions);
        let n = positions.len();
        let hd = self.head_dim;
        for lane in &mut self.lanes {
            lane.slots.extend((first..first + n).map(|s| s as u32));
            let len = lane.slots.len();
            lane.k.resize(len * hd, 0.0);
            lane.v.resize(len * hd, 0.0);
        }
    }

    /// Writes the keys and values of the `n` tokens appended last, in layer `layer`.
    // k, v: [n, n_head_kv * head_dim] -> the last n entries of each of the layer's lanes
    pub(crate) fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let (hd, kvd) = (self.head_dim, self.n_head_kv * self.head_dim);
        let n = k.len() / kvd;
        for g in 0..self.n_head_kv {
            let lane = &mut self.lanes[layer * self.n_head_kv + g];
            let first = lane.len() - n;
            for i in 0..n {
                let src = i * kvd + g * hd..i * kvd + (g + 1) * hd;
                let dst = (first + i) * hd..(first + i + 1) * hd;
                round_f16(&k[src.clone()], &mut lane.k[dst.clone()]);
                round_f16(&v[src], &mut lane.v[dst]);
            }
        }
    }

    /// Bytes of keys and values held (entries × head_dim × 2 × 4 bytes over all lanes).
    pub fn memory_bytes(&self) -> usize {
        let entries: usize = self.lanes.iter().map(KvLane::len).sum();
        2 * entries * self.head_dim * std::mem::size_of::<f32>()
    }

    /// Bytes the storage has allocated: key/value/slot buffers of every lane and the
    /// positions (capacities, not lengths), i.e. what the process actually holds.
    pub fn allocated_bytes(&self) -> usize {
        let lanes: usize = self
            .lanes
            .iter()
            .map(|l| {
                (l.k.capacity() + l.v.capacity()) * std::mem::size_of::<f32>()
                    + l.slots.capacity() * std::mem::size_of::<u32>()
            })
            .sum();
        lanes
            + self.positions.capacity() * std::mem::size_of::<usize>()
            + self.remap.capacity() * std::mem::size_of::<u32>()
    }
}

/// Moves entry `src` of a lane to `dst <= src`, relabelled as slot `slot`.
fn move_entry(lane: &mut KvLane, hd: usize, src: usize, dst: usize, slot: u32) {
    lane.slots[dst] = slot;
    if dst != src {
        lane.k.copy_within(src * hd..(src + 1) * hd, dst * hd);
        lane.v.copy_within(src * hd..(src + 1) * hd, dst * hd);
    }
}

/// `dst = f16(src)` as f32, as llama.cpp's default f16 cache stores it.
fn round_f16(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers, one KV head of dimension 2 (kv_dim 2, as the old layout's test).
    fn cache() -> KvCache {
        KvCache::with_shape(2, 1, 2, 8)
    }

    fn filled() -> KvCache {
        let mut c = cache();
        c.begin_append(&[0, 1, 2, 3, 3]);
        for l in 0..2 {
            let k: Vec<f32> = (0..10).map(|i| (l * 100 + i) as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            c.write(l, &k, &v);
        }
        c
    }

    #[test]
    fn retain_slots_compacts_every_layer_and_position() {
        let mut c = filled();
        c.retain_slots(&[0, 2, 4]);
        assert_eq!(c.positions(), &[0, 2, 3]);
        assert_eq!(
            c.lane(1, 0).keys(),
            &[100.0, 101.0, 104.0, 105.0, 108.0, 109.0]
        );
        assert_eq!(c.lane(0, 0).values(), &[-0.0, -1.0, -4.0, -5.0, -8.0, -9.0]);
        assert!(c.is_dense());
        c.retain_slots(&[]);
        assert!(c.is_empty());
    }

    #[test]
    fn lanes_evict_independently_and_unused_slots_go() {
        let mut c = filled();
        c.retain_lane(0, 0, &[0, 3]);
        c.retain_lane(1, 0, &[1, 3]);
        assert!(!c.is_dense());
        let mut kept = Vec::new();
        c.drop_unused_slots(&mut kept);
        // Slot 2 is held by no lane; slot 4 by none either but it is the last.
        assert_eq!(kept, vec![0, 1, 3, 4]);
        assert_eq!(c.positions(), &[0, 1, 3, 3]);
        assert_eq!(c.lane(0, 0).slots(), &[0, 2]);
        assert_eq!(c.lane(0, 0).keys(), &[0.0, 1.0, 6.0, 7.0]);
        assert_eq!(c.lane(1, 0).slots(), &[1, 2]);
        assert_eq!(c.lane(1, 0).values(), &[-102.0, -103.0, -106.0, -107.0]);
        assert_eq!(c.memory_bytes(), 2 * 4 * 2 * 4);
        // Truncation drops the slot suffix from every lane.
        c.truncate(2);
        assert_eq!(c.lane(0, 0).slots(), &[0]);
        assert_eq!(c.lane(1, 0).slots(), &[1]);
        assert_eq!(c.next_position(), 2);
    }
}
