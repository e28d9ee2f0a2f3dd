//! Shared helpers for the integration tests: a tiny deterministic RNG,
//! random *valid* weight rows, and test-only ggml-style weight quantisers.
#![allow(dead_code)]

use quant::GgmlType;

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    /// Roughly normal values (sum of uniforms), scaled.
    pub fn normal_vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.f32() + self.f32() + self.f32() - 1.5) * 2.0 * scale)
            .collect()
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// Offsets of the f16 scale fields (`d`, `m`/`dmin`/`s`) inside a block.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[],
    }
}

/// A random but valid row of `nb` blocks of `ty`: random quant/scale bytes,
/// f16 scales in a sane range (signed, |d| in [1e-4, 0.05)), finite floats.
pub fn random_row(rng: &mut Rng, ty: GgmlType, nb: usize) -> Vec<u8> {
    let ts = ty.type_size();
    let mut row = rng.bytes(nb * ts);
    for b in row.chunks_exact_mut(ts) {
        match ty {
            GgmlType::F32 => b.copy_from_slice(&rng.range(-1.0, 1.0).to_le_bytes()),
            GgmlType::F16 => put_f16(b, 0, rng.range(-1.0, 1.0)),
            GgmlType::BF16 => {
                let v = half::bf16::from_f32(rng.range(-1.0, 1.0));
                b.copy_from_slice(&v.to_bits().to_le_bytes());
            }
            GgmlType::Q8K => b[0..4].copy_from_slice(&rng.range(-0.05, 0.05).to_le_bytes()),
            _ => {
                for &off in f16_fields(ty) {
                    let mag = rng.range(1e-4, 0.05);
                    let v = if rng.next_u64() & 1 == 0 { mag } else { -mag };
                    put_f16(b, off, v);
                }
            }
        }
    }
    row
}

/// Quantises `x` to `ty` with the public activation quantiser.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quant::quantize_row(ty, x, &mut out).unwrap();
    out
}

pub fn dequantize(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    quant::dequantize_row(ty, b, &mut out).unwrap();
    out
}

/// Test-only transliterations of ggml's reference weight quantisers
/// (`quantize_row_q4_0_ref` etc.) for the legacy formats.
pub mod weight_quant {
    use super::put_f16;

    /// (signed value with the largest |x|, largest |x|)
    fn signed_max(x: &[f32]) -> (f32, f32) {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        (max, amax)
    }

    fn min_max(x: &[f32]) -> (f32, f32) {
        x.iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }

    pub fn q4_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let (max, _) = signed_max(blk);
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = [0u8; 18];
            put_f16(&mut b, 0, d);
            for j in 0..16 {
                let q0 = ((blk[j] * id + 8.5) as i8 as u8).min(15);
                let q1 = ((blk[j + 16] * id + 8.5) as i8 as u8).min(15);
                b[2 + j] = q0 | (q1 << 4);
            }
            out.extend_from_slice(&b);
        }
        out
    }

    pub fn q4_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let (min, max) = min_max(blk);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = [0u8; 20];
            put_f16(&mut b, 0, d);
            put_f16(&mut b, 2, min);
            for j in 0..16 {
                let q0 = (((blk[j] - min) * id + 0.5) as i8 as u8).min(15);
                let q1 = (((blk[j + 16] - min) * id + 0.5) as i8 as u8).min(15);
                b[4 + j] = q0 | (q1 << 4);
            }
            out.extend_from_slice(&b);
        }
        out
    }

    pub fn q5_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let (max, _) = signed_max(blk);
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = [0u8; 22];
            put_f16(&mut b, 0, d);
            let mut qh = 0u32;
            for j in 0..16 {
                let q0 = ((blk[j] * id + 16.5) as i8 as u8).min(31);
                let q1 = ((blk[j + 16] * id + 16.5) as i8 as u8).min(31);
                b[6 + j] = (q0 & 15) | ((q1 & 15) << 4);
                qh |= ((q0 as u32 >> 4) & 1) << j;
                qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
            }
            b[2..6].copy_from_slice(&qh.to_le_bytes());
            out.extend_from_slice(&b);
        }
        out
    }

    pub fn q5_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let (min, max) = min_max(blk);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = [0u8; 24];
            put_f16(&mut b, 0, d);
            put_f16(&mut b, 2, min);
            let mut qh = 0u32;
            for j in 0..16 {
                let q0 = ((blk[j] - min) * id + 0.5) as u8;
                let q1 = ((blk[j + 16] - min) * id + 0.5) as u8;
                b[8 + j] = (q0 & 15) | ((q1 & 15) << 4);
                qh |= ((q0 as u32 >> 4) & 1) << j;
                qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
            }
            b[4..8].copy_from_slice(&qh.to_le_bytes());
            out.extend_from_slice(&b);
        }
        out
    }

    /// `quantize_row_q8_0_ref` (portable: `1/d` and `roundf`).
    pub fn q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut b = [0u8; 34];
            put_f16(&mut b, 0, d);
            for j in 0..32 {
                b[2 + j] = (blk[j] * id).round() as i8 as u8;
            }
            out.extend_from_slice(&b);
        }
        out
    }
}
