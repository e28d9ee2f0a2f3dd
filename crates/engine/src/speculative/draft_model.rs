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

use model::LoadedModel;
use spec::{GrowConfig, TokenTree};

use super::grow::ModelGrow;

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
    /// The tree grower; knows each draft node's slot in the draft cache.
    grow: ModelGrow,
    /// The root's slot while a draft awaits [`observe`](Self::observe): the cache
    /// then holds tree nodes past the context.
    open: Option<usize>,
    /// Draft-model forward passes over tree nodes (the context syncs not counted).
    pub(crate) forwards: usize,
    keep: Vec<usize>,
}

impl<'d> DraftModel<'d> {
    pub(crate) fn new(model: &'d LoadedModel, grow: GrowConfig) -> Result<DraftModel<'d>> {
        Ok(DraftModel {
            model,
            session: None,
            grow: ModelGrow::new(grow)?,
            open: None,
            forwards: 0,
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
        let Some(session) = self.session.as_mut() else {
            unreachable!("sync creates the draft session");
        };
        let (_, state, _, logits) = session.parts_mut();
        let root_slot = state.cache.len() - 1;
        let root_pos = state.cache.positions()[root_slot];
        self.grow.begin(tree, root_slot, logits);
        self.open = Some(root_slot);
        self.forwards += self.grow.grow(
            &self.model.model,
            None,
            state,
            tree,
            budget,
            max_depth,
            root_pos,
        )?;
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
            let slot = self.grow.slot(node);
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
