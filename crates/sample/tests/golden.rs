//! Every sampler stage against an independent reference.
//!
//! `data/sampler_golden.json` comes from `data/make_sampler_golden.py` (a
//! plain-Python implementation of each sampler from its definition; the
//! command is at the top of the script and in the file). Each case applies
//! one stage to a fixed logits vector; the surviving candidates must match
//! exactly and their renormalised probabilities within 1e-6.
//!
//! The same cases then serve as the intended distributions of a chi-square
//! test: 20 000 seeded draws through a one-stage [`Sampler`] must match the
//! reference probabilities.

use serde_json::Value;

use sample::{
    processor_from_name, Candidates, SampleContext, Sampler, SamplerConfig, WHOLE_HISTORY,
};

const GOLDEN: &str = include_str!("data/sampler_golden.json");

struct Case {
    name: String,
    vector: Vec<f32>,
    sampler: String,
    config: SamplerConfig,
    history: Vec<u32>,
    kept: Vec<u32>,
    probs: Vec<f64>,
    mirostat: Option<(u32, f64)>,
}

fn f(v: &Value) -> f32 {
    match v {
        Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        _ => v.as_f64().expect("number") as f32,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The config a case's parameters describe, with the chain set to its one
/// stage (epsilon and eta must be named to be valid).
fn config_of(sampler: &str, params: &Value) -> SamplerConfig {
    let mut c = SamplerConfig {
        samplers: vec![sampler.to_owned()],
        seed: 2024,
        ..SamplerConfig::default()
    };
    for (k, v) in params.as_object().expect("params object") {
        match k.as_str() {
            "top_k" => c.top_k = v.as_u64().unwrap() as usize,
            "top_p" => c.top_p = f(v),
            "min_p" => c.min_p = f(v),
            "typical_p" => c.typical_p = f(v),
            "top_n_sigma" => c.top_n_sigma = f(v),
            "epsilon" => c.epsilon = f(v),
            "eta" => c.eta = f(v),
            "xtc_probability" => c.xtc_probability = f(v),
            "xtc_threshold" => c.xtc_threshold = f(v),
            "temperature" => c.temperature = f(v),
            "dynatemp_range" => c.dynatemp_range = f(v),
            "dynatemp_exponent" => c.dynatemp_exponent = f(v),
            "repeat_last_n" => c.repeat_last_n = v.as_u64().unwrap() as usize,
            "repeat_penalty" => c.repeat_penalty = f(v),
            "frequency_penalty" => c.frequency_penalty = f(v),
            "presence_penalty" => c.presence_penalty = f(v),
            "dry_multiplier" => c.dry_multiplier = f(v),
            "dry_base" => c.dry_base = f(v),
            "dry_allowed_length" => c.dry_allowed_length = v.as_u64().unwrap() as usize,
            "dry_penalty_last_n" => {
                let n = v.as_i64().unwrap();
                c.dry_penalty_last_n = usize::try_from(n).unwrap_or(WHOLE_HISTORY);
            }
            "dry_sequence_breakers" => {
                c.dry_sequence_breakers = v.as_array().unwrap().iter().map(ids).collect();
            }
            "logit_bias" => {
                c.logit_bias = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap() as u32, f(&p[1])))
                    .collect();
            }
            "mirostat_tau" => c.mirostat_tau = f(v),
            "mirostat_lr" => c.mirostat_lr = f(v),
            other => panic!("golden parameter {other} not mapped"),
        }
    }
    c
}

fn cases() -> Vec<Case> {
    let doc: Value = serde_json::from_str(GOLDEN).expect("golden JSON");
    let vectors = &doc["vectors"];
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let sampler = c["sampler"].as_str().unwrap().to_owned();
            let vector = vectors[c["vector"].as_str().unwrap()]
                .as_array()
                .unwrap()
                .iter()
                .map(f)
                .collect();
            Case {
                name: c["name"].as_str().unwrap().to_owned(),
                config: config_of(&sampler, &c["params"]),
                sampler,
                vector,
                history: ids(&c["history"]),
                kept: ids(&c["kept"]),
                probs: c["probs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect(),
                mirostat: c
                    .get("chosen")
                    .map(|t| (t.as_u64().unwrap() as u32, c["mu_after"].as_f64().unwrap())),
            }
        })
        .collect()
}

/// Viable candidates (ascending ids) and their softmax probabilities.
fn survivors(cands: &Candidates) -> (Vec<u32>, Vec<f64>) {
    let mut live: Vec<(u32, f32)> = cands
        .as_slice()
        .iter()
        .filter(|c| c.logit > f32::NEG_INFINITY)
        .map(|c| (c.id, c.logit))
        .collect();
    live.sort_by_key(|&(id, _)| id);
    let max = live
        .iter()
        .fold(f64::NEG_INFINITY, |m, &(_, l)| m.max(f64::from(l)));
    let w: Vec<f64> = live
        .iter()
        .map(|&(_, l)| (f64::from(l) - max).exp())
        .collect();
    let z: f64 = w.iter().sum();
    (
        live.iter().map(|&(id, _)| id).collect(),
        w.iter().map(|x| x / z).collect(),
    )
}

#[test]
fn golden_file_covers_every_stage() {
    let cases = cases();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for name in sample::PROCESSOR_NAMES {
        assert!(
            cases.iter().any(|c| c.sampler == *name),
            "no golden case for {name}"
        );
    }
    // Dynatemp and the 1000-token vector are in.
    assert!(cases.iter().any(|c| c.config.dynatemp_range > 0.0));
    assert!(cases.iter().any(|c| c.vector.len() == 1000));
}

#[test]
fn every_stage_matches_the_reference() {
    for case in cases() {
        assert_eq!(case.config.validate(), Ok(()), "{}", case.name);
        let mut p = processor_from_name(&case.sampler, &case.config).unwrap();
        let mut cands = Candidates::new();
        cands.fill(&case.vector);
        let ctx = SampleContext::new(&case.history).with_vocab(case.vector.len());
        p.process(&mut cands, &ctx);
        let (kept, probs) = survivors(&cands);
        assert_eq!(kept, case.kept, "{}: surviving candidates", case.name);
        for ((id, got), want) in kept.iter().zip(&probs).zip(&case.probs) {
            assert!(
                (got - want).abs() < 1e-6,
                "{}: token {id}: p = {got}, reference {want}",
                case.name
            );
        }
        if let Some((chosen, mu_after)) = case.mirostat {
            let pos = kept.iter().position(|&id| id == chosen).unwrap();
            p.accept(chosen, probs[pos]);
            let (name, mu) = p.state().unwrap();
            assert_eq!(name, "mu");
            assert!(
                (f64::from(mu) - mu_after).abs() < 1e-5,
                "{}: mu after one token {mu}, reference {mu_after}",
                case.name
            );
        }
    }
}

/// Chi-square upper critical value at alpha = 0.001 for `df` degrees of
/// freedom: exact table up to 5, Wilson-Hilferty beyond (within 0.5 %).
fn chi2_crit_001(df: usize) -> f64 {
    const TABLE: [f64; 6] = [f64::NAN, 10.828, 13.816, 16.266, 18.467, 20.515];
    if df < TABLE.len() {
        return TABLE[df];
    }
    let d = df as f64;
    let z = 3.090_232;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Pearson's statistic over the tokens with intended probability > 0.001,
/// the rest pooled into one bin (dropped if its expected count is below 5).
/// A draw of a token with intended probability 0 fails outright. Returns
/// `(chi2, df)`.
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let (mut chi2, mut bins) = (0.0, 0usize);
    let (mut rest_o, mut rest_p) = (0usize, 0.0);
    for (id, (&o, &p)) in counts.iter().zip(probs).enumerate() {
        if p == 0.0 {
            assert_eq!(o, 0, "drew token {id}, whose probability is 0");
        } else if p > 0.001 {
            let e = p * n as f64;
            chi2 += (o as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            rest_o += o;
            rest_p += p;
        }
    }
    let rest_e = rest_p * n as f64;
    if rest_e >= 5.0 {
        chi2 += (rest_o as f64 - rest_e).powi(2) / rest_e;
        bins += 1;
    }
    (chi2, bins.saturating_sub(1))
}

#[test]
fn draws_follow_the_reference_distribution() {
    const N: usize = 20_000;
    let mut checked = 0;
    for case in cases() {
        // Mirostat's mu moves with every draw, so its first-token
        // distribution cannot be sampled repeatedly; the 1000-token vector
        // needs far more draws than 20k for a meaningful test.
        if case.sampler.starts_with("mirostat") || case.vector.len() > 100 {
            continue;
        }
        let mut s = Sampler::try_new(case.config.clone()).unwrap();
        let mut counts = vec![0usize; case.vector.len()];
        let mut row = case.vector.clone();
        for _ in 0..N {
            row.copy_from_slice(&case.vector);
            counts[s.sample(&mut row, &case.history).unwrap() as usize] += 1;
        }
        let mut probs = vec![0.0; case.vector.len()];
        for (&id, &p) in case.kept.iter().zip(&case.probs) {
            probs[id as usize] = p;
        }
        let (chi2, df) = chi_square(&counts, &probs);
        if case.kept.len() == 1 {
            // One token: every draw must be it.
            assert_eq!(counts[case.kept[0] as usize], N, "{}", case.name);
        } else if df > 0 {
            let crit = chi2_crit_001(df);
            assert!(
                chi2 < crit,
                "{}: chi2 = {chi2:.1} >= {crit:.1} (df {df}), counts {counts:?}",
                case.name
            );
        }
        checked += 1;
    }
    assert!(checked > 60, "only {checked} distributions checked");
}
