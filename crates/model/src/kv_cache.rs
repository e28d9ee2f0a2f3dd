//! The per-sequence key/value cache.
//!
//! Keys and values are rounded to f16, as llama.cpp stores them by default, so the
//! attention sees the same numbers as the reference we test against. They are kept in
//! f32 containers for now: the attention kernels then need no conversion in their inner
//! loops, at twice the memory of true f16 storage. Slots are kept in insertion order;
//! each remembers the position it was computed at, so a later policy can drop slots
//! without recomputing RoPE.

use half::f16;

use crate::config::ModelConfig;

pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    /// Per layer: [capacity, kv_dim].
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Position of each filled slot.
    positions: Vec<usize>,
}

impl KvCache {
    pub fn new(config: &ModelConfig, capacity: usize) -> KvCache {
        let kv_dim = config.kv_dim();
        KvCache {
            kv_dim,
            capacity,
            k: (0..config.n_layer).map(|_| Vec::new()).collect(),
            v: (0..config.n_layer).map(|_| Vec::new()).collect(),
            positions: Vec::with_capacity(capacity),
        }
    }

    /// Filled slots.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Position of the next token in a plain sequence (one past the last slot's).
    pub fn next_position(&self) -> usize {
        self.positions.last().map_or(0, |p| p + 1)
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every slot from `len` on (e.g. rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len());
        self.positions.truncate(len);
        for l in 0..self.k.len() {
            self.k[l].truncate(len * self.kv_dim);
            self.v[l].truncate(len * self.kv_dim);
        }
    }

    /// Keeps only the slots listed in `keep` (strictly increasing slot indices), moving
    /// them to the front in that order; everything else is dropped. Used to keep the
    /// accepted path of a speculative token tree, and by eviction policies. Panics if
    /// `keep` is not strictly increasing or names a slot past the end (a caller bug,
    /// not user input).
    pub fn retain_slots(&mut self, keep: &[usize]) {
        assert!(
            keep.windows(2).all(|w| w[0] < w[1]) && keep.last().is_none_or(|&s| s < self.len()),
            "retain_slots: slots must be increasing and < {}",
            self.len()
        );
        let d = self.kv_dim;
        for (dst, &src) in keep.iter().enumerate() {
            if dst != src {
                self.positions[dst] = self.positions[src];
                for l in 0..self.k.len() {
                    self.k[l].copy_within(src * d..(src + 1) * d, dst * d);
                    self.v[l].copy_within(src * d..(src + 1) * d, dst * d);
                }
            }
        }
        self.truncate(keep.len());
    }

    /// Reserves slots for `positions` (all layers are then written by the forward pass).
    pub(crate) fn begin_append(&mut self, positions: &[usize]) {
        self.positions.extend_from_slice(positions);
        let n = self.positions.len() * self.kv_dim;
        for l in 0..self.k.len() {
            self.k[l].resize(n, 0.0);
            self.v[l].resize(n, 0.0);
        }
    }

    /// Writes rows `first..first + n` of layer `layer`.
    // k, v: [n, kv_dim]
    pub(crate) fn write(&mut self, layer: usize, first: usize, k: &[f32], v: &[f32]) {
        let start = first * self.kv_dim;
        let dst = &mut self.k[layer][start..start + k.len()];
        for (d, &s) in dst.iter_mut().zip(k) {
            *d = f16::from_f32(s).to_f32();
        }
        let dst = &mut self.v[layer][start..start + v.len()];
        for (d, &s) in dst.iter_mut().zip(v) {
            *d = f16::from_f32(s).to_f32();
        }
    }

    /// Keys of a layer: [len, kv_dim].
    pub fn keys(&self, layer: usize) -> &[f32] {
        &self.k[layer]
    }

    /// Values of a layer: [len, kv_dim].
    pub fn values(&self, layer: usize) -> &[f32] {
        &self.v[layer]
    }

    /// Bytes held by keys and values.
    pub fn memory_bytes(&self) -> usize {
        2 * self.k.len() * self.len() * self.kv_dim * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> KvCache {
        KvCache {
            kv_dim: 2,
            capacity: 8,
            k: vec![Vec::new(); 2],
            v: vec![Vec::new(); 2],
            positions: Vec::new(),
        }
    }

    #[test]
    fn retain_slots_compacts_every_layer_and_position() {
        let mut c = cache();
        c.begin_append(&[0, 1, 2, 3, 3]);
        for l in 0..2 {
            let k: Vec<f32> = (0..10).map(|i| (l * 100 + i) as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            c.write(l, 0, &k, &v);
        }
        c.retain_slots(&[0, 2, 4]);
        assert_eq!(c.positions(), &[0, 2, 3]);
        assert_eq!(c.keys(1), &[100.0, 101.0, 104.0, 105.0, 108.0, 109.0]);
        assert_eq!(c.values(0), &[-0.0, -1.0, -4.0, -5.0, -8.0, -9.0]);
        c.retain_slots(&[]);
        assert!(c.is_empty());
    }
}
