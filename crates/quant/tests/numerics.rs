//! Round trips, hand-checked blocks and formula consistency.

mod common;

use common::{dequantize, quantize, random_row, weight_quant, Rng};
use quant::{reference, GgmlType, QuantError};

const ALL: [GgmlType; 15] = GgmlType::ALL;
const WEIGHT_TYPES: [GgmlType; 14] = [
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

#[test]
fn type_table() {
    for ty in ALL {
        assert_eq!(GgmlType::from_u32(ty.id()), Some(ty));
    }
    assert_eq!(GgmlType::from_u32(4), None); // removed Q4_2
    assert_eq!(GgmlType::from_u32(30), Some(GgmlType::BF16));
    assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    assert_eq!(GgmlType::Q4_0.name(), "Q4_0");
    let sizes: Vec<(usize, usize)> = ALL
        .iter()
        .map(|t| (t.block_size(), t.type_size()))
        .collect();
    assert_eq!(
        sizes,
        [
            (1, 4),
            (1, 2),
            (32, 18),
            (32, 20),
            (32, 22),
            (32, 24),
            (32, 34),
            (32, 36),
            (256, 84),
            (256, 110),
            (256, 144),
            (256, 176),
            (256, 210),
            (256, 292),
            (1, 2)
        ]
    );
    assert_eq!(GgmlType::Q4K.row_bytes(4096), Some(16 * 144));
    assert_eq!(GgmlType::Q4K.row_bytes(100), None);
    assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
    assert_eq!(GgmlType::Q4_0.vec_dot_type(), GgmlType::Q8_0);
    assert_eq!(GgmlType::Q5_0.vec_dot_type(), GgmlType::Q8_0);
    assert_eq!(GgmlType::Q8_0.vec_dot_type(), GgmlType::Q8_0);
    assert_eq!(GgmlType::Q4_1.vec_dot_type(), GgmlType::Q8_1);
    assert_eq!(GgmlType::Q5_1.vec_dot_type(), GgmlType::Q8_1);
    for t in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert_eq!(t.vec_dot_type(), GgmlType::Q8K);
    }
    for t in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        assert_eq!(t.vec_dot_type(), t);
    }
}

/// Maximum |a - b| per element must not exceed `bound(block index)`.
fn assert_close_blocks(x: &[f32], y: &[f32], bs: usize, bound: impl Fn(usize) -> f32, what: &str) {
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        let bd = bound(i / bs);
        assert!(
            (a - b).abs() <= bd,
            "{what}: element {i}: {a} vs {b} (bound {bd})"
        );
    }
}

fn block_amax(x: &[f32], bs: usize) -> Vec<f32> {
    x.chunks(bs)
        .map(|c| c.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect()
}

fn block_range(x: &[f32], bs: usize) -> Vec<(f32, f32)> {
    x.chunks(bs)
        .map(|c| {
            c.iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)))
        })
        .collect()
}

#[test]
fn legacy_weight_round_trips() {
    let mut rng = Rng::new(1);
    for _ in 0..20 {
        let x = rng.normal_vec(32 * 9, 1.0);
        let am = block_amax(&x, 32);
        let rg = block_range(&x, 32);

        // Q4_0: step d = amax/8; the extreme opposite to the max clamps to
        // 7/8, so the error can reach one step.
        let y = dequantize(GgmlType::Q4_0, &weight_quant::q4_0(&x), x.len());
        assert_close_blocks(&x, &y, 32, |b| am[b] / 8.0 * 1.02 + 1e-6, "Q4_0");
        // Q5_0: step amax/16, same clamping.
        let y = dequantize(GgmlType::Q5_0, &weight_quant::q5_0(&x), x.len());
        assert_close_blocks(&x, &y, 32, |b| am[b] / 16.0 * 1.02 + 1e-6, "Q5_0");
        // Q4_1/Q5_1: half a step plus the f16 rounding of min.
        let y = dequantize(GgmlType::Q4_1, &weight_quant::q4_1(&x), x.len());
        assert_close_blocks(
            &x,
            &y,
            32,
            |b| (rg[b].1 - rg[b].0) / 15.0 * 0.52 + rg[b].0.abs() * 1e-3 + 1e-6,
            "Q4_1",
        );
        let y = dequantize(GgmlType::Q5_1, &weight_quant::q5_1(&x), x.len());
        assert_close_blocks(
            &x,
            &y,
            32,
            |b| (rg[b].1 - rg[b].0) / 31.0 * 0.52 + rg[b].0.abs() * 1e-3 + 1e-6,
            "Q5_1",
        );
        // Q8_0: half a step plus 127 times the f16 rounding of d.
        let y = dequantize(GgmlType::Q8_0, &weight_quant::q8_0(&x), x.len());
        assert_close_blocks(&x, &y, 32, |b| am[b] / 127.0 * 0.57 + 1e-6, "Q8_0");
    }
}

#[test]
fn activation_round_trips() {
    let mut rng = Rng::new(2);
    for _ in 0..20 {
        let x = rng.normal_vec(256 * 3, 3.0);
        for (ty, bs, tol) in [
            (GgmlType::Q8_0, 32, 0.57),
            (GgmlType::Q8_1, 32, 0.57),
            // Q8_K keeps d in f32: just half a step (plus float slop).
            (GgmlType::Q8K, 256, 0.5001),
        ] {
            let am = block_amax(&x, bs);
            let y = dequantize(ty, &quantize(ty, &x), x.len());
            assert_close_blocks(&x, &y, bs, |b| am[b] / 127.0 * tol, ty.name());
        }
        let y = dequantize(GgmlType::F16, &quantize(GgmlType::F16, &x), x.len());
        assert_close_blocks(&x, &y, 1, |b| x[b].abs() * 4.9e-4, "F16");
        let y = dequantize(GgmlType::BF16, &quantize(GgmlType::BF16, &x), x.len());
        assert_close_blocks(&x, &y, 1, |b| x[b].abs() * 3.91e-3, "BF16");
        let y = dequantize(GgmlType::F32, &quantize(GgmlType::F32, &x), x.len());
        assert_eq!(x, y);
    }
}

#[test]
fn q8_1_sum_field() {
    let mut rng = Rng::new(3);
    let x = rng.normal_vec(64, 1.0);
    let q = quantize(GgmlType::Q8_1, &x);
    for b in q.chunks(36) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let s = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
        let sum: i32 = b[4..36].iter().map(|&v| v as i8 as i32).sum();
        // s = f16(d_f32 * sum); compare against the f16-rounded d loosely.
        assert!((s - d * sum as f32).abs() <= (d * sum as f32).abs() * 2e-3 + 1e-6);
    }
}

#[test]
fn activation_rounding_is_half_even() {
    // amax = 127 gives id = 1, so x * id is exact: 2.5 -> 2, 3.5 -> 4,
    // -2.5 -> -2 (roundf would give 3, 4, -3).
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[3] = -2.5;
    let q = quantize(GgmlType::Q8_0, &x);
    assert_eq!(half::f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
    assert_eq!(&q[2..6], &[127u8, 2, 4, (-2i8) as u8]);

    // Q8_K: iscale = -127/max with the *signed* max; max = -127 gives
    // iscale = 1 and d = 1.
    let mut x = [0.0f32; 256];
    x[5] = -127.0;
    x[6] = 127.0; // same magnitude, later: must not change the sign choice
    x[7] = 2.5;
    x[8] = -3.5;
    let q = quantize(GgmlType::Q8K, &x);
    assert_eq!(f32::from_le_bytes([q[0], q[1], q[2], q[3]]), 1.0);
    assert_eq!(&q[4 + 5..4 + 9], &[(-127i8) as u8, 127, 2, (-4i8) as u8]);
    // bsums[0] = -127 + 127 + 2 - 4
    assert_eq!(i16::from_le_bytes([q[260], q[261]]), -2);

    // Positive max: iscale = -1, so the quants come out negated and d = -1.
    let mut x = [0.0f32; 256];
    x[0] = 127.0;
    x[1] = 2.5;
    let q = quantize(GgmlType::Q8K, &x);
    assert_eq!(f32::from_le_bytes([q[0], q[1], q[2], q[3]]), -1.0);
    assert_eq!(&q[4..6], &[(-127i8) as u8, (-2i8) as u8]);

    // All-zero blocks.
    let z = quantize(GgmlType::Q8K, &[0.0; 256]);
    assert!(z.iter().all(|&b| b == 0));
    let z = quantize(GgmlType::Q8_0, &[0.0; 32]);
    assert!(z.iter().all(|&b| b == 0));
}

#[test]
fn hand_checked_q4_0() {
    // d = 0.5; byte j = j | (15 - j) << 4.
    let mut b = vec![0x00, 0x38];
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b, 32);
    let expect: Vec<f32> = (0..16)
        .map(|j| (j as f32 - 8.0) * 0.5)
        .chain((0..16).map(|j| (7 - j) as f32 * 0.5))
        .collect();
    assert_eq!(y, expect);
    assert_eq!(y[0], -4.0);
    assert_eq!(y[15], 3.5);
    assert_eq!(y[16], 3.5);
    assert_eq!(y[31], -4.0);
}

#[test]
fn hand_checked_q4_k() {
    // d = 1.0, dmin = 0.5; scales = [1,2,3,4,5,6,7,63], mins = [0,1,2,3,4,5,6,33].
    let mut b = vec![0x00, 0x3c, 0x00, 0x38];
    b.extend_from_slice(&[
        1,
        2,
        3,
        4 | (3 << 6), // scale 3 = 4, top bits of scale 7 = 3
        0,
        1,
        2,
        3 | (2 << 6), // min 3 = 3, top bits of min 7 = 2
        5 | (4 << 4),
        6 | (5 << 4),
        7 | (6 << 4),
        15 | (1 << 4), // scale 7 = 0b11_1111, min 7 = 0b10_0001
    ]);
    for _j in 0..4 {
        b.extend((0..32u8).map(|l| (l & 15) | ((15 - (l & 15)) << 4)));
    }
    assert_eq!(b.len(), 144);
    let y = dequantize(GgmlType::Q4K, &b, 256);
    let sc = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 63.0];
    let mn = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 33.0];
    for (e, &v) in y.iter().enumerate() {
        let (j, hi, l) = (e / 64, (e % 64) / 32, e % 32);
        let q = if hi == 0 { l % 16 } else { 15 - l % 16 } as f32;
        let s = 2 * j + hi;
        assert_eq!(v, sc[s] * q - 0.5 * mn[s], "element {e}");
    }
    assert_eq!(y[1], 1.0);
    assert_eq!(y[64 + 5], 14.0);
    assert_eq!(y[224], 928.5);
    assert_eq!(y[255], -16.5);
}

/// Transliterations of ggml's `dequantize_row_q*_K` loops (pointer-walking
/// structure), as an independent check of the index arithmetic in
/// `reference`.
mod ggml_loops {
    fn f16(b: &[u8], o: usize) -> f32 {
        half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
    }

    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    pub fn q2k(b: &[u8]) -> Vec<f32> {
        let (sc, qs) = (&b[0..16], &b[16..80]);
        let (d, min) = (f16(b, 80), f16(b, 82));
        let mut y = Vec::new();
        let mut is = 0;
        for n in 0..2 {
            let q = &qs[32 * n..];
            let mut shift = 0;
            for _ in 0..4 {
                for half in 0..2 {
                    let s = sc[is];
                    is += 1;
                    let (dl, ml) = (d * (s & 0xF) as f32, min * (s >> 4) as f32);
                    for l in 0..16 {
                        y.push(dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml);
                    }
                }
                shift += 2;
            }
        }
        y
    }

    pub fn q3k(b: &[u8]) -> Vec<f32> {
        let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
        let d_all = f16(b, 108);
        let mut aux = [
            u32::from_le_bytes(sc[0..4].try_into().unwrap()),
            u32::from_le_bytes(sc[4..8].try_into().unwrap()),
            u32::from_le_bytes(sc[8..12].try_into().unwrap()),
            0,
        ];
        let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
        let tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
        aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
        aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
        aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
        let scales: Vec<i8> = aux
            .iter()
            .flat_map(|a| a.to_le_bytes())
            .map(|v| v as i8)
            .collect();
        let mut y = Vec::new();
        let (mut is, mut m) = (0, 1u8);
        for n in 0..2 {
            let q = &qs[32 * n..];
            let mut shift = 0;
            for _ in 0..4 {
                for half in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 16 * half..16 * half + 16 {
                        let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        y.push(dl * v as f32);
                    }
                }
                shift += 2;
                m <<= 1;
            }
        }
        y
    }

    pub fn q4k(b: &[u8]) -> Vec<f32> {
        let (d, min, sc) = (f16(b, 0), f16(b, 2), &b[4..16]);
        let mut y = Vec::new();
        for j in 0..4 {
            let q = &b[16 + 32 * j..];
            let (s1, m1) = scale_min_k4(2 * j, sc);
            let (s2, m2) = scale_min_k4(2 * j + 1, sc);
            let (d1, m1) = (d * s1 as f32, min * m1 as f32);
            let (d2, m2) = (d * s2 as f32, min * m2 as f32);
            y.extend((0..32).map(|l| d1 * (q[l] & 0xF) as f32 - m1));
            y.extend((0..32).map(|l| d2 * (q[l] >> 4) as f32 - m2));
        }
        y
    }

    pub fn q5k(b: &[u8]) -> Vec<f32> {
        let (d, min, sc, qh) = (f16(b, 0), f16(b, 2), &b[4..16], &b[16..48]);
        let mut y = Vec::new();
        let (mut u1, mut u2) = (1u8, 2u8);
        for j in 0..4 {
            let ql = &b[48 + 32 * j..];
            let (s1, m1) = scale_min_k4(2 * j, sc);
            let (s2, m2) = scale_min_k4(2 * j + 1, sc);
            let (d1, m1) = (d * s1 as f32, min * m1 as f32);
            let (d2, m2) = (d * s2 as f32, min * m2 as f32);
            y.extend(
                (0..32).map(|l| {
                    d1 * ((ql[l] & 0xF) + if qh[l] & u1 != 0 { 16 } else { 0 }) as f32 - m1
                }),
            );
            y.extend(
                (0..32).map(|l| {
                    d2 * ((ql[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 }) as f32 - m2
                }),
            );
            u1 <<= 2;
            u2 <<= 2;
        }
        y
    }

    pub fn q6k(b: &[u8]) -> Vec<f32> {
        let d = f16(b, 208);
        let mut y = vec![0f32; 256];
        for n in 0..2 {
            let (ql, qh, sc) = (&b[64 * n..], &b[128 + 32 * n..], &b[192 + 8 * n..]);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let o = 128 * n;
                y[o + l] = d * sc[is] as i8 as f32 * q1 as f32;
                y[o + l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                y[o + l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                y[o + l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
        y
    }
}

#[test]
fn k_quant_dequant_matches_ggml_loop_structure() {
    let mut rng = Rng::new(4);
    type Loop = fn(&[u8]) -> Vec<f32>;
    let cases: [(GgmlType, Loop); 5] = [
        (GgmlType::Q2K, ggml_loops::q2k),
        (GgmlType::Q3K, ggml_loops::q3k),
        (GgmlType::Q4K, ggml_loops::q4k),
        (GgmlType::Q5K, ggml_loops::q5k),
        (GgmlType::Q6K, ggml_loops::q6k),
    ];
    for (ty, f) in cases {
        for _ in 0..50 {
            let row = random_row(&mut rng, ty, 3);
            let got = dequantize(ty, &row, 3 * 256);
            let expect: Vec<f32> = row.chunks(ty.type_size()).flat_map(f).collect();
            assert_eq!(got, expect, "{ty}");
            assert!(got.iter().all(|v| v.is_finite()));
        }
    }
}

/// reference::vec_dot(w, quantize(x)) must equal dot(dequantize(w), x) up to
/// the quantisation error of x: |err| <= sum |w_i| |x_i - x̂_i| plus a loose
/// allowance for the f16 rounding of scales/sums.
#[test]
fn dot_matches_dequantized_dot() {
    let mut rng = Rng::new(5);
    for ty in WEIGHT_TYPES {
        for nb in [1usize, 3, 8] {
            let n = nb * ty.block_size() * if ty.block_size() == 1 { 64 } else { 1 };
            let w = random_row(&mut rng, ty, n / ty.block_size());
            let x = rng.normal_vec(n, 1.0);
            let act_ty = ty.vec_dot_type();
            let qa = quantize(act_ty, &x);
            let xh = dequantize(act_ty, &qa, n);
            let wf = dequantize(ty, &w, n);
            let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let qerr: f64 = wf
                .iter()
                .zip(x.iter().zip(&xh))
                .map(|(w, (x, xh))| (*w as f64 * (x - xh) as f64).abs())
                .sum();
            let wmax = wf.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let slop: f64 = 2e-3 * xh.iter().map(|v| wmax * v.abs() as f64).sum::<f64>();
            let got = reference::vec_dot(ty, n, &w, &qa) as f64;
            assert!(
                (got - exact).abs() <= qerr + slop + 1e-5,
                "{ty} nb={nb}: got {got}, exact {exact}, qerr {qerr}, slop {slop}"
            );
            // The dispatched kernel must agree with the reference as well.
            let fast = quant::vec_dot(ty, n, &w, &qa) as f64;
            assert!(
                (fast - got).abs() <= 1e-4 * (qerr + slop + exact.abs()) + 1e-5,
                "{ty}"
            );
        }
    }
}

#[test]
fn errors_on_bad_lengths() {
    let mut out = vec![0f32; 32];
    assert!(matches!(
        quant::dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::LengthMismatch { .. })
    ));
    let mut out = vec![0f32; 33];
    assert!(matches!(
        quant::dequantize_row(GgmlType::Q4_0, &[0u8; 18], &mut out),
        Err(QuantError::NotBlockMultiple { .. })
    ));
    let mut dst = vec![0u8; 144];
    assert!(matches!(
        quant::quantize_row(GgmlType::Q4K, &[0.0; 256], &mut dst),
        Err(QuantError::Unsupported { .. })
    ));
    let mut dst = vec![0u8; 33];
    let e = quant::quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut dst).unwrap_err();
    assert!(e.to_string().contains("Q8_0"), "{e}");
}
