//! Per-token cost of each sampler stage and of whole chains, on a
//! 49 152-token vocabulary of realistic logits (Gaussian, sd 3, plus a few
//! peaks), with a 512-token history. Prints a markdown table of the median
//! and 90th-percentile microseconds per token.
//!
//! ```text
//! cargo run --release -p sample --example sampler_overhead [reps]
//! ```
//!
//! Each "alone" row is one stage followed by the draw (softmax of what is
//! left, one inverse-CDF pick); compare with the `dist` row (the draw over
//! the full vocabulary, no stage) to see what the stage itself costs.

use std::hint::black_box;
use std::time::Instant;

use sample::{token_report, Rng, Sampler, SamplerConfig, WHOLE_HISTORY};

const VOCAB: usize = 49_152;

fn gaussian(rng: &mut Rng) -> f64 {
    let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A realistic logits row: N(0, 3^2) plus a handful of clear favourites.
fn row(seed: u64) -> Vec<f32> {
    let mut rng = Rng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..VOCAB)
        .map(|_| (3.0 * gaussian(&mut rng)) as f32)
        .collect();
    for k in 0..5 {
        let id = (rng.next_u64() % VOCAB as u64) as usize;
        v[id] = 14.0 - k as f32 * 0.7;
    }
    v
}

/// A history with repeats: phrases drawn from a small pool.
fn history() -> Vec<u32> {
    let mut rng = Rng::seed_from_u64(9);
    let phrases: Vec<Vec<u32>> = (0..12)
        .map(|_| {
            (0..3 + rng.next_u64() % 6)
                .map(|_| (rng.next_u64() % VOCAB as u64) as u32)
                .collect()
        })
        .collect();
    let mut h = Vec::new();
    while h.len() < 512 {
        h.extend_from_slice(&phrases[(rng.next_u64() % 12) as usize]);
    }
    h.truncate(512);
    h
}

struct Timing {
    median: f64,
    p90: f64,
}

fn time(reps: usize, mut f: impl FnMut(usize)) -> Timing {
    for i in 0..reps / 10 + 5 {
        f(i);
    }
    let mut us: Vec<f64> = (0..reps)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    Timing {
        median: us[us.len() / 2],
        p90: us[us.len() * 9 / 10],
    }
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let rows: Vec<Vec<f32>> = (0..16).map(|i| row(100 + i)).collect();
    let hist = history();
    let d = SamplerConfig::default;
    let alone = |name: &'static str, config: SamplerConfig| (name, config, vec![name]);

    let cli = SamplerConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        ..d()
    };
    let everything = SamplerConfig {
        repeat_penalty: 1.1,
        frequency_penalty: 0.1,
        presence_penalty: 0.1,
        dry_multiplier: 0.8,
        top_n_sigma: 3.0,
        typical_p: 0.95,
        xtc_probability: 0.5,
        xtc_threshold: 0.1,
        dynatemp_range: 0.3,
        ..cli.clone()
    };
    let cases: Vec<(&str, SamplerConfig, Vec<&str>)> = vec![
        ("dist (draw only)", d(), vec!["temperature"]),
        alone(
            "penalties",
            SamplerConfig {
                repeat_penalty: 1.1,
                frequency_penalty: 0.1,
                presence_penalty: 0.1,
                ..d()
            },
        ),
        alone(
            "dry",
            SamplerConfig {
                dry_multiplier: 0.8,
                dry_penalty_last_n: WHOLE_HISTORY,
                ..d()
            },
        ),
        alone(
            "logit_bias",
            SamplerConfig {
                logit_bias: (0..16).map(|i| (i * 997, -2.0)).collect(),
                ..d()
            },
        ),
        alone(
            "top_n_sigma",
            SamplerConfig {
                top_n_sigma: 1.0,
                ..d()
            },
        ),
        alone("top_k", SamplerConfig { top_k: 40, ..d() }),
        alone(
            "typ_p",
            SamplerConfig {
                typical_p: 0.9,
                ..d()
            },
        ),
        alone("top_p", SamplerConfig { top_p: 0.95, ..d() }),
        alone("min_p", SamplerConfig { min_p: 0.05, ..d() }),
        alone(
            "epsilon",
            SamplerConfig {
                epsilon: 0.0003,
                ..d()
            },
        ),
        alone("eta", SamplerConfig { eta: 0.0009, ..d() }),
        alone(
            "xtc",
            SamplerConfig {
                xtc_probability: 1.0,
                xtc_threshold: 0.1,
                ..d()
            },
        ),
        alone(
            "temperature",
            SamplerConfig {
                temperature: 0.8,
                ..d()
            },
        ),
        (
            "temperature (dynatemp)",
            SamplerConfig {
                temperature: 0.8,
                dynatemp_range: 0.5,
                ..d()
            },
            vec!["temperature"],
        ),
        ("mirostat", SamplerConfig { mirostat: 1, ..d() }, vec![]),
        ("mirostat_v2", SamplerConfig { mirostat: 2, ..d() }, vec![]),
        ("greedy (temperature 0)", SamplerConfig::greedy(), vec![]),
        ("default chain, neutral settings", d(), vec![]),
        ("default chain, llama.cpp CLI settings", cli.clone(), vec![]),
        ("default chain, every stage on", everything, vec![]),
    ];

    println!(
        "sampler overhead: vocabulary {VOCAB}, history {}, {reps} reps (median and p90, µs per token)\n",
        hist.len()
    );
    println!("| stage | settings | median µs | p90 µs |");
    println!("|---|---|---:|---:|");
    let describe = |c: &SamplerConfig, chain: &[&str]| -> String {
        let mut parts = Vec::new();
        let def = SamplerConfig::default();
        macro_rules! show {
            ($f:ident) => {
                if c.$f != def.$f {
                    parts.push(format!("{} {:?}", stringify!($f), c.$f));
                }
            };
        }
        show!(temperature);
        show!(dynatemp_range);
        show!(top_k);
        show!(top_p);
        show!(min_p);
        show!(typical_p);
        show!(top_n_sigma);
        show!(epsilon);
        show!(eta);
        show!(xtc_probability);
        show!(xtc_threshold);
        show!(mirostat);
        show!(repeat_penalty);
        show!(frequency_penalty);
        show!(presence_penalty);
        show!(dry_multiplier);
        if !c.logit_bias.is_empty() {
            parts.push(format!("{} biases", c.logit_bias.len()));
        }
        if !chain.is_empty() {
            parts.push(format!("chain {}", chain.join(";")));
        }
        if parts.is_empty() {
            "all off, temperature 1".into()
        } else {
            parts.join(", ")
        }
    };
    for (name, config, chain) in &cases {
        let mut s = if chain.is_empty() {
            Sampler::try_new(config.clone())
        } else {
            Sampler::with_chain(config.clone(), chain)
        }
        .expect("valid benchmark config");
        let mut work = rows[0].clone();
        let t = time(reps, |i| {
            // The sampler leaves the row unchanged; no copy needed per rep.
            let r = &rows[i % rows.len()];
            work.copy_from_slice(r);
            black_box(s.sample(&mut work, &hist).unwrap());
        });
        println!(
            "| {name} | {} | {:.1} | {:.1} |",
            describe(config, chain),
            t.median,
            t.p90
        );
    }

    // Telemetry: the report path, and the engine's per-token statistics.
    let mut s = Sampler::new(cli);
    let mut work = rows[0].clone();
    let t = time(reps, |i| {
        work.copy_from_slice(&rows[i % rows.len()]);
        black_box(s.sample_with_report(&mut work, &hist, 5).unwrap());
    });
    println!(
        "| sample_with_report | llama.cpp CLI settings, top 5 alternatives | {:.1} | {:.1} |",
        t.median, t.p90
    );
    let t = time(reps, |i| {
        black_box(token_report(&rows[i % rows.len()], 7, 5));
    });
    println!(
        "| token_report alone | logprob, entropy, varentropy, rank, top 5 | {:.1} | {:.1} |",
        t.median, t.p90
    );
    let t = time(reps, |i| {
        work.copy_from_slice(&rows[i % rows.len()]);
        black_box(&work);
    });
    println!(
        "| (row copy, included above) | {VOCAB} f32 | {:.1} | {:.1} |",
        t.median, t.p90
    );
}
