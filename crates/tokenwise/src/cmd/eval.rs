//! `tokenwise eval`: the evaluation command group; each evaluation's flags and run
//! live in its own module.

use anyhow::Result;

use crate::cmd::{eval_ead, eval_ensemble, eval_fim, eval_kv};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// KV eviction policies: perplexity of a long text, passkey retrieval, KV bytes and
    /// decode speed for each policy and budget.
    Kv(eval_kv::Args),
    /// Prompts cut mid-token (HumanEval, cut inside the solution's first line):
    /// pass@1 of naive tokenisation, token healing and byte-level decoding.
    Fim(eval_fim::Args),
    /// Two models with different vocabularies ensembled byte by byte (mixture,
    /// product, Bayesian mixture): bits per byte of each model and each ensemble.
    Ensemble(eval_ensemble::Args),
    /// Entropy-adaptive model switching on HumanEval: a small model hands uncertain
    /// steps to a large one; pass@1, large-model share, tokens/s and perplexity under
    /// the large model for each model alone and each threshold.
    Ead(eval_ead::Args),
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.command {
        EvalCommand::Kv(a) => eval_kv::run(a),
        EvalCommand::Fim(a) => eval_fim::run(a),
        EvalCommand::Ensemble(a) => eval_ensemble::run(a),
        EvalCommand::Ead(a) => eval_ead::run(a),
    }
}
