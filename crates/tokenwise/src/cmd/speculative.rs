//! `--speculative` and the drafter knobs, shared by `generate` (flattened into its
//! arguments) and `bench spec`.

use anyhow::{bail, Result};
use engine::{SpeculativeConfig, SpeculativeMethod};

#[derive(clap::Args, Clone, Debug)]
pub struct SpeculativeArgs {
    /// Lossless speculative decoding (greedy only): none, lookup (prompt lookup: copy
    /// what followed the last n-gram earlier in the text) or recycle (Token Recycling:
    /// the model's own runners-up from earlier steps). The output is unchanged.
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
                "--speculative {:?}: expected none, lookup or recycle",
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
        c.validate()?;
        Ok(c)
    }
}
