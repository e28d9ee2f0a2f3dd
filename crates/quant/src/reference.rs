//! Plain scalar implementations: the readable reference for every format.
//!
//! Dot products accumulate each block's (or sub-block's) integer products
//! exactly in `i32`, as ggml does, and only then scale by the `f32` block
//! scales. The SIMD kernels compute the same integers, so they differ from
//! these only in the order of the final `f32` additions.

use crate::blocks::{self, off::*, *};
use crate::types::{GgmlType, QK, QK_K};

// ---------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------

/// Dequantises a row. `src` must hold exactly `dst.len()` elements of `ty`
/// (checked by the caller, [`crate::dequantize_row`]).
pub(crate) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let ts = ty.type_size();
    let bs = ty.block_size();
    for (b, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
        match ty {
            GgmlType::F32 => y[0] = f32_at(b, 0),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => y[0] = bf16_bits_to_f32(u16_at(b, 0)),
            GgmlType::Q4_0 => dequant_q4_0(b, y),
            GgmlType::Q4_1 => dequant_q4_1(b, y),
            GgmlType::Q5_0 => dequant_q5_0(b, y),
            GgmlType::Q5_1 => dequant_q5_1(b, y),
            GgmlType::Q8_0 => dequant_q8_0(b, y),
            GgmlType::Q8_1 => dequant_q8_1(b, y),
            GgmlType::Q2K => dequant_q2k(b, y),
            GgmlType::Q3K => dequant_q3k(b, y),
            GgmlType::Q4K => dequant_q4k(b, y),
            GgmlType::Q5K => dequant_q5k(b, y),
            GgmlType::Q6K => dequant_q6k(b, y),
            GgmlType::Q8K => dequant_q8k(b, y),
        }
    }
}

/// The 32 4-bit quants of a legacy block, in element order (0..16 are the low
/// nibbles of `qs`, 16..32 the high nibbles).
#[inline(always)]
fn nibbles32(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// The 32 5-bit quants of a Q5_0/Q5_1 block (nibble plus bit `k` of `qh`).
#[inline(always)]
fn quints32(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = nibbles32(qs);
    for (k, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> k) & 1) as u8) << 4;
    }
    q
}

fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(nibbles32(&b[Q4_0_QS..])) {
        *y = (q as i32 - 8) as f32 * d;
    }
}

fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, Q4_1_M);
    for (y, q) in y.iter_mut().zip(nibbles32(&b[Q4_1_QS..])) {
        *y = q as f32 * d + m;
    }
}

fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = quints32(u32_at(b, Q5_0_QH), &b[Q5_0_QS..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, Q5_1_M);
    let q = quints32(u32_at(b, Q5_1_QH), &b[Q5_1_QS..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = q as f32 * d + m;
    }
}

fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[Q8_0_QS..Q8_0_QS + QK]) {
        *y = q as i8 as f32 * d;
    }
}

fn dequant_q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[Q8_1_QS..Q8_1_QS + QK]) {
        *y = q as i8 as f32 * d;
    }
}

/// Q2_K: 16 sub-blocks of 16. Sub-block `s` has scale `scales[s] & 15` and
/// min `scales[s] >> 4`. Element `e = 128*h + 32*j + l` (h < 2, j < 4, l < 32)
/// is bits `2j..2j+2` of `qs[32h + l]`; it belongs to sub-block `e / 16`.
fn dequant_q2k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, Q2K_D);
    let dmin = f16_at(b, Q2K_DMIN);
    let sc = &b[Q2K_SCALES..Q2K_SCALES + 16];
    let qs = &b[Q2K_QS..Q2K_QS + 64];
    for (e, y) in y.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
        let q = (qs[32 * h + l] >> (2 * j)) & 3;
        let s = sc[e / 16];
        let dl = d * (s & 0x0f) as f32;
        let ml = dmin * (s >> 4) as f32;
        *y = dl * q as f32 - ml;
    }
}

/// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales ([`q3k_scales`]).
/// Element `e = 128*h + 32*j + l` has low bits `2j..2j+2` of `qs[32h + l]` and
/// high bit `4h + j` of `hmask[l]`; value `(low - (high ? 0 : 4))`.
fn dequant_q3k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, Q3K_D);
    let sc = q3k_scales(&b[Q3K_SCALES..Q3K_SCALES + 12]);
    for (e, y) in y.iter_mut().enumerate() {
        let q = q3k_quant(b, e);
        let dl = d * sc[e / 16] as f32;
        *y = dl * q as f32;
    }
}

/// The signed 3-bit quant (-4..=3) of element `e` of a Q3_K block.
#[inline(always)]
fn q3k_quant(b: &[u8], e: usize) -> i32 {
    let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
    let low = ((b[Q3K_QS + 32 * h + l] >> (2 * j)) & 3) as i32;
    let high = (b[Q3K_HMASK + l] >> (4 * h + j)) & 1;
    low - if high != 0 { 0 } else { 4 }
}

/// The 4-bit quant of element `e` of a Q4_K/Q5_K `qs` field: element
/// `e = 64*j + 32*hi + l` is the low (`hi = 0`) or high nibble of `qs[32j + l]`.
#[inline(always)]
fn k_nibble(qs: &[u8], e: usize) -> u8 {
    let (j, hi, l) = (e / 64, (e % 64) / 32, e % 32);
    (qs[32 * j + l] >> (4 * hi)) & 0x0f
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min ([`k4_scales_mins`]).
fn dequant_q4k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, Q4K_D);
    let dmin = f16_at(b, Q4K_DMIN);
    let (sc, mn) = k4_scales_mins(&b[Q4K_SCALES..Q4K_SCALES + 12]);
    let qs = &b[Q4K_QS..Q4K_QS + 128];
    for (e, y) in y.iter_mut().enumerate() {
        let d1 = d * sc[e / 32] as f32;
        let m1 = dmin * mn[e / 32] as f32;
        *y = d1 * k_nibble(qs, e) as f32 - m1;
    }
}

/// The 5-bit quant of element `e` of a Q5_K block: the Q4_K nibble plus bit
/// `e / 32` of `qh[e % 32]` as bit 4.
#[inline(always)]
fn q5k_quant(b: &[u8], e: usize) -> u8 {
    let high = (b[Q5K_QH + e % 32] >> (e / 32)) & 1;
    k_nibble(&b[Q5K_QS..Q5K_QS + 128], e) | (high << 4)
}

fn dequant_q5k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, Q5K_D);
    let dmin = f16_at(b, Q5K_DMIN);
    let (sc, mn) = k4_scales_mins(&b[Q5K_SCALES..Q5K_SCALES + 12]);
    for (e, y) in y.iter_mut().enumerate() {
        let d1 = d * sc[e / 32] as f32;
        let m1 = dmin * mn[e / 32] as f32;
        *y = d1 * q5k_quant(b, e) as f32 - m1;
    }
}

/// The signed 6-bit quant (-32..=31) of element `e` of a Q6_K block.
///
/// Element `e = 128*h + 32*k + l` (h < 2, k < 4, l < 32): low nibble from
/// `ql[64h + 32*(k&1) + l]` (low nibble for k < 2, high for k >= 2), top two
/// bits are bits `2k..2k+2` of `qh[32h + l]`. Sub-block (scale) is `e / 16`.
#[inline(always)]
fn q6k_quant(b: &[u8], e: usize) -> i32 {
    let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
    let low = (b[Q6K_QL + 64 * h + 32 * (k & 1) + l] >> (4 * (k / 2))) & 0x0f;
    let high = (b[Q6K_QH + 32 * h + l] >> (2 * k)) & 3;
    (low | (high << 4)) as i32 - 32
}

fn dequant_q6k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, Q6K_D);
    for (e, y) in y.iter_mut().enumerate() {
        let sc = b[Q6K_SCALES + e / 16] as i8;
        // ggml evaluates `d * sc * q` left to right.
        *y = d * sc as f32 * q6k_quant(b, e) as f32;
    }
}

fn dequant_q8k(b: &[u8], y: &mut [f32]) {
    let d = f32_at(b, Q8K_D);
    for (y, &q) in y.iter_mut().zip(&b[Q8K_QS..Q8K_QS + QK_K]) {
        *y = d * q as i8 as f32;
    }
}

// ---------------------------------------------------------------------------
// Activation quantisation
// ---------------------------------------------------------------------------

/// Scalar version of [`crate::quantize_row`] (same validation, same bytes).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), crate::QuantError> {
    crate::check_quantize_args(ty, src, dst)?;
    quantize(ty, src, dst);
    Ok(())
}

/// Quantises a row to an activation type. Lengths are checked by the caller.
///
/// Q8_0/Q8_1 follow what llama.cpp's x86 build (AVX/AVX2/AVX-512) runs,
/// which differs from the portable `quantize_row_q8_0_ref`:
/// the inverse scale is `127 / amax` (not `1 / (amax / 127)`), and values are
/// rounded half-to-even (`_mm256_round_ps(_MM_ROUND_NEAREST)`), not with
/// `roundf`'s half-away-from-zero. Q8_K has no x86 SIMD quantiser in ggml, so
/// `quantize_row_q8_K_ref` is followed (its `nearest_int` is also
/// round-half-even). The AVX2 versions in `x86` produce identical bytes.
pub(crate) fn quantize(ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(x) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(x) {
                d.copy_from_slice(&f32_to_f16_bits(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(x) {
                d.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (d, v) in dst.chunks_exact_mut(Q8_0_BYTES).zip(x.chunks_exact(QK)) {
                quantize_block_q8(v, d, false);
            }
        }
        GgmlType::Q8_1 => {
            for (d, v) in dst.chunks_exact_mut(Q8_1_BYTES).zip(x.chunks_exact(QK)) {
                quantize_block_q8(v, d, true);
            }
        }
        GgmlType::Q8K => {
            for (d, v) in dst.chunks_exact_mut(Q8K_BYTES).zip(x.chunks_exact(QK_K)) {
                quantize_block_q8k(v, d);
            }
        }
        _ => unreachable!("not an activation type: {ty}"),
    }
}

/// One Q8_0 (or, with `with_sum`, Q8_1) block of 32 values.
fn quantize_block_q8(x: &[f32], out: &mut [u8], with_sum: bool) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let qs_off = if with_sum { Q8_1_QS } else { Q8_0_QS };
    let mut sum = 0i32;
    for (o, v) in out[qs_off..qs_off + QK].iter_mut().zip(x) {
        // `as i32` saturates, like cvtps2dq followed by the saturating packs.
        let q = (v * id).round_ties_even() as i32;
        sum += q;
        *o = q.clamp(-128, 127) as i8 as u8;
    }
    out[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    if with_sum {
        let s = d * sum as f32;
        out[Q8_1_S..Q8_1_S + 2].copy_from_slice(&f32_to_f16_bits(s).to_le_bytes());
    }
}

/// ggml's `nearest_int`: round half to even through the float adder (valid
/// for |x| < 2^22, which always holds here).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// One Q8_K block of 256 values (`quantize_row_q8_K_ref`).
///
/// The scale uses the *signed* value of largest magnitude (the first one in
/// case of ties): `iscale = -127 / max`, `d = 1 / iscale`.
pub(crate) fn quantize_block_q8k(x: &[f32], out: &mut [u8]) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        // ggml leaves bsums untouched here; we zero them for determinism
        // (they are multiplied by d = 0 anyway).
        out.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let qs = &mut out[Q8K_QS..Q8K_QS + QK_K];
    for (o, &v) in qs.iter_mut().zip(x) {
        *o = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let mut bsums = [0i16; 16];
    for (s, chunk) in bsums
        .iter_mut()
        .zip(out[Q8K_QS..Q8K_QS + QK_K].chunks_exact(16))
    {
        *s = chunk.iter().map(|&q| q as i8 as i16).sum();
    }
    for (j, s) in bsums.iter().enumerate() {
        let o = Q8K_BSUMS + 2 * j;
        out[o..o + 2].copy_from_slice(&s.to_le_bytes());
    }
    out[Q8K_D..Q8K_D + 4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

// ---------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------

/// Scalar reference dot product of one weight row (type `ty`, `n` elements)
/// with activations quantised to `ty.vec_dot_type()`.
///
/// Panics if the slices are shorter than the row sizes.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    crate::check_dot_lengths(ty, n, w, act);
    let nb = n / ty.block_size();
    let wb = w.chunks_exact(ty.type_size()).take(nb);
    let ab = act.chunks_exact(ty.vec_dot_type().type_size());
    match ty {
        GgmlType::F32 => wb.zip(ab).map(|(w, a)| f32_at(w, 0) * f32_at(a, 0)).sum(),
        GgmlType::F16 => wb.zip(ab).map(|(w, a)| f16_at(w, 0) * f16_at(a, 0)).sum(),
        GgmlType::BF16 => wb
            .zip(ab)
            .map(|(w, a)| bf16_bits_to_f32(u16_at(w, 0)) * bf16_bits_to_f32(u16_at(a, 0)))
            .sum(),
        GgmlType::Q4_0 => wb.zip(ab).map(|(w, a)| dot_q4_0(w, a)).sum(),
        GgmlType::Q4_1 => wb.zip(ab).map(|(w, a)| dot_q4_1(w, a)).sum(),
        GgmlType::Q5_0 => wb.zip(ab).map(|(w, a)| dot_q5_0(w, a)).sum(),
        GgmlType::Q5_1 => wb.zip(ab).map(|(w, a)| dot_q5_1(w, a)).sum(),
        GgmlType::Q8_0 => wb.zip(ab).map(|(w, a)| dot_q8_0(w, a)).sum(),
        GgmlType::Q8_1 => wb.zip(ab).map(|(w, a)| dot_q8_1(w, a)).sum(),
        GgmlType::Q2K => wb.zip(ab).map(|(w, a)| dot_q2k(w, a)).sum(),
        GgmlType::Q3K => wb.zip(ab).map(|(w, a)| dot_q3k(w, a)).sum(),
        GgmlType::Q4K => wb.zip(ab).map(|(w, a)| dot_q4k(w, a)).sum(),
        GgmlType::Q5K => wb.zip(ab).map(|(w, a)| dot_q5k(w, a)).sum(),
        GgmlType::Q6K => wb.zip(ab).map(|(w, a)| dot_q6k(w, a)).sum(),
        GgmlType::Q8K => wb.zip(ab).map(|(w, a)| dot_q8k(w, a)).sum(),
    }
}

/// Integer dot product of unsigned/signed weight quants with Q8 quants.
#[inline(always)]
fn idot<T: Copy + Into<i32>>(q: &[T], q8: &[u8]) -> i32 {
    q.iter()
        .zip(q8)
        .map(|(&a, &b)| a.into() * b as i8 as i32)
        .sum()
}

/// `sum_j d_w * d_a * sum_k (q_k - 8) * a_k`.
fn dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let qw = nibbles32(&w[Q4_0_QS..]).map(|v| v as i32 - 8);
    let sumi = idot(&qw, &a[Q8_0_QS..]);
    sumi as f32 * (f16_at(w, 0) * f16_at(a, 0))
}

/// `d_w * d_a * sum q*a + m_w * s_a` (`s_a = d_a * sum a`).
fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let qw = nibbles32(&w[Q4_1_QS..]);
    let sumi = idot(&qw, &a[Q8_1_QS..]);
    (f16_at(w, 0) * f16_at(a, 0)) * sumi as f32 + f16_at(w, Q4_1_M) * f16_at(a, Q8_1_S)
}

fn dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    let qw = quints32(u32_at(w, Q5_0_QH), &w[Q5_0_QS..]).map(|v| v as i32 - 16);
    let sumi = idot(&qw, &a[Q8_0_QS..]);
    sumi as f32 * (f16_at(w, 0) * f16_at(a, 0))
}

fn dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    let qw = quints32(u32_at(w, Q5_1_QH), &w[Q5_1_QS..]);
    let sumi = idot(&qw, &a[Q8_1_QS..]);
    (f16_at(w, 0) * f16_at(a, 0)) * sumi as f32 + f16_at(w, Q5_1_M) * f16_at(a, Q8_1_S)
}

fn dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let sumi: i32 = w[Q8_0_QS..Q8_0_QS + QK]
        .iter()
        .zip(&a[Q8_0_QS..Q8_0_QS + QK])
        .map(|(&x, &y)| x as i8 as i32 * y as i8 as i32)
        .sum();
    sumi as f32 * (f16_at(w, 0) * f16_at(a, 0))
}

fn dot_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let sumi: i32 = w[Q8_1_QS..Q8_1_QS + QK]
        .iter()
        .zip(&a[Q8_1_QS..Q8_1_QS + QK])
        .map(|(&x, &y)| x as i8 as i32 * y as i8 as i32)
        .sum();
    sumi as f32 * (f16_at(w, 0) * f16_at(a, 0))
}

/// Q8_K quant `e` of an activation block.
#[inline(always)]
fn q8k(a: &[u8], e: usize) -> i32 {
    a[Q8K_QS + e] as i8 as i32
}

/// Sum of the 16 Q8_K block sums weighted by `mins[j / group]`.
#[inline(always)]
fn bsums_dot(a: &[u8], mins: &[u8], group: usize) -> i32 {
    (0..16)
        .map(|j| blocks::i16_at(a, Q8K_BSUMS + 2 * j) as i32 * mins[j / group] as i32)
        .sum()
}

/// `d_a * (d_w * sum_s sc_s * sum q*a - dmin_w * sum_s m_s * sum a)`.
fn dot_q2k(w: &[u8], a: &[u8]) -> f32 {
    let sc = &w[Q2K_SCALES..Q2K_SCALES + 16];
    let qs = &w[Q2K_QS..Q2K_QS + 64];
    let mut isum = 0i32;
    for (s, &scale) in sc.iter().enumerate() {
        let mut sub = 0i32;
        for e in 16 * s..16 * s + 16 {
            let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let q = ((qs[32 * h + l] >> (2 * j)) & 3) as i32;
            sub += q * q8k(a, e);
        }
        isum += (scale & 0x0f) as i32 * sub;
    }
    let mins: [u8; 16] = std::array::from_fn(|s| sc[s] >> 4);
    let summs = bsums_dot(a, &mins, 1);
    let da = f32_at(a, Q8K_D);
    let dall = da * f16_at(w, Q2K_D);
    let dmin = da * f16_at(w, Q2K_DMIN);
    dall * isum as f32 - dmin * summs as f32
}

fn dot_q3k(w: &[u8], a: &[u8]) -> f32 {
    let sc = q3k_scales(&w[Q3K_SCALES..Q3K_SCALES + 12]);
    let mut isum = 0i32;
    for (s, &scale) in sc.iter().enumerate() {
        let sub: i32 = (16 * s..16 * s + 16)
            .map(|e| q3k_quant(w, e) * q8k(a, e))
            .sum();
        isum += scale as i32 * sub;
    }
    let d = f16_at(w, Q3K_D) * f32_at(a, Q8K_D);
    d * isum as f32
}

fn dot_q4k(w: &[u8], a: &[u8]) -> f32 {
    let (sc, mn) = k4_scales_mins(&w[Q4K_SCALES..Q4K_SCALES + 12]);
    let qs = &w[Q4K_QS..Q4K_QS + 128];
    let mut isum = 0i32;
    for (s, &scale) in sc.iter().enumerate() {
        let sub: i32 = (32 * s..32 * s + 32)
            .map(|e| k_nibble(qs, e) as i32 * q8k(a, e))
            .sum();
        isum += scale as i32 * sub;
    }
    let summs = bsums_dot(a, &mn, 2);
    let da = f32_at(a, Q8K_D);
    let d = f16_at(w, Q4K_D) * da;
    let dmin = f16_at(w, Q4K_DMIN) * da;
    d * isum as f32 - dmin * summs as f32
}

fn dot_q5k(w: &[u8], a: &[u8]) -> f32 {
    let (sc, mn) = k4_scales_mins(&w[Q5K_SCALES..Q5K_SCALES + 12]);
    let mut isum = 0i32;
    for (s, &scale) in sc.iter().enumerate() {
        let sub: i32 = (32 * s..32 * s + 32)
            .map(|e| q5k_quant(w, e) as i32 * q8k(a, e))
            .sum();
        isum += scale as i32 * sub;
    }
    let summs = bsums_dot(a, &mn, 2);
    let da = f32_at(a, Q8K_D);
    let d = f16_at(w, Q5K_D) * da;
    let dmin = f16_at(w, Q5K_DMIN) * da;
    d * isum as f32 - dmin * summs as f32
}

fn dot_q6k(w: &[u8], a: &[u8]) -> f32 {
    let mut isum = 0i32;
    for s in 0..16 {
        let sub: i32 = (16 * s..16 * s + 16)
            .map(|e| q6k_quant(w, e) * q8k(a, e))
            .sum();
        isum += (w[Q6K_SCALES + s] as i8) as i32 * sub;
    }
    let d = f16_at(w, Q6K_D) * f32_at(a, Q8K_D);
    d * isum as f32
}

fn dot_q8k(w: &[u8], a: &[u8]) -> f32 {
    let sumi: i32 = (0..QK_K).map(|e| q8k(w, e) * q8k(a, e)).sum();
    f32_at(w, Q8K_D) * f32_at(a, Q8K_D) * sumi as f32
}
