//! `tokenwise bench`: prefill and decode throughput measured like `llama-bench` (see
//! `eval::bench`), optionally with llama.cpp's own `llama-bench` run in the same
//! invocation on the same model, and a dated record appended to a markdown file.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use eval::bench::{compare, markdown_section, markdown_table, mib, RunContext};
use eval::sysinfo::{today_utc, MachineInfo};
use eval::BenchOptions;
use indicatif::{ProgressBar, ProgressDrawTarget};

use crate::models;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Other benchmarks (without one: prefill and decode speed).
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Prompt tokens of the prefill test (`ppN`; 0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens of the decode test (`tgN`; 0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Thread counts, comma-separated.
    #[arg(short = 't', long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Timed repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
    /// Largest prefill batch (llama-bench's micro-batch is 512).
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Seed of the random benchmark tokens.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Path of llama.cpp's `llama-bench`: run it with the same model, sizes, threads and
    /// repetitions, and print both side by side.
    #[arg(long, value_name = "PATH")]
    pub llama_bench: Option<PathBuf>,
    /// Append a dated markdown section (machine, command, commit, table) to this file.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Speculative decoding: mean accepted length, drafted tokens per step and speedup
    /// over plain greedy decoding on HumanEval, rewrite and chat prompts.
    Spec(super::bench_spec::Args),
    /// The HTTP server under 1, 4, 8 concurrent streaming clients (optionally beside
    /// llama-server): aggregate tokens/s, time to first token, inter-token latency.
    Serve(super::bench_serve::Args),
    /// Grammar-constrained JSON (response_format) with the full mask every step and with
    /// adaptive weighted rejection sampling: tokens/s, checks per token, validity.
    Constrained(super::bench_constrained::Args),
    /// Lossless compression with the model against gzip -9, xz -9 and zstd -19:
    /// bits per byte and KB/s on the same files.
    Compress(super::bench_compress::Args),
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Some(BenchCommand::Spec(s)) => return super::bench_spec::run(s),
        Some(BenchCommand::Serve(s)) => return super::bench_serve::run(s),
        Some(BenchCommand::Constrained(c)) => return super::bench_constrained::run(c),
        Some(BenchCommand::Compress(c)) => return super::bench_compress::run(c),
        None => {}
    }
    if a.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    if a.threads.is_empty() || a.threads.contains(&0) {
        bail!("-t needs thread counts of at least 1 (e.g. -t 1,2)");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(bin) = &a.llama_bench {
        if !bin.is_file() {
            bail!("--llama-bench {}: no such file", bin.display());
        }
    }
    let path = models::resolve(&a.model)?;
    let opts = BenchOptions {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        repetitions: a.repetitions,
        batch: a.batch,
        seed: a.seed,
        threads: a.threads.clone(),
    };

    let spinner = ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        spinner.set_draw_target(ProgressDrawTarget::hidden());
    }
    let report = eval::run_bench(&path, &opts, &mut |msg| {
        spinner.set_message(msg.to_string());
        spinner.tick();
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            spinner.finish_and_clear();
            return Err(e).with_context(|| format!("benchmarking {}", path.display()));
        }
    };

    // llama-bench runs after ours, never beside it: both want every core.
    let (llama_rows, llama_note) = match &a.llama_bench {
        None => (
            None,
            "comparison skipped (no --llama-bench PATH given)".to_string(),
        ),
        Some(bin) => {
            spinner.set_message(format!("running {}", bin.display()));
            spinner.tick();
            match eval::run_llama_bench(bin, &path, a.n_prompt, a.n_gen, &a.threads, a.repetitions)
            {
                Ok(rows) => (
                    Some(rows),
                    format!("`{}`, run in the same invocation", bin.display()),
                ),
                Err(e) => {
                    eprintln!("warning: llama-bench failed, comparison skipped: {e}");
                    (
                        None,
                        format!("comparison skipped: llama-bench failed ({e})"),
                    )
                }
            }
        }
    };
    spinner.finish_and_clear();

    let rows = compare(&report, llama_rows.as_deref());
    println!("model: {} ({})", path.display(), mib(report.model_bytes));
    print!("{}", markdown_table(&rows));
    match report.peak_rss_bytes {
        Some(b) => println!("peak RSS: {}", mib(b)),
        None => println!("peak RSS: unknown"),
    }
    println!("llama.cpp: {llama_note}");

    if let Some(md) = &a.write_md {
        let machine = MachineInfo::detect();
        let command = command_line();
        let commit = git_commit();
        let date = today_utc();
        let ctx = RunContext {
            date: &date,
            machine: &machine,
            command: &command,
            commit: commit.as_deref(),
            llama_note: &llama_note,
        };
        let section = markdown_section(&ctx, &report, &rows);
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

/// This process's command line, with arguments quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `git rev-parse --short HEAD` of the current directory, if it is a git checkout.
fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !s.trim().is_empty()).then(|| s.trim().to_string())
}
