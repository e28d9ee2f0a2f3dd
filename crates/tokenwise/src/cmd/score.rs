//! `tokenwise score FILE`: how the model sees each token of a text (see `eval::score`):
//! a summary (perplexity, mean entropy, bits per byte, the Fast-DetectGPT criterion),
//! optionally one JSON record per token or the text coloured by entropy or surprisal.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eval::{ScoreReport, ScoredToken};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::tokenizer::TextStream;
use serde_json::json;

use crate::cmd::generate::{legend, write_coloured, ColorBy, ColorChoice};
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Window length in tokens. A longer text is scored in overlapping windows, each
    /// token with at least half a window of context.
    #[arg(long, short, default_value_t = 1024)]
    pub ctx: usize,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// One JSON object per token (id, text, logprob, entropy, varentropy, rank, top),
    /// then a summary record.
    #[arg(long, conflicts_with = "show_entropy")]
    pub jsonl: bool,
    /// With --jsonl: the K most likely alternatives of each token.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logprobs: usize,
    /// Print the text coloured by the model's uncertainty (see --color-by).
    #[arg(long)]
    pub show_entropy: bool,
    /// What the colours show: the entropy of the distribution, or the token's own
    /// surprisal (-log p, nats).
    #[arg(long, value_enum, default_value_t = ColorBy::Entropy)]
    pub color_by: ColorBy,
    /// When to use colour: auto (stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// UTF-8 text file to score (`-` for stdin).
    pub file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let text = read_text(&a.file)?;
    let (path, loaded) = models::load(&a.model, a.threads)?;
    let tok = &loaded.tokenizer;

    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} tokens  [{elapsed_precise}, eta {eta}]")
            .context("progress bar template")?,
    );
    let colour = a.show_entropy
        && match a.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => io::stdout().is_terminal(),
        };

    let mut out = io::stdout().lock();
    let mut write_error: Option<io::Error> = None;
    let mut stream = TextStream::new(tok);
    let mut on_token = |t: &ScoredToken| {
        if write_error.is_some() {
            return;
        }
        let r = &t.report;
        let res = if a.jsonl {
            let top: Vec<_> = r
                .top
                .iter()
                .map(|&(id, lp)| json!([id, tok.token_text(id), lp]))
                .collect();
            let rec = json!({
                "index": t.index,
                "id": r.id,
                "piece": tok.token_text(r.id),
                "logprob": r.logprob,
                "entropy": r.entropy,
                "entropy_bits": r.entropy_bits,
                "varentropy": r.varentropy,
                "rank": r.rank,
                "top": top,
            });
            writeln!(out, "{rec}")
        } else if a.show_entropy {
            let piece = stream.push(r.id);
            let value = match a.color_by {
                ColorBy::Entropy => r.entropy,
                ColorBy::Surprisal => -r.logprob,
            };
            if colour {
                write_coloured(&mut out, &piece, value, a.color_by)
            } else {
                out.write_all(piece.as_bytes())
            }
        } else {
            Ok(())
        };
        if let Err(e) = res {
            write_error = Some(e);
        }
    };
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    if colour {
        eprintln!("{}", legend(a.color_by));
    }
    let result = eval::score_text(
        &loaded,
        &text,
        a.ctx,
        if a.jsonl { a.top_logprobs } else { 0 },
        &mut on_token,
        &mut progress,
    );
    bar.finish_and_clear();
    let r = result.with_context(|| format!("scoring {}", a.file.display()))?;
    if let Some(err) = write_error {
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(err).context("writing to stdout");
    }

    let end = if a.jsonl {
        writeln!(out, "{}", json!({ "summary": summary_json(&r, &path) }))
    } else {
        if a.show_entropy {
            let rest = stream.finish();
            write!(out, "{rest}\n\n")?;
        }
        write!(out, "{}", summary_text(&r))
    };
    match end.and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn read_text(file: &PathBuf) -> Result<String> {
    let bytes = if file.as_os_str() == "-" {
        let mut b = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut b).context("reading stdin")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// JSON has no NaN: a figure that could not be computed becomes `null`.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn summary_json(r: &ScoreReport, model: &std::path::Path) -> serde_json::Value {
    json!({
        "model": model.display().to_string(),
        "n_text_tokens": r.n_text_tokens,
        "n_scored": r.n_scored,
        "ctx": r.ctx,
        "n_windows": r.n_windows,
        "ppl": finite(r.ppl),
        "mean_nll": finite(r.mean_nll),
        "mean_entropy": finite(r.mean_entropy),
        "bits_per_byte": finite(r.bits_per_byte),
        "fast_detect_gpt": {
            "criterion": finite(r.discrepancy.criterion()),
            "log_likelihood": r.discrepancy.log_likelihood,
            "expected_log_likelihood": r.discrepancy.expected,
            "variance": r.discrepancy.variance,
        },
        "seconds": r.seconds,
    })
}

fn summary_text(r: &ScoreReport) -> String {
    format!(
        "tokens scored        {} ({} windows of at most {})\n\
         perplexity           {:.4}\n\
         mean NLL             {:.4} nats\n\
         mean entropy         {:.4} nats ({:.4} bits)\n\
         bits per byte        {:.4}\n\
         Fast-DetectGPT       {:.3} (larger = more like the model's own text)\n\
         time                 {:.1} s\n",
        r.n_scored,
        r.n_windows,
        r.ctx,
        r.ppl,
        r.mean_nll,
        r.mean_entropy,
        r.mean_entropy / std::f64::consts::LN_2,
        r.bits_per_byte,
        r.discrepancy.criterion(),
        r.seconds,
    )
}
