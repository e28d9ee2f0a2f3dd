//! Perplexity on the GPL-3 text against llama.cpp's `llama-perplexity` on the same GGUF
//! files: the end-to-end check that tokenisation, the forward pass and the window
//! arithmetic all agree with llama.cpp.

use std::path::PathBuf;
use std::time::Instant;

/// llama-perplexity, SmolLM2-135M-Instruct Q4_1, `gpl3.txt`, ctx 512
/// (`shared/golden/README.md`, "Perplexity" table).
const SMOLLM2_LLAMA_CPP_PPL_CTX512: f64 = 18.3459;
/// llama-perplexity, Gemma-3-270M Q4_K_M, `gpl3.txt`, ctx 512, 14 chunks: 13.9062 ± 0.648.
/// Not in `shared/golden`; measured here with the same llama.cpp source (llama-cpp-python
/// 0.3.36 sdist, CPU build with AVX-512, `-t 2`). That build gives 18.3914 for SmolLM2
/// where the golden table says 18.3459: build-to-build differences are about 0.25%.
const GEMMA3_LLAMA_CPP_PPL_CTX512: f64 = 13.9062;
/// llama-perplexity, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, `gpl3.txt`, ctx 512, 14 chunks:
/// 5.3184 ± 0.186, measured like the Gemma figure.
const QWEN05_LLAMA_CPP_PPL_CTX512: f64 = 5.3184;

/// Relative tolerance. Our kernels follow ggml's quantised dot products but not its
/// summation order, so the last digits differ; a tokenizer or window bug moves the
/// figure by far more than 1%.
const TOLERANCE: f64 = 0.01;

const THREADS: usize = 2;

/// The cache directory `scripts/fetch_models.py` fills.
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

fn gpl3() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpl3.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn check(file: &str, reference: f64, ctx: usize) {
    assert!(
        !reference.is_nan(),
        "the llama.cpp reference figure for {file} is not filled in"
    );
    let loaded = model::load_gguf(&model_path(file), THREADS).expect("model loads");
    let start = Instant::now();
    let r =
        eval::perplexity(&loaded, &gpl3(), ctx, 512, &mut |_, _, _| {}).expect("perplexity runs");
    eprintln!(
        "{file} ctx {ctx}: PPL = {:.4} +/- {:.5} (llama.cpp {reference}), {:.4} bits/byte, \
         {} tokens scored in {} windows, {:.1} s ({:.1} tokens/s at {THREADS} threads)",
        r.ppl,
        r.ppl_stderr,
        r.bits_per_byte,
        r.n_scored,
        r.n_windows,
        start.elapsed().as_secs_f64(),
        r.tokens_per_second,
    );
    assert_eq!(r.n_windows, r.n_text_tokens / ctx);
    assert_eq!(r.n_scored, r.n_windows * (ctx - ctx / 2 - 1));
    assert!(r.bits_per_byte.is_finite() && r.bits_per_byte > 0.0);
    let rel = (r.ppl - reference).abs() / reference;
    assert!(
        rel <= TOLERANCE,
        "{file}: PPL {:.4} is {:.2}% away from llama.cpp's {reference}",
        r.ppl,
        rel * 100.0
    );
}

#[test]
fn smollm2_matches_llama_cpp_at_ctx_512() {
    check(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        SMOLLM2_LLAMA_CPP_PPL_CTX512,
        512,
    );
}

#[test]
fn gemma3_matches_llama_cpp_at_ctx_512() {
    check("gemma-3-270m-Q4_K_M.gguf", GEMMA3_LLAMA_CPP_PPL_CTX512, 512);
}

#[test]
fn qwen05_matches_llama_cpp_at_ctx_512() {
    check(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        QWEN05_LLAMA_CPP_PPL_CTX512,
        512,
    );
}

#[test]
fn a_context_beyond_the_model_is_an_error() {
    let loaded =
        model::load_gguf(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 1).expect("model loads");
    let too_big = loaded.model.config.context_length + 1;
    let e = eval::perplexity(&loaded, "hello", too_big, 512, &mut |_, _, _| {}).unwrap_err();
    assert!(
        e.to_string().contains("larger than the model's context"),
        "{e}"
    );
    let e = eval::perplexity(&loaded, "a short text", 64, 512, &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("at least 128"), "{e}");
}
