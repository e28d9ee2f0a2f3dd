//! Machine-generated-text detection with the Fast-DetectGPT criterion
//! ([`SamplingDiscrepancy`](crate::SamplingDiscrepancy)), evaluated the way the paper
//! does: human passages against passages the model writes from the same first
//! sentence, both scored by the same model, summarised as an AUROC.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use engine::{GenerationParams, SamplerConfig, Session};
use model::LoadedModel;

use crate::score::{auroc, score_text};
use crate::{EvalError, Result};

/// One human-written passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    /// Where it comes from (a file name inside its package).
    pub source: String,
    pub text: String,
}

/// Reads passages from JSON lines `{"source": ..., "text": ...}` (as written by
/// `scripts/fetch_eval_text.py`). Blank lines are skipped; anything else malformed is an
/// error naming the line.
pub fn read_passages(path: &Path) -> Result<Vec<Passage>> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Io(format!("reading {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| EvalError::Input(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let text = v["text"]
            .as_str()
            .ok_or_else(|| bad("no string field \"text\""))?;
        let source = v["source"].as_str().unwrap_or("").to_string();
        out.push(Passage {
            source,
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// The passage's first sentence: up to and including the first `.`, `!` or `?` that is
/// followed by whitespace and comes after at least 30 characters. Without one, the
/// first 30 words. Never the whole passage (there must be something to continue).
pub fn first_sentence(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if i >= 30
            && matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_some_and(|c| c.is_ascii_whitespace())
        {
            return &text[..=i];
        }
    }
    let end = text
        .split_whitespace()
        .take(30)
        .last()
        .map(|w| w.as_ptr() as usize - text.as_ptr() as usize + w.len())
        .unwrap_or(0);
    if end >= text.len() {
        // One short sentence: continue from its first half.
        let mid = text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= text.len() / 2)
            .unwrap_or(0);
        &text[..mid]
    } else {
        &text[..end]
    }
}

/// How the machine passages are written.
#[derive(Clone, Debug)]
pub struct DetectOptions {
    /// Passages to use (the first `n`).
    pub n: usize,
    /// Sampler for the machine passages; passage `i` uses seed `sampler.seed + i`.
    pub sampler: SamplerConfig,
    /// Most tokens generated per passage; each machine passage is otherwise as long (in
    /// tokens) as its human counterpart.
    pub max_tokens: usize,
    /// Scoring window.
    pub ctx: usize,
}

/// One human/machine pair.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionPair {
    pub source: String,
    pub prompt: String,
    pub machine_text: String,
    pub human_tokens: usize,
    pub machine_tokens: usize,
    pub human_criterion: f64,
    pub machine_criterion: f64,
    /// Lastde and Lastde++ of each passage (`crate::lastde`).
    pub human_lastde: f64,
    pub machine_lastde: f64,
    pub human_lastde_pp: f64,
    pub machine_lastde_pp: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetectionReport {
    pub pairs: Vec<DetectionPair>,
    /// Probability that a machine passage scores above a human one (Fast-DetectGPT).
    pub auroc: f64,
    /// The same for Lastde and Lastde++ (passages where a score is undefined, e.g.
    /// too short for the scales, are left out).
    pub auroc_lastde: f64,
    pub auroc_lastde_pp: f64,
    pub seconds: f64,
}

impl DetectionReport {
    /// Mean and standard deviation of the human (`machine = false`) or machine criteria.
    pub fn mean_sd(&self, machine: bool) -> (f64, f64) {
        let v: Vec<f64> = self
            .pairs
            .iter()
            .map(|p| {
                if machine {
                    p.machine_criterion
                } else {
                    p.human_criterion
                }
            })
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    }
}

/// Writes a machine passage for each of the first `opts.n` passages (from its first
/// sentence), scores both with `model`, and returns the AUROC of the criterion.
/// `progress(done, total)` is called after each pair.
pub fn detection_eval(
    model: &LoadedModel,
    passages: &[Passage],
    opts: &DetectOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DetectionReport> {
    if passages.len() < opts.n {
        return Err(EvalError::Input(format!(
            "{} passages given, {} asked for",
            passages.len(),
            opts.n
        )));
    }
    if opts.n < 2 {
        return Err(EvalError::Input(
            "an AUROC needs at least 2 passages".into(),
        ));
    }
    let start = Instant::now();
    let tok = &model.tokenizer;
    let mut session = Session::new(model, opts.ctx).map_err(engine_error)?;
    let mut pairs = Vec::with_capacity(opts.n);
    let noop_token = &mut |_: &crate::ScoredToken| {};
    for (i, p) in passages[..opts.n].iter().enumerate() {
        let prompt = first_sentence(&p.text);
        let prompt_ids = tok.encode(prompt, true, false)?;
        let human_ids = tok.encode(&p.text, true, false)?;
        let budget = human_ids
            .len()
            .saturating_sub(prompt_ids.len())
            .clamp(16, opts.max_tokens);
        let params = GenerationParams {
            max_tokens: budget,
            sampler: SamplerConfig {
                seed: opts.sampler.seed.wrapping_add(i as u64),
                ..opts.sampler.clone()
            },
            stop_at_eog: true,
            top_logprobs: 0,
            stop: Vec::new(),
            ..GenerationParams::default()
        };
        let generation = session
            .generate(&prompt_ids, &params, |_| ControlFlow::Continue(()))
            .map_err(engine_error)?;
        let machine_text = format!("{prompt}{}", generation.text);
        let human = score_text(model, &p.text, opts.ctx, 0, noop_token, &mut |_, _| {})?;
        let machine = score_text(
            model,
            &machine_text,
            opts.ctx,
            0,
            noop_token,
            &mut |_, _| {},
        )?;
        pairs.push(DetectionPair {
            source: p.source.clone(),
            prompt: prompt.to_string(),
            machine_text,
            human_tokens: human.n_text_tokens,
            machine_tokens: machine.n_text_tokens,
            human_criterion: human.discrepancy.criterion(),
            machine_criterion: machine.discrepancy.criterion(),
            human_lastde: human.lastde,
            machine_lastde: machine.lastde,
            human_lastde_pp: human.lastde_pp,
            machine_lastde_pp: machine.lastde_pp,
        });
        progress(i + 1, opts.n);
    }
    let pos: Vec<f64> = pairs.iter().map(|p| p.machine_criterion).collect();
    let neg: Vec<f64> = pairs.iter().map(|p| p.human_criterion).collect();
    let finite = |v: Vec<f64>| -> Vec<f64> { v.into_iter().filter(|x| x.is_finite()).collect() };
    let auroc_of = |m: fn(&DetectionPair) -> f64, h: fn(&DetectionPair) -> f64| {
        auroc(
            &finite(pairs.iter().map(m).collect()),
            &finite(pairs.iter().map(h).collect()),
        )
    };
    let auroc_lastde = auroc_of(|p| p.machine_lastde, |p| p.human_lastde)?;
    let auroc_lastde_pp = auroc_of(|p| p.machine_lastde_pp, |p| p.human_lastde_pp)?;
    Ok(DetectionReport {
        auroc: auroc(&pos, &neg)?,
        auroc_lastde,
        auroc_lastde_pp,
        pairs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn engine_error(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sentence_stops_at_the_first_full_stop_after_30_characters() {
        let t = "Python is an easy to learn language. It has efficient structures.";
        assert_eq!(first_sentence(t), "Python is an easy to learn language.");
        // "e.g. " inside the first 30 characters does not end the sentence.
        let t = "Use a list, e.g. a queue, when order matters a lot. Then more.";
        assert_eq!(
            first_sentence(t),
            "Use a list, e.g. a queue, when order matters a lot."
        );
        // No sentence end: the first 30 words.
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let t = words.join(" ");
        assert_eq!(first_sentence(&t), words[..30].join(" "));
        // One short sentence: its first half, never all of it.
        let t = "Short text here.";
        assert!(first_sentence(t).len() < t.len());
    }

    #[test]
    fn passages_are_read_with_line_numbered_errors() {
        let dir = std::env::temp_dir().join(format!("tw-passages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(
            &good,
            "{\"source\": \"a\", \"text\": \"One.\"}\n\n{\"text\": \"Two.\"}\n",
        )
        .unwrap();
        let p = read_passages(&good).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].text, "Two.");
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"One.\"}\n{\"source\": 3}\n").unwrap();
        let e = read_passages(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2") && e.contains("text"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
