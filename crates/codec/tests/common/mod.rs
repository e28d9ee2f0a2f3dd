//! Shared helpers: the cached test models, and a tiny synthetic model whose vocabulary
//! has no byte tokens (so the escape path runs) and whose forward pass costs
//! microseconds (so property tests can drive the whole codec).
#![allow(dead_code)]

use std::path::PathBuf;

use gguf::{GgufWriter, Value};

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-Q4_K_M.gguf";

/// Path of a cached test model; panics with the command to run when it is missing, so
/// a missing model fails the suite instead of silently skipping it (as the other
/// crates' model tests do).
pub fn model_path(file: &str) -> PathBuf {
    let dir = match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
    };
    let p = dir.join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch_models.py --all-test` (or `make models`)",
        p.display()
    );
    p
}

pub fn load(file: &str, threads: usize) -> model::LoadedModel {
    model::load_gguf(&model_path(file), threads).expect("model loads")
}

/// Real text nobody here wrote: the GPL-3 text the perplexity tests use.
pub fn gpl3() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eval/tests/data/gpl3.txt");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Deterministic pseudo-random floats in [-scale, scale).
fn lcg(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A one-layer Llama with random F32 weights and a SentencePiece vocabulary of
/// printable ASCII and a few merges, without byte tokens: anything else is escaped.
/// `seed` changes the weights (a different model identity).
pub fn tiny_model(seed: u64, threads: usize) -> model::LoadedModel {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types: Vec<Value> = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    for c in 0x21u8..0x7f {
        tokens.push((c as char).to_string());
        types.push(Value::I32(1));
    }
    for t in [
        "\u{2581}",
        "\n",
        "\u{2581}the",
        "th",
        "he",
        "in",
        "\u{2581}a",
        "er",
    ] {
        tokens.push(t.into());
        types.push(Value::I32(1));
    }
    let v = tokens.len();
    let scores: Vec<Value> = (0..v)
        .map(|i| {
            Value::F32(if tokens[i].chars().count() > 1 {
                -1.0
            } else {
                -10.0
            })
        })
        .collect();
    let (e, h, ff) = (16u64, 2u64, 32u64);
    let mut s = seed.wrapping_add(1);
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()))
        .metadata("llama.block_count", Value::U32(1))
        .metadata("llama.embedding_length", Value::U32(e as u32))
        .metadata("llama.attention.head_count", Value::U32(h as u32))
        .metadata("llama.feed_forward_length", Value::U32(ff as u32))
        .metadata("llama.context_length", Value::U32(4096))
        .metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .metadata("tokenizer.ggml.model", Value::String("llama".into()))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        )
        .metadata("tokenizer.ggml.token_type", Value::Array(types))
        .metadata("tokenizer.ggml.scores", Value::Array(scores))
        .metadata("tokenizer.ggml.add_space_prefix", Value::Bool(false))
        .metadata("tokenizer.ggml.bos_token_id", Value::U32(1))
        .metadata("tokenizer.ggml.eos_token_id", Value::U32(2));
    let v = v as u64;
    w.tensor_f32(
        "token_embd.weight",
        &[e, v],
        &lcg(&mut s, (e * v) as usize, 1.0),
    )
    .tensor_f32("output_norm.weight", &[e], &[1.0; 16])
    .tensor_f32(
        "output.weight",
        &[e, v],
        &lcg(&mut s, (e * v) as usize, 1.0),
    )
    .tensor_f32("blk.0.attn_norm.weight", &[e], &[1.0; 16])
    .tensor_f32("blk.0.ffn_norm.weight", &[e], &[1.0; 16]);
    for (name, cols, rows) in [
        ("attn_q", e, e),
        ("attn_k", e, e),
        ("attn_v", e, e),
        ("attn_output", e, e),
        ("ffn_gate", e, ff),
        ("ffn_up", e, ff),
        ("ffn_down", ff, e),
    ] {
        let vals = lcg(&mut s, (cols * rows) as usize, 0.5);
        w.tensor_f32(&format!("blk.0.{name}.weight"), &[cols, rows], &vals);
    }
    let dir = std::env::temp_dir().join(format!("codec-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!(
        "tiny-{seed}-{threads}-{:?}.gguf",
        std::thread::current().id()
    ));
    std::fs::write(&path, w.to_bytes()).expect("write tiny model");
    let m = model::load_gguf(&path, threads).expect("tiny model loads");
    // The weights are mapped; the file can go (the mapping keeps the data alive).
    let _ = std::fs::remove_file(&path);
    m
}
