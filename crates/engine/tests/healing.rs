//! Token healing on the real SmolLM2-135M: the output always starts with the removed
//! prompt text, a prompt cut mid-word continues the word, a prompt ending at a word
//! boundary continues as plain decoding does, and bad input is an error.

mod common;

use std::ops::ControlFlow;

use common::smollm2;
use engine::healing::{generate_healed, Healer};
use engine::{EngineError, GenerationParams, SamplerConfig, Session};

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    }
}

#[test]
fn healed_output_starts_with_the_removed_text() {
    let m = smollm2();
    let healer = Healer::new(&m);
    let prompts = [
        "The quick brown fox jumps over the la",
        "def hello_wor",
        "import numpy as n",
        "The capital of France is",
        "x",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        for back_up in [1, 2] {
            let plan = healer.plan_text(prompt, back_up).unwrap();
            assert!(!plan.removed.is_empty(), "{prompt:?}");
            assert!(prompt.as_bytes().ends_with(&plan.removed), "{prompt:?}");
            for seed in [None, Some(i as u64)] {
                let mut p = params(8);
                if let Some(s) = seed {
                    p.sampler = SamplerConfig {
                        temperature: 1.0,
                        seed: s,
                        ..SamplerConfig::default()
                    };
                }
                let mut session = Session::new(&m, 512).unwrap();
                let g = healer
                    .generate(&mut session, &plan, &p, |_| ControlFlow::Continue(()))
                    .unwrap();
                assert!(
                    g.generation.text.as_bytes().starts_with(&plan.removed),
                    "{prompt:?} back-up {back_up} seed {seed:?}: {:?}",
                    g.generation.text
                );
                assert!(g.continuation().is_some());
                assert_eq!(
                    g.generation.tokens[..g.healing_tokens.len()],
                    g.healing_tokens[..]
                );
            }
        }
    }
}

#[test]
fn a_word_cut_in_the_middle_is_completed() {
    let m = smollm2();
    let mut session = Session::new(&m, 512).unwrap();
    let prompt = "The quick brown fox jumps over the la";
    let g = generate_healed(&mut session, prompt, 1, &params(6), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let rest = g.continuation().unwrap();
    // The word goes on ("lazy"), rather than restarting after "la".
    let word: String = format!("la{rest}")
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect();
    assert_eq!(word, "lazy", "continuation {rest:?}");
}

#[test]
fn a_prompt_ending_at_a_word_boundary_continues_as_plain_decoding() {
    let m = smollm2();
    let prompt = "The capital of France is";
    let mut session = Session::new(&m, 512).unwrap();
    let plain_ids = m.tokenizer.encode_prompt(prompt).unwrap();
    let plain = session
        .generate(&plain_ids, &params(6), |_| ControlFlow::Continue(()))
        .unwrap();
    let mut session = Session::new(&m, 512).unwrap();
    let healed = generate_healed(&mut session, prompt, 1, &params(7), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    // The model re-chooses " is" and then says what it says without healing.
    assert_eq!(healed.healing_tokens, vec![*plain_ids.last().unwrap()]);
    assert_eq!(healed.continuation().unwrap(), plain.text);
}

#[test]
fn bad_input_is_an_error() {
    let m = smollm2();
    let healer = Healer::new(&m);
    assert!(matches!(healer.plan(&[], 1), Err(EngineError::EmptyPrompt)));
    assert!(matches!(
        healer.plan_text("", 1),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(healer.plan(&[u32::MAX], 1).is_err());
    let mut session = Session::new(&m, 512).unwrap();
    let r = generate_healed(&mut session, "", 1, &params(4), |_| {
        ControlFlow::Continue(())
    });
    assert!(r.is_err());
    // Backing up nothing is plain generation.
    let plan = healer.plan_text("Hello", 0).unwrap();
    assert!(plan.removed.is_empty());
    let g = healer
        .generate(&mut session, &plan, &params(3), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(g.healing_tokens.is_empty());
    // Forced tokens cannot be combined with healing.
    let plan = healer.plan_text("Hello wor", 1).unwrap();
    let forced = GenerationParams {
        forced: vec![1],
        ..params(3)
    };
    assert!(healer
        .generate(&mut session, &plan, &forced, |_| ControlFlow::Continue(()))
        .is_err());
}
