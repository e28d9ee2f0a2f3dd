//! Byte-level probabilities from a loaded model: the `bytelevel` crate's [`TokenLm`]
//! oracle over the model's forward pass, and its [`Vocabulary`] from the tokenizer.
//!
//! * [`model_vocabulary`] takes each token's bytes from
//!   [`model::Tokenizer::token_bytes`] (the function the compression codec uses:
//!   byte-level BPE mapped back to raw bytes, `<0xNN>` byte tokens as that byte, SPM's
//!   `▁` as a space). Only normal and byte tokens are text; control, user-defined,
//!   unknown and unused tokens get no bytes, and the end-of-generation tokens end the
//!   stream. The bytes are the tokens' own: with an SPM tokenizer that adds a space
//!   prefix, the stream of `Hello` is ` Hello` (the space [`model::Tokenizer::decode`]
//!   strips is part of the first token).
//! * [`ModelLm`] answers `next_logits_batch(contexts)` (all the new tokenisations of
//!   one byte) with one forward pass over one KV cache holding a token tree: every
//!   evaluated token is a slot whose parent is the slot before it, and a context runs
//!   only the tokens past its longest cached path, each attending to its own ancestors
//!   through the forward pass's visibility mask. Tokenisations that
//!   diverged long ago stay cached side by side (re-running a diverged context from
//!   its fork would cost a long prefill per call). After each byte, `bytelevel` names
//!   the sequences still in play and the slots off their paths are dropped
//!   (amortised: when the tree has doubled).
//! * [`ByteScorer`] puts them together: `ByteScorer::new(&loaded, prune, max_tokens)`.

use std::collections::HashMap;
use std::error::Error as StdError;

use bytelevel::Result;
use model::tokenizer::TokenType;
use model::{Batch, LoadedModel, LogitsFor, Model, ModelError, SequenceState};

/// Re-exported so callers need not name the `bytelevel` crate.
pub use bytelevel::{
    ByteDistribution, ByteLevel, ByteLevelError, ByteLevelStats, Prune, TokenLm, Vocabulary,
};

/// The model's vocabulary as bytes: `config.vocab_size` entries (ids past the tokenizer's
/// table, padding, have no bytes); end tokens = the end-of-generation set.
pub fn model_vocabulary(loaded: &LoadedModel) -> Result<Vocabulary> {
    let tok = &loaded.tokenizer;
    let n = loaded.model.config.vocab_size;
    let pieces: Vec<Vec<u8>> = (0..n)
        .map(|id| {
            let id = id as u32;
            match tok.token_type(id) {
                // User-defined tokens are text too: Gemma 3 marks its newline and
                // whitespace-run tokens so (without them a "\n" could only be
                // spelled by the byte token <0x0A>, ~45 bits dearer).
                Some(TokenType::Normal | TokenType::Byte | TokenType::UserDefined) => {
                    tok.token_bytes(id)
                }
                _ => Vec::new(),
            }
        })
        .collect();
    let ends: Vec<u32> = tok
        .end_of_generation_ids()
        .into_iter()
        .filter(|&t| (t as usize) < n)
        .collect();
    Vocabulary::new(pieces, ends)
}

/// No parent: the slot of the start token.
const ROOT: u32 = u32::MAX;

/// The token oracle over a model, with a KV cache that holds a token tree (see the
/// module documentation). Every context starts with `start` (BOS, or EOS for models
/// without one, as documents follow the previous document's EOS in training).
pub struct ModelLm<'m> {
    model: &'m Model,
    state: SequenceState,
    /// Cache slot `i` holds token `slots[i].0` whose parent is slot `slots[i].1`.
    slots: Vec<(u32, u32)>,
    /// `(parent slot, token)` to the slot holding that token after that parent.
    children: HashMap<(u32, u32), u32>,
    start: u32,
    /// Most slots the cache may hold.
    capacity: usize,
    /// Forget slots off the live paths once the cache holds more than this ...
    gc_at: usize,
    /// ... which never falls below this.
    gc_floor: usize,
    positions: Vec<usize>,
    mask: Vec<bool>,
    /// Tokens run through the model (a measure of the reuse).
    pub tokens_evaluated: u64,
    pub forward_calls: u64,
}

impl<'m> ModelLm<'m> {
    /// `max_context`: the longest context (tokens, without `start`) it will be asked
    /// for.
    pub fn new(loaded: &'m LoadedModel, max_context: usize) -> Result<ModelLm<'m>> {
        let tok = &loaded.tokenizer;
        let start = tok.bos_id().or(tok.eos_id()).ok_or_else(|| {
            ByteLevelError::Vocabulary(
                "the model has neither a BOS nor an EOS token to start from".into(),
            )
        })?;
        let longest = max_context + 1;
        let n_ctx = loaded.model.config.context_length;
        if longest > n_ctx {
            return Err(ByteLevelError::Model(
                format!("{longest} tokens of context needed, the model's context is {n_ctx}")
                    .into(),
            ));
        }
        // Room for several diverging tokenisations; when the tree outgrows it, the
        // cache restarts from the requested context alone.
        let capacity = 4 * longest + 1024;
        Ok(ModelLm {
            model: &loaded.model,
            state: loaded.model.new_state(capacity),
            slots: Vec::new(),
            children: HashMap::new(),
            start,
            capacity,
            gc_at: 1024,
            gc_floor: 1024,
            positions: Vec::new(),
            mask: Vec::new(),
            tokens_evaluated: 0,
            forward_calls: 0,
        })
    }

    /// Collects slots off the live paths once the cache holds more than `slots` (it
    /// then doubles the threshold); 1024 by default. Tests use a small one.
    pub fn with_gc_threshold(mut self, slots: usize) -> Self {
        self.gc_at = slots;
        self.gc_floor = slots;
        self
    }

    /// Slots currently cached (tree nodes).
    pub fn cached_slots(&self) -> usize {
        self.slots.len()
    }

    fn clear(&mut self) {
        self.state.cache.clear();
        self.slots.clear();
        self.children.clear();
    }

    /// The slot of the longest cached path along `[start] + context`, short of its
    /// last token (always run: its logits are the answer), and that path's length.
    fn cached_path(&self, context: &[u32]) -> (u32, usize) {
        let mut parent = ROOT;
        let mut matched = 0;
        let tokens = std::iter::once(self.start).chain(context.iter().copied());
        for t in tokens.take(context.len()) {
            match self.children.get(&(parent, t)) {
                Some(&slot) => {
                    parent = slot;
                    matched += 1;
                }
                None => break,
            }
        }
        (parent, matched)
    }

    /// Logits after each context, row after row, from one forward pass: every
    /// context's uncached tokens are appended to the tree, each seeing its ancestors.
    fn logits_batch(&mut self, contexts: &[&[u32]], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let needed = |me: &Self| -> usize {
            contexts
                .iter()
                .map(|c| c.len() + 1 - me.cached_path(c).1)
                .sum()
        };
        if self.slots.len() + needed(self) > self.capacity {
            self.clear();
            if needed(self) > self.capacity {
                // Too many for one pass even in an empty cache: one at a time.
                out.clear();
                let mut row = Vec::new();
                for c in contexts {
                    self.logits_batch(&[c], &mut row)?;
                    out.extend_from_slice(&row);
                }
                return Ok(());
            }
        }
        let first = self.slots.len();
        let mut tokens = Vec::new();
        self.positions.clear();
        let mut rows = Vec::with_capacity(contexts.len());
        for c in contexts {
            // Later contexts may reuse slots an earlier one just added.
            let (mut parent, matched) = self.cached_path(c);
            for i in matched..=c.len() {
                let t = if i == 0 { self.start } else { c[i - 1] };
                let slot = self.slots.len() as u32;
                self.slots.push((t, parent));
                self.children.insert((parent, t), slot);
                tokens.push(t);
                self.positions.push(i);
                parent = slot;
            }
            rows.push(parent as usize - first);
        }
        let n_slots = self.slots.len();
        self.mask.clear();
        self.mask.resize(tokens.len() * n_slots, false);
        for (r, row) in self.mask.chunks_exact_mut(n_slots).enumerate() {
            let mut a = (first + r) as u32;
            while a != ROOT {
                row[a as usize] = true;
                a = self.slots[a as usize].1;
            }
        }
        let batch = Batch {
            tokens: &tokens,
            positions: &self.positions,
            mask: Some(&self.mask),
            logits: LogitsFor::Rows(&rows),
        };
        let logits = match self.model.forward(&mut self.state, &batch, None) {
            Ok(l) => l,
            Err(e) => {
                // The cache may hold part of the batch: forget it all.
                self.clear();
                return Err(e);
            }
        };
        self.tokens_evaluated += tokens.len() as u64;
        self.forward_calls += 1;
        out.clear();
        out.extend_from_slice(logits);
        Ok(())
    }

    /// Keeps only the slots on the paths of `live` contexts (compacting the cache).
    fn retain_paths(&mut self, live: &[&[u32]]) {
        let mut keep = vec![false; self.slots.len()];
        for ctx in live {
            let mut parent = ROOT;
            for t in std::iter::once(self.start).chain(ctx.iter().copied()) {
                match self.children.get(&(parent, t)) {
                    Some(&slot) => {
                        keep[slot as usize] = true;
                        parent = slot;
                    }
                    None => break,
                }
            }
        }
        let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
        if kept.len() == self.slots.len() {
            return;
        }
        // Parents come before children, so their new indices are known in time.
        let mut new_index = vec![ROOT; self.slots.len()];
        let mut slots = Vec::with_capacity(kept.len());
        self.children.clear();
        for (new, &old) in kept.iter().enumerate() {
            new_index[old] = new as u32;
            let (t, p) = self.slots[old];
            let p = if p == ROOT {
                ROOT
            } else {
                new_index[p as usize]
            };
            slots.push((t, p));
            self.children.insert((p, t), new as u32);
        }
        self.state.cache.retain_slots(&kept);
        self.slots = slots;
    }
}

impl TokenLm for ModelLm<'_> {
    fn next_logits(
        &mut self,
        context: &[u32],
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), Box<dyn StdError + Send + Sync>> {
        self.logits_batch(&[context], out).map_err(|e| e.into())
    }

    fn next_logits_batch(
        &mut self,
        contexts: &[&[u32]],
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), Box<dyn StdError + Send + Sync>> {
        self.logits_batch(contexts, out).map_err(|e| e.into())
    }

    fn retain(&mut self, live: &[&[u32]]) {
        if self.slots.len() > self.gc_at {
            self.retain_paths(live);
            // Collect again once the tree has doubled, so the work stays amortised.
            self.gc_at = (2 * self.slots.len()).max(self.gc_floor);
        }
    }
}

/// Byte-level scoring of a model: [`ByteLevel`] over [`ModelLm`].
pub struct ByteScorer<'m> {
    inner: ByteLevel<'m, ModelLm<'m>>,
}

impl<'m> ByteScorer<'m> {
    /// `vocab` from [`model_vocabulary`] (built once, kept by the caller);
    /// `max_tokens`: longest token context, at most the number of bytes to be pushed.
    pub fn new(
        loaded: &'m LoadedModel,
        vocab: &'m Vocabulary,
        prune: Prune,
        max_tokens: usize,
    ) -> Result<ByteScorer<'m>> {
        let lm = ModelLm::new(loaded, max_tokens)?;
        let inner = ByteLevel::new(vocab, lm, prune)?;
        Ok(ByteScorer { inner })
    }

    pub fn distribution(&self) -> ByteDistribution {
        self.inner.distribution()
    }

    /// Appends a byte; returns `ln P(byte | prefix)`.
    pub fn push(&mut self, b: u8) -> Result<f64> {
        self.inner.push(b)
    }

    pub fn prefix(&self) -> &[u8] {
        self.inner.prefix()
    }

    /// Bounds on `ln P(prefix)` (see [`ByteLevel::log_prefix_bounds`]).
    pub fn log_prefix_bounds(&self) -> (f64, f64) {
        self.inner.log_prefix_bounds()
    }

    pub fn stats(&self) -> ByteLevelStats {
        self.inner.stats()
    }

    pub fn lm(&self) -> &ModelLm<'m> {
        self.inner.lm()
    }
}
