//! Quality against memory for KV eviction policies (`tokenwise eval kv`).
//!
//! For each (policy, budget) cell and each KV storage type (f16, int8, int4, mixed):
//! 1. perplexity of one long real text scored in one pass, the cache evicting down to
//!    the budget (and quantising settled entries) after every chunk as scoring
//!    proceeds ([`kv_perplexity`]), then a few greedy decode steps at that context;
//! 2. passkey retrieval: a five-digit key hidden at a depth of 10–90% of filler text of
//!    a given length, greedy answer, accuracy over the trials ([`passkey_trial`]);
//! 3. KV bytes actually held (measured from the cache storage after eviction; also
//!    with full-precision entries counted as true f16, since the f16 path keeps them in
//!    f32 containers) and decode tokens/s at the largest context (the passkey's when
//!    passkey runs, else the long text's).
//!
//! Budgets given as a percentage are a share of each task's own context (the text
//! length for perplexity, the prompt length for passkey).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use engine::kv::{KvDtype, KvQuant};
use engine::{Budget, KvOptions, PolicyParams};
use model::{Batch, LoadedModel, LogitsFor};
use sample::argmax;

use crate::{EvalError, Result};

/// What to sweep.
#[derive(Clone, Debug)]
pub struct KvEvalOptions {
    /// Cells: policy name and budget (`None` for `full`).
    pub cells: Vec<(String, Option<Budget>)>,
    pub params: PolicyParams,
    /// Storage types, each run for every cell.
    pub dtypes: Vec<KvDtype>,
    /// Residual window, group sizes and mixed share of the quantised types.
    pub quant: KvQuant,
    /// Greedy decode steps timed after the long text (0: none).
    pub decode_steps: usize,
    /// Tokens per forward call (eviction runs after each).
    pub chunk: usize,
    /// Tokens of the long text scored for perplexity (0: skip).
    pub ppl_tokens: usize,
    /// Passkey context lengths in tokens (empty: skip).
    pub passkey_lengths: Vec<usize>,
    pub passkey_trials: usize,
    /// Passkey: let the cache hold the whole prompt and compress it once at its end
    /// (SnapKV's setting: the question is seen before choosing), instead of evicting
    /// after every chunk.
    pub compress_after_prompt: bool,
    /// `window` cells re-position kept tokens inside the cache (StreamingLLM); their
    /// rows are named `window/cache-pos`.
    pub reposition: bool,
    pub seed: u64,
}

impl Default for KvEvalOptions {
    fn default() -> Self {
        KvEvalOptions {
            cells: vec![("full".into(), None)],
            params: PolicyParams::default(),
            dtypes: vec![KvDtype::F16],
            quant: KvQuant::default(),
            decode_steps: 32,
            chunk: 64,
            ppl_tokens: 8192,
            passkey_lengths: vec![1024, 2048, 4096],
            passkey_trials: 20,
            compress_after_prompt: false,
            reposition: false,
            seed: 1,
        }
    }
}

/// Results of one cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvEvalRow {
    pub policy: String,
    /// As given (`25%`, `256`, or `-` for `full`).
    pub budget: String,
    /// KV storage type.
    pub dtype: String,
    pub ppl: Option<f64>,
    /// `(context length, correct, trials)` per passkey length.
    pub passkey: Vec<(usize, usize, usize)>,
    /// KV bytes held after the last eviction at the largest passkey context (or of the
    /// perplexity run when passkey is skipped).
    pub kv_bytes: usize,
    /// `kv_bytes` with full-precision entries counted as true f16.
    pub kv_bytes_f16: usize,
    /// Decode tokens/s at the largest context.
    pub decode_tps: f64,
    /// The context decode speed was measured at (cached tokens before the steps).
    pub decode_context: usize,
}

/// Outcome of [`kv_perplexity`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvPerplexity {
    pub ppl: f64,
    /// KV bytes held at the end of scoring.
    pub kv_bytes: usize,
    /// The same with full-precision entries counted as true f16.
    pub kv_bytes_f16: usize,
    /// Greedy decode steps after the text, and their time.
    pub decode_steps: usize,
    pub decode_secs: f64,
}

fn engine_err(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

/// Perplexity of `ids` scored in one pass (every token after the first), the cache
/// evicting to the budget (a percentage is of `ids.len()`) and quantising after every
/// `chunk` tokens; then `decode_steps` greedy tokens are decoded one per forward call
/// at that context and timed.
pub fn kv_perplexity(
    model: &LoadedModel,
    ids: &[u32],
    kv: &KvOptions,
    chunk: usize,
    decode_steps: usize,
) -> Result<KvPerplexity> {
    if ids.len() < 2 {
        return Err(EvalError::Input(
            "perplexity needs at least 2 tokens".into(),
        ));
    }
    let m = &model.model;
    let mut ctl = kv.controller(m, ids.len()).map_err(engine_err)?;
    let mut state = m.new_state(ids.len() + decode_steps);
    let vocab = m.config.vocab_size;
    let (mut logits, mut positions) = (Vec::new(), Vec::new());
    let (mut nll, mut scored) = (0f64, 0usize);
    let chunk = chunk.max(1);
    for (c, toks) in ids.chunks(chunk).enumerate() {
        let start = c * chunk;
        // Re-positioned caches continue at their length, others at the text position.
        let pos0 = if ctl.repositions() {
            state.cache.next_position()
        } else {
            start
        };
        positions.clear();
        positions.extend(pos0..pos0 + toks.len());
        let batch = Batch {
            tokens: toks,
            positions: &positions,
            mask: None,
            logits: LogitsFor::All,
        };
        ctl.forward(m, &mut state, &batch, &mut logits)
            .map_err(engine_err)?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&next) = ids.get(start + i + 1) {
                nll -= log_prob(row, next);
                scored += 1;
            }
        }
    }
    let (kv_bytes, kv_bytes_f16) = (state.cache.memory_bytes(), state.cache.memory_bytes_f16());
    let last = logits.len() / vocab - 1;
    let mut next = argmax(&logits[last * vocab..]);
    let t = Instant::now();
    for i in 0..decode_steps {
        let pos = [if ctl.repositions() {
            state.cache.next_position()
        } else {
            ids.len() + i
        }];
        ctl.forward(m, &mut state, &Batch::causal(&[next], &pos), &mut logits)
            .map_err(engine_err)?;
        next = argmax(&logits);
    }
    Ok(KvPerplexity {
        ppl: (nll / scored as f64).exp(),
        kv_bytes,
        kv_bytes_f16,
        decode_steps,
        decode_secs: t.elapsed().as_secs_f64(),
    })
}

/// ln softmax(row)[id], in f64.
fn log_prob(row: &[f32], id: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[id as usize] as f64 - max - sum.ln()
}

const PASSKEY_INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n";
const PASSKEY_FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const PASSKEY_QUESTION: &str = "\nWhat is the pass key? The pass key is";

/// The passkey prompt of about `length` tokens with `key` at `depth` (0..1) of the
/// filler, as token ids.
pub fn passkey_prompt(
    model: &LoadedModel,
    length: usize,
    depth: f64,
    key: u32,
) -> Result<Vec<u32>> {
    let tok = &model.tokenizer;
    let needle = format!("The pass key is {key}. Remember it. {key} is the pass key. ");
    let fixed = tok
        .encode_prompt(&format!("{PASSKEY_INTRO}{needle}{PASSKEY_QUESTION}"))?
        .len();
    let per = tok.encode(PASSKEY_FILLER, false, false)?.len().max(1);
    let n_fill = length.saturating_sub(fixed) / per;
    let before = ((n_fill as f64) * depth).round() as usize;
    let text = format!(
        "{PASSKEY_INTRO}{}{needle}{}{PASSKEY_QUESTION}",
        PASSKEY_FILLER.repeat(before),
        PASSKEY_FILLER.repeat(n_fill - before)
    );
    Ok(tok.encode_prompt(&text)?)
}

/// Outcome of one passkey trial.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PasskeyOutcome {
    pub correct: bool,
    pub decode_steps: usize,
    pub decode_secs: f64,
    pub kv_bytes: usize,
    pub kv_bytes_f16: usize,
}

/// Prefills the passkey prompt under `kv`, decodes greedily and checks that the key is
/// the first number of the answer.
pub fn passkey_trial(
    model: &LoadedModel,
    length: usize,
    depth: f64,
    key: u32,
    kv: &KvOptions,
    chunk: usize,
    compress_after_prompt: bool,
) -> Result<PasskeyOutcome> {
    const ANSWER_TOKENS: usize = 8;
    let m = &model.model;
    let prompt = passkey_prompt(model, length, depth, key)?;
    let mut ctl = kv.controller(m, prompt.len()).map_err(engine_err)?;
    let mut state = m.new_state(prompt.len() + ANSWER_TOKENS);
    let (mut logits, mut positions) = (Vec::new(), Vec::new());
    for (c, toks) in prompt.chunks(chunk.max(1)).enumerate() {
        let start = if ctl.repositions() {
            state.cache.next_position()
        } else {
            c * chunk.max(1)
        };
        positions.clear();
        positions.extend(start..start + toks.len());
        let batch = Batch::causal(toks, &positions);
        if compress_after_prompt {
            ctl.forward_deferred(m, &mut state, &batch, &mut logits)
        } else {
            ctl.forward(m, &mut state, &batch, &mut logits)
        }
        .map_err(engine_err)?;
    }
    ctl.enforce_budget(&mut state).map_err(engine_err)?;
    let mut answer = Vec::new();
    let t = Instant::now();
    let mut steps = 0;
    for i in 0..ANSWER_TOKENS {
        let next = argmax(&logits);
        answer.push(next);
        if i + 1 == ANSWER_TOKENS {
            break;
        }
        let pos = [if ctl.repositions() {
            state.cache.next_position()
        } else {
            prompt.len() + i
        }];
        ctl.forward(m, &mut state, &Batch::causal(&[next], &pos), &mut logits)
            .map_err(engine_err)?;
        steps += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let text = model.tokenizer.decode(&answer)?;
    let first_number: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Ok(PasskeyOutcome {
        correct: first_number == key.to_string(),
        decode_steps: steps,
        decode_secs: secs,
        kv_bytes: state.cache.memory_bytes(),
        kv_bytes_f16: state.cache.memory_bytes_f16(),
    })
}

/// Runs every cell; `progress` gets one line per finished measurement.
pub fn run_kv_eval(
    model: &LoadedModel,
    text_ids: &[u32],
    opts: &KvEvalOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<KvEvalRow>> {
    if opts.ppl_tokens > 0 && text_ids.len() < opts.ppl_tokens {
        return Err(EvalError::Input(format!(
            "the text has {} tokens; {} are needed",
            text_ids.len(),
            opts.ppl_tokens
        )));
    }
    let mut rows = Vec::new();
    let cells = opts
        .cells
        .iter()
        .flat_map(|c| opts.dtypes.iter().map(move |d| (c, *d)));
    for ((policy, budget), dtype) in cells {
        let reposition = opts.reposition && policy.eq_ignore_ascii_case("window");
        let kv = KvOptions {
            policy: policy.clone(),
            budget: *budget,
            params: opts.params.clone(),
            quant: KvQuant {
                dtype,
                ..opts.quant
            },
            reposition,
        };
        let mut row = KvEvalRow {
            policy: if reposition {
                format!("{policy}/cache-pos")
            } else {
                policy.clone()
            },
            budget: budget.map_or("-".into(), |b| b.to_string()),
            dtype: dtype.to_string(),
            ..Default::default()
        };
        let label = format!("{policy} {} {dtype}", row.budget);
        let (mut steps, mut secs) = (0, 0.0);
        if opts.ppl_tokens > 0 {
            let ids = &text_ids[..opts.ppl_tokens];
            let r = kv_perplexity(model, ids, &kv, opts.chunk, opts.decode_steps)?;
            row.ppl = Some(r.ppl);
            row.kv_bytes = r.kv_bytes;
            row.kv_bytes_f16 = r.kv_bytes_f16;
            (steps, secs) = (r.decode_steps, r.decode_secs);
            row.decode_context = ids.len();
            progress(&format!("{label}: ppl {:.3}", r.ppl));
        }
        let mut rng = opts.seed.max(1);
        let lengths: &[usize] = if opts.passkey_trials > 0 {
            &opts.passkey_lengths
        } else {
            &[]
        };
        for (li, &len) in lengths.iter().enumerate() {
            let mut correct = 0;
            if li + 1 == lengths.len() {
                // Decode speed at the largest passkey context replaces the text's.
                (steps, secs) = (0, 0.0);
            }
            for t in 0..opts.passkey_trials {
                let depth = 0.1 + 0.8 * (t % 9) as f64 / 8.0;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = 10_000 + (rng % 90_000) as u32;
                let o = passkey_trial(
                    model,
                    len,
                    depth,
                    key,
                    &kv,
                    opts.chunk,
                    opts.compress_after_prompt,
                )?;
                correct += o.correct as usize;
                if li + 1 == lengths.len() {
                    steps += o.decode_steps;
                    secs += o.decode_secs;
                    row.kv_bytes = o.kv_bytes;
                    row.kv_bytes_f16 = o.kv_bytes_f16;
                    row.decode_context = len;
                }
            }
            row.passkey.push((len, correct, opts.passkey_trials));
            progress(&format!(
                "{label}: passkey@{len} {correct}/{}",
                opts.passkey_trials
            ));
        }
        row.decode_tps = if secs > 0.0 { steps as f64 / secs } else { 0.0 };
        rows.push(row);
    }
    Ok(rows)
}

/// The rows as a markdown table.
pub fn markdown_table(rows: &[KvEvalRow]) -> String {
    let lengths: Vec<usize> = rows
        .first()
        .map_or(Vec::new(), |r| r.passkey.iter().map(|p| p.0).collect());
    let mut s = String::from("| policy | budget | KV dtype | ppl |");
    for l in &lengths {
        let _ = write!(s, " passkey@{l} |");
    }
    s.push_str(" KV MiB | KV MiB (f16 storage) | decode tok/s |\n|---|---|---|---|");
    s.push_str(&"---|".repeat(lengths.len()));
    s.push_str("---|---|---|\n");
    for r in rows {
        let ppl = r.ppl.map_or("-".into(), |p| format!("{p:.3}"));
        let _ = write!(s, "| {} | {} | {} | {ppl} |", r.policy, r.budget, r.dtype);
        for &(_, c, n) in &r.passkey {
            let _ = write!(s, " {:.0}% |", 100.0 * c as f64 / n.max(1) as f64);
        }
        let tps = if r.decode_tps > 0.0 {
            format!("{:.1} @{}", r.decode_tps, r.decode_context)
        } else {
            "-".into()
        };
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let _ = writeln!(
            s,
            " {:.2} | {:.2} | {tps} |",
            mib(r.kv_bytes),
            mib(r.kv_bytes_f16)
        );
    }
    s
}

/// The rows as CSV (one passkey column per length: correct/trials as a fraction).
pub fn csv(rows: &[KvEvalRow]) -> String {
    let mut s = String::from(
        "policy,budget,dtype,ppl,passkey_len,passkey_acc,passkey_trials,kv_bytes,kv_bytes_f16,decode_tps,decode_context\n",
    );
    for r in rows {
        let ppl = r.ppl.map_or(String::new(), |p| format!("{p:.4}"));
        let tail = format!(
            "{},{},{:.2},{}",
            r.kv_bytes, r.kv_bytes_f16, r.decode_tps, r.decode_context
        );
        if r.passkey.is_empty() {
            let _ = writeln!(s, "{},{},{},{ppl},,,,{tail}", r.policy, r.budget, r.dtype);
        }
        for &(len, c, n) in &r.passkey {
            let _ = writeln!(
                s,
                "{},{},{},{ppl},{len},{:.4},{n},{tail}",
                r.policy,
                r.budget,
                r.dtype,
                c as f64 / n.max(1) as f64,
            );
        }
    }
    s
}

/// A long real text: the reST sources of the Python 3.11 documentation under `dir`
/// (as `scripts/fetch_eval_text.py` extracts them), files in sorted path order,
/// concatenated until at least `min_chars` characters.
pub fn load_long_text(dir: &Path, min_chars: usize) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            EvalError::Io(format!(
                "{}: {e} (run scripts/fetch_eval_text.py)",
                d.display()
            ))
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".rst.txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut text = String::new();
    for f in files {
        if text.len() >= min_chars {
            break;
        }
        if let Ok(t) = std::fs::read_to_string(&f) {
            text.push_str(&t);
            text.push('\n');
        }
    }
    if text.len() < min_chars {
        return Err(EvalError::Input(format!(
            "{} holds only {} characters of text; {min_chars} are needed",
            dir.display(),
            text.len()
        )));
    }
    Ok(text)
}

/// Charts of a sweep for `--plot`: perplexity and (when measured) passkey accuracy at
/// the longest context against the KV memory held, one line per policy and KV type
/// (its budgets are the points).
pub fn charts(rows: &[KvEvalRow]) -> Vec<crate::plot::Chart> {
    use crate::plot::{Chart, Series};
    let mib = |r: &KvEvalRow| r.kv_bytes_f16 as f64 / (1 << 20) as f64;
    // Series in first-seen order of (policy, dtype).
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rows {
        let k = (r.policy.clone(), r.dtype.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let series = |y: &dyn Fn(&KvEvalRow) -> Option<f64>| -> Vec<Series> {
        keys.iter()
            .map(|(p, d)| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| &r.policy == p && &r.dtype == d)
                    .filter_map(|r| y(r).map(|v| (mib(r), v)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: format!("{p} {d}"),
                    points,
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    let ppl = series(&|r| r.ppl);
    if !ppl.is_empty() {
        out.push(Chart {
            title: "Perplexity of the long text".into(),
            x_label: "KV MiB held (f16 entries at 2 bytes)".into(),
            y_label: "perplexity".into(),
            series: ppl,
            x_log: true,
            y_range: None,
        });
    }
    let longest = rows.first().and_then(|r| r.passkey.last()).map(|p| p.0);
    if let Some(len) = longest {
        let acc = series(&|r| {
            r.passkey
                .iter()
                .find(|p| p.0 == len)
                .map(|&(_, c, n)| c as f64 / n.max(1) as f64)
        });
        out.push(Chart {
            title: format!("Passkey retrieval at {len} tokens"),
            x_label: "KV MiB held (f16 entries at 2 bytes)".into(),
            y_label: "accuracy".into(),
            series: acc,
            x_log: true,
            y_range: Some((0.0, 1.0)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_csv_have_one_line_per_cell_and_length() {
        let rows = vec![
            KvEvalRow {
                policy: "full".into(),
                budget: "-".into(),
                dtype: "f16".into(),
                ppl: Some(7.5),
                passkey: vec![(1024, 20, 20), (2048, 19, 20)],
                kv_bytes: 1 << 20,
                kv_bytes_f16: 1 << 19,
                decode_tps: 30.0,
                decode_context: 2048,
            },
            KvEvalRow {
                policy: "h2o".into(),
                budget: "25%".into(),
                dtype: "int4".into(),
                ppl: None,
                passkey: vec![(1024, 5, 20), (2048, 1, 20)],
                kv_bytes: 1 << 18,
                kv_bytes_f16: 1 << 18,
                decode_tps: 0.0,
                decode_context: 0,
            },
        ];
        let md = markdown_table(&rows);
        assert!(
            md.contains("| full | - | f16 | 7.500 | 100% | 95% | 1.00 | 0.50 | 30.0 @2048 |"),
            "{md}"
        );
        assert!(
            md.contains("| h2o | 25% | int4 | - | 25% | 5% | 0.25 | 0.25 | - |"),
            "{md}"
        );
        let csv = csv(&rows);
        assert_eq!(csv.lines().count(), 5);
        assert!(
            csv.contains("h2o,25%,int4,,2048,0.0500,20,262144,262144,0.00,0"),
            "{csv}"
        );
    }
}
