//! Greedy continuations must equal llama.cpp's token for token (shared/golden, copied
//! into tests/data/golden). A divergence is accepted only at a step where llama.cpp's
//! own top-2 log-probabilities differ by less than 1e-3, i.e. a numerical tie.

mod common;

use model::{Batch, LogitsFor};

/// Steps compared per prompt.
const STEPS: usize = 32;
const TIE: f64 = 1e-3;

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax_at(x: &[f32], id: u32) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    x[id as usize] as f64 - max - sum.ln()
}

/// Runs every golden prompt greedily; returns the largest |logprob - llama.cpp's| seen.
fn check_model(file: &str, golden: &str) -> f64 {
    let path = common::model_path(file);
    let loaded = model::load_gguf(&path, 2).expect("model loads");
    let m = &loaded.model;
    let mut worst: f64 = 0.0;
    for (pi, rec) in common::golden(golden).iter().enumerate() {
        let prompt = common::ids(&rec["prompt_ids"]);
        let expected = common::ids(&rec["greedy_ids"]);
        let steps = rec["steps"].as_array().expect("steps");
        let mut state = m.new_state(prompt.len() + STEPS + 1);
        let positions: Vec<usize> = (0..prompt.len()).collect();
        let mut logits = m
            .forward(&mut state, &Batch { logits: LogitsFor::Last, ..Batch::causal(&prompt, &positions) }, None)
            .expect("prefill")
            .to_vec();
        for (step, &want) in expected.iter().enumerate().take(STEPS) {
            let got = argmax(&logits);
            let top = steps[step]["top"].as_array().expect("top");
            let lp_want = steps[step]["logprob"].as_f64().expect("logprob");
            worst = worst.max((log_softmax_at(&logits, want) - lp_want).abs());
            if got != want {
                let top1 = top[0][2].as_f64().expect("lp");
                let top2 = top[1][2].as_f64().expect("lp");
                assert!(
                    (top1 - top2).abs() < TIE,
                    "{golden} prompt {pi} step {step}: got {got}, llama.cpp chose {want} \
                     (its top-2 logprobs {top1:.5} vs {top2:.5} are not a tie; ours for {want}: {:.5}, for {got}: {:.5})",
                    log_softmax_at(&logits, want),
                    log_softmax_at(&logits, got),
                );
                eprintln!("{golden} prompt {pi}: diverged at step {step} on a numerical tie");
                break;
            }
            let pos = state.cache.next_position();
            logits = m
                .forward(&mut state, &Batch::causal(&[got], &[pos]), None)
                .expect("decode")
                .to_vec();
        }
    }
    eprintln!("{golden}: largest |logprob - llama.cpp| on the chosen tokens: {worst:.5}");
    worst
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    let worst = check_model(common::SMOLLM2, "golden-smollm2-public.json");
    assert!(worst < 0.05, "log-probabilities drift from llama.cpp's by {worst}");
}
