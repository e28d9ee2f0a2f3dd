//! Prefill and decode throughput, measured the way llama.cpp's `llama-bench` measures
//! them (`test_prompt` / `test_gen` in `tools/llama-bench/llama-bench.cpp`), so that the
//! two engines' figures mean the same thing:
//!
//! - **prefill (`ppN`)**: `N` prompt tokens in one sequence from an empty cache, in
//!   batches of `batch` tokens (512, llama-bench's micro-batch), logits of each batch's
//!   last token only. The first token is BOS when the model adds one, the rest random.
//! - **decode (`tgN`)**: `N` tokens fed one at a time from an empty cache (no prompt
//!   before them), logits for each; the first is BOS when the model adds one.
//! - One untimed warm-up run first (a full prefill, a one-token decode, as llama-bench
//!   does) so page faults of the memory-mapped weights and thread start-up are not
//!   timed; then `repetitions` timed runs. Tokens/s is computed per run and reported as
//!   mean ± sample standard deviation, as llama-bench's `avg_ts ± stddev_ts`.
//!
//! Tokens are random but seeded (llama-bench uses `rand()`, unseeded, hence the same
//! sequence every run); content does not change the work of a dense model, but fixed
//! tokens make runs repeatable to the bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use model::{Batch, LogitsFor, Model, SequenceState};

use crate::llama_bench::LlamaBenchRow;
use crate::sysinfo::MachineInfo;
use crate::{EvalError, Result};

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Prompt tokens of the prefill test (0 skips it).
    pub n_prompt: usize,
    /// Tokens of the decode test (0 skips it).
    pub n_gen: usize,
    /// Timed runs per test and thread count.
    pub repetitions: usize,
    /// Largest prefill batch.
    pub batch: usize,
    /// Seed of the random tokens.
    pub seed: u64,
    /// Thread counts to measure, each with a freshly loaded model (the thread pool is
    /// fixed when the model is loaded).
    pub threads: Vec<usize>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n_prompt: 512,
            n_gen: 128,
            repetitions: 3,
            batch: 512,
            seed: 42,
            threads: vec![1, 2],
        }
    }
}

/// Prefill or decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestKind {
    Prefill,
    Decode,
}

/// The timed runs of one test.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Tokens processed per run.
    pub n_tokens: usize,
    /// Wall time of each timed run, in seconds.
    pub samples_s: Vec<f64>,
}

impl Throughput {
    /// Tokens/s of each run.
    pub fn samples_ts(&self) -> Vec<f64> {
        self.samples_s
            .iter()
            .map(|&s| self.n_tokens as f64 / s)
            .collect()
    }

    /// Mean of the per-run tokens/s (llama-bench's `avg_ts`).
    pub fn mean_ts(&self) -> f64 {
        mean_sd(&self.samples_ts()).0
    }

    /// Sample standard deviation of the per-run tokens/s (`stddev_ts`); 0 for one run.
    pub fn sd_ts(&self) -> f64 {
        mean_sd(&self.samples_ts()).1
    }
}

/// Mean and sample (n - 1) standard deviation; the deviation is 0 below two values.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One test at one thread count.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub kind: TestKind,
    pub n_threads: usize,
    pub throughput: Throughput,
}

impl BenchRow {
    /// llama-bench's test name: `pp512`, `tg128`.
    pub fn test_name(&self) -> String {
        test_name(self.kind, self.throughput.n_tokens)
    }
}

fn test_name(kind: TestKind, n: usize) -> String {
    match kind {
        TestKind::Prefill => format!("pp{n}"),
        TestKind::Decode => format!("tg{n}"),
    }
}

/// Everything one `bench` run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub model_path: PathBuf,
    /// Size of the model file in bytes.
    pub model_bytes: u64,
    pub rows: Vec<BenchRow>,
    /// Peak RSS of the process after all runs (`VmHWM`): the model's mapped weights that
    /// were touched, the KV cache and scratch buffers, and everything else the process
    /// did before.
    pub peak_rss_bytes: Option<u64>,
}

/// A small seeded generator (SplitMix64): enough for benchmark tokens, and no
/// dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (modulo bias is negligible for vocabulary sizes).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` random token ids below `vocab`, the first replaced by `bos` if given.
pub fn random_tokens(n: usize, vocab: usize, bos: Option<u32>, rng: &mut SplitMix64) -> Vec<u32> {
    let mut t: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    if let (Some(first), Some(b)) = (t.first_mut(), bos) {
        *first = b;
    }
    t
}

/// One prefill run: clears the cache, then runs `tokens` in batches of `batch` with
/// logits for each batch's last token. Returns the wall time in seconds.
pub fn bench_prefill(
    model: &Model,
    state: &mut SequenceState,
    tokens: &[u32],
    batch: usize,
) -> Result<f64> {
    if batch == 0 {
        return Err(EvalError::Input("the batch size must be at least 1".into()));
    }
    let positions: Vec<usize> = (0..tokens.len()).collect();
    state.cache.clear();
    let start = Instant::now();
    for (toks, pos) in tokens.chunks(batch).zip(positions.chunks(batch)) {
        model.forward(state, &Batch::causal(toks, pos), None)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One decode run: clears the cache, then feeds `tokens` one at a time (positions 0,
/// 1, …), logits for each. Returns the wall time in seconds.
pub fn bench_decode(model: &Model, state: &mut SequenceState, tokens: &[u32]) -> Result<f64> {
    state.cache.clear();
    let start = Instant::now();
    for (i, t) in tokens.iter().enumerate() {
        let batch = Batch {
            tokens: std::slice::from_ref(t),
            positions: &[i],
            mask: None,
            logits: LogitsFor::Last,
        };
        model.forward(state, &batch, None)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Measures prefill and decode at every thread count of `opts`. `progress` receives a
/// short description of each run before it starts.
pub fn run_bench(
    path: &Path,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    if opts.repetitions == 0 {
        return Err(EvalError::Input(
            "the number of repetitions must be at least 1".into(),
        ));
    }
    if opts.threads.is_empty() || opts.threads.contains(&0) {
        return Err(EvalError::Input("thread counts must be at least 1".into()));
    }
    if opts.n_prompt == 0 && opts.n_gen == 0 {
        return Err(EvalError::Input(
            "nothing to measure: both -p and -n are 0".into(),
        ));
    }
    let model_bytes = std::fs::metadata(path)
        .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?
        .len();
    let mut rows = Vec::new();
    for &n_threads in &opts.threads {
        let loaded = model::load_gguf(path, n_threads)?;
        let model = &loaded.model;
        let tok = &loaded.tokenizer;
        let bos = if tok.adds_bos() { tok.bos_id() } else { None };
        let vocab = model.config.vocab_size;
        let mut state = model.new_state(opts.n_prompt.max(opts.n_gen));
        let mut rng = SplitMix64::new(opts.seed);
        let tests = [
            (TestKind::Prefill, opts.n_prompt),
            (TestKind::Decode, opts.n_gen),
        ];
        for (kind, n) in tests {
            if n == 0 {
                continue;
            }
            let name = test_name(kind, n);
            let run = |state: &mut SequenceState, tokens: &[u32]| match kind {
                TestKind::Prefill => bench_prefill(model, state, tokens, opts.batch),
                TestKind::Decode => bench_decode(model, state, tokens),
            };
            progress(&format!("{name} t={n_threads}: warm-up"));
            let warm_n = if kind == TestKind::Decode { 1 } else { n };
            run(&mut state, &random_tokens(warm_n, vocab, bos, &mut rng))?;
            let mut samples_s = Vec::with_capacity(opts.repetitions);
            for r in 0..opts.repetitions {
                progress(&format!(
                    "{name} t={n_threads}: run {}/{}",
                    r + 1,
                    opts.repetitions
                ));
                let tokens = random_tokens(n, vocab, bos, &mut rng);
                samples_s.push(run(&mut state, &tokens)?);
            }
            rows.push(BenchRow {
                kind,
                n_threads,
                throughput: Throughput {
                    n_tokens: n,
                    samples_s,
                },
            });
        }
    }
    Ok(BenchReport {
        model_path: path.to_path_buf(),
        model_bytes,
        rows,
        peak_rss_bytes: crate::sysinfo::peak_rss_bytes(),
    })
}

/// One line of the side-by-side table.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedRow {
    pub test: String,
    pub n_threads: usize,
    /// Our tokens/s: mean, sd.
    pub ours: (f64, f64),
    /// llama.cpp's tokens/s, when it was run and has this test.
    pub llama: Option<(f64, f64)>,
}

impl ComparedRow {
    /// ours / llama.cpp (above 1: we are faster).
    pub fn ratio(&self) -> Option<f64> {
        self.llama.map(|(l, _)| self.ours.0 / l)
    }
}

/// Pairs our rows with llama-bench's by (test, threads).
pub fn compare(report: &BenchReport, llama: Option<&[LlamaBenchRow]>) -> Vec<ComparedRow> {
    report
        .rows
        .iter()
        .map(|r| {
            let (p, g) = match r.kind {
                TestKind::Prefill => (r.throughput.n_tokens, 0),
                TestKind::Decode => (0, r.throughput.n_tokens),
            };
            let theirs = llama.and_then(|rows| {
                rows.iter()
                    .find(|l| l.n_prompt == p && l.n_gen == g && l.n_threads == r.n_threads)
            });
            ComparedRow {
                test: r.test_name(),
                n_threads: r.n_threads,
                ours: (r.throughput.mean_ts(), r.throughput.sd_ts()),
                llama: theirs.map(|l| (l.avg_ts, l.stddev_ts)),
            }
        })
        .collect()
}

/// A markdown table of the compared rows (readable as plain text too). Without
/// llama.cpp figures the llama.cpp and ratio columns are left out.
pub fn markdown_table(rows: &[ComparedRow]) -> String {
    let with_llama = rows.iter().any(|r| r.llama.is_some());
    let mut s = String::new();
    if with_llama {
        s.push_str("| test | threads | tokenwise t/s | llama.cpp t/s | ours / llama.cpp |\n");
        s.push_str("|---|---:|---:|---:|---:|\n");
    } else {
        s.push_str("| test | threads | tokenwise t/s |\n");
        s.push_str("|---|---:|---:|\n");
    }
    for r in rows {
        let ours = format!("{:.2} ± {:.2}", r.ours.0, r.ours.1);
        if with_llama {
            let (theirs, ratio) = match (r.llama, r.ratio()) {
                (Some((m, sd)), Some(q)) => (format!("{m:.2} ± {sd:.2}"), format!("{q:.2}")),
                _ => ("n/a".to_string(), "n/a".to_string()),
            };
            s.push_str(&format!(
                "| {} | {} | {ours} | {theirs} | {ratio} |\n",
                r.test, r.n_threads
            ));
        } else {
            s.push_str(&format!("| {} | {} | {ours} |\n", r.test, r.n_threads));
        }
    }
    s
}

/// Bytes as MiB with two decimals.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Everything `--write-md` records about one run beyond the measurements.
pub struct RunContext<'a> {
    /// `YYYY-MM-DD`.
    pub date: &'a str,
    pub machine: &'a MachineInfo,
    /// The exact command line.
    pub command: &'a str,
    /// `git rev-parse --short HEAD`, if known.
    pub commit: Option<&'a str>,
    /// What was compared against, or why the comparison was skipped.
    pub llama_note: &'a str,
}

/// A dated markdown section for `docs/BENCHMARKS.md`.
pub fn markdown_section(
    ctx: &RunContext<'_>,
    report: &BenchReport,
    rows: &[ComparedRow],
) -> String {
    let file = report.model_path.file_name().map_or_else(
        || report.model_path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let rss = report
        .peak_rss_bytes
        .map_or_else(|| "unknown".to_string(), mib);
    format!(
        "\n## {date}: {file}\n\n\
         - machine: {machine}\n\
         - command: `{cmd}`\n\
         - commit: {commit}\n\
         - model: `{file}`, {size}\n\
         - peak RSS (whole run): {rss}\n\
         - llama.cpp: {note}\n\n\
         {table}",
        date = ctx.date,
        machine = ctx.machine.describe(),
        cmd = ctx.command,
        commit = ctx.commit.unwrap_or("unknown"),
        size = mib(report.model_bytes),
        note = ctx.llama_note,
        table = markdown_table(rows),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        BenchReport {
            model_path: PathBuf::from("/x/m.gguf"),
            model_bytes: 3 * 1024 * 1024,
            rows: vec![
                BenchRow {
                    kind: TestKind::Prefill,
                    n_threads: 2,
                    throughput: Throughput {
                        n_tokens: 512,
                        samples_s: vec![1.0, 2.0],
                    },
                },
                BenchRow {
                    kind: TestKind::Decode,
                    n_threads: 2,
                    throughput: Throughput {
                        n_tokens: 128,
                        samples_s: vec![1.0],
                    },
                },
            ],
            peak_rss_bytes: Some(1024 * 1024),
        }
    }

    #[test]
    fn throughput_statistics_are_per_run_tokens_per_second() {
        let t = &report().rows[0].throughput;
        assert_eq!(t.samples_ts(), vec![512.0, 256.0]);
        assert_eq!(t.mean_ts(), 384.0);
        // Sample sd of {512, 256}: |512 - 256| / sqrt 2.
        assert!((t.sd_ts() - 256.0 / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn random_tokens_are_seeded_and_start_with_bos() {
        let a = random_tokens(100, 50, Some(7), &mut SplitMix64::new(1));
        let b = random_tokens(100, 50, Some(7), &mut SplitMix64::new(1));
        assert_eq!(a, b);
        assert_eq!(a[0], 7);
        assert!(a.iter().all(|&t| t < 50));
        assert_ne!(a, random_tokens(100, 50, Some(7), &mut SplitMix64::new(2)));
        assert!(random_tokens(0, 50, Some(7), &mut SplitMix64::new(1)).is_empty());
    }

    #[test]
    fn compares_rows_by_test_and_threads() {
        let llama = vec![
            LlamaBenchRow {
                n_prompt: 512,
                n_gen: 0,
                n_threads: 2,
                avg_ts: 768.0,
                stddev_ts: 1.0,
            },
            LlamaBenchRow {
                n_prompt: 0,
                n_gen: 128,
                n_threads: 1,
                avg_ts: 100.0,
                stddev_ts: 1.0,
            },
        ];
        let rows = compare(&report(), Some(&llama));
        assert_eq!(rows[0].test, "pp512");
        assert_eq!(rows[0].ratio(), Some(0.5));
        assert_eq!(rows[1].test, "tg128");
        assert_eq!(rows[1].llama, None, "threads differ");
        let table = markdown_table(&rows);
        assert!(
            table.contains("| pp512 | 2 | 384.00 ± 181.02 | 768.00 ± 1.00 | 0.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| tg128 | 2 | 128.00 ± 0.00 | n/a | n/a |"),
            "{table}"
        );

        let alone = markdown_table(&compare(&report(), None));
        assert!(!alone.contains("llama.cpp"), "{alone}");
    }

    #[test]
    fn markdown_section_names_machine_command_and_commit() {
        let machine = MachineInfo {
            cpu_model: "CPU X".into(),
            n_cpus: 2,
            kernel: "6.1".into(),
            simd: vec!["avx2".into()],
        };
        let ctx = RunContext {
            date: "2025-01-02",
            machine: &machine,
            command: "tokenwise bench -t 2",
            commit: Some("abc123"),
            llama_note: "skipped (no --llama-bench)",
        };
        let md = markdown_section(&ctx, &report(), &compare(&report(), None));
        assert!(md.starts_with("\n## 2025-01-02: m.gguf\n"), "{md}");
        for want in [
            "CPU X, 2 logical CPUs, Linux 6.1",
            "`tokenwise bench -t 2`",
            "abc123",
            "3.00 MiB",
            "1.00 MiB",
            "skipped",
        ] {
            assert!(md.contains(want), "{want} missing in {md}");
        }
    }
}
