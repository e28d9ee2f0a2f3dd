//! Information measures checked against direct f64 computations.

use sample::{argmax, entropy, log_softmax, token_stats, top_k_logprobs};

/// Reference log-softmax in f64, the textbook way (no NaN/inf handling).
fn ref_logprobs(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits.iter().map(|&x| x as f64 - max - z.ln()).collect()
}

const ROW: [f32; 7] = [1.5, -0.25, 3.0, 3.0, -7.0, 0.0, 2.25];

#[test]
fn log_softmax_sums_to_one_in_probability_space() {
    let mut out = [0.0; ROW.len()];
    log_softmax(&ROW, &mut out);
    let s: f64 = out.iter().map(|&l| (l as f64).exp()).sum();
    assert!((s - 1.0).abs() < 1e-6, "sum of probabilities = {s}");
    for (o, r) in out.iter().zip(ref_logprobs(&ROW)) {
        assert!((*o as f64 - r).abs() < 1e-6, "{o} vs {r}");
    }
}

#[test]
fn log_softmax_is_stable_for_huge_logits() {
    // exp(1e4) overflows any float; subtracting the max keeps it exact.
    let row = [1.0e4f32, 1.0e4 - 1.0, 1.0e4 - 2.0];
    let mut out = [0.0; 3];
    log_softmax(&row, &mut out);
    let shifted = ref_logprobs(&[0.0, -1.0, -2.0]);
    for (o, r) in out.iter().zip(shifted) {
        assert!(o.is_finite());
        assert!((*o as f64 - r).abs() < 1e-6);
    }
}

#[test]
fn log_softmax_sums_to_one_over_a_large_vocabulary() {
    // 150k entries: an f32 accumulation would drift; f64 does not.
    let row: Vec<f32> = (0..150_000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let mut out = vec![0.0; row.len()];
    log_softmax(&row, &mut out);
    let s: f64 = out.iter().map(|&l| (l as f64).exp()).sum();
    assert!((s - 1.0).abs() < 1e-4, "sum = {s}");
}

#[test]
fn log_softmax_masks_nan_and_handles_infinities() {
    let mut out = [0.0; 3];
    log_softmax(&[f32::NAN, 0.0, 0.0], &mut out);
    assert_eq!(out[0], f32::NEG_INFINITY);
    assert!((out[1] - (0.5f32).ln()).abs() < 1e-7);

    log_softmax(&[f32::INFINITY, 5.0, f32::INFINITY], &mut out);
    assert!((out[0] - (0.5f32).ln()).abs() < 1e-7);
    assert_eq!(out[1], f32::NEG_INFINITY);

    log_softmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY], &mut out);
    assert!(
        out.iter().all(|x| x.is_nan()),
        "undefined distribution -> NaN"
    );
}

#[test]
fn entropy_of_uniform_is_ln_n() {
    for n in [1usize, 2, 3, 10, 1000, 32_000] {
        let h = entropy(&vec![0.37; n]);
        assert!(
            (h as f64 - (n as f64).ln()).abs() < 1e-5,
            "n = {n}: H = {h}"
        );
    }
}

#[test]
fn entropy_of_one_hot_is_zero() {
    let mut row = vec![f32::NEG_INFINITY; 50];
    row[17] = 4.0;
    assert_eq!(entropy(&row), 0.0);
    // Nearly one-hot through huge gaps rather than -inf.
    let h = entropy(&[0.0, -1.0e4, -1.0e4]);
    assert!((0.0..1e-30).contains(&h));
    // +inf entries share the mass: two of them = ln 2.
    let h = entropy(&[f32::INFINITY, 1.0, f32::INFINITY]);
    assert!((h - 2f32.ln()).abs() < 1e-7);
    assert!(entropy(&[]).is_nan());
}

#[test]
fn entropy_matches_direct_computation() {
    let lp = ref_logprobs(&ROW);
    let h_ref: f64 = -lp.iter().map(|&l| l.exp() * l).sum::<f64>();
    assert!((entropy(&ROW) as f64 - h_ref).abs() < 1e-6);
}

#[test]
fn token_stats_match_direct_f64_computation() {
    let lp = ref_logprobs(&ROW);
    let h_ref: f64 = -lp.iter().map(|&l| l.exp() * l).sum::<f64>();
    // Descending order with ties by id: 2, 3, 6, 0, 5, 1, 4.
    let expected_rank = [3, 5, 0, 1, 6, 4, 2];
    for t in 0..ROW.len() {
        let s = token_stats(&ROW, t as u32);
        assert!((s.logprob as f64 - lp[t]).abs() < 1e-6, "token {t}");
        assert!((s.entropy as f64 - h_ref).abs() < 1e-6);
        assert_eq!(s.rank, expected_rank[t], "token {t}");
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn token_stats_rejects_out_of_range_token() {
    token_stats(&[0.0, 1.0], 2);
}

#[test]
fn argmax_ties_go_to_lowest_index_and_nan_is_ignored() {
    assert_eq!(argmax(&ROW), 2);
    assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 1.0]), 1);
    assert_eq!(argmax(&[-0.0, 0.0]), 0, "-0 and +0 are a tie");
    assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    assert_eq!(argmax(&[1.0, f32::INFINITY, f32::INFINITY]), 1);
}

#[test]
fn top_k_logprobs_are_sorted_with_ties_by_id() {
    let lp = ref_logprobs(&ROW);
    let top = top_k_logprobs(&ROW, 4);
    let ids: Vec<u32> = top.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, vec![2, 3, 6, 0]);
    for (id, l) in top {
        assert!((l as f64 - lp[id as usize]).abs() < 1e-6);
    }
    // k beyond the vocabulary is clamped; k = 0 is empty.
    let all = top_k_logprobs(&ROW, 100);
    assert_eq!(all.len(), ROW.len());
    assert_eq!(all.last().unwrap().0, 4);
    assert!(top_k_logprobs(&ROW, 0).is_empty());
    assert!(top_k_logprobs(&[], 3).is_empty());
    // Ranks agree with the top-k order.
    for (r, &(id, _)) in all.iter().enumerate() {
        assert_eq!(token_stats(&ROW, id).rank, r);
    }
}
