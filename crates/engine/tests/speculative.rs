//! Speculative decoding against real models: for every drafter, greedy output is
//! token for token (and event for event) that of plain greedy decoding on 20-22 real
//! prompts for SmolLM2-135M (22 prompts, 24 tokens each), Gemma-3-270M (22, 16) and
//! Qwen2.5-Coder-0.5B (20, 16; the slowest model, so kept short); after rejected
//! branches the KV cache is that of plain decoding (the next step's logits are
//! bit-identical); stop strings, a full context and invalid settings behave as in
//! `Session::generate`.
//!
//! Exactness: every forward row is computed independently of the others (the batched
//! matrix kernels are bit-identical to the single-row ones, and a masked slot adds an
//! exact 0 to the softmax sum and is skipped in the value sum), so a tree verified
//! in one pass gives the same bits as decoding its accepted path token by token. The
//! tests therefore compare logits exactly.

mod common;

use common::{load, prompts, GEMMA3, QWEN05};

use std::ops::ControlFlow;
use std::time::Instant;

use engine::{
    EngineError, GenerationParams, Session, SpeculativeConfig, SpeculativeMethod, Speculator,
    StopReason, TokenEvent,
};
use sample::SamplerConfig;

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    }
}

fn plain(
    s: &mut Session<'_>,
    prompt: &[u32],
    p: &GenerationParams,
) -> (engine::Generation, Vec<TokenEvent>) {
    let mut events = Vec::new();
    let g = s
        .generate(prompt, p, |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        })
        .expect("plain generation");
    (g, events)
}

fn speculative(
    s: &mut Session<'_>,
    prompt: &[u32],
    p: &GenerationParams,
    spec: &mut Speculator,
) -> (engine::SpeculativeGeneration, Vec<TokenEvent>) {
    let mut events = Vec::new();
    let g = s
        .generate_speculative(prompt, p, spec, |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        })
        .expect("speculative generation");
    (g, events)
}

/// A non-adaptive config, so every step drafts and trees get verified and rejected.
fn eager(method: SpeculativeMethod) -> SpeculativeConfig {
    SpeculativeConfig {
        adaptive: false,
        max_draft: 6,
        ..SpeculativeConfig::new(method)
    }
}

/// Plain greedy decoding against both eager drafters on the first `n_prompts` prompts,
/// and against the default (adaptive) recycle drafter on every fourth when `adaptive`.
fn check_model(
    file: &'static str,
    qwen: bool,
    max_tokens: usize,
    n_prompts: usize,
    adaptive: bool,
) {
    let (_turn, m) = load(file);
    let start = Instant::now();
    let p = params(max_tokens);
    let mut specs: Vec<Speculator> = SpeculativeMethod::MODEL_FREE
        .iter()
        .map(|&method| Speculator::new(&eager(method)).unwrap())
        .collect();
    let mut adaptive_spec =
        Speculator::new(&SpeculativeConfig::new(SpeculativeMethod::Recycle)).unwrap();
    let mut totals = vec![(0usize, 0usize, 0usize); specs.len()];
    for (i, text) in prompts(qwen).iter().take(n_prompts).enumerate() {
        let ids = m.tokenizer.encode_prompt(text).unwrap();
        let mut s = Session::new(m, 1024).unwrap();
        let (want, want_events) = plain(&mut s, &ids, &p);
        let mut check = |spec: &mut Speculator| {
            let (got, events) = speculative(&mut s, &ids, &p, spec);
            let name = spec.method();
            assert_eq!(
                got.generation.tokens, want.tokens,
                "{file} prompt {i} {name}"
            );
            assert_eq!(got.generation.text, want.text, "{file} prompt {i} {name}");
            assert_eq!(
                got.generation.stats.stop_reason, want.stats.stop_reason,
                "{file} prompt {i} {name}"
            );
            assert_eq!(events, want_events, "{file} prompt {i} {name}: events");
            assert_eq!(s.tokens().len(), ids.len() + want.tokens.len() - 1);
            got.spec
        };
        for (spec, t) in specs.iter_mut().zip(&mut totals) {
            let st = check(spec);
            t.0 += st.steps;
            t.1 += st.drafted;
            t.2 += st.accepted;
        }
        if adaptive && i % 4 == 0 {
            check(&mut adaptive_spec);
        }
    }
    eprintln!("{file}: {:.1} s", start.elapsed().as_secs_f64());
    for (spec, (steps, drafted, accepted)) in specs.iter().zip(totals) {
        eprintln!(
            "{file} {}: {steps} steps, {drafted} drafted, {accepted} accepted",
            spec.method()
        );
        assert!(
            accepted > 0,
            "{file} {}: nothing was ever accepted",
            spec.method()
        );
        assert!(
            drafted > accepted,
            "{file} {}: no branch was rejected",
            spec.method()
        );
    }
}

#[test]
fn greedy_output_is_identical_smollm2() {
    check_model(common::SMOLLM2, false, 24, 22, true);
}

#[test]
fn greedy_output_is_identical_gemma3() {
    check_model(GEMMA3, false, 16, 22, true);
}

#[test]
fn greedy_output_is_identical_qwen05() {
    check_model(QWEN05, true, 16, 20, false);
}

/// After trees with rejected branches, the cache must be exactly that of plain
/// decoding: feeding the same next token to both sessions gives the same logits.
#[test]
fn kv_cache_after_rejected_branches_equals_plain_decoding() {
    let (_turn, m) = load(common::SMOLLM2);
    let text = prompts(false)[8].clone(); // a code prompt: long accepted runs and misses
    let ids = m.tokenizer.encode_prompt(&text).unwrap();
    let p = GenerationParams {
        stop_at_eog: false,
        ..params(40)
    };
    for method in SpeculativeMethod::MODEL_FREE {
        let mut spec = Speculator::new(&eager(method)).unwrap();
        let mut a = Session::new(m, 512).unwrap();
        let (g, _) = speculative(&mut a, &ids, &p, &mut spec);
        assert!(
            g.spec.drafted > g.spec.accepted && g.spec.accepted > 0,
            "{method}: the run must accept some drafts and reject others ({:?})",
            g.spec
        );
        let mut b = Session::new(m, 512).unwrap();
        let (want, _) = plain(&mut b, &ids, &p);
        assert_eq!(g.generation.tokens, want.tokens);
        assert_eq!(a.tokens(), b.tokens());
        assert_eq!(
            a.logits(),
            b.logits(),
            "{method}: logits after the last token"
        );
        // The next step reads every cached key and value.
        let last = *want.tokens.last().unwrap();
        let la = a.prefill(&[last]).unwrap().to_vec();
        let lb = b.prefill(&[last]).unwrap().to_vec();
        assert_eq!(la, lb, "{method}: next-step logits differ");
        assert_eq!(a.state().cache.positions(), b.state().cache.positions());
    }
}

#[test]
fn stop_strings_context_limits_and_cancellation_match_plain_decoding() {
    let (_turn, m) = load(common::SMOLLM2);
    let text = prompts(false)[13].clone(); // GPL text: lookup drafts a lot
    let ids = m.tokenizer.encode_prompt(&text).unwrap();
    let n_ctx_full = ids.len() + 10;
    let cases: Vec<(usize, GenerationParams)> = vec![
        (
            1024,
            GenerationParams {
                stop: vec![" the".into(), "s,".into()],
                ..params(40)
            },
        ),
        (n_ctx_full, params(40)),
        (1024, params(1)),
        (1024, params(0)),
    ];
    for (n_ctx, p) in cases {
        for method in SpeculativeMethod::MODEL_FREE {
            let mut spec = Speculator::new(&eager(method)).unwrap();
            let mut a = Session::new(m, n_ctx).unwrap();
            let mut b = Session::new(m, n_ctx).unwrap();
            let (want, want_events) = plain(&mut b, &ids, &p);
            let (got, events) = speculative(&mut a, &ids, &p, &mut spec);
            assert_eq!(got.generation.tokens, want.tokens, "{method} n_ctx {n_ctx}");
            assert_eq!(got.generation.text, want.text, "{method}");
            assert_eq!(got.generation.stats.stop_reason, want.stats.stop_reason);
            assert_eq!(events, want_events);
            assert_eq!(a.tokens(), b.tokens());
            assert_eq!(a.logits(), b.logits());
        }
    }
    // Cancelling from the callback stops at the same token.
    let p = params(30);
    let mut spec = Speculator::new(&eager(SpeculativeMethod::Lookup)).unwrap();
    let mut a = Session::new(m, 1024).unwrap();
    let g = a
        .generate_speculative(&ids, &p, &mut spec, |e| {
            if e.index == 6 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(g.generation.tokens.len(), 7);
    assert_eq!(g.generation.stats.stop_reason, StopReason::Cancelled);
    assert_eq!(a.tokens().len(), ids.len() + 6);
}

#[test]
fn settings_that_do_not_combine_are_refused() {
    let (_turn, m) = load(common::SMOLLM2);
    let ids = m.tokenizer.encode_prompt("Hello").unwrap();
    let mut spec = Speculator::new(&SpeculativeConfig::new(SpeculativeMethod::Lookup)).unwrap();
    let mut s = Session::new(m, 64).unwrap();
    let forced = GenerationParams {
        forced: vec![42],
        ..params(4)
    };
    let e = s
        .generate_speculative(&ids, &forced, &mut spec, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    assert!(!e.to_string().contains('\n'));
    let bad = SpeculativeConfig {
        cost_per_token: Some(f64::NAN),
        ..SpeculativeConfig::new(SpeculativeMethod::Recycle)
    };
    assert!(Speculator::new(&bad).is_err());
    assert!("medusa".parse::<SpeculativeMethod>().is_err());
    assert_eq!(
        "recycle".parse::<SpeculativeMethod>().unwrap(),
        SpeculativeMethod::Recycle
    );
}

/// Sampling (temperature, top-k/top-p, a repeat penalty, seeds; Gumbel-max with stage
/// reports on one prompt): speculative generation, verified by the sampler itself,
/// gives exactly the tokens and events of plain generation with the same seed.
#[test]
fn sampled_output_is_identical_smollm2() {
    let (_turn, m) = load(common::SMOLLM2);
    let mut specs: Vec<Speculator> = SpeculativeMethod::MODEL_FREE
        .iter()
        .map(|&method| Speculator::new(&eager(method)).unwrap())
        .collect();
    let mut accepted = vec![0usize; specs.len()];
    for (i, text) in prompts(false).iter().take(8).enumerate() {
        let ids = m.tokenizer.encode_prompt(text).unwrap();
        let p = GenerationParams {
            sampler: SamplerConfig {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                repeat_penalty: 1.1,
                seed: 1000 + i as u64,
                ..SamplerConfig::default()
            },
            gumbel_max: i == 3,
            report_stages: i == 3,
            ..params(24)
        };
        let mut s = Session::new(m, 1024).unwrap();
        let (want, want_events) = plain(&mut s, &ids, &p);
        for (spec, acc) in specs.iter_mut().zip(&mut accepted) {
            let (got, events) = speculative(&mut s, &ids, &p, spec);
            let name = spec.method();
            assert_eq!(got.generation.tokens, want.tokens, "prompt {i} {name}");
            assert_eq!(events, want_events, "prompt {i} {name}: events");
            *acc += got.spec.accepted;
        }
    }
    for (spec, acc) in specs.iter().zip(&accepted) {
        eprintln!("sampled {}: {acc} drafts accepted", spec.method());
    }
    assert!(
        accepted.iter().any(|&a| a > 0),
        "some drafts accepted while sampling"
    );
}
