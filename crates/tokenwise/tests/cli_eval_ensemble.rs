//! `tokenwise eval ensemble` on a tiny text: a model ensembled with itself scores as
//! the model under every combination; SmolLM2 with Gemma 3 (different tokenizers)
//! gives an oracle equal to the better model and a Bayesian mixture within one bit of
//! it; bad input is a one-line error. The combination math is tested in
//! `eval::ensemble`. Tests needing a model skip, with a message, when it is not cached.

use std::path::PathBuf;
use std::process::Output;

mod common;

use common::{Scratch, GEMMA3, SMOLLM2};

fn tokenwise(args: &[&str]) -> Output {
    let out = common::tokenwise(args);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

/// The cached model, or `None` (after saying so) when it has not been fetched.
fn cached_model(file: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
    };
    let p = dir.join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is missing (run `scripts/fetch_models.py --all-test`)",
            p.display()
        );
        None
    }
}

/// 60 bytes of prose, one passage.
const PASSAGE: &str = r#"{"source": "tiny", "text": "The cat sat on the mat, and the dog lay by the warm fire. Ok"}
"#;

/// The summary row of `passages.jsonl`: bits per byte by column name.
fn summary_row(table: &str) -> Vec<(String, f64)> {
    let header: Vec<String> = table
        .lines()
        .find(|l| l.starts_with("| source |"))
        .expect("a summary header")
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("| passages.jsonl |"))
        .expect("a summary row")
        .split('|')
        .map(str::trim)
        .collect();
    header
        .into_iter()
        .zip(row)
        .filter_map(|(h, v)| v.parse::<f64>().ok().map(|x| (h, x)))
        .collect()
}

fn column(row: &[(String, f64)], name: &str) -> f64 {
    row.iter()
        .find(|(h, _)| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
}

fn run_ensemble(model1: &str, model2: &str, dir: &Scratch) -> String {
    let data = dir.write("passages.jsonl", PASSAGE.as_bytes());
    let md = dir.path("table.md");
    let out = tokenwise(&[
        "eval",
        "ensemble",
        "-m",
        model1,
        "--model2",
        model2,
        "--text",
        data.to_str().unwrap(),
        "-t",
        "1",
        "--write-md",
        md.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(std::fs::read_to_string(&md).unwrap(), table);
    table
}

#[test]
fn a_model_ensembled_with_itself_scores_as_the_model() {
    let Some(smollm2) = cached_model(SMOLLM2) else {
        return;
    };
    let dir = Scratch::new("eval-ensemble-self");
    let table = run_ensemble(smollm2.to_str().unwrap(), smollm2.to_str().unwrap(), &dir);
    let row = summary_row(&table);
    assert_eq!(column(&row, "bytes"), 60.0, "{table}");
    let m1 = column(&row, "m1");
    assert!(m1 > 0.5 && m1 < 8.0, "{table}");
    for name in [
        "m2",
        "mix 0.25",
        "mix 0.5",
        "mix 0.75",
        "prod 0.5",
        "bayes",
        "share 0.01",
        "bayes+prod",
        "oracle",
    ] {
        assert_eq!(column(&row, name), m1, "{name}: {table}");
    }
}

#[test]
fn smollm2_with_gemma3_is_consistent() {
    let (Some(smollm2), Some(gemma)) = (cached_model(SMOLLM2), cached_model(GEMMA3)) else {
        return;
    };
    let dir = Scratch::new("eval-ensemble-pair");
    let table = run_ensemble(smollm2.to_str().unwrap(), gemma.to_str().unwrap(), &dir);
    let row = summary_row(&table);
    let (m1, m2) = (column(&row, "m1"), column(&row, "m2"));
    assert_ne!(m1, m2, "{table}");
    // Printed to 4 decimals: allow for the rounding of each figure.
    let slack = 2e-4;
    assert!(
        (column(&row, "oracle") - m1.min(m2)).abs() <= slack,
        "{table}"
    );
    // A uniform two-expert Bayesian mixture loses at most 1 bit over the 60 bytes.
    assert!(
        column(&row, "bayes") <= m1.min(m2) + 1.0 / 60.0 + slack,
        "{table}"
    );
    // Per byte, an equal mixture is at most 1 bit (-log2 1/2) above the better model.
    assert!(
        column(&row, "mix 0.5") <= m1.min(m2) + 1.0 + slack,
        "{table}"
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = Scratch::new("eval-ensemble-errors");
    let bad_json = dir.write("bad.jsonl", b"{\"text\": \"fine\"}\nnot json\n");
    let no_text = dir.write("no-text.jsonl", b"{\"body\": \"x\"}\n");
    let good = dir.write("good.jsonl", PASSAGE.as_bytes());
    let cases: [(&[&str], &str); 4] = [
        (
            &["--text", "/nonexistent/passages.jsonl"],
            "/nonexistent/passages.jsonl",
        ),
        (&["--text", bad_json.to_str().unwrap()], "line 2"),
        (&["--text", no_text.to_str().unwrap()], "\"text\""),
        (
            &[
                "--text",
                good.to_str().unwrap(),
                "-m",
                "/nonexistent/model.gguf",
            ],
            "/nonexistent/model.gguf",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["eval", "ensemble", "--model2", "/nonexistent/model2.gguf"];
        all.extend_from_slice(args);
        let out = tokenwise(&all);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
