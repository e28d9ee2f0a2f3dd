//! The per-sequence key/value cache, stored per lane so each layer × KV head can keep
//! its own set of tokens, optionally quantised to int8/int4 (KIVI).
//!
//! Keys and values are rounded to f16, as llama.cpp stores them by default, so the
//! attention sees the same numbers as the reference we test against. Full-precision
//! entries are kept in f32 containers: the attention kernels then need no conversion
//! in their inner loops, at twice the memory of true f16 storage
//! ([`KvCache::memory_bytes_f16`] reports what true f16 would hold).
//!
//! Layout:
//! * *Slots* are the cache's logical tokens in insertion order; each remembers the
//!   position it was computed at (`positions`), so dropping slots never recomputes
//!   RoPE: kept tokens keep their original positions.
//! * A *lane* is one (layer, KV head). It holds an increasing subset of the slots
//!   (`slots`, indices into `positions`). Its first `n_quant` entries are quantised
//!   (in [`QuantGroup`]s), the rest are full precision, contiguous per head: `k`, `v`:
//!   `[len - n_quant, head_dim]`.
//!
//! Without eviction or quantisation every lane holds every slot, in order, at full
//! precision, and attention reads exactly the numbers it read from the old
//! `[slot, kv_dim]` layout in the same order, so logits are bit-identical. An eviction
//! policy shrinks lanes independently ([`KvCache::retain_lane`]); slots that no lane
//! holds any more are dropped with [`KvCache::drop_unused_slots`], so memory stays
//! bounded by the budget.
//!
//! Quantisation ([`KvQuant`], off by default) follows KIVI: keys per channel over
//! groups of `key_group` tokens, values per token over groups of `value_group`
//! channels, asymmetric min/scale in f16, codes packed (int4 two per byte); see
//! [`quant`]. The most recent `residual` entries of each lane stay at full precision;
//! [`KvCache::quantize_settled`] (called by the engine after every forward call)
//! quantises the oldest `key_group` full-precision entries of a lane once they are
//! complete and out of that window, so a lane holds between `residual` and
//! `residual + key_group - 1` full-precision entries. `Mixed` stores the share
//! `mixed_keep` of each new group that an importance score ranks highest at int8 and
//! the rest at int4 (ZipCache, MiKV): the group is split into two [`QuantGroup`]s, each
//! with its own per-channel ranges.
//!
//! Eviction on quantised lanes: values are per token and keys' per-channel ranges stay
//! valid for any subset of a group's tokens, so removing entries only drops their rows
//! (no re-quantisation, exact for the survivors). Groups that shrink below half of
//! `key_group` are merged with the next group of the same precision when the two fit
//! in one group: their keys are dequantised and quantised again over the union (each
//! merge adds at most half a step of the merged range; values move unchanged), which
//! keeps the per-group overhead per token bounded under heavy eviction. Truncation is
//! the same operation; entries quantised before a truncation stay quantised (the
//! residual window refills with the next tokens).

pub mod quant;

use std::fmt;
use std::str::FromStr;

use half::f16;

use crate::config::ModelConfig;
use crate::{ModelError, Result};
pub use quant::QuantGroup;

/// Storage type of settled (out of the residual window) keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// f16-rounded values in f32 containers: the exact default.
    #[default]
    F16,
    Int8,
    Int4,
    /// int8 for the most important share of each group, int4 for the rest.
    Mixed,
}

impl KvDtype {
    pub const NAMES: &'static [&'static str] = &["f16", "int8", "int4", "mixed"];

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::Int8 => "int8",
            KvDtype::Int4 => "int4",
            KvDtype::Mixed => "mixed",
        }
    }

    /// Bits of the (low-precision) codes; `None` for f16.
    pub fn bits(self) -> Option<u8> {
        match self {
            KvDtype::F16 => None,
            KvDtype::Int8 => Some(8),
            KvDtype::Int4 | KvDtype::Mixed => Some(4),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<KvDtype, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(KvDtype::F16),
            "int8" | "q8" => Ok(KvDtype::Int8),
            "int4" | "q4" => Ok(KvDtype::Int4),
            "mixed" => Ok(KvDtype::Mixed),
            _ => Err(format!(
                "unknown KV dtype {s:?}: expected one of {}",
                KvDtype::NAMES.join(", ")
            )),
        }
    }
}

/// How a cache quantises keys and values (KIVI's scheme; see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvQuant {
    pub dtype: KvDtype,
    /// Most recent entries of each lane kept at full precision.
    pub residual: usize,
    /// Tokens per key group (keys share per-channel ranges along the token axis).
    pub key_group: usize,
    /// Channels per value group (each token's values, cut along `head_dim`); must
    /// divide `head_dim`.
    pub value_group: usize,
    /// `Mixed`: share of each key group's tokens (the most important) kept at int8.
    pub mixed_keep: f32,
}

impl Default for KvQuant {
    /// f16 (no quantisation); KIVI's group size 32 and residual 32 when enabled.
    fn default() -> Self {
        KvQuant {
            dtype: KvDtype::F16,
            residual: 32,
            key_group: 32,
            value_group: 32,
            mixed_keep: 0.25,
        }
    }
}

impl KvQuant {
    /// Checks the settings against a head dimension; errors are one line.
    pub fn validate(&self, head_dim: usize) -> std::result::Result<(), String> {
        if self.dtype == KvDtype::F16 {
            return Ok(());
        }
        if self.key_group == 0 || self.key_group > u16::MAX as usize {
            return Err(format!(
                "the key group must hold 1 to 65535 tokens (got {})",
                self.key_group
            ));
        }
        if self.value_group == 0 || !head_dim.is_multiple_of(self.value_group) {
            return Err(format!(
                "the value group ({} channels) must divide the head dimension ({head_dim})",
                self.value_group
            ));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(format!(
                "int4 packing needs an even head dimension ({head_dim})"
            ));
        }
        if !(0.0..=1.0).contains(&self.mixed_keep) {
            return Err(format!(
                "the mixed-precision share {} is outside [0, 1]",
                self.mixed_keep
            ));
        }
        Ok(())
    }

    /// Whether settled entries are quantised.
    pub fn is_quantized(&self) -> bool {
        self.dtype != KvDtype::F16
    }
}

/// One (layer, KV head): its kept slots and their keys and values.
#[derive(Clone, Debug, Default)]
pub struct KvLane {
    /// Logical slot of each entry, strictly increasing.
    slots: Vec<u32>,
    /// Entries `[0, n_quant)` live in `groups`, the rest in `k`/`v`.
    n_quant: usize,
    /// `[len - n_quant, head_dim]`
    k: Vec<f32>,
    /// `[len - n_quant, head_dim]`
    v: Vec<f32>,
    /// Quantised entries, in creation order; their rows partition `0..n_quant`.
    groups: Vec<QuantGroup>,
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
    /// Entries `[0, n_quantized)` are quantised (in [`Self::groups`]).
    pub fn n_quantized(&self) -> usize {
        self.n_quant
    }
    /// Keys of the full-precision entries `[n_quantized, len)`: `[len - n_quantized,
    /// head_dim]` (every entry when nothing is quantised).
    pub fn keys(&self) -> &[f32] {
        &self.k
    }
    /// Values of the full-precision entries, as [`Self::keys`].
    pub fn values(&self) -> &[f32] {
        &self.v
    }
    /// The quantised entries' groups.
    pub fn groups(&self) -> &[QuantGroup] {
        &self.groups
    }

    /// Every entry's key (dequantised where quantised), in entry order.
    // -> out: [len, head_dim]
    pub fn dequantize_keys(&self, head_dim: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.n_quant * head_dim, 0.0);
        for g in &self.groups {
            for (r, &e) in g.rows().iter().enumerate() {
                let e = e as usize;
                g.dequantize_key(r, &mut out[e * head_dim..(e + 1) * head_dim]);
            }
        }
        out.extend_from_slice(&self.k);
    }

    /// Every entry's value, as [`Self::dequantize_keys`].
    pub fn dequantize_values(&self, head_dim: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.n_quant * head_dim, 0.0);
        for g in &self.groups {
            for (r, &e) in g.rows().iter().enumerate() {
                let e = e as usize;
                g.dequantize_value(r, &mut out[e * head_dim..(e + 1) * head_dim]);
            }
        }
        out.extend_from_slice(&self.v);
    }

    /// Turns every quantised entry back into a full-precision one (its dequantised
    /// value: the error stays).
    fn dequantize_all(&mut self, head_dim: usize) {
        if self.n_quant == 0 {
            return;
        }
        let (mut k, mut v) = (Vec::new(), Vec::new());
        self.dequantize_keys(head_dim, &mut k);
        self.dequantize_values(head_dim, &mut v);
        self.k = k;
        self.v = v;
        self.groups.clear();
        self.n_quant = 0;
    }

    /// Keeps the entries for which `keep(entry, slot)` returns their new slot, in
    /// order. `remap` is scratch.
    fn retain_with(
        &mut self,
        hd: usize,
        mut keep: impl FnMut(usize, u32) -> Option<u32>,
        remap: &mut Vec<u32>,
    ) {
        let nq = self.n_quant;
        remap.clear();
        let (mut dst, mut new_nq) = (0, 0);
        for src in 0..self.len() {
            let Some(slot) = keep(src, self.slots[src]) else {
                if src < nq {
                    remap.push(u32::MAX);
                }
                continue;
            };
            self.slots[dst] = slot;
            if src < nq {
                remap.push(dst as u32);
                new_nq += 1;
            } else {
                // Full-precision rows are indexed from n_quant; all quantised
                // entries come first, so new_nq is final here.
                let (from, to) = (src - nq, dst - new_nq);
                if from != to {
                    self.k.copy_within(from * hd..(from + 1) * hd, to * hd);
                    self.v.copy_within(from * hd..(from + 1) * hd, to * hd);
                }
            }
            dst += 1;
        }
        self.slots.truncate(dst);
        self.k.truncate((dst - new_nq) * hd);
        self.v.truncate((dst - new_nq) * hd);
        if nq > 0 {
            for g in &mut self.groups {
                g.retain(remap);
            }
            self.groups.retain(|g| !g.is_empty());
            self.n_quant = new_nq;
        }
    }

    /// Merges runs of consecutive groups of the same precision into one group when
    /// their rows fit in `key_group` and one of them holds fewer than half of it, each
    /// run quantised once (see the module doc). Afterwards, any two consecutive groups
    /// of a precision either do not fit in one group or both are at least half full,
    /// so the per-group overhead per token stays bounded under any eviction.
    fn merge_small_groups(&mut self, hd: usize, key_group: usize) {
        if self.groups.len() < 2 {
            return;
        }
        let mut out: Vec<QuantGroup> = Vec::with_capacity(self.groups.len());
        // Per precision (4, 8 bits): the run being collected, and its rows.
        let mut runs: [(Vec<QuantGroup>, usize); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
        let flush = |run: &mut (Vec<QuantGroup>, usize), out: &mut Vec<QuantGroup>| {
            match run.0.len() {
                0 => {}
                1 => out.append(&mut run.0),
                _ => {
                    out.push(QuantGroup::merge(&run.0, hd));
                    run.0.clear();
                }
            }
            run.1 = 0;
        };
        for g in self.groups.drain(..) {
            let run = &mut runs[(g.bits() == 8) as usize];
            let smallest = run.0.iter().map(QuantGroup::len).min().unwrap_or(0);
            let joins = run.1 + g.len() <= key_group && 2 * smallest.min(g.len()) < key_group;
            if !run.0.is_empty() && !joins {
                flush(run, &mut out);
            }
            run.1 += g.len();
            run.0.push(g);
        }
        for run in &mut runs {
            flush(run, &mut out);
        }
        self.groups = out;
    }
}

/// The full-precision entries about to be quantised, for an importance score.
pub struct SettleCandidates<'a> {
    pub layer: usize,
    pub kv_head: usize,
    /// Logical slots of the candidates, increasing.
    pub slots: &'a [u32],
    /// Their keys, `[n, head_dim]`.
    pub keys: &'a [f32],
    /// Position of every logical slot of the cache.
    pub positions: &'a [usize],
    pub head_dim: usize,
}

/// Importance of each candidate (higher = keep at higher precision), pushed onto the
/// vector (empty on entry); anything but one score per candidate means "no scores".
pub type ImportanceFn<'a> = dyn FnMut(&SettleCandidates<'_>, &mut Vec<f32>) + 'a;

/// Scratch of [`KvCache::quantize_settled`].
#[derive(Default)]
struct SettleScratch {
    scores: Vec<f32>,
    order: Vec<usize>,
    keys: Vec<f32>,
    values: Vec<f32>,
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
    /// Scratch of the lane operations: new index of each old quantised entry.
    entry_remap: Vec<u32>,
    quant: KvQuant,
    settle: SettleScratch,
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
            entry_remap: Vec::new(),
            quant: KvQuant::default(),
            settle: SettleScratch::default(),
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

    /// The quantisation settings.
    pub fn quant(&self) -> &KvQuant {
        &self.quant
    }

    /// Renumbers the logical slots' positions `0..len`: kept tokens move to positions
    /// inside the cache (StreamingLLM's choice) instead of keeping their original ones.
    /// `rotate(layer, key, from, to)` must turn a key rotated for position `from` into
    /// the key rotated for `to`; it is called for every kept key whose position changes.
    /// Quantised keys cannot be re-rotated: an error (nothing changed) when any lane
    /// holds some.
    pub fn reposition(
        &mut self,
        mut rotate: impl FnMut(usize, &mut [f32], usize, usize),
    ) -> Result<()> {
        if self.lanes.iter().any(|l| l.n_quant > 0) {
            return Err(ModelError::Input(
                "re-positioning the KV cache needs full-precision keys (kv_dtype f16)".into(),
            ));
        }
        let hd = self.head_dim;
        for (li, lane) in self.lanes.iter_mut().enumerate() {
            let layer = li / self.n_head_kv;
            for (e, &slot) in lane.slots.iter().enumerate() {
                let (from, to) = (self.positions[slot as usize], slot as usize);
                if from != to {
                    rotate(layer, &mut lane.k[e * hd..(e + 1) * hd], from, to);
                }
            }
        }
        for (j, p) in self.positions.iter_mut().enumerate() {
            *p = j;
        }
        Ok(())
    }

    /// Sets how entries are stored from now on. Entries already quantised under other
    /// settings are first turned back into full-precision entries (keeping their
    /// quantisation error); call [`Self::quantize_settled`] to quantise under the new
    /// ones. Errors on settings that do not fit the head dimension.
    pub fn set_quant(&mut self, quant: KvQuant) -> Result<()> {
        quant
            .validate(self.head_dim)
            .map_err(|e| ModelError::Input(format!("KV quantisation: {e}")))?;
        if quant == self.quant {
            return Ok(());
        }
        let same_layout = quant.key_group == self.quant.key_group
            && quant.value_group == self.quant.value_group
            && quant.is_quantized();
        if !same_layout {
            for lane in &mut self.lanes {
                lane.dequantize_all(self.head_dim);
            }
        }
        self.quant = quant;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every slot from `len` on (e.g. rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len());
        self.positions.truncate(len);
        let (hd, kg) = (self.head_dim, self.quant.key_group);
        for lane in &mut self.lanes {
            // Slots are increasing: the dropped ones are a suffix.
            let keep = lane.slots.partition_point(|&s| (s as usize) < len);
            if lane.n_quant == 0 {
                lane.slots.truncate(keep);
                lane.k.truncate(keep * hd);
                lane.v.truncate(keep * hd);
            } else {
                lane.retain_with(hd, |e, s| (e < keep).then_some(s), &mut self.entry_remap);
                lane.merge_small_groups(hd, kg);
            }
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
        let (hd, kg) = (self.head_dim, self.quant.key_group);
        let remap = &self.remap;
        for lane in &mut self.lanes {
            let quantized = lane.n_quant > 0;
            lane.retain_with(
                hd,
                |_, s| {
                    let new = remap[s as usize];
                    (new != u32::MAX).then_some(new)
                },
                &mut self.entry_remap,
            );
            if quantized {
                lane.merge_small_groups(hd, kg);
            }
        }
    }

    /// Keeps only entries `keep` (strictly increasing entry indices) of one lane; the
    /// other lanes and the logical slots are untouched (see [`Self::drop_unused_slots`]).
    /// Panics on a bad `keep` (a policy bug, not user input).
    pub fn retain_lane(&mut self, layer: usize, kv_head: usize, keep: &[usize]) {
        let (hd, kg) = (self.head_dim, self.quant.key_group);
        let lane = &mut self.lanes[layer * self.n_head_kv + kv_head];
        assert!(
            keep.windows(2).all(|w| w[0] < w[1]) && keep.last().is_none_or(|&e| e < lane.len()),
            "retain_lane: entries must be increasing and < {}",
            lane.len()
        );
        let quantized = lane.n_quant > 0;
        let mut next = keep.iter().peekable();
        lane.retain_with(
            hd,
            |e, s| {
                let kept = next.peek().is_some_and(|&&k| k == e);
                if kept {
                    next.next();
                }
                kept.then_some(s)
            },
            &mut self.entry_remap,
        );
        if quantized {
            lane.merge_small_groups(hd, kg);
        }
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

    /// Quantises, in every lane, the oldest full-precision entries in runs of
    /// `key_group` while more than `residual + key_group - 1` are held (nothing for
    /// f16). With `Mixed`, `importance` ranks each run's entries; the top
    /// `mixed_keep` share is stored at int8 (without scores, everything at int4).
    /// Allocates once per new group (amortised over `key_group` tokens).
    pub fn quantize_settled(&mut self, mut importance: Option<&mut ImportanceFn<'_>>) {
        let q = self.quant;
        let Some(bits) = q.dtype.bits() else {
            return;
        };
        let (hd, r, kg, vg) = (self.head_dim, q.residual, q.key_group, q.value_group);
        let n_head_kv = self.n_head_kv;
        let positions = &self.positions;
        let s = &mut self.settle;
        for (id, lane) in self.lanes.iter_mut().enumerate() {
            while lane.len() - lane.n_quant >= r + kg {
                let nq = lane.n_quant;
                let rows: Vec<u32> = (nq as u32..(nq + kg) as u32).collect();
                let (keys, values) = (&lane.k[..kg * hd], &lane.v[..kg * hd]);
                let n_high = if q.dtype == KvDtype::Mixed {
                    (q.mixed_keep * kg as f32).round() as usize
                } else {
                    0
                };
                // high[i]: candidate i goes to the int8 group.
                s.order.clear();
                if n_high >= kg {
                    s.order.extend(0..kg);
                } else if n_high > 0 {
                    s.scores.clear();
                    if let Some(f) = importance.as_deref_mut() {
                        f(
                            &SettleCandidates {
                                layer: id / n_head_kv,
                                kv_head: id % n_head_kv,
                                slots: &lane.slots[nq..nq + kg],
                                keys,
                                positions,
                                head_dim: hd,
                            },
                            &mut s.scores,
                        );
                    }
                    if s.scores.len() == kg {
                        // The n_high best, ties to the more recent, in entry order.
                        s.order.extend(0..kg);
                        let sc = &s.scores;
                        s.order
                            .sort_by(|&a, &b| sc[b].total_cmp(&sc[a]).then(b.cmp(&a)));
                        s.order.truncate(n_high);
                        s.order.sort_unstable();
                    }
                }
                if s.order.is_empty() {
                    lane.groups
                        .push(QuantGroup::quantize(bits, hd, vg, keys, values, rows));
                } else {
                    for high in [true, false] {
                        s.keys.clear();
                        s.values.clear();
                        let mut sub = Vec::with_capacity(kg);
                        let mut o = s.order.iter().peekable();
                        for i in 0..kg {
                            let is_high = o.peek().is_some_and(|&&h| h == i);
                            if is_high {
                                o.next();
                            }
                            if is_high == high {
                                s.keys.extend_from_slice(&keys[i * hd..(i + 1) * hd]);
                                s.values.extend_from_slice(&values[i * hd..(i + 1) * hd]);
                                sub.push(rows[i]);
                            }
                        }
                        if !sub.is_empty() {
                            let b = if high { 8 } else { bits };
                            lane.groups
                                .push(QuantGroup::quantize(b, hd, vg, &s.keys, &s.values, sub));
                        }
                    }
                }
                lane.k.drain(..kg * hd);
                lane.v.drain(..kg * hd);
                lane.n_quant += kg;
            }
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
            let len = lane.slots.len() - lane.n_quant;
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
            // The new entries are the last full-precision rows.
            let first = lane.k.len() / hd - n;
            for i in 0..n {
                let src = i * kvd + g * hd..i * kvd + (g + 1) * hd;
                let dst = (first + i) * hd..(first + i + 1) * hd;
                round_f16(&k[src.clone()], &mut lane.k[dst.clone()]);
                round_f16(&v[src], &mut lane.v[dst]);
            }
        }
    }

    /// Bytes of keys and values held: full-precision entries × head_dim × 2 × 4 bytes
    /// (f32 containers) plus the quantised groups' codes, minima and scales, over all
    /// lanes. The slot indices (4 bytes per entry, and per quantised row) are not
    /// counted, as before quantisation.
    pub fn memory_bytes(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| {
                2 * l.k.len() * std::mem::size_of::<f32>()
                    + l.groups
                        .iter()
                        .map(QuantGroup::payload_bytes)
                        .sum::<usize>()
            })
            .sum()
    }

    /// What [`Self::memory_bytes`] would be if full-precision entries were stored as
    /// true f16 (2 bytes per element) instead of f32 containers.
    pub fn memory_bytes_f16(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| {
                2 * l.k.len() * 2
                    + l.groups
                        .iter()
                        .map(QuantGroup::payload_bytes)
                        .sum::<usize>()
            })
            .sum()
    }

    /// Lane entries held quantised, over all lanes.
    pub fn quantized_entries(&self) -> usize {
        self.lanes.iter().map(|l| l.n_quant).sum()
    }

    /// Bytes the storage has allocated: key/value/slot buffers of every lane, the
    /// quantised groups and the positions (capacities, not lengths), i.e. what the
    /// process actually holds.
    pub fn allocated_bytes(&self) -> usize {
        let lanes: usize = self
            .lanes
            .iter()
            .map(|l| {
                (l.k.capacity() + l.v.capacity()) * std::mem::size_of::<f32>()
                    + l.slots.capacity() * std::mem::size_of::<u32>()
                    + l.groups.capacity() * std::mem::size_of::<QuantGroup>()
                    + l.groups
                        .iter()
                        .map(|g| g.allocated_bytes() - std::mem::size_of::<QuantGroup>())
                        .sum::<usize>()
            })
            .sum();
        lanes
            + self.positions.capacity() * std::mem::size_of::<usize>()
            + (self.remap.capacity() + self.entry_remap.capacity()) * std::mem::size_of::<u32>()
    }
}

/// `dst = f16(src)` as f32, as llama.cpp's default f16 cache stores it.
fn round_f16(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s).to_f32();
    }
}

#[cfg(test)]
mod tests;
