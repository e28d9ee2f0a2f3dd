//! `--kv-policy NAME --kv-budget TOKENS|PERCENT% --kv-dtype f16|int8|int4|mixed`: KV
//! cache eviction and storage options, flattened into the commands that run a model.

use anyhow::{bail, Result};
use engine::kv::{KvDtype, KvQuant};
use engine::{Budget, KvOptions, PolicyParams};

#[derive(clap::Args, Clone, Debug)]
pub struct KvArgs {
    /// KV-cache eviction policy: full (exact), window, h2o, tova, a2sf, knorm, snapkv,
    /// keyformer.
    #[arg(long, value_name = "NAME", default_value = "full")]
    pub kv_policy: String,
    /// Tokens each layer and KV head keeps (e.g. 256), or a share of the context
    /// (e.g. 25%). Required by every policy but full.
    #[arg(long, value_name = "TOKENS|PERCENT%", value_parser = parse_budget)]
    pub kv_budget: Option<Budget>,
    /// Storage of keys and values: f16 (exact), int8, int4 (KIVI: keys per channel,
    /// values per token, in groups), or mixed (int8 for the tokens the policy ranks
    /// most important, int4 for the rest).
    #[arg(long, value_name = "TYPE", default_value = "f16", value_parser = parse_dtype)]
    pub kv_dtype: KvDtype,
    /// Most recent tokens of each layer and KV head kept at full precision (int8/int4).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub kv_residual: usize,
    /// Quantisation group: tokens per key group and channels per value group.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub kv_group: usize,
    /// With --kv-dtype mixed: percent of each group's tokens kept at int8.
    #[arg(long, value_name = "PCT", default_value_t = 25.0)]
    pub kv_mixed_keep: f32,
    /// Attention-sink tokens the window policy keeps.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub kv_sinks: usize,
    /// Positions of the tokens the window policy keeps: their original RoPE positions
    /// (exact for what is kept), or re-numbered inside the cache after each eviction
    /// (StreamingLLM: positions never exceed the cache size; keys are re-rotated).
    #[arg(long, value_enum, default_value_t = KvPositions::Original)]
    pub kv_positions: KvPositions,
}

/// Where kept tokens sit after eviction.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPositions {
    /// Each kept token keeps the position it was computed at.
    Original,
    /// Kept tokens are re-numbered 0..len inside the cache (window only).
    Cache,
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    s.parse().map_err(|e: engine::KvError| e.to_string())
}

fn parse_dtype(s: &str) -> Result<KvDtype, String> {
    s.parse()
}

impl KvArgs {
    /// The engine's options (validated against a model and context later, when the
    /// session is made).
    pub fn options(&self) -> Result<KvOptions> {
        engine::policy_from_name(&self.kv_policy, &PolicyParams::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !(0.0..=100.0).contains(&self.kv_mixed_keep) {
            bail!(
                "--kv-mixed-keep {}: expected a percentage in [0, 100]",
                self.kv_mixed_keep
            );
        }
        if self.kv_group == 0 {
            bail!("--kv-group must be at least 1");
        }
        Ok(KvOptions {
            policy: self.kv_policy.clone(),
            budget: self.kv_budget,
            params: PolicyParams {
                n_sink: self.kv_sinks,
                ..PolicyParams::default()
            },
            quant: KvQuant {
                dtype: self.kv_dtype,
                residual: self.kv_residual,
                key_group: self.kv_group,
                value_group: self.kv_group,
                mixed_keep: self.kv_mixed_keep / 100.0,
            },
            reposition: self.kv_positions == KvPositions::Cache,
        })
    }
}
