//! Runs llama.cpp's `llama-bench` and reads its JSON output, so that our throughput and
//! llama.cpp's are measured in the same run, on the same machine, model file and
//! settings. A figure copied from elsewhere would mix machines and loads.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{EvalError, Result};

/// One test of `llama-bench -o json` (the fields we compare; it prints many more).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaBenchRow {
    /// Prompt tokens (prefill test when `n_gen == 0`).
    pub n_prompt: usize,
    /// Generated tokens (decode test when `n_prompt == 0`).
    pub n_gen: usize,
    pub n_threads: usize,
    /// Mean tokens/s over the repetitions.
    pub avg_ts: f64,
    /// Sample standard deviation of tokens/s.
    pub stddev_ts: f64,
}

/// Runs `bin -m model -p n_prompt -n n_gen -t threads -r reps -o json` and parses what it
/// prints. A non-zero exit is an error carrying the end of its stderr.
pub fn run_llama_bench(
    bin: &Path,
    model: &Path,
    n_prompt: usize,
    n_gen: usize,
    threads: &[usize],
    reps: usize,
) -> Result<Vec<LlamaBenchRow>> {
    let threads = threads
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-p", &n_prompt.to_string(), "-n", &n_gen.to_string()])
        .args(["-t", &threads, "-r", &reps.to_string(), "-o", "json"])
        .output()
        .map_err(|e| EvalError::External(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(EvalError::External(format!(
            "{} failed ({}): {}",
            bin.display(),
            out.status,
            tail.join(" | ")
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_llama_bench_json(&stdout)
}

/// Parses `llama-bench -o json` output: a JSON array of test objects.
pub fn parse_llama_bench_json(text: &str) -> Result<Vec<LlamaBenchRow>> {
    let bad = |m: String| EvalError::External(format!("unexpected llama-bench output: {m}"));
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| bad(format!("not JSON ({e})")))?;
    let tests = v.as_array().ok_or_else(|| bad("not a JSON array".into()))?;
    tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let uint = |k: &str| {
                t.get(k)
                    .and_then(Value::as_u64)
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(format!("test {i}: no integer field {k:?}")))
            };
            let float = |k: &str| {
                t.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| bad(format!("test {i}: no number field {k:?}")))
            };
            Ok(LlamaBenchRow {
                n_prompt: uint("n_prompt")?,
                n_gen: uint("n_gen")?,
                n_threads: uint("n_threads")?,
                avg_ts: float("avg_ts")?,
                stddev_ts: float("stddev_ts")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of llama-bench's JSON printer (`json_printer` in llama-bench.cpp), trimmed.
    const SAMPLE: &str = r#"[
  {
    "build_commit": "abc1234",
    "model_filename": "m.gguf",
    "model_size": 88160256,
    "n_batch": 2048,
    "n_threads": 2,
    "n_prompt": 512,
    "n_gen": 0,
    "test_time": "2025-01-01T00:00:00Z",
    "avg_ns": 1000,
    "stddev_ns": 10,
    "avg_ts": 512.250000,
    "stddev_ts": 3.5,
    "samples_ns": [ 1000, 1000 ],
    "samples_ts": [ 512.2, 512.3 ]
  },
  {
    "n_threads": 2,
    "n_prompt": 0,
    "n_gen": 128,
    "avg_ts": 80,
    "stddev_ts": 0.000000
  }
]
"#;

    #[test]
    fn parses_llama_bench_json() {
        let rows = parse_llama_bench_json(SAMPLE).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            LlamaBenchRow {
                n_prompt: 512,
                n_gen: 0,
                n_threads: 2,
                avg_ts: 512.25,
                stddev_ts: 3.5
            }
        );
        assert_eq!(rows[1].n_gen, 128);
        assert_eq!(rows[1].avg_ts, 80.0);
    }

    /// Real output of llama-bench (llama.cpp 0c1e570, `-p 16 -n 4 -t 1 -r 1 -o json`).
    #[test]
    fn parses_real_llama_bench_output() {
        let rows =
            parse_llama_bench_json(include_str!("../tests/data/llama_bench_sample.json")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].n_prompt, rows[0].n_gen, rows[0].n_threads),
            (16, 0, 1)
        );
        assert!((rows[0].avg_ts - 65.371998).abs() < 1e-9);
        assert_eq!((rows[1].n_prompt, rows[1].n_gen), (0, 4));
        assert_eq!(rows[1].stddev_ts, 0.0);
    }

    #[test]
    fn rejects_other_output() {
        assert!(parse_llama_bench_json("| model | size |").is_err());
        assert!(parse_llama_bench_json("{}").is_err());
        let e = parse_llama_bench_json(r#"[{"n_prompt": 1}]"#).unwrap_err();
        assert!(e.to_string().contains("n_gen"), "{e}");
    }

    #[test]
    fn a_missing_binary_is_an_error() {
        let e = run_llama_bench(
            Path::new("/nonexistent/llama-bench"),
            Path::new("m.gguf"),
            8,
            8,
            &[1],
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
    }
}
