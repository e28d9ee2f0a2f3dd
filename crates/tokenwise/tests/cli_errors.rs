//! Bad input makes the binary exit non-zero with a one-line `error: ...` on stderr,
//! never a panic: missing, truncated, random and unsupported model files, and a prompt
//! longer than the context.

use std::path::Path;

use gguf::{GgufWriter, Value};

mod common;

use common::{smollm2_path, tokenwise, Scratch};

/// Exit code non-zero, stderr exactly one line starting with `error:`, no panic.
fn assert_one_line_error(args: &[&str], expect_in_message: &str) {
    let out = tokenwise(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: stderr is not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(expect_in_message),
        "{args:?}: expected {expect_in_message:?} in {stderr}"
    );
}

fn generate_and_inspect(model: &Path, expect: &str) {
    let m = model.to_str().unwrap();
    assert_one_line_error(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ],
        expect,
    );
    assert_one_line_error(&["inspect", m], expect);
}

#[test]
fn missing_file() {
    let missing = std::env::temp_dir().join("tokenwise-no-such-model.gguf");
    generate_and_inspect(&missing, "no such model file");
    assert_one_line_error(
        &["chat", "--model", missing.to_str().unwrap()],
        "no such model file",
    );
}

#[test]
fn truncated_files() {
    let real = std::fs::read(smollm2_path()).unwrap();
    let dir = Scratch::new("truncated");
    // Cut inside the metadata (the tokenizer's arrays) ...
    generate_and_inspect(&dir.write("head.gguf", &real[..1 << 20]), "truncated");
    // ... and inside the tensor data.
    generate_and_inspect(
        &dir.write("half.gguf", &real[..real.len() / 2]),
        "truncated",
    );
    // Nothing at all.
    generate_and_inspect(&dir.write("empty.gguf", &[]), "truncated");
}

#[test]
fn random_bytes() {
    // A fixed xorshift stream: "random" but reproducible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let dir = Scratch::new("random");
    generate_and_inspect(&dir.write("random.gguf", &bytes), "not a GGUF file");
    // Valid magic and version, garbage after it.
    let mut garbage = b"GGUF\x03\x00\x00\x00".to_vec();
    garbage.extend_from_slice(&bytes);
    let p = dir.write("garbage.gguf", &garbage);
    let m = p.to_str().unwrap();
    assert_one_line_error(&["generate", "--model", m, "--prompt", "hi"], "");
    assert_one_line_error(&["inspect", m], "");
}

#[test]
fn unknown_architecture() {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("mamba9".into()))
        .metadata("mamba9.block_count", Value::U32(1))
        .tensor_f32("token_embd.weight", &[4, 2], &[0.0; 8]);
    let dir = Scratch::new("unknown-arch");
    let p = dir.write("mamba9.gguf", &w.to_bytes());
    let m = p.to_str().unwrap();
    assert_one_line_error(
        &["generate", "--model", m, "--prompt", "hi"],
        "unknown architecture \"mamba9\"",
    );
    // `inspect` still describes the file and says what it cannot read.
    let out = tokenwise(&["inspect", m]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mamba9") && stdout.contains("unavailable"),
        "{stdout}"
    );
}

#[test]
fn prompt_longer_than_context() {
    let prompt = "one two three four five six seven eight nine ten ".repeat(8);
    let model = smollm2_path();
    assert_one_line_error(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &prompt,
            "--ctx",
            "32",
        ],
        "context holds 32",
    );
}

#[test]
fn bad_flags() {
    let model = smollm2_path();
    let m = model.to_str().unwrap();
    assert_one_line_error(
        &["generate", "--model", m, "--prompt", "hi", "--top-p", "3"],
        "top_p",
    );
    assert_one_line_error(
        &["generate", "--model", m, "--prompt", "hi", "--ctx", "0"],
        "--ctx",
    );
    let missing = std::env::temp_dir().join("tokenwise-no-such-prompt.txt");
    assert_one_line_error(
        &[
            "generate",
            "--model",
            m,
            "--prompt-file",
            missing.to_str().unwrap(),
        ],
        "tokenwise-no-such-prompt.txt",
    );
}

#[test]
fn score_rejects_bad_text() {
    let model = smollm2_path();
    let m = model.to_str().unwrap();
    let dir = Scratch::new("score");
    let bad = dir.write("latin1.txt", b"caf\xe9 au lait");
    assert_one_line_error(
        &["score", "--model", m, bad.to_str().unwrap()],
        "not valid UTF-8 (first bad byte at offset 3)",
    );
    let empty = dir.write("empty.txt", b"");
    assert_one_line_error(
        &["score", "--model", m, empty.to_str().unwrap()],
        "scoring needs at least 2",
    );
    assert_one_line_error(
        &["score", "--model", m, "--ctx", "2", bad.to_str().unwrap()],
        "not valid UTF-8",
    );
}

#[test]
fn hugging_face_sources_fail_cleanly() {
    // A directory that is not a checkpoint.
    let dir = Scratch::new("hf-dir");
    dir.write("README.md", b"not a model");
    let d = dir.0.to_str().unwrap();
    assert_one_line_error(&["generate", "--model", d, "--prompt", "hi"], "config.json");
    // Without the `hub` feature, `hf:` names say how to get it.
    if !cfg!(feature = "hub") {
        assert_one_line_error(
            &[
                "generate",
                "--model",
                "hf:someone/some-model",
                "--prompt",
                "hi",
            ],
            "without Hub support",
        );
    }
}
