//! Behaviour of the full sampler suite: seeded determinism for every
//! non-greedy chain, validation errors before generation, XTC's coin, DRY
//! against a naive reference, sequence-breaker construction, chain naming.

use sample::{
    dry_sequence_breakers, parse_sampler_chars, parse_sampler_list, Candidates, Dry,
    LogitsProcessor, Rng, SampleContext, SampleError, Sampler, SamplerConfig, DEFAULT_CHAIN,
    DEFAULT_DRY_SEQUENCE_BREAKERS, WHOLE_HISTORY,
};

fn row(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| (2.5 * (rng.next_f64() - 0.5) - 0.002 * i as f64) as f32)
        .collect()
}

/// Configurations covering every stochastic stage.
fn chains(seed: u64) -> Vec<(&'static str, SamplerConfig)> {
    let base = SamplerConfig {
        seed,
        ..SamplerConfig::default()
    };
    vec![
        ("default", base.clone()),
        (
            "llama.cpp CLI",
            SamplerConfig {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.05,
                ..base.clone()
            },
        ),
        (
            "typical + xtc + dynatemp",
            SamplerConfig {
                typical_p: 0.9,
                xtc_probability: 0.5,
                xtc_threshold: 0.02,
                dynatemp_range: 0.5,
                ..base.clone()
            },
        ),
        (
            "penalties + dry",
            SamplerConfig {
                repeat_penalty: 1.2,
                frequency_penalty: 0.1,
                presence_penalty: 0.2,
                dry_multiplier: 0.8,
                ..base.clone()
            },
        ),
        (
            "epsilon + eta + top_n_sigma",
            SamplerConfig {
                epsilon: 0.001,
                eta: 0.002,
                top_n_sigma: 2.0,
                samplers: parse_sampler_list("top_n_sigma;epsilon;eta;temperature").unwrap(),
                ..base.clone()
            },
        ),
        (
            "mirostat",
            SamplerConfig {
                mirostat: 1,
                ..base.clone()
            },
        ),
        (
            "mirostat v2",
            SamplerConfig {
                mirostat: 2,
                mirostat_tau: 4.0,
                ..base
            },
        ),
    ]
}

fn generate(config: SamplerConfig, n: usize) -> Vec<u32> {
    let rows: Vec<Vec<f32>> = (0..7).map(|i| row(300, i)).collect();
    let mut s = Sampler::try_new(config).unwrap();
    let mut history = vec![1, 2, 3];
    for i in 0..n {
        let t = s
            .sample(&mut rows[i % rows.len()].clone(), &history)
            .unwrap();
        history.push(t);
    }
    history.split_off(3)
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    for ((name, a), (_, b)) in chains(42).into_iter().zip(chains(43)) {
        let x = generate(a.clone(), 200);
        assert_eq!(x, generate(a, 200), "{name}: same seed must replay");
        let y = generate(b, 200);
        let same = x.iter().zip(&y).filter(|(p, q)| p == q).count();
        assert!(same < 150, "{name}: seeds 42 and 43 agree on {same} of 200");
    }
}

#[test]
fn reset_replays_every_chain() {
    for (name, config) in chains(7) {
        let rows: Vec<Vec<f32>> = (0..5).map(|i| row(200, 10 + i)).collect();
        let mut s = Sampler::new(config);
        let run = |s: &mut Sampler| -> Vec<u32> {
            let mut h = Vec::new();
            for r in &rows {
                for _ in 0..10 {
                    h.push(s.sample(&mut r.clone(), &h).unwrap());
                }
            }
            h
        };
        let first = run(&mut s);
        s.reset();
        assert_eq!(first, run(&mut s), "{name}");
    }
}

#[test]
fn invalid_settings_fail_before_generation_with_one_line_messages() {
    let d = SamplerConfig::default;
    let cases: Vec<(SamplerConfig, &str)> = vec![
        (SamplerConfig { top_p: 1.5, ..d() }, "top_p"),
        (
            SamplerConfig {
                temperature: -0.5,
                ..d()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                samplers: vec![],
                ..d()
            },
            "empty",
        ),
        (
            SamplerConfig {
                mirostat: 2,
                mirostat_tau: 0.0,
                ..d()
            },
            "mirostat_tau",
        ),
        (
            SamplerConfig {
                mirostat_tau: -1.0,
                ..d()
            },
            "mirostat_tau",
        ),
        (
            SamplerConfig {
                mirostat_lr: f32::NAN,
                ..d()
            },
            "mirostat_lr",
        ),
        (SamplerConfig { mirostat: 3, ..d() }, "mirostat"),
        (
            SamplerConfig {
                typical_p: 0.0,
                ..d()
            },
            "typical_p",
        ),
        (
            SamplerConfig {
                typical_p: 1.2,
                ..d()
            },
            "typical_p",
        ),
        (SamplerConfig { min_p: 1.0, ..d() }, "min_p"),
        (
            SamplerConfig {
                epsilon: 1.0,
                ..d()
            },
            "epsilon",
        ),
        (SamplerConfig { eta: -0.1, ..d() }, "eta"),
        (
            SamplerConfig {
                epsilon: 0.01,
                ..d()
            },
            "epsilon",
        ),
        (SamplerConfig { eta: 0.01, ..d() }, "eta"),
        (
            SamplerConfig {
                xtc_probability: 1.5,
                ..d()
            },
            "xtc_probability",
        ),
        (
            SamplerConfig {
                xtc_threshold: -0.1,
                ..d()
            },
            "xtc_threshold",
        ),
        (
            SamplerConfig {
                dynatemp_range: -1.0,
                ..d()
            },
            "dynatemp_range",
        ),
        (
            SamplerConfig {
                dynatemp_exponent: f32::INFINITY,
                ..d()
            },
            "dynatemp_exponent",
        ),
        (
            SamplerConfig {
                top_n_sigma: f32::NAN,
                ..d()
            },
            "top_n_sigma",
        ),
        (
            SamplerConfig {
                repeat_penalty: 0.0,
                ..d()
            },
            "repeat_penalty",
        ),
        (
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..d()
            },
            "frequency_penalty",
        ),
        (
            SamplerConfig {
                presence_penalty: f32::INFINITY,
                ..d()
            },
            "presence_penalty",
        ),
        (
            SamplerConfig {
                dry_multiplier: -1.0,
                ..d()
            },
            "dry_multiplier",
        ),
        (
            SamplerConfig {
                dry_base: 0.5,
                ..d()
            },
            "dry_base",
        ),
        (
            SamplerConfig {
                logit_bias: vec![(1, f32::NAN)],
                ..d()
            },
            "logit_bias",
        ),
        (
            SamplerConfig {
                logit_bias: vec![(1, f32::INFINITY)],
                ..d()
            },
            "logit_bias",
        ),
        (
            SamplerConfig {
                samplers: vec!["top_k".into(), "topp".into()],
                ..d()
            },
            "topp",
        ),
    ];
    for (config, needle) in cases {
        let err = config.validate().expect_err(needle);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        // (Compared as text: a NaN value makes the errors unequal under `==`.)
        assert_eq!(
            Sampler::try_new(config.clone()).unwrap_err().to_string(),
            msg
        );
        // `new` never panics; the error comes back from the first call.
        let got = Sampler::new(config)
            .sample(&mut [1.0, 2.0], &[])
            .unwrap_err();
        assert_eq!(got.to_string(), msg);
    }
    // Epsilon and eta are fine once named in the chain.
    let ok = SamplerConfig {
        epsilon: 0.01,
        eta: 0.01,
        samplers: parse_sampler_list("top_k;epsilon;eta;temperature").unwrap(),
        ..d()
    };
    assert_eq!(ok.validate(), Ok(()));
    // ...or when mirostat replaces the chain anyway.
    assert_eq!(
        SamplerConfig {
            eta: 0.01,
            mirostat: 2,
            ..d()
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn chain_names_follow_llama_cpp() {
    assert_eq!(
        parse_sampler_list("penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature").unwrap(),
        vec![
            "penalties",
            "dry",
            "top_k",
            "typ_p",
            "top_p",
            "min_p",
            "xtc",
            "temperature"
        ]
    );
    // Aliases and separators.
    assert_eq!(
        parse_sampler_list(" top-k , typical ; nucleus;min-p;temp ").unwrap(),
        vec!["top_k", "typ_p", "top_p", "min_p", "temperature"]
    );
    assert_eq!(parse_sampler_list(";"), Err(SampleError::EmptyChain));
    assert_eq!(
        parse_sampler_list("top_k;bogus"),
        Err(SampleError::UnknownProcessor("bogus".into()))
    );
    // llama.cpp's default --sampling-seq is the default chain.
    assert_eq!(parse_sampler_chars("edskypmxt").unwrap(), DEFAULT_CHAIN);
    assert!(parse_sampler_chars("kq").is_err());
    // Aliases in the config resolve; the sampler reports canonical names.
    let s = Sampler::with_chain(SamplerConfig::default(), &["top-k", "temp"]).unwrap();
    assert_eq!(s.processor_names(), vec!["top_k", "temperature"]);
}

#[test]
fn logit_bias_runs_first_unless_placed_explicitly() {
    let bias = vec![(0, -100.0), (2, 5.0)];
    let s = Sampler::new(SamplerConfig {
        logit_bias: bias.clone(),
        ..SamplerConfig::default()
    });
    assert_eq!(s.processor_names()[0], "logit_bias");
    assert_eq!(s.processor_names().len(), DEFAULT_CHAIN.len() + 1);
    let s = Sampler::with_chain(
        SamplerConfig {
            logit_bias: bias,
            ..SamplerConfig::default()
        },
        &["top_k", "logit_bias"],
    )
    .unwrap();
    assert_eq!(s.processor_names(), vec!["top_k", "logit_bias"]);
    // Greedy sees the bias: 2 + 5 beats 3.
    let mut g = Sampler::new(SamplerConfig {
        logit_bias: vec![(2, 5.0), (1, f32::NEG_INFINITY)],
        ..SamplerConfig::greedy()
    });
    assert_eq!(g.sample(&mut [1.0, 3.0, 2.0], &[]), Ok(2));
    assert_eq!(g.sample(&mut [1.0, 9.0, -9.0], &[]), Ok(0));
}

#[test]
fn greedy_runs_the_stages_that_can_move_the_argmax() {
    // Typical can drop the most likely token when its surprisal is far
    // below the entropy; greedy then picks the best typical token, as
    // llama.cpp's temp(0) after typ_p does.
    let mut logits = vec![4.0f32];
    logits.extend(std::iter::repeat_n(0.0f32, 200));
    let mut g = Sampler::new(SamplerConfig {
        typical_p: 0.5,
        ..SamplerConfig::greedy()
    });
    assert_eq!(g.sample(&mut logits.clone(), &[]), Ok(1));
    // XTC with certainty removes the top choice too.
    let mut g = Sampler::new(SamplerConfig {
        xtc_probability: 1.0,
        xtc_threshold: 0.1,
        ..SamplerConfig::greedy()
    });
    assert_eq!(g.sample(&mut [3.0, 2.9, 0.0, -1.0], &[]), Ok(1));
    // Dynatemp with temperature 0 is not greedy: T ranges up to the range.
    assert!(!SamplerConfig {
        dynatemp_range: 0.5,
        ..SamplerConfig::greedy()
    }
    .is_greedy());
}

#[test]
fn xtc_coin_mixes_the_two_distributions() {
    // probability 0.5: half the draws come from the full softmax, half from
    // the distribution with the top choices removed.
    let logits = [2.0f32, 1.5, 1.0, 0.0, -1.0];
    let p: Vec<f64> = {
        let w: Vec<f64> = logits.iter().map(|&x| f64::from(x).exp()).collect();
        let z: f64 = w.iter().sum();
        w.iter().map(|x| x / z).collect()
    };
    // Threshold 0.15: ids 0, 1 and 2 are at or above it; XTC keeps 2..5.
    assert!(p[2] >= 0.15 && p[3] < 0.15);
    let tail: f64 = p[2..].iter().sum();
    let expected: Vec<f64> = (0..5)
        .map(|i| 0.5 * p[i] + if i >= 2 { 0.5 * p[i] / tail } else { 0.0 })
        .collect();
    let mut s = Sampler::with_chain(
        SamplerConfig {
            xtc_probability: 0.5,
            xtc_threshold: 0.15,
            seed: 77,
            ..SamplerConfig::default()
        },
        &["xtc"],
    )
    .unwrap();
    let n = 20_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&mut logits.clone(), &[]).unwrap() as usize] += 1;
    }
    let chi2: f64 = counts
        .iter()
        .zip(&expected)
        .map(|(&o, &e)| (o as f64 - e * n as f64).powi(2) / (e * n as f64))
        .sum();
    assert!(chi2 < 18.467, "chi2 = {chi2} (df 4), counts {counts:?}");
}

/// DRY by its definition, naively: O(n^2) common suffixes.
fn dry_naive(
    logits: &mut [f32],
    history: &[u32],
    (mult, base, allowed, last_n): (f32, f32, usize, usize),
    breakers: &[Vec<u32>],
) {
    let w = &history[history.len().saturating_sub(last_n)..];
    let n = w.len();
    if mult == 0.0 || base < 1.0 || last_n == 0 || n <= allowed {
        return;
    }
    let mut limit = n;
    'scan: for i in 0..n {
        let pos = n - 1 - i;
        let mut best: Option<usize> = None;
        for seq in breakers.iter().filter(|s| !s.is_empty() && s[0] == w[pos]) {
            let tail = seq.len() - 1;
            if tail <= i && w[pos + 1..pos + seq.len()] == seq[1..] {
                best = Some(best.map_or(tail, |b: usize| b.max(tail)));
            }
        }
        if let Some(t) = best {
            limit = i - t;
            break 'scan;
        }
    }
    if limit < allowed {
        return;
    }
    let mut longest = std::collections::BTreeMap::new();
    for j in 0..n - 1 {
        let mut len = 0;
        while len <= j && w[j - len] == w[n - 1 - len] {
            len += 1;
        }
        let len = len.min(limit);
        if len >= allowed {
            let e = longest.entry(w[j + 1]).or_insert(0);
            *e = (*e).max(len);
        }
    }
    let max_exp = if base > 1.000_001 {
        (88.722_839_1 / f64::from(base).ln()) as usize
    } else {
        0
    };
    for (tok, len) in longest {
        let single = breakers.iter().any(|s| s.len() == 1 && s[0] == tok);
        if single || tok as usize >= logits.len() {
            continue;
        }
        let mut e = len - allowed;
        if max_exp > 0 && e > max_exp {
            e = max_exp;
        }
        logits[tok as usize] -= (f64::from(mult) * f64::from(base).powi(e as i32)) as f32;
    }
}

#[test]
fn dry_matches_a_naive_reference_on_random_histories() {
    let mut rng = Rng::seed_from_u64(2718);
    let mut cands = Candidates::new();
    for trial in 0..2000 {
        let alphabet = 2 + (rng.next_u64() % 5) as u32;
        let len = (rng.next_u64() % 60) as usize;
        let history: Vec<u32> = (0..len)
            .map(|_| (rng.next_u64() % u64::from(alphabet)) as u32)
            .collect();
        let breakers: Vec<Vec<u32>> = (0..rng.next_u64() % 3)
            .map(|_| {
                (0..1 + rng.next_u64() % 3)
                    .map(|_| (rng.next_u64() % u64::from(alphabet + 1)) as u32)
                    .collect()
            })
            .collect();
        let allowed = (rng.next_u64() % 4) as usize;
        let last_n = match rng.next_u64() % 3 {
            0 => WHOLE_HISTORY,
            1 => 1 + (rng.next_u64() % 30) as usize,
            _ => len,
        };
        let params = (0.8, 1.75, allowed, last_n);
        let logits: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut want = logits.clone();
        dry_naive(&mut want, &history, params, &breakers);
        let mut dry = Dry::new(params.0, params.1, allowed, last_n, &breakers);
        cands.fill(&logits);
        dry.process(&mut cands, &SampleContext::new(&history));
        let mut got = vec![0.0; 8];
        for c in cands.as_slice() {
            got[c.id as usize] = c.logit;
        }
        assert_eq!(
            got, want,
            "trial {trial}: history {history:?}, breakers {breakers:?}, allowed {allowed}, last_n {last_n}"
        );
    }
}

#[test]
fn dry_penalises_the_token_that_extends_a_repeat() {
    // "a b c d ... a b c" -> d would repeat four tokens: penalty
    // 0.8 * 1.75^(3 - 2); b after "a" gets nothing below allowed length.
    let (a, b, c, d, x) = (0, 1, 2, 3, 4);
    let history = [a, b, c, d, x, x, a, b, c];
    let mut cands = Candidates::new();
    cands.fill(&[0.0; 5]);
    let mut dry = Dry::new(0.8, 1.75, 2, WHOLE_HISTORY, &[]);
    dry.process(&mut cands, &SampleContext::new(&history));
    let got: Vec<f32> = cands.as_slice().iter().map(|c| c.logit).collect();
    assert_eq!(got, vec![0.0, 0.0, 0.0, -0.8 * 1.75, 0.0]);
    // A breaker caps the repeat at the distance to its latest occurrence:
    // in "x b c d x b c" the suffix "x b c" repeats (d would make it four),
    // but with `x` a breaker only "b c" counts.
    let history = [x, b, c, d, x, b, c];
    for (breakers, penalty) in [(vec![], 0.8 * 1.75), (vec![vec![x]], 0.8)] {
        let mut dry = Dry::new(0.8, 1.75, 2, WHOLE_HISTORY, &breakers);
        cands.fill(&[0.0; 5]);
        dry.process(&mut cands, &SampleContext::new(&history));
        let got: Vec<f32> = cands.as_slice().iter().map(|c| c.logit).collect();
        assert_eq!(got, vec![0.0, 0.0, 0.0, -penalty, 0.0], "{breakers:?}");
    }
}

#[test]
fn sequence_breakers_from_strings_follow_llama_cpp() {
    // A toy vocabulary: single characters plus a few merged pieces.
    let vocab: Vec<&str> = vec![
        "a", "b", ":", "\n", "x:", "a\n", "*", "\"", "b*", "ab", "\"\"", "q",
    ];
    let piece = |id: u32| vocab[id as usize].as_bytes().to_vec();
    let tokenize = |bytes: &[u8]| -> Vec<u32> {
        // Greedy longest match over the toy vocabulary.
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let (id, len) = vocab
                .iter()
                .enumerate()
                .filter(|(_, v)| bytes[i..].starts_with(v.as_bytes()))
                .map(|(id, v)| (id as u32, v.len()))
                .max_by_key(|&(_, l)| l)
                .unwrap();
            out.push(id);
            i += len;
        }
        out
    };
    let seqs = dry_sequence_breakers(
        DEFAULT_DRY_SEQUENCE_BREAKERS,
        vocab.len() as u32,
        piece,
        tokenize,
    );
    // Every token containing a breaker is a one-token breaker.
    for id in [2u32, 3, 4, 5, 6, 7, 8, 10] {
        assert!(seqs.contains(&vec![id]), "{id} ({:?})", vocab[id as usize]);
    }
    assert!(!seqs.contains(&vec![0]) && !seqs.contains(&vec![11]));
    // A multi-character breaker: "ab:" overlaps the end of "ab" and "b".
    let seqs = dry_sequence_breakers(&["b:q"], vocab.len() as u32, piece, tokenize);
    // "b" ends with "b": tail is tokenize(":q") = [":", "q"].
    assert!(seqs.contains(&vec![1, 2, 11]), "{seqs:?}");
    assert!(seqs.contains(&vec![9, 2, 11]), "{seqs:?}");
    // Empty breakers are skipped.
    assert!(dry_sequence_breakers(&[""], 12, piece, tokenize).is_empty());
}
