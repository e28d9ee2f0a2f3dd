//! Entropy-adaptive model switching against the engine's own greedy decoding, on
//! Qwen2.5-Coder-0.5B playing both the small and the large model (CI fetches no
//! larger Qwen; two sessions over one model still exercise the large model's separate
//! cache and its catch-up batches):
//!
//! * threshold `+inf`: the tokens are plain greedy decoding of the small model;
//! * threshold `-inf`: every token from the large model, equal to plain greedy
//!   decoding of it (the catch-up batch computes rows exactly as single steps do);
//! * a mid threshold mixes the two, and the reported share is the per-token record's;
//! * models with different tokenizers (SmolLM2 and Qwen) are refused with an error.

mod common;

use std::ops::ControlFlow;

use common::{load, prompts, QWEN05, SMOLLM2};
use engine::{EntropySwitching, GenerationParams, Session, SwitchingConfig};
use model::LoadedModel;

const N_CTX: usize = 1024;
const MAX_TOKENS: usize = 16;

/// A few real prompts (CI has two cores): tutorial text, a function header, a chat turn.
fn test_prompts(model: &LoadedModel) -> Vec<Vec<u32>> {
    let all = prompts(true);
    [0, 5, 10]
        .iter()
        .filter_map(|&i| all.get(i))
        .map(|p| model.tokenizer.encode_prompt(p).expect("prompt encodes"))
        .collect()
}

fn params() -> GenerationParams {
    GenerationParams {
        max_tokens: MAX_TOKENS,
        ..GenerationParams::default()
    }
}

fn plain_greedy(model: &LoadedModel, prompt: &[u32]) -> Vec<u32> {
    let mut session = Session::new(model, N_CTX).expect("session");
    session
        .generate(prompt, &params(), |_| ControlFlow::Continue(()))
        .expect("generates")
        .tokens
}

fn switched(
    small: &LoadedModel,
    large: &LoadedModel,
    prompt: &[u32],
    threshold: f64,
) -> engine::SwitchingGeneration {
    let config = SwitchingConfig {
        threshold,
        window: 4,
    };
    let mut ead = EntropySwitching::new(small, large, N_CTX, config).expect("same tokenizer");
    ead.generate(prompt, &params(), |_| ControlFlow::Continue(()))
        .expect("generates")
}

#[test]
fn infinite_threshold_is_plain_greedy_decoding_of_the_small_model() {
    let (_turn, qwen) = load(QWEN05);
    for prompt in test_prompts(qwen) {
        let out = switched(qwen, qwen, &prompt, f64::INFINITY);
        assert_eq!(out.tokens, plain_greedy(qwen, &prompt));
        assert!(out.from_large.iter().all(|&l| !l));
        assert_eq!(out.stats.large_tokens, 0);
        assert_eq!(out.stats.large_computed, 0, "the large model never ran");
    }
}

#[test]
fn minus_infinite_threshold_is_plain_greedy_decoding_of_the_large_model() {
    let (_turn, qwen) = load(QWEN05);
    for prompt in test_prompts(qwen) {
        let out = switched(qwen, qwen, &prompt, f64::NEG_INFINITY);
        assert_eq!(out.tokens, plain_greedy(qwen, &prompt));
        assert!(out.from_large.iter().all(|&l| l));
        assert_eq!(out.stats.large_share(), 1.0);
        // The prompt once, then one token per step (the one the large model chose).
        assert_eq!(
            out.stats.large_computed,
            prompt.len() + out.tokens.len() - 1
        );
    }
}

#[test]
fn mid_threshold_mixes_the_models_and_reports_the_share_it_records() {
    let (_turn, qwen) = load(QWEN05);
    let mut mixed = 0;
    for prompt in test_prompts(qwen) {
        // The median of the small model's own entropies on this prompt, so some steps
        // fall on each side.
        let mut entropies = Vec::new();
        let config = SwitchingConfig {
            threshold: f64::INFINITY,
            window: 1,
        };
        let mut probe = EntropySwitching::new(qwen, qwen, N_CTX, config).expect("session");
        probe
            .generate(&prompt, &params(), |t| {
                entropies.push(t.small_entropy);
                ControlFlow::Continue(())
            })
            .expect("generates");
        entropies.sort_by(f64::total_cmp);
        let median = entropies[entropies.len() / 2];

        let mut events = Vec::new();
        let config = SwitchingConfig {
            threshold: median,
            window: 1,
        };
        let mut ead = EntropySwitching::new(qwen, qwen, N_CTX, config).expect("session");
        let out = ead
            .generate(&prompt, &params(), |t| {
                events.push(t.clone());
                ControlFlow::Continue(())
            })
            .expect("generates");
        let recorded = out.from_large.iter().filter(|&&l| l).count();
        assert_eq!(out.stats.large_tokens, recorded);
        assert_eq!(
            out.stats.large_share(),
            recorded as f64 / out.tokens.len() as f64
        );
        assert_eq!(
            events.iter().map(|e| e.from_large).collect::<Vec<_>>(),
            out.from_large
        );
        for e in &events {
            assert_eq!(e.from_large, e.rolling_entropy > median, "{e:?}");
        }
        if recorded > 0 && recorded < out.tokens.len() {
            mixed += 1;
        }
        // Both "models" are one model: switching must not change the greedy output.
        assert_eq!(out.tokens, plain_greedy(qwen, &prompt));
    }
    assert!(mixed > 0, "no prompt mixed the two models");
}

#[test]
fn models_with_different_tokenizers_are_refused() {
    let (turn, qwen) = load(QWEN05);
    drop(turn);
    let (_turn, smol) = load(SMOLLM2);
    let err = match EntropySwitching::new(smol, qwen, N_CTX, SwitchingConfig::default()) {
        Ok(_) => panic!("SmolLM2 and Qwen share no tokenizer"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("one tokenizer"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn invalid_settings_are_errors() {
    let (_turn, qwen) = load(QWEN05);
    for config in [
        SwitchingConfig {
            threshold: f64::NAN,
            window: 4,
        },
        SwitchingConfig {
            threshold: 1.0,
            window: 0,
        },
    ] {
        assert!(EntropySwitching::new(qwen, qwen, N_CTX, config).is_err());
    }
}
