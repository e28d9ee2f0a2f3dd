//! SIMD kernels against the scalar reference.
//!
//! Bound: the kernels compute the same per-block integer sums, so they may
//! differ only by `f32` summation order: |simd - ref| <= 1e-5 * S + 1e-6,
//! where S = sum_i |w_i * a_i| over the dequantised operands.

mod common;

use common::{dequantize, quantize, random_row, Rng};
use quant::{kernels, reference, GgmlType};

const DOT_TYPES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
];

/// Types that must have an AVX2 kernel when the CPU supports it.
const AVX2_REQUIRED: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn abs_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let wf = dequantize(ty, w, n);
    let af = dequantize(ty.vec_dot_type(), a, n);
    wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum()
}

/// Lengths in elements: 1, 2, 7, 16 blocks (floats: odd lengths too).
fn lengths(ty: GgmlType) -> Vec<usize> {
    if ty.block_size() == 1 {
        vec![1, 7, 8, 33, 64, 100, 1000]
    } else {
        [1, 2, 7, 16].iter().map(|b| b * ty.block_size()).collect()
    }
}

#[test]
fn dispatch_uses_the_best_available_kernels() {
    let env = |k: &str| std::env::var_os(k).is_some();
    let expect = if !kernels::avx2_available() || env("QUANT_FORCE_SCALAR") {
        "scalar"
    } else if kernels::avx512_available() && !env("QUANT_FORCE_AVX2") {
        "avx512"
    } else {
        "avx2"
    };
    assert_eq!(quant::kernel_name(), expect);
}

#[test]
fn avx2_dot_matches_reference() {
    if !kernels::avx2_available() {
        eprintln!("AVX2 not available; skipping");
        return;
    }
    let mut rng = Rng::new(10);
    for ty in DOT_TYPES {
        for n in lengths(ty) {
            for _ in 0..20 {
                let w = random_row(&mut rng, ty, n / ty.block_size());
                let x = rng.normal_vec(n, 2.0);
                let a = quantize(ty.vec_dot_type(), &x);
                let r = reference::vec_dot(ty, n, &w, &a);
                let Some(s) = kernels::vec_dot_avx2(ty, n, &w, &a) else {
                    assert!(!AVX2_REQUIRED.contains(&ty), "{ty} has no AVX2 kernel");
                    continue;
                };
                let bound = 1e-5 * abs_dot(ty, n, &w, &a) + 1e-6;
                assert!(
                    (s - r).abs() <= bound,
                    "{ty} n={n}: avx2 {s} ref {r} bound {bound}"
                );
                // The public dispatcher agrees too.
                let v = quant::vec_dot(ty, n, &w, &a);
                assert!((v - r).abs() <= bound, "{ty} n={n}: dispatch {v} ref {r}");
            }
        }
    }
}

/// Extreme quants: all weights and activations at their range limits, where
/// 16-bit intermediate sums would saturate if mishandled.
#[test]
fn avx2_dot_extremes() {
    if !kernels::avx2_available() {
        return;
    }
    let mut rng = Rng::new(11);
    for ty in AVX2_REQUIRED {
        if ty.block_size() == 1 {
            continue;
        }
        let n = 4 * ty.block_size();
        for fill in [0x00u8, 0xff, 0x80, 0x7f, 0x88] {
            let mut w = random_row(&mut rng, ty, 4);
            let keep = random_row(&mut rng, ty, 4);
            // Overwrite quant bytes with `fill`, restore the f16 scales.
            for (b, k) in w
                .chunks_mut(ty.type_size())
                .zip(keep.chunks(ty.type_size()))
            {
                b.fill(fill);
                for o in scale_offsets(ty) {
                    b[*o..*o + 2].copy_from_slice(&k[*o..*o + 2]);
                }
            }
            for sign in [1.0f32, -1.0] {
                // |x| equal everywhere: every activation quant is +-127.
                let x: Vec<f32> = (0..n)
                    .map(|i| if i % 3 == 0 { -sign } else { sign })
                    .collect();
                let a = quantize(ty.vec_dot_type(), &x);
                let r = reference::vec_dot(ty, n, &w, &a);
                let s = kernels::vec_dot_avx2(ty, n, &w, &a).unwrap();
                let bound = 1e-5 * abs_dot(ty, n, &w, &a) + 1e-6;
                assert!((s - r).abs() <= bound, "{ty} fill={fill:#x}: {s} vs {r}");
            }
        }
    }
}

fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

#[test]
fn multi_equals_single_bitwise() {
    let mut rng = Rng::new(12);
    for ty in DOT_TYPES {
        let n = 3 * ty.block_size() * if ty.block_size() == 1 { 40 } else { 1 };
        let w = random_row(&mut rng, ty, n / ty.block_size());
        for cols in 0..10 {
            let acts: Vec<Vec<u8>> = (0..cols)
                .map(|_| quantize(ty.vec_dot_type(), &rng.normal_vec(n, 1.0)))
                .collect();
            let refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
            let mut out = vec![f32::NAN; cols];
            quant::vec_dot_multi(ty, n, &w, &refs, &mut out);
            for (j, a) in refs.iter().enumerate() {
                let single = quant::vec_dot(ty, n, &w, a);
                assert_eq!(out[j].to_bits(), single.to_bits(), "{ty} cols={cols} j={j}");
            }
            if kernels::avx2_available() {
                let mut out2 = vec![f32::NAN; cols];
                if kernels::vec_dot_multi_avx2(ty, n, &w, &refs, &mut out2) {
                    for (j, a) in refs.iter().enumerate() {
                        let single = kernels::vec_dot_avx2(ty, n, &w, a).unwrap();
                        assert_eq!(out2[j].to_bits(), single.to_bits(), "{ty} avx2 j={j}");
                    }
                }
            }
        }
    }
}

#[test]
fn avx2_quantizers_match_reference_bytes() {
    if !kernels::avx2_available() {
        return;
    }
    let mut rng = Rng::new(13);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
        for nb in [1usize, 2, 5] {
            let n = nb * ty.block_size();
            for trial in 0..50 {
                let mut x = rng.normal_vec(n, 10.0);
                match trial % 5 {
                    // exact ties after scaling
                    1 => x.iter_mut().for_each(|v| *v = (*v * 2.0).round() / 2.0),
                    // repeated magnitudes with both signs (Q8_K sign choice)
                    2 => x.iter_mut().enumerate().for_each(|(i, v)| {
                        *v = if i % 7 == 0 {
                            -4.0
                        } else if i % 5 == 0 {
                            4.0
                        } else {
                            *v % 4.0
                        }
                    }),
                    // a zero block
                    3 => x[..ty.block_size()].fill(0.0),
                    // tiny values (f16 subnormal d)
                    4 => x.iter_mut().for_each(|v| *v *= 1e-7),
                    _ => {}
                }
                let mut a = vec![0u8; ty.row_bytes(n).unwrap()];
                let mut b = vec![0u8; a.len()];
                reference::quantize_row(ty, &x, &mut a).unwrap();
                kernels::quantize_row_avx2(ty, &x, &mut b).unwrap();
                assert_eq!(a, b, "{ty} nb={nb} trial={trial}");
            }
        }
    }
}
