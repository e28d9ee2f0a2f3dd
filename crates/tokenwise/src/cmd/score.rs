//! `tokenwise score FILE`: how the model sees each token of a text (see `eval::score`):
//! a summary (perplexity, mean entropy, bits per byte, the Fast-DetectGPT, Lastde and
//! Lastde++ detector scores),
//! optionally one JSON record per token or the text coloured by entropy or surprisal.
//!
//! With `--bytes`, every *byte* is scored instead, by the exact byte-level
//! marginalisation over tokenisations (`engine::byte_level`, the `bytelevel` crate):
//! one JSON record per byte and a summary comparing the byte-level bits per byte with
//! the token-level figure. It evaluates every kept tokenisation of every prefix (one
//! batched forward pass per byte): for SmolLM2-135M on two cores about 70 bytes/s on
//! prose and 17 bytes/s on Markdown (more tokenisations stay in play), so it is bounded
//! by `--max-bytes`.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::byte_level::{model_vocabulary, ByteScorer, Prune};
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
    /// Score every byte by marginalising over tokenisations (any bytes, not only
    /// UTF-8): with --jsonl one record per byte (byte, logprob, entropy, p_end), then a
    /// summary with byte-level and token-level bits per byte.
    #[arg(long, conflicts_with_all = ["show_entropy", "top_logprobs"])]
    pub bytes: bool,
    /// With --bytes: refuse longer inputs (byte-level scoring runs at tens of bytes
    /// per second).
    #[arg(long, value_name = "N", default_value_t = 2048, requires = "bytes")]
    pub max_bytes: usize,
    /// With --bytes: drop a new tokenisation whose probability, relative to the
    /// prefix's, is below this (0 = keep every one: exact, but the work grows
    /// exponentially with the length of the text).
    #[arg(long, value_name = "P", default_value_t = 1e-4, requires = "bytes")]
    pub byte_prune: f64,
    /// With --bytes: keep at most this many new tokenisations per byte (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "bytes")]
    pub byte_beam: usize,
    /// Text file to score (`-` for stdin); UTF-8 unless --bytes.
    pub file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if a.bytes {
        return run_bytes(a);
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

fn read_bytes(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut b = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut b).context("reading stdin")?;
        Ok(b)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn read_text(file: &PathBuf) -> Result<String> {
    let bytes = read_bytes(file)?;
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
        "lastde": finite(r.lastde),
        "lastde_pp": finite(r.lastde_pp),
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
         Lastde / Lastde++    {:.3} / {:.3} (likewise)\n\
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
        r.lastde,
        r.lastde_pp,
        r.seconds,
    )
}

/// The byte-level pruning of `--byte-prune` (in [0, 1)) and `--byte-beam` (0: no
/// limit), shared by `score --bytes` and `eval ensemble`.
pub(crate) fn byte_prune(min_relative: f64, beam: usize) -> Result<Prune> {
    if !(0.0..1.0).contains(&min_relative) {
        bail!("--byte-prune must be in [0, 1), got {min_relative}");
    }
    Ok(Prune {
        min_relative,
        max_new_boundaries: if beam == 0 { usize::MAX } else { beam },
    })
}

/// `score --bytes`: the byte-level chain, then the token-level score of the same text
/// (when it is UTF-8) for comparison.
fn run_bytes(a: Args) -> Result<()> {
    let prune = byte_prune(a.byte_prune, a.byte_beam)?;
    let data = read_bytes(&a.file)?;
    if data.is_empty() {
        bail!("{} is empty: there are no bytes to score", a.file.display());
    }
    if data.len() > a.max_bytes {
        bail!(
            "{} has {} bytes, more than --max-bytes {} (byte-level scoring runs at tens of bytes per second; raise the limit to go on)",
            a.file.display(),
            data.len(),
            a.max_bytes
        );
    }
    let (path, loaded) = models::load(&a.model, a.threads)?;
    let vocab = model_vocabulary(&loaded).context("building the byte vocabulary")?;

    let bar = ProgressBar::with_draw_target(Some(data.len() as u64), ProgressDrawTarget::stderr());
    if !io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} bytes  [{elapsed_precise}, eta {eta}]")
            .context("progress bar template")?,
    );
    let mut out = io::stdout().lock();
    let started = Instant::now();
    // A token context never holds more tokens than there are bytes.
    let mut scorer = ByteScorer::new(&loaded, &vocab, prune, data.len())
        .context("starting the byte-level scorer")?;
    let mut total_logprob = 0.0f64;
    let mut entropy_sum = 0.0f64;
    // Token-level scoring without a BOS cannot score the first token: the comparable
    // byte-level figure leaves its bytes out too.
    let unscored_head = match std::str::from_utf8(&data) {
        Ok(text) if !loaded.tokenizer.adds_bos() => loaded
            .tokenizer
            .encode(text, false, false)
            .ok()
            .and_then(|ids| ids.first().map(|&t| loaded.tokenizer.token_bytes(t).len()))
            .unwrap_or(0),
        _ => 0,
    };
    let mut head_logprob = 0.0f64;
    for (index, &b) in data.iter().enumerate() {
        let d = scorer.distribution();
        let entropy = d.entropy();
        let logprob = scorer
            .push(b)
            .with_context(|| format!("scoring byte {index} of {}", a.file.display()))?;
        total_logprob += logprob;
        if index < unscored_head {
            head_logprob += logprob;
        }
        entropy_sum += entropy;
        if a.jsonl {
            let rec = json!({
                "index": index,
                "byte": b,
                "logprob": logprob,
                "entropy": entropy,
                "p_end": d.end,
            });
            if let Err(e) = writeln!(out, "{rec}") {
                bar.finish_and_clear();
                return match e.kind() {
                    io::ErrorKind::BrokenPipe => Ok(()),
                    _ => Err(e).context("writing to stdout"),
                };
            }
        }
        bar.inc(1);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // The token-level figure on the same text, for comparison.
    let token_level = match String::from_utf8(data.clone()) {
        Ok(text) => {
            let ctx = a.ctx.min(loaded.model.config.context_length);
            let r = eval::score_text(&loaded, &text, ctx, 0, &mut |_| {}, &mut |_, _| {});
            Some(r.with_context(|| format!("token-level scoring of {}", a.file.display()))?)
        }
        Err(_) => None,
    };

    let n = data.len() as f64;
    let stats = scorer.stats();
    let lm = scorer.lm();
    let (log_lower, _) = scorer.log_prefix_bounds();
    let bits = -total_logprob / std::f64::consts::LN_2;
    let summary = ByteSummary {
        n_bytes: data.len(),
        bits_per_byte: bits / n,
        // ln P(text) >= log_lower, so this bits/byte is a rigorous upper bound.
        bits_per_byte_bound: -log_lower / std::f64::consts::LN_2 / n,
        mean_entropy: entropy_sum / n,
        model_calls: stats.model_calls,
        forward_passes: lm.forward_calls,
        tokens_evaluated: lm.tokens_evaluated,
        pruned: stats.pruned,
        exact: stats.pruned == 0,
        seconds,
        token_bits_per_byte: token_level.as_ref().map(|r| r.bits_per_byte),
        comparable_bits_per_byte: (data.len() > unscored_head).then(|| {
            -(total_logprob - head_logprob)
                / std::f64::consts::LN_2
                / (data.len() - unscored_head) as f64
        }),
        unscored_head,
    };
    let end = if a.jsonl {
        writeln!(out, "{}", json!({ "summary": summary.json(&path, prune) }))
    } else {
        write!(out, "{}", summary.text())
    };
    match end.and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

struct ByteSummary {
    n_bytes: usize,
    /// From the chain of reported conditionals.
    bits_per_byte: f64,
    /// Rigorous upper bound on the model's bits per byte (equal when exact).
    bits_per_byte_bound: f64,
    mean_entropy: f64,
    /// Token contexts evaluated (kept tokenisations of prefixes).
    model_calls: u64,
    forward_passes: u64,
    tokens_evaluated: u64,
    pruned: u64,
    exact: bool,
    seconds: f64,
    token_bits_per_byte: Option<f64>,
    /// Byte-level bits per byte over the bytes the token level scores.
    comparable_bits_per_byte: Option<f64>,
    /// Bytes of the first token, which token-level scoring leaves out without a BOS.
    unscored_head: usize,
}

impl ByteSummary {
    fn json(&self, model: &std::path::Path, prune: Prune) -> serde_json::Value {
        json!({
            "model": model.display().to_string(),
            "mode": "bytes",
            "n_bytes": self.n_bytes,
            "bits_per_byte": finite(self.bits_per_byte),
            "bits_per_byte_upper_bound": finite(self.bits_per_byte_bound),
            "exact": self.exact,
            "mean_entropy": finite(self.mean_entropy),
            "token_bits_per_byte": self.token_bits_per_byte.map(finite),
            "bits_per_byte_token_scored_bytes": self.comparable_bits_per_byte.map(finite),
            "token_unscored_head_bytes": self.unscored_head,
            "contexts_evaluated": self.model_calls,
            "forward_passes": self.forward_passes,
            "tokens_evaluated": self.tokens_evaluated,
            "pruned_tokenisations": self.pruned,
            "prune_min_relative": prune.min_relative,
            "prune_beam": (prune.max_new_boundaries != usize::MAX).then_some(prune.max_new_boundaries),
            "seconds": self.seconds,
            "bytes_per_second": self.n_bytes as f64 / self.seconds.max(1e-9),
        })
    }

    fn text(&self) -> String {
        let token = match (self.token_bits_per_byte, self.comparable_bits_per_byte) {
            (Some(t), Some(b)) if self.unscored_head > 0 => format!(
                "{t:.4} (token level, canonical tokenisation, first {} bytes unscored; \
                 byte level over the same bytes {b:.4})",
                self.unscored_head
            ),
            (Some(t), _) => format!("{t:.4} (token level, canonical tokenisation)"),
            (None, _) => "n/a (not UTF-8)".to_string(),
        };
        format!(
            "bytes scored         {}\n\
             bits per byte        {:.4} (byte level{})\n\
             upper bound          {:.4} bits per byte (rigorous)\n\
             token bits per byte  {token}\n\
             mean entropy         {:.4} nats per byte\n\
             contexts evaluated   {} ({} forward passes, {} tokens run, {} pruned)\n\
             time                 {:.1} s ({:.1} bytes/s)\n",
            self.n_bytes,
            self.bits_per_byte,
            if self.exact { ", exact" } else { ", pruned" },
            self.bits_per_byte_bound,
            self.mean_entropy,
            self.model_calls,
            self.forward_passes,
            self.tokens_evaluated,
            self.pruned,
            self.seconds,
            self.n_bytes as f64 / self.seconds.max(1e-9),
        )
    }
}
