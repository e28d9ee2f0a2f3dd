//! `tokenwise generate`: stream a continuation of a prompt, optionally showing how
//! uncertain the model was about each token (colour by entropy, or JSON lines).

use std::io::{self, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use engine::{
    ContrastiveConfig, GenerationParams, GenerationStats, LookaheadConfig, Session, TokenEvent,
};
use model::chat::ChatMessage;
use serde_json::json;

use crate::cmd::kv_args::KvArgs;
pub use crate::cmd::sampling::SamplingArgs;
use crate::cmd::speculative::SpeculativeArgs;
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
        required_unless_present_any = ["prompt_file", "counterfactual"]
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
    pub speculative: SpeculativeArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub lookahead: LookaheadArgs,
    #[command(flatten)]
    pub contrastive: ContrastiveArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Colour each token by the entropy of the model's distribution at that step
    /// (green = confident, red = uncertain).
    #[arg(long)]
    pub show_entropy: bool,
    /// What the colours of --show-entropy show: the entropy of the distribution, or
    /// the sampled token's surprisal (-log p).
    #[arg(long, value_enum, default_value_t = ColorBy::Entropy)]
    pub color_by: ColorBy,
    /// When to use colour: auto (stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Print one JSON object per token, then a summary record, instead of text.
    #[arg(long)]
    pub jsonl: bool,
    /// With --jsonl: include the K most likely alternatives of each token.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logprobs: usize,
    /// Sample by the Gumbel-max trick and record each step's noise (seed and step) in
    /// the --jsonl trace, so the generation can be replayed with --counterfactual.
    #[arg(long)]
    pub gumbel: bool,
    /// Replay the --jsonl trace FILE of a --gumbel generation (its prompt and seed)
    /// with one token edited (--edit), reusing the same noise: the continuation is what
    /// the model would have said after the edit. Pass the same sampling flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "prompt_file", "chat"], requires = "edit")]
    pub counterfactual: Option<PathBuf>,
    /// The edit for --counterfactual: STEP=TOKEN_ID (0-based step of the generation).
    #[arg(long, value_name = "STEP=ID")]
    pub edit: Option<String>,
    /// No timing summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Sample byte by byte from the exact byte-level distribution (marginalised over
    /// tokenisations), so a prompt that ends inside a token continues it correctly.
    /// --max-tokens counts bytes; the sampler flags apply to the 256 bytes plus end.
    #[arg(long, conflicts_with_all = ["chat", "counterfactual", "jsonl", "show_entropy", "contrast_prompt", "gumbel"])]
    pub byte_level: bool,
    /// Token healing: back up the prompt's last token(s) and constrain the first
    /// generated tokens to spell them again, so a prompt that ends mid-word continues
    /// the word. Only the continuation after the prompt is printed (--jsonl shows every
    /// token, the healing ones first).
    #[arg(long, conflicts_with_all = ["chat", "counterfactual", "byte_level", "gumbel"])]
    pub token_healing: bool,
    /// Prompt tokens --token-healing backs up.
    #[arg(long, value_name = "N", default_value_t = engine::healing::DEFAULT_BACK_UP, requires = "token_healing")]
    pub heal_tokens: usize,
    #[command(flatten)]
    pub switching: SwitchingArgs,
}

/// Entropy-adaptive model switching (EAD, lossy; off unless a large model is given).
#[derive(clap::Args)]
pub struct SwitchingArgs {
    /// Generate with --model (the small one) and let this larger model (same
    /// tokenizer) choose the tokens while the small model's rolling entropy exceeds
    /// --switch-threshold.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["byte_level", "token_healing", "counterfactual", "gumbel", "show_entropy"])]
    pub switch_model: Option<String>,
    /// Rolling entropy (nats) above which the large model decides.
    #[arg(
        long,
        value_name = "H",
        default_value_t = 0.5,
        requires = "switch_model"
    )]
    pub switch_threshold: f64,
    /// Steps in the rolling mean of the small model's entropy.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "switch_model")]
    pub switch_window: usize,
}

/// Uncertainty-guided lookahead (AdaDec): off unless a threshold is given or calibrated.
#[derive(clap::Args)]
pub struct LookaheadArgs {
    /// Pause at steps whose entropy exceeds H nats and choose the token by a greedy
    /// lookahead over the top candidates.
    #[arg(long, value_name = "H", conflicts_with = "lookahead_calibrate")]
    pub lookahead_threshold: Option<f32>,
    /// Learn the threshold from a text: the --lookahead-quantile of the model's
    /// per-token entropy on it.
    #[arg(long, value_name = "FILE")]
    pub lookahead_calibrate: Option<PathBuf>,
    /// Quantile for --lookahead-calibrate (0.9: pause at the ~10% most uncertain steps).
    #[arg(long, value_name = "Q", default_value_t = 0.9)]
    pub lookahead_quantile: f64,
    /// Candidates expanded at a pause.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub lookahead_top_k: usize,
    /// Tokens per candidate sequence (the candidate and depth - 1 greedy tokens).
    #[arg(long, value_name = "L", default_value_t = 4)]
    pub lookahead_depth: usize,
}

impl LookaheadArgs {
    /// The lookahead settings, calibrating the threshold on a file when asked.
    pub fn config(&self, loaded: &model::LoadedModel) -> Result<Option<LookaheadConfig>> {
        let threshold = match (&self.lookahead_threshold, &self.lookahead_calibrate) {
            (Some(h), _) => *h,
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let mut entropies = Vec::new();
                eval::score_text(
                    loaded,
                    &text,
                    loaded.model.config.context_length.min(1024),
                    0,
                    &mut |t| entropies.push(t.report.entropy),
                    &mut |_, _| {},
                )
                .with_context(|| format!("calibrating on {}", file.display()))?;
                let h = engine::entropy_quantile(&entropies, self.lookahead_quantile)?;
                eprintln!(
                    "lookahead threshold: {h:.3} nats (quantile {} of {} tokens of {})",
                    self.lookahead_quantile,
                    entropies.len(),
                    file.display()
                );
                h
            }
            (None, None) => return Ok(None),
        };
        let c = LookaheadConfig {
            entropy_threshold: threshold,
            top_k: self.lookahead_top_k,
            depth: self.lookahead_depth,
        };
        c.validate()?;
        Ok(Some(c))
    }
}

/// Uncertainty-aware selective contrastive decoding (USCD): off unless a lame prompt
/// is given.
#[derive(clap::Args)]
pub struct ContrastiveArgs {
    /// The "lame" prompt to contrast with (typically the prompt without its few-shot
    /// examples). Parsed like the prompt (special tokens included; with --chat it is
    /// wrapped the same way).
    #[arg(long, value_name = "TEXT")]
    pub contrast_prompt: Option<String>,
    /// Weight of the lame distribution: score = log p - ALPHA * log p_lame.
    #[arg(long, value_name = "ALPHA", default_value_t = 0.5)]
    pub contrast_alpha: f32,
    /// Contrast only at steps whose entropy exceeds H nats.
    #[arg(long, value_name = "H", default_value_t = 1.0)]
    pub contrast_threshold: f32,
    /// At contrasted steps, drop tokens less likely than P times the most likely one.
    #[arg(long, value_name = "P", default_value_t = 0.1)]
    pub contrast_plausibility: f32,
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
    if a.byte_level {
        return run_byte_level(a);
    }
    let mut sampler = a.sampling.config()?;
    let speculative = a.speculative.config()?;
    let kv = a.kv.options()?;
    let replay = match &a.counterfactual {
        Some(trace) => {
            let r = read_trace(trace, a.edit.as_deref().unwrap_or_default())?;
            if a.sampling.seed.is_some_and(|s| s != r.seed) {
                bail!(
                    "--seed {} differs from the trace's seed {}",
                    a.sampling.seed.unwrap_or(0),
                    r.seed
                );
            }
            sampler.seed = r.seed;
            Some(r)
        }
        None => None,
    };
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
        (None, None) if replay.is_some() => String::new(),
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };

    let (path, loaded) = models::load(&a.model, a.runtime.threads)?;
    let draft_model = match &speculative {
        Some(c) if c.method.needs_draft_model() => a
            .speculative
            .draft
            .load_draft_model(&loaded, a.runtime.threads)?,
        _ => None,
    };
    let sampler = a.sampling.with_dry_breakers(sampler, &loaded.tokenizer)?;
    let n_ctx = models::context_size(&path, &loaded, a.runtime.ctx)?;
    let prompt = match &replay {
        Some(r) => r.prompt_ids.clone(),
        None => prompt_ids(&loaded, &prompt_text, a.chat, a.system.as_deref())?,
    };
    if a.token_healing && speculative.is_some() {
        bail!("--token-healing cannot be combined with speculative decoding");
    }
    let healer = a
        .token_healing
        .then(|| engine::healing::Healer::new(&loaded));
    let healing = match &healer {
        Some(h) => Some(h.plan(&prompt, a.heal_tokens)?),
        None => None,
    };
    // The prompt's own text, which the healed generation spells again: not printed.
    let mut skip = match (&healing, a.jsonl) {
        (Some(plan), false) => plan.removed.len(),
        _ => 0,
    };

    // Fields this command has no flag for keep their defaults (the update is needless
    // only while every field has a flag).
    #[allow(clippy::needless_update)]
    let params = GenerationParams {
        max_tokens: a.max_tokens,
        sampler,
        stop_at_eog: !a.ignore_eos,
        top_logprobs: if a.jsonl { a.top_logprobs } else { 0 },
        stop: a.stop.clone(),
        report_stages: a.jsonl,
        lookahead: a.lookahead.config(&loaded)?,
        contrastive: match &a.contrastive.contrast_prompt {
            Some(lame) => {
                let c = ContrastiveConfig {
                    lame_prompt: prompt_ids(&loaded, lame, a.chat, a.system.as_deref())?,
                    alpha: a.contrastive.contrast_alpha,
                    entropy_threshold: a.contrastive.contrast_threshold,
                    plausibility: a.contrastive.contrast_plausibility,
                };
                c.validate()?;
                Some(c)
            }
            None => None,
        },
        gumbel_max: a.gumbel || replay.is_some(),
        forced: replay
            .as_ref()
            .map(|r| r.forced.clone())
            .unwrap_or_default(),
        ..GenerationParams::default()
    };
    if let Some(large) = &a.switching.switch_model {
        if speculative.is_some() {
            bail!("--switch-model cannot be combined with speculative decoding");
        }
        return run_switching(&a, &loaded, large, n_ctx, &prompt, &params);
    }
    if let Some(r) = &replay {
        eprintln!(
            "counterfactual: step {} was {} {:?}, now {} {:?}; steps before it replayed",
            r.edit_step,
            r.original,
            loaded.tokenizer.token_text(r.original),
            r.forced[r.edit_step],
            loaded.tokenizer.token_text(r.forced[r.edit_step]),
        );
    }
    let colour = a.show_entropy
        && match a.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => io::stdout().is_terminal(),
        };
    if a.show_entropy && !a.jsonl {
        if colour {
            eprintln!("{}", legend(a.color_by));
        } else if a.color == ColorChoice::Auto {
            eprintln!(
                "note: --show-entropy colours only a terminal; use --color always to force it"
            );
        }
    }

    let mut session = Session::new(&loaded, n_ctx)?;
    if !kv.is_exact() {
        session = session.with_kv(&kv)?;
    }
    let tok = &loaded.tokenizer;
    let mut out = io::stdout().lock();
    let mut write_error: Option<io::Error> = None;
    let on_token = |e: &TokenEvent| {
        let r = if a.jsonl {
            let top: Vec<_> = e
                .top
                .iter()
                .map(|&(id, lp)| json!([id, tok.token_text(id), lp]))
                .collect();
            // logprob/entropy/varentropy/rank: the model's own distribution; what the
            // sampler chain did is in "stages" and "sampled_prob".
            let stages: Vec<_> = e
                .stages
                .iter()
                .map(|st| {
                    let mut v = json!({
                        "name": st.name,
                        "removed_mass": st.removed_mass,
                        "kept": st.kept,
                    });
                    if let Some((k, x)) = st.state {
                        v[k] = json!(x);
                    }
                    v
                })
                .collect();
            let rec = json!({
                "id": e.id,
                "text": e.text,
                "piece": tok.token_text(e.id),
                "logprob": e.logprob,
                "entropy": e.entropy,
                "entropy_bits": e.entropy / std::f32::consts::LN_2,
                "varentropy": e.varentropy,
                "rank": e.rank,
                "top": top,
                "sampled_prob": e.sampled_prob,
                "stages": stages,
                "forced": e.forced,
                "gumbel": e.gumbel.map(|g| json!({
                    "seed": g.seed,
                    "step": g.step,
                    "noise": g.noise,
                })),
            });
            writeln!(out, "{rec}")
        } else if colour {
            let value = match a.color_by {
                ColorBy::Entropy => e.entropy,
                ColorBy::Surprisal => -e.logprob,
            };
            let text = String::from_utf8_lossy(unseen(e.text.as_bytes(), &mut skip));
            write_coloured(&mut out, &text, value, a.color_by)
        } else {
            out.write_all(unseen(e.text.as_bytes(), &mut skip))
        };
        match r.and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                write_error = Some(err);
                ControlFlow::Break(())
            }
        }
    };
    let generation = match &speculative {
        Some(c) => {
            let mut speculator =
                crate::cmd::speculative::speculator(c, &loaded, draft_model.as_ref(), a.quiet)?;
            let g = session.generate_speculative(&prompt, &params, &mut speculator, on_token)?;
            if !a.quiet {
                let st = &g.spec;
                eprintln!(
                    "speculative ({}): {} steps, {} drafted, {} accepted, mean accepted length {:.2}{}",
                    a.speculative.speculative,
                    st.steps,
                    st.drafted,
                    st.accepted,
                    st.mean_accepted_length(),
                    if c.method.runs_model() {
                        format!(", {} draft-model passes", st.draft_forwards)
                    } else {
                        String::new()
                    }
                );
            }
            g.generation
        }
        None => match (&healer, &healing) {
            (Some(h), Some(plan)) => {
                let g = h.generate(&mut session, plan, &params, on_token)?;
                if !a.quiet {
                    eprintln!(
                        "token healing: backed up {} token(s), {:?}, respelled by {} token(s)",
                        plan.backed_up,
                        String::from_utf8_lossy(&plan.removed),
                        g.healing_tokens.len()
                    );
                }
                g.generation
            }
            _ => session.generate(&prompt, &params, on_token)?,
        },
    };
    if let Some(err) = write_error {
        // A closed pipe (`| head`) is the reader saying it has seen enough.
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(err).context("writing to stdout");
    }

    let stats = &generation.stats;
    let end = if a.jsonl {
        let mut summary = summary_json(stats, &params);
        summary["prompt_ids"] = json!(prompt);
        summary["gumbel_max"] = json!(params.gumbel_max);
        let rec = json!({ "summary": summary });
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

/// What `--counterfactual` replays: a recorded generation with one token edited.
struct Replay {
    prompt_ids: Vec<u32>,
    seed: u64,
    /// The recorded tokens up to and including the edited step, edit applied.
    forced: Vec<u32>,
    edit_step: usize,
    original: u32,
}

/// Reads a `generate --jsonl --gumbel` trace and applies `edit` (`STEP=ID`).
fn read_trace(path: &std::path::Path, edit: &str) -> Result<Replay> {
    let (step, id) = edit
        .split_once('=')
        .and_then(|(s, t)| {
            Some((
                s.trim().parse::<usize>().ok()?,
                t.trim().parse::<u32>().ok()?,
            ))
        })
        .with_context(|| format!("--edit {edit:?}: expected STEP=TOKEN_ID"))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = Vec::new();
    let mut summary = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        if let Some(s) = v.get("summary") {
            summary = Some(s.clone());
        } else {
            let id = v["id"]
                .as_u64()
                .with_context(|| format!("{}:{}: no token id", path.display(), n + 1))?;
            tokens.push(id as u32);
        }
    }
    let summary = summary.with_context(|| {
        format!(
            "{}: no summary record (was it written by generate --jsonl?)",
            path.display()
        )
    })?;
    if summary["gumbel_max"] != json!(true) {
        bail!(
            "{}: not a --gumbel trace; its noise cannot be replayed",
            path.display()
        );
    }
    let seed = summary["seed"]
        .as_u64()
        .context("the trace's summary has no seed")?;
    let prompt_ids: Vec<u32> = summary["prompt_ids"]
        .as_array()
        .context("the trace's summary has no prompt_ids")?
        .iter()
        .map(|v| {
            v.as_u64()
                .map(|x| x as u32)
                .context("a prompt id is not a number")
        })
        .collect::<Result<_>>()?;
    if step >= tokens.len() {
        bail!(
            "--edit step {step} is past the trace's {} tokens",
            tokens.len()
        );
    }
    let original = tokens[step];
    let mut forced = tokens[..=step].to_vec();
    forced[step] = id;
    Ok(Replay {
        prompt_ids,
        seed,
        forced,
        edit_step: step,
        original,
    })
}

/// A prompt's token ids: as written (special tokens parsed), or as one user message of
/// the model's chat template.
fn prompt_ids(
    loaded: &model::LoadedModel,
    text: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<Vec<u32>> {
    if chat {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", text));
        Ok(engine::chat_prompt_ids(loaded, &messages, true)?)
    } else {
        Ok(loaded.tokenizer.encode_prompt(text)?)
    }
}

/// Low (green) to high (red), ANSI 256-colour codes.
const PALETTE: [u8; 11] = [46, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196];

/// What a token's colour shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorBy {
    /// Entropy of the model's next-token distribution (how unsure it was).
    Entropy,
    /// The chosen token's surprisal, -log p (how unexpected the token was).
    Surprisal,
}

impl ColorBy {
    /// The value (nats) mapped to the reddest colour. A small model's next-token
    /// entropy rarely exceeds ~5 nats (guessing among ~150 tokens); a surprisal of 10
    /// nats is a 1-in-22000 token.
    fn max_nats(self) -> f32 {
        match self {
            ColorBy::Entropy => 5.0,
            ColorBy::Surprisal => 10.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ColorBy::Entropy => "entropy",
            ColorBy::Surprisal => "surprisal",
        }
    }
}

fn palette_index(value: f32, by: ColorBy) -> usize {
    let x = if value.is_finite() {
        value / by.max_nats()
    } else {
        1.0
    };
    (x.clamp(0.0, 1.0) * (PALETTE.len() - 1) as f32).round() as usize
}

/// Text on a coloured background, black foreground (readable on light and dark
/// terminals, and spaces stay visible). Colours are reset before each newline so a
/// background does not bleed to the end of the line.
pub(crate) fn write_coloured(
    out: &mut impl Write,
    text: &str,
    value: f32,
    by: ColorBy,
) -> io::Result<()> {
    let c = PALETTE[palette_index(value, by)];
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

/// The colour scale, for stderr.
pub(crate) fn legend(by: ColorBy) -> String {
    let mut s = format!("{} (nats):", by.name());
    for (i, c) in PALETTE.iter().enumerate() {
        let v = by.max_nats() * i as f32 / (PALETTE.len() - 1) as f32;
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
        "lookahead": p.lookahead.as_ref().map(|la| json!({
            "entropy_threshold": la.entropy_threshold,
            "top_k": la.top_k,
            "depth": la.depth,
            "pauses": s.lookahead.pauses,
            "changed": s.lookahead.changed,
            "extra_forward_passes": s.lookahead.forwards,
            "secs": s.lookahead.secs,
        })),
        "contrastive": p.contrastive.as_ref().map(|c| json!({
            "alpha": c.alpha,
            "entropy_threshold": c.entropy_threshold,
            "plausibility": c.plausibility,
            "contrasted": s.contrastive.contrasted,
            "changed": s.contrastive.changed,
            "lame_tokens": s.contrastive.lame_tokens,
            "secs": s.contrastive.secs,
        })),
    })
}

fn summary_text(s: &GenerationStats, p: &GenerationParams) -> String {
    let sampling = if p.sampler.is_greedy() {
        "greedy".to_string()
    } else {
        format!("seed {}", p.sampler.seed)
    };
    let lookahead = match &p.lookahead {
        Some(la) => format!(
            " | lookahead (H > {:.2}): {} pauses, {} changed the token, {} extra passes, {:.2} s",
            la.entropy_threshold,
            s.lookahead.pauses,
            s.lookahead.changed,
            s.lookahead.forwards,
            s.lookahead.secs,
        ),
        None => String::new(),
    };
    let contrastive = if p.contrastive.is_some() {
        format!(
            " | contrastive: {} steps, {} changed the token, {} lame tokens, {:.2} s",
            s.contrastive.contrasted,
            s.contrastive.changed,
            s.contrastive.lame_tokens,
            s.contrastive.secs
        )
    } else {
        String::new()
    };
    format!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | stop: {} | {sampling}{lookahead}{contrastive}",
        s.prompt_tokens,
        s.prefill_tokens_per_sec(),
        s.generated_tokens,
        s.decode_tokens_per_sec(),
        s.stop_reason,
    )
}

/// `generate --byte-level`: the prompt's bytes go through the byte-level model
/// (`engine::byte_level`), then bytes are drawn one at a time from its next-byte
/// distribution (256 bytes and end-of-text) with the sampler chain. Tokenisations are
/// pruned as in `score --bytes` (relative mass 1e-4, at most 8 new per byte).
/// `generate --switch-model`: the small model (`loaded`) and the large one decide by
/// the small model's rolling entropy (`engine::switching`); text (or --jsonl records
/// with the deciding model) on stdout, the large model's share on stderr.
fn run_switching(
    a: &Args,
    loaded: &model::LoadedModel,
    large_name: &str,
    n_ctx: usize,
    prompt: &[u32],
    params: &GenerationParams,
) -> Result<()> {
    use engine::switching::{EntropySwitching, SwitchingConfig};
    let (_, large) = models::load(large_name, a.runtime.threads)?;
    let config = SwitchingConfig {
        threshold: a.switching.switch_threshold,
        window: a.switching.switch_window,
    };
    let mut switching = EntropySwitching::new(loaded, &large, n_ctx, config)?;
    let mut out = io::stdout().lock();
    let mut write_error = None;
    let g = switching.generate(prompt, params, |t| {
        let r = if a.jsonl {
            let rec = json!({
                "index": t.index,
                "id": t.id,
                "text": t.text,
                "from_large": t.from_large,
                "small_entropy": t.small_entropy,
                "rolling_entropy": t.rolling_entropy,
            });
            writeln!(out, "{rec}")
        } else {
            out.write_all(t.text.as_bytes())
        };
        match r.and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(err) = write_error {
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(err).context("writing to stdout");
    }
    let st = &g.stats;
    if a.jsonl {
        let rec = json!({ "summary": {
            "generated_tokens": st.generated_tokens,
            "large_tokens": st.large_tokens,
            "large_share": st.large_share(),
            "large_catch_ups": st.large_catch_ups,
            "secs": st.secs,
            "stop_reason": format!("{:?}", st.stop_reason),
        }});
        writeln!(out, "{rec}").context("writing to stdout")?;
    } else {
        writeln!(out).context("writing to stdout")?;
    }
    if !a.quiet {
        eprintln!(
            "entropy switching (threshold {} nats, window {}): {} tokens, {} from the large model ({:.0}%), {} catch-ups, {:.2} tok/s",
            config.threshold,
            config.window,
            st.generated_tokens,
            st.large_tokens,
            100.0 * st.large_share(),
            st.large_catch_ups,
            st.generated_tokens as f64 / st.secs.max(1e-9),
        );
    }
    Ok(())
}

fn run_byte_level(a: Args) -> Result<()> {
    use engine::byte_level::{model_vocabulary, ByteScorer, Prune};

    if a.speculative.config()?.is_some() {
        bail!("--byte-level cannot be combined with speculative decoding");
    }
    if a.kv.kv_policy != "full" || a.kv.kv_budget.is_some() {
        bail!("--byte-level keeps the full KV cache: drop --kv-policy/--kv-budget");
    }
    if a.lookahead.lookahead_threshold.is_some() || a.lookahead.lookahead_calibrate.is_some() {
        bail!("--byte-level cannot be combined with lookahead decoding");
    }
    let sampler_config = a.sampling.config()?;
    let seed = sampler_config.seed;
    let mut sampler = sample::Sampler::try_new(sampler_config)?;
    let prompt: Vec<u8> = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut b = Vec::new();
            io::stdin()
                .read_to_end(&mut b)
                .context("reading the prompt from stdin")?;
            b
        }
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };
    let (_, loaded) = models::load(&a.model, a.runtime.threads)?;
    let vocab = model_vocabulary(&loaded).context("building the byte vocabulary")?;
    let prune = Prune {
        min_relative: 1e-4,
        max_new_boundaries: 8,
    };
    let started = std::time::Instant::now();
    // A token context never holds more tokens than there are bytes.
    let mut scorer = ByteScorer::new(&loaded, &vocab, prune, prompt.len() + a.max_tokens)
        .context("starting the byte-level model")?;
    for (i, &b) in prompt.iter().enumerate() {
        scorer
            .push(b)
            .with_context(|| format!("the prompt's byte {i} (0x{b:02x})"))?;
    }
    let prompt_secs = started.elapsed().as_secs_f64();

    let mut out = io::stdout().lock();
    let stops: Vec<&[u8]> = a.stop.iter().map(|s| s.as_bytes()).collect();
    let mut generated: Vec<u8> = Vec::new();
    // Bytes held back while they could still be the start of a stop string.
    let mut shown = 0;
    let mut history: Vec<u32> = prompt.iter().map(|&b| b as u32).collect();
    let mut logits = [0f32; 257];
    let mut reason = "max-tokens";
    let gen_started = std::time::Instant::now();
    while generated.len() < a.max_tokens {
        let d = scorer.distribution();
        for (l, &p) in logits.iter_mut().zip(d.bytes.iter().chain([&d.end])) {
            *l = (p.ln()) as f32;
        }
        if a.ignore_eos {
            logits[256] = f32::NEG_INFINITY;
        }
        let choice = sampler.sample(&mut logits, &history)?;
        if choice == 256 {
            reason = "end of text";
            break;
        }
        let b = choice as u8;
        scorer.push(b).context("pushing a sampled byte")?;
        history.push(choice);
        generated.push(b);
        if let Some(pos) = stops.iter().filter_map(|s| find(&generated, s)).min() {
            generated.truncate(pos);
            reason = "stop string";
            break;
        }
        // Show everything that cannot be the start of a stop string.
        let safe = generated.len()
            - stops
                .iter()
                .map(|s| partial_suffix(&generated, s))
                .max()
                .unwrap_or(0);
        if safe > shown {
            if let Err(e) = out
                .write_all(&generated[shown..safe])
                .and_then(|()| out.flush())
            {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e).context("writing to stdout");
            }
            shown = safe;
        }
    }
    let rest = out
        .write_all(&generated[shown.min(generated.len())..])
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match rest {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        r => r.context("writing to stdout")?,
    }
    if !a.quiet {
        let gen_secs = gen_started.elapsed().as_secs_f64();
        let stats = scorer.stats();
        eprintln!(
            "\n[byte-level: prompt {} bytes in {:.1} s, generated {} bytes in {:.1} s ({:.1} bytes/s), stopped by {reason}; {} model calls, {} tokenisations pruned, seed {seed}]",
            prompt.len(),
            prompt_secs,
            generated.len(),
            gen_secs,
            generated.len() as f64 / gen_secs.max(1e-9),
            stats.model_calls,
            stats.pruned,
        );
    }
    Ok(())
}

/// What is left of `text` after skipping `skip` more bytes of it (the healed
/// prompt text), counting the skipped ones off.
fn unseen<'t>(text: &'t [u8], skip: &mut usize) -> &'t [u8] {
    let n = (*skip).min(text.len());
    *skip -= n;
    &text[n..]
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    (1..needle.len().min(hay.len() + 1))
        .rev()
        .find(|&k| hay.ends_with(&needle[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_spans_green_to_red() {
        for by in [ColorBy::Entropy, ColorBy::Surprisal] {
            assert_eq!(PALETTE[palette_index(0.0, by)], 46);
            assert_eq!(PALETTE[palette_index(by.max_nats() * 3.0, by)], 196);
            assert_eq!(PALETTE[palette_index(f32::NAN, by)], 196);
        }
        // Surprisal's scale is twice entropy's: 5 nats is mid-scale.
        assert_eq!(palette_index(5.0, ColorBy::Surprisal), 5);
    }

    #[test]
    fn colour_resets_before_newlines() {
        let mut v = Vec::new();
        write_coloured(&mut v, "a\nb", 0.0, ColorBy::Entropy).unwrap();
        let s = String::from_utf8(v).unwrap();
        assert_eq!(
            s,
            "\x1b[48;5;46m\x1b[38;5;16ma\x1b[0m\n\x1b[48;5;46m\x1b[38;5;16mb\x1b[0m"
        );
    }
}
