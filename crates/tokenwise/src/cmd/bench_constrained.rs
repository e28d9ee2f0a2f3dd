//! `tokenwise bench constrained`: JSON-schema prompts decoded under the grammar with the
//! full-vocabulary mask every step and with adaptive weighted rejection sampling (see
//! `eval::constrained`): tokens/s, grammar milliseconds per token, AWRS checks per
//! token and fallbacks, and the share of outputs that parse and validate.

use anyhow::{bail, Result};
use engine::ConstraintMode;
use eval::constrained::{bench_constrained, ConstrainedBenchOptions};

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Prompts (each with its own JSON schema; the fixed set cycles after 8).
    #[arg(long = "prompts", value_name = "N", default_value_t = 8)]
    pub n_prompts: usize,
    /// Tokens per output at most.
    #[arg(short = 'n', long = "n-gen", default_value_t = 96)]
    pub n_gen: usize,
    /// Sampling temperature (0 = greedy, where both modes must give the same output).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Modes, comma-separated: mask, awrs.
    #[arg(long, value_delimiter = ',', default_value = "mask,awrs")]
    pub modes: Vec<String>,
    /// Worker threads.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Print every output.
    #[arg(long, short)]
    pub verbose: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == 0 {
        bail!("-t must be at least 1");
    }
    let modes = a
        .modes
        .iter()
        .map(|m| ConstraintMode::from_name(m.trim()))
        .collect::<engine::Result<Vec<_>>>()?;
    let (path, model) = models::load(&a.model, Some(a.threads))?;
    let opts = ConstrainedBenchOptions {
        n_prompts: a.n_prompts,
        max_tokens: a.n_gen,
        temperature: a.temperature,
        seed: a.seed,
        modes,
        ..ConstrainedBenchOptions::default()
    };
    eprintln!(
        "model {}, {} prompts, up to {} tokens, temperature {}, {} threads",
        path.display(),
        opts.n_prompts,
        opts.max_tokens,
        opts.temperature,
        a.threads
    );
    let verbose = a.verbose;
    let reports = bench_constrained(&model, &opts, |line| {
        if verbose {
            eprintln!("{line}");
        }
    })?;
    println!(
        "| mode | outputs | tokens | tok/s | grammar ms/token | choose ms/token | checks/token | masks | fallbacks | finished | valid | same as {} |",
        reports.first().map_or("first", |r| r.mode)
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {} | {} | {} | {}/{} | {:.0}% | {}/{} |",
            r.mode,
            r.prompts,
            r.tokens,
            r.tokens_per_sec(),
            r.grammar_ms_per_token(),
            r.choose_ms_per_token(),
            if r.mode == "awrs" {
                format!("{:.2}", r.stats.checks_per_token())
            } else {
                "-".to_string()
            },
            r.stats.masks,
            r.stats.fallbacks,
            r.finished,
            r.prompts,
            100.0 * r.validity_rate(),
            r.same_as_first,
            r.prompts,
        );
    }
    Ok(())
}
