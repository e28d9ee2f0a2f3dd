//! `tokenwise perplexity`: the perplexity of a text file by llama.cpp's method (see
//! `eval::perplexity`), printed in `llama-perplexity`'s words so the two outputs can
//! be compared line by line, plus bits per byte.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cmd::kv_args::KvArgs;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Window length in tokens (llama-perplexity's `-c`); the second half of each window
    /// is scored.
    #[arg(long, short, default_value_t = 512)]
    pub ctx: usize,
    /// Most tokens per forward pass; bounds the memory of the logits, not the result.
    /// With a KV policy or quantised KV it is also the eviction and quantisation step
    /// (default then 64: each sub-batch sees its own tokens at full precision).
    #[arg(long, short)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// UTF-8 text file to evaluate.
    pub file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            a.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let threads = a.threads.unwrap_or_else(models::default_threads);
    let (path, loaded) = models::load(&a.model, Some(threads))?;

    // The bar goes to stderr and only to a terminal: piped output stays clean.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() || a.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} windows  {msg}  [{elapsed_precise}, eta {eta}]",
    )
    .context("progress bar template")?;
    bar.set_style(style);
    let mut progress = |done: usize, total: usize, ppl: f64| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if ppl.is_finite() {
            bar.set_message(format!("PPL {ppl:.4}"));
        }
    };
    let kv = a.kv.options()?;
    let batch = a.batch.unwrap_or(if kv.is_exact() { 512 } else { 64 });
    let result = if kv.is_exact() {
        eval::perplexity(&loaded, &text, a.ctx, batch, &mut progress).map(|r| (r, None))
    } else {
        eval::perplexity::perplexity_kv(&loaded, &text, a.ctx, batch, &kv, &mut progress)
            .map(|(r, m)| (r, Some(m)))
    };
    bar.finish_and_clear();
    let (r, kv_memory) = result.with_context(|| format!("perplexity of {}", a.file.display()))?;
    let kv_label = format!(
        "{} {} {}",
        kv.policy,
        kv.budget.map_or("-".into(), |b| b.to_string()),
        kv.quant.dtype
    );

    if a.json {
        let out = json!({
            "model": path.display().to_string(),
            "file": a.file.display().to_string(),
            "ctx": r.ctx,
            "batch": batch,
            "kv": kv_label,
            "kv_peak_bytes": kv_memory.map(|m| m.peak_bytes),
            "kv_peak_bytes_f16": kv_memory.map(|m| m.peak_bytes_f16),
            "threads": threads,
            "ppl": finite(r.ppl),
            "ppl_stderr": finite(r.ppl_stderr),
            "mean_nll": finite(r.mean_nll),
            "bits_per_byte": finite(r.bits_per_byte),
            "n_text_tokens": r.n_text_tokens,
            "n_windows": r.n_windows,
            "n_scored": r.n_scored,
            "scored_bytes": r.scored_bytes,
            "seconds": r.seconds,
            "tokens_per_second": r.tokens_per_second,
        });
        println!("{out}");
    } else {
        println!(
            "{} tokens, {} windows of {} (the second half of each scored)",
            r.n_text_tokens, r.n_windows, r.ctx
        );
        if r.ppl_stderr.is_finite() {
            println!("PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_stderr);
        } else {
            println!(
                "PPL = {:.4} (no standard error: the NLL does not vary)",
                r.ppl
            );
        }
        println!(
            "bits per byte = {:.4} ({} bytes scored)",
            r.bits_per_byte, r.scored_bytes
        );
        println!("tokens scored = {}", r.n_scored);
        if let Some(m) = kv_memory {
            println!(
                "KV ({kv_label}): at most {:.2} MiB held ({:.2} MiB with full-precision entries as true f16)",
                m.peak_bytes as f64 / (1 << 20) as f64,
                m.peak_bytes_f16 as f64 / (1 << 20) as f64
            );
        }
        println!(
            "speed = {:.1} tokens/s ({} tokens in {:.1} s, {threads} threads)",
            r.tokens_per_second,
            r.n_windows * r.ctx,
            r.seconds
        );
    }
    Ok(())
}

/// JSON has no NaN: a figure that could not be computed becomes `null`.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}
