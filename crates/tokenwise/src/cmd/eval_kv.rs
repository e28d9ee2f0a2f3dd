//! `tokenwise eval kv`: KV eviction policies × budgets × storage types against
//! perplexity of a long text, passkey retrieval, KV bytes held and decode speed (see
//! `eval::kv_eval`); writes a markdown table, a CSV and an SVG chart.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::kv::{KvDtype, KvQuant};
use engine::{Budget, PolicyParams};
use eval::kv_eval::{charts, csv, load_long_text, markdown_table, run_kv_eval, KvEvalOptions};

use crate::cmd::kv_args::KvPositions;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Policies to compare (comma-separated); `full` runs once, without a budget.
    #[arg(long, value_delimiter = ',', default_value = "full,window,h2o,tova")]
    pub policies: Vec<String>,
    /// Budgets (comma-separated): tokens per layer and KV head, or PERCENT% of each
    /// task's context.
    #[arg(long, value_delimiter = ',', default_value = "25%,50%", value_parser = parse_budget)]
    pub budgets: Vec<Budget>,
    /// KV storage types (comma-separated), each run for every policy and budget: f16,
    /// int8, int4, mixed.
    #[arg(long, value_delimiter = ',', default_value = "f16", value_parser = parse_dtype)]
    pub dtypes: Vec<KvDtype>,
    /// Most recent tokens kept at full precision by the quantised types.
    #[arg(long, default_value_t = 32)]
    pub kv_residual: usize,
    /// Quantisation group: tokens per key group, channels per value group.
    #[arg(long, default_value_t = 32)]
    pub kv_group: usize,
    /// mixed: percent of each group's tokens kept at int8.
    #[arg(long, default_value_t = 25.0)]
    pub mixed_keep: f32,
    /// Greedy decode steps timed after the long text (decode speed at its context).
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Tokens of the long text scored for perplexity (0 skips it).
    #[arg(long, default_value_t = 8192)]
    pub ppl_tokens: usize,
    /// Directory of reST files for the long text (default: the Python 3.11 docs that
    /// scripts/fetch_eval_text.py extracts into the cache).
    #[arg(long, value_name = "DIR")]
    pub text_dir: Option<PathBuf>,
    /// Passkey context lengths in tokens (comma-separated; `0` or no value skips
    /// passkey).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1024,2048,4096")]
    pub passkey_lengths: Vec<usize>,
    /// Passkey trials per length (depths cycle through 10%..90%).
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Tokens per forward call; the cache is evicted to the budget after each.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Attention-sink tokens of the window policy.
    #[arg(long, default_value_t = 4)]
    pub sinks: usize,
    /// Positions of the tokens window keeps: their original ones, or re-numbered
    /// inside the cache after each eviction (StreamingLLM).
    #[arg(long, value_enum, default_value_t = KvPositions::Original)]
    pub kv_positions: KvPositions,
    /// Observation window (queries) of the snapkv policy.
    #[arg(long, default_value_t = 32)]
    pub obs_window: usize,
    /// Passkey: hold the whole prompt, then compress it once at its end (SnapKV's
    /// setting) instead of evicting after every chunk.
    #[arg(long)]
    pub compress_after_prompt: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// Write the CSV here.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the markdown table here.
    #[arg(long, value_name = "FILE")]
    pub md: Option<PathBuf>,
    /// Write an SVG chart here: perplexity and passkey accuracy against KV memory held,
    /// one line per policy and KV type.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    s.parse().map_err(|e: engine::KvError| e.to_string())
}

fn parse_dtype(s: &str) -> Result<KvDtype, String> {
    s.parse()
}

pub fn run(a: Args) -> Result<()> {
    let params = PolicyParams {
        n_sink: a.sinks,
        obs_window: a.obs_window,
        ..PolicyParams::default()
    };
    let mut cells = Vec::new();
    for p in &a.policies {
        engine::policy_from_name(p, &params).map_err(|e| anyhow::anyhow!("{e}"))?;
        if p.eq_ignore_ascii_case("full") {
            cells.push((p.clone(), None));
        } else {
            cells.extend(a.budgets.iter().map(|b| (p.clone(), Some(*b))));
        }
    }
    let (_, loaded) = models::load(&a.model, a.threads)?;
    let text_ids = if a.ppl_tokens > 0 {
        let dir = match &a.text_dir {
            Some(d) => d.clone(),
            None => models::cache_dir()
                .parent()
                .map(|p| p.join("data/python3.11-doc/usr/share/doc/python3.11/html/_sources"))
                .context("no cache directory")?,
        };
        // About 3.5 characters per token in reST; read a margin more.
        let text = load_long_text(&dir, a.ppl_tokens * 6)?;
        loaded.tokenizer.encode_prompt(&text)?
    } else {
        Vec::new()
    };
    if !(0.0..=100.0).contains(&a.mixed_keep) {
        anyhow::bail!(
            "--mixed-keep {}: expected a percentage in [0, 100]",
            a.mixed_keep
        );
    }
    let opts = KvEvalOptions {
        cells,
        params,
        dtypes: a.dtypes.clone(),
        quant: KvQuant {
            residual: a.kv_residual,
            key_group: a.kv_group,
            value_group: a.kv_group,
            mixed_keep: a.mixed_keep / 100.0,
            ..KvQuant::default()
        },
        decode_steps: a.decode_steps,
        chunk: a.chunk,
        ppl_tokens: a.ppl_tokens,
        passkey_lengths: a
            .passkey_lengths
            .iter()
            .copied()
            .filter(|&l| l > 0)
            .collect(),
        passkey_trials: a.trials,
        compress_after_prompt: a.compress_after_prompt,
        reposition: a.kv_positions == KvPositions::Cache,
        seed: a.seed,
    };
    let rows = run_kv_eval(&loaded, &text_ids, &opts, |line| eprintln!("{line}"))?;
    let md = markdown_table(&rows);
    print!("{md}");
    if let Some(p) = &a.md {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.csv {
        std::fs::write(p, csv(&rows)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        let svg = eval::plot::svg_document(&charts(&rows), 560, 380);
        std::fs::write(p, svg).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
