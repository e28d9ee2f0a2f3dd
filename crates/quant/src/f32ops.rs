//! f32 vector kernels for attention (q·k dot products, p·v accumulation), with an
//! AVX2+FMA path picked at run time. Without it, `f32::mul_add` would compile to a
//! libm call on a baseline x86-64 target, which is what made attention slow.

/// Plain reference: the sum of `a[i] * b[i]`.
pub fn dot_f32_reference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a · b` over the shorter length.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_fma_available() {
            // SAFETY: the CPU has AVX2 and FMA; both slices hold at least `n` values.
            return unsafe { x86::dot(n, a.as_ptr(), b.as_ptr()) };
        }
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + dot_f32_reference(ra, rb)
}

/// `out[e] = dot_f32(q, rows[e * q.len()..(e + 1) * q.len()])` for every `e`,
/// bit-identical to calling [`dot_f32`] per row (the same operations per row), but
/// in one call: attention scores a query against a run of cached keys.
pub fn dot_f32_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let n = q.len();
    assert_eq!(rows.len(), n * out.len(), "dot_f32_rows: rows/out length");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() && n.is_multiple_of(16) {
            // SAFETY: the CPU has AVX-512F (and AVX2, FMA); `rows` holds
            // `out.len()` rows of `n`.
            unsafe { x86::dot_rows_avx512(n, q.as_ptr(), rows.as_ptr(), out) };
            return;
        }
        if crate::avx2_fma_available() {
            // SAFETY: the CPU has AVX2 and FMA; `rows` holds `out.len()` rows of `n`.
            unsafe { x86::dot_rows(n, q.as_ptr(), rows.as_ptr(), out) };
            return;
        }
    }
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(n.max(1))) {
        *o = dot_f32(q, r);
    }
}

/// For every `e` in order with `weights[e] != 0`: `out += weights[e] * rows[e]`;
/// bit-identical to calling [`axpy_f32`] per row, but `out` stays in registers
/// (attention's weighted sum of cached values).
pub fn axpy_f32_rows(weights: &[f32], rows: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert_eq!(
        rows.len(),
        n * weights.len(),
        "axpy_f32_rows: rows/weights length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() {
            // SAFETY: the CPU has AVX-512F (and AVX2, FMA); `rows` holds
            // `weights.len()` rows of `n`.
            unsafe { x86::axpy_rows_avx512(n, weights, rows.as_ptr(), out.as_mut_ptr()) };
            return;
        }
        if crate::avx2_fma_available() {
            // SAFETY: the CPU has AVX2 and FMA; `rows` holds `weights.len()` rows of `n`.
            unsafe { x86::axpy_rows(n, weights, rows.as_ptr(), out.as_mut_ptr()) };
            return;
        }
    }
    for (&w, r) in weights.iter().zip(rows.chunks_exact(n.max(1))) {
        if w != 0.0 {
            axpy_f32(w, r, out);
        }
    }
}

/// `x[i] = e^x[i]` for every element, with a polynomial (Cephes' `expf`
/// range reduction and coefficients, about 1 ulp): the same result from the
/// scalar code and the SIMD lanes (the same fused multiply-adds), so a
/// softmax gives equal bits however its rows are batched. Below -87.34 the
/// result is 0 (`-inf` gives 0), above 88.72 `inf`.
pub fn exp_f32_in_place(x: &mut [f32]) {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() {
            // SAFETY: the CPU has AVX-512F; the kernel stays within `x`.
            i = unsafe { x86::exp_avx512(x) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_fma_available() {
            // SAFETY: the CPU has FMA.
            unsafe { x86::exp_scalar_fma(&mut x[i..]) };
            return;
        }
    }
    for v in &mut x[i..] {
        *v = exp_scalar(*v);
    }
}

/// Cephes `expf`'s constants: `ln 2` split in two, and the polynomial.
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // (Cephes: 5.0000001201e-1, which is 0.5 in f32)
];
const EXP_MIN: f32 = -87.336_55;
const EXP_MAX: f32 = 88.722_83;

/// One element of [`exp_f32_in_place`]; every step is the one the SIMD lanes do.
#[inline(always)]
fn exp_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    if x > EXP_MAX {
        return f32::INFINITY;
    }
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-EXP_LN2_HI, x);
    let r = n.mul_add(-EXP_LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // y * 2^n, as two factors so that n = 128 (x near 88.7) does not overflow the exponent.
    let half = (n as i32) / 2;
    y * f32::from_bits(((half + 127) as u32) << 23)
        * f32::from_bits(((n as i32 - half + 127) as u32) << 23)
}

/// `out[i] = codes[i] as f32` (8-bit KV cache codes widened for a dot product).
pub fn widen_u8(codes: &[u8], out: &mut [f32]) {
    let n = codes.len().min(out.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() {
            // SAFETY: the CPU has AVX-512F; the kernel stays within the first `n`.
            i = unsafe { x86::widen_u8_avx512(n, codes.as_ptr(), out.as_mut_ptr()) };
        }
    }
    for (o, &c) in out[i..n].iter_mut().zip(&codes[i..n]) {
        *o = c as f32;
    }
}

/// `lo[i] = (codes[i] & 15) as f32` and `hi[i] = (codes[i] >> 4) as f32` (4-bit KV
/// cache codes, two per byte).
pub fn widen_nibbles(codes: &[u8], lo: &mut [f32], hi: &mut [f32]) {
    let n = codes.len().min(lo.len()).min(hi.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() {
            // SAFETY: the CPU has AVX-512F; the kernel stays within the first `n`.
            i = unsafe {
                x86::widen_nibbles_avx512(n, codes.as_ptr(), lo.as_mut_ptr(), hi.as_mut_ptr())
            };
        }
    }
    for ((l, h), &c) in lo[i..n].iter_mut().zip(&mut hi[i..n]).zip(&codes[i..n]) {
        *l = (c & 15) as f32;
        *h = (c >> 4) as f32;
    }
}

/// `y[i] += a * x[i] + b`, rounded step by step as written (a multiply, then two
/// adds; no fused multiply-add), the same in every lane and in the scalar tail:
/// dequantise-and-accumulate of a quantised value row.
pub fn add_scaled_offset(a: f32, b: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() {
            // SAFETY: the CPU has AVX-512F; the kernel stays within the first `n`.
            i = unsafe { x86::add_scaled_offset_avx512(n, a, b, x.as_ptr(), y.as_mut_ptr()) };
        }
    }
    for (yv, &xv) in y[i..n].iter_mut().zip(&x[i..n]) {
        *yv += a * xv + b;
    }
}

/// For every row `r` in order with `weights[r] != 0`, and every channel group `j` of
/// `group` channels: `y[j] += a * rows[r][j] + b` with `a = weights[r] * params[r][j].1`
/// and `b = weights[r] * params[r][j].0` (params: `[rows, y.len() / group, 2]`, (min,
/// scale)); per element the steps of [`add_scaled_offset`], in row order: the weighted
/// sum of quantised value rows, dequantised on the fly.
pub fn affine_rows(weights: &[f32], params: &[f32], group: usize, rows: &[f32], y: &mut [f32]) {
    let n = y.len();
    let n_groups = n / group.max(1);
    assert!(
        group > 0 && n_groups * group == n,
        "affine_rows: group must divide the row"
    );
    assert!(
        rows.len() >= weights.len() * n && params.len() >= weights.len() * n_groups * 2,
        "affine_rows: rows/params length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::packed_kernels_available() && group.is_multiple_of(16) && n <= 256 {
            // SAFETY: the CPU has AVX-512F; lengths checked above.
            unsafe { x86::affine_rows_avx512(n, group, weights, params, rows.as_ptr(), y) };
            return;
        }
    }
    for (r, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let row = &rows[r * n..(r + 1) * n];
        let prm = &params[r * n_groups * 2..(r + 1) * n_groups * 2];
        for ((yc, xc), p) in y
            .chunks_exact_mut(group)
            .zip(row.chunks_exact(group))
            .zip(prm.chunks_exact(2))
        {
            add_scaled_offset(w * p[1], w * p[0], xc, yc);
        }
    }
}

/// `y[i] += alpha * x[i]` over the shorter length.
#[inline]
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_fma_available() {
            // SAFETY: the CPU has AVX2 and FMA; both slices hold at least `n` values.
            unsafe { x86::axpy(n, alpha, x.as_ptr(), y.as_mut_ptr()) };
            return;
        }
    }
    for (yv, &xv) in y[..n].iter_mut().zip(&x[..n]) {
        *yv += alpha * xv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(n: usize, a: *const f32, b: *const f32) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.add(i + 8)),
                _mm256_loadu_ps(b.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += *a.add(i) * *b.add(i);
            i += 1;
        }
        sum
    }

    /// [`dot`] of `q` with each of `out.len()` consecutive rows of `n` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(n: usize, q: *const f32, rows: *const f32, out: &mut [f32]) {
        for (e, o) in out.iter_mut().enumerate() {
            *o = dot(n, q, rows.add(e * n));
        }
    }

    /// [`axpy`] of each row with a non-zero weight, in order, into `y`; `y` is
    /// held in registers 64 floats at a time (per element the same fused
    /// multiply-adds in the same order as row-by-row `axpy`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows(n: usize, weights: &[f32], rows: *const f32, y: *mut f32) {
        let mut i = 0;
        while i + 64 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(y.add(i + 8 * k));
            }
            for (e, &w) in weights.iter().enumerate() {
                if w != 0.0 {
                    let va = _mm256_set1_ps(w);
                    let x = rows.add(e * n + i);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(va, _mm256_loadu_ps(x.add(8 * k)), *a);
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(y.add(i + 8 * k), *a);
            }
            i += 64;
        }
        if i < n {
            // The tail (head_dim not a multiple of 64): row by row.
            for (e, &w) in weights.iter().enumerate() {
                if w != 0.0 {
                    axpy(n - i, w, rows.add(e * n + i), y.add(i));
                }
            }
        }
    }

    /// [`dot_rows`] for `n` a multiple of 16, 16 rows at a time without a
    /// horizontal sum per row, bit-identical to [`dot`] per row: lane `l` of
    /// row `e`'s accumulator is [`dot`]'s `acc0[l]` (l < 8) or `acc1[l - 8]`,
    /// and the 16 rows' sums are reduced through the same tree of additions
    /// (`acc0 + acc1`, then the 128-bit halves, then pairs), four rows to a
    /// register from the second step on.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn dot_rows_avx512(
        n: usize,
        q: *const f32,
        rows: *const f32,
        out: &mut [f32],
    ) {
        debug_assert!(n.is_multiple_of(16));
        // Lane 4r + i of the reduced register holds row 4i + r.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut e = 0;
        while e + 16 <= out.len() {
            let mut z = [_mm512_setzero_ps(); 16];
            let mut i = 0;
            while i < n {
                let qv = _mm512_loadu_ps(q.add(i));
                for (k, zk) in z.iter_mut().enumerate() {
                    *zk = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows.add((e + k) * n + i)), *zk);
                }
                i += 16;
            }
            // t = acc0 + acc1: two rows per register, 8 lanes each.
            let mut t = [_mm512_setzero_ps(); 8];
            for (j, tj) in t.iter_mut().enumerate() {
                let (a, b) = (z[2 * j], z[2 * j + 1]);
                let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
                let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
                *tj = _mm512_add_ps(lo, hi);
            }
            // u = low + high 128-bit half: four rows per register, one per quarter.
            let mut u = [_mm512_setzero_ps(); 4];
            for (k, uk) in u.iter_mut().enumerate() {
                let (p, r) = (t[2 * k], t[2 * k + 1]);
                let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(p, r);
                let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(p, r);
                *uk = _mm512_add_ps(lo, hi);
            }
            // v = (u0 + u2, u1 + u3), per quarter for two rows.
            let mut v = [_mm512_setzero_ps(); 2];
            for (m, vm) in v.iter_mut().enumerate() {
                let (p, r) = (_mm512_castps_pd(u[2 * m]), _mm512_castps_pd(u[2 * m + 1]));
                let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(p, r));
                let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(p, r));
                *vm = _mm512_add_ps(lo, hi);
            }
            // s = v0 + v1.
            let even = _mm512_shuffle_ps::<0b10_00_10_00>(v[0], v[1]);
            let odd = _mm512_shuffle_ps::<0b11_01_11_01>(v[0], v[1]);
            let s = _mm512_add_ps(even, odd);
            _mm512_storeu_ps(out.as_mut_ptr().add(e), _mm512_permutexvar_ps(order, s));
            e += 16;
        }
        for (k, o) in out[e..].iter_mut().enumerate() {
            *o = dot(n, q, rows.add((e + k) * n));
        }
    }

    /// [`axpy_rows`] with 512-bit registers: per element the same fused
    /// multiply-adds in the same order.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn axpy_rows_avx512(
        n: usize,
        weights: &[f32],
        rows: *const f32,
        y: *mut f32,
    ) {
        let mut i = 0;
        while i + 64 <= n {
            let mut acc = [_mm512_setzero_ps(); 4];
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(y.add(i + 16 * k));
            }
            for (e, &w) in weights.iter().enumerate() {
                if w != 0.0 {
                    let va = _mm512_set1_ps(w);
                    let x = rows.add(e * n + i);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(va, _mm512_loadu_ps(x.add(16 * k)), *a);
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(y.add(i + 16 * k), *a);
            }
            i += 64;
        }
        if i < n {
            // The tail (head_dim not a multiple of 64): row by row.
            for (e, &w) in weights.iter().enumerate() {
                if w != 0.0 {
                    axpy(n - i, w, rows.add(e * n + i), y.add(i));
                }
            }
        }
    }

    /// [`super::exp_f32_in_place`]'s scalar steps with FMA instructions
    /// (without the feature `mul_add` is a libm call).
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn exp_scalar_fma(x: &mut [f32]) {
        for v in x {
            *v = super::exp_scalar(*v);
        }
    }

    /// [`super::exp_f32_in_place`] 16 lanes at a time; returns how many
    /// elements it did (the rest, fewer than 16, are left to the scalar code).
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn exp_avx512(x: &mut [f32]) -> usize {
        use super::{EXP_LN2_HI, EXP_LN2_LO, EXP_MAX, EXP_MIN, EXP_POLY};
        let mut i = 0;
        while i + 16 <= x.len() {
            let p = x.as_mut_ptr().add(i);
            let v = _mm512_loadu_ps(p);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_set1_ps(EXP_MIN));
            let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_set1_ps(EXP_MAX));
            // Clamped so that the lanes replaced below compute harmless values.
            let xc = _mm512_min_ps(
                _mm512_max_ps(v, _mm512_set1_ps(EXP_MIN)),
                _mm512_set1_ps(EXP_MAX),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP_LN2_HI), xc);
            let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP_LN2_LO), r);
            let mut poly = _mm512_set1_ps(EXP_POLY[0]);
            for &c in &EXP_POLY[1..] {
                poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
            }
            let y = _mm512_add_ps(
                _mm512_fmadd_ps(poly, _mm512_mul_ps(r, r), r),
                _mm512_set1_ps(1.0),
            );
            let ni = _mm512_cvtps_epi32(n);
            // (n / 2 truncated toward zero, as the scalar code's integer division)
            let half = _mm512_srai_epi32::<1>(_mm512_add_epi32(ni, _mm512_srli_epi32::<31>(ni)));
            let bias = _mm512_set1_epi32(127);
            let f1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(half, bias)));
            let f2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_sub_epi32(ni, half),
                bias,
            )));
            let mut res = _mm512_mul_ps(_mm512_mul_ps(y, f1), f2);
            res = _mm512_mask_mov_ps(res, under, _mm512_setzero_ps());
            res = _mm512_mask_mov_ps(res, over, _mm512_set1_ps(f32::INFINITY));
            res = _mm512_mask_mov_ps(res, nan, v);
            _mm512_storeu_ps(p, res);
            i += 16;
        }
        i
    }

    /// [`super::widen_u8`] 16 codes at a time; returns how many were done.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen_u8_avx512(n: usize, codes: *const u8, out: *mut f32) -> usize {
        let mut i = 0;
        while i + 16 <= n {
            let c = _mm_loadu_si128(codes.add(i) as *const __m128i);
            _mm512_storeu_ps(out.add(i), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c)));
            i += 16;
        }
        i
    }

    /// [`super::widen_nibbles`] 16 bytes at a time; returns how many were done.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen_nibbles_avx512(
        n: usize,
        codes: *const u8,
        lo: *mut f32,
        hi: *mut f32,
    ) -> usize {
        let mask = _mm512_set1_epi32(15);
        let mut i = 0;
        while i + 16 <= n {
            let c = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(i) as *const __m128i));
            let l = _mm512_and_si512(c, mask);
            let h = _mm512_srli_epi32::<4>(c);
            _mm512_storeu_ps(lo.add(i), _mm512_cvtepi32_ps(l));
            _mm512_storeu_ps(hi.add(i), _mm512_cvtepi32_ps(h));
            i += 16;
        }
        i
    }

    /// [`super::add_scaled_offset`] 16 lanes at a time (multiply, add, add: the
    /// scalar steps); returns how many were done.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_scaled_offset_avx512(
        n: usize,
        a: f32,
        b: f32,
        x: *const f32,
        y: *mut f32,
    ) -> usize {
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let mut i = 0;
        while i + 16 <= n {
            let t = _mm512_add_ps(_mm512_mul_ps(va, _mm512_loadu_ps(x.add(i))), vb);
            _mm512_storeu_ps(y.add(i), _mm512_add_ps(_mm512_loadu_ps(y.add(i)), t));
            i += 16;
        }
        i
    }

    /// [`super::affine_rows`] with `y` (at most 256 floats) held in registers across
    /// the rows; per element the same multiply and adds in the same order.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn affine_rows_avx512(
        n: usize,
        group: usize,
        weights: &[f32],
        params: &[f32],
        rows: *const f32,
        y: &mut [f32],
    ) {
        let n_groups = n / group;
        let lanes = n / 16;
        let per_group = group / 16;
        let mut acc = [_mm512_setzero_ps(); 16];
        for (k, a) in acc.iter_mut().enumerate().take(lanes) {
            *a = _mm512_loadu_ps(y.as_ptr().add(16 * k));
        }
        for (r, &w) in weights.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            let x = rows.add(r * n);
            let prm = &params[r * n_groups * 2..(r + 1) * n_groups * 2];
            for (k, a) in acc.iter_mut().enumerate().take(lanes) {
                let j = k / per_group;
                let (va, vb) = (
                    _mm512_set1_ps(w * prm[2 * j + 1]),
                    _mm512_set1_ps(w * prm[2 * j]),
                );
                let t = _mm512_add_ps(_mm512_mul_ps(va, _mm512_loadu_ps(x.add(16 * k))), vb);
                *a = _mm512_add_ps(*a, t);
            }
        }
        for (k, a) in acc.iter().enumerate().take(lanes) {
            _mm512_storeu_ps(y.as_mut_ptr().add(16 * k), *a);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(n: usize, alpha: f32, x: *const f32, y: *mut f32) {
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)));
            _mm256_storeu_ps(y.add(i), r);
            i += 8;
        }
        while i < n {
            *y.add(i) += alpha * *x.add(i);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_the_reference() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 64, 100, 256] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 5 + 1) % 13) as f32 * 0.5 - 3.0)
                .collect();
            let want = dot_f32_reference(&a, &b);
            let bound = 1e-5 * a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            assert!((dot_f32(&a, &b) - want).abs() <= bound, "n={n}");
            let mut y = b.clone();
            axpy_f32(0.75, &a, &mut y);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.75 * a[i])).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn exp_is_accurate_and_equal_in_every_lane() {
        // Values across the range, the limits, and specials; 16-lane chunks and
        // scalar tails must agree bit for bit.
        let mut xs: Vec<f32> = (0..4000).map(|i| -100.0 + i as f32 * 0.0473).collect();
        xs.extend([
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            EXP_MIN,
            EXP_MAX,
            -87.0,
            88.0,
            1e-8,
            -1e-8,
        ]);
        let mut all = xs.clone();
        exp_f32_in_place(&mut all);
        for (i, &x) in xs.iter().enumerate() {
            let one = exp_scalar(x);
            assert_eq!(
                all[i].to_bits(),
                one.to_bits(),
                "exp({x}): {} vs {one}",
                all[i]
            );
            let want = (x as f64).exp();
            if x < EXP_MIN {
                assert_eq!(all[i], 0.0, "exp({x})");
            } else if x > EXP_MAX {
                assert_eq!(all[i], f32::INFINITY, "exp({x})");
            } else if want > 1e-37 {
                let rel = ((all[i] as f64 - want) / want).abs();
                assert!(rel < 3e-7, "exp({x}) = {} vs {want}: rel {rel}", all[i]);
            }
        }
        let mut nan = [f32::NAN; 17];
        exp_f32_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn row_kernels_equal_row_by_row_calls_bitwise() {
        for n in [1usize, 8, 16, 48, 63, 64, 65, 128, 256] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f32 * 0.37 - 1.9)
                .collect();
            // 16-row blocks and a remainder
            let m = 37;
            let rows: Vec<f32> = (0..n * m)
                .map(|i| ((i * 13 + 5) % 17) as f32 * 0.29 - 2.3)
                .collect();
            let mut got = vec![0f32; m];
            dot_f32_rows(&q, &rows, &mut got);
            for e in 0..m {
                let want = dot_f32(&q, &rows[e * n..(e + 1) * n]);
                assert_eq!(got[e].to_bits(), want.to_bits(), "dot n={n} e={e}");
            }
            let weights: Vec<f32> = (0..m)
                .map(|e| {
                    if e % 4 == 1 {
                        0.0
                    } else {
                        0.1 * e as f32 - 0.3
                    }
                })
                .collect();
            let mut want = q.clone();
            for (e, &w) in weights.iter().enumerate() {
                if w != 0.0 {
                    axpy_f32(w, &rows[e * n..(e + 1) * n], &mut want);
                }
            }
            let mut got = q.clone();
            axpy_f32_rows(&weights, &rows, &mut got);
            for i in 0..n {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "axpy n={n} i={i}");
            }
        }
    }

    #[test]
    fn code_widening_and_affine_accumulation_equal_the_scalar_steps() {
        // Lengths around the 16-lane blocks, so both the SIMD body and the tail run.
        for n in [0, 1, 15, 16, 17, 32, 40, 64] {
            let codes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let mut wide = vec![0f32; n];
            widen_u8(&codes, &mut wide);
            for i in 0..n {
                assert_eq!(wide[i], codes[i] as f32, "widen_u8 n={n} i={i}");
            }
            let (mut lo, mut hi) = (vec![0f32; n], vec![0f32; n]);
            widen_nibbles(&codes, &mut lo, &mut hi);
            for i in 0..n {
                assert_eq!(lo[i], (codes[i] & 15) as f32, "nibble lo n={n} i={i}");
                assert_eq!(hi[i], (codes[i] >> 4) as f32, "nibble hi n={n} i={i}");
            }
            let (a, b) = (0.013_7_f32, -0.21_f32);
            let y0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut got = y0.clone();
            add_scaled_offset(a, b, &wide, &mut got);
            for i in 0..n {
                let want = y0[i] + (a * wide[i] + b);
                assert_eq!(got[i].to_bits(), want.to_bits(), "affine n={n} i={i}");
            }
        }
    }

    #[test]
    fn affine_rows_equals_row_by_row_accumulation_bitwise() {
        for (n, group) in [(64, 32), (64, 16), (256, 32), (48, 16), (24, 8)] {
            let n_rows = 21;
            let rows: Vec<f32> = (0..n_rows * n)
                .map(|i| ((i * 29 + 3) % 256) as f32)
                .collect();
            let params: Vec<f32> = (0..n_rows * (n / group) * 2)
                .map(|i| ((i as f32) * 0.71).cos() * 0.05)
                .collect();
            let weights: Vec<f32> = (0..n_rows)
                .map(|r| {
                    if r % 5 == 2 {
                        0.0
                    } else {
                        1.0 / (r as f32 + 2.0)
                    }
                })
                .collect();
            let y0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).sin()).collect();
            let mut want = y0.clone();
            for (r, &w) in weights.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                for i in 0..n {
                    let (j, g) = (i / group, r * (n / group) * 2);
                    let (a, b) = (w * params[g + 2 * j + 1], w * params[g + 2 * j]);
                    want[i] += a * rows[r * n + i] + b;
                }
            }
            let mut got = y0.clone();
            affine_rows(&weights, &params, group, &rows, &mut got);
            for i in 0..n {
                assert_eq!(
                    got[i].to_bits(),
                    want[i].to_bits(),
                    "n={n} group={group} i={i}"
                );
            }
        }
    }
}
