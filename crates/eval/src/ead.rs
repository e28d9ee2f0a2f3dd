//! Entropy-adaptive model switching (`engine::switching`) on HumanEval: the small model
//! alone, the large model alone, and switching at each entropy threshold.
//!
//! Each problem's prompt (the function signature and docstring, as given) is completed
//! greedily until the function ends (the first line indented at or left of the last
//! `def`), the completion is cut there, and the problem's tests run on prompt plus
//! completion in the sandbox of [`crate::humaneval`] (pass@1). Per decoder it reports
//! the share of generated tokens the large model chose, wall-clock tokens per second
//! (prompt prefill included, the sandbox not), and the perplexity of the kept
//! completion tokens under the large model: the quality measure that does not need
//! tests, and that is lowest, by construction, for the large model's own greedy text.

use std::ops::ControlFlow;
use std::time::Instant;

use engine::{EntropySwitching, GenerationParams, Session, SwitchingConfig};
use model::{Batch, LoadedModel, LogitsFor};

use crate::humaneval::{function_end, prompt_ids, run_sandboxed, Outcome, Problem, SandboxOptions};
use crate::{EvalError, Result};

/// Which way completions are generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoder {
    Small,
    Large,
    /// Entropy switching at this threshold (nats).
    Switched {
        threshold: f64,
    },
}

impl Decoder {
    pub fn name(self) -> String {
        match self {
            Decoder::Small => "small".into(),
            Decoder::Large => "large".into(),
            Decoder::Switched { threshold } => format!("ead@{threshold}"),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct EadOptions {
    /// Thresholds of the switched runs (nats); the small and large runs always come
    /// first.
    pub thresholds: Vec<f64>,
    /// Steps in the rolling entropy mean.
    pub window: usize,
    /// Most tokens per completion.
    pub max_tokens: usize,
    pub sandbox: SandboxOptions,
}

impl EadOptions {
    /// Thresholds must be numbers (`inf` and `-inf` allowed), the window and token
    /// budget positive.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.thresholds.iter().find(|t| t.is_nan()) {
            return Err(EvalError::Input(format!("threshold {t} is not a number")));
        }
        if self.window == 0 {
            return Err(EvalError::Input(
                "the window must be at least 1 step".into(),
            ));
        }
        if self.max_tokens == 0 {
            return Err(EvalError::Input("max tokens must be at least 1".into()));
        }
        Ok(())
    }

    /// Small, large, then one switched decoder per threshold.
    pub fn decoders(&self) -> Vec<Decoder> {
        let mut d = vec![Decoder::Small, Decoder::Large];
        d.extend(
            self.thresholds
                .iter()
                .map(|&threshold| Decoder::Switched { threshold }),
        );
        d
    }
}

/// One problem completed by one decoder, and the verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct EadRecord {
    pub task_id: String,
    pub decoder: Decoder,
    /// The completion, cut at the end of the function.
    pub completion: String,
    pub outcome: Outcome,
    /// Tokens generated (those past the function's end included: they were paid for).
    pub generated_tokens: usize,
    /// Of those, the ones the large model chose.
    pub large_tokens: usize,
    /// Wall-clock seconds of generation.
    pub secs: f64,
    /// Negative log-likelihood (nats) of the kept completion tokens under the large
    /// model, and how many there were.
    pub large_nll: f64,
    pub scored_tokens: usize,
}

impl EadRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "task_id": self.task_id,
            "decoder": self.decoder.name(),
            "outcome": self.outcome.name(),
            "generated_tokens": self.generated_tokens,
            "large_tokens": self.large_tokens,
            "secs": self.secs,
            "large_nll": self.large_nll,
            "scored_tokens": self.scored_tokens,
            "completion": self.completion,
        })
    }
}

/// Totals of one decoder over the problems.
#[derive(Clone, Debug, PartialEq)]
pub struct EadSummary {
    pub decoder: Decoder,
    pub problems: usize,
    pub passed: usize,
    pub generated_tokens: usize,
    pub large_tokens: usize,
    pub secs: f64,
    pub large_nll: f64,
    pub scored_tokens: usize,
}

impl EadSummary {
    fn new(decoder: Decoder) -> EadSummary {
        EadSummary {
            decoder,
            problems: 0,
            passed: 0,
            generated_tokens: 0,
            large_tokens: 0,
            secs: 0.0,
            large_nll: 0.0,
            scored_tokens: 0,
        }
    }

    fn add(&mut self, r: &EadRecord) {
        self.problems += 1;
        self.passed += usize::from(r.outcome.passed());
        self.generated_tokens += r.generated_tokens;
        self.large_tokens += r.large_tokens;
        self.secs += r.secs;
        self.large_nll += r.large_nll;
        self.scored_tokens += r.scored_tokens;
    }

    pub fn pass_at_1(&self) -> f64 {
        ratio(self.passed as f64, self.problems as f64)
    }

    /// Share of all generated tokens that the large model chose.
    pub fn large_share(&self) -> f64 {
        ratio(self.large_tokens as f64, self.generated_tokens as f64)
    }

    pub fn tokens_per_sec(&self) -> f64 {
        ratio(self.generated_tokens as f64, self.secs)
    }

    /// Perplexity of all kept completion tokens under the large model (one pooled
    /// mean, so long completions weigh by their length).
    pub fn large_perplexity(&self) -> f64 {
        if self.scored_tokens == 0 {
            f64::NAN
        } else {
            (self.large_nll / self.scored_tokens as f64).exp()
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn engine_err(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

/// The indentation that a line must be left of to end the prompt's function: one more
/// than the last `def` line's (HumanEval prompts may define helpers first).
fn body_indent(prompt: &str) -> usize {
    prompt
        .lines()
        .rfind(|l| l.trim_start().starts_with("def "))
        .map_or(0, |l| l.len() - l.trim_start().len())
        + 1
}

/// Where the function ends in a completion that starts on a fresh line (the prompt
/// ends with a newline); `function_end` treats its first line as the rest of a cut
/// line, so it gets an empty one.
fn completion_end(completion: &str, indent: usize) -> Option<usize> {
    function_end(&format!("\n{completion}"), indent).map(|end| end - 1)
}

/// One completion as generated: the tokens with their texts and which model chose each.
struct Generated {
    tokens: Vec<(u32, String)>,
    large_tokens: usize,
    secs: f64,
}

/// Completes `prompt` with `decoder`, stopping once the function has ended.
fn generate(
    small: &LoadedModel,
    large: &LoadedModel,
    decoder: Decoder,
    prompt: &[u32],
    indent: usize,
    opts: &EadOptions,
) -> Result<Generated> {
    let n_ctx = prompt.len() + opts.max_tokens + 1;
    let params = GenerationParams {
        max_tokens: opts.max_tokens,
        ..GenerationParams::default()
    };
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut on_token = |id: u32, piece: &str| {
        tokens.push((id, piece.to_string()));
        text.push_str(piece);
        if completion_end(&text, indent).is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let (large_tokens, secs) = match decoder {
        Decoder::Small | Decoder::Large => {
            let model = if decoder == Decoder::Small {
                small
            } else {
                large
            };
            let mut session = Session::new(model, n_ctx).map_err(engine_err)?;
            let start = Instant::now();
            let g = session
                .generate(prompt, &params, |e| on_token(e.id, &e.text))
                .map_err(engine_err)?;
            let secs = start.elapsed().as_secs_f64();
            let from_large = if decoder == Decoder::Large {
                g.tokens.len()
            } else {
                0
            };
            (from_large, secs)
        }
        Decoder::Switched { threshold } => {
            let config = SwitchingConfig {
                threshold,
                window: opts.window,
            };
            let mut ead = EntropySwitching::new(small, large, n_ctx, config).map_err(engine_err)?;
            let start = Instant::now();
            let g = ead
                .generate(prompt, &params, |t| on_token(t.id, &t.text))
                .map_err(engine_err)?;
            (g.stats.large_tokens, start.elapsed().as_secs_f64())
        }
    };
    Ok(Generated {
        tokens,
        large_tokens,
        secs,
    })
}

/// Negative log-likelihood (nats) of `completion` after `prompt` under `model`: the
/// prompt is computed first (its last row predicts the first completion token), then
/// the completion in chunks whose every row predicts the next token.
pub fn completion_nll(model: &LoadedModel, prompt: &[u32], completion: &[u32]) -> Result<f64> {
    // Rows per forward call: bounds the logits buffer (rows x vocabulary floats).
    const CHUNK: usize = 64;
    if prompt.is_empty() {
        return Err(EvalError::Input("scoring needs a non-empty prompt".into()));
    }
    let m = &model.model;
    let mut state = m.new_state(prompt.len() + completion.len());
    let mut positions: Vec<usize> = Vec::new();
    let mut next_logits: Vec<f32> = Vec::new();
    let mut start = 0;
    for chunk in prompt.chunks(CHUNK) {
        positions.clear();
        positions.extend(start..start + chunk.len());
        let logits = m.forward(&mut state, &Batch::causal(chunk, &positions), None)?;
        next_logits.clear();
        next_logits.extend_from_slice(logits);
        start += chunk.len();
    }
    let vocab = m.config.vocab_size;
    let mut nll = 0.0;
    // `next_logits` predicts `completion[done]`; the last completion token is scored
    // but never fed.
    let mut done = 0;
    while done < completion.len() {
        nll -= f64::from(sample::token_stats(&next_logits, completion[done]).logprob);
        let feed_end = (done + CHUNK).min(completion.len() - 1);
        if feed_end <= done {
            break;
        }
        let feed = &completion[done..feed_end];
        positions.clear();
        positions.extend(start..start + feed.len());
        let batch = Batch {
            logits: LogitsFor::All,
            ..Batch::causal(feed, &positions)
        };
        let rows = m.forward(&mut state, &batch, None)?;
        // Row i predicts completion[done + i + 1]; the last row carries over.
        for (i, row) in rows.chunks_exact(vocab).enumerate().take(feed.len() - 1) {
            nll -= f64::from(sample::token_stats(row, completion[done + i + 1]).logprob);
        }
        next_logits.clear();
        next_logits.extend_from_slice(&rows[(feed.len() - 1) * vocab..feed.len() * vocab]);
        start += feed.len();
        done = feed_end;
    }
    Ok(nll)
}

/// Runs every decoder of `opts` on every problem, reporting each record to
/// `on_record` as soon as its test has run, and returns one summary per decoder.
pub fn run_ead(
    small: &LoadedModel,
    large: &LoadedModel,
    problems: &[Problem],
    opts: &EadOptions,
    on_record: &mut dyn FnMut(&EadRecord),
) -> Result<Vec<EadSummary>> {
    opts.validate()?;
    engine::check_same_vocabulary(large, small).map_err(|e| {
        EvalError::Input(format!(
            "the small and large models need one tokenizer ({e})"
        ))
    })?;
    let decoders = opts.decoders();
    let mut totals: Vec<EadSummary> = decoders.iter().map(|&d| EadSummary::new(d)).collect();
    for problem in problems {
        let prompt = prompt_ids(small, &problem.prompt)?;
        let indent = body_indent(&problem.prompt);
        for (decoder, total) in decoders.iter().zip(&mut totals) {
            let generated = generate(small, large, *decoder, &prompt, indent, opts)?;
            let full: String = generated.tokens.iter().map(|(_, t)| t.as_str()).collect();
            let kept_len = completion_end(&full, indent).unwrap_or(full.len());
            let completion = full[..kept_len].to_string();
            // The tokens whose text lies inside the kept completion (an
            // end-of-generation token shows no text and is not completion text).
            let mut kept_tokens = Vec::new();
            let mut len = 0;
            for (id, piece) in &generated.tokens {
                len += piece.len();
                if len > kept_len {
                    break;
                }
                if !large.tokenizer.is_end_of_generation(*id) {
                    kept_tokens.push(*id);
                }
            }
            let large_nll = completion_nll(large, &prompt, &kept_tokens)?;
            let program = format!(
                "{}{completion}\n\n{}\ncheck({})\n",
                problem.prompt, problem.test, problem.entry_point
            );
            let run = run_sandboxed(&program, &opts.sandbox)?;
            let record = EadRecord {
                task_id: problem.task_id.clone(),
                decoder: *decoder,
                completion,
                outcome: run.outcome,
                generated_tokens: generated.tokens.len(),
                large_tokens: generated.large_tokens,
                secs: generated.secs,
                large_nll,
                scored_tokens: kept_tokens.len(),
            };
            total.add(&record);
            on_record(&record);
        }
    }
    Ok(totals)
}

/// One row per decoder: pass@1, the large model's share, speed and perplexity under
/// the large model.
pub fn markdown_table(small: &str, large: &str, window: usize, totals: &[EadSummary]) -> String {
    let mut s = format!(
        "small = {small}, large = {large}, rolling window = {window} steps, greedy\n\n\
         | decoder | threshold (nats) | n | pass@1 | passed | large share | tokens | tokens/s | ppl under large |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for t in totals {
        let threshold = match t.decoder {
            Decoder::Switched { threshold } => format!("{threshold}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {threshold} | {} | {:.3} | {} | {:.3} | {} | {:.2} | {:.3} |\n",
            t.decoder.name(),
            t.problems,
            t.pass_at_1(),
            t.passed,
            t.large_share(),
            t.generated_tokens,
            t.tokens_per_sec(),
            t.large_perplexity(),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_ends_at_the_first_line_left_of_its_body() {
        let prompt = "def helper():\n    pass\n\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n";
        let indent = body_indent(prompt);
        assert_eq!(indent, 1);
        let completion = "    y = x\n\n    return y\n\ndef g():\n";
        let end = completion_end(completion, indent).expect("ends");
        assert_eq!(&completion[..end], "    y = x\n\n    return y\n\n");
        assert_eq!(completion_end("    return x\n", indent), None);
    }

    #[test]
    fn a_method_body_ends_at_the_class_level() {
        let prompt = "class A:\n    def f(self):\n        \"\"\"Doc.\"\"\"\n";
        let indent = body_indent(prompt);
        assert_eq!(indent, 5);
        assert_eq!(
            completion_end("        return 1\n    def g", indent),
            Some(17)
        );
    }

    #[test]
    fn nan_thresholds_and_empty_windows_are_refused() {
        let base = EadOptions {
            thresholds: vec![1.0],
            window: 4,
            max_tokens: 8,
            sandbox: SandboxOptions::default(),
        };
        assert!(base.validate().is_ok());
        for bad in [
            EadOptions {
                thresholds: vec![f64::NAN],
                ..base.clone()
            },
            EadOptions {
                window: 0,
                ..base.clone()
            },
            EadOptions {
                max_tokens: 0,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
