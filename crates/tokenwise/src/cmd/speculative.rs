//! `--speculative` and the drafter knobs, shared by `generate` (flattened into its
//! arguments) and `bench spec`.

use anyhow::{bail, Context, Result};
use engine::speculative::{NgramAdaptiveConfig, SkipConfig};
use engine::{DraftModelConfig, SpeculativeConfig, SpeculativeMethod, Speculator};
use model::LoadedModel;

use crate::models;

#[derive(clap::Args, Clone, Debug)]
pub struct SpeculativeArgs {
    /// Lossless speculative decoding (any sampler; the output equals plain decoding
    /// with the same seed): none, lookup (prompt lookup: copy what followed the last
    /// n-gram earlier in the text), recycle (Token Recycling: the model's own
    /// runners-up from earlier steps), ngram-adaptive (ADED: an online tri-gram table
    /// over the text and the model's verified distributions, drafted by path
    /// probability), draft (a smaller model with the same tokenizer, --draft-model) or
    /// skip (the model itself with some layers skipped, --skip-layers or calibrated at
    /// start). The output is unchanged.
    #[arg(long, value_name = "METHOD", default_value = "none")]
    pub speculative: String,
    #[command(flatten)]
    pub draft: DraftArgs,
}

/// The drafter knobs (also used by `bench spec`, which runs several methods).
#[derive(clap::Args, Clone, Debug)]
pub struct DraftArgs {
    /// Most draft tokens verified per step.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub draft_max: usize,
    /// Keep the draft budget at --draft-max instead of shrinking it (down to plain
    /// decoding) when few drafts are accepted.
    #[arg(long)]
    pub draft_fixed: bool,
    /// Cost of verifying one draft token, relative to a plain decoding step: the
    /// adaptive budget shrinks while less than COST is accepted per drafted token.
    /// Default: measured while generating.
    #[arg(long, value_name = "COST")]
    pub draft_cost: Option<f64>,
    /// lookup: longest n-gram to match (shorter ones are tried when it has no match).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub lookup_ngram: usize,
    /// lookup: earlier matches merged into the draft tree.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub lookup_branches: usize,
    /// recycle: successors remembered per token (1-8).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub recycle_k: usize,
    /// ngram-adaptive: draft a node only while its path probability (the product of
    /// the tri-gram table's probabilities from the root) is at least P.
    #[arg(long, value_name = "P", default_value_t = NgramAdaptiveConfig::default().min_path_prob)]
    pub ngram_min_prob: f32,
    /// ngram-adaptive: factor on a context's older evidence at each update (0: only
    /// the newest counts, 1: plain counts).
    #[arg(long, value_name = "D", default_value_t = NgramAdaptiveConfig::default().decay)]
    pub ngram_decay: f32,
    /// draft: the draft model, a file or alias sharing the target's tokenizer (e.g.
    /// qwen2.5-coder-0.5b for qwen2.5-coder-1.5b).
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// draft, skip: stop a chain when the draft's top-1 probability falls below P
    /// (its own confidence as the SpecDec++ stopping rule).
    #[arg(long, value_name = "P", default_value_t = DraftModelConfig::default().p_min)]
    pub draft_p_min: f32,
    /// draft, skip: grow a token tree of at most N nodes (DySpec: greedily by the draft
    /// probability of each path) instead of a chain; 0 = chain.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub draft_tree_nodes: usize,
    /// draft tree: add a node only while its path probability (the product of the
    /// draft's probabilities from the root) is at least P.
    #[arg(long, value_name = "P", default_value_t = DraftModelConfig::default().path_min)]
    pub draft_path_min: f32,
    /// draft tree: nodes added per draft-model pass.
    #[arg(long, value_name = "N", default_value_t = DraftModelConfig::default().tree_width)]
    pub draft_tree_width: usize,
    /// skip: the layers the draft skips, 0-based and comma-separated (e.g. 3,5,7);
    /// default: chosen on a built-in calibration text at start (printed on stderr,
    /// to pass here next time).
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub skip_layers: Option<Vec<usize>>,
    /// skip calibration: skip at most this share of the layers.
    #[arg(long, value_name = "R", default_value_t = SkipConfig::default().max_ratio)]
    pub skip_ratio: f32,
    /// skip calibration: stop dropping layers when the draft's first token would
    /// agree with the model's on less than this share of the calibration text.
    #[arg(long, value_name = "A", default_value_t = SkipConfig::default().min_agreement)]
    pub skip_min_agreement: f32,
}

impl SpeculativeArgs {
    /// The engine's configuration; `None` for `--speculative none`.
    // Read by `generate`, which flattens these arguments.
    pub fn config(&self) -> Result<Option<SpeculativeConfig>> {
        let name = self.speculative.trim().to_ascii_lowercase();
        if name == "none" {
            return Ok(None);
        }
        let method: SpeculativeMethod = match name.parse() {
            Ok(m) => m,
            Err(_) => bail!(
                "--speculative {:?}: expected none, lookup, recycle, ngram-adaptive, draft or skip",
                self.speculative
            ),
        };
        Ok(Some(self.draft.config_for(method)?))
    }
}

impl DraftArgs {
    /// The configuration for `method` with these knobs.
    pub fn config_for(&self, method: SpeculativeMethod) -> Result<SpeculativeConfig> {
        if self.draft_max == 0 {
            bail!(
                "--draft-max must be at least 1 (use --speculative none to turn speculation off)"
            );
        }
        let mut c = SpeculativeConfig::new(method);
        c.max_draft = self.draft_max;
        c.adaptive = !self.draft_fixed;
        c.cost_per_token = self.draft_cost;
        c.lookup.max_ngram = self.lookup_ngram;
        c.lookup.max_branches = self.lookup_branches;
        c.recycle.k = self.recycle_k;
        // Template entries that use ranks beyond k have no successor to draft.
        let k = self.recycle_k;
        c.recycle
            .template
            .retain(|path| path.iter().all(|&r| usize::from(r) < k));
        c.ngram.min_path_prob = self.ngram_min_prob;
        c.ngram.decay = self.ngram_decay;
        c.draft = DraftModelConfig {
            p_min: self.draft_p_min,
            tree_nodes: self.draft_tree_nodes,
            path_min: self.draft_path_min,
            tree_width: self.draft_tree_width,
        };
        c.skip = SkipConfig {
            layers: self.skip_layers.clone(),
            max_ratio: self.skip_ratio,
            min_agreement: self.skip_min_agreement,
            ..SkipConfig::default()
        };
        if method.needs_draft_model() && self.draft_model.is_none() {
            bail!("--speculative draft needs --draft-model FILE|ALIAS (e.g. qwen2.5-coder-0.5b)");
        }
        c.validate()?;
        Ok(c)
    }

    /// Loads `--draft-model` with `threads` workers and checks that it shares
    /// `target`'s tokenizer; `None` when no draft model was given.
    pub fn load_draft_model(
        &self,
        target: &LoadedModel,
        threads: Option<usize>,
    ) -> Result<Option<LoadedModel>> {
        let Some(spec) = &self.draft_model else {
            return Ok(None);
        };
        let (path, draft) = models::load(spec, threads).context("loading the draft model")?;
        engine::check_same_vocabulary(target, &draft)
            .with_context(|| format!("--draft-model {}", path.display()))?;
        Ok(Some(draft))
    }
}

/// The speculator for `config` on `target`, with `draft` as its draft model when the
/// method runs one. `skip` without `--skip-layers` calibrates here and says which
/// layers it chose on stderr (unless `quiet`).
pub fn speculator<'d>(
    config: &SpeculativeConfig,
    target: &LoadedModel,
    draft: Option<&'d LoadedModel>,
    quiet: bool,
) -> Result<Speculator<'d>> {
    if config.method == SpeculativeMethod::Skip {
        if config.skip.layers.is_none() && !quiet {
            eprintln!("skip: calibrating the layers to skip...");
        }
        let s = Speculator::with_skip_layers(config, target).context("--speculative skip")?;
        if let Some(plan) = s.skip_plan().filter(|p| p.agreement.is_some() && !quiet) {
            eprintln!(
                "skip: {plan}; reuse with --skip-layers {}",
                plan.layers_arg()
            );
        }
        return Ok(s);
    }
    if !config.method.needs_draft_model() {
        return Ok(Speculator::new(config)?);
    }
    let Some(draft) = draft else {
        bail!("--speculative draft needs --draft-model FILE|ALIAS");
    };
    Ok(Speculator::with_draft_model(config, draft)?)
}
