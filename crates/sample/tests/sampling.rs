//! Behaviour of the sampler: distributions (chi-square), truncations,
//! determinism, penalties and edge cases.
//!
//! Every statistical test uses a fixed seed, so it is deterministic; the
//! chi-square bound makes sure the fixed seed is not merely lucky for a
//! wrong implementation. Critical values are the chi-square upper 0.1 %
//! points (alpha = 0.001) for the stated degrees of freedom.

use sample::{
    Candidates, LogitsProcessor, MinP, Penalties, SampleContext, SampleError, Sampler,
    SamplerConfig, TopP, DEFAULT_CHAIN, PROCESSOR_NAMES,
};

/// Chi-square upper critical values at alpha = 0.001, indexed by df.
const CHI2_CRIT_001: [f64; 6] = [f64::NAN, 10.828, 13.816, 16.266, 18.467, 20.515];

const N: usize = 20_000;

fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let w: Vec<f64> = logits
        .iter()
        .map(|&x| ((x as f64 - max) / temperature).exp())
        .collect();
    let z: f64 = w.iter().sum();
    w.into_iter().map(|x| x / z).collect()
}

/// Probabilities restricted to `keep` and renormalised.
fn restrict(p: &[f64], keep: &[usize]) -> Vec<f64> {
    let z: f64 = keep.iter().map(|&i| p[i]).sum();
    (0..p.len())
        .map(|i| if keep.contains(&i) { p[i] / z } else { 0.0 })
        .collect()
}

fn counts(config: SamplerConfig, logits: &[f32], n: usize) -> Vec<usize> {
    let mut s = Sampler::new(config);
    let mut c = vec![0; logits.len()];
    let mut row = logits.to_vec();
    for _ in 0..n {
        row.copy_from_slice(logits);
        let t = s.sample(&mut row, &[]).expect("sample");
        c[t as usize] += 1;
    }
    c
}

/// Pearson's statistic; categories with expected probability 0 must be
/// empty (a single draw there is an outright failure).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let mut chi2 = 0.0;
    for (&o, &p) in counts.iter().zip(probs) {
        if p == 0.0 {
            assert_eq!(o, 0, "drew a token of probability 0");
            continue;
        }
        let e = p * n as f64;
        chi2 += (o as f64 - e).powi(2) / e;
    }
    chi2
}

fn df(probs: &[f64]) -> usize {
    probs.iter().filter(|&&p| p > 0.0).count() - 1
}

const LOGITS: [f32; 5] = [1.0, 2.0, 0.5, -1.0, 1.5];

fn cfg() -> SamplerConfig {
    SamplerConfig {
        seed: 1234,
        ..SamplerConfig::default()
    }
}

#[test]
fn plain_sampling_matches_softmax() {
    let p = softmax(&LOGITS, 1.0);
    let c = counts(cfg(), &LOGITS, N);
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[4], "chi2 = {chi2}, counts {c:?}");
}

#[test]
fn other_seeds_also_match_softmax() {
    // Guard against one lucky seed: five seeds must all pass.
    let p = softmax(&LOGITS, 1.0);
    for seed in [0, 1, 99, 0xdead_beef, u64::MAX] {
        let c = counts(
            SamplerConfig {
                seed,
                ..SamplerConfig::default()
            },
            &LOGITS,
            N,
        );
        let chi2 = chi_square(&c, &p);
        assert!(chi2 < CHI2_CRIT_001[4], "seed {seed}: chi2 = {chi2}");
    }
}

#[test]
fn top_k_two_keeps_the_two_best_in_ratio() {
    let config = SamplerConfig { top_k: 2, ..cfg() };
    let c = counts(config, &LOGITS, N);
    // Best two are ids 1 (2.0) and 4 (1.5).
    assert!(c[0] == 0 && c[2] == 0 && c[3] == 0, "{c:?}");
    let p = restrict(&softmax(&LOGITS, 1.0), &[1, 4]);
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[df(&p)], "chi2 = {chi2}, counts {c:?}");
}

#[test]
fn top_k_larger_than_vocab_keeps_everything() {
    let config = SamplerConfig {
        top_k: 1000,
        ..cfg()
    };
    let c = counts(config, &LOGITS, N);
    let chi2 = chi_square(&c, &softmax(&LOGITS, 1.0));
    assert!(chi2 < CHI2_CRIT_001[4], "chi2 = {chi2}");
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

const PROBS: [f64; 5] = [0.4, 0.25, 0.15, 0.12, 0.08];

fn kept_ids(p: &mut dyn LogitsProcessor, logits: &[f32]) -> Vec<u32> {
    let mut c = Candidates::new();
    c.fill(logits);
    p.process(&mut c, &SampleContext::new(&[]));
    let mut ids: Vec<u32> = c.as_slice().iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn top_p_keeps_smallest_set_reaching_p() {
    let logits = logits_of(&PROBS);
    // Cumulative: 0.40, 0.65, 0.80, 0.92, 1.00.
    let cases: [(f32, &[u32]); 7] = [
        (0.1, &[0]),
        (0.39, &[0]),
        (0.41, &[0, 1]),
        (0.64, &[0, 1]),
        (0.66, &[0, 1, 2]),
        (0.9, &[0, 1, 2, 3]),
        (0.95, &[0, 1, 2, 3, 4]),
    ];
    for (p, want) in cases {
        assert_eq!(kept_ids(&mut TopP::new(p), &logits), want, "top_p = {p}");
        // The defining property: the kept set reaches p, and dropping its
        // least likely member would not.
        let mass: f64 = want.iter().map(|&i| PROBS[i as usize]).sum();
        let smaller = mass - PROBS[*want.last().unwrap() as usize];
        assert!(mass >= p as f64 && smaller < p as f64);
    }
    // Order of the input does not matter (ids shuffled by value).
    let shuffled = [logits[3], logits[0], logits[4], logits[2], logits[1]];
    assert_eq!(kept_ids(&mut TopP::new(0.66), &shuffled), vec![1, 3, 4]);
}

#[test]
fn top_p_sampling_draws_from_the_nucleus() {
    let logits = logits_of(&PROBS);
    let config = SamplerConfig {
        top_p: 0.7,
        ..cfg()
    };
    let c = counts(config, &logits, N);
    let p = restrict(&PROBS, &[0, 1, 2]);
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[df(&p)], "chi2 = {chi2}, counts {c:?}");
}

#[test]
fn min_p_removes_tokens_below_fraction_of_max() {
    let logits = logits_of(&PROBS);
    // p_max = 0.4. min_p 0.25 -> threshold 0.10 drops only 0.08.
    assert_eq!(kept_ids(&mut MinP::new(0.25), &logits), vec![0, 1, 2, 3]);
    // min_p 0.35 -> threshold 0.14 keeps 0.4, 0.25, 0.15.
    assert_eq!(kept_ids(&mut MinP::new(0.35), &logits), vec![0, 1, 2]);
    // min_p 0.9 -> only the best.
    assert_eq!(kept_ids(&mut MinP::new(0.9), &logits), vec![0]);
    assert_eq!(kept_ids(&mut MinP::new(0.0), &logits), vec![0, 1, 2, 3, 4]);

    let config = SamplerConfig {
        min_p: 0.35,
        ..cfg()
    };
    let c = counts(config, &logits, N);
    let p = restrict(&PROBS, &[0, 1, 2]);
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[df(&p)], "chi2 = {chi2}, counts {c:?}");
}

#[test]
fn temperature_half_sharpens_like_softmax_of_doubled_logits() {
    let config = SamplerConfig {
        temperature: 0.5,
        ..cfg()
    };
    let c = counts(config, &LOGITS, N);
    let sharp = softmax(&LOGITS, 0.5);
    let chi2 = chi_square(&c, &sharp);
    assert!(chi2 < CHI2_CRIT_001[4], "chi2 = {chi2}, counts {c:?}");
    // Negative control: the same draws are far from the unsharpened
    // distribution, so the test can tell the two apart.
    let chi2_plain = chi_square(&c, &softmax(&LOGITS, 1.0));
    assert!(chi2_plain > 10.0 * CHI2_CRIT_001[4], "chi2 = {chi2_plain}");
    // And the best token's share grows.
    assert!(c[1] as f64 / N as f64 > softmax(&LOGITS, 1.0)[1] + 0.1);
}

#[test]
fn temperature_above_one_flattens() {
    let config = SamplerConfig {
        temperature: 2.0,
        ..cfg()
    };
    let c = counts(config, &LOGITS, N);
    let chi2 = chi_square(&c, &softmax(&LOGITS, 2.0));
    assert!(chi2 < CHI2_CRIT_001[4], "chi2 = {chi2}");
}

#[test]
fn truncation_happens_before_temperature() {
    // top_p = 0.7 on the model's probabilities keeps {0, 1, 2}; with the
    // temperature applied first, the sharpened distribution would reach 0.7
    // with {0, 1} alone. Drawing token 2 proves the llama.cpp order.
    let logits = logits_of(&PROBS);
    let config = SamplerConfig {
        top_p: 0.7,
        temperature: 0.5,
        ..cfg()
    };
    let c = counts(config, &logits, N);
    assert!(c[2] > 0 && c[3] == 0 && c[4] == 0, "{c:?}");
    let sharp = softmax(&logits[..3], 0.5);
    let p = [sharp[0], sharp[1], sharp[2], 0.0, 0.0];
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[2], "chi2 = {chi2}");
}

fn sequence(seed: u64, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(SamplerConfig {
        seed,
        ..SamplerConfig::default()
    });
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    (0..n)
        .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
        .collect()
}

#[test]
fn same_seed_same_sequence_different_seed_different_sequence() {
    let a = sequence(42, 200);
    assert_eq!(a, sequence(42, 200));
    let b = sequence(43, 200);
    assert_ne!(a, b);
    // Not a shifted copy either: most positions differ.
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(same < 100, "{same} of 200 positions agree");
}

#[test]
fn reset_replays_the_sequence() {
    let mut s = Sampler::new(SamplerConfig {
        seed: 5,
        ..SamplerConfig::default()
    });
    let logits = [0.0f32; 30];
    let first: Vec<u32> = (0..50)
        .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
        .collect();
    s.reset();
    let again: Vec<u32> = (0..50)
        .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
        .collect();
    assert_eq!(first, again);
}

#[test]
fn greedy_is_argmax_with_lowest_index_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    assert!(SamplerConfig::greedy().is_greedy());
    assert_eq!(s.sample(&mut LOGITS.clone(), &[]), Ok(1));
    assert_eq!(s.sample(&mut [0.5, 3.0, 1.0, 3.0], &[]), Ok(1));
    // Greedy ignores truncation settings and the seed.
    for seed in 0..5 {
        let mut s = Sampler::new(SamplerConfig {
            top_k: 3,
            top_p: 0.1,
            min_p: 0.5,
            seed,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&mut LOGITS.clone(), &[]), Ok(1));
    }
}

#[test]
fn repetition_penalty_follows_llama_cpp() {
    let mut p = Penalties::repetition(2.0, 64);
    let mut c = Candidates::new();
    c.fill(&[2.0, -1.0, 0.5, 3.0, 0.0]);
    // Token 0 twice: penalised once. Token 99 is outside the vocabulary.
    p.process(&mut c, &SampleContext::new(&[0, 1, 0, 4, 99]));
    let got: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
    // Positive divided, negative multiplied, zero stays zero, unseen untouched.
    assert_eq!(got, vec![1.0, -2.0, 0.5, 3.0, 0.0]);

    // Only the last `last_n` history tokens count.
    let mut p = Penalties::repetition(2.0, 1);
    c.fill(&[2.0, -1.0, 0.5]);
    p.process(&mut c, &SampleContext::new(&[0, 1, 2]));
    let got: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
    assert_eq!(got, vec![2.0, -1.0, 0.25]);

    // A penalty below 1 rewards repeats.
    let mut p = Penalties::repetition(0.5, 64);
    c.fill(&[2.0, -1.0]);
    p.process(&mut c, &SampleContext::new(&[0, 1]));
    let got: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
    assert_eq!(got, vec![4.0, -0.5]);
}

#[test]
fn repetition_penalty_changes_greedy_choice() {
    let config = SamplerConfig {
        repeat_penalty: 2.0,
        ..SamplerConfig::greedy()
    };
    let mut s = Sampler::new(config.clone());
    // 3.0 / 2 = 1.5 < 2.0.
    assert_eq!(s.sample(&mut [3.0, 2.0], &[0]), Ok(1));
    assert_eq!(s.sample(&mut [3.0, 2.0], &[]), Ok(0));
    // repeat_last_n = 0 turns it off.
    let mut s = Sampler::new(SamplerConfig {
        repeat_last_n: 0,
        ..config
    });
    assert_eq!(s.sample(&mut [3.0, 2.0], &[0]), Ok(0));
}

#[test]
fn repetition_penalty_applies_when_sampling() {
    // [2, 2] with token 0 penalised by 2 -> [1, 2]: p0 = 1 / (1 + e).
    let config = SamplerConfig {
        repeat_penalty: 2.0,
        ..cfg()
    };
    let mut s = Sampler::new(config);
    let mut c = [0usize; 2];
    for _ in 0..N {
        c[s.sample(&mut [2.0, 2.0], &[0]).unwrap() as usize] += 1;
    }
    let p = softmax(&[1.0, 2.0], 1.0);
    let chi2 = chi_square(&c, &p);
    assert!(chi2 < CHI2_CRIT_001[1], "chi2 = {chi2}, counts {c:?}");
}

#[test]
fn edge_cases_never_panic() {
    let mut s = Sampler::new(cfg());
    assert_eq!(s.sample(&mut [], &[]), Err(SampleError::EmptyLogits));
    let mut g = Sampler::new(SamplerConfig::greedy());
    assert_eq!(g.sample(&mut [], &[]), Err(SampleError::EmptyLogits));

    let all_masked = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
    assert_eq!(
        s.sample(&mut all_masked.clone(), &[]),
        Err(SampleError::NoViableToken)
    );
    assert_eq!(
        g.sample(&mut all_masked.clone(), &[]),
        Err(SampleError::NoViableToken)
    );

    // All -inf (or NaN) except one: always that one.
    let one = [f32::NEG_INFINITY, f32::NAN, 0.3, f32::NEG_INFINITY];
    for _ in 0..1000 {
        assert_eq!(s.sample(&mut one.clone(), &[]), Ok(2));
    }
    assert_eq!(g.sample(&mut one.clone(), &[]), Ok(2));

    // NaN is -inf, not a winner.
    assert_eq!(g.sample(&mut [f32::NAN, 1.0, f32::NAN], &[]), Ok(1));

    // +inf logits share all the mass.
    let inf = [1.0, f32::INFINITY, 5.0, f32::INFINITY];
    let mut c = [0usize; 4];
    for _ in 0..2000 {
        c[s.sample(&mut inf.clone(), &[]).unwrap() as usize] += 1;
    }
    assert!(c[0] == 0 && c[2] == 0 && c[1] > 800 && c[3] > 800, "{c:?}");
    assert_eq!(g.sample(&mut inf.clone(), &[]), Ok(1));

    // Extreme logits at a low temperature overflow to +inf; still fine.
    let mut cold = Sampler::new(SamplerConfig {
        temperature: 1e-30,
        ..cfg()
    });
    assert_eq!(
        cold.sample(&mut [f32::MAX, 0.0, f32::MAX / 2.0], &[]),
        Ok(0)
    );
}

#[test]
fn validate_rejects_bad_settings_with_clear_messages() {
    assert_eq!(SamplerConfig::default().validate(), Ok(()));
    assert_eq!(SamplerConfig::greedy().validate(), Ok(()));
    let bad = [
        (
            SamplerConfig {
                temperature: f32::NAN,
                ..cfg()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                temperature: -1.0,
                ..cfg()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                temperature: f32::INFINITY,
                ..cfg()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                top_p: 0.0,
                ..cfg()
            },
            "top_p",
        ),
        (
            SamplerConfig {
                top_p: 1.5,
                ..cfg()
            },
            "top_p",
        ),
        (
            SamplerConfig {
                top_p: f32::NAN,
                ..cfg()
            },
            "top_p",
        ),
        (
            SamplerConfig {
                min_p: 1.0,
                ..cfg()
            },
            "min_p",
        ),
        (
            SamplerConfig {
                min_p: -0.1,
                ..cfg()
            },
            "min_p",
        ),
        (
            SamplerConfig {
                repeat_penalty: 0.0,
                ..cfg()
            },
            "repeat_penalty",
        ),
        (
            SamplerConfig {
                repeat_penalty: f32::NAN,
                ..cfg()
            },
            "repeat_penalty",
        ),
    ];
    for (config, field) in bad {
        let err = config.validate().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains("expected"), "{msg}");
        // The sampler reports it instead of panicking.
        let mut s = Sampler::new(config.clone());
        // (Compared as text: a NaN value makes the errors unequal under `==`.)
        let got = s.sample(&mut [1.0, 2.0], &[]).unwrap_err();
        assert_eq!(got.to_string(), msg);
        let got = Sampler::with_chain(config, DEFAULT_CHAIN).unwrap_err();
        assert_eq!(got.to_string(), msg);
    }
}

#[test]
fn chain_by_name() {
    let s = Sampler::new(cfg());
    assert_eq!(s.processor_names(), DEFAULT_CHAIN.to_vec());
    // llama.cpp's default `--samplers`, exactly.
    assert_eq!(
        DEFAULT_CHAIN.join(";"),
        "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature"
    );
    for name in DEFAULT_CHAIN {
        assert!(PROCESSOR_NAMES.contains(name));
    }

    let err = Sampler::with_chain(cfg(), &["top_k", "beam_search"]).unwrap_err();
    assert_eq!(err, SampleError::UnknownProcessor("beam_search".into()));
    assert!(err.to_string().contains("top_p"), "{err}");

    // A chain with only top_k: the other settings are ignored.
    let config = SamplerConfig {
        top_k: 2,
        top_p: 0.01,
        ..cfg()
    };
    let mut s = Sampler::with_chain(config, &["top_k"]).unwrap();
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        seen[s.sample(&mut LOGITS.clone(), &[]).unwrap() as usize] += 1;
    }
    assert!(
        seen[1] > 0 && seen[4] > 0 && seen[0] + seen[2] + seen[3] == 0,
        "{seen:?}"
    );
}

#[test]
fn custom_processor_slots_into_the_chain() {
    /// Bans one token: the shape of a grammar mask or logit bias.
    struct Ban(u32);
    impl LogitsProcessor for Ban {
        fn name(&self) -> &'static str {
            "ban"
        }
        fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
            cands.update_ids(&[self.0], |l| *l = f32::NEG_INFINITY);
        }
    }
    let mut s = Sampler::with_processors(SamplerConfig::greedy(), vec![Box::new(Ban(1))]).unwrap();
    assert_eq!(s.sample(&mut LOGITS.clone(), &[]), Ok(4));
}
