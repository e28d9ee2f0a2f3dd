//! The decoder forward pass shared by Llama, Qwen2 and Gemma 3.
//!
//! One call processes a batch of tokens with explicit positions (a prompt chunk, one
//! decode step, or later a token tree) against a sequence's KV cache, and returns the
//! logits of the rows the caller asks for. The architectures differ only where
//! [`ModelConfig`] says so; each difference is one `if` with its reason beside it.
//!
//! Two implementations of the linear layers sit behind [`Kernels`]: the reference
//! (dequantise each weight row to f32, plain dot products, one thread) and the fast
//! path (activations quantised to the weight's dot-product format as ggml does, SIMD
//! integer dot products from `quant`, rows split over a thread pool). Tests hold them
//! to each other.

use crate::config::{Activation, ModelConfig};
use crate::kv_cache::quant as kv_quant;
use crate::kv_cache::{KvCache, KvLane};
use crate::ops;
use crate::threadpool::ThreadPool;
use crate::weights::{Matrix, ModelWeights};
use crate::{ModelError, Result};
use quant::GgmlType;

/// Which implementation runs the linear layers and attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Dequantise weights to f32; single-threaded; the readable reference.
    Reference,
    /// Quantised activations and SIMD block dot products on the thread pool.
    Fast,
}

/// Which rows of the batch need logits.
#[derive(Clone, Copy, Debug)]
pub enum LogitsFor<'a> {
    /// Only the last token (generation).
    Last,
    /// Every token (perplexity, speculative verification).
    All,
    /// These batch rows.
    Rows(&'a [usize]),
}

/// A batch of tokens for one sequence.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    /// RoPE position of each token.
    pub positions: &'a [usize],
    /// Optional visibility mask `[n_tokens, n_slots]` over the cache *after* this batch
    /// is appended (`true` = may attend). `None` means causal: token `i` sees every
    /// earlier slot and the batch's tokens up to itself.
    pub mask: Option<&'a [bool]>,
    pub logits: LogitsFor<'a>,
}

impl<'a> Batch<'a> {
    /// A plain causal batch; logits of the last token only.
    pub fn causal(tokens: &'a [u32], positions: &'a [usize]) -> Batch<'a> {
        Batch {
            tokens,
            positions,
            mask: None,
            logits: LogitsFor::Last,
        }
    }
}

/// Attention weights of one layer, handed to an [`AttentionObserver`].
pub struct AttentionWeights<'a> {
    pub layer: usize,
    pub n_tokens: usize,
    pub n_head: usize,
    /// Slots in the cache (after this batch was appended).
    pub n_slots: usize,
    /// Softmax weights `[n_tokens, n_head, n_slots]`; masked slots, and slots the
    /// head's cache lane no longer holds (after eviction), hold 0.
    pub weights: &'a [f32],
}

impl AttentionWeights<'_> {
    /// Weights of query `token`, head `head` over all slots.
    pub fn row(&self, token: usize, head: usize) -> &[f32] {
        let start = (token * self.n_head + head) * self.n_slots;
        &self.weights[start..start + self.n_slots]
    }
}

/// Receives per-layer, per-head attention weights (for KV eviction policies and
/// telemetry). The weights are only materialised when an observer is passed.
pub trait AttentionObserver {
    /// Whether this layer's weights are wanted (skipping saves the materialisation).
    fn wants_layer(&self, _layer: usize) -> bool {
        true
    }
    fn observe(&mut self, weights: &AttentionWeights<'_>);
}

/// Reusable buffers of the forward pass, so a decode step allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    acts: Vec<u8>,
    /// RoPE angles per row: `[n, head_dim / 2]`, global and local base.
    angles: Vec<(f32, f32)>,
    angles_local: Vec<(f32, f32)>,
    out_rows: Vec<usize>,
    logits: Vec<f32>,
    /// RoPE position of every batch row (all sequences).
    positions: Vec<usize>,
    /// First batch row of each sequence.
    row0: Vec<usize>,
    /// (first slot, slots after the batch) of each sequence's cache.
    slots: Vec<(usize, usize)>,
    /// Attention's query blocks of the current layer.
    blocks: Vec<QueryBlock>,
}

/// The forward pass's reusable buffers, for [`Model::forward_many`] (a scheduler keeps
/// one for all its sequences; [`SequenceState`] holds its own for [`Model::forward`]).
#[derive(Default)]
pub struct ForwardScratch(Scratch);

/// A sequence's state: its KV cache and the forward pass's scratch buffers.
pub struct SequenceState {
    pub cache: KvCache,
    scratch: ForwardScratch,
}

impl SequenceState {
    pub fn new(config: &ModelConfig, capacity: usize) -> SequenceState {
        SequenceState {
            cache: KvCache::new(config, capacity),
            scratch: ForwardScratch::default(),
        }
    }
}

/// One sequence's part of a [`Model::forward_many`] call.
pub struct SequenceBatch<'c, 'b> {
    pub cache: &'c mut KvCache,
    pub batch: Batch<'b>,
    pub observer: Option<&'c mut dyn AttentionObserver>,
}

/// Which batch rows one attention call serves: sequence `batch`'s tokens, stored from
/// row `row0` of the scratch's q/attn, against a cache of `n_slots` slots of which
/// the batch appended those from `first_slot`.
#[derive(Clone, Copy)]
struct AttentionRows<'a, 'b> {
    batch: &'a Batch<'b>,
    row0: usize,
    first_slot: usize,
    n_slots: usize,
}

/// Queries of one sequence that share a KV head: heads `heads` (one KV head's group,
/// or a single head) of batch tokens `tokens` of job `job`.
struct QueryBlock {
    job: usize,
    tokens: std::ops::Range<usize>,
    heads: std::ops::Range<usize>,
}

impl QueryBlock {
    /// (token, head) of each query, token-major.
    fn queries(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.tokens
            .clone()
            .flat_map(|i| self.heads.clone().map(move |h| (i, h)))
    }
}

/// Tokens per attention query block: with a GQA group of heads, 16 tokens give dozens
/// of queries per read of a key tile, and a 64-token prefill chunk still gives each
/// thread several blocks.
const ATTENTION_BLOCK_TOKENS: usize = 16;
/// Keys (and values) per tile: 64 rows of a 64-wide head are 16 KiB, well inside L1.
const ATTENTION_KEY_TILE: usize = 64;
/// From this many cache slots, a block takes a whole GQA group even when that leaves
/// threads idle: below it the keys stay in the CPU caches and balance matters more.
const SHARED_KV_MIN_SLOTS: usize = 1024;
/// Most queries in one attention block (their rows are held in stack arrays).
const MAX_BLOCK_QUERIES: usize = 128;

pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub kernels: Kernels,
    /// Fast kernels only: attention by blocks of queries sharing a KV head (default).
    /// `false` runs every (token, head) alone, the layout the blocks must reproduce
    /// bit for bit; for tests and measurements.
    pub attention_blocks: bool,
    pool: ThreadPool,
}

/// A mutable slice shared by the tasks of one parallel region, each writing a
/// disjoint set of indices.
#[derive(Clone, Copy)]
struct SharedOut<T = f32> {
    ptr: *mut T,
    len: usize,
}
// SAFETY: tasks write disjoint indices (asserted by construction at each use) and the
// region ends before the owning slice is used again.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    fn new(s: &mut [T]) -> SharedOut<T> {
        SharedOut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }
    /// # Safety
    /// No other task may access `start..start + n` during the region.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, n: usize) -> &mut [T] {
        assert!(start + n <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), n)
    }
}

/// Below this many rows the per-row steps between matmuls (norms, RoPE, the gated
/// activation, activation quantisation) run on the calling thread; from it on they are
/// split across the pool (a prefill's rows; a decode step has too few to pay for the
/// extra synchronisation).
const PARALLEL_ROWS: usize = 32;

impl Model {
    pub fn new(config: ModelConfig, weights: ModelWeights, n_threads: usize) -> Model {
        Model {
            config,
            weights,
            kernels: Kernels::Fast,
            attention_blocks: true,
            pool: ThreadPool::new(n_threads),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The sliding window of `layer` (Gemma 3's local layers), if it has one.
    fn window_of(&self, layer: usize) -> Option<usize> {
        let c = &self.config;
        if c.is_local_layer(layer) {
            c.sliding_window
        } else {
            None
        }
    }

    /// Runs `f(task)` for every task in `0..n_tasks` on the forward pass's thread pool
    /// (per-row work between passes, such as the statistics of a batch's logits rows).
    pub fn run_parallel(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.pool.run(n_tasks, f);
    }

    pub fn new_state(&self, capacity: usize) -> SequenceState {
        SequenceState::new(&self.config, capacity)
    }

    /// Runs the batch, appends its keys and values to the cache, and returns the
    /// logits `[n_requested, vocab]` of the requested rows, in the order requested.
    pub fn forward<'s>(
        &self,
        state: &'s mut SequenceState,
        batch: &Batch<'_>,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> Result<&'s [f32]> {
        let SequenceState { cache, scratch } = state;
        let mut seqs = [SequenceBatch {
            cache,
            batch: *batch,
            // Re-coerced so the trait object's lifetime can shrink to the cache borrow's.
            observer: observer.map(|o| o as &mut dyn AttentionObserver),
        }];
        self.run_layers(&mut seqs, &mut scratch.0, None)?;
        Ok(&scratch.0.logits)
    }

    /// Like [`Model::forward`], but runs only the layers whose `layers[il]` is true
    /// (self-speculative drafting skips some). Skipped layers leave the residual stream
    /// unchanged; their cache lanes get placeholder entries, so a state used with one
    /// set of layers must not later be used with more.
    pub fn forward_layers<'s>(
        &self,
        state: &'s mut SequenceState,
        batch: &Batch<'_>,
        layers: &[bool],
    ) -> Result<&'s [f32]> {
        if layers.len() != self.config.n_layer {
            return Err(ModelError::Input(format!(
                "layer mask has {} entries, the model has {} layers",
                layers.len(),
                self.config.n_layer
            )));
        }
        let SequenceState { cache, scratch } = state;
        let mut seqs = [SequenceBatch {
            cache,
            batch: *batch,
            observer: None,
        }];
        self.run_layers(&mut seqs, &mut scratch.0, Some(layers))?;
        Ok(&scratch.0.logits)
    }

    /// One forward pass over several sequences at once (continuous batching): every
    /// linear layer reads its weights once for all the sequences' tokens, attention
    /// runs per sequence against its own cache. Returns the requested logits rows of
    /// every sequence, sequence after sequence: `[sum_k n_requested_k, vocab]`.
    ///
    /// Each row's result is bit-identical to [`Model::forward`] on that sequence alone:
    /// every output element is one dot product computed in one task, and the one-row
    /// and multi-row kernels sum in the same order (tests/forward_many.rs holds this).
    pub fn forward_many<'s>(
        &self,
        scratch: &'s mut ForwardScratch,
        seqs: &mut [SequenceBatch<'_, '_>],
    ) -> Result<&'s [f32]> {
        self.run_layers(seqs, &mut scratch.0, None)?;
        Ok(&scratch.0.logits)
    }

    fn run_layers(
        &self,
        seqs: &mut [SequenceBatch<'_, '_>],
        s: &mut Scratch,
        layers: Option<&[bool]>,
    ) -> Result<()> {
        let c = &self.config;
        if seqs.is_empty() {
            return Err(ModelError::Input("no sequences in the batch".into()));
        }
        for seq in seqs.iter() {
            self.validate(seq.cache, &seq.batch)?;
        }
        let (e, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        // Rows of the batch: every sequence's tokens, concatenated.
        // row0[k]: first row of sequence k; n: all rows.
        s.row0.clear();
        s.positions.clear();
        for seq in seqs.iter() {
            s.row0.push(s.positions.len());
            s.positions.extend_from_slice(seq.batch.positions);
        }
        let n = s.positions.len();

        // Embeddings. x: [n, e]
        s.x.resize(n * e, 0.0);
        for (k, seq) in seqs.iter().enumerate() {
            for (i, &t) in seq.batch.tokens.iter().enumerate() {
                let r = s.row0[k] + i;
                let row = &mut s.x[r * e..(r + 1) * e];
                self.weights.token_embd.dequantize_row(t as usize, row)?;
                if let Some(scale) = c.embed_scale {
                    // Gemma scales embeddings by sqrt(n_embd) (in the model's dtype).
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            }
        }

        // Slots of each sequence's cache before and after this batch.
        s.slots.clear();
        for seq in seqs.iter_mut() {
            let first_slot = seq.cache.len();
            seq.cache.begin_append(seq.batch.positions);
            s.slots.push((first_slot, seq.cache.len()));
        }

        // RoPE angles of every row, once for all layers (and once more for the local
        // layers' base, where the model has them).
        let half = c.head_dim / 2;
        let any_local = (0..c.n_layer).any(|il| c.is_local_layer(il));
        for (table, base, wanted) in [
            (&mut s.angles, c.rope_base, true),
            (&mut s.angles_local, c.rope_base_local, any_local),
        ] {
            if !wanted {
                continue;
            }
            table.resize(n * half, (0.0, 0.0));
            for (i, &pos) in s.positions.iter().enumerate() {
                ops::rope_angles(pos, base, c.head_dim, &mut table[i * half..(i + 1) * half]);
            }
        }

        for (il, lw) in self.weights.layers.iter().enumerate() {
            if layers.is_some_and(|l| !l[il]) {
                continue;
            }
            // --- attention block ---
            // xn = rms_norm(x) * attn_norm
            s.xn.resize(n * e, 0.0);
            self.rms_norm_rows(&s.x, &lw.attn_norm, n, &mut s.xn);
            // q: [n, n_head, hd], k/v: [n, n_head_kv, hd]
            s.q.resize(n * qd, 0.0);
            s.k.resize(n * kvd, 0.0);
            s.v.resize(n * kvd, 0.0);
            self.linear_many(
                &s.xn,
                n,
                &mut s.acts,
                &mut [(&lw.wq, &mut s.q), (&lw.wk, &mut s.k), (&lw.wv, &mut s.v)],
            );
            if let (Some(bq), Some(bk), Some(bv)) = (&lw.bq, &lw.bk, &lw.bv) {
                add_bias(&mut s.q, bq);
                add_bias(&mut s.k, bk);
                add_bias(&mut s.v, bv);
            }
            if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                // Gemma 3 normalises each head of q and k before RoPE.
                ops::rms_norm_rows_in_place(&mut s.q, qn, c.rms_eps);
                ops::rms_norm_rows_in_place(&mut s.k, kn, c.rms_eps);
            }
            let local = c.is_local_layer(il);
            {
                // angles: [n, head_dim / 2], computed once per forward pass and base
                let table = if local { &s.angles_local } else { &s.angles };
                let (q, k) = (SharedOut::new(&mut s.q), SharedOut::new(&mut s.k));
                self.for_row_ranges(n, &|rows| {
                    for i in rows {
                        let angles = &table[i * half..(i + 1) * half];
                        // SAFETY: row i of q and k belongs to this task.
                        let (qi, ki) = unsafe { (q.slice(i * qd, qd), k.slice(i * kvd, kvd)) };
                        ops::apply_rope(qi, c.head_dim, angles, c.rope_style);
                        ops::apply_rope(ki, c.head_dim, angles, c.rope_style);
                    }
                });
            }

            s.attn.resize(n * qd, 0.0);
            for (k, seq) in seqs.iter_mut().enumerate() {
                let (r0, nk) = (s.row0[k], seq.batch.tokens.len());
                seq.cache.write(
                    il,
                    &s.k[r0 * kvd..(r0 + nk) * kvd],
                    &s.v[r0 * kvd..(r0 + nk) * kvd],
                );
            }
            let any_weights = seqs
                .iter()
                .any(|seq| seq.observer.as_ref().is_some_and(|o| o.wants_layer(il)));
            if seqs.len() > 1 && !any_weights && matches!(self.kernels, Kernels::Fast) {
                // Many sequences, nobody watching: one thread-pool region for all.
                let jobs: Vec<(&KvCache, AttentionRows)> = seqs
                    .iter()
                    .enumerate()
                    .map(|(k, seq)| {
                        let rows = AttentionRows {
                            batch: &seq.batch,
                            row0: s.row0[k],
                            first_slot: s.slots[k].0,
                            n_slots: s.slots[k].1,
                        };
                        (&*seq.cache, rows)
                    })
                    .collect();
                self.attention_many(&jobs, il, s);
            } else {
                for (k, seq) in seqs.iter_mut().enumerate() {
                    let (r0, nk) = (s.row0[k], seq.batch.tokens.len());
                    let (first_slot, n_slots) = s.slots[k];
                    let want_weights = seq.observer.as_ref().is_some_and(|o| o.wants_layer(il));
                    let rows = AttentionRows {
                        batch: &seq.batch,
                        row0: r0,
                        first_slot,
                        n_slots,
                    };
                    self.attention(seq.cache, il, &rows, want_weights, s);
                    if want_weights {
                        if let Some(obs) = seq.observer.as_deref_mut() {
                            obs.observe(&AttentionWeights {
                                layer: il,
                                n_tokens: nk,
                                n_head: c.n_head,
                                n_slots,
                                weights: &s.scores[..nk * c.n_head * n_slots],
                            });
                        }
                    }
                }
            }
            s.proj.resize(n * e, 0.0);
            self.linear_many(&s.attn, n, &mut s.acts, &mut [(&lw.wo, &mut s.proj)]);
            if let Some(w) = &lw.post_attn_norm {
                ops::rms_norm_rows_in_place(&mut s.proj, w, c.rms_eps);
            }
            add_in_place(&mut s.x, &s.proj);

            // --- feed-forward block ---
            self.rms_norm_rows(&s.x, &lw.ffn_norm, n, &mut s.xn);
            s.gate.resize(n * ff, 0.0);
            s.up.resize(n * ff, 0.0);
            self.linear_many(
                &s.xn,
                n,
                &mut s.acts,
                &mut [(&lw.w_gate, &mut s.gate), (&lw.w_up, &mut s.up)],
            );
            {
                let gate = SharedOut::new(&mut s.gate);
                let up = &s.up;
                self.for_row_ranges(n, &|rows| {
                    // SAFETY: each range's rows belong to one task.
                    let g = unsafe { gate.slice(rows.start * ff, rows.len() * ff) };
                    ops::gated_activation(g, &up[rows.start * ff..rows.end * ff], c.activation);
                });
            }
            self.linear_many(&s.gate, n, &mut s.acts, &mut [(&lw.w_down, &mut s.proj)]);
            if let Some(w) = &lw.post_ffn_norm {
                ops::rms_norm_rows_in_place(&mut s.proj, w, c.rms_eps);
            }
            add_in_place(&mut s.x, &s.proj);
        }

        // --- output: only the requested rows, sequence after sequence ---
        s.out_rows.clear();
        for (k, seq) in seqs.iter().enumerate() {
            let (r0, nk) = (s.row0[k], seq.batch.tokens.len());
            match seq.batch.logits {
                LogitsFor::Last => s.out_rows.push(r0 + nk - 1),
                LogitsFor::All => s.out_rows.extend(r0..r0 + nk),
                LogitsFor::Rows(rows) => s.out_rows.extend(rows.iter().map(|&r| r0 + r)),
            }
        }
        let m = s.out_rows.len();
        s.xn.resize(m * e, 0.0);
        for (j, &i) in s.out_rows.iter().enumerate() {
            ops::rms_norm(
                &s.x[i * e..(i + 1) * e],
                &self.weights.output_norm,
                c.rms_eps,
                &mut s.xn[j * e..(j + 1) * e],
            );
        }
        s.logits.resize(m * c.vocab_size, 0.0);
        self.linear_many(
            &s.xn[..m * e],
            m,
            &mut s.acts,
            &mut [(&self.weights.output, &mut s.logits)],
        );
        if let Some(cap) = c.final_logit_softcap {
            s.logits
                .iter_mut()
                .for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(())
    }

    /// `out[i] = rms_norm(x[i]) * w` for the `n` rows of `x` (`[n, n_embd]`).
    fn rms_norm_rows(&self, x: &[f32], w: &[f32], n: usize, out: &mut [f32]) {
        let (e, eps) = (self.config.n_embd, self.config.rms_eps);
        let dst = SharedOut::new(out);
        self.for_row_ranges(n, &|rows| {
            for i in rows {
                // SAFETY: row i belongs to this task.
                let o = unsafe { dst.slice(i * e, e) };
                ops::rms_norm(&x[i * e..(i + 1) * e], w, eps, o);
            }
        });
    }

    /// Runs `f` over row ranges covering `0..n`: in one piece on this thread below
    /// [`PARALLEL_ROWS`] rows (or with the reference kernels), else split across the
    /// pool. `f` must touch only its rows, so the results do not depend on the split.
    fn for_row_ranges(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        if n < PARALLEL_ROWS || matches!(self.kernels, Kernels::Reference) {
            f(0..n);
            return;
        }
        let n_tasks = (self.pool.n_threads() * 2).min(n);
        self.pool
            .run(n_tasks, &|t| f(t * n / n_tasks..(t + 1) * n / n_tasks));
    }

    fn validate(&self, cache: &KvCache, batch: &Batch<'_>) -> Result<()> {
        let n = batch.tokens.len();
        if n == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        if batch.positions.len() != n {
            return Err(ModelError::Input(format!(
                "{n} tokens but {} positions",
                batch.positions.len()
            )));
        }
        if let Some(&t) = batch
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {t} is outside the vocabulary ({} tokens)",
                self.config.vocab_size
            )));
        }
        let after = cache.len() + n;
        if after > cache.capacity() {
            return Err(ModelError::ContextFull {
                needed: after,
                capacity: cache.capacity(),
            });
        }
        if let Some(mask) = batch.mask {
            if mask.len() != n * after {
                return Err(ModelError::Input(format!(
                    "mask has {} entries, expected {n} x {after}",
                    mask.len()
                )));
            }
        }
        match batch.logits {
            LogitsFor::Rows(rows) if rows.iter().any(|&r| r >= n) => Err(ModelError::Input(
                "logits requested for a row outside the batch".into(),
            )),
            _ => Ok(()),
        }
    }

    /// `out_j = W_j · x` for several matrices that read the same input, in one
    /// parallel region (q/k/v; gate/up).
    // x: [n, cols] -> out_j: [n, rows_j]
    fn linear_many(
        &self,
        x: &[f32],
        n: usize,
        acts: &mut Vec<u8>,
        jobs: &mut [(&Matrix, &mut Vec<f32>)],
    ) {
        match self.kernels {
            Kernels::Reference => {
                for (w, out) in jobs.iter_mut() {
                    reference_matmul(w, &x[..n * w.cols], n, out);
                }
            }
            Kernels::Fast => self.fast_matmuls(x, n, acts, jobs),
        }
    }

    fn fast_matmuls(
        &self,
        x: &[f32],
        n: usize,
        acts: &mut Vec<u8>,
        jobs: &mut [(&Matrix, &mut Vec<f32>)],
    ) {
        // Quantise the input once per activation format the matrices need (usually one).
        let cols = jobs[0].0.cols;
        // (type, offset, row_bytes)
        let mut formats: Vec<(GgmlType, usize, usize)> = Vec::with_capacity(2);
        // Block scales as f32, per format that feeds an AMX tile kernel: (type, scales).
        let mut tile_scales: Vec<(GgmlType, Vec<f32>)> = Vec::new();
        acts.clear();
        for (w, _) in jobs.iter() {
            debug_assert_eq!(w.cols, cols);
            let ty = w.ty.vec_dot_type();
            if formats.iter().any(|f| f.0 == ty) {
                continue;
            }
            let row_bytes = ty.row_bytes(cols).expect("validated at load time");
            let offset = acts.len();
            acts.resize(offset + n * row_bytes, 0);
            let dst = SharedOut::new(&mut acts[offset..]);
            self.for_row_ranges(n, &|rows| {
                for i in rows {
                    // SAFETY: row i belongs to this task.
                    let d = unsafe { dst.slice(i * row_bytes, row_bytes) };
                    quant::quantize_row(ty, &x[i * cols..(i + 1) * cols], d)
                        .expect("row sizes match by construction");
                }
            });
            formats.push((ty, offset, row_bytes));
        }
        for (w, _) in jobs.iter() {
            let ty = w.ty.vec_dot_type();
            // (A task's row tile holds at most n rows: below the threshold no tile
            // kernel runs and no scales are needed.)
            if w.packed().is_some_and(|p| p.tiles_for(n.min(ROW_TILE)))
                && !tile_scales.iter().any(|t| t.0 == ty)
            {
                let &(_, offset, row_bytes) =
                    formats.iter().find(|f| f.0 == ty).expect("quantised above");
                let mut scales = Vec::new();
                quant::packed::activation_scales(
                    ty,
                    &acts[offset..offset + n * row_bytes],
                    n,
                    &mut scales,
                );
                tile_scales.push((ty, scales));
            }
        }
        let acts: &[u8] = acts;
        let tile_scales = &tile_scales;

        // Split every matrix into chunks of rows; one task per chunk.
        let total_rows: usize = jobs.iter().map(|(w, _)| w.rows).sum();
        let n_threads = self.pool.n_threads();
        // Whole groups of rows, so packed matrices split on group boundaries.
        let chunk = (total_rows / (n_threads * 16))
            .clamp(4, MAX_TASK_GROUPS * quant::packed::GROUP)
            .next_multiple_of(quant::packed::GROUP);
        let mut tasks: Vec<(usize, usize, usize)> =
            Vec::with_capacity(total_rows / chunk + jobs.len()); // (job, row0, row1)
        for (j, (w, _)) in jobs.iter().enumerate() {
            let mut r = 0;
            while r < w.rows {
                let r1 = (r + chunk).min(w.rows);
                tasks.push((j, r, r1));
                r = r1;
            }
        }
        let outs: Vec<SharedOut> = jobs.iter_mut().map(|(_, o)| SharedOut::new(o)).collect();
        let mats: Vec<&Matrix> = jobs.iter().map(|(w, _)| *w).collect();
        let formats = &formats;
        let run = |t: usize| {
            let (j, r0, r1) = tasks[t];
            let w = mats[j];
            let &(_, offset, row_bytes) = formats
                .iter()
                .find(|f| f.0 == w.ty.vec_dot_type())
                .expect("quantised above");
            let out = outs[j];
            // Activation rows in tiles of up to ROW_TILE; one code path for one and
            // many rows, as the kernels give a row the same bits either way.
            const TILE: usize = ROW_TILE;
            const GROUP: usize = quant::packed::GROUP;
            let act_row = |i: usize| &acts[offset + i * row_bytes..offset + (i + 1) * row_bytes];
            let mut a_rows: [&[u8]; TILE] = [&[]; TILE];
            let mut tiles = [[[0f32; GROUP]; GROUP]; MAX_TASK_GROUPS];
            for i0 in (0..n).step_by(TILE) {
                let m = (n - i0).min(TILE);
                for (k, a) in a_rows[..m].iter_mut().enumerate() {
                    *a = act_row(i0 + k);
                }
                match w.packed() {
                    // Rows r0..r1 are whole groups (chunks are multiples of GROUP and
                    // packed matrices have a multiple of GROUP rows).
                    Some(packed) if packed.tiles_for(m) => {
                        let ty = w.ty.vec_dot_type();
                        let scales = &tile_scales
                            .iter()
                            .find(|t| t.0 == ty)
                            .expect("computed above")
                            .1;
                        let per_row = scales.len() / n;
                        let (g0, g1) = (r0 / GROUP, r1 / GROUP);
                        packed.tile_dots(
                            g0,
                            &acts[offset + i0 * row_bytes..offset + (i0 + m) * row_bytes],
                            m,
                            &scales[i0 * per_row..(i0 + m) * per_row],
                            &mut tiles[..g1 - g0],
                        );
                        for (g, tile) in (g0..g1).zip(&tiles) {
                            for (k, v) in tile[..m].iter().enumerate() {
                                // SAFETY: rows g*GROUP.. of activation row i0 + k belong
                                // to this task alone.
                                unsafe { out.slice((i0 + k) * w.rows + g * GROUP, GROUP) }
                                    .copy_from_slice(v);
                            }
                        }
                    }
                    Some(packed) => {
                        let mut tile_out = [[0f32; GROUP]; TILE];
                        for g in r0 / GROUP..r1 / GROUP {
                            packed.group_dots(g, &a_rows[..m], &mut tile_out[..m]);
                            for (k, v) in tile_out[..m].iter().enumerate() {
                                // SAFETY: rows g*GROUP.. of activation row i0 + k belong
                                // to this task alone.
                                unsafe { out.slice((i0 + k) * w.rows + g * GROUP, GROUP) }
                                    .copy_from_slice(v);
                            }
                        }
                    }
                    None => {
                        let mut tile_out = [0f32; TILE];
                        for r in r0..r1 {
                            quant::vec_dot_multi(
                                w.ty,
                                w.cols,
                                w.row(r),
                                &a_rows[..m],
                                &mut tile_out[..m],
                            );
                            for (k, &v) in tile_out[..m].iter().enumerate() {
                                // SAFETY: element (i0 + k, r) belongs to this task alone.
                                unsafe { out.slice((i0 + k) * w.rows + r, 1)[0] = v };
                            }
                        }
                    }
                }
            }
        };
        self.pool.run(tasks.len(), &run);
    }

    /// Scaled dot-product attention of the batch's queries over the cache.
    /// With `keep_weights`, the softmax weights of every (token, head) are left in
    /// `s.scores` as `[n, n_head, n_slots]`.
    // s.q: [n, n_head, hd] -> s.attn: [n, n_head, hd]
    fn attention(
        &self,
        cache: &KvCache,
        layer: usize,
        rows: &AttentionRows<'_, '_>,
        keep_weights: bool,
        s: &mut Scratch,
    ) {
        if self.kernels == Kernels::Fast && self.attention_blocks {
            self.attention_blocked(&[(cache, *rows)], layer, keep_weights, s);
        } else {
            self.attention_by_item(cache, layer, rows, keep_weights, s);
        }
    }

    /// [`Model::attention`] one (token, head) item at a time: the reference layout
    /// that [`Model::attention_blocked`] reproduces bit for bit.
    // s.q: [n, n_head, hd] -> s.attn: [n, n_head, hd]
    fn attention_by_item(
        &self,
        cache: &KvCache,
        layer: usize,
        rows: &AttentionRows<'_, '_>,
        keep_weights: bool,
        s: &mut Scratch,
    ) {
        let c = &self.config;
        let n_items = rows.batch.tokens.len() * c.n_head;
        let n_threads = match self.kernels {
            Kernels::Reference => 1,
            Kernels::Fast => self.pool.n_threads(),
        };
        // One scores row per item when the weights are kept, else one per task.
        let n_tasks = if n_items == 1 {
            1
        } else {
            (n_threads * 4).min(n_items)
        };
        let n_slots = rows.n_slots;
        let score_rows = if keep_weights { n_items } else { n_tasks };
        s.scores.resize(score_rows * n_slots, 0.0);
        let scores = SharedOut::new(&mut s.scores);
        let attn = SharedOut::new(&mut s.attn);
        let q = &s.q;
        let run = |task: usize| {
            let items = (task * n_items / n_tasks)..((task + 1) * n_items / n_tasks);
            for item in items {
                let row = if keep_weights { item } else { task };
                // SAFETY: scores row `row` belongs to this task alone.
                let sc = unsafe { scores.slice(row * n_slots, n_slots) };
                let out_row = (rows.row0 + item / c.n_head) * c.n_head + item % c.n_head;
                // SAFETY: the attn segment of this item belongs to this task alone.
                let out = unsafe { attn.slice(out_row * c.head_dim, c.head_dim) };
                self.attention_item(cache, layer, rows, q, item, sc, out);
                if keep_weights {
                    let lane = cache.lane(layer, (item % c.n_head) / (c.n_head / c.n_head_kv));
                    if lane.len() < n_slots {
                        scatter_to_slots(sc, lane.slots());
                    }
                }
            }
        };
        match self.kernels {
            Kernels::Reference => (0..n_tasks).for_each(run),
            Kernels::Fast => self.pool.run(n_tasks, &run),
        }
    }

    /// [`Model::attention`] for several sequences at once, without keeping weights:
    /// every (sequence, token, head) item of all of them in one thread-pool region,
    /// instead of one region per sequence (a decode step of many sequences has few
    /// items each). Each item is computed exactly as in [`Model::attention`].
    // s.q: [n, n_head, hd] -> s.attn: [n, n_head, hd]
    fn attention_many(
        &self,
        jobs: &[(&KvCache, AttentionRows<'_, '_>)],
        layer: usize,
        s: &mut Scratch,
    ) {
        if self.attention_blocks {
            self.attention_blocked(jobs, layer, false, s);
            return;
        }
        let c = &self.config;
        // Items of all jobs, numbered job after job; item0[k]: first item of job k.
        let mut item0 = Vec::with_capacity(jobs.len() + 1);
        let mut n_items = 0;
        for (_, rows) in jobs {
            item0.push(n_items);
            n_items += rows.batch.tokens.len() * c.n_head;
        }
        item0.push(n_items);
        let max_slots = jobs.iter().map(|(_, r)| r.n_slots).max().unwrap_or(0);
        let n_tasks = (self.pool.n_threads() * 4).min(n_items).max(1);
        s.scores.resize(n_tasks * max_slots, 0.0);
        let scores = SharedOut::new(&mut s.scores);
        let attn = SharedOut::new(&mut s.attn);
        let q = &s.q;
        let run = |task: usize| {
            let items = (task * n_items / n_tasks)..((task + 1) * n_items / n_tasks);
            // The job of the first item; later items move forward through the jobs.
            let mut k = item0.partition_point(|&i0| i0 <= items.start) - 1;
            for global in items {
                while global >= item0[k + 1] {
                    k += 1;
                }
                let (cache, rows) = &jobs[k];
                let item = global - item0[k];
                // SAFETY: this task's scores row and this item's attn segment belong
                // to this task alone.
                let sc = unsafe { scores.slice(task * max_slots, rows.n_slots) };
                let out_row = (rows.row0 + item / c.n_head) * c.n_head + item % c.n_head;
                let out = unsafe { attn.slice(out_row * c.head_dim, c.head_dim) };
                self.attention_item(cache, layer, rows, q, item, sc, out);
            }
        };
        match self.kernels {
            Kernels::Reference => (0..n_tasks).for_each(run),
            Kernels::Fast => self.pool.run(n_tasks, &run),
        }
    }

    /// Attention by [`QueryBlock`]s: the queries of one block share a KV head's lane
    /// and read its keys and values a tile at a time for all of them, instead of
    /// once per query (the heads of a GQA group; the tokens of a prefill chunk or of
    /// a verification batch). Every (token, head) gets exactly
    /// [`Model::attention_item`]'s result: per query the same dot products, softmax
    /// and value sums in the same order. With `keep_weights` (one job only), the
    /// softmax weights are left in `s.scores` as `[n, n_head, n_slots]`.
    // s.q: [n, n_head, hd] -> s.attn: [n, n_head, hd]
    fn attention_blocked(
        &self,
        jobs: &[(&KvCache, AttentionRows<'_, '_>)],
        layer: usize,
        keep_weights: bool,
        s: &mut Scratch,
    ) {
        let c = &self.config;
        debug_assert!(!keep_weights || jobs.len() == 1);
        let group = c.n_head / c.n_head_kv;
        let n_threads = self.pool.n_threads();
        let max_slots = jobs.iter().map(|(_, r)| r.n_slots).max().unwrap_or(0);
        let token_blocks: usize = jobs
            .iter()
            .map(|(_, r)| r.batch.tokens.len().div_ceil(ATTENTION_BLOCK_TOKENS))
            .sum();
        // Too few blocks to keep the pool busy, over a short cache that stays in the
        // CPU caches anyway: one head per block, for balance.
        let few = token_blocks * c.n_head_kv < 2 * n_threads && max_slots < SHARED_KV_MIN_SLOTS;
        let heads_per_block = if few || group > MAX_BLOCK_QUERIES {
            1
        } else {
            group
        };
        let tokens_per_block =
            (MAX_BLOCK_QUERIES / heads_per_block).clamp(1, ATTENTION_BLOCK_TOKENS);
        let mut blocks = std::mem::take(&mut s.blocks);
        blocks.clear();
        for (job, (_, r)) in jobs.iter().enumerate() {
            let n = r.batch.tokens.len();
            for t0 in (0..n).step_by(tokens_per_block) {
                for h0 in (0..c.n_head).step_by(heads_per_block) {
                    blocks.push(QueryBlock {
                        job,
                        tokens: t0..(t0 + tokens_per_block).min(n),
                        heads: h0..h0 + heads_per_block,
                    });
                }
            }
        }
        let max_queries = tokens_per_block * heads_per_block;
        let n_tasks = (n_threads * 4).min(blocks.len()).max(1);
        // Scores rows: one per (token, head) when kept, else one per query of a task's
        // current block.
        let n_rows: usize = jobs
            .iter()
            .map(|(_, r)| r.batch.tokens.len())
            .sum::<usize>()
            * c.n_head;
        let n_score_rows = if keep_weights {
            n_rows
        } else {
            n_tasks * max_queries
        };
        let stride = max_slots;
        s.scores.resize(n_score_rows * stride, 0.0);
        let scores = SharedOut::new(&mut s.scores);
        let attn = SharedOut::new(&mut s.attn);
        let q = &s.q;
        let run = |task: usize| {
            let range = (task * blocks.len() / n_tasks)..((task + 1) * blocks.len() / n_tasks);
            // The block's scores rows and output segments (at most MAX_BLOCK_QUERIES).
            let mut sc_rows: [&mut [f32]; MAX_BLOCK_QUERIES] =
                std::array::from_fn(|_| <&mut [f32]>::default());
            let mut out_rows: [&mut [f32]; MAX_BLOCK_QUERIES] =
                std::array::from_fn(|_| <&mut [f32]>::default());
            for b in &blocks[range] {
                let (cache, rows) = &jobs[b.job];
                let nqr = b.tokens.len() * b.heads.len();
                let (sc, out) = (&mut sc_rows[..nqr], &mut out_rows[..nqr]);
                for (k, (i, h)) in b.queries().enumerate() {
                    let row = if keep_weights {
                        i * c.n_head + h
                    } else {
                        task * max_queries + k
                    };
                    let out_row = (rows.row0 + i) * c.n_head + h;
                    // SAFETY: this scores row and attn segment belong to this query
                    // alone: kept rows are per (token, head), unkept ones per task.
                    sc[k] = unsafe { scores.slice(row * stride, rows.n_slots) };
                    out[k] = unsafe { attn.slice(out_row * c.head_dim, c.head_dim) };
                }
                BLOCK_BUFFERS.with(|buf| {
                    let buf = &mut *buf.borrow_mut();
                    self.attention_block(cache, layer, rows, q, b, sc, out, buf);
                });
                if keep_weights {
                    let lane = cache.lane(layer, b.heads.start / group);
                    if lane.len() < rows.n_slots {
                        for row in sc.iter_mut() {
                            scatter_to_slots(row, lane.slots());
                        }
                    }
                }
            }
        };
        self.pool.run(n_tasks, &run);
        s.blocks = blocks;
    }

    /// The queries of one [`QueryBlock`], token-major: `sc[k]` (`[n_slots]`) gets
    /// query k's softmax weights by lane entry, `out[k]` (`[head_dim]`) its weighted
    /// sum of the values; each as [`Model::attention_item`] computes it.
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        cache: &KvCache,
        layer: usize,
        rows: &AttentionRows<'_, '_>,
        q: &[f32],
        block: &QueryBlock,
        sc: &mut [&mut [f32]],
        out: &mut [&mut [f32]],
        buf: &mut BlockBuffers,
    ) {
        let c = &self.config;
        let AttentionRows {
            batch,
            row0,
            first_slot,
            ..
        } = *rows;
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let window = self.window_of(layer);
        let visible = |i: usize, j: usize| visible(rows, cache.positions(), window, i, j);
        let lane = cache.lane(layer, block.heads.start / group);
        let (keys, values, slots) = (lane.keys(), lane.values(), lane.slots());
        let m = slots.len();
        let nq = lane.n_quantized();
        let n_queries = sc.len();
        let BlockBuffers {
            qh,
            runs,
            last_visible,
            quant: quant_buf,
        } = buf;
        // qh: [queries, hd], each query rounded to f16 as llama.cpp does.
        qh.clear();
        qh.resize(n_queries * hd, 0.0);
        // Runs of visible full-precision entries (query, start, end), entry indices
        // counted from `nq`; entries from last_visible[k] on are query k's future.
        runs.clear();
        last_visible.clear();
        last_visible.resize(n_queries, 0);
        for (k, (i, h)) in block.queries().enumerate() {
            let qrow = (row0 + i) * c.n_head + h;
            for (d, &v) in qh[k * hd..(k + 1) * hd]
                .iter_mut()
                .zip(&q[qrow * hd..(qrow + 1) * hd])
            {
                *d = half::f16::from_f32(v).to_f32();
            }
            if batch.mask.is_none() && window.is_none() {
                // Plain causal: slots increase along the lane, so the visible
                // entries are one run from the start; the rest is the future.
                let end = slots[nq..].partition_point(|&j| j as usize <= first_slot + i);
                if end > 0 {
                    runs.push((k, 0, end));
                }
                last_visible[k] = end;
                continue;
            }
            let mut e = 0;
            while e < m - nq {
                if !visible(i, slots[nq + e] as usize) {
                    sc[k][nq + e] = f32::NEG_INFINITY;
                    e += 1;
                    continue;
                }
                let mut end = e + 1;
                while end < m - nq && visible(i, slots[nq + end] as usize) {
                    end += 1;
                }
                runs.push((k, e, end));
                e = end;
                last_visible[k] = end;
            }
        }
        let end_all = last_visible.iter().copied().max().unwrap_or(0);
        // Scores, a tile of keys at a time for every query: the tile stays in L1.
        for t0 in (0..end_all).step_by(ATTENTION_KEY_TILE) {
            let t1 = (t0 + ATTENTION_KEY_TILE).min(end_all);
            for &(k, a, b) in runs.iter() {
                let (a, b) = (a.max(t0), b.min(t1));
                if a < b {
                    let qk = &qh[k * hd..(k + 1) * hd];
                    ops::dot_f32_rows(qk, &keys[a * hd..b * hd], &mut sc[k][nq + a..nq + b]);
                }
            }
        }
        for &(k, a, b) in runs.iter() {
            for s in &mut sc[k][nq + a..nq + b] {
                *s *= c.attn_scale;
            }
        }
        if nq > 0 {
            let first_token = block.tokens.start;
            let per_token = block.heads.len();
            let vis = |k: usize, s: usize| visible(first_token + k / per_token, s);
            quantized_scores(lane, qh, c.attn_scale, vis, sc, quant_buf);
        }
        for k in 0..n_queries {
            let sc = &mut *sc[k];
            let live = nq + last_visible[k];
            ops::softmax_in_place(&mut sc[..live]);
            sc[live..m].fill(0.0);
            out[k].fill(0.0);
        }
        // Weighted values, a tile at a time for every query, in entry order per query.
        for t0 in (0..end_all).step_by(ATTENTION_KEY_TILE) {
            for k in 0..n_queries {
                let t1 = (t0 + ATTENTION_KEY_TILE).min(last_visible[k]);
                if t0 < t1 {
                    let w = &sc[k][nq + t0..nq + t1];
                    ops::axpy_rows(w, &values[t0 * hd..t1 * hd], out[k]);
                }
            }
        }
        if nq > 0 {
            quantized_values(lane, sc, cache.quant().value_group, out, quant_buf);
        }
    }

    /// One (token, head) item of attention: `sc` (`[n_slots]`) gets the softmax
    /// weights by lane entry, `out` (`[head_dim]`) the weighted sum of the values.
    // q: [n, n_head, hd]; item = token * n_head + head
    #[allow(clippy::too_many_arguments)]
    fn attention_item(
        &self,
        cache: &KvCache,
        layer: usize,
        rows: &AttentionRows<'_, '_>,
        q: &[f32],
        item: usize,
        sc: &mut [f32],
        out: &mut [f32],
    ) {
        let c = &self.config;
        let row0 = rows.row0;
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let window = self.window_of(layer);
        let visible = |i: usize, j: usize| visible(rows, cache.positions(), window, i, j);
        let (i, h) = (item / c.n_head, item % c.n_head);
        // The lane of this head's KV head: its own set of kept slots. Entries
        // [0, nq) are quantised; keys/values hold the full-precision rest.
        let lane = cache.lane(layer, h / group);
        let (keys, values, slots) = (lane.keys(), lane.values(), lane.slots());
        let m = slots.len();
        let nq = lane.n_quantized();
        // llama.cpp's attention rounds q to f16 (its K cache is f16) before QK^T.
        let mut qh = [0f32; 512];
        let qh = &mut qh[..hd];
        let qrow = (row0 + i) * c.n_head + h;
        for (d, &v) in qh.iter_mut().zip(&q[qrow * hd..(qrow + 1) * hd]) {
            *d = half::f16::from_f32(v).to_f32();
        }
        // sc[e]: score of lane entry e ([m] of the [n_slots] row), scored a run of
        // visible entries at a time (the same per-key dot products as one by one).
        // Entries from `last_visible` on are all invisible (a causal batch's
        // future): their weights are exactly 0 and need no work.
        let mut e = 0;
        let mut last_visible = 0;
        while e < m - nq {
            if !visible(i, slots[nq + e] as usize) {
                sc[nq + e] = f32::NEG_INFINITY;
                e += 1;
                continue;
            }
            let mut end = e + 1;
            while end < m - nq && visible(i, slots[nq + end] as usize) {
                end += 1;
            }
            let run = &mut sc[nq + e..nq + end];
            ops::dot_f32_rows(qh, &keys[e * hd..end * hd], run);
            for s in run.iter_mut() {
                *s *= c.attn_scale;
            }
            e = end;
            last_visible = end;
        }
        if nq > 0 {
            let mut buf = QuantBuffers::default();
            let vis = |_, s| visible(i, s);
            quantized_scores(lane, qh, c.attn_scale, vis, &mut [&mut *sc], &mut buf);
        }
        let live = nq + last_visible;
        ops::softmax_in_place(&mut sc[..live]);
        sc[live..m].fill(0.0);
        out.fill(0.0);
        ops::axpy_rows(&sc[nq..live], &values[..last_visible * hd], out);
        if nq > 0 {
            let vg = cache.quant().value_group;
            quantized_values(
                lane,
                &[&mut *sc],
                vg,
                &mut [out],
                &mut QuantBuffers::default(),
            );
        }
    }
}

/// Whether query `i` of the batch may attend logical slot `j`: the batch's mask (or
/// causality), and a sliding `window` (a key further back than it is invisible).
fn visible(
    rows: &AttentionRows<'_, '_>,
    positions: &[usize],
    window: Option<usize>,
    i: usize,
    j: usize,
) -> bool {
    let batch = rows.batch;
    let causal = match batch.mask {
        Some(mask) => mask[i * rows.n_slots + j],
        None => j <= rows.first_slot + i,
    };
    causal
        && match window {
            Some(w) => batch.positions[i].saturating_sub(positions[j]) < w,
            None => true,
        }
}

/// `v` as `n` zeros, reusing its allocation.
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// Buffers of [`quantized_scores`] and [`quantized_values`], reused across calls.
#[derive(Default)]
struct QuantBuffers {
    qs: Vec<f32>,
    c0: Vec<f32>,
    kmin: Vec<f32>,
    kscale: Vec<f32>,
    codes: Vec<f32>,
    dots: Vec<f32>,
    params: Vec<f32>,
    weights: Vec<f32>,
}

/// Buffers of [`Model::attention_block`], one set per thread, reused so that a decode
/// step allocates nothing once they have grown.
#[derive(Default)]
struct BlockBuffers {
    qh: Vec<f32>,
    runs: Vec<(usize, usize, usize)>,
    last_visible: Vec<usize>,
    quant: QuantBuffers,
}

thread_local! {
    static BLOCK_BUFFERS: std::cell::RefCell<BlockBuffers> = std::cell::RefCell::default();
}

/// Rows of quantised codes unpacked at a time: 8192 floats (32 KiB) of f32 codes.
const QUANT_CHUNK_FLOATS: usize = 8192;

/// Attention scores of a lane's quantised entries for one or more queries (`qh`:
/// `[queries, hd]`; `sc[k]` entry-indexed, its first `n_quantized` written), computed on
/// the codes without dequantising the keys: with per-channel `min_d`, `scale_d`,
/// `q · k_t = Σ_d q_d min_d + Σ_d (q_d scale_d) code_td`. Each group costs one
/// `[head_dim]` prelude per query; its rows' codes are widened a chunk at a time, once
/// for all the queries, and dotted with each query's `q · scale` (the same dot product
/// per row as one row at a time). `visible(k, slot)`: whether query k sees the slot.
fn quantized_scores(
    lane: &KvLane,
    qh: &[f32],
    attn_scale: f32,
    visible: impl Fn(usize, usize) -> bool,
    sc: &mut [&mut [f32]],
    buf: &mut QuantBuffers,
) {
    let n_queries = sc.len();
    let hd = qh.len() / n_queries;
    let slots = lane.slots();
    let chunk_rows = (QUANT_CHUNK_FLOATS / hd).max(1);
    let QuantBuffers {
        qs,
        c0,
        kmin,
        kscale,
        codes,
        dots,
        ..
    } = buf;
    let (qs, c0) = (zeroed(qs, n_queries * hd), zeroed(c0, n_queries));
    let (kmin, kscale) = (zeroed(kmin, hd), zeroed(kscale, hd));
    let (codes, dots) = (zeroed(codes, chunk_rows * hd), zeroed(dots, chunk_rows));
    for g in lane.groups() {
        let (mn16, sc16) = g.key_params();
        for ((m, s), (&m16, &s16)) in kmin
            .iter_mut()
            .zip(kscale.iter_mut())
            .zip(mn16.iter().zip(sc16))
        {
            (*m, *s) = (m16.to_f32(), s16.to_f32());
        }
        for k in 0..n_queries {
            let (q, qs) = (&qh[k * hd..(k + 1) * hd], &mut qs[k * hd..(k + 1) * hd]);
            c0[k] = 0.0;
            for (((s, &q), &mn), &sc) in qs.iter_mut().zip(q).zip(kmin.iter()).zip(kscale.iter()) {
                *s = q * sc;
                c0[k] += q * mn;
            }
        }
        let rb = kv_quant::row_bytes(hd, g.bits());
        let all = g.key_codes_all();
        for (c, entries) in g.rows().chunks(chunk_rows).enumerate() {
            let (r0, n) = (c * chunk_rows, entries.len());
            let codes = &mut codes[..n * hd];
            kv_quant::unpack_rows_f32(&all[r0 * rb..(r0 + n) * rb], g.bits(), hd, codes);
            for k in 0..n_queries {
                ops::dot_f32_rows(&qs[k * hd..(k + 1) * hd], codes, &mut dots[..n]);
                for (&e, &d) in entries.iter().zip(dots.iter()) {
                    let e = e as usize;
                    sc[k][e] = if visible(k, slots[e] as usize) {
                        (c0[k] + d) * attn_scale
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
        }
    }
}

/// `out[k] += Σ_e p[k]_e v_e` over a lane's quantised entries for one or more queries
/// (`p[k]` entry-indexed): value rows are widened a chunk at a time, once for all the
/// queries, and accumulated with their per-channel-group `v = min_j + scale_j · code`
/// folded into the weight (`ops::affine_rows`).
fn quantized_values(
    lane: &KvLane,
    p: &[&mut [f32]],
    value_group: usize,
    out: &mut [&mut [f32]],
    buf: &mut QuantBuffers,
) {
    let hd = out[0].len();
    let chunk_rows = (QUANT_CHUNK_FLOATS / hd).max(1);
    let pb = 2 * hd / value_group;
    let QuantBuffers {
        codes,
        params,
        weights,
        ..
    } = buf;
    let codes = zeroed(codes, chunk_rows * hd);
    let (params, weights) = (zeroed(params, chunk_rows * pb), zeroed(weights, chunk_rows));
    for g in lane.groups() {
        let rb = kv_quant::row_bytes(hd, g.bits());
        let (all_params, all) = g.values_all();
        for (c, entries) in g.rows().chunks(chunk_rows).enumerate() {
            let (r0, n) = (c * chunk_rows, entries.len());
            let mut unpacked = false;
            for (pk, out) in p.iter().zip(out.iter_mut()) {
                for (w, &e) in weights.iter_mut().zip(entries) {
                    *w = pk[e as usize];
                }
                if weights[..n].iter().all(|&w| w == 0.0) {
                    continue;
                }
                if !unpacked {
                    let codes = &mut codes[..n * hd];
                    kv_quant::unpack_rows_f32(&all[r0 * rb..(r0 + n) * rb], g.bits(), hd, codes);
                    let src = &all_params[r0 * pb..(r0 + n) * pb];
                    for (d, s) in params[..n * pb].iter_mut().zip(src) {
                        *d = s.to_f32();
                    }
                    unpacked = true;
                }
                let rows = &codes[..n * hd];
                ops::affine_rows(&weights[..n], &params[..n * pb], value_group, rows, out);
            }
        }
    }
}

/// Moves a lane's weights `row[..slots.len()]` (one per entry) to the entries' logical
/// slots, zeroing the slots the lane does not hold.
// row: [n_slots], first slots.len() meaningful -> row: [n_slots]
fn scatter_to_slots(row: &mut [f32], slots: &[u32]) {
    // slots[e] >= e and increasing, so moving from the back never overwrites an entry
    // that is still to be read.
    let mut end = row.len();
    for (e, &s) in slots.iter().enumerate().rev() {
        let s = s as usize;
        let w = row[e];
        row[s + 1..end].fill(0.0);
        row[s] = w;
        end = s;
    }
    row[..end].fill(0.0);
}

/// Moves a cache's kept tokens to positions `0..len` inside the cache (StreamingLLM's
/// re-positioning), re-rotating each key: RoPE at `from` followed by a rotation of
/// `to - from` is RoPE at `to`, so a key needs no recomputation. The rotation runs in
/// f32 on the stored keys (not re-rounded to f16, so repeated shifts do not accumulate
/// rounding). The next token's position is then the cache length.
pub fn reposition_cache(config: &ModelConfig, cache: &mut KvCache) -> Result<()> {
    let hd = config.head_dim;
    let mut angles = vec![(0f32, 0f32); hd / 2];
    // Keys that move move by the same few distances: reuse the angles of the last one.
    let mut last: Option<(usize, usize, bool)> = None; // (from - to or to - from, base bits, back)
    cache.reposition(|layer, key, from, to| {
        let base = if config.is_local_layer(layer) {
            config.rope_base_local
        } else {
            config.rope_base
        };
        let (dist, back) = if from > to {
            (from - to, true)
        } else {
            (to - from, false)
        };
        let id = (dist, base.to_bits() as usize, back);
        if last != Some(id) {
            ops::rope_angles(dist, base, hd, &mut angles);
            if back {
                // The inverse rotation: the same angles, negated.
                angles.iter_mut().for_each(|a| a.1 = -a.1);
            }
            last = Some(id);
        }
        ops::apply_rope(key, hd, &angles, config.rope_style);
    })
}

/// The most 16-row groups of one matrix a matmul task covers (64 rows).
const MAX_TASK_GROUPS: usize = 4;

/// The most activation rows a matmul kernel call takes (an AMX tile's rows).
const ROW_TILE: usize = 16;

/// Reference linear layer: each weight row dequantised to f32, then f32 dot products.
// w: [rows, cols], x: [n, cols] -> out: [n, rows]
pub fn reference_matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    let mut row = vec![0f32; w.cols];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut row)
            .expect("validated at load time");
        for i in 0..n {
            out[i * w.rows + r] = ops::dot_f32(&row, &x[i * w.cols..(i + 1) * w.cols]);
        }
    }
}

// x: [n, d] += bias: [d]
fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }
}
