//! The happy paths of `generate`, `chat` and `inspect` on SmolLM2-135M: the CLI prints
//! what the engine generates, `--jsonl` is well-formed JSON, a piped chat answers each
//! line, and `inspect --json` reports the model's shape.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::{Command, Output, Stdio};

use engine::{GenerationParams, Session};

mod common;

use common::smollm2_path;
const PROMPT: &str = "The capital of France is";

fn tokenwise(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenwise"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

/// What the engine generates greedily for `PROMPT`.
fn engine_greedy(max_tokens: usize) -> String {
    let m = model::load_gguf(&smollm2_path(), 2).unwrap();
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut s = Session::new(&m, 512).unwrap();
    let params = GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    };
    s.generate(&prompt, &params, |_| ControlFlow::Continue(()))
        .unwrap()
        .text
}

#[test]
fn generate_prints_the_engines_greedy_text_and_valid_jsonl() {
    let model = smollm2_path();
    let m = model.to_str().unwrap();
    let expected = engine_greedy(8);
    assert!(!expected.is_empty());

    let base = [
        "generate",
        "--model",
        m,
        "--prompt",
        PROMPT,
        "--greedy",
        "--max-tokens",
        "8",
    ];
    let out = tokenwise(&[&base[..], &["--quiet"]].concat(), None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{expected}\n")
    );
    assert!(
        out.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without --quiet the summary goes to stderr, stdout is unchanged.
    let out = tokenwise(&base, None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{expected}\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tok/s"));

    let out = tokenwise(
        &[&base[..], &["--jsonl", "--top-logprobs", "3", "-q"]].concat(),
        None,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (summary, tokens) = records.split_last().unwrap();
    assert_eq!(tokens.len(), 8);
    let mut text = String::new();
    for r in tokens {
        let lp = r["logprob"].as_f64().unwrap();
        let h = r["entropy"].as_f64().unwrap();
        assert!(
            lp.is_finite() && lp <= 0.0 && h.is_finite() && h >= 0.0,
            "{r}"
        );
        assert_eq!(r["rank"], 0, "greedy picks the top token: {r}");
        let top = r["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0][0], r["id"]);
        assert!(top[0][1].is_string());
        text.push_str(r["text"].as_str().unwrap());
    }
    assert_eq!(text, expected);
    let s = &summary["summary"];
    assert_eq!(s["generated_tokens"], 8);
    assert!(s["decode_tokens_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["stop_reason"], "max_tokens");

    // Forced colour: same text once the escape codes are removed.
    let out = tokenwise(
        &[&base[..], &["--show-entropy", "--color", "always", "-q"]].concat(),
        None,
    );
    let coloured = String::from_utf8(out.stdout).unwrap();
    assert!(coloured.contains("\x1b[48;5;"));
    assert_eq!(strip_ansi(&coloured), format!("{expected}\n"));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn piped_chat_answers_each_line() {
    let model = smollm2_path();
    let args = [
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--greedy",
        "--max-tokens",
        "6",
    ];
    let out = tokenwise(
        &args,
        Some("Hi!\n\n/reset\nWhat is 2+2?\n/exit\nnot read\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One speed line per answered turn; the second turn starts afresh after /reset.
    let turns: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("prompt tokens"))
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    assert!(turns[1].contains("(0 reused)"), "{stderr}");
    assert!(!out.stdout.is_empty());
}

#[test]
fn inspect_json_reports_the_model_shape() {
    let model = smollm2_path();
    let out = tokenwise(&["inspect", model.to_str().unwrap(), "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["config"]["layers"], 30);
    assert_eq!(v["config"]["vocab"], 49152);
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["tokenizer"]["vocab"], 49152);
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let total: u64 = v["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, v["tensor_bytes"].as_u64().unwrap());

    let out = tokenwise(&["inspect", model.to_str().unwrap(), "--tensors"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("hyper-params:  30 layers"), "{text}");
    assert!(text.contains("output_norm.weight"), "{text}");
}

/// `score --jsonl`: one record per token after the first, in order, each a valid
/// distribution summary, and a summary whose perplexity is the records' own.
#[test]
fn score_jsonl_records_agree_with_the_summary() {
    let path = smollm2_path();
    let text = "The quick brown fox jumps over the lazy dog. It was a sunny day, \
                and the fox was very happy.";
    let out = tokenwise(
        &[
            "score",
            "--model",
            path.to_str().unwrap(),
            "--jsonl",
            "--top-logprobs",
            "3",
            "-",
        ],
        Some(text),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let (summary, tokens) = records.split_last().unwrap();
    let summary = &summary["summary"];
    let n = summary["n_scored"].as_u64().unwrap() as usize;
    assert!(n > 15, "{n} tokens scored");
    assert_eq!(tokens.len(), n);
    let mut nll = 0.0;
    for (i, r) in tokens.iter().enumerate() {
        // SmolLM2 adds no BOS, so the first token (index 0) is not scored.
        assert_eq!(r["index"].as_u64().unwrap() as usize, i + 1);
        let lp = r["logprob"].as_f64().unwrap();
        let h = r["entropy"].as_f64().unwrap();
        assert!(lp <= 0.0 && h >= 0.0 && r["varentropy"].as_f64().unwrap() >= 0.0);
        let top = r["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let best = top[0][2].as_f64().unwrap();
        // The chosen token is the best one exactly when its rank is 0.
        if r["rank"].as_u64().unwrap() == 0 {
            assert!((best - lp).abs() < 1e-6);
        } else {
            assert!(best >= lp);
        }
        nll -= lp;
    }
    let ppl = (nll / n as f64).exp();
    let reported = summary["ppl"].as_f64().unwrap();
    assert!(
        (ppl - reported).abs() / reported < 1e-5,
        "{ppl} vs {reported}"
    );
    assert!(summary["fast_detect_gpt"]["criterion"]
        .as_f64()
        .unwrap()
        .is_finite());
}

/// `generate --byte-level` continues a prompt that ends inside a word (greedy: the
/// same bytes every run), and `score --bytes` reports per-byte records whose
/// log-probabilities sum to the summary's total.
#[test]
fn byte_level_generation_and_scoring() {
    let model = smollm2_path();
    let model = model.to_str().unwrap();
    let out = tokenwise(
        &[
            "generate",
            "-m",
            model,
            "--byte-level",
            "--greedy",
            "--max-tokens",
            "3",
            "-q",
            "--prompt",
            "The quick brown fox jumps over the la",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zy"),
        "continues 'la' inside the word: {text:?}"
    );

    let dir = std::env::temp_dir().join(format!("tw-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.txt");
    std::fs::write(&file, "Hello, world.").unwrap();
    let out = tokenwise(
        &[
            "score",
            "-m",
            model,
            "--bytes",
            "--jsonl",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let bytes: Vec<&serde_json::Value> =
        records.iter().filter(|r| r.get("byte").is_some()).collect();
    assert_eq!(bytes.len(), "Hello, world.".len());
    assert!(bytes
        .iter()
        .all(|r| r["logprob"].as_f64().is_some_and(|l| l <= 0.0)));
    let _ = std::fs::remove_dir_all(&dir);
}
