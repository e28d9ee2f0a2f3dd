//! A vectorisable `exp` for the draw's softmax weights.
//!
//! The draw needs `exp(logit - max)` for every candidate: 49k calls to the
//! libm `exp` cost about 250 µs per token, most of a sampling step. This
//! version is branch-free (range reduction by ln 2 in two parts, a degree-7
//! polynomial, the power of two built from bits), so the compiler runs it
//! four lanes at a time. Its relative error is below 4e-7 on `[-87, 0]`
//! (tested against `f64::exp`), the accuracy of llama.cpp's own `expf`
//! softmax; probabilities are then accumulated in `f64`. Statistics
//! (entropy, log-probabilities) keep using the exact `f64` path.

/// `exp(x)` for `x <= 0` (the softmax weight of a logit `x` below the
/// maximum). Returns exactly 0 for `x < -87` (and `-inf`), where the true
/// value is below 2^-125; relative error < 4e-7 elsewhere. Inputs above 0 are
/// a caller bug and give garbage, never a panic.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low
    // mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let shifted = xc * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO; // |r| <= ln2 / 2 (plus rounding)
                                            // exp(r) by its Taylor series to r^7: truncation error < 6e-9 here.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from the integer in `shifted`'s low bits: n in [-126, 0].
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = p * scale;
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// Writes `exp_neg(x - max)` for every `x` into `out` (cleared first) and
/// returns the sum in `f64`, accumulated in eight lanes so it vectorises.
pub(crate) fn exp_shifted_into(
    xs: impl ExactSizeIterator<Item = f32>,
    max: f32,
    out: &mut Vec<f32>,
) -> f64 {
    out.clear();
    out.extend(xs.map(|x| exp_neg(x - max)));
    sum_f64(out)
}

/// `(sum e^d, sum e^d d)` with `d = logit(x) - max` over `xs`, in `f64`,
/// eight lanes at a time. `-inf` logits contribute exactly 0 to both.
pub(crate) fn exp_moments<T>(xs: &[T], logit: impl Fn(&T) -> f32, max: f32) -> (f64, f64) {
    let mut s0 = [0.0f64; 8];
    let mut s1 = [0.0f64; 8];
    let term = |x: &T| {
        // Clamped so that -inf gives 0 * -88 = 0, not 0 * -inf = NaN.
        let d = (logit(x) - max).max(-88.0);
        let w = exp_neg(d);
        (f64::from(w), f64::from(w) * f64::from(d))
    };
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for ((a0, a1), x) in s0.iter_mut().zip(s1.iter_mut()).zip(c) {
            let (w, wd) = term(x);
            *a0 += w;
            *a1 += wd;
        }
    }
    let (mut t0, mut t1) = (0.0, 0.0);
    for x in rest {
        let (w, wd) = term(x);
        t0 += w;
        t1 += wd;
    }
    (s0.iter().sum::<f64>() + t0, s1.iter().sum::<f64>() + t1)
}

/// Sum of `f32` values in `f64`, eight partial sums at a time.
pub(crate) fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    let tail: f64 = rest.iter().map(|&x| f64::from(x)).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_within_4e7_of_f64_exp() {
        let mut worst = 0.0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.0f32 * i as f32 / n as f32;
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "max relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn exp_neg_masks_far_and_infinite_inputs() {
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-87.5), 0.0);
        assert_eq!(exp_neg(-1e30), 0.0);
        assert!(exp_neg(-86.9) > 0.0);
    }

    #[test]
    fn sum_f64_matches_a_plain_sum() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        let plain: f64 = xs.iter().map(|&x| f64::from(x)).sum();
        assert!((sum_f64(&xs) - plain).abs() < 1e-12);
    }
}
