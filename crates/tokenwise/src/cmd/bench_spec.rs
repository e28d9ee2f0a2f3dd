//! `tokenwise bench spec`: speculative decoding against plain greedy decoding, on
//! prompt sets nobody on this project wrote, measured in the same run.
//!
//! * `code`: HumanEval prompts (`scripts/fetch_humaneval.py`), completed as raw text;
//! * `copy`: "rewrite this paragraph" requests around passages of the Python 3.11
//!   documentation (`scripts/fetch_eval_text.py`): the answer copies a lot;
//! * `chat`: questions of the Python FAQ (the same Debian package), as chat turns.
//!
//! Each prompt runs plain greedy decoding and then every drafter on the same session
//! (the prompt's cache is reused, the decode is timed alone), and each drafter's
//! tokens are checked against plain decoding: a mismatch is an error.
//!
//! `skip` drafts with the model itself skipping `--skip-layers`, or the layers a
//! calibration at start chooses (once for the whole run; printed on stderr).
//!
//! `draft` runs `--draft-model` as a chain or a tree as `--draft-tree-nodes` says;
//! `draft-chain` and `draft-tree` force one shape (the tree with
//! `--draft-tree-nodes`, or 16 nodes when that is 0), so both compare in one run.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::{GenerationParams, Session, SpeculativeConfig, SpeculativeMethod};
use eval::sysinfo::{today_utc, MachineInfo};
use indicatif::{ProgressBar, ProgressDrawTarget};
use model::chat::ChatMessage;
use model::LoadedModel;

use super::speculative::{speculator, DraftArgs};
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Prompt sets, comma-separated: code (HumanEval), copy (rewrite a Python-docs
    /// passage), chat (Python FAQ questions).
    #[arg(long, value_delimiter = ',', default_value = "code,copy,chat")]
    pub sets: Vec<String>,
    /// Drafters compared with plain decoding, comma-separated: lookup, recycle,
    /// ngram-adaptive, draft, draft-chain, draft-tree (the draft ones need
    /// --draft-model), skip (layer skipping: --skip-layers or calibrated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lookup,recycle,ngram-adaptive"
    )]
    pub methods: Vec<String>,
    /// Prompts per set (spread evenly over the source).
    #[arg(long = "prompts", value_name = "N", default_value_t = 10)]
    pub n_prompts: usize,
    /// Tokens generated per prompt (fewer when the model ends its answer).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Worker threads.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Context size.
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// Where the prompt sources are (default: $TOKENWISE_CACHE/data or
    /// ~/.cache/tokenwise/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Append a dated markdown section (machine, command, table) to this file.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
}

/// Totals of one (set, method) cell; `method` `None` is plain decoding.
#[derive(Clone, Debug, Default)]
struct Cell {
    prompts: usize,
    tokens: usize,
    /// Decoded tokens (all but the first of each prompt, which the prefill yields).
    decoded: usize,
    secs: f64,
    steps: usize,
    drafted: usize,
    accepted: usize,
    /// Draft-model passes over draft nodes.
    draft_forwards: usize,
    /// Sum over prompts of the draft cost (relative to a plain step) at the end.
    cost: f64,
}

impl Cell {
    fn tokens_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.decoded as f64 / self.secs
        } else {
            0.0
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.n_prompts == 0 || a.n_gen == 0 || a.threads == 0 {
        bail!("--prompts, --n-gen and --threads must be at least 1");
    }
    // (label, config) of each drafter.
    let (methods, mut configs): (Vec<String>, Vec<SpeculativeConfig>) = a
        .methods
        .iter()
        .map(|m| {
            let label = m.trim().to_ascii_lowercase();
            let config = method_config(&label, &a.draft)?;
            Ok((label, config))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let data = a.data_dir.clone().unwrap_or_else(data_dir);
    let (path, loaded) = models::load(&a.model, Some(a.threads))?;
    let draft_model = if configs.iter().any(|c| c.method.needs_draft_model()) {
        a.draft.load_draft_model(&loaded, Some(a.threads))?
    } else {
        None
    };
    // `skip` calibrates once, not once per set.
    let mut skip_note = String::new();
    for c in configs.iter_mut() {
        if c.method == SpeculativeMethod::Skip {
            let s = speculator(c, &loaded, None, false)?;
            if let Some(plan) = s.skip_plan() {
                skip_note = format!(" | skip: {}", plan.layers_arg());
                c.skip.layers = Some(plan.skipped.clone());
            }
        }
    }
    let sets: Vec<(String, Vec<Vec<u32>>)> = a
        .sets
        .iter()
        .map(|s| {
            let name = s.trim().to_ascii_lowercase();
            let prompts = load_set(&name, &data, a.n_prompts, &loaded)?;
            Ok((name, prompts))
        })
        .collect::<Result<_>>()?;

    let spinner = ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        spinner.set_draw_target(ProgressDrawTarget::hidden());
    }
    let params = GenerationParams {
        max_tokens: a.n_gen,
        ..GenerationParams::default()
    };
    // rows: (set, method name, cell, final budget)
    let mut rows: Vec<(String, String, Cell)> = Vec::new();
    for (set, prompts) in &sets {
        let mut plain = Cell::default();
        let mut cells = vec![Cell::default(); methods.len()];
        // One speculator per set: Token Recycling and ngram-adaptive warm up over the
        // set's prompts.
        let mut specs = configs
            .iter()
            .map(|c| speculator(c, &loaded, draft_model.as_ref(), true))
            .collect::<Result<Vec<_>>>()?;
        for (i, ids) in prompts.iter().enumerate() {
            spinner.set_message(format!("{set}: prompt {}/{}", i + 1, prompts.len()));
            spinner.tick();
            let mut session = Session::new(&loaded, a.ctx)?;
            let base = session
                .generate(ids, &params, |_| ControlFlow::Continue(()))
                .with_context(|| format!("{set} prompt {}", i + 1))?;
            add(
                &mut plain,
                base.tokens.len(),
                base.stats.decode_secs,
                &engine::SpeculativeStats::default(),
            );
            for ((spec, cell), method) in specs.iter_mut().zip(&mut cells).zip(&methods) {
                let g = session
                    .generate_speculative(ids, &params, spec, |_| ControlFlow::Continue(()))
                    .with_context(|| format!("{set} prompt {} with {method}", i + 1))?;
                if g.generation.tokens != base.tokens {
                    bail!(
                        "{set} prompt {}: {method} produced different tokens than plain greedy \
                         decoding (a bug: speculation must be lossless)",
                        i + 1
                    );
                }
                let st = &g.spec;
                cell.cost += st.cost_per_token;
                add(
                    cell,
                    g.generation.tokens.len(),
                    g.generation.stats.decode_secs,
                    st,
                );
            }
        }
        rows.push((set.clone(), "none".into(), plain.clone()));
        for (m, c) in methods.iter().zip(cells) {
            rows.push((set.clone(), m.clone(), c));
        }
    }
    spinner.finish_and_clear();

    let table = markdown_table(&rows);
    let draft_note = match &a.draft.draft_model {
        Some(d) if draft_model.is_some() => format!(" | draft model: {d}"),
        _ => String::new(),
    };
    println!(
        "model: {}{draft_note}{skip_note} | {} threads | {} tokens per prompt | greedy",
        path.display(),
        a.threads,
        a.n_gen
    );
    print!("{table}");
    if let Some(md) = &a.write_md {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let section = format!(
            "\n## Speculative decoding: {name} ({})\n\nMachine: {}  \nCommand: `{}`  \n\
             {} threads, greedy, up to {} tokens per prompt; speedup = decode tokens/s over \
             plain greedy decoding of the same prompts in the same run (outputs checked \
             identical).\n\n{table}",
            today_utc(),
            MachineInfo::detect().describe(),
            std::env::args().collect::<Vec<_>>().join(" "),
            a.threads,
            a.n_gen,
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(md)
            .with_context(|| format!("opening {}", md.display()))?;
        f.write_all(section.as_bytes())
            .with_context(|| format!("writing {}", md.display()))?;
        println!("appended to {}", md.display());
    }
    Ok(())
}

/// The configuration of the drafter called `label` in `--methods`.
fn method_config(label: &str, draft: &DraftArgs) -> Result<SpeculativeConfig> {
    let (method, tree_nodes) = match label {
        "draft-chain" => (SpeculativeMethod::Draft, Some(0)),
        "draft-tree" => (
            SpeculativeMethod::Draft,
            Some(match draft.draft_tree_nodes {
                0 => 16,
                n => n,
            }),
        ),
        other => match other.parse() {
            Ok(m) => (m, None),
            Err(_) => bail!(
                "--methods: unknown drafter {label:?} (lookup, recycle, ngram-adaptive, draft, \
                 draft-chain, draft-tree, skip)"
            ),
        },
    };
    let mut c = draft.config_for(method)?;
    if let Some(n) = tree_nodes {
        c.draft.tree_nodes = n;
    }
    c.validate()?;
    Ok(c)
}

fn add(c: &mut Cell, tokens: usize, secs: f64, st: &engine::SpeculativeStats) {
    c.prompts += 1;
    c.tokens += tokens;
    c.decoded += tokens.saturating_sub(1);
    c.secs += secs;
    c.steps += st.steps;
    c.drafted += st.drafted;
    c.accepted += st.accepted;
    c.draft_forwards += st.draft_forwards;
}

fn markdown_table(rows: &[(String, String, Cell)]) -> String {
    let mut out = String::from(
        "| set | drafter | prompts | tokens | mean accepted length | drafted/step | accepted | draft passes/step | draft cost | tokens/s | speedup |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut base = 0.0;
    for (set, method, c) in rows {
        if method == "none" {
            base = c.tokens_per_sec();
        }
        let passes = if c.draft_forwards == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", c.draft_forwards as f64 / c.steps.max(1) as f64)
        };
        let (len, per_step, rate, cost) = if c.steps == 0 {
            ("1.00".into(), "0.00".into(), "-".into(), "-".into())
        } else {
            (
                format!("{:.2}", 1.0 + c.accepted as f64 / c.steps as f64),
                format!("{:.2}", c.drafted as f64 / c.steps as f64),
                format!(
                    "{:.0}%",
                    100.0 * c.accepted as f64 / c.drafted.max(1) as f64
                ),
                format!("{:.2}", c.cost / c.prompts.max(1) as f64),
            )
        };
        let speedup = if base > 0.0 {
            format!("{:.2}x", c.tokens_per_sec() / base)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "| {set} | {method} | {} | {} | {len} | {per_step} | {rate} | {passes} | {cost} | {:.1} | {speedup} |\n",
            c.prompts,
            c.tokens,
            c.tokens_per_sec()
        ));
    }
    out
}

/// `$TOKENWISE_CACHE/data` or `~/.cache/tokenwise/data`.
fn data_dir() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("data"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/data"),
    }
}

/// `n` items spread evenly over `items`.
fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    let n = n.min(items.len());
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

/// The prompts of one set, tokenised for `model`.
fn load_set(name: &str, data: &Path, n: usize, model: &LoadedModel) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<(String, bool)> = match name {
        "code" => {
            let file = data.join("humaneval.jsonl");
            let prompts = jsonl_field(&file, "prompt", "scripts/fetch_humaneval.py")?;
            spread(&prompts, n)
                .into_iter()
                .map(|p| (p, false))
                .collect()
        }
        "copy" => {
            let file = data.join("python-doc-passages.jsonl");
            let passages = jsonl_field(&file, "text", "scripts/fetch_eval_text.py")?;
            spread(&passages, n)
                .into_iter()
                .map(|p| {
                    let ask = format!(
                        "Rewrite the following paragraph so that it is easier to read, \
                         keeping every technical detail:\n\n{p}"
                    );
                    (ask, true)
                })
                .collect()
        }
        "chat" => {
            let faq = data.join("python3.11-doc/usr/share/doc/python3.11/html/_sources/faq");
            let questions = faq_questions(&faq)?;
            spread(&questions, n)
                .into_iter()
                .map(|q| (q, true))
                .collect()
        }
        other => bail!("--sets: unknown prompt set {other:?} (code, copy, chat)"),
    };
    if texts.is_empty() {
        bail!("prompt set {name} is empty");
    }
    texts
        .into_iter()
        .map(|(text, chat)| {
            let ids = if chat && model.chat_template.is_some() {
                engine::chat_prompt_ids(model, &[ChatMessage::new("user", text)], true)?
            } else {
                model.tokenizer.encode_prompt(&text)?
            };
            Ok(ids)
        })
        .collect()
}

/// The string `field` of every line of a JSON-lines file.
fn jsonl_field(file: &Path, field: &str, fetch: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {} (run {fetch} first)", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", file.display(), i + 1))?;
            v[field].as_str().map(str::to_string).with_context(|| {
                format!(
                    "{} line {}: no string field {field:?}",
                    file.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Section headings of the Python FAQ that are questions (a line ending in `?`
/// underlined with `-`, `=` or `*`), in file order.
fn faq_questions(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading {} (run scripts/fetch_eval_text.py first)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".rst.txt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            let (title, rule) = (w[0].trim(), w[1].trim());
            let underline = rule.len() >= 3
                && rule.len() >= title.len()
                && rule.chars().all(|c| matches!(c, '-' | '=' | '*'));
            if title.ends_with('?') && underline {
                out.push(title.replace("``", ""));
            }
        }
    }
    Ok(out)
}
