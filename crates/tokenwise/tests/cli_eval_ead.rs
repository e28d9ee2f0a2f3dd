//! `tokenwise eval ead` on the first HumanEval problem with Qwen2.5-Coder-0.5B as both
//! the small and the large model: one table row per decoder, and the decoders agree
//! (one model) except in the share of tokens credited to the large model. Bad input
//! is a one-line error. The switching itself is tested in `engine/tests/switching.rs`.
//! Tests needing a model or the HumanEval cache skip, with a message, when absent.

use std::path::PathBuf;
use std::process::Output;

mod common;

use common::{Scratch, SMOLLM2};

const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn tokenwise(args: &[&str]) -> Output {
    let out = common::tokenwise(args);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

fn cache_root() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tokenwise")
        }
    }
}

/// The cached file, or `None` (after saying how to fetch it) when it is absent.
fn cached(relative: &str, fetch: &str) -> Option<PathBuf> {
    let p = cache_root().join(relative);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is missing (run `{fetch}`)", p.display());
        None
    }
}

fn qwen() -> Option<PathBuf> {
    cached(
        &format!("models/{QWEN05}"),
        "scripts/fetch_models.py --all-test",
    )
}

fn humaneval() -> Option<PathBuf> {
    cached("data/humaneval.jsonl", "scripts/fetch_humaneval.py")
}

/// The table's rows as cells, by decoder name.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with("| small") || l.starts_with("| large") || l.starts_with("| ead@"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn eval_ead_reports_each_decoder_on_one_problem() {
    let (Some(model), Some(data)) = (qwen(), humaneval()) else {
        return;
    };
    let dir = Scratch::new("eval-ead");
    let md = dir.path("ead.md");
    let model = model.to_str().unwrap();
    let out = tokenwise(&[
        "eval",
        "ead",
        "--small",
        model,
        "--large",
        model,
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "1",
        "--max-tokens",
        "12",
        "--thresholds",
        "inf,-inf",
        "-t",
        "2",
        "--write-md",
        md.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(std::fs::read_to_string(&md).unwrap(), table);
    let rows = rows(&table);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["small", "large", "ead@inf", "ead@-inf"], "{table}");
    // Columns: decoder, threshold, n, pass@1, passed, large share, tokens, tokens/s, ppl.
    let shares: Vec<&str> = rows.iter().map(|r| r[5].as_str()).collect();
    assert_eq!(shares, ["0.000", "1.000", "0.000", "1.000"], "{table}");
    for r in &rows {
        assert_eq!(r[2], "1", "{table}");
        // One model generates the same greedy text whichever session runs it.
        assert_eq!(
            (&r[3], &r[6], &r[8]),
            (&rows[0][3], &rows[0][6], &rows[0][8]),
            "{table}"
        );
    }
}

#[test]
fn eval_ead_bad_input_is_a_one_line_error() {
    let Some(data) = humaneval() else {
        return;
    };
    let data = data.to_str().unwrap();
    let one_line_error = |args: &[&str]| {
        let out = tokenwise(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        err
    };
    let err = one_line_error(&[
        "eval", "ead", "--small", "a", "--large", "b", "--data", data, "--window", "0",
    ]);
    assert!(err.contains("window"), "{err}");
    let err = one_line_error(&[
        "eval",
        "ead",
        "--small",
        "a",
        "--large",
        "b",
        "--data",
        "/nonexistent/he.jsonl",
    ]);
    assert!(err.contains("scripts/fetch_humaneval.py"), "{err}");
    let Some(qwen) = qwen() else {
        return;
    };
    let smol = cache_root().join("models").join(SMOLLM2);
    if !smol.exists() {
        eprintln!(
            "skipping the tokenizer check: {} is missing",
            smol.display()
        );
        return;
    }
    let err = one_line_error(&[
        "eval",
        "ead",
        "--small",
        smol.to_str().unwrap(),
        "--large",
        qwen.to_str().unwrap(),
        "--data",
        data,
        "--limit",
        "1",
    ]);
    assert!(err.contains("one tokenizer"), "{err}");
}

/// `generate --switch-model`: with a threshold no entropy reaches, the text is the
/// small model's plain greedy output; with 0 every token is the large model's
/// (here the same model, so the same text), and the summary says so.
#[test]
fn generate_with_switching_matches_plain_greedy_output() {
    let Some(q) = qwen() else { return };
    let q = q.to_string_lossy().into_owned();
    let base = [
        "generate",
        "-m",
        &q,
        "-p",
        "def add(a, b):",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    ];
    let plain = tokenwise(&base);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    for (threshold, share) in [
        ("1000", "0 from the large model (0%)"),
        ("0", "12 from the large model (100%)"),
    ] {
        let mut args = base.to_vec();
        args.extend(["--switch-model", &q, "--switch-threshold", threshold]);
        let switched = tokenwise(&args);
        let err = String::from_utf8_lossy(&switched.stderr);
        assert!(switched.status.success(), "{err}");
        assert_eq!(
            String::from_utf8_lossy(&switched.stdout),
            String::from_utf8_lossy(&plain.stdout),
            "threshold {threshold}"
        );
        assert!(err.contains(share), "threshold {threshold}: {err}");
    }
}
