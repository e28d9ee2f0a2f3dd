//! `--kv-policy NAME --kv-budget TOKENS|PERCENT% --kv-dtype f16`: KV-cache eviction
//! options, flattened into the commands that run a model.

use anyhow::{bail, Result};
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
    /// Storage type of keys and values (only f16 for now).
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    pub kv_dtype: String,
    /// Attention-sink tokens the window policy keeps.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub kv_sinks: usize,
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    s.parse().map_err(|e: engine::KvError| e.to_string())
}

impl KvArgs {
    /// The engine's options (validated against a model and context later, when the
    /// session is made).
    pub fn options(&self) -> Result<KvOptions> {
        if self.kv_dtype != "f16" {
            bail!(
                "--kv-dtype {}: only f16 is implemented (int8/int4 KV quantisation is planned)",
                self.kv_dtype
            );
        }
        engine::policy_from_name(&self.kv_policy, &PolicyParams::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(KvOptions {
            policy: self.kv_policy.clone(),
            budget: self.kv_budget,
            params: PolicyParams {
                n_sink: self.kv_sinks,
                ..PolicyParams::default()
            },
        })
    }
}
