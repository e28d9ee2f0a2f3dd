//! Greedy continuations and log-probabilities against llama.cpp's (shared/golden,
//! copied into tests/data/golden), for SmolLM2, Gemma 3 and Qwen2.5-Coder.
//!
//! Why the tie margin is 0.35 nats and not 1e-3: with int8-quantised activations a
//! change in float summation order flips individual activation roundings, and over
//! 20-30 layers that moves log-probabilities by 0.1-0.3 nats. llama.cpp itself shows
//! it: the same llama.cpp version built for this machine's AVX-512 CPU diverges from
//! the golden continuations (made on another CPU) at steps where the golden top-2
//! margin is up to 0.18 nats, on 11 of 13 SmolLM2 prompts (docs/BENCHMARKS.md has the
//! measurement). So a divergence is accepted only where llama.cpp's own top-2 margin is
//! below `TIE_MARGIN`; everywhere else the tokens must be identical.

mod common;

use model::{Batch, LogitsFor};

const STEPS: usize = 32;
const TIE_MARGIN: f64 = 0.35;
/// Gemma 3's log-probabilities move several times more than the others' under a
/// change of summation order: teacher-forced on its golden prompts, the worst
/// |logprob - llama.cpp's| is 1.12 nats with our scalar reference kernels, 0.90
/// with the AVX2 ones and 0.89 with the packed AVX-512 ones (examples/golden_drift).
/// With the packed kernels greedy decoding leaves llama.cpp's path at steps where
/// llama.cpp's own margin is up to 0.43 nats (mean drift 0.043 nats over 624
/// steps), so Gemma gets a wider tie margin.
const GEMMA_TIE_MARGIN: f64 = 0.5;

fn log_softmax_at(x: &[f32], id: u32) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    x[id as usize] as f64 - max - sum.ln()
}

struct Drift {
    /// Mean |our logprob - llama.cpp's| of llama.cpp's chosen token, teacher-forced.
    mean_abs: f64,
    max_abs: f64,
}

/// Runs every golden prompt; asserts the greedy rule above and returns the
/// teacher-forced log-probability drift.
fn check_model(file: &str, golden: &str, tie_margin: f64) -> Drift {
    let loaded = model::load_gguf(&common::model_path(file), 2).expect("model loads");
    let m = &loaded.model;
    let (mut sum, mut count, mut max_abs) = (0.0, 0usize, 0f64);
    for (pi, rec) in common::golden(golden).iter().enumerate() {
        let prompt = common::ids(&rec["prompt_ids"]);
        let expected = common::ids(&rec["greedy_ids"]);
        let steps = rec["steps"].as_array().expect("steps");
        let mut state = m.new_state(prompt.len() + expected.len() + 1);
        let positions: Vec<usize> = (0..prompt.len()).collect();
        let batch = Batch {
            logits: LogitsFor::Last,
            ..Batch::causal(&prompt, &positions)
        };
        let mut logits = m
            .forward(&mut state, &batch, None)
            .expect("prefill")
            .to_vec();
        let mut diverged = false;
        // Teacher-forced on llama.cpp's tokens, so every step is comparable.
        for (step, &want) in expected.iter().enumerate() {
            let ours = sample::argmax(&logits);
            let lp = log_softmax_at(&logits, want);
            let lp_want = steps[step]["logprob"].as_f64().expect("logprob");
            sum += (lp - lp_want).abs();
            count += 1;
            max_abs = max_abs.max((lp - lp_want).abs());
            if step < STEPS && !diverged && ours != want {
                let top = steps[step]["top"].as_array().expect("top");
                let margin = top[0][2].as_f64().expect("lp") - top[1][2].as_f64().expect("lp");
                assert!(
                    margin < tie_margin,
                    "{golden} prompt {pi} step {step}: we chose {ours}, llama.cpp {want} with a top-2 margin of \
                     {margin:.4} nats (ours: {lp:.4} for {want}, {:.4} for {ours})",
                    log_softmax_at(&logits, ours)
                );
                eprintln!("{golden} prompt {pi}: first divergence at step {step} (llama.cpp's margin {margin:.4})");
                diverged = true;
            }
            let pos = state.cache.next_position();
            logits = m
                .forward(&mut state, &Batch::causal(&[want], &[pos]), None)
                .expect("decode")
                .to_vec();
        }
    }
    let drift = Drift {
        mean_abs: sum / count as f64,
        max_abs,
    };
    eprintln!(
        "{golden}: |logprob - llama.cpp's| mean {:.4}, max {:.4} over {count} steps",
        drift.mean_abs, drift.max_abs
    );
    drift
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    let d = check_model(common::SMOLLM2, "golden-smollm2-public.json", TIE_MARGIN);
    assert!(
        d.mean_abs < 0.1,
        "mean log-probability drift {:.4}",
        d.mean_abs
    );
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    let d = check_model(
        common::GEMMA3,
        "golden-gemma3-public.json",
        GEMMA_TIE_MARGIN,
    );
    assert!(
        d.mean_abs < 0.1,
        "mean log-probability drift {:.4}",
        d.mean_abs
    );
}

#[test]
fn qwen2_greedy_matches_llama_cpp() {
    let d = check_model(common::QWEN05, "golden-qwen05-public.json", TIE_MARGIN);
    assert!(
        d.mean_abs < 0.1,
        "mean log-probability drift {:.4}",
        d.mean_abs
    );
}
