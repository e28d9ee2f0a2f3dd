//! `tokenwise chat`: a read-eval-print loop over the model's chat template.
//!
//! Each line on stdin is one user message (so a script can pipe a conversation in and
//! the loop ends at EOF). The whole conversation is rendered every turn, but the
//! session keeps its KV cache, so only the new turn is computed. `/reset` forgets the
//! conversation, `/exit` quits.

use std::io::{self, BufRead, IsTerminal, Write};
use std::ops::ControlFlow;

use anyhow::{bail, Context, Result};
use engine::{GenerationParams, Session};
use model::chat::ChatMessage;
use model::LoadedModel;

use super::generate::{RuntimeArgs, SamplingArgs};
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// System message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// No per-turn speed line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sampler = a.sampling.config()?;
    let (path, loaded) = models::load(&a.model, a.runtime.threads)?;
    let sampler = a.sampling.with_dry_breakers(sampler, &loaded.tokenizer)?;
    if loaded.chat_template.is_none() {
        bail!(
            "{} has no chat template; use `tokenwise generate` instead",
            path.display()
        );
    }
    let n_ctx = models::context_size(&path, &loaded, a.runtime.ctx)?;
    let params = GenerationParams {
        max_tokens: a.max_tokens,
        sampler,
        stop_at_eog: true,
        top_logprobs: 0,
        stop: Vec::new(),
        ..GenerationParams::default()
    };
    let mut session = Session::new(&loaded, n_ctx)?;
    let system: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut history = system.clone();

    let interactive = io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chatting with {} (context {n_ctx}); /reset clears the conversation, /exit quits",
            path.display()
        );
    }
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clone_from(&system);
                session.reset();
                if interactive {
                    eprintln!("(conversation cleared)");
                }
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", input));
        let prompt = match fit_history(&loaded, &mut history, system.len(), n_ctx, a.max_tokens) {
            Ok(p) => p,
            Err(e) => {
                // The turn cannot be answered; the conversation goes on without it.
                history.pop();
                eprintln!("error: {e:#}");
                continue;
            }
        };

        let mut out = io::stdout().lock();
        let mut write_error = None;
        let g = session.generate(&prompt, &params, |e| {
            match out.write_all(e.text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ControlFlow::Continue(()),
                Err(err) => {
                    write_error = Some(err);
                    ControlFlow::Break(())
                }
            }
        });
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}");
                continue;
            }
        };
        if let Some(err) = write_error {
            if err.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(err).context("writing to stdout");
        }
        match writeln!(out).and_then(|()| out.flush()) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.context("writing to stdout")?,
        }
        history.push(ChatMessage::new("assistant", g.text.as_str()));
        let s = &g.stats;
        if !a.quiet {
            eprintln!(
                "[{} prompt tokens ({} reused), {:.1} tok/s | {} generated, {:.1} tok/s | {}]",
                s.prompt_tokens,
                s.reused_tokens,
                s.prefill_tokens_per_sec(),
                s.generated_tokens,
                s.decode_tokens_per_sec(),
                s.stop_reason,
            );
        }
    }
    Ok(())
}

/// Renders the conversation, dropping the oldest exchanges (never the system message
/// or the new user message) until it leaves room for a reply of up to `max_tokens`
/// (at most half the context, so long replies do not evict the whole history).
fn fit_history(
    model: &LoadedModel,
    history: &mut Vec<ChatMessage>,
    n_system: usize,
    n_ctx: usize,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let reserve = max_tokens.clamp(1, (n_ctx / 2).max(1));
    let mut dropped = 0;
    loop {
        let ids = engine::chat_prompt_ids(model, history, true)?;
        if ids.len() + reserve <= n_ctx || history.len() <= n_system + 1 {
            if dropped > 0 {
                eprintln!("(dropped the {dropped} oldest messages to fit the context)");
            }
            // Still too long on its own: the session reports it in one line.
            return Ok(ids);
        }
        // Drop the oldest user message and the reply that followed it.
        history.remove(n_system);
        dropped += 1;
        if history.len() > n_system + 1 && history[n_system].role == "assistant" {
            history.remove(n_system);
            dropped += 1;
        }
    }
}
