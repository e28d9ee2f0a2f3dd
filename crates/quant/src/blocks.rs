//! Byte layouts of the ggml block formats, and small helpers to read them.
//!
//! All multi-byte fields are little-endian. Blocks are stored back to back
//! with no padding, so block `i` of a row starts at byte `i * type_size`.
//! Rows coming from a memory-mapped GGUF file are not necessarily aligned to
//! the block's natural alignment, which is why this crate reads fields by
//! byte offset instead of casting to `#[repr(C)]` structs.
//!
//! Notation: `f16` is IEEE binary16, `d` a scale, `m`/`dmin` a minimum.
//!
//! Legacy formats (32 weights per block):
//!
//! | type | layout                                              | bytes | value                         |
//! |------|-----------------------------------------------------|-------|-------------------------------|
//! | Q4_0 | `d:f16, qs:[u8;16]`                                 | 18    | `d * (q - 8)`                 |
//! | Q4_1 | `d:f16, m:f16, qs:[u8;16]`                          | 20    | `d * q + m`                   |
//! | Q5_0 | `d:f16, qh:[u8;4], qs:[u8;16]`                      | 22    | `d * (q - 16)`                |
//! | Q5_1 | `d:f16, m:f16, qh:[u8;4], qs:[u8;16]`               | 24    | `d * q + m`                   |
//! | Q8_0 | `d:f16, qs:[i8;32]`                                 | 34    | `d * q`                       |
//! | Q8_1 | `d:f16, s:f16, qs:[i8;32]`                          | 36    | `d * q` (`s = d * sum(q)`)    |
//!
//! In the 4/5-bit legacy formats, byte `j` of `qs` holds element `j` in its
//! low nibble and element `j + 16` in its high nibble; the fifth bit of
//! element `k` is bit `k` of the little-endian `u32` `qh`.
//!
//! K-quants (256 weights per super-block):
//!
//! | type | layout                                                                   | bytes |
//! |------|--------------------------------------------------------------------------|-------|
//! | Q2_K | `scales:[u8;16], qs:[u8;64], d:f16, dmin:f16`                            | 84    |
//! | Q3_K | `hmask:[u8;32], qs:[u8;64], scales:[u8;12], d:f16`                       | 110   |
//! | Q4_K | `d:f16, dmin:f16, scales:[u8;12], qs:[u8;128]`                           | 144   |
//! | Q5_K | `d:f16, dmin:f16, scales:[u8;12], qh:[u8;32], qs:[u8;128]`               | 176   |
//! | Q6_K | `ql:[u8;128], qh:[u8;64], scales:[i8;16], d:f16`                         | 210   |
//! | Q8_K | `d:f32, qs:[i8;256], bsums:[i16;16]` (`bsums[j] = sum(qs[16j..16j+16])`) | 292   |
//!
//! See the per-type functions in [`crate::reference`] for how the quant bits
//! and sub-block scales are laid out inside `qs`/`qh`/`scales`.

use half::{bf16, f16};

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;
pub const Q8_1_BYTES: usize = 36;
pub const Q2K_BYTES: usize = 84;
pub const Q3K_BYTES: usize = 110;
pub const Q4K_BYTES: usize = 144;
pub const Q5K_BYTES: usize = 176;
pub const Q6K_BYTES: usize = 210;
pub const Q8K_BYTES: usize = 292;

/// Byte offsets inside each block.
pub mod off {
    // Q4_0
    pub const Q4_0_QS: usize = 2;
    // Q4_1
    pub const Q4_1_M: usize = 2;
    pub const Q4_1_QS: usize = 4;
    // Q5_0
    pub const Q5_0_QH: usize = 2;
    pub const Q5_0_QS: usize = 6;
    // Q5_1
    pub const Q5_1_M: usize = 2;
    pub const Q5_1_QH: usize = 4;
    pub const Q5_1_QS: usize = 8;
    // Q8_0
    pub const Q8_0_QS: usize = 2;
    // Q8_1
    pub const Q8_1_S: usize = 2;
    pub const Q8_1_QS: usize = 4;
    // Q2_K
    pub const Q2K_SCALES: usize = 0;
    pub const Q2K_QS: usize = 16;
    pub const Q2K_D: usize = 80;
    pub const Q2K_DMIN: usize = 82;
    // Q3_K
    pub const Q3K_HMASK: usize = 0;
    pub const Q3K_QS: usize = 32;
    pub const Q3K_SCALES: usize = 96;
    pub const Q3K_D: usize = 108;
    // Q4_K
    pub const Q4K_D: usize = 0;
    pub const Q4K_DMIN: usize = 2;
    pub const Q4K_SCALES: usize = 4;
    pub const Q4K_QS: usize = 16;
    // Q5_K
    pub const Q5K_D: usize = 0;
    pub const Q5K_DMIN: usize = 2;
    pub const Q5K_SCALES: usize = 4;
    pub const Q5K_QH: usize = 16;
    pub const Q5K_QS: usize = 48;
    // Q6_K
    pub const Q6K_QL: usize = 0;
    pub const Q6K_QH: usize = 128;
    pub const Q6K_SCALES: usize = 192;
    pub const Q6K_D: usize = 208;
    // Q8_K
    pub const Q8K_D: usize = 0;
    pub const Q8K_QS: usize = 4;
    pub const Q8K_BSUMS: usize = 260;
}

/// Reads a little-endian `u16` at `off`.
#[inline(always)]
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Reads a little-endian `i16` at `off`.
#[inline(always)]
pub fn i16_at(b: &[u8], off: usize) -> i16 {
    u16_at(b, off) as i16
}

/// Reads a little-endian `u32` at `off`.
#[inline(always)]
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Reads a little-endian `f32` at `off`.
#[inline(always)]
pub fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_bits(u32_at(b, off))
}

/// Reads an `f16` at `off` and widens it (exactly) to `f32`.
#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16_at(b, off)).to_f32()
}

/// `f32 -> f16` with round-to-nearest-even, like ggml's `GGML_CPU_FP32_TO_FP16`
/// on x86 (F16C `vcvtps2ph` with rounding mode 0).
#[inline(always)]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// `f32 -> bf16` exactly as ggml's `ggml_compute_fp32_to_bf16`: round to
/// nearest even, NaNs made quiet, subnormals kept.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Widens a bf16 bit pattern to `f32` (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    bf16::from_bits(b).to_f32()
}

/// Unpacks the 12-byte Q4_K/Q5_K `scales` field into eight 6-bit sub-block
/// scales and eight 6-bit sub-block mins (ggml's `get_scale_min_k4`).
///
/// Bytes 0..4 hold scales 0..4 (low 6 bits), bytes 4..8 mins 0..4 (low 6
/// bits); bytes 8..12 hold the low nibbles of scales 4..8 (low half) and mins
/// 4..8 (high half), whose top two bits are the top bits of bytes 0..8.
#[inline(always)]
pub fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, mn)
}

/// Unpacks the 12-byte Q3_K `scales` field into sixteen signed 6-bit scales
/// (already offset by -32).
///
/// Scale `j`'s low nibble is in byte `j % 8` (low nibble for `j < 8`, high
/// nibble for `j >= 8`); its top two bits are bits `2*(j/4)..` of byte
/// `8 + j % 4`.
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}
