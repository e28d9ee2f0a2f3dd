//! `tokenwise detect-eval`: how well the detectors of `score` (Fast-DetectGPT, Lastde,
//! Lastde++) tell human text from the model's own (see `eval::detect`), as an AUROC
//! over the full passages and, with `--lengths`, over their first L tokens for each L
//! (from the same generation and scoring pass); optionally ROC curves as SVG and a
//! dated section appended to docs/BENCHMARKS.md.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eval::detect::{
    detection_eval, read_passages, DetectOptions, DetectionPair, DetectorScores, LengthResult,
    DETECTORS,
};
use eval::plot::{svg_document_with, Chart, PlotOptions, Series};
use eval::sysinfo::{today_utc, MachineInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cmd::sampling::SamplingArgs;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias: it writes the machine passages and scores both kinds.
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Human passages as JSON lines {"source", "text"} (default: the Python
    /// documentation passages of `scripts/fetch_eval_text.py` in the cache).
    #[arg(long, value_name = "FILE")]
    pub passages: Option<PathBuf>,
    /// Passages to use.
    #[arg(short, long, default_value_t = 60)]
    pub n: usize,
    /// Most tokens per machine passage (otherwise as long as the human one).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Scoring window.
    #[arg(long, default_value_t = 1024)]
    pub ctx: usize,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Also evaluate every detector on the first L scored tokens of both passages, for
    /// each L of this comma-separated list (e.g. 64,128,256); pairs with a passage
    /// shorter than L are left out of that length.
    #[arg(long, value_name = "L,L,...", value_parser = parse_lengths)]
    pub lengths: Option<Lengths>,
    /// Write ROC curves of the detectors at each of --lengths to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub roc_svg: Option<PathBuf>,
    /// Do not run the model: read the pairs a run wrote with --pairs-out (complete or
    /// interrupted) and print the per-length table and --roc-svg from them.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pairs_out", "write_md"])]
    pub from_pairs: Option<PathBuf>,
    /// Write every pair (prompt, machine text, every detector's scores, per length) as
    /// JSON lines here.
    #[arg(long, value_name = "FILE")]
    pub pairs_out: Option<PathBuf>,
    /// Append a dated markdown section with the result to this file.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
}

/// The prefix lengths of `--lengths`, increasing, without repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Lengths(pub Vec<usize>);

fn parse_lengths(s: &str) -> std::result::Result<Lengths, String> {
    let mut v = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "expected a comma-separated list of token counts such as 64,128,256, got {s:?}"
            ));
        }
        let n: usize = part
            .parse()
            .map_err(|_| format!("{part:?} is not a token count"))?;
        if n == 0 {
            return Err("a length must be at least 1 token".into());
        }
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    Ok(Lengths(v))
}

pub fn run(a: Args) -> Result<()> {
    let lengths = a.lengths.clone().map(|l| l.0).unwrap_or_default();
    if let Some(file) = &a.from_pairs {
        // The lengths default to those the file has.
        return from_pairs(file, &a.model, &lengths, a.roc_svg.as_deref());
    }
    if a.roc_svg.is_some() && lengths.is_empty() {
        bail!("--roc-svg draws the curves at each of --lengths: give --lengths too");
    }
    let mut sampler = a.sampling.config()?;
    if a.sampling.seed.is_none() {
        // Reproducible by default: an evaluation should not depend on the clock.
        sampler.seed = 42;
    }
    let passages_path = match &a.passages {
        Some(p) => p.clone(),
        None => models::cache_dir()
            .parent()
            .map(|p| p.join("data/python-doc-passages.jsonl"))
            .context("no cache directory")?,
    };
    if !passages_path.is_file() {
        bail!(
            "{} is missing: run `scripts/fetch_eval_text.py` or pass --passages",
            passages_path.display()
        );
    }
    let passages = read_passages(&passages_path)?;
    let (path, loaded) = models::load(&a.model, a.threads)?;
    let sampler = a.sampling.with_dry_breakers(sampler, &loaded.tokenizer)?;
    let opts = DetectOptions {
        n: a.n,
        sampler: sampler.clone(),
        max_tokens: a.max_tokens,
        ctx: a.ctx,
        lengths: lengths.clone(),
    };

    let bar = ProgressBar::with_draw_target(Some(a.n as u64), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} passages  [{elapsed_precise}, eta {eta}]",
        )
        .context("progress bar template")?,
    );
    // Pairs are written as they come, so an interrupted run keeps what it computed.
    let mut pairs_out = match &a.pairs_out {
        Some(out) => Some(std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
        )),
        None => None,
    };
    let mut write_error = None;
    let result = detection_eval(&loaded, &passages, &opts, &mut |done, _, p| {
        bar.set_position(done as u64);
        if let Some(f) = pairs_out.as_mut() {
            let res = writeln!(f, "{}", pair_json(p, &lengths)).and_then(|_| f.flush());
            if let (Err(e), None) = (res, &write_error) {
                write_error = Some(e);
            }
        }
    });
    bar.finish_and_clear();
    let r = result?;
    if let (Some(e), Some(out)) = (write_error, &a.pairs_out) {
        bail!("writing {}: {e}", out.display());
    }

    let model_name = path
        .file_name()
        .map_or_else(|| a.model.clone(), |f| f.to_string_lossy().into_owned());
    let model_stem = model_name.trim_end_matches(".gguf").to_string();
    let (hm, hs) = r.mean_sd(false);
    let (mm, ms) = r.mean_sd(true);
    let mean_len = |machine: bool| {
        r.pairs
            .iter()
            .map(|p| {
                if machine {
                    p.machine_tokens
                } else {
                    p.human_tokens
                }
            })
            .sum::<usize>() as f64
            / r.pairs.len() as f64
    };
    let sampler_desc = format!(
        "temperature {}, top-k {}, top-p {}, min-p {}, seed {}+i",
        sampler.temperature, sampler.top_k, sampler.top_p, sampler.min_p, sampler.seed
    );
    let table = format!(
        "| model | passages | human criterion (mean ± sd) | machine criterion (mean ± sd) | AUROC Fast-DetectGPT | AUROC Lastde | AUROC Lastde++ |\n\
         |---|---:|---:|---:|---:|---:|---:|\n\
         | {model_name} | {} + {} | {hm:.2} ± {hs:.2} | {mm:.2} ± {ms:.2} | {:.3} | {:.3} | {:.3} |\n",
        r.pairs.len(),
        r.pairs.len(),
        r.auroc,
        r.auroc_lastde,
        r.auroc_lastde_pp
    );
    println!("{table}");
    let length_table = if r.by_length.is_empty() {
        String::new()
    } else {
        length_table(&r.by_length)
    };
    if !length_table.is_empty() {
        println!("{length_table}");
    }
    if let Some(svg) = &a.roc_svg {
        std::fs::write(svg, roc_svg(&model_stem, &r.by_length))
            .with_context(|| format!("writing {}", svg.display()))?;
        eprintln!("wrote {}", svg.display());
    }
    println!(
        "mean length: human {:.0} tokens, machine {:.0} tokens; machine sampling: {sampler_desc}; {:.0} s",
        mean_len(false),
        mean_len(true),
        r.seconds
    );

    if let Some(md) = &a.write_md {
        let machine = MachineInfo::detect();
        let command: Vec<String> = std::env::args().collect();
        let section = format!(
            "\n## {}: Fast-DetectGPT AUROC, {model_name}\n\n\
             - machine: {}\n\
             - command: `{}`\n\
             - human passages: {} (`{}`), machine passages: the model's continuation of \
             each passage's first sentence, as many tokens as the human passage (at most \
             {}), sampled with {sampler_desc}; both scored by the same model, ctx {}\n\
             - mean length: human {:.0} tokens, machine {:.0} tokens; wall time {:.0} s\n\n{table}{}",
            today_utc(),
            machine.describe(),
            command.join(" "),
            r.pairs.len(),
            passages_path
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            a.max_tokens,
            a.ctx,
            mean_len(false),
            mean_len(true),
            r.seconds,
            if length_table.is_empty() {
                String::new()
            } else {
                format!("\nOn the first L scored tokens of both passages:\n\n{length_table}")
            },
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(md)
            .with_context(|| format!("opening {}", md.display()))?;
        f.write_all(section.as_bytes())?;
        eprintln!("appended to {}", md.display());
    }
    Ok(())
}

/// `--from-pairs`: the per-length results of a `--pairs-out` file, at `lengths` (or
/// every length the file has).
fn from_pairs(
    file: &std::path::Path,
    model: &str,
    lengths: &[usize],
    svg: Option<&std::path::Path>,
) -> Result<()> {
    let data =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut pairs = Vec::new();
    let mut file_lengths: Vec<usize> = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", file.display(), i + 1))?;
        let by_len = v["by_length"].as_array().with_context(|| {
            format!(
                "{}:{}: no \"by_length\" (was the run given --lengths?)",
                file.display(),
                i + 1
            )
        })?;
        let scores = |s: &serde_json::Value| -> Option<DetectorScores> {
            let get = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            s.is_object().then(|| DetectorScores {
                fast_detectgpt: get("fast_detectgpt"),
                lastde: get("lastde"),
                lastde_pp: get("lastde_pp"),
            })
        };
        let mut human_at = Vec::new();
        let mut machine_at = Vec::new();
        for e in by_len {
            let len = e["len"].as_u64().with_context(|| {
                format!("{}:{}: a length without \"len\"", file.display(), i + 1)
            })? as usize;
            if pairs.is_empty() {
                file_lengths.push(len);
            }
            human_at.push((len, scores(&e["human"])));
            machine_at.push((len, scores(&e["machine"])));
        }
        let wanted: &[usize] = if lengths.is_empty() {
            &file_lengths
        } else {
            lengths
        };
        let pick = |at: &[(usize, Option<DetectorScores>)]| -> Result<Vec<Option<DetectorScores>>> {
            wanted
                .iter()
                .map(|l| {
                    at.iter()
                        .find(|(len, _)| len == l)
                        .map(|(_, s)| *s)
                        .with_context(|| {
                            format!("{}:{}: no scores at length {l}", file.display(), i + 1)
                        })
                })
                .collect()
        };
        let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        pairs.push(DetectionPair {
            source: text("source"),
            prompt: text("prompt"),
            machine_text: text("machine_text"),
            human_tokens: v["human_tokens"].as_u64().unwrap_or(0) as usize,
            machine_tokens: v["machine_tokens"].as_u64().unwrap_or(0) as usize,
            human_criterion: num("human_criterion"),
            machine_criterion: num("machine_criterion"),
            human_lastde: num("human_lastde"),
            machine_lastde: num("machine_lastde"),
            human_lastde_pp: num("human_lastde_pp"),
            machine_lastde_pp: num("machine_lastde_pp"),
            human_at: pick(&human_at)?,
            machine_at: pick(&machine_at)?,
        });
    }
    if pairs.is_empty() {
        bail!("{} has no pairs", file.display());
    }
    let lengths = if lengths.is_empty() {
        file_lengths
    } else {
        lengths.to_vec()
    };
    let rows = eval::detect::by_length(&pairs, &lengths)?;
    println!("{} pairs from {}\n", pairs.len(), file.display());
    println!("{}", length_table(&rows));
    if let Some(svg) = svg {
        // The model is not loaded: name it as given (an alias or a path).
        let name = std::path::Path::new(model)
            .file_name()
            .map_or_else(|| model.to_string(), |f| f.to_string_lossy().into_owned());
        std::fs::write(svg, roc_svg(name.trim_end_matches(".gguf"), &rows))
            .with_context(|| format!("writing {}", svg.display()))?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}

/// One pair as a JSON line: prompt, machine text, every detector's scores over the
/// full passages and per length.
fn pair_json(p: &DetectionPair, lengths: &[usize]) -> serde_json::Value {
    let scores = |s: Option<DetectorScores>| {
        s.map_or(serde_json::Value::Null, |s| {
            json!({
                "fast_detectgpt": finite(s.fast_detectgpt),
                "lastde": finite(s.lastde),
                "lastde_pp": finite(s.lastde_pp),
            })
        })
    };
    json!({
        "source": p.source,
        "prompt": p.prompt,
        "machine_text": p.machine_text,
        "human_tokens": p.human_tokens,
        "machine_tokens": p.machine_tokens,
        "human_criterion": finite(p.human_criterion),
        "machine_criterion": finite(p.machine_criterion),
        "human_lastde": finite(p.human_lastde),
        "machine_lastde": finite(p.machine_lastde),
        "human_lastde_pp": finite(p.human_lastde_pp),
        "machine_lastde_pp": finite(p.machine_lastde_pp),
        "by_length": lengths
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "len": l,
                    "human": scores(p.human_at.get(i).copied().flatten()),
                    "machine": scores(p.machine_at.get(i).copied().flatten()),
                })
            })
            .collect::<Vec<_>>(),
    })
}

/// JSON has no NaN: undefined scores are written as null.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn fmt_auroc(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

/// One row per length: the AUROC of each detector and the pairs it rests on.
fn length_table(rows: &[LengthResult]) -> String {
    let mut t = format!(
        "| tokens | AUROC {} | AUROC {} | AUROC {} | n (pairs) |\n|---:|---:|---:|---:|---:|\n",
        DETECTORS[0], DETECTORS[1], DETECTORS[2]
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.len,
            fmt_auroc(r.auroc[0]),
            fmt_auroc(r.auroc[1]),
            fmt_auroc(r.auroc[2]),
            r.n
        ));
    }
    t
}

/// One panel per length, one curve per detector (AUROC in the legend), and the
/// diagonal a detector that guesses would draw.
fn roc_svg(model_name: &str, rows: &[LengthResult]) -> String {
    let charts: Vec<Chart> = rows
        .iter()
        .map(|r| Chart {
            title: format!("{model_name}: first {} tokens (n = {})", r.len, r.n),
            x_label: "false-positive rate (human flagged)".into(),
            y_label: "true-positive rate (machine flagged)".into(),
            series: (0..DETECTORS.len())
                .map(|d| Series {
                    // Two decimals: the legend column is 150 px wide.
                    name: if r.auroc[d].is_finite() {
                        format!("{} {:.2}", DETECTORS[d], r.auroc[d])
                    } else {
                        DETECTORS[d].to_string()
                    },
                    points: r.roc(d),
                })
                .collect(),
            x_log: false,
            y_range: Some((0.0, 1.0)),
        })
        .collect();
    svg_document_with(
        &charts,
        500,
        420,
        &PlotOptions {
            markers: false,
            diagonal: true,
            x_range: Some((0.0, 1.0)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_parsed_with_clear_errors() {
        assert_eq!(
            parse_lengths("256,64, 128,64").unwrap().0,
            vec![64, 128, 256]
        );
        assert!(parse_lengths("").unwrap_err().contains("comma-separated"));
        assert!(parse_lengths("64,,128")
            .unwrap_err()
            .contains("comma-separated"));
        assert!(parse_lengths("0").unwrap_err().contains("at least 1"));
        assert!(parse_lengths("x")
            .unwrap_err()
            .contains("not a token count"));
    }
}
