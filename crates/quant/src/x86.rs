//! AVX2 + FMA + F16C kernels (x86_64 only).
//!
//! Every kernel computes exactly the same per-block integer sums as
//! [`crate::reference`]; only the order of the `f32` accumulation differs.
//!
//! The block kernels are generic over `NC`, the number of activation rows
//! ("columns") processed together: each weight block is loaded and decoded
//! once and then multiplied with the matching block of each of the `NC`
//! activation rows. `NC = 1` is the plain dot product.
//!
//! # Safety
//! All functions here require AVX2, FMA and F16C (checked by the caller at
//! runtime) and that the row buffers hold the full rows (checked by
//! `check_dot_lengths` / the quantiser's length check).

use std::arch::x86_64::*;

use crate::blocks::{off::*, *};
use crate::types::{GgmlType, QK, QK_K};
use crate::QuantError;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Loads 32 bytes (unaligned).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// Reads an f16 at `p` and widens it (exactly) to f32.
///
/// Done with scalar integer/float ops on purpose: LLVM lowers a one-lane
/// `vcvtph2ps` to `vpinsrw` into an arbitrary (often the accumulator)
/// register, which adds a false dependency on the previous iteration's FMA
/// and roughly halves the speed of the legacy kernels.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn h2f(p: *const u8) -> f32 {
    let h = p.cast::<u16>().read_unaligned() as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let mag = if em >= 0x7c00 {
        // inf / NaN: all-ones exponent, mantissa carried over.
        f32::from_bits(0x7f80_0000 | (em & 0x3ff) << 13)
    } else {
        // Normals and subnormals: re-bias the exponent by multiplying with
        // 2^112 (exact, as it is a power of two).
        f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(mag.to_bits() | sign)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn read_f32(p: *const u8) -> f32 {
    p.cast::<f32>().read_unaligned()
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    hsum_ps128(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// How far ahead of the current weight block the kernels prefetch. Rows stream from
/// DRAM once per token; without software prefetch the loads are latency-bound
/// (measured: 11.2 vs 4.4 ns per Q4_1 block, streaming vs cache-resident; with
/// this distance streaming runs at 4.5 ns).
const PREFETCH_AHEAD: usize = 2048;

/// Prefetches the cache lines of `len` bytes starting `PREFETCH_AHEAD` bytes after
/// `p`. Prefetches never fault, so running past the end of the row is harmless; the
/// address is formed with `wrapping_add` so no out-of-bounds pointer is created.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn prefetch_ahead(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + off).cast());
        off += 64;
    }
}

/// The 32 nibbles of a legacy block's 16 `qs` bytes, in element order:
/// low nibbles in bytes 0..16, high nibbles in bytes 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Spreads the 32 bits of `x` to 32 bytes: byte `k` is 0xFF if bit `k` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bits_to_bytes(x: u32) -> __m256i {
    // Byte k takes byte k/8 of x, then tests bit k%8.
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), spread);
    let select = _mm256_set1_epi64x(i64::from_le_bytes([1, 2, 4, 8, 16, 32, 64, 128]));
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, select), select)
}

/// Sum of products of unsigned bytes `ax` with signed bytes `sy`, four
/// adjacent products per i32 lane, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

// ---------------------------------------------------------------------------
// Legacy formats (32-element blocks)
// ---------------------------------------------------------------------------

/// Kernel for weights with signed quants against Q8_0 activations:
/// `sum_blocks d_w * d_a * sum(q_w * q_a)`. `$decode` maps the block pointer
/// to `q_w` as 32 x i8; `d_w` is the block's leading f16.
macro_rules! signed_legacy_kernel {
    ($name:ident, $wbytes:expr, |$wb:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [f32; NC] {
            let mut acc = [_mm256_setzero_ps(); NC];
            for i in 0..nb {
                let $wb = w.add(i * $wbytes);
                prefetch_ahead($wb, $wbytes);
                let qx: __m256i = $decode;
                // The f16 scale d_w opens every signed legacy block.
                let dw16 = _mm_cvtsi32_si128($wb.cast::<u16>().read_unaligned() as i32);
                // |q_w| and sign transfer, so maddubs (u8 x i8) can be used.
                let ax = _mm256_sign_epi8(qx, qx);
                for c in 0..NC {
                    let ab = a[c].add(i * Q8_0_BYTES);
                    // [d_w, d_a] widened together, then d_w * d_a broadcast.
                    let da16 = _mm_cvtsi32_si128(ab.cast::<u16>().read_unaligned() as i32);
                    let pair = _mm_cvtph_ps(_mm_unpacklo_epi16(dw16, da16));
                    let d = _mm256_broadcastss_ps(_mm_mul_ss(pair, _mm_movehdup_ps(pair)));
                    let sy = _mm256_sign_epi8(loadu(ab.add(Q8_0_QS)), qx);
                    acc[c] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(ax, sy), acc[c]);
                }
            }
            let mut out = [0.0; NC];
            for c in 0..NC {
                out[c] = hsum_ps(acc[c]);
            }
            out
        }
    };
}

/// Two adjacent f16 values at `p` widened to f32 lanes 0 and 1 (lanes 2, 3 are 0).
/// `vmovd` zeroes the upper lanes, so unlike a one-lane `vcvtph2ps` from a `vpinsrw`
/// this carries no false dependency on an earlier register.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn h2f_pair(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()))
}

/// Kernel for weights with unsigned quants and a min against Q8_1
/// activations: `sum_blocks d_w * d_a * sum(q_w * q_a) + m_w * s_a`.
/// `$decode` maps the block pointer to the 32 unsigned quants; the block starts
/// with `(d_w, m_w)` as two f16, and a Q8_1 block with `(d_a, s_a)`, so one
/// vector multiply yields both `d_w * d_a` and `m_w * s_a`.
macro_rules! unsigned_legacy_kernel {
    ($name:ident, $wbytes:expr, |$wb:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [f32; NC] {
            let mut acc = [_mm256_setzero_ps(); NC];
            let mut summs = [_mm_setzero_ps(); NC];
            for i in 0..nb {
                let $wb = w.add(i * $wbytes);
                prefetch_ahead($wb, $wbytes);
                let dm_w = h2f_pair($wb);
                let qx: __m256i = $decode;
                for c in 0..NC {
                    let ab = a[c].add(i * Q8_1_BYTES);
                    // [d_w * d_a, m_w * s_a, 0, 0]
                    let prod = _mm_mul_ps(dm_w, h2f_pair(ab));
                    summs[c] = _mm_add_ps(summs[c], prod);
                    let d = _mm256_broadcastss_ps(prod);
                    let qy = loadu(ab.add(Q8_1_QS));
                    acc[c] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc[c]);
                }
            }
            let mut out = [0.0; NC];
            for c in 0..NC {
                // Lane 1 of `summs` holds the sum of m_w * s_a.
                out[c] = hsum_ps(acc[c]) + _mm_cvtss_f32(_mm_movehdup_ps(summs[c]));
            }
            out
        }
    };
}

signed_legacy_kernel!(dot_q4_0, Q4_0_BYTES, |wb| {
    let q = nibbles32(wb.add(Q4_0_QS));
    _mm256_sub_epi8(q, _mm256_set1_epi8(8))
});

signed_legacy_kernel!(dot_q5_0, Q5_0_BYTES, |wb| {
    let qh = wb.add(Q5_0_QH).cast::<u32>().read_unaligned();
    // (nibble | bit4) - 16 == nibble | (bit4 ? 0 : 0xF0) in two's complement.
    let high = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles32(wb.add(Q5_0_QS)), high)
});

signed_legacy_kernel!(dot_q8_0, Q8_0_BYTES, |wb| loadu(wb.add(Q8_0_QS)));

unsigned_legacy_kernel!(dot_q4_1, Q4_1_BYTES, |wb| nibbles32(wb.add(Q4_1_QS)));

unsigned_legacy_kernel!(dot_q5_1, Q5_1_BYTES, |wb| {
    let qh = wb.add(Q5_1_QH).cast::<u32>().read_unaligned();
    let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles32(wb.add(Q5_1_QS)), high)
});

// ---------------------------------------------------------------------------
// K-quants (256-element super-blocks) against Q8_K
// ---------------------------------------------------------------------------

/// `sum_s mins[s] * (bsums[2s] + bsums[2s+1])` as four i32 lanes, for
/// Q4_K/Q5_K (eight 32-element sub-blocks).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mins_dot_bsums(mins16: __m128i, a_block: *const u8) -> __m128i {
    let bs = loadu(a_block.add(Q8K_BSUMS));
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    );
    _mm_madd_epi16(mins16, pairs)
}

/// Shared body of Q4_K and Q5_K: `$high(j)` returns the bit-4 planes
/// `(low half, high half)` of 64-element chunk `j` (zero for Q4_K).
macro_rules! k4_kernel {
    ($name:ident, $wbytes:expr, $d:expr, $dmin:expr, $scales:expr, $qs:expr,
     |$wb:ident, $j:ident, $hstate:ident| init $hinit:expr, high $high:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [f32; NC] {
            let m4 = _mm256_set1_epi8(0x0f);
            let mut acc = [_mm256_setzero_ps(); NC];
            let mut acc_m = [_mm_setzero_ps(); NC];
            for i in 0..nb {
                let $wb = w.add(i * $wbytes);
                prefetch_ahead($wb, $wbytes);
                let dw = h2f($wb.add($d));
                let dminw = h2f($wb.add($dmin));
                let (sc, mn) = k4_scales_mins(std::slice::from_raw_parts($wb.add($scales), 12));
                let mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr().cast()));
                #[allow(unused_mut)]
                let mut $hstate = $hinit;
                let mut sumi = [_mm256_setzero_si256(); NC];
                for $j in 0..4 {
                    let bits = loadu($wb.add($qs + 32 * $j));
                    let (hl, hh): (__m256i, __m256i) = $high;
                    let ql = _mm256_or_si256(_mm256_and_si256(bits, m4), hl);
                    let qh =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), hh);
                    let scl = _mm256_set1_epi16(sc[2 * $j] as i16);
                    let sch = _mm256_set1_epi16(sc[2 * $j + 1] as i16);
                    for c in 0..NC {
                        let q8 = a[c].add(i * Q8K_BYTES + Q8K_QS + 64 * $j);
                        let pl = _mm256_madd_epi16(scl, _mm256_maddubs_epi16(ql, loadu(q8)));
                        let ph =
                            _mm256_madd_epi16(sch, _mm256_maddubs_epi16(qh, loadu(q8.add(32))));
                        sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(pl, ph));
                    }
                }
                for c in 0..NC {
                    let ab = a[c].add(i * Q8K_BYTES);
                    let da = read_f32(ab.add(Q8K_D));
                    let d = _mm256_set1_ps(dw * da);
                    acc[c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[c]), acc[c]);
                    let m = _mm_cvtepi32_ps(mins_dot_bsums(mins16, ab));
                    acc_m[c] = _mm_fmadd_ps(_mm_set1_ps(-(dminw * da)), m, acc_m[c]);
                }
            }
            let mut out = [0.0; NC];
            for c in 0..NC {
                out[c] = hsum_ps(acc[c]) + hsum_ps128(acc_m[c]);
            }
            out
        }
    };
}

k4_kernel!(
    dot_q4k,
    Q4K_BYTES,
    Q4K_D,
    Q4K_DMIN,
    Q4K_SCALES,
    Q4K_QS,
    |wb, j, _h| init(),
    high(_mm256_setzero_si256(), _mm256_setzero_si256())
);

k4_kernel!(dot_q5k, Q5K_BYTES, Q5K_D, Q5K_DMIN, Q5K_SCALES, Q5K_QS,
|wb, j, h| init loadu(wb.add(Q5K_QH)),
high {
    // Bits 2j and 2j+1 of qh[l] are bit 4 of elements 64j+l and 64j+32+l.
    let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(1)));
    let hh = _mm256_slli_epi16::<3>(_mm256_and_si256(h, _mm256_set1_epi8(2)));
    h = _mm256_srli_epi16::<2>(h);
    let _ = j;
    (hl, hh)
});

/// Q6_K: `d_w * d_a * sum_s sc_s * sum (q6 - 32) * q8`, computed as
/// `sum_s sc_s * (sum q6 * q8 - 32 * bsums_s)` with unsigned q6.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6k<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [f32; NC] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); NC];
    for i in 0..nb {
        let wb = w.add(i * Q6K_BYTES);
        prefetch_ahead(wb, Q6K_BYTES);
        let dw = h2f(wb.add(Q6K_D));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(Q6K_SCALES).cast()));
        let mut sumi = [_mm256_setzero_si256(); NC];
        // -32 offset: sum_s sc_s * bsums_s (times 32, subtracted below).
        for c in 0..NC {
            let bs = loadu(a[c].add(i * Q8K_BYTES + Q8K_BSUMS));
            let m = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bs));
            sumi[c] = _mm256_sub_epi32(sumi[c], m);
        }
        for h in 0..2 {
            let ql = wb.add(Q6K_QL + 64 * h);
            let b1 = loadu(ql);
            let b2 = loadu(ql.add(32));
            let bh = loadu(wb.add(Q6K_QH + 32 * h));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(b1, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(bh, m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(b2, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(bh), m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(b1), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(bh), m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(b2), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(bh), m3)),
                ),
            ];
            // Register k covers sub-blocks 8h+2k (low 16 bytes) and 8h+2k+1.
            let sp = wb.add(Q6K_SCALES + 8 * h);
            let mut scv = [_mm256_setzero_si256(); 4];
            for (k, s) in scv.iter_mut().enumerate() {
                *s = _mm256_set_m128i(
                    _mm_set1_epi16(*sp.add(2 * k + 1) as i8 as i16),
                    _mm_set1_epi16(*sp.add(2 * k) as i8 as i16),
                );
            }
            for c in 0..NC {
                let q8 = a[c].add(i * Q8K_BYTES + Q8K_QS + 128 * h);
                for k in 0..4 {
                    let p = _mm256_maddubs_epi16(q[k], loadu(q8.add(32 * k)));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, scv[k]));
                }
            }
        }
        for c in 0..NC {
            let da = read_f32(a[c].add(i * Q8K_BYTES + Q8K_D));
            let d = _mm256_set1_ps(dw * da);
            acc[c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[c]), acc[c]);
        }
    }
    let mut out = [0.0; NC];
    for c in 0..NC {
        out[c] = hsum_ps(acc[c]);
    }
    out
}

// ---------------------------------------------------------------------------
// Float formats
// ---------------------------------------------------------------------------

/// Shared body of the float dot products: `$load(p, k)` loads 8 f32 from
/// element `k`, `$scalar(p, k)` one.
macro_rules! float_kernel {
    ($name:ident, |$p:ident, $k:ident| $load:expr, scalar $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(n: usize, w: *const u8, a: *const u8) -> f32 {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k + 32 <= n {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = {
                        let ($p, $k) = (w, k + 8 * r);
                        $load
                    };
                    let y = {
                        let ($p, $k) = (a, k + 8 * r);
                        $load
                    };
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                k += 32;
            }
            while k + 8 <= n {
                let x = {
                    let ($p, $k) = (w, k);
                    $load
                };
                let y = {
                    let ($p, $k) = (a, k);
                    $load
                };
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                k += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum_ps(s);
            while k < n {
                let x = {
                    let ($p, $k) = (w, k);
                    $scalar
                };
                let y = {
                    let ($p, $k) = (a, k);
                    $scalar
                };
                sum += x * y;
                k += 1;
            }
            sum
        }
    };
}

float_kernel!(dot_f32, |p, k| _mm256_loadu_ps(p.add(4 * k).cast()),
    scalar read_f32(p.add(4 * k)));

float_kernel!(dot_f16, |p, k| _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k).cast())),
    scalar h2f(p.add(2 * k)));

float_kernel!(dot_bf16,
    |p, k| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p.add(2 * k).cast())
    ))),
    scalar bf16_bits_to_f32(p.add(2 * k).cast::<u16>().read_unaligned()));

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

/// AVX2 dot product, or `None` if `ty` has no AVX2 kernel.
///
/// # Safety
/// AVX2, FMA and F16C must be available and `w`/`act` must hold full rows.
#[inline]
pub(crate) unsafe fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Option<f32> {
    let nb = n / ty.block_size();
    let (wp, ap) = (w.as_ptr(), act.as_ptr());
    Some(match ty {
        GgmlType::Q4_0 => dot_q4_0::<1>(nb, wp, [ap])[0],
        GgmlType::Q4_1 => dot_q4_1::<1>(nb, wp, [ap])[0],
        GgmlType::Q5_0 => dot_q5_0::<1>(nb, wp, [ap])[0],
        GgmlType::Q5_1 => dot_q5_1::<1>(nb, wp, [ap])[0],
        GgmlType::Q8_0 => dot_q8_0::<1>(nb, wp, [ap])[0],
        GgmlType::Q4K => dot_q4k::<1>(nb, wp, [ap])[0],
        GgmlType::Q5K => dot_q5k::<1>(nb, wp, [ap])[0],
        GgmlType::Q6K => dot_q6k::<1>(nb, wp, [ap])[0],
        GgmlType::F32 => dot_f32(n, wp, ap),
        GgmlType::F16 => dot_f16(n, wp, ap),
        GgmlType::BF16 => dot_bf16(n, wp, ap),
        _ => return None,
    })
}

/// Runs an `NC`-generic kernel over `acts` in groups of four.
macro_rules! run_multi {
    ($kern:ident, $nb:expr, $w:expr, $acts:expr, $out:expr) => {{
        let (nb, w, acts, out) = ($nb, $w, $acts, $out);
        let p = |c: usize| acts[c].as_ptr();
        let mut c = 0;
        while c + 4 <= acts.len() {
            let r = $kern::<4>(nb, w, [p(c), p(c + 1), p(c + 2), p(c + 3)]);
            out[c..c + 4].copy_from_slice(&r);
            c += 4;
        }
        match acts.len() - c {
            3 => out[c..].copy_from_slice(&$kern::<3>(nb, w, [p(c), p(c + 1), p(c + 2)])),
            2 => out[c..].copy_from_slice(&$kern::<2>(nb, w, [p(c), p(c + 1)])),
            1 => out[c..].copy_from_slice(&$kern::<1>(nb, w, [p(c)])),
            _ => {}
        }
    }};
}

/// AVX2 multi-column dot product; `false` if `ty` has no kernel (then `out`
/// is untouched).
///
/// # Safety
/// AVX2, FMA and F16C must be available, `w` and every `acts[j]` must hold
/// full rows, and `acts.len() == out.len()`.
pub(crate) unsafe fn vec_dot_multi(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    acts: &[&[u8]],
    out: &mut [f32],
) -> bool {
    let nb = n / ty.block_size();
    let wp = w.as_ptr();
    match ty {
        GgmlType::Q4_0 => run_multi!(dot_q4_0, nb, wp, acts, out),
        GgmlType::Q4_1 => run_multi!(dot_q4_1, nb, wp, acts, out),
        GgmlType::Q5_0 => run_multi!(dot_q5_0, nb, wp, acts, out),
        GgmlType::Q5_1 => run_multi!(dot_q5_1, nb, wp, acts, out),
        GgmlType::Q8_0 => run_multi!(dot_q8_0, nb, wp, acts, out),
        GgmlType::Q4K => run_multi!(dot_q4k, nb, wp, acts, out),
        GgmlType::Q5K => run_multi!(dot_q5k, nb, wp, acts, out),
        GgmlType::Q6K => run_multi!(dot_q6k, nb, wp, acts, out),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = match vec_dot(ty, n, w, a) {
                    Some(v) => v,
                    None => unreachable!(),
                };
            }
        }
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------
// Activation quantisation
// ---------------------------------------------------------------------------

/// Largest |x| of 32 floats at `x`, as ggml's x86 `quantize_row_q8_0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn amax32(v: &[__m256; 4]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for x in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
    }
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    _mm_cvtss_f32(m4)
}

/// Packs four vectors of 8 i32 (saturating) into 32 i8 in element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pack_i32x32_to_i8(i: [__m256i; 4]) -> __m256i {
    // packs work per 128-bit lane, leaving 4-byte groups in the order
    // 0 2 4 6 1 3 5 7; the permute restores element order.
    let a = _mm256_packs_epi32(i[0], i[1]);
    let b = _mm256_packs_epi32(i[2], i[3]);
    let p = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// One Q8_0/Q8_1 block; returns `(d, sum of quants)`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quant_block_q8(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let v = [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ];
    let amax = amax32(&v);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for k in 0..4 {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v[k], id),
        );
        q[k] = _mm256_cvtps_epi32(r);
    }
    let sum = hsum_epi32(_mm256_add_epi32(
        _mm256_add_epi32(q[0], q[1]),
        _mm256_add_epi32(q[2], q[3]),
    ));
    _mm256_storeu_si256(qs.cast(), pack_i32x32_to_i8(q));
    (d, sum)
}

/// # Safety
/// AVX2/FMA/F16C available; `dst.len() == row_bytes(Q8_0, src.len())`.
pub(crate) unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    debug_assert_eq!(dst.len(), src.len() / QK * Q8_0_BYTES);
    for (x, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_0_BYTES)) {
        let (d, _) = quant_block_q8(x.as_ptr(), out.as_mut_ptr().add(Q8_0_QS));
        out[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    }
    Ok(())
}

/// # Safety
/// AVX2/FMA/F16C available; `dst.len() == row_bytes(Q8_1, src.len())`.
pub(crate) unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    debug_assert_eq!(dst.len(), src.len() / QK * Q8_1_BYTES);
    for (x, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_1_BYTES)) {
        let (d, sum) = quant_block_q8(x.as_ptr(), out.as_mut_ptr().add(Q8_1_QS));
        out[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        out[Q8_1_S..Q8_1_S + 2].copy_from_slice(&f32_to_f16_bits(d * sum as f32).to_le_bytes());
    }
    Ok(())
}

/// Q8_K with the semantics of `quantize_row_q8_K_ref` (see
/// [`crate::reference`]): `_mm256_round_ps` to nearest-even equals ggml's
/// `nearest_int` for the magnitudes involved.
///
/// # Safety
/// AVX2/FMA/F16C available; `dst.len() == row_bytes(Q8K, src.len())`.
pub(crate) unsafe fn quantize_q8k(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    debug_assert_eq!(dst.len(), src.len() / QK_K * Q8K_BYTES);
    for (x, out) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8K_BYTES)) {
        let xp = x.as_ptr();
        let mut amax = 0.0f32;
        for g in 0..8 {
            let p = xp.add(32 * g);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            amax = amax.max(amax32(&v));
        }
        if amax == 0.0 {
            out.fill(0);
            continue;
        }
        // The signed value of the first element with the largest magnitude.
        let max = match x.iter().find(|v| v.abs() == amax) {
            Some(&v) => v,
            None => {
                // Only reachable with NaNs; defer to the reference.
                crate::reference::quantize_block_q8k(x, out);
                continue;
            }
        };
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let lim = _mm256_set1_epi32(127);
        let mut bsums = [0i16; 16];
        for g in 0..8 {
            let p = xp.add(32 * g);
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, q) in q.iter_mut().enumerate() {
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(_mm256_loadu_ps(p.add(8 * k)), is),
                );
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), lim);
            }
            bsums[2 * g] = hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16;
            bsums[2 * g + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16;
            _mm256_storeu_si256(
                out.as_mut_ptr().add(Q8K_QS + 32 * g).cast(),
                pack_i32x32_to_i8(q),
            );
        }
        for (j, s) in bsums.iter().enumerate() {
            let o = Q8K_BSUMS + 2 * j;
            out[o..o + 2].copy_from_slice(&s.to_le_bytes());
        }
        out[Q8K_D..Q8K_D + 4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
    Ok(())
}
