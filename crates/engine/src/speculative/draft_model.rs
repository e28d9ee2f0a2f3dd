//! The `draft` drafter: a smaller model with the target's tokenizer (Qwen2.5-Coder
//! 0.5B for 1.5B) proposes the draft from its own distributions.
//!
//! The draft model keeps its own KV cache in a [`Session`], which holds exactly the
//! tokens the target has committed (the prompt, the accepted tokens and the step's
//! root). Each step:
//!
//! 1. the cache is brought up to the context (the tokens accepted since the last
//!    step plus the new root, one batch: usually 1-2 tokens), which yields the
//!    draft's distribution after the root;
//! 2. a [`TreeGrower`] turns distributions into draft nodes: a chain that stops when
//!    the draft's confidence falls below `p_min`, or a DySpec tree grown by path
//!    probability under the node budget. Each round's new nodes are evaluated in one
//!    draft forward with a tree mask (each sees the context, its ancestors and
//!    itself), at positions `root + depth`;
//! 3. after verification ([`DraftModel::observe`]) the cache keeps the accepted path
//!    (the nodes the draft had evaluated) and drops every other node, so it again
//!    equals plain decoding of the committed tokens.

use model::{Batch, LoadedModel, LogitsFor};
use spec::{top_probs, GrowConfig, TokenTree, TreeGrower};

use crate::{EngineError, Result, Session};

/// Refuses a draft model that does not share the target's tokenizer: its token ids
/// would mean different text, and nothing it drafts could be verified. Compares the
/// vocabulary sizes (tokenizer and logit rows) and every token's spelling and type.
pub fn check_same_vocabulary(target: &LoadedModel, draft: &LoadedModel) -> Result<()> {
    let (t, d) = (&target.tokenizer, &draft.tokenizer);
    let (tv, dv) = (
        target.model.config.vocab_size,
        draft.model.config.vocab_size,
    );
    if t.vocab_size() != d.vocab_size() || tv != dv {
        return Err(EngineError::Invalid(format!(
            "the draft model's vocabulary differs from the target's: {} tokens ({dv} logits) \
             against {} ({tv}); a draft model must share the target's tokenizer",
            d.vocab_size(),
            t.vocab_size(),
        )));
    }
    let differs = (0..t.vocab_size() as u32).find(|&id| {
        t.token_vocab_text(id) != d.token_vocab_text(id) || t.token_type(id) != d.token_type(id)
    });
    if let Some(id) = differs {
        return Err(EngineError::Invalid(format!(
            "the draft model's tokenizer differs from the target's: token {id} is {:?} in the \
             target and {:?} in the draft model",
            t.token_vocab_text(id).unwrap_or_default(),
            d.token_vocab_text(id).unwrap_or_default(),
        )));
    }
    Ok(())
}

/// A draft model, its cache and the state of the current step's draft.
pub(crate) struct DraftModel<'d> {
    model: &'d LoadedModel,
    /// Created at the first use, with the target session's context size.
    session: Option<Session<'d>>,
    grower: TreeGrower,
    /// Draft-cache slot of each node of the current tree (`usize::MAX`: never
    /// evaluated); the root's is the last context slot.
    slots: Vec<usize>,
    /// The root's slot while a draft awaits [`observe`](Self::observe): the cache
    /// then holds tree nodes past the context.
    open: Option<usize>,
    /// Draft-model forward passes over tree nodes (the context syncs not counted).
    pub(crate) forwards: usize,
    // Scratch, reused across steps.
    nodes: Vec<usize>,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    mask: Vec<bool>,
    top: Vec<(u32, f32)>,
    keep: Vec<usize>,
}

impl<'d> DraftModel<'d> {
    pub(crate) fn new(model: &'d LoadedModel, grow: GrowConfig) -> Result<DraftModel<'d>> {
        grow.validate().map_err(EngineError::Invalid)?;
        Ok(DraftModel {
            model,
            session: None,
            grower: TreeGrower::new(grow),
            slots: Vec::new(),
            open: None,
            forwards: 0,
            nodes: Vec::new(),
            tokens: Vec::new(),
            positions: Vec::new(),
            mask: Vec::new(),
            top: Vec::new(),
            keep: Vec::new(),
        })
    }

    pub(crate) fn model(&self) -> &'d LoadedModel {
        self.model
    }

    /// The draft model's session (its cache holds the committed tokens between
    /// steps), once it has been used.
    pub(crate) fn session(&self) -> Option<&Session<'d>> {
        self.session.as_ref()
    }

    /// The session, mutable, with any unverified draft nodes dropped.
    pub(crate) fn session_mut(&mut self) -> Option<&mut Session<'d>> {
        self.drop_open_draft();
        self.session.as_mut()
    }

    /// Drops the nodes of a draft that was never verified (an error in between), so
    /// the session's cache again matches its tokens.
    fn drop_open_draft(&mut self) {
        if let (Some(root_slot), Some(session)) = (self.open.take(), self.session.as_mut()) {
            let (_, state, _, logits) = session.parts_mut();
            state.cache.truncate(root_slot + 1);
            logits.clear();
        }
    }

    /// Bytes of keys and values the draft model holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.session
            .as_ref()
            .map_or(0, |s| s.state().cache.memory_bytes())
    }

    /// Makes the draft cache hold exactly `context` (the common prefix is kept, the
    /// rest computed in one batch) and returns the number of tokens computed.
    pub(crate) fn sync(&mut self, context: &[u32], n_ctx: usize) -> Result<usize> {
        let model = self.model;
        if self.session.as_ref().is_none_or(|s| s.n_ctx() != n_ctx) {
            self.session = Some(Session::new(model, n_ctx)?);
            self.open = None;
        }
        self.drop_open_draft();
        let Some(session) = self.session.as_mut() else {
            unreachable!("the draft session was just created");
        };
        Ok(session.sync_prompt(context)?.computed)
    }

    /// Grows `tree` (holding only the root, the last token of `context`) by at most
    /// `budget` nodes, none deeper than `max_depth`.
    pub(crate) fn propose(
        &mut self,
        context: &[u32],
        n_ctx: usize,
        tree: &mut TokenTree,
        budget: usize,
        max_depth: usize,
    ) -> Result<()> {
        self.sync(context, n_ctx)?;
        let DraftModel {
            model,
            session,
            grower,
            slots,
            open,
            forwards,
            nodes,
            tokens,
            positions,
            mask,
            top,
            ..
        } = self;
        let Some(session) = session.as_mut() else {
            unreachable!("sync creates the draft session");
        };
        let (_, state, _, logits) = session.parts_mut();
        let vocab = model.model.config.vocab_size;
        let branch = grower.config().branch;
        let root_slot = state.cache.len() - 1;
        let root_pos = state.cache.positions()[root_slot];
        slots.clear();
        slots.push(root_slot);
        grower.begin(tree);
        top_probs(logits, branch, top);
        grower.offer(0, top);
        *open = Some(root_slot);
        loop {
            let new = grower.grow(tree, budget, max_depth);
            slots.resize(tree.len(), usize::MAX);
            if new.is_empty() || tree.n_draft() >= budget {
                break;
            }
            // Evaluate the new nodes whose children could still be drafted.
            nodes.clear();
            nodes.extend(new.filter(|&n| grower.wants_eval(tree, n, max_depth)));
            if nodes.is_empty() {
                continue;
            }
            let first = state.cache.len();
            for (j, &n) in nodes.iter().enumerate() {
                slots[n] = first + j;
            }
            tree.mask_rows(nodes, slots, first + nodes.len(), mask);
            tokens.clear();
            tokens.extend(nodes.iter().map(|&n| tree.token(n)));
            positions.clear();
            positions.extend(nodes.iter().map(|&n| root_pos + tree.depth(n)));
            let batch = Batch {
                tokens,
                positions,
                mask: Some(mask),
                logits: LogitsFor::All,
            };
            let out = model.model.forward(state, &batch, None)?;
            *forwards += 1;
            for (j, &n) in nodes.iter().enumerate() {
                top_probs(&out[j * vocab..(j + 1) * vocab], branch, top);
                grower.offer(n, top);
            }
        }
        Ok(())
    }

    /// The verification of the current draft: keeps the accepted path (`accepted`,
    /// root first) of the nodes the draft model evaluated, drops everything else, so
    /// the cache equals plain decoding of the context plus those tokens.
    pub(crate) fn observe(&mut self, tree: &TokenTree, accepted: &[usize]) {
        let Some(root_slot) = self.open.take() else {
            return;
        };
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let (_, state, cached, logits) = session.parts_mut();
        self.keep.clear();
        self.keep.extend(0..=root_slot);
        // A path's evaluated nodes are a prefix of it (children come from evaluated
        // parents), and their slots increase along it.
        for &node in accepted.iter().skip(1) {
            let slot = self.slots[node];
            if slot == usize::MAX {
                break;
            }
            self.keep.push(slot);
            cached.push(tree.token(node));
        }
        if self.keep.last() == Some(&(self.keep.len() - 1)) {
            state.cache.truncate(self.keep.len());
        } else {
            state.cache.retain_slots(&self.keep);
        }
        // The draft's logits after the kept path were not kept: the next sync
        // recomputes from the last kept token on.
        logits.clear();
    }
}
