//! The transformer's element-wise and per-row operations, written plainly.
//!
//! These follow ggml's arithmetic where it matters for matching llama.cpp token for
//! token (f64 accumulation in RMSNorm, RoPE angles by repeated multiplication).

/// RMSNorm of one row, scaled by `w`.
// x: [n], w: [n] -> out: [n]
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum_sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum_sq / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// RMSNorm in place, row by row.
// x: [rows, n] -> [rows, n]
pub fn rms_norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    let mut tmp = [0f32; 0].to_vec();
    tmp.resize(n, 0.0);
    for row in x.chunks_exact_mut(n) {
        rms_norm(row, w, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}

/// The cos/sin table of RoPE for one position: `out[i] = (cos θ_i, sin θ_i)` with
/// θ_i = pos · base^(-2i/d), computed as ggml does, by repeated multiplication in f32.
// -> out: [head_dim / 2]
pub fn rope_angles(pos: usize, base: f32, head_dim: usize, out: &mut [(f32, f32)]) {
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    for cs in out.iter_mut().take(head_dim / 2) {
        *cs = (theta.cos(), theta.sin());
        theta *= theta_scale;
    }
}

/// Rotates each head of `x` by the angles of its position.
// x: [n_head, head_dim], angles: [head_dim / 2]
pub fn apply_rope(x: &mut [f32], head_dim: usize, angles: &[(f32, f32)], style: crate::RopeStyle) {
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            crate::RopeStyle::Adjacent => {
                for (i, &(c, s)) in angles.iter().enumerate() {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c - b * s;
                    head[2 * i + 1] = a * s + b * c;
                }
            }
            crate::RopeStyle::Neox => {
                let half = head_dim / 2;
                for (i, &(c, s)) in angles.iter().enumerate() {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c - b * s;
                    head[i + half] = a * s + b * c;
                }
            }
        }
    }
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (as Gemma and ggml use).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// Gated MLP activation: `gate[i] = act(gate[i]) * up[i]`.
// gate, up: [n_ff]
pub fn gated_activation(gate: &mut [f32], up: &[f32], act: crate::Activation) {
    match act {
        crate::Activation::Silu => {
            // silu(g) = g / (1 + e^-g), the exponentials a chunk at a time (SIMD);
            // per element the same result as `silu`'s steps with that exp.
            let mut e = [0f32; 64];
            for (g, u) in gate.chunks_mut(64).zip(up.chunks(64)) {
                let e = &mut e[..g.len()];
                for (ei, &gi) in e.iter_mut().zip(g.iter()) {
                    *ei = -gi;
                }
                quant::exp_f32_in_place(e);
                for ((gi, &ei), &ui) in g.iter_mut().zip(e.iter()).zip(u) {
                    *gi = *gi / (1.0 + ei) * ui;
                }
            }
        }
        crate::Activation::GeluTanh => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = gelu_tanh(*g) * u;
            }
        }
    }
}

/// Numerically stable softmax in place: f32 exponentials
/// ([`quant::exp_f32_in_place`]), their sum in f64 over four fixed lanes
/// (element `i` in lane `i % 4`), so the result depends on the values only.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    for v in x.iter_mut() {
        *v -= max;
    }
    quant::exp_f32_in_place(x);
    let mut lanes = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(rest) {
        *l += f64::from(v);
    }
    let sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// f32 dot product (SIMD when available; see `quant::dot_f32`).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    quant::dot_f32(a, b)
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    quant::axpy_f32(a, x, y)
}

/// `out[e] = a · rows[e]` for consecutive rows of `a.len()` (same bits as [`dot_f32`]
/// per row).
#[inline]
pub fn dot_f32_rows(a: &[f32], rows: &[f32], out: &mut [f32]) {
    quant::dot_f32_rows(a, rows, out)
}

/// `y += w[e] * rows[e]` for every non-zero `w[e]`, in order (same bits as [`axpy`]
/// per row).
#[inline]
pub fn axpy_rows(w: &[f32], rows: &[f32], y: &mut [f32]) {
    quant::axpy_f32_rows(w, rows, y)
}

/// The weighted sum of quantised value rows (see `quant::affine_rows`).
#[inline]
pub fn affine_rows(weights: &[f32], params: &[f32], group: usize, rows: &[f32], y: &mut [f32]) {
    quant::affine_rows(weights, params, group, rows, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_the_weight() {
        let x = [3.0f32; 8];
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut out = [0.0; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        for (o, g) in out.iter().zip(&w) {
            assert!((o - g).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_preserves_norm_and_position_zero_is_identity() {
        let mut angles = vec![(0.0, 0.0); 4];
        rope_angles(0, 10000.0, 8, &mut angles);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 1.0).collect();
        for style in [crate::RopeStyle::Adjacent, crate::RopeStyle::Neox] {
            let mut x = orig.clone();
            apply_rope(&mut x, 8, &angles, style);
            assert_eq!(x, orig);
        }
        rope_angles(37, 10000.0, 8, &mut angles);
        let mut x = orig.clone();
        apply_rope(&mut x, 8, &angles, crate::RopeStyle::Neox);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
        // The first pair rotates by exactly `pos` radians.
        assert!((angles[0].0 - 37f32.cos()).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masked_entries() {
        let mut x = [1.0, 2.0, f32::NEG_INFINITY, 0.5];
        softmax_in_place(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot_f32(&a, &b) - naive).abs() < 1e-5);
    }
}
