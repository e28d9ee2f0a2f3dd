//! `tokenwise generate`: stream a continuation of a prompt, optionally showing how
//! uncertain the model was about each token (colour by entropy, or JSON lines).

use std::io::{self, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use engine::{GenerationParams, GenerationStats, SamplerConfig, Session, TokenEvent};
use model::chat::ChatMessage;
use serde_json::json;

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// The prompt. Special tokens written in it (`<|im_start|>`) are parsed as such.
    #[arg(
        long,
        short,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Stop when the output contains this text (repeatable); it is not printed.
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (EOS, <|im_end|>, ...).
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Colour each token by the entropy of the model's distribution at that step
    /// (green = confident, red = uncertain).
    #[arg(long)]
    pub show_entropy: bool,
    /// When to use colour: auto (stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Print one JSON object per token, then a summary record, instead of text.
    #[arg(long)]
    pub jsonl: bool,
    /// With --jsonl: include the K most likely alternatives of each token.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logprobs: usize,
    /// No timing summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Sampling flags, shared with `chat`. The defaults are llama.cpp's.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Softmax temperature (0 = greedy). 0.8 is llama.cpp's default: a little sharper
    /// than the model's distribution, which keeps small models on topic.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Always take the most likely token (same as --temperature 0).
    #[arg(long)]
    pub greedy: bool,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock; the summary prints the one used).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampler settings, validated, so a bad flag fails before the model loads.
    pub fn config(&self) -> Result<SamplerConfig> {
        let seed = self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let c = SamplerConfig {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Threads and context size, shared with `chat`.
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// Context size in tokens, prompt and output together (default: the model's
    /// training context, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

pub fn run(a: Args) -> Result<()> {
    let sampler = a.sampling.config()?;
    let prompt_text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };

    let (path, loaded) = models::load(&a.model, a.runtime.threads)?;
    let n_ctx = models::context_size(&path, &loaded, a.runtime.ctx)?;
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s.as_str()));
        }
        messages.push(ChatMessage::new("user", prompt_text.as_str()));
        engine::chat_prompt_ids(&loaded, &messages, true)?
    } else {
        loaded.tokenizer.encode_prompt(&prompt_text)?
    };

    let params = GenerationParams {
        max_tokens: a.max_tokens,
        sampler,
        stop_at_eog: !a.ignore_eos,
        top_logprobs: if a.jsonl { a.top_logprobs } else { 0 },
        stop: a.stop.clone(),
    };
    let colour = a.show_entropy
        && match a.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => io::stdout().is_terminal(),
        };
    if a.show_entropy && !a.jsonl {
        if colour {
            eprintln!("{}", entropy_legend());
        } else if a.color == ColorChoice::Auto {
            eprintln!(
                "note: --show-entropy colours only a terminal; use --color always to force it"
            );
        }
    }

    let mut session = Session::new(&loaded, n_ctx)?;
    let tok = &loaded.tokenizer;
    let mut out = io::stdout().lock();
    let mut write_error: Option<io::Error> = None;
    let generation = session.generate(&prompt, &params, |e: &TokenEvent| {
        let r = if a.jsonl {
            let top: Vec<_> = e
                .top
                .iter()
                .map(|&(id, lp)| json!([id, tok.token_text(id), lp]))
                .collect();
            let rec = json!({
                "id": e.id,
                "text": e.text,
                "piece": tok.token_text(e.id),
                "logprob": e.logprob,
                "entropy": e.entropy,
                "rank": e.rank,
                "top": top,
            });
            writeln!(out, "{rec}")
        } else if colour {
            write_coloured(&mut out, &e.text, e.entropy)
        } else {
            out.write_all(e.text.as_bytes())
        };
        match r.and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                write_error = Some(err);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(err) = write_error {
        // A closed pipe (`| head`) is the reader saying it has seen enough.
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(err).context("writing to stdout");
    }

    let stats = &generation.stats;
    let end = if a.jsonl {
        let rec = json!({ "summary": summary_json(stats, &params) });
        writeln!(out, "{rec}")
    } else {
        // End the text with a newline so the shell prompt starts on its own line.
        writeln!(out)
    };
    match end.and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        r => r.context("writing to stdout")?,
    }
    if !a.quiet {
        eprintln!("{}", summary_text(stats, &params));
    }
    Ok(())
}

/// Low entropy (green) to high (red), ANSI 256-colour codes.
const PALETTE: [u8; 11] = [46, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196];
/// Entropy (nats) mapped to the reddest colour. A small model's next-token entropy
/// rarely exceeds ~5 nats; beyond that the model is guessing among ~150+ tokens.
const MAX_ENTROPY_NATS: f32 = 5.0;

fn palette_index(entropy: f32) -> usize {
    let x = if entropy.is_finite() {
        entropy / MAX_ENTROPY_NATS
    } else {
        1.0
    };
    (x.clamp(0.0, 1.0) * (PALETTE.len() - 1) as f32).round() as usize
}

/// Text on a coloured background, black foreground (readable on light and dark
/// terminals, and spaces stay visible). Colours are reset before each newline so a
/// background does not bleed to the end of the line.
fn write_coloured(out: &mut impl Write, text: &str, entropy: f32) -> io::Result<()> {
    let c = PALETTE[palette_index(entropy)];
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.write_all(b"\n")?;
        }
        if !line.is_empty() {
            write!(out, "\x1b[48;5;{c}m\x1b[38;5;16m{line}\x1b[0m")?;
        }
    }
    Ok(())
}

fn entropy_legend() -> String {
    let mut s = String::from("entropy (nats):");
    for (i, c) in PALETTE.iter().enumerate() {
        let v = MAX_ENTROPY_NATS * i as f32 / (PALETTE.len() - 1) as f32;
        let plus = if i + 1 == PALETTE.len() { "+" } else { "" };
        s.push_str(&format!(" \x1b[48;5;{c}m\x1b[38;5;16m{v:.1}{plus}\x1b[0m"));
    }
    s
}

fn summary_json(s: &GenerationStats, p: &GenerationParams) -> serde_json::Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "prefill_secs": s.prefill_secs,
        "prefill_tokens_per_sec": s.prefill_tokens_per_sec(),
        "generated_tokens": s.generated_tokens,
        "decode_secs": s.decode_secs,
        "decode_tokens_per_sec": s.decode_tokens_per_sec(),
        "stop_reason": s.stop_reason.as_str(),
        "seed": p.sampler.seed,
        "temperature": p.sampler.temperature,
    })
}

fn summary_text(s: &GenerationStats, p: &GenerationParams) -> String {
    let sampling = if p.sampler.is_greedy() {
        "greedy".to_string()
    } else {
        format!("seed {}", p.sampler.seed)
    };
    format!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | stop: {} | {sampling}",
        s.prompt_tokens,
        s.prefill_tokens_per_sec(),
        s.generated_tokens,
        s.decode_tokens_per_sec(),
        s.stop_reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_spans_green_to_red() {
        assert_eq!(PALETTE[palette_index(0.0)], 46);
        assert_eq!(PALETTE[palette_index(MAX_ENTROPY_NATS * 3.0)], 196);
        assert_eq!(PALETTE[palette_index(f32::NAN)], 196);
    }

    #[test]
    fn colour_resets_before_newlines() {
        let mut v = Vec::new();
        write_coloured(&mut v, "a\nb", 0.0).unwrap();
        let s = String::from_utf8(v).unwrap();
        assert_eq!(
            s,
            "\x1b[48;5;46m\x1b[38;5;16ma\x1b[0m\n\x1b[48;5;46m\x1b[38;5;16mb\x1b[0m"
        );
    }
}
