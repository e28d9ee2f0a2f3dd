//! AVX-512 (F, BW, VL, VNNI) kernels over weights packed in groups of 16 rows
//! (x86_64 only; the layout and the reasons are in [`crate::packed`]).
//!
//! A row-at-a-time AVX-512 kernel (two blocks per register, `vpdpbusd` for
//! `maddubs` + `madd`) was tried first: no faster than the AVX2 one, as both
//! are bound by the per-block shuffles and scale conversions, which the
//! 16-row layout removes.
//!
//! # Safety
//! Every function requires AVX-512 F/BW/VL/VNNI plus AVX2/FMA/F16C (checked by
//! the caller at run time) and full row buffers (checked by the caller).

use std::arch::x86_64::*;

use crate::blocks::{off::*, *};

/// The features every function here is compiled for.
macro_rules! avx512_fn {
    ($(#[$m:meta])* unsafe fn $($rest:tt)*) => {
        $(#[$m])*
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $($rest)*
    };
}

/// How far ahead of the block being read the kernels prefetch. Single-row decoding
/// streams the weights once per token and is bound by memory bandwidth; the AVX2
/// row kernels gained most of their single-thread speed from prefetching 2 KiB ahead.
const PREFETCH_AHEAD: usize = 2048;

avx512_fn! {
    /// Prefetches the `len` bytes at `p + PREFETCH_AHEAD`, one cache line at a time.
    #[inline]
    unsafe fn prefetch_ahead(p: *const u8, len: usize) {
        let mut off = 0;
        while off < len {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + off).cast());
            off += 64;
        }
    }
}

avx512_fn! {
    /// The 16 rows' results of each activation row, as arrays.
    #[inline]
    unsafe fn rows_out<const NC: usize>(acc: [__m512; NC]) -> [[f32; 16]; NC] {
        let mut out = [[0.0; 16]; NC];
        for c in 0..NC {
            _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]);
        }
        out
    }
}

avx512_fn! {
    /// One Q8_0 activation block (at `ab`) against the 16 rows' signed quants of a
    /// block (`q[k]`: elements `4k..4k+4` of each row):
    /// `acc + d_w * d_a * (sum((q_a + 128) * q_w) - offset)`, `offset` being
    /// `128 * sum(q_w)` per row, so the integer sum is exactly `sum(q_a * q_w)`.
    #[inline]
    unsafe fn signed_block_column(q: &[__m512i; 8], offset: __m512i, dw: __m512, ab: *const u8, acc: __m512) -> __m512 {
        let qa = ab.add(Q8_0_QS);
        // Four activation quants, each + 128 (as unsigned bytes), in every lane.
        let bcast = |k: usize| {
            let x = qa.add(4 * k).cast::<u32>().read_unaligned() ^ 0x8080_8080;
            _mm512_set1_epi32(x as i32)
        };
        // Two independent chains.
        let mut d0 = _mm512_setzero_si512();
        let mut d1 = _mm512_setzero_si512();
        for t in 0..4 {
            d0 = _mm512_dpbusd_epi32(d0, bcast(t), q[t]);
            d1 = _mm512_dpbusd_epi32(d1, bcast(4 + t), q[4 + t]);
        }
        let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(d0, d1), offset));
        let da = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(ab.cast::<u16>().read_unaligned())));
        _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_broadcastss_ps(da)), dot, acc)
    }
}

avx512_fn! {
    /// The 16-row kernel: `out[c][r] = sum_b d_w[r] * d_a * dot_b + m_w[r] * s_a`
    /// for the packed group at `w` (see [`crate::packed`]) and `NC` Q8_1 rows.
    #[inline]
    unsafe fn packed_q4_1<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [[f32; 16]; NC] {
        let low = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let wb = w.add(b * crate::packed::Q4_1X16_BYTES);
            prefetch_ahead(wb, crate::packed::Q4_1X16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let mw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.add(32).cast()));
            let mut lo = [_mm512_setzero_si512(); 4];
            let mut hi = [_mm512_setzero_si512(); 4];
            for t in 0..4 {
                let z = _mm512_loadu_si512(wb.add(64 + 64 * t).cast());
                lo[t] = _mm512_and_si512(z, low);
                hi[t] = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
            }
            for c in 0..NC {
                let ab = a[c].add(b * Q8_1_BYTES);
                let qa = ab.add(Q8_1_QS);
                let bcast = |k: usize| _mm512_set1_epi32(qa.add(4 * k).cast::<i32>().read_unaligned());
                // Two independent chains (low and high halves of the block).
                let mut dl = _mm512_setzero_si512();
                let mut dh = _mm512_setzero_si512();
                for t in 0..4 {
                    dl = _mm512_dpbusd_epi32(dl, lo[t], bcast(t));
                    dh = _mm512_dpbusd_epi32(dh, hi[t], bcast(4 + t));
                }
                let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(dl, dh));
                // [d_a, s_a]
                let ds = _mm_cvtph_ps(_mm_cvtsi32_si128(ab.cast::<i32>().read_unaligned()));
                let da = _mm512_broadcastss_ps(ds);
                let sa = _mm512_broadcastss_ps(_mm_movehdup_ps(ds));
                acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), dot, acc[c]);
                acc[c] = _mm512_fmadd_ps(mw, sa, acc[c]);
            }
        }
        rows_out(acc)
    }
}

/// Runs a 16-row kernel over any number of activation rows, in groups of four.
macro_rules! packed_multi {
    ($name:ident, $kern:ident) => {
        /// [`$kern`] over any number of activation rows, in groups of four.
        ///
        /// # Safety
        /// The CPU must support this module's features; `w` must hold `nb`
        /// packed blocks and every `acts[j]` a full activation row of `nb`
        /// blocks; `acts.len() == out.len()`.
        pub(crate) unsafe fn $name(nb: usize, w: &[u8], acts: &[&[u8]], out: &mut [[f32; 16]]) {
            let wp = w.as_ptr();
            let p = |c: usize| acts[c].as_ptr();
            let mut c = 0;
            while c + 4 <= acts.len() {
                out[c..c + 4].copy_from_slice(&$kern::<4>(
                    nb,
                    wp,
                    [p(c), p(c + 1), p(c + 2), p(c + 3)],
                ));
                c += 4;
            }
            match acts.len() - c {
                3 => out[c..].copy_from_slice(&$kern::<3>(nb, wp, [p(c), p(c + 1), p(c + 2)])),
                2 => out[c..].copy_from_slice(&$kern::<2>(nb, wp, [p(c), p(c + 1)])),
                1 => out[c..].copy_from_slice(&$kern::<1>(nb, wp, [p(c)])),
                _ => {}
            }
        }
    };
}

packed_multi!(packed_q4_1_multi, packed_q4_1);
packed_multi!(packed_q8_0_multi, packed_q8_0);
packed_multi!(packed_q4k_multi, packed_q4k);
packed_multi!(packed_q5_0_multi, packed_q5_0);
packed_multi!(packed_q6k_multi, packed_q6k);

avx512_fn! {
    /// The 16-row Q8_0 kernel: `out[c][r] = sum_b d_w[r] * d_a * dot_b`, with
    /// `dot_b = sum((q_a + 128) * q_w) - 128 * sum(q_w)` (see [`crate::packed`]).
    #[inline]
    unsafe fn packed_q8_0<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [[f32; 16]; NC] {
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let wb = w.add(b * crate::packed::Q8_0X16_BYTES);
            prefetch_ahead(wb, crate::packed::Q8_0X16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            // 128 * (sum of each row's quants)
            let offset = _mm512_slli_epi32::<7>(_mm512_cvtepi16_epi32(_mm256_loadu_si256(wb.add(32).cast())));
            let mut q = [_mm512_setzero_si512(); 8];
            for (t, qt) in q.iter_mut().enumerate() {
                *qt = _mm512_loadu_si512(wb.add(64 + 64 * t).cast());
            }
            for c in 0..NC {
                acc[c] = signed_block_column(&q, offset, dw, a[c].add(b * Q8_0_BYTES), acc[c]);
            }
        }
        rows_out(acc)
    }
}

avx512_fn! {
    /// The 16-row Q4_K kernel against Q8_K activations:
    /// `out[c][r] = sum_blocks d_a * (d_w * sum_s sc_s * dot_s - dmin_w * sum_s mn_s * bsum_s)`
    /// with exact integer sums (see [`crate::packed`] for the layout).
    #[inline]
    unsafe fn packed_q4k<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [[f32; 16]; NC] {
        use crate::packed::Q4KX16_BYTES;
        let low = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let wb = w.add(b * Q4KX16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(wb.add(32).cast()));
            let mut isum = [_mm512_setzero_si512(); NC];
            for s in 0..8 {
                let (j, high) = (s / 2, s % 2 == 1);
                let pair = wb.add(448 + 512 * j);
                prefetch_ahead(wb.add(Q4KX16_BYTES / 8 * s), Q4KX16_BYTES / 8);
                let mut q = [_mm512_setzero_si512(); 8];
                for (t, qt) in q.iter_mut().enumerate() {
                    let z = _mm512_loadu_si512(pair.add(64 * t).cast());
                    let z = if high { _mm512_srli_epi16::<4>(z) } else { z };
                    *qt = _mm512_and_si512(z, low);
                }
                let scale = _mm512_cvtepu8_epi32(_mm_loadu_si128(wb.add(64 + 16 * s).cast()));
                for c in 0..NC {
                    let qa = a[c].add(b * Q8K_BYTES + Q8K_QS + 32 * s);
                    let bcast = |k: usize| _mm512_set1_epi32(qa.add(4 * k).cast::<i32>().read_unaligned());
                    let mut d0 = _mm512_setzero_si512();
                    let mut d1 = _mm512_setzero_si512();
                    for t in 0..4 {
                        d0 = _mm512_dpbusd_epi32(d0, q[2 * t], bcast(2 * t));
                        d1 = _mm512_dpbusd_epi32(d1, q[2 * t + 1], bcast(2 * t + 1));
                    }
                    isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(_mm512_add_epi32(d0, d1), scale));
                }
            }
            for c in 0..NC {
                let ab = a[c].add(b * Q8K_BYTES);
                let bs = ab.add(Q8K_BSUMS).cast::<i16>();
                // sum_s mn_s * bsum_s, bsum_s the sum of sub-block s's 32 activation quants
                let mut msum = _mm512_setzero_si512();
                for k in 0..4 {
                    let sub = |s: usize| bs.add(2 * s).read_unaligned().wrapping_add(bs.add(2 * s + 1).read_unaligned());
                    let pair = (sub(2 * k) as u16 as u32) | ((sub(2 * k + 1) as u16 as u32) << 16);
                    let mins = _mm512_loadu_si512(wb.add(192 + 64 * k).cast());
                    msum = _mm512_dpwssd_epi32(msum, mins, _mm512_set1_epi32(pair as i32));
                }
                let da = _mm512_set1_ps(ab.add(Q8K_D).cast::<f32>().read_unaligned());
                acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum[c]), acc[c]);
                acc[c] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(msum), acc[c]);
            }
        }
        rows_out(acc)
    }
}

avx512_fn! {
    /// The 16-row Q5_0 kernel against Q8_0 activations: the quants are rebuilt
    /// as signed bytes from the nibbles and fifth-bit masks, then as Q8_0.
    #[inline]
    unsafe fn packed_q5_0<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [[f32; 16]; NC] {
        use crate::packed::Q5_0X16_BYTES;
        let low = _mm512_set1_epi8(0x0f);
        let minus16 = _mm512_set1_epi8(0xF0u8 as i8);
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let wb = w.add(b * Q5_0X16_BYTES);
            prefetch_ahead(wb, Q5_0X16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let offset = _mm512_slli_epi32::<7>(_mm512_cvtepi16_epi32(_mm256_loadu_si256(wb.add(32).cast())));
            let masks = wb.add(320).cast::<u64>();
            let mut q = [_mm512_setzero_si512(); 8];
            for t in 0..4 {
                let z = _mm512_loadu_si512(wb.add(64 + 64 * t).cast());
                let halves = [_mm512_and_si512(z, low), _mm512_and_si512(_mm512_srli_epi16::<4>(z), low)];
                for (h, nibble) in halves.into_iter().enumerate() {
                    // (nibble | bit4 << 4) - 16: the nibble where the bit is set,
                    // else nibble - 16 = nibble | 0xF0 as a signed byte.
                    let bit4 = masks.add(4 * h + t).read_unaligned();
                    q[4 * h + t] = _mm512_mask_blend_epi8(bit4, _mm512_or_si512(nibble, minus16), nibble);
                }
            }
            for c in 0..NC {
                acc[c] = signed_block_column(&q, offset, dw, a[c].add(b * Q8_0_BYTES), acc[c]);
            }
        }
        rows_out(acc)
    }
}

avx512_fn! {
    /// The 16-row Q6_K kernel against Q8_K activations:
    /// `out[c][r] = sum_blocks d_w * d_a * sum_s sc_s * (sum u * q_a - 32 * bsum_s)`
    /// over the 16 sub-blocks of 16 elements (see [`crate::packed`]).
    #[inline]
    unsafe fn packed_q6k<const NC: usize>(nb: usize, w: *const u8, a: [*const u8; NC]) -> [[f32; 16]; NC] {
        use crate::packed::Q6KX16_BYTES;
        let low = _mm512_set1_epi8(0x0f);
        let top = _mm512_set1_epi8(0x30);
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let wb = w.add(b * Q6KX16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let mut isum = [_mm512_setzero_si512(); NC];
            for s in 0..16 {
                let nib0 = _mm512_loadu_si512(wb.add(288 + 64 * (2 * s)).cast());
                let nib1 = _mm512_loadu_si512(wb.add(288 + 64 * (2 * s + 1)).cast());
                let hb = _mm512_loadu_si512(wb.add(288 + 2048 + 64 * s).cast());
                prefetch_ahead(wb.add(Q6KX16_BYTES / 16 * s), Q6KX16_BYTES / 16);
                // Chunk 4s+i: nibble | top bits << 4 (16-bit shifts, then byte masks).
                let u = [
                    _mm512_or_si512(_mm512_and_si512(nib0, low), _mm512_and_si512(_mm512_slli_epi16::<4>(hb), top)),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(nib0), low),
                        _mm512_and_si512(_mm512_slli_epi16::<2>(hb), top),
                    ),
                    _mm512_or_si512(_mm512_and_si512(nib1, low), _mm512_and_si512(hb, top)),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(nib1), low),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(hb), top),
                    ),
                ];
                let scale = _mm512_cvtepi8_epi32(_mm_loadu_si128(wb.add(32 + 16 * s).cast()));
                for c in 0..NC {
                    let ab = a[c].add(b * Q8K_BYTES);
                    let qa = ab.add(Q8K_QS + 16 * s);
                    let bcast = |k: usize| _mm512_set1_epi32(qa.add(4 * k).cast::<i32>().read_unaligned());
                    let mut dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], bcast(0));
                    dot = _mm512_dpbusd_epi32(dot, u[1], bcast(1));
                    dot = _mm512_dpbusd_epi32(dot, u[2], bcast(2));
                    dot = _mm512_dpbusd_epi32(dot, u[3], bcast(3));
                    let bsum = i32::from(ab.add(Q8K_BSUMS + 2 * s).cast::<i16>().read_unaligned());
                    let signed = _mm512_sub_epi32(dot, _mm512_set1_epi32(32 * bsum));
                    isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(signed, scale));
                }
            }
            for c in 0..NC {
                let da = _mm512_set1_ps(a[c].add(b * Q8K_BYTES + Q8K_D).cast::<f32>().read_unaligned());
                acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum[c]), acc[c]);
            }
        }
        rows_out(acc)
    }
}
