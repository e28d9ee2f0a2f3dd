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
    fn row_kernels_equal_row_by_row_calls_bitwise() {
        for n in [1usize, 8, 63, 64, 65, 128, 256] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f32 * 0.37 - 1.9)
                .collect();
            let m = 9;
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
}
