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
