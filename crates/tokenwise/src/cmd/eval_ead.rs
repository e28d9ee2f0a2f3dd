//! `tokenwise eval ead`: entropy-adaptive model switching on HumanEval. The small
//! model alone, the large model alone and switching at each threshold complete every
//! problem greedily; the table gives pass@1 (tests in a sandboxed `python3`), the share
//! of tokens from the large model, wall-clock tokens/s and the perplexity of the
//! completions under the large model (see `eval::ead`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use eval::ead::{markdown_table, run_ead, EadOptions};
use eval::humaneval::{default_path, load_problems, SandboxOptions};

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// The model that generates by default (a path or an alias, see `tokenwise models`).
    #[arg(long)]
    pub small: String,
    /// The model that takes over while the small one is uncertain; same tokenizer.
    #[arg(long)]
    pub large: String,
    /// Entropy thresholds in nats (comma-separated); `inf` never switches, `-inf`
    /// always does.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "0.5,1,1.5,2"
    )]
    pub thresholds: Vec<f64>,
    /// Steps in the rolling mean of the small model's entropy.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Problems to run, the first N of the dataset (0: all 164).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Skip the first N problems (to split a run).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Most tokens per completion.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Wall-clock seconds per test program (killed after it).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// The HumanEval file (default: the cache file scripts/fetch_humaneval.py writes).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Write one JSON record per problem and decoder to FILE.
    #[arg(long, value_name = "FILE")]
    pub jsonl_out: Option<PathBuf>,
    /// Also write the markdown table to FILE.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
    /// Worker threads of each model (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        anyhow::bail!(
            "--timeout {}: expected a positive number of seconds",
            a.timeout
        );
    }
    let opts = EadOptions {
        thresholds: a.thresholds.clone(),
        window: a.window,
        max_tokens: a.max_tokens,
        sandbox: SandboxOptions {
            timeout: Duration::from_secs_f64(a.timeout),
            // CPU time a little above the wall clock, so the wall clock decides.
            cpu_secs: a.timeout.ceil() as u64 + 1,
            ..SandboxOptions::default()
        },
    };
    opts.validate()?;
    let path = a.data.clone().unwrap_or_else(default_path);
    let all = load_problems(&path)?;
    let limit = if a.limit == 0 { all.len() } else { a.limit };
    let problems: Vec<_> = all.into_iter().skip(a.skip).take(limit).collect();
    if problems.is_empty() {
        anyhow::bail!("no problems left after --skip {}", a.skip);
    }
    let (small_path, small) = models::load(&a.small, a.threads)?;
    let (large_path, large) = models::load(&a.large, a.threads)?;
    let mut jsonl = match &a.jsonl_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut write_err: Option<std::io::Error> = None;
    let n = problems.len();
    let n_decoders = opts.decoders().len();
    let mut done = 0usize;
    let totals = run_ead(&small, &large, &problems, &opts, &mut |r| {
        done += 1;
        eprintln!(
            "[{}/{}] {} {:<10} {:<7} {:>3} tokens ({:>3} large) {:.1}s",
            done.div_ceil(n_decoders),
            n,
            r.task_id,
            r.decoder.name(),
            r.outcome.name(),
            r.generated_tokens,
            r.large_tokens,
            r.secs,
        );
        if let Some(w) = jsonl.as_mut() {
            if let Err(e) = writeln!(w, "{}", r.to_json()).and_then(|()| w.flush()) {
                write_err.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing --jsonl-out");
    }
    let name = |p: &PathBuf, spec: &str| {
        p.file_name()
            .map_or_else(|| spec.to_string(), |f| f.to_string_lossy().into_owned())
    };
    let md = markdown_table(
        &name(&small_path, &a.small),
        &name(&large_path, &a.large),
        a.window,
        &totals,
    );
    print!("{md}");
    if let Some(p) = &a.write_md {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
