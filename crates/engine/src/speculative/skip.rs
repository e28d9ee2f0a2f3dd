//! The `skip` drafter: self-speculative decoding by layer skipping (Draft & Verify,
//! Zhang et al. 2023; SWIFT, Xia et al. 2024). The target model drafts for itself
//! with some of its layers skipped; the full model verifies as for every drafter, so
//! the output is unchanged.
//!
//! # Which cache the draft reads
//!
//! The draft shares the target's KV cache, read-only in effect:
//!
//! 1. Between steps the target's cache holds exactly the committed tokens, every
//!    layer computed by the full model. The draft runs the root (the token the full
//!    model just chose) and then its own tokens through the kept layers only
//!    ([`model::Model::forward_layers`]), *appended* to that cache: in a kept layer
//!    a draft token attends to the full model's keys and values of the context and to
//!    the draft's own keys and values of its ancestors; skipped layers leave the
//!    residual unchanged and write placeholder entries for the draft slots.
//! 2. Before verification the cache is truncated back to the committed tokens
//!    (`KvCache::truncate`), which removes every draft entry in every lane, the
//!    placeholders included, and touches nothing before them: the cache is then
//!    bit for bit what it was, and the verification pass appends the root and the
//!    draft with all layers as for any other drafter.
//!
//! Nothing computed with skipped layers is ever kept, so no full-model pass reads a
//! placeholder or a skip-model key, and the output is lossless whatever the draft.
//!
//! Why not the alternatives. Keeping the skip model's own entries for the accepted
//! tokens in the shared cache would be wrong: in a kept layer `l` the keys and values
//! depend on the residual stream, which differs once an earlier layer is skipped, so
//! they are not the full model's and the verification would read wrong context. A
//! second cache for the skip model (the `draft` drafter's design: synced to the
//! committed tokens, truncated after rejections) would be correct, but it costs a
//! prefill of the prompt through the kept layers, a catch-up pass after every step
//! and a second cache, and it drafts from a context the skip model computed itself,
//! whose errors accumulate over the whole text (not measured here). Here the draft is
//! the skip model *continuing the full model's context*, as in Draft & Verify: its
//! first token sees exactly the committed context's keys and values, and only the
//! draft's own tokens carry skip-model entries.
//!
//! The root costs one skip-model pass (one token), each further round one more; a
//! chain stops where the skip model's top-1 probability falls below `p_min`
//! (SpecDec++'s rule, `--draft-p-min`), or a DySpec tree is grown, as for `draft`
//! (the growth is shared: [`super::grow`]).
//!
//! # Which layers to skip
//!
//! Given explicitly (`--skip-layers 3,5,7`) or calibrated on a text at start
//! ([`calibrate`]): the full model reads the text once; a candidate set is scored by
//! one more pass of the text through the kept layers in which each token sees the
//! full model's cache of the tokens before it and itself (exactly the first draft
//! token after a committed context, for every position at once), counting how often
//! its argmax equals the full model's. A greedy search drops layers one at a time:
//! the first and last layers stay, every other layer is first scored alone, then
//! each round tries the `shortlist` least harmful remaining ones on top of the set so
//! far and keeps the best, until `max_ratio` of the layers are skipped or the
//! agreement would fall below `min_agreement`. The forward pass is deterministic, so
//! the same text gives the same set.

use std::time::Instant;

use model::{Batch, LoadedModel, LogitsFor, Model, SequenceState};
use sample::argmax;
use spec::{GrowConfig, TokenTree};

use super::grow::ModelGrow;
use crate::{EngineError, Result};

/// How the `skip` drafter chooses its layers.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipConfig {
    /// The layers to skip (0-based); `None`: calibrate.
    pub layers: Option<Vec<usize>>,
    /// Calibration: skip at most this share of the layers.
    pub max_ratio: f32,
    /// Calibration: stop when the draft's argmax would agree with the full model's on
    /// less than this share of the calibration text.
    pub min_agreement: f32,
    /// Calibration: candidates tried per round (the least harmful alone first); the
    /// number of layers gives the plain greedy search (slower).
    pub shortlist: usize,
    /// Calibration: tokens of the text used (its first ones); each candidate set costs
    /// a pass over them through the kept layers.
    pub max_tokens: usize,
}

impl Default for SkipConfig {
    fn default() -> SkipConfig {
        SkipConfig {
            layers: None,
            max_ratio: 0.5,
            min_agreement: 0.75,
            shortlist: 3,
            max_tokens: 128,
        }
    }
}

impl SkipConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.max_ratio) {
            return Err(EngineError::Invalid(format!(
                "the skip ratio must be in [0, 1), not {}",
                self.max_ratio
            )));
        }
        if !(0.0..=1.0).contains(&self.min_agreement) {
            return Err(EngineError::Invalid(format!(
                "the skip calibration's agreement floor must be in [0, 1], not {}",
                self.min_agreement
            )));
        }
        if self.max_tokens < WARMUP + 8 {
            return Err(EngineError::Invalid(format!(
                "the skip calibration needs at least {} tokens",
                WARMUP + 8
            )));
        }
        if self.shortlist == 0 {
            return Err(EngineError::Invalid(
                "the skip calibration's shortlist must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The layers the `skip` drafter skips, and how they were chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipPlan {
    /// Skipped layers, increasing.
    pub skipped: Vec<usize>,
    /// Layers of the model.
    pub n_layer: usize,
    /// Calibration: share of the calibration tokens whose first draft token (argmax
    /// with the layers skipped, after the full model's context) is the full model's
    /// argmax; `None` when the layers were given.
    pub agreement: Option<f32>,
    /// Calibration: tokens of the text, candidate sets scored and seconds spent.
    pub calibration_tokens: usize,
    pub evaluations: usize,
    pub secs: f64,
}

impl SkipPlan {
    /// The plan for explicitly given layers: each must exist, and at least one layer
    /// must run.
    pub fn given(layers: &[usize], n_layer: usize) -> Result<SkipPlan> {
        let mut skipped = layers.to_vec();
        skipped.sort_unstable();
        skipped.dedup();
        if let Some(&bad) = skipped.iter().find(|&&l| l >= n_layer) {
            return Err(EngineError::Invalid(format!(
                "cannot skip layer {bad}: the model has {n_layer} layers (0-{})",
                n_layer.saturating_sub(1)
            )));
        }
        if skipped.len() >= n_layer {
            return Err(EngineError::Invalid(format!(
                "cannot skip all {n_layer} layers: at least one must run"
            )));
        }
        Ok(SkipPlan {
            skipped,
            n_layer,
            agreement: None,
            calibration_tokens: 0,
            evaluations: 0,
            secs: 0.0,
        })
    }

    /// `mask[l]`: whether layer `l` runs in the draft.
    pub fn mask(&self) -> Vec<bool> {
        let mut m = vec![true; self.n_layer];
        for &l in &self.skipped {
            m[l] = false;
        }
        m
    }

    /// The skipped layers as `--skip-layers` takes them (`3,5,7`).
    pub fn layers_arg(&self) -> String {
        let v: Vec<String> = self.skipped.iter().map(usize::to_string).collect();
        v.join(",")
    }
}

impl std::fmt::Display for SkipPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipping {} of {} layers: {}",
            self.skipped.len(),
            self.n_layer,
            if self.skipped.is_empty() {
                "none".to_string()
            } else {
                self.layers_arg()
            }
        )?;
        if let Some(a) = self.agreement {
            write!(
                f,
                " (calibrated on {} tokens: {:.1}% of first draft tokens agree with the \
                 full model; {} sets scored in {:.1} s)",
                self.calibration_tokens,
                100.0 * a,
                self.evaluations,
                self.secs
            )?;
        }
        Ok(())
    }
}

/// The built-in calibration text: English prose and Python, like the prompts the
/// engine sees (written for this project; a few hundred tokens).
pub const CALIBRATION_TEXT: &str = "\
The river rose slowly through the spring, and by the end of April the lower fields \
were under water. The farmers moved their animals to the high ground near the church, \
where the old road runs along the ridge. Nobody in the village could remember a flood \
like it, although the parish records describe one in the winter of 1795, when the \
bridge was carried away and the mill stood idle for a whole year. When the water went \
down, it left a layer of fine grey silt over everything, and the harvest that summer \
was the best in living memory.

To read a file line by line in Python, open it in a with statement, which closes the \
file even if an exception is raised:

def count_words(path):
    \"\"\"Return a dictionary mapping each word in the file to its number of occurrences.\"\"\"
    counts = {}
    with open(path, encoding=\"utf-8\") as f:
        for line in f:
            for word in line.lower().split():
                word = word.strip(\".,;:!?\\\"'()\")
                if word:
                    counts[word] = counts.get(word, 0) + 1
    return counts


if __name__ == \"__main__\":
    import sys
    for word, n in sorted(count_words(sys.argv[1]).items(), key=lambda kv: -kv[1])[:10]:
        print(f\"{word}: {n}\")

The function above reads the whole file once and keeps only the counts, so its memory \
use grows with the number of distinct words rather than with the size of the file. \
Sorting the items by their negated count lists the most frequent words first.";

/// The calibration text as `model` tokenizes it (with its BOS token).
pub fn calibration_tokens(model: &LoadedModel) -> Result<Vec<u32>> {
    Ok(model.tokenizer.encode_prompt(CALIBRATION_TEXT)?)
}

/// Tokens at the start of the text that are context only (not scored).
const WARMUP: usize = 16;

/// Scores layer sets on one text: the full model's cache and argmax of the text, and
/// the scratch of the scoring pass.
struct Scorer<'a> {
    model: &'a Model,
    tokens: &'a [u32],
    state: SequenceState,
    /// The full model's argmax after each scored token.
    want: Vec<u32>,
    positions: Vec<usize>,
    mask: Vec<bool>,
    evaluations: usize,
}

impl<'a> Scorer<'a> {
    fn new(model: &'a Model, tokens: &'a [u32]) -> Result<Scorer<'a>> {
        let n = tokens.len();
        if n < WARMUP + 8 {
            return Err(EngineError::Invalid(format!(
                "the skip calibration text has {n} tokens; it needs at least {}",
                WARMUP + 8
            )));
        }
        let mut state = model.new_state(2 * n);
        let all: Vec<usize> = (0..n).collect();
        let batch = Batch {
            tokens,
            positions: &all,
            mask: None,
            logits: LogitsFor::All,
        };
        let vocab = model.config.vocab_size;
        let out = model.forward(&mut state, &batch, None)?;
        let want = (WARMUP..n)
            .map(|q| argmax(&out[q * vocab..(q + 1) * vocab]))
            .collect();
        // Row r (token q = WARMUP + r) sees the full model's slots before q and itself.
        let rows = n - WARMUP;
        let width = n + rows;
        let mut mask = vec![false; rows * width];
        for r in 0..rows {
            let row = &mut mask[r * width..(r + 1) * width];
            row[..WARMUP + r].fill(true);
            row[n + r] = true;
        }
        Ok(Scorer {
            model,
            tokens,
            state,
            want,
            positions: (WARMUP..n).collect(),
            mask,
            evaluations: 0,
        })
    }

    /// (argmax agreement, mean probability of the full model's argmax) of the first
    /// draft token with `layers` running, over the scored tokens.
    fn score(&mut self, layers: &[bool]) -> Result<(f32, f32)> {
        let n = self.tokens.len();
        let batch = Batch {
            tokens: &self.tokens[WARMUP..],
            positions: &self.positions,
            mask: Some(&self.mask),
            logits: LogitsFor::All,
        };
        let vocab = self.model.config.vocab_size;
        let out = self.model.forward_layers(&mut self.state, &batch, layers);
        let result = out.map(|out| {
            let mut agree = 0usize;
            let mut prob = 0.0f64;
            for (r, &want) in self.want.iter().enumerate() {
                let row = &out[r * vocab..(r + 1) * vocab];
                agree += usize::from(argmax(row) == want);
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
                prob += f64::from((row[want as usize] - max).exp()) / sum;
            }
            let rows = self.want.len();
            (agree as f32 / rows as f32, (prob / rows as f64) as f32)
        });
        self.state.cache.truncate(n);
        self.evaluations += 1;
        Ok(result?)
    }
}

/// Chooses the layers to skip on `tokens` (see the module documentation).
pub fn calibrate(model: &LoadedModel, tokens: &[u32], config: &SkipConfig) -> Result<SkipPlan> {
    config.validate()?;
    let start = Instant::now();
    let m = &model.model;
    let n_layer = m.config.n_layer;
    let tokens = &tokens[..tokens.len().min(config.max_tokens)];
    let mut scorer = Scorer::new(m, tokens)?;
    let max_skip = ((config.max_ratio * n_layer as f32) as usize).min(n_layer.saturating_sub(2));
    let mask_of = |skipped: &[usize]| {
        let mut mask = vec![true; n_layer];
        for &l in skipped {
            mask[l] = false;
        }
        mask
    };
    // Each candidate alone, least harmful first (ties: the lower layer).
    let mut order: Vec<((f32, f32), usize)> = Vec::new();
    if max_skip > 0 {
        for l in 1..n_layer - 1 {
            order.push((scorer.score(&mask_of(&[l]))?, l));
        }
    }
    let better = |a: (f32, f32), b: (f32, f32)| a.0 > b.0 || (a.0 == b.0 && a.1 > b.1);
    order.sort_by(|a, b| {
        if better(a.0, b.0) {
            std::cmp::Ordering::Less
        } else if better(b.0, a.0) {
            std::cmp::Ordering::Greater
        } else {
            a.1.cmp(&b.1)
        }
    });
    let mut skipped: Vec<usize> = Vec::new();
    let mut agreement = 1.0f32;
    while skipped.len() < max_skip {
        let mut best: Option<((f32, f32), usize)> = None;
        let tries: Vec<usize> = order
            .iter()
            .map(|&(_, l)| l)
            .filter(|l| !skipped.contains(l))
            .take(config.shortlist)
            .collect();
        for l in tries {
            let mut set = skipped.clone();
            set.push(l);
            // With one layer skipped, the ranking pass already scored it.
            let s = if skipped.is_empty() {
                order
                    .iter()
                    .find(|&&(_, x)| x == l)
                    .map(|&(s, _)| s)
                    .unwrap_or_default()
            } else {
                scorer.score(&mask_of(&set))?
            };
            if best.is_none_or(|(b, _)| better(s, b)) {
                best = Some((s, l));
            }
        }
        match best {
            Some((s, l)) if s.0 >= config.min_agreement => {
                skipped.push(l);
                agreement = s.0;
            }
            _ => break,
        }
    }
    skipped.sort_unstable();
    Ok(SkipPlan {
        skipped,
        n_layer,
        agreement: Some(agreement),
        calibration_tokens: tokens.len(),
        evaluations: scorer.evaluations,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The drafter: the layer mask and the growth of the current draft.
pub(crate) struct SkipDrafter {
    plan: SkipPlan,
    layers: Vec<bool>,
    grow: ModelGrow,
    /// Skip-model forward passes (the root's included).
    pub(crate) forwards: usize,
}

impl SkipDrafter {
    pub(crate) fn new(plan: SkipPlan, grow: GrowConfig) -> Result<SkipDrafter> {
        Ok(SkipDrafter {
            layers: plan.mask(),
            plan,
            grow: ModelGrow::new(grow)?,
            forwards: 0,
        })
    }

    pub(crate) fn plan(&self) -> &SkipPlan {
        &self.plan
    }

    /// Refuses a model with another number of layers than the plan's.
    pub(crate) fn check_model(&self, model: &Model) -> Result<()> {
        if model.config.n_layer != self.plan.n_layer {
            return Err(EngineError::Invalid(format!(
                "the skip drafter was set up for a model with {} layers, not {}",
                self.plan.n_layer, model.config.n_layer
            )));
        }
        Ok(())
    }

    /// Grows `tree` (holding only the root, not yet cached) by at most `budget`
    /// nodes, none deeper than `max_depth`, with the target's `state` as context.
    /// The cache is truncated back to its length on entry before returning, even on
    /// an error.
    pub(crate) fn propose(
        &mut self,
        model: &Model,
        state: &mut SequenceState,
        tree: &mut TokenTree,
        budget: usize,
        max_depth: usize,
    ) -> Result<()> {
        let base = state.cache.len();
        let result = self.draft(model, state, tree, budget, max_depth, base);
        // Drop every draft entry: the cache is again exactly the committed tokens.
        state.cache.truncate(base);
        result
    }

    fn draft(
        &mut self,
        model: &Model,
        state: &mut SequenceState,
        tree: &mut TokenTree,
        budget: usize,
        max_depth: usize,
        base: usize,
    ) -> Result<()> {
        let root_pos = state.cache.next_position();
        let root = [tree.token(0)];
        let pos = [root_pos];
        let logits = model.forward_layers(state, &Batch::causal(&root, &pos), &self.layers)?;
        self.forwards += 1;
        self.grow.begin(tree, base, logits);
        self.forwards += self.grow.grow(
            model,
            Some(&self.layers),
            state,
            tree,
            budget,
            max_depth,
            root_pos,
        )?;
        Ok(())
    }
}
