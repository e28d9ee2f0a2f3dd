//! Telemetry: the per-token report (logprob, entropy, varentropy, rank, top
//! alternatives on the model's own distribution) and the per-stage mass
//! accounting of `Sampler::sample_with_report`.

use sample::{log_softmax, token_report, top_k_logprobs, varentropy, Rng, Sampler, SamplerConfig};

/// Gaussian logits (sd 3) with a few peaks, like a real vocabulary row.
fn realistic(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
            (3.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    for (i, x) in [(7, 13.0), (n / 2, 12.5), (n - 3, 12.0)] {
        v[i] = x;
    }
    v
}

/// Direct f64 reference: probabilities of `softmax(logits)`.
fn probs(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x.into()));
    let w: Vec<f64> = logits.iter().map(|&x| (f64::from(x) - max).exp()).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

#[test]
fn token_report_matches_direct_computation() {
    let logits = realistic(2000, 1);
    let p = probs(&logits);
    let h: f64 = -p
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|q| q * q.ln())
        .sum::<f64>();
    let v: f64 = p
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|q| q * (-q.ln() - h).powi(2))
        .sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    for (rank, &t) in order.iter().enumerate().step_by(97) {
        let r = token_report(&logits, t as u32, 5);
        assert_eq!(r.id, t as u32);
        assert_eq!(r.rank, rank);
        assert!((f64::from(r.logprob) - p[t].ln()).abs() < 1e-5);
        assert!((f64::from(r.entropy) - h).abs() < 1e-5);
        assert!((f64::from(r.entropy_bits) - h / std::f64::consts::LN_2).abs() < 1e-5);
        assert!((f64::from(r.varentropy) - v).abs() < 1e-4 * v.max(1.0));
        assert_eq!(r.top, top_k_logprobs(&logits, 5));
        assert!((f64::from(r.surprise_bits()) + p[t].log2()).abs() < 1e-4);
    }
    assert!((f64::from(varentropy(&logits)) - v).abs() < 1e-4 * v.max(1.0));
}

#[test]
fn varentropy_edge_cases() {
    // Uniform and one-hot: every drawable token is equally surprising.
    assert!(varentropy(&[0.5; 64]).abs() < 1e-6);
    assert_eq!(
        varentropy(&[0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]),
        0.0
    );
    assert_eq!(varentropy(&[f32::INFINITY, 1.0, f32::INFINITY]), 0.0);
    assert!(varentropy(&[f32::NEG_INFINITY, f32::NAN]).is_nan());
    // Two tokens, p and 1-p: variance of a two-point surprisal.
    let (a, b) = (0.8f64, 0.2f64);
    let logits = [a.ln() as f32, b.ln() as f32];
    let h = -(a * a.ln() + b * b.ln());
    let v = a * (-a.ln() - h).powi(2) + b * (-b.ln() - h).powi(2);
    assert!((f64::from(varentropy(&logits)) - v).abs() < 1e-6);
}

fn cli_like(seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.05,
        repeat_penalty: 1.1,
        seed,
        ..SamplerConfig::default()
    }
}

#[test]
fn removed_masses_add_up_to_what_the_chain_cut() {
    let logits = realistic(5000, 2);
    let p = probs(&logits);
    let history: Vec<u32> = vec![7, 100, 2500, 7];
    let mut s = Sampler::new(cli_like(3));
    for _ in 0..20 {
        let (token, report) = s
            .sample_with_report(&mut logits.clone(), &history, 3)
            .unwrap();
        assert_eq!(report.token.id, token);
        let names: Vec<&str> = report.stages.iter().map(|st| st.name).collect();
        assert_eq!(names, sample::DEFAULT_CHAIN.to_vec());
        // Sum of removed = 1 - original mass of the final candidates.
        let finals: f64 = s
            .last_candidates()
            .as_slice()
            .iter()
            .filter(|c| c.logit > f32::NEG_INFINITY)
            .map(|c| p[c.id as usize])
            .sum();
        assert!((report.kept_mass() - finals).abs() < 1e-12);
        assert!((report.removed_mass() - (1.0 - finals)).abs() < 1e-12);
        // Each stage's kept mass is the previous one minus what it removed.
        let mut before = 1.0;
        for st in &report.stages {
            assert!(st.removed_mass >= 0.0, "{st:?}");
            assert!(
                (before - st.removed_mass - st.kept_mass).abs() < 1e-12,
                "{st:?}"
            );
            before = st.kept_mass;
        }
        // Penalties and temperature reshape but remove nothing.
        for st in &report.stages {
            if matches!(st.name, "penalties" | "temperature" | "dry") {
                assert_eq!(st.removed_mass, 0.0, "{st:?}");
            }
        }
        let top_k = report.stages.iter().find(|st| st.name == "top_k").unwrap();
        assert_eq!(top_k.kept, 40);
        // The token was drawn from what was left.
        assert!(report.sampled_prob > 0.0 && report.sampled_prob <= 1.0);
        assert!(token < 5000);
    }
}

#[test]
fn stage_mass_matches_an_independent_count() {
    // top_k alone on the raw row: it removes exactly the mass outside the
    // k most likely tokens.
    let logits = realistic(3000, 4);
    let p = probs(&logits);
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top50: f64 = sorted[..50].iter().sum();
    let config = SamplerConfig {
        top_k: 50,
        ..SamplerConfig::default()
    };
    let mut s = Sampler::with_chain(config, &["top_k"]).unwrap();
    let (_, report) = s.sample_with_report(&mut logits.clone(), &[], 0).unwrap();
    assert_eq!(report.stages.len(), 1);
    assert!((report.stages[0].removed_mass - (1.0 - top50)).abs() < 1e-12);
    assert!(report.token.top.is_empty());

    // A banned token's mass is removed by the logit bias stage.
    let best = sample::argmax(&logits);
    let config = SamplerConfig {
        logit_bias: vec![(best, f32::NEG_INFINITY)],
        ..SamplerConfig::default()
    };
    let mut s = Sampler::new(config);
    let (token, report) = s.sample_with_report(&mut logits.clone(), &[], 0).unwrap();
    assert_ne!(token, best);
    assert_eq!(report.stages[0].name, "logit_bias");
    assert!((report.stages[0].removed_mass - p[best as usize]).abs() < 1e-12);
}

#[test]
fn report_path_draws_exactly_what_sample_draws() {
    let logits = realistic(4000, 5);
    let configs = [
        cli_like(11),
        SamplerConfig {
            mirostat: 2,
            seed: 12,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            xtc_probability: 0.5,
            xtc_threshold: 0.05,
            typical_p: 0.9,
            dynatemp_range: 0.5,
            seed: 13,
            ..SamplerConfig::default()
        },
    ];
    for config in configs {
        let mut a = Sampler::new(config.clone());
        let mut b = Sampler::new(config.clone());
        let mut history = Vec::new();
        for _ in 0..100 {
            let x = a.sample(&mut logits.clone(), &history).unwrap();
            let (y, _) = b
                .sample_with_report(&mut logits.clone(), &history, 2)
                .unwrap();
            assert_eq!(x, y, "{config:?}");
            history.push(x);
        }
    }
}

#[test]
fn greedy_report_ends_with_the_argmax_stage() {
    let logits = realistic(1000, 6);
    let p = probs(&logits);
    let mut s = Sampler::new(SamplerConfig {
        top_k: 10,
        repeat_penalty: 1.5,
        ..SamplerConfig::greedy()
    });
    let (token, report) = s.sample_with_report(&mut logits.clone(), &[], 0).unwrap();
    assert_eq!(token, sample::argmax(&logits));
    assert_eq!(report.sampled_prob, 1.0);
    // top_k, top_p, ... cannot change the argmax and are skipped.
    let names: Vec<&str> = report.stages.iter().map(|st| st.name).collect();
    assert_eq!(names, vec!["penalties", "dry", "typ_p", "xtc", "greedy"]);
    let last = report.stages.last().unwrap();
    assert_eq!(last.kept, 1);
    assert!((last.kept_mass - p[token as usize]).abs() < 1e-12);
    assert!((report.removed_mass() - (1.0 - p[token as usize])).abs() < 1e-12);
}

#[test]
fn stage_states_report_dynatemp_and_mirostat() {
    let logits = realistic(1000, 7);
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1.0,
        dynatemp_range: 0.5,
        ..SamplerConfig::default()
    });
    let (_, report) = s.sample_with_report(&mut logits.clone(), &[], 0).unwrap();
    let temp = report
        .stages
        .iter()
        .find(|st| st.name == "temperature")
        .unwrap();
    let (what, t) = temp.state.unwrap();
    assert_eq!(what, "temperature");
    assert!((0.5..=1.5).contains(&t), "{t}");

    let mut s = Sampler::new(SamplerConfig {
        mirostat: 2,
        mirostat_tau: 4.0,
        ..SamplerConfig::default()
    });
    let (_, report) = s.sample_with_report(&mut logits.clone(), &[], 0).unwrap();
    let m = report.stages.last().unwrap();
    assert_eq!(m.name, "mirostat_v2");
    assert_eq!(m.state, Some(("mu", 8.0)));
    // The surprise the update used.
    assert!((report.sampled_surprise_bits() + report.sampled_prob.log2()).abs() < 1e-12);
}

#[test]
fn report_logprob_is_the_models_not_the_samplers() {
    // Temperature 0.5 sharpens the draw, but the report measures the model.
    let logits = [1.0f32, 2.0, 0.5];
    let mut lp = [0.0f32; 3];
    log_softmax(&logits, &mut lp);
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.5,
        ..SamplerConfig::default()
    });
    for _ in 0..50 {
        let (t, r) = s.sample_with_report(&mut logits.to_vec(), &[], 3).unwrap();
        assert_eq!(r.token.logprob, lp[t as usize]);
        let sharp = probs(&[2.0, 4.0, 1.0])[t as usize];
        // The draw's weights use the vectorised exp (relative error < 4e-7).
        assert!((r.sampled_prob - sharp).abs() < 1e-6);
    }
}
