//! Gumbel-max draws: an exact sample from the chain's distribution (chi-square), a
//! pure function of (seed, step, logits) so they replay, and forced tokens advance the
//! step so the draws after them are the recorded ones.

use sample::{Sampler, SamplerConfig};

fn config(seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplerConfig::default()
    }
}

#[test]
fn gumbel_max_draws_follow_the_softmax() {
    let logits = [1.0f32, 0.5, 0.0, -0.5, -1.0, -3.0];
    let t = 0.7f64;
    let w: Vec<f64> = logits.iter().map(|&l| (f64::from(l) / t).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut s = Sampler::new(config(5)).with_gumbel_max();
    let n = 20_000;
    let mut counts = [0usize; 6];
    for _ in 0..n {
        let mut row = logits;
        counts[s.sample(&mut row, &[]).unwrap() as usize] += 1;
    }
    assert_eq!(s.step(), n as u64);
    let chi2: f64 = counts
        .iter()
        .zip(&w)
        .map(|(&c, &wi)| {
            let e = n as f64 * wi / z;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    // 5 degrees of freedom: p = 0.001 at 20.52.
    assert!(chi2 < 20.52, "chi-square {chi2:.2}, counts {counts:?}");
}

#[test]
fn forced_tokens_keep_the_later_draws_aligned() {
    let rows: Vec<Vec<f32>> = (0..40)
        .map(|i| {
            (0..50)
                .map(|j| ((i * 7 + j * 13) % 17) as f32 * 0.3)
                .collect()
        })
        .collect();
    let mut a = Sampler::new(config(9)).with_gumbel_max();
    let drawn: Vec<u32> = rows
        .iter()
        .map(|r| a.sample(&mut r.clone(), &[]).unwrap())
        .collect();
    // Replay, forcing the first 10 tokens (one of them edited): draws 10.. match.
    let mut b = Sampler::new(config(9)).with_gumbel_max();
    for (i, r) in rows[..10].iter().enumerate() {
        let t = if i == 4 {
            (drawn[4] + 1) % 50
        } else {
            drawn[i]
        };
        let p = b.force(&mut r.clone(), &[], t).unwrap();
        assert!(p > 0.0);
    }
    assert_eq!(b.step(), 10);
    let replayed: Vec<u32> = rows[10..]
        .iter()
        .map(|r| b.sample(&mut r.clone(), &[]).unwrap())
        .collect();
    assert_eq!(replayed, drawn[10..]);
    // Reset replays from step 0.
    a.reset();
    assert_eq!(a.sample(&mut rows[0].clone(), &[]).unwrap(), drawn[0]);
    // A forced id outside the row is an error, not a panic.
    assert!(b.force(&mut rows[0].clone(), &[], 50).is_err());
}
