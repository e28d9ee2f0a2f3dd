//! Uncertainty-guided lookahead (AdaDec) on the real SmolLM2-135M: it never pauses
//! above every entropy and is then plain greedy decoding; when it pauses, each choice is
//! the candidate whose greedy continuation is most likely (checked against an
//! independent computation with fresh sessions), its cost is what the settings say,
//! and the rolled-back cache leaves the following text exactly as a fresh decode of
//! the same tokens would compute it.

mod common;

use std::ops::ControlFlow;

use engine::{GenerationParams, LookaheadConfig, Session, TokenEvent};
use model::LoadedModel;
use sample::{argmax, entropy, token_stats, top_k_logprobs};

const PROMPT: &str = "The most surprising thing about the ocean is";

fn params(lookahead: Option<LookaheadConfig>, max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        stop_at_eog: false,
        lookahead,
        ..GenerationParams::default()
    }
}

fn run(m: &LoadedModel, p: &GenerationParams) -> (engine::Generation, Vec<TokenEvent>) {
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut s = Session::new(m, 256).unwrap();
    let mut events = Vec::new();
    let g = s
        .generate(&prompt, p, |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    (g, events)
}

/// Logits after `ids`, fed one token at a time (the decode path's numerics).
fn logits_after(m: &LoadedModel, prompt: &[u32], ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(m, 256).unwrap();
    s.prefill(prompt).unwrap();
    for &t in ids {
        s.prefill(&[t]).unwrap();
    }
    s.logits().unwrap().to_vec()
}

#[test]
fn lookahead_is_greedy_when_it_never_pauses_and_exact_when_it_does() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    let n = 16;
    let (greedy, _) = run(&m, &params(None, n));
    let never = LookaheadConfig {
        entropy_threshold: 1e9,
        top_k: 3,
        depth: 4,
    };
    let (same, _) = run(&m, &params(Some(never), n));
    assert_eq!(same.tokens, greedy.tokens);
    assert_eq!(same.stats.lookahead.pauses, 0);
    assert_eq!(same.stats.lookahead.forwards, 0);

    // Pause at every step above 1 nat.
    let la = LookaheadConfig {
        entropy_threshold: 1.0,
        top_k: 3,
        depth: 3,
    };
    let (g, events) = run(&m, &params(Some(la.clone()), n));
    let st = g.stats.lookahead;
    assert!(st.pauses > 0, "no step above 1 nat in {n} tokens");
    assert_eq!(st.forwards, st.pauses * la.top_k * (la.depth - 1));

    // Replay every step with fresh sessions: pauses happen exactly where the entropy
    // exceeds the threshold, and each choice maximises the candidate's sequence
    // log-probability (candidate + depth - 1 greedy tokens).
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut pauses = 0;
    let mut changed = 0;
    for (i, e) in events.iter().enumerate() {
        let before = logits_after(&m, &prompt, &g.tokens[..i]);
        if entropy(&before) <= la.entropy_threshold {
            assert_eq!(e.id, argmax(&before), "step {i}: greedy where confident");
            continue;
        }
        pauses += 1;
        let mut best = (u32::MAX, f64::NEG_INFINITY);
        for (c, lp) in top_k_logprobs(&before, la.top_k) {
            let mut seq = g.tokens[..i].to_vec();
            seq.push(c);
            let mut score = f64::from(lp);
            for _ in 1..la.depth {
                let l = logits_after(&m, &prompt, &seq);
                let next = argmax(&l);
                score += f64::from(token_stats(&l, next).logprob);
                seq.push(next);
            }
            if score > best.1 {
                best = (c, score);
            }
        }
        assert_eq!(e.id, best.0, "step {i}: the lookahead's choice");
        if e.id != argmax(&before) {
            changed += 1;
        }
        // The event reports the model's view of the chosen token, not the lookahead's.
        assert_eq!(e.logprob, token_stats(&before, e.id).logprob);
    }
    assert_eq!(pauses, st.pauses);
    assert_eq!(changed, st.changed);
}
