//! KV quantisation against f16 on a real model and text: SmolLM2-135M, the first 384
//! tokens of `gpl3.txt` scored in one pass in chunks of 32 (each chunk attends the
//! earlier ones through the quantised cache): int8 within 1% of f16's perplexity, int4
//! (KIVI, 32-token residual window) within 5%; the storage shrinks to about 1/2 and
//! 1/4 of true f16 plus the group scales.

use std::path::PathBuf;

use engine::kv::{KvDtype, KvQuant};
use engine::KvOptions;
use eval::kv_eval::kv_perplexity;

fn model_path(file: &str) -> PathBuf {
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

#[test]
fn int8_and_int4_perplexity_stay_close_to_f16_and_memory_shrinks() {
    let m = model::load_gguf(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 2).expect("loads");
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpl3.txt"),
    )
    .expect("gpl3.txt");
    let ids = m.tokenizer.encode_prompt(&text).expect("tokenises");
    let ids = &ids[..384];
    let run = |dtype| {
        let kv = KvOptions::new("full", None).with_quant(KvQuant {
            dtype,
            ..KvQuant::default()
        });
        kv_perplexity(&m, ids, &kv, 32, 0).expect("scores")
    };
    let f16 = run(KvDtype::F16);
    let int8 = run(KvDtype::Int8);
    let int4 = run(KvDtype::Int4);
    eprintln!(
        "ppl f16 {:.4} int8 {:.4} int4 {:.4}; bytes {} / {} / {} (true f16 {})",
        f16.ppl, int8.ppl, int4.ppl, f16.kv_bytes, int8.kv_bytes, int4.kv_bytes, f16.kv_bytes_f16
    );
    assert!(
        (int8.ppl / f16.ppl - 1.0).abs() < 0.01,
        "int8 {} vs {}",
        int8.ppl,
        f16.ppl
    );
    assert!(
        int4.ppl / f16.ppl - 1.0 < 0.05,
        "int4 {} vs {}",
        int4.ppl,
        f16.ppl
    );
    // f16 holds f32 containers: twice true f16.
    assert_eq!(f16.kv_bytes, 2 * f16.kv_bytes_f16);
    // 384 tokens: 352 quantised (11 groups of 32), 32 in the residual window. Per
    // token and lane, true f16 is 256 bytes; int8 is 128 of codes + 8 of value
    // scales + 8 of key scales (per channel, shared by 32 tokens) = 0.5625 of it;
    // int4 64 + 16 = 0.3125.
    let c = &m.model.config;
    let lanes = c.n_layer * c.n_head_kv;
    let residual = lanes * 32 * c.head_dim * 2 * 2;
    assert_eq!(int8.kv_bytes_f16, lanes * 352 * 144 + residual);
    assert_eq!(int4.kv_bytes_f16, lanes * 352 * 80 + residual);
    let ratio = |b: usize| b as f64 / f16.kv_bytes_f16 as f64;
    assert!(ratio(int8.kv_bytes_f16) < 0.62 && ratio(int4.kv_bytes_f16) < 0.40);
}
