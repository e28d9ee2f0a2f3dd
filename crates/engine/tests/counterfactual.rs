//! Counterfactual generation with Gumbel-max noise on the real SmolLM2-135M: replaying
//! a recorded generation with its own tokens forced reproduces it exactly; editing one
//! token keeps everything before it, and the continuation after it is drawn with the
//! recorded noise of the same steps (checked against an independent Gumbel-max argmax
//! over the model's logits).

mod common;

use std::ops::ControlFlow;

use engine::{GenerationParams, SamplerConfig, Session, TokenEvent};
use model::LoadedModel;
use sample::gumbel_noise;

fn run(m: &LoadedModel, prompt: &[u32], forced: Vec<u32>) -> Vec<TokenEvent> {
    let params = GenerationParams {
        max_tokens: 20,
        stop_at_eog: false,
        gumbel_max: true,
        forced,
        // Plain temperature-1 sampling: the chain leaves the logits as they are.
        sampler: SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 21,
            ..SamplerConfig::default()
        },
        ..GenerationParams::default()
    };
    let mut s = Session::new(m, 256).unwrap();
    let mut events = Vec::new();
    s.generate(prompt, &params, |e| {
        events.push(e.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    events
}

#[test]
fn counterfactual_replay_reuses_the_noise() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    let prompt = m
        .tokenizer
        .encode_prompt("My favourite animal is the")
        .unwrap();
    let original = run(&m, &prompt, Vec::new());
    let ids: Vec<u32> = original.iter().map(|e| e.id).collect();
    for (i, e) in original.iter().enumerate() {
        let g = e.gumbel.expect("gumbel trace");
        assert_eq!((g.seed, g.step), (21, i as u64));
        assert!(!e.forced);
    }

    // The same tokens forced: the same generation.
    let same = run(&m, &prompt, ids[..6].to_vec());
    assert_eq!(same.iter().map(|e| e.id).collect::<Vec<_>>(), ids);

    // Edit step 5.
    let edit = (ids[5] + 1) % 49152;
    let mut forced = ids[..5].to_vec();
    forced.push(edit);
    let cf = run(&m, &prompt, forced.clone());
    let cf_ids: Vec<u32> = cf.iter().map(|e| e.id).collect();
    assert_eq!(cf_ids[..6], forced[..]);
    assert!(cf[..6].iter().all(|e| e.forced) && !cf[6].forced);
    // Each later token is argmax(logits + noise(seed, step, .)) after the edited prefix.
    let mut s = Session::new(&m, 256).unwrap();
    s.prefill(&prompt).unwrap();
    s.prefill(&cf_ids[..6]).unwrap();
    for (step, &id) in cf_ids.iter().enumerate().skip(6) {
        let logits = s.logits().unwrap();
        let best = (0..logits.len() as u32)
            .max_by(|&a, &b| {
                let va = f64::from(logits[a as usize]) + gumbel_noise(21, step as u64, a);
                let vb = f64::from(logits[b as usize]) + gumbel_noise(21, step as u64, b);
                va.total_cmp(&vb).then(b.cmp(&a))
            })
            .unwrap();
        assert_eq!(id, best, "step {step}");
        s.prefill(&[id]).unwrap();
    }
}
