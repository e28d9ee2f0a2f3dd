//! `tokenwise detect-eval`: how well the Fast-DetectGPT criterion of `score` tells
//! human text from the model's own (see `eval::detect`), as an AUROC; optionally a
//! dated section appended to docs/BENCHMARKS.md.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eval::detect::{detection_eval, read_passages, DetectOptions};
use eval::sysinfo::{today_utc, MachineInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cmd::sampling::SamplingArgs;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias: it writes the machine passages and scores both kinds.
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Human passages as JSON lines {"source", "text"} (default: the Python
    /// documentation passages of `scripts/fetch_eval_text.py` in the cache).
    #[arg(long, value_name = "FILE")]
    pub passages: Option<PathBuf>,
    /// Passages to use.
    #[arg(short, long, default_value_t = 60)]
    pub n: usize,
    /// Most tokens per machine passage (otherwise as long as the human one).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Scoring window.
    #[arg(long, default_value_t = 1024)]
    pub ctx: usize,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Write every pair (prompt, machine text, both criteria) as JSON lines here.
    #[arg(long, value_name = "FILE")]
    pub pairs_out: Option<PathBuf>,
    /// Append a dated markdown section with the result to this file.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mut sampler = a.sampling.config()?;
    if a.sampling.seed.is_none() {
        // Reproducible by default: an evaluation should not depend on the clock.
        sampler.seed = 42;
    }
    let passages_path = match &a.passages {
        Some(p) => p.clone(),
        None => models::cache_dir()
            .parent()
            .map(|p| p.join("data/python-doc-passages.jsonl"))
            .context("no cache directory")?,
    };
    if !passages_path.is_file() {
        bail!(
            "{} is missing: run `scripts/fetch_eval_text.py` or pass --passages",
            passages_path.display()
        );
    }
    let passages = read_passages(&passages_path)?;
    let (path, loaded) = models::load(&a.model, a.threads)?;
    let sampler = a.sampling.with_dry_breakers(sampler, &loaded.tokenizer)?;
    let opts = DetectOptions {
        n: a.n,
        sampler: sampler.clone(),
        max_tokens: a.max_tokens,
        ctx: a.ctx,
    };

    let bar = ProgressBar::with_draw_target(Some(a.n as u64), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} passages  [{elapsed_precise}, eta {eta}]",
        )
        .context("progress bar template")?,
    );
    let result = detection_eval(&loaded, &passages, &opts, &mut |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let r = result?;

    if let Some(out) = &a.pairs_out {
        let mut f =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        for p in &r.pairs {
            let rec = json!({
                "source": p.source,
                "prompt": p.prompt,
                "machine_text": p.machine_text,
                "human_tokens": p.human_tokens,
                "machine_tokens": p.machine_tokens,
                "human_criterion": p.human_criterion,
                "machine_criterion": p.machine_criterion,
                "human_lastde": finite(p.human_lastde),
                "machine_lastde": finite(p.machine_lastde),
                "human_lastde_pp": finite(p.human_lastde_pp),
                "machine_lastde_pp": finite(p.machine_lastde_pp),
            });
            writeln!(f, "{rec}")?;
        }
    }

    let model_name = path
        .file_name()
        .map_or_else(|| a.model.clone(), |f| f.to_string_lossy().into_owned());
    let (hm, hs) = r.mean_sd(false);
    let (mm, ms) = r.mean_sd(true);
    let mean_len = |machine: bool| {
        r.pairs
            .iter()
            .map(|p| {
                if machine {
                    p.machine_tokens
                } else {
                    p.human_tokens
                }
            })
            .sum::<usize>() as f64
            / r.pairs.len() as f64
    };
    let sampler_desc = format!(
        "temperature {}, top-k {}, top-p {}, min-p {}, seed {}+i",
        sampler.temperature, sampler.top_k, sampler.top_p, sampler.min_p, sampler.seed
    );
    let table = format!(
        "| model | passages | human criterion (mean ± sd) | machine criterion (mean ± sd) | AUROC Fast-DetectGPT | AUROC Lastde | AUROC Lastde++ |\n\
         |---|---:|---:|---:|---:|---:|---:|\n\
         | {model_name} | {} + {} | {hm:.2} ± {hs:.2} | {mm:.2} ± {ms:.2} | {:.3} | {:.3} | {:.3} |\n",
        r.pairs.len(),
        r.pairs.len(),
        r.auroc,
        r.auroc_lastde,
        r.auroc_lastde_pp
    );
    println!("{table}");
    println!(
        "mean length: human {:.0} tokens, machine {:.0} tokens; machine sampling: {sampler_desc}; {:.0} s",
        mean_len(false),
        mean_len(true),
        r.seconds
    );

    if let Some(md) = &a.write_md {
        let machine = MachineInfo::detect();
        let command: Vec<String> = std::env::args().collect();
        let section = format!(
            "\n## {}: Fast-DetectGPT AUROC, {model_name}\n\n\
             - machine: {}\n\
             - command: `{}`\n\
             - human passages: {} (`{}`), machine passages: the model's continuation of \
             each passage's first sentence, as many tokens as the human passage (at most \
             {}), sampled with {sampler_desc}; both scored by the same model, ctx {}\n\
             - mean length: human {:.0} tokens, machine {:.0} tokens; wall time {:.0} s\n\n{table}",
            today_utc(),
            machine.describe(),
            command.join(" "),
            r.pairs.len(),
            passages_path
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            a.max_tokens,
            a.ctx,
            mean_len(false),
            mean_len(true),
            r.seconds,
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(md)
            .with_context(|| format!("opening {}", md.display()))?;
        f.write_all(section.as_bytes())?;
        eprintln!("appended to {}", md.display());
    }
    Ok(())
}

/// JSON has no NaN: undefined scores are written as null.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}
