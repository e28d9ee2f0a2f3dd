//! `generate --token-healing` and `eval fim` on SmolLM2-135M: healing continues a
//! word cut in the middle, and `eval fim` on two tiny problems writes a table row and
//! two JSON records per method (the HumanEval harness's pieces are tested in
//! `eval::humaneval`); a missing data file names the script that fetches it.

use std::process::Output;

mod common;

use common::{smollm2_path, Scratch};

fn tokenwise(args: &[&str]) -> Output {
    let out = common::tokenwise(args);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn token_healing_continues_a_cut_word() {
    let model = smollm2_path();
    let out = tokenwise(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--token-healing",
        "--greedy",
        "--max-tokens",
        "4",
        "-q",
        "--prompt",
        "The quick brown fox jumps over the la",
    ]);
    let text = ok(&out);
    // The prompt's "la" is not printed again; the word goes on.
    assert!(text.starts_with("zy"), "{text:?}");
}

const PROBLEMS: &str = r#"{"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n", "entry_point": "add", "test": "def check(f):\n    assert f(2, 3) == 5\n", "canonical_solution": "    return a + b\n"}
{"task_id": "T/1", "prompt": "def double(x):\n    \"\"\"Return twice x.\"\"\"\n", "entry_point": "double", "test": "def check(f):\n    assert f(4) == 8\n", "canonical_solution": "    return 2 * x\n"}
"#;

#[test]
fn eval_fim_writes_a_row_and_records_per_method() {
    let dir = Scratch::new("eval-fim");
    let data = dir.write("problems.jsonl", PROBLEMS.as_bytes());
    let jsonl = dir.path("records.jsonl");
    let md = dir.path("table.md");
    let model = smollm2_path();
    let out = tokenwise(&[
        "eval",
        "fim",
        "-m",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--max-tokens",
        "24",
        "--timeout",
        "5",
        "--jsonl-out",
        jsonl.to_str().unwrap(),
        "--md",
        md.to_str().unwrap(),
    ]);
    let table = ok(&out);
    assert_eq!(std::fs::read_to_string(&md).unwrap(), table);
    for method in ["naive", "healing", "byte-level"] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(&format!("| {method} | 2 |"))),
            "{table}"
        );
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 6);
    for r in &records {
        assert!(r["passed"].is_boolean(), "{r}");
        let kept = r["kept"].as_str().unwrap();
        assert!(kept.starts_with("    ") && kept.len() > 4, "{r}");
    }
}

#[test]
fn eval_fim_without_data_names_the_fetch_script() {
    let out = tokenwise(&["eval", "fim", "--data", "/nonexistent/humaneval.jsonl"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/fetch_humaneval.py"), "{err}");
}
