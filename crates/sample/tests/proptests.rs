//! Property tests: arbitrary logits (NaN and infinities included) and
//! arbitrary, possibly invalid, configs never panic, and results are sane.

use proptest::prelude::*;
use sample::{
    argmax, entropy, log_softmax, token_stats, top_k_logprobs, SampleError, Sampler, SamplerConfig,
};

fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -30.0f32..30.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => any::<f32>(),
        1 => prop_oneof![Just(f32::MAX), Just(f32::MIN), Just(0.0), Just(-0.0)],
    ]
}

fn weird_f32(range: std::ops::Range<f32>) -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => range,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(1.0f32),
    ]
}

fn config() -> impl Strategy<Value = SamplerConfig> {
    let base = (
        weird_f32(-1.0..5.0),
        prop_oneof![Just(0usize), 1usize..8, Just(usize::MAX)],
        weird_f32(-0.5..1.5),
        weird_f32(-0.5..1.5),
        any::<u64>(),
        weird_f32(-1.0..4.0),
        prop_oneof![Just(0usize), 1usize..8, Just(usize::MAX)],
    );
    let more = (
        weird_f32(-0.5..1.5),                                          // typical_p
        weird_f32(-1.0..3.0),                                          // top_n_sigma
        weird_f32(-0.1..0.5),                                          // epsilon
        weird_f32(-0.1..0.5),                                          // eta
        weird_f32(-0.5..1.5),                                          // xtc_probability
        weird_f32(-0.1..0.7),                                          // xtc_threshold
        0u8..4,                                                        // mirostat
        weird_f32(-1.0..8.0),                                          // mirostat_tau
        weird_f32(-0.5..1.0),                                          // dynatemp_range
        weird_f32(-1.0..3.0),                                          // dry_multiplier
        prop::collection::vec((0u32..50, weird_f32(-5.0..5.0)), 0..3), // logit_bias
        prop::sample::select(vec![
            "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature",
            "epsilon;eta;temperature",
            "xtc;greedy",
            "mirostat_v2",
            "mirostat;top_k",
            "",
        ]),
    );
    (base, more).prop_map(
        |(
            (temperature, top_k, top_p, min_p, seed, repeat_penalty, repeat_last_n),
            (
                typical_p,
                top_n_sigma,
                epsilon,
                eta,
                xtc_probability,
                xtc_threshold,
                mirostat,
                mirostat_tau,
                dynatemp_range,
                dry_multiplier,
                logit_bias,
                chain,
            ),
        )| SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            repeat_penalty,
            repeat_last_n,
            typical_p,
            top_n_sigma,
            epsilon,
            eta,
            xtc_probability,
            xtc_threshold,
            mirostat,
            mirostat_tau,
            dynatemp_range,
            dry_multiplier,
            dry_sequence_breakers: vec![vec![3], vec![4, 5]],
            logit_bias,
            samplers: chain
                .split(';')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            ..SamplerConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sample_never_panics_and_picks_a_viable_token(
        logits in prop::collection::vec(logit(), 0..40),
        history in prop::collection::vec(0u32..50, 0..20),
        config in config(),
    ) {
        let valid = config.validate().is_ok();
        // A -inf logit bias may ban the only viable token.
        let bans = config.logit_bias.iter().any(|&(_, b)| b == f32::NEG_INFINITY);
        let mut s = Sampler::new(config);
        let viable = logits.iter().any(|&x| x > f32::NEG_INFINITY);
        for _ in 0..3 {
            let mut row = logits.clone();
            match s.sample(&mut row, &history) {
                Ok(id) => {
                    prop_assert!(valid);
                    prop_assert!((id as usize) < logits.len());
                    // Never a masked token (NaN or -inf), whatever the chain did.
                    prop_assert!(logits[id as usize] > f32::NEG_INFINITY);
                }
                Err(
                    SampleError::InvalidConfig { .. }
                    | SampleError::EmptyChain
                    | SampleError::StageNotInChain { .. },
                ) => prop_assert!(!valid),
                Err(SampleError::EmptyLogits) => prop_assert!(valid && logits.is_empty()),
                Err(SampleError::NoViableToken) => prop_assert!(valid && (!viable || bans)),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn greedy_sample_equals_argmax_without_penalty(
        logits in prop::collection::vec(logit(), 1..40),
        top_k in 0usize..5,
    ) {
        prop_assume!(logits.iter().any(|&x| x > f32::NEG_INFINITY));
        let mut s = Sampler::new(SamplerConfig { top_k, ..SamplerConfig::greedy() });
        prop_assert_eq!(s.sample(&mut logits.clone(), &[]), Ok(argmax(&logits)));
    }

    #[test]
    fn stats_are_consistent(
        logits in prop::collection::vec(-40.0f32..40.0, 1..60),
        k in 0usize..70,
    ) {
        let n = logits.len();
        let mut out = vec![0.0; n];
        log_softmax(&logits, &mut out);
        let total: f64 = out.iter().map(|&l| (l as f64).exp()).sum();
        prop_assert!((total - 1.0).abs() < 1e-5);

        let h = entropy(&logits);
        prop_assert!(h >= 0.0 && h as f64 <= (n as f64).ln() + 1e-5);

        let top = top_k_logprobs(&logits, k);
        prop_assert_eq!(top.len(), k.min(n));
        for w in top.windows(2) {
            prop_assert!(w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0));
        }
        for (r, &(id, lp)) in top.iter().enumerate() {
            let st = token_stats(&logits, id);
            prop_assert_eq!(st.rank, r);
            prop_assert_eq!(st.logprob, out[id as usize]);
            prop_assert_eq!(lp, out[id as usize]);
        }
        let best = argmax(&logits);
        prop_assert_eq!(token_stats(&logits, best).rank, 0);
    }

    #[test]
    fn stats_never_panic_on_weird_rows(logits in prop::collection::vec(logit(), 1..30)) {
        let mut out = vec![0.0; logits.len()];
        log_softmax(&logits, &mut out);
        let _ = entropy(&logits);
        let _ = top_k_logprobs(&logits, 5);
        let st = token_stats(&logits, (logits.len() - 1) as u32);
        prop_assert!(st.rank < logits.len());
        if logits.iter().any(|&x| x > f32::NEG_INFINITY) {
            // A distribution exists: probabilities sum to one.
            let total: f64 = out.iter().map(|&l| (l as f64).exp()).sum();
            prop_assert!((total - 1.0).abs() < 1e-5, "sum {}", total);
        }
    }
}
