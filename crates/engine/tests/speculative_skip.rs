//! The `skip` drafter (the target model drafting for itself with some layers skipped)
//! against real models:
//!
//! * greedy output (tokens, text, events, stop reason, cached tokens and logits
//!   afterwards) is that of plain greedy decoding on 22 real prompts for SmolLM2-135M
//!   (8 tokens each) and Gemma-3-270M (6), with eager chains (`p_min` 0, fixed budget
//!   of 4: every step drafts, many drafts are partly rejected) skipping the layers the
//!   default calibration chose (hard-coded: calibrating costs a minute or more per
//!   model). Ignored variants: Qwen2.5-Coder-0.5B on 20 prompts, and longer outputs
//!   with a calibrated adaptive drafter as well
//!   (`cargo test --release -p engine --test speculative_skip -- --ignored`);
//! * the draft leaves the target's cache as it found it: after generation the
//!   next-step logits, positions and cache size are those of plain decoding (the
//!   draft appends to the target's cache and truncates);
//! * calibration is deterministic (the same set twice) and honours its limits;
//! * invalid `--skip-layers` (a layer out of range, every layer) is a one-line error.

mod common;

use common::{load, prompts, GEMMA3, QWEN05};

use std::ops::ControlFlow;
use std::time::Instant;

use engine::speculative::skip::{calibrate, calibration_tokens};
use engine::speculative::{SkipConfig, SkipPlan};
use engine::{
    EngineError, GenerationParams, Session, SpeculativeConfig, SpeculativeMethod, Speculator,
    TokenEvent,
};

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    }
}

/// Every step drafts a chain of up to 4 tokens, however unsure the skip model is.
fn eager(layers: Vec<usize>) -> SpeculativeConfig {
    let mut c = SpeculativeConfig {
        adaptive: false,
        max_draft: 4,
        ..SpeculativeConfig::new(SpeculativeMethod::Skip)
    };
    c.draft.p_min = 0.0;
    c.skip.layers = Some(layers);
    c
}

/// The layers the default calibration chose for each model (`print_calibrated_plans`):
/// drafts that are accepted often enough, and rejected often enough, to test both.
fn calibrated_layers(file: &str) -> Vec<usize> {
    match file {
        common::SMOLLM2 => vec![3, 4, 6, 7, 14, 17],
        GEMMA3 => vec![2, 4],
        QWEN05 => vec![4, 6, 7, 12, 13],
        _ => unreachable!("a known test model"),
    }
}

fn run(
    s: &mut Session<'_>,
    prompt: &[u32],
    p: &GenerationParams,
    spec: Option<&mut Speculator>,
) -> (
    engine::Generation,
    Vec<TokenEvent>,
    Option<engine::SpeculativeStats>,
) {
    let mut events = Vec::new();
    let on = |e: &TokenEvent| {
        events.push(e.clone());
        ControlFlow::Continue(())
    };
    let (g, st) = match spec {
        Some(spec) => {
            let g = s
                .generate_speculative(prompt, p, spec, on)
                .expect("speculative generation");
            (g.generation, Some(g.spec))
        }
        None => (s.generate(prompt, p, on).expect("plain generation"), None),
    };
    (g, events, st)
}

/// Plain greedy decoding against an eager skip chain (the calibrated layers) on
/// the first `n_prompts` prompts, and against a calibrated adaptive skip drafter on
/// every `calibrated_every`-th (0: never).
fn check_model(
    file: &'static str,
    qwen: bool,
    max_tokens: usize,
    n_prompts: usize,
    calibrated_every: usize,
) {
    let (_turn, m) = load(file);
    let start = Instant::now();
    let p = GenerationParams {
        stop_at_eog: false,
        ..params(max_tokens)
    };
    let mut eager_spec = Speculator::with_skip_layers(&eager(calibrated_layers(file)), m).unwrap();
    let mut calibrated = (calibrated_every > 0).then(|| {
        Speculator::with_skip_layers(&SpeculativeConfig::new(SpeculativeMethod::Skip), m).unwrap()
    });
    if let Some(c) = &calibrated {
        eprintln!("{file}: {}", c.skip_plan().unwrap());
    }
    let (mut steps, mut drafted, mut accepted) = (0, 0, 0);
    for (i, text) in prompts(qwen).iter().take(n_prompts).enumerate() {
        let ids = m.tokenizer.encode_prompt(text).unwrap();
        // One session: the speculative runs reuse the prompt's cache.
        let mut s = Session::new(m, 512).unwrap();
        let (want, want_events, _) = run(&mut s, &ids, &p, None);
        let (want_cached, want_logits) = (s.tokens().to_vec(), s.logits().map(<[f32]>::to_vec));
        let mut specs = vec![&mut eager_spec];
        if let Some(c) = calibrated.as_mut().filter(|_| i % calibrated_every == 0) {
            specs.push(c);
        }
        for (k, spec) in specs.into_iter().enumerate() {
            let (got, events, st) = run(&mut s, &ids, &p, Some(spec));
            let what = format!("{file} prompt {i} skip #{k}");
            assert_eq!(got.tokens, want.tokens, "{what}");
            assert_eq!(got.text, want.text, "{what}");
            assert_eq!(got.stats.stop_reason, want.stats.stop_reason, "{what}");
            assert_eq!(events, want_events, "{what}: events");
            assert_eq!(s.tokens(), want_cached, "{what}: cached tokens");
            assert_eq!(
                s.logits().map(<[f32]>::to_vec),
                want_logits,
                "{what}: logits after the last token"
            );
            if k == 0 {
                let st = st.unwrap();
                steps += st.steps;
                drafted += st.drafted;
                accepted += st.accepted;
            }
        }
    }
    eprintln!(
        "{file}: {:.1} s; eager skip {:?}: {steps} steps, {drafted} drafted, {accepted} accepted",
        start.elapsed().as_secs_f64(),
        calibrated_layers(file)
    );
    assert!(accepted > 0, "{file}: nothing was ever accepted");
    assert!(drafted > accepted, "{file}: no draft was rejected");
}

#[test]
fn greedy_output_is_identical_smollm2() {
    check_model(common::SMOLLM2, false, 8, 22, 0);
}

#[test]
fn greedy_output_is_identical_gemma3() {
    check_model(GEMMA3, false, 6, 22, 0);
}

#[test]
#[ignore = "slow: Qwen2.5-Coder-0.5B on 20 prompts"]
fn greedy_output_is_identical_qwen05() {
    check_model(QWEN05, true, 12, 20, 0);
}

#[test]
#[ignore = "slow: more tokens per prompt"]
fn greedy_output_is_identical_long() {
    check_model(common::SMOLLM2, false, 48, 22, 4);
    check_model(GEMMA3, false, 32, 22, 0);
}

/// After many drafts with rejections, the next step reads every cached key and value:
/// its logits must be bit-identical to plain decoding's.
#[test]
fn target_cache_is_untouched_by_the_draft() {
    let (_turn, m) = load(common::SMOLLM2);
    let text = prompts(false)[8].clone();
    let ids = m.tokenizer.encode_prompt(&text).unwrap();
    let p = GenerationParams {
        stop_at_eog: false,
        ..params(24)
    };
    let mut spec =
        Speculator::with_skip_layers(&eager(calibrated_layers(common::SMOLLM2)), m).unwrap();
    let mut a = Session::new(m, 512).unwrap();
    let (got, _, st) = run(&mut a, &ids, &p, Some(&mut spec));
    let st = st.unwrap();
    assert!(st.drafted > st.accepted && st.accepted > 0, "{st:?}");
    assert!(st.draft_forwards >= st.drafting_steps);
    let mut b = Session::new(m, 512).unwrap();
    let (want, _, _) = run(&mut b, &ids, &p, None);
    assert_eq!(got.tokens, want.tokens);
    let last = *want.tokens.last().unwrap();
    let la = a.prefill(&[last]).unwrap().to_vec();
    let lb = b.prefill(&[last]).unwrap().to_vec();
    assert_eq!(la, lb, "next-step logits differ");
    assert_eq!(a.state().cache.positions(), b.state().cache.positions());
    assert_eq!(
        a.state().cache.memory_bytes(),
        b.state().cache.memory_bytes()
    );
}

#[test]
fn calibration_is_deterministic_and_within_its_limits() {
    let (_turn, m) = load(common::SMOLLM2);
    let n_layer = m.model.config.n_layer;
    // A short text and a small search keep this quick.
    let tokens = calibration_tokens(m).unwrap();
    let config = SkipConfig {
        max_ratio: 0.1,
        min_agreement: 0.5,
        shortlist: 1,
        max_tokens: 40,
        ..SkipConfig::default()
    };
    let t = Instant::now();
    let a = calibrate(m, &tokens, &config).unwrap();
    eprintln!("{a} [{:.1} s]", t.elapsed().as_secs_f64());
    let b = calibrate(m, &tokens, &config).unwrap();
    assert_eq!(a.skipped, b.skipped, "calibration must be deterministic");
    assert_eq!(a.agreement, b.agreement);
    assert!(a.skipped.len() <= (0.1 * n_layer as f32) as usize);
    assert_eq!(a.calibration_tokens, 40);
    assert!(a.agreement.unwrap() >= 0.5);
    assert!(!a.skipped.contains(&0) && !a.skipped.contains(&(n_layer - 1)));
    assert!(a.skipped.windows(2).all(|w| w[0] < w[1]));
    // An unreachable floor skips nothing.
    let none = calibrate(
        m,
        &tokens,
        &SkipConfig {
            max_ratio: 0.0,
            ..config
        },
    )
    .unwrap();
    assert!(none.skipped.is_empty());
    assert_eq!(none.evaluations, 0);
}

#[test]
fn invalid_skip_layers_are_refused() {
    let (_turn, m) = load(common::SMOLLM2);
    let n = m.model.config.n_layer;
    let refused = |layers: Vec<usize>| {
        let e = Speculator::with_skip_layers(&eager(layers), m)
            .err()
            .expect("refused");
        assert!(matches!(e, EngineError::Invalid(_)), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        e.to_string()
    };
    let e = refused(vec![1, n]);
    assert!(e.contains(&format!("layer {n}")), "{e}");
    let e = refused((0..n).collect());
    assert!(e.contains("all"), "{e}");
    // Duplicates are merged, the order does not matter.
    let plan = SkipPlan::given(&[5, 3, 5], n).unwrap();
    assert_eq!(plan.skipped, vec![3, 5]);
    assert_eq!(plan.layers_arg(), "3,5");
    // Without the target model there is nothing to skip.
    assert!(Speculator::new(&SpeculativeConfig::new(SpeculativeMethod::Skip)).is_err());
    // A plan made for another model is refused when generating.
    let other = SkipPlan::given(&[1], n + 1).unwrap();
    let mut spec =
        Speculator::with_skip_plan(&SpeculativeConfig::new(SpeculativeMethod::Skip), other)
            .unwrap();
    let ids = m.tokenizer.encode_prompt("Hello").unwrap();
    let mut s = Session::new(m, 64).unwrap();
    let e = s
        .generate_speculative(&ids, &params(4), &mut spec, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    assert_eq!(
        "skip".parse::<SpeculativeMethod>().unwrap(),
        SpeculativeMethod::Skip
    );
}

/// Prints the calibrated plans of the three test models (for the record).
#[test]
#[ignore = "slow: full calibration of three models"]
fn print_calibrated_plans() {
    for file in [common::SMOLLM2, GEMMA3, QWEN05] {
        let (_turn, m) = load(file);
        let plan = calibrate(m, &calibration_tokens(m).unwrap(), &SkipConfig::default()).unwrap();
        eprintln!("{file}: {plan}");
    }
}
