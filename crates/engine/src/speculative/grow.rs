//! Growing a draft from a model's own distributions: shared by the `draft` drafter (a
//! smaller model, all its layers) and the `skip` drafter (the target model with some
//! layers skipped).
//!
//! A [`TreeGrower`] decides which nodes to add (a chain under SpecDec++'s `p_min`
//! stopping rule, or a DySpec tree by path probability); each round's new nodes that
//! could still get children are evaluated in one forward pass with a tree mask (each
//! sees the cache before the root, the root, its other ancestors and itself), at
//! positions `root + depth`. The caller owns the cache: the evaluated nodes are left
//! in it at the slots [`ModelGrow::slot`] reports.

use model::{Batch, LogitsFor, Model, SequenceState};
use spec::{top_probs, GrowConfig, TokenTree, TreeGrower};

use crate::{EngineError, Result};

/// The tree grower and the scratch of one draft.
pub(crate) struct ModelGrow {
    grower: TreeGrower,
    /// Cache slot of each node of the current tree (`usize::MAX`: never evaluated);
    /// the root's comes first.
    slots: Vec<usize>,
    // Scratch, reused across steps.
    nodes: Vec<usize>,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    mask: Vec<bool>,
    top: Vec<(u32, f32)>,
}

impl ModelGrow {
    pub(crate) fn new(grow: GrowConfig) -> Result<ModelGrow> {
        grow.validate().map_err(EngineError::Invalid)?;
        Ok(ModelGrow {
            grower: TreeGrower::new(grow),
            slots: Vec::new(),
            nodes: Vec::new(),
            tokens: Vec::new(),
            positions: Vec::new(),
            mask: Vec::new(),
            top: Vec::new(),
        })
    }

    /// The cache slot of `node` in the current draft (`usize::MAX`: not evaluated).
    pub(crate) fn slot(&self, node: usize) -> usize {
        self.slots.get(node).copied().unwrap_or(usize::MAX)
    }

    /// Starts a draft below the root of `tree` (which holds only the root), cached at
    /// `root_slot`, from the model's distribution after it (`root_logits`).
    pub(crate) fn begin(&mut self, tree: &mut TokenTree, root_slot: usize, root_logits: &[f32]) {
        self.slots.clear();
        self.slots.push(root_slot);
        self.grower.begin(tree);
        top_probs(root_logits, self.grower.config().branch, &mut self.top);
        self.grower.offer(0, &self.top);
    }

    /// Grows `tree` by at most `budget` nodes, none deeper than `max_depth`, running
    /// `model` (only the layers `layers` marks, when given) on `state`, whose cache
    /// ends with the root at position `root_pos`. Returns the forward passes run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grow(
        &mut self,
        model: &Model,
        layers: Option<&[bool]>,
        state: &mut SequenceState,
        tree: &mut TokenTree,
        budget: usize,
        max_depth: usize,
        root_pos: usize,
    ) -> Result<usize> {
        let ModelGrow {
            grower,
            slots,
            nodes,
            tokens,
            positions,
            mask,
            top,
        } = self;
        let vocab = model.config.vocab_size;
        let branch = grower.config().branch;
        let mut forwards = 0;
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
            let out = match layers {
                Some(l) => model.forward_layers(state, &batch, l)?,
                None => model.forward(state, &batch, None)?,
            };
            forwards += 1;
            for (j, &n) in nodes.iter().enumerate() {
                top_probs(&out[j * vocab..(j + 1) * vocab], branch, top);
                grower.offer(n, top);
            }
        }
        Ok(forwards)
    }
}
