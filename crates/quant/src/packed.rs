//! Weight matrices repacked in groups of 16 rows, for the AVX-512 VNNI
//! matrix kernels.
//!
//! Why: the row-at-a-time kernels reduce every 32-element block to one number
//! per (weight row, activation row) and then scale it, which costs several
//! shuffles and conversions per block. Here the 16 rows of a group sit in the
//! 16 lanes of a 512-bit register: four bytes of each row side by side, so one
//! `vpdpbusd` against four broadcast activation bytes advances all 16 rows'
//! integer sums at once, and the block's scales are applied to the 16 rows with
//! one multiply-add. No horizontal sums at all.
//!
//! Layout (`rows` a multiple of 16): for each group of 16 rows, for each block
//! `b` of the row, one packed block. Q4_1 ([`Q4_1X16_BYTES`] bytes):
//!
//! ```text
//! d[16]: f16      the 16 rows' block scales
//! m[16]: f16      the 16 rows' block minimums
//! qs[4][16][4]    chunk t, row r: bytes 4t..4t+4 of row r's 16 `qs` bytes
//! ```
//!
//! Low nibbles of chunk `t` are elements `4t..4t+4` of the block, high nibbles
//! elements `16+4t..16+4t+4` (Q4_1's element order), so each lane meets the
//! matching four activation bytes. Q8_0 ([`Q8_0X16_BYTES`] bytes):
//!
//! ```text
//! d[16]: f16      the 16 rows' block scales
//! sum[16]: i16    the sum of each row's 32 quants
//! qs[8][16][4]    chunk t, row r: quants 4t..4t+4 of row r
//! ```
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, and here both operands are
//! signed, so the kernel offsets the activation quants by 128 (making them
//! unsigned) and subtracts `128 * sum` of the row's quants, which is exact.
//! Q4_K ([`Q4KX16_BYTES`] bytes per 256-element super-block):
//!
//! ```text
//! d[16], dmin[16]: f16
//! sc[8][16]: u8           sub-block s's 6-bit scale, row r
//! mn[4][16][2]: i16       the mins of sub-blocks 2k and 2k+1, row r (for vpdpwssd)
//! qs[4][8][16][4]         pair j, chunk t, row r: bytes 32j+4t..32j+4t+4 of row r's qs
//! ```
//!
//! (Low nibbles of pair `j` are sub-block `2j`, high nibbles sub-block `2j+1`.)
//! Q5_0 ([`Q5_0X16_BYTES`] bytes): like Q4_1's nibbles, with the fifth bits as
//! masks, and the sums of the signed quants as for Q8_0:
//!
//! ```text
//! d[16]: f16
//! sum[16]: i16            the sum of each row's 32 signed quants
//! qs[4][16][4]            as Q4_1
//! high[8]: u64            bit 4r+k of mask t (t < 4: low nibbles of chunk t,
//!                         else high nibbles of chunk t-4): the fifth bit
//! ```
//!
//! Q6_K ([`Q6KX16_BYTES`] bytes per super-block, the size of 16 GGUF blocks): the
//! unsigned 6-bit quants `u = q + 32` in chunks of 4 elements (64 per super-block),
//! as a nibble plane and a two-bit plane; the `-32` is applied exactly with Q8_K's
//! sums of 16 activation quants:
//!
//! ```text
//! d[16]: f16
//! sc[16][16]: i8          sub-block s's scale, row r
//! nib[32][16][4]          plane p, row r: low nibbles chunk 2p, high nibbles 2p+1
//! top[16][16][4]          plane q, row r: bits 2i..2i+2 are the top bits of chunk 4q+i
//! ```
//!
//! Results: the integer block sums are exact (as in [`crate::reference`]); per
//! (row, activation row) the block terms are accumulated in block order with
//! fused multiply-adds, the same instructions whatever the number of
//! activation rows or the group, so batched and single-row results are equal
//! bit for bit. They differ from the row kernels only by `f32` rounding.

use crate::blocks::{off::*, *};
use crate::types::{GgmlType, QK};

/// Rows per group.
pub const GROUP: usize = 16;
/// Bytes of one packed Q4_1 block of 16 rows.
pub const Q4_1X16_BYTES: usize = GROUP * Q4_1_BYTES;
/// Bytes of one packed Q8_0 block of 16 rows (the quant sums are extra).
pub const Q8_0X16_BYTES: usize = GROUP * (Q8_0_BYTES + 2);
/// Bytes of one packed Q5_0 block of 16 rows.
pub const Q5_0X16_BYTES: usize = 32 + 32 + 256 + 64;
/// Bytes of one packed Q6_K super-block of 16 rows.
pub const Q6KX16_BYTES: usize = GROUP * Q6K_BYTES;
/// Bytes of one packed Q4_K super-block of 16 rows (scales and mins unpacked).
pub const Q4KX16_BYTES: usize = GROUP * (4 + 8 + 16 + 128);

/// A weight matrix repacked for the 16-row kernels.
pub struct PackedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix({} [{}, {}])",
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

impl PackedMatrix {
    /// Repacks `rows` rows of `cols` elements of type `ty` (`data` in GGUF row
    /// order), or `None` when there is no 16-row kernel for `ty` on this CPU,
    /// `rows` is not a multiple of 16, or `data` has the wrong size.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Option<PackedMatrix> {
        let packed_block = match ty {
            GgmlType::Q4_1 => Q4_1X16_BYTES,
            GgmlType::Q8_0 => Q8_0X16_BYTES,
            GgmlType::Q5_0 => Q5_0X16_BYTES,
            GgmlType::Q4K => Q4KX16_BYTES,
            GgmlType::Q6K => Q6KX16_BYTES,
            _ => return None,
        };
        if !rows.is_multiple_of(GROUP) || !crate::packed_kernels_available() {
            return None;
        }
        let row_bytes = ty.row_bytes(cols)?;
        if data.len() != rows * row_bytes {
            return None;
        }
        let nb = cols / ty.block_size();
        let block_bytes = ty.type_size();
        let mut out = vec![0u8; rows / GROUP * nb * packed_block];
        for g in 0..rows / GROUP {
            for b in 0..nb {
                let dst = &mut out[(g * nb + b) * packed_block..][..packed_block];
                for r in 0..GROUP {
                    let src = &data[(g * GROUP + r) * row_bytes + b * block_bytes..][..block_bytes];
                    match ty {
                        GgmlType::Q4_1 => pack_q4_1_row(src, r, dst),
                        GgmlType::Q8_0 => pack_q8_0_row(src, r, dst),
                        GgmlType::Q5_0 => pack_q5_0_row(src, r, dst),
                        GgmlType::Q4K => pack_q4k_row(src, r, dst),
                        _ => pack_q6k_row(src, r, dst),
                    }
                }
            }
        }
        Some(PackedMatrix {
            ty,
            rows,
            cols,
            data: out,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `out[k][r] = row (16 * group + r) · acts[k]` for the 16 rows of
    /// `group`; `acts` quantised to the type's `vec_dot_type()`.
    ///
    /// Panics if `group` is out of range, `out` and `acts` differ in length or
    /// an activation row has the wrong size.
    pub fn group_dots(&self, group: usize, acts: &[&[u8]], out: &mut [[f32; GROUP]]) {
        assert!(
            group < self.rows / GROUP,
            "group_dots: group {group} out of range"
        );
        assert_eq!(acts.len(), out.len(), "group_dots: acts/out length");
        let act_bytes = self.ty.vec_dot_type().row_bytes(self.cols);
        for a in acts {
            assert_eq!(Some(a.len()), act_bytes, "group_dots: activation row size");
        }
        let nb = self.cols / self.ty.block_size();
        let block = self.data.len() / (self.rows / GROUP * nb);
        let w = &self.data[group * nb * block..][..nb * block];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` only succeeds when the CPU has the kernels' features;
        // the sizes were checked above.
        unsafe {
            match self.ty {
                GgmlType::Q4_1 => crate::avx512::packed_q4_1_multi(nb, w, acts, out),
                GgmlType::Q8_0 => crate::avx512::packed_q8_0_multi(nb, w, acts, out),
                GgmlType::Q5_0 => crate::avx512::packed_q5_0_multi(nb, w, acts, out),
                GgmlType::Q4K => crate::avx512::packed_q4k_multi(nb, w, acts, out),
                _ => crate::avx512::packed_q6k_multi(nb, w, acts, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (nb, w);
            unreachable!("PackedMatrix::new never succeeds off x86_64")
        }
    }
}

impl PackedMatrix {
    /// Whether [`PackedMatrix::tile_dots`] runs on AMX tiles for this matrix
    /// (else it runs [`PackedMatrix::group_dots`] per group, with equal results).
    pub fn has_tile_kernel(&self) -> bool {
        crate::amx_available()
            && matches!(
                self.ty,
                GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4K
            )
    }

    /// Whether [`PackedMatrix::tile_dots`] would run `m` activation rows on AMX
    /// tiles (else it runs [`PackedMatrix::group_dots`]).
    pub fn tiles_for(&self, m: usize) -> bool {
        self.has_tile_kernel() && m >= amx_min_rows(self.ty)
    }

    /// `out[g][i][r]` = row `16 * (g0 + g) + r` · activation row `i`, for the
    /// groups `g0..g0 + out.len()` and the `m` (1..=16) activation rows lying
    /// back to back in `acts` (quantised to the type's `vec_dot_type()`), whose
    /// block scales [`activation_scales`] put in `scales`. Rows `m..16` of each
    /// `out[g]` are left as they were.
    ///
    /// Bit-identical to [`PackedMatrix::group_dots`], on AMX tiles where the
    /// CPU has them (see [`crate::amx_available`]).
    ///
    /// Panics if the groups are out of range, `m` is not in 1..=16, or `acts`
    /// or `scales` have the wrong size.
    pub fn tile_dots(
        &self,
        g0: usize,
        acts: &[u8],
        m: usize,
        scales: &[f32],
        out: &mut [[[f32; GROUP]; GROUP]],
    ) {
        assert!(
            g0 + out.len() <= self.rows / GROUP,
            "tile_dots: groups {g0}..{} out of range",
            g0 + out.len()
        );
        assert!((1..=GROUP).contains(&m), "tile_dots: {m} activation rows");
        let act_type = self.ty.vec_dot_type();
        let act_bytes = act_type
            .row_bytes(self.cols)
            .expect("packed matrices have whole blocks");
        assert_eq!(acts.len(), m * act_bytes, "tile_dots: activation rows size");
        let nb = self.cols / self.ty.block_size();
        assert_eq!(
            scales.len(),
            m * nb * scales_per_block(act_type),
            "tile_dots: scales size"
        );
        if self.tiles_for(m) && self.amx_tile_dots(g0, acts, m, scales, out) {
            return;
        }
        let rows: Vec<&[u8]> = acts.chunks(act_bytes).collect();
        for (g, group_out) in out.iter_mut().enumerate() {
            self.group_dots(g0 + g, &rows, &mut group_out[..m]);
        }
    }
}

impl PackedMatrix {
    /// [`PackedMatrix::tile_dots`] on AMX tiles whatever `m` (callers check the
    /// arguments); `false`, with `out` untouched, when there is no AMX kernel.
    #[doc(hidden)]
    pub fn amx_tile_dots(
        &self,
        g0: usize,
        acts: &[u8],
        m: usize,
        scales: &[f32],
        out: &mut [[[f32; GROUP]; GROUP]],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.has_tile_kernel() {
            let stride = acts.len() / m;
            assert_eq!(acts.len(), m * stride, "amx_tile_dots: activation rows");
            let nb = self.cols / self.ty.block_size();
            let tile = crate::amx::Tile {
                rows: acts.as_ptr(),
                stride,
                m,
                scales,
            };
            // SAFETY: `has_tile_kernel` checked AMX (and with it the AVX-512
            // features `new` needed); the kernels check the sizes.
            unsafe {
                match self.ty {
                    GgmlType::Q4_1 => crate::amx::q4_1(nb, &self.data, g0, &tile, out),
                    GgmlType::Q8_0 => crate::amx::q8_0(nb, &self.data, g0, &tile, out),
                    GgmlType::Q5_0 => crate::amx::q5_0(nb, &self.data, g0, &tile, out),
                    _ => crate::amx::q4k(nb, &self.data, g0, &tile, out),
                }
            }
            return true;
        }
        let _ = (g0, acts, m, scales, out);
        false
    }
}

/// The fewest activation rows for which the AMX kernel of `ty` beats the
/// AVX-512 one (single thread, `examples/tile_speed`; AMX / AVX-512 at 4, 8
/// and 16 rows): Q5_0 1.3x/2.0x/2.8x, Q4_1 0.9x/1.3x/1.7x, Q8_0 0.9x/1.5x/2.3x,
/// Q4_K 0.8x/1.0x/1.2x. (Q6_K, with 16-element sub-blocks, was no faster at
/// any size and has no AMX kernel.)
///
/// `QUANT_AMX_MIN_ROWS=N` sets one threshold for every type (for measuring).
fn amx_min_rows(ty: GgmlType) -> usize {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let fixed = OVERRIDE.get_or_init(|| {
        std::env::var("QUANT_AMX_MIN_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(n) = *fixed {
        return n;
    }
    match ty {
        GgmlType::Q5_0 => 4,
        GgmlType::Q4_1 => 8,
        GgmlType::Q8_0 => 6,
        _ => 12,
    }
}

/// How many `f32` scales [`activation_scales`] keeps per block of `act_type`.
fn scales_per_block(act_type: GgmlType) -> usize {
    match act_type {
        GgmlType::Q8_1 => 2,
        GgmlType::Q8_0 => 1,
        _ => Q8K_TABLE_WORDS,
    }
}

/// The block scales of `rows` quantised activation rows (`acts`, type
/// `act_type`: Q8_1, Q8_0 or Q8_K), as [`PackedMatrix::tile_dots`] reads them:
/// per row and block `[d, s]` (Q8_1) or `[d]` (Q8_0), converted to `f32`;
/// for Q8_K, `d` and the block sums in the pairs the Q4_K kernel wants.
///
/// Panics on other types or a size that is not whole rows of whole blocks.
pub fn activation_scales(act_type: GgmlType, acts: &[u8], rows: usize, out: &mut Vec<f32>) {
    let (block, fields): (usize, &[usize]) = match act_type {
        GgmlType::Q8_1 => (Q8_1_BYTES, &[0, off::Q8_1_S]),
        GgmlType::Q8_0 => (Q8_0_BYTES, &[0]),
        GgmlType::Q8K => (Q8K_BYTES, &[]),
        other => panic!("activation_scales: {other} has no tile kernel"),
    };
    out.clear();
    if act_type == GgmlType::Q8K {
        assert!(
            rows > 0
                && acts.len().is_multiple_of(rows)
                && (acts.len() / rows).is_multiple_of(block),
            "activation_scales: {} bytes are not {rows} rows of {act_type} blocks",
            acts.len()
        );
        for b in acts.chunks_exact(block) {
            q8k_table_row(b, out);
        }
        return;
    }
    assert!(
        rows > 0 && acts.len().is_multiple_of(rows) && (acts.len() / rows).is_multiple_of(block),
        "activation_scales: {} bytes are not {rows} rows of {act_type} blocks",
        acts.len()
    );
    out.clear();
    for b in acts.chunks_exact(block) {
        for &f in fields {
            out.push(half::f16::from_le_bytes([b[f], b[f + 1]]).to_f32());
        }
    }
}

/// Row `r` (of 16) of a Q4_1 block into the packed block `dst`.
fn pack_q4_1_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[2..4]);
    for t in 0..4 {
        let at = 64 + t * 64 + 4 * r;
        dst[at..at + 4].copy_from_slice(&src[Q4_1_QS + 4 * t..][..4]);
    }
}

/// Row `r` (of 16) of a Q8_0 block into the packed block `dst`.
fn pack_q8_0_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    let qs = &src[Q8_0_QS..Q8_0_QS + QK];
    let sum: i16 = qs.iter().map(|&q| i16::from(q as i8)).sum();
    dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&sum.to_le_bytes());
    for t in 0..8 {
        let at = 64 + t * 64 + 4 * r;
        dst[at..at + 4].copy_from_slice(&qs[4 * t..4 * t + 4]);
    }
}

/// Row `r` (of 16) of a Q5_0 block into the packed block `dst`.
fn pack_q5_0_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    let qh = u32::from_le_bytes([
        src[Q5_0_QH],
        src[Q5_0_QH + 1],
        src[Q5_0_QH + 2],
        src[Q5_0_QH + 3],
    ]);
    let qs = &src[Q5_0_QS..Q5_0_QS + 16];
    // Element e: nibble (low of qs[e] for e < 16, high of qs[e - 16]) | bit e of qh << 4.
    let quant = |e: usize| {
        let nibble = if e < 16 {
            qs[e] & 0x0f
        } else {
            qs[e - 16] >> 4
        };
        i16::from(nibble | (((qh >> e) & 1) as u8) << 4) - 16
    };
    let sum: i16 = (0..QK).map(quant).sum();
    dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&sum.to_le_bytes());
    for t in 0..4 {
        let at = 64 + t * 64 + 4 * r;
        dst[at..at + 4].copy_from_slice(&qs[4 * t..4 * t + 4]);
    }
    for m in 0..8 {
        let at = 320 + 8 * m;
        let mut mask = u64::from_le_bytes(dst[at..at + 8].try_into().expect("8 bytes"));
        for k in 0..4 {
            let e = if m < 4 {
                4 * m + k
            } else {
                16 + 4 * (m - 4) + k
            };
            if (qh >> e) & 1 == 1 {
                mask |= 1 << (4 * r + k);
            }
        }
        dst[at..at + 8].copy_from_slice(&mask.to_le_bytes());
    }
}

/// Row `r` (of 16) of a Q4_K super-block into the packed block `dst`.
fn pack_q4k_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[Q4K_D..Q4K_D + 2]);
    dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[Q4K_DMIN..Q4K_DMIN + 2]);
    let (sc, mn) = k4_scales_mins(&src[Q4K_SCALES..Q4K_SCALES + 12]);
    for s in 0..8 {
        dst[64 + 16 * s + r] = sc[s];
    }
    for k in 0..4 {
        let at = 192 + 64 * k + 4 * r;
        dst[at..at + 2].copy_from_slice(&i16::from(mn[2 * k]).to_le_bytes());
        dst[at + 2..at + 4].copy_from_slice(&i16::from(mn[2 * k + 1]).to_le_bytes());
    }
    for j in 0..4 {
        for t in 0..8 {
            let at = 448 + 512 * j + 64 * t + 4 * r;
            dst[at..at + 4].copy_from_slice(&src[Q4K_QS + 32 * j + 4 * t..][..4]);
        }
    }
}

/// Row `r` (of 16) of a Q6_K super-block into the packed block `dst`.
fn pack_q6k_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[Q6K_D..Q6K_D + 2]);
    for s in 0..16 {
        dst[32 + 16 * s + r] = src[Q6K_SCALES + s];
    }
    let (ql, qh) = (&src[Q6K_QL..Q6K_QL + 128], &src[Q6K_QH..Q6K_QH + 64]);
    // The unsigned quant (q + 32) of element e, in ggml's Q6_K element order.
    let unsigned = |e: usize| {
        let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let byte = ql[64 * n + l + 32 * (k % 2)];
        let nibble = if k < 2 { byte & 0x0f } else { byte >> 4 };
        nibble | ((qh[32 * n + l] >> (2 * k)) & 3) << 4
    };
    for chunk in 0..64 {
        for i in 0..4 {
            let u = unsigned(4 * chunk + i);
            let nib = 288 + 64 * (chunk / 2) + 4 * r + i;
            dst[nib] |= (u & 0x0f) << (4 * (chunk % 2));
            let top = 288 + 2048 + 64 * (chunk / 4) + 4 * r + i;
            dst[top] |= (u >> 4) << (2 * (chunk % 4));
        }
    }
}

/// Words per row and super-block of the Q8_K table ([`activation_scales`]).
pub(crate) const Q8K_TABLE_WORDS: usize = 5;
/// Word 0: `d` (f32). Words 1..5: the 16-bit pairs `(bsum32_2k, bsum32_2k+1)`
/// (sums of 32 quants) for `vpdpwssd` with Q4_K's mins.
pub(crate) const Q8K_TABLE_Q4K_MINS: usize = 1;

/// Appends the table words of one Q8_K block (`d`, then the sums as above),
/// computed once per matmul instead of once per 16 weight rows.
fn q8k_table_row(block: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([
        block[Q8K_D],
        block[Q8K_D + 1],
        block[Q8K_D + 2],
        block[Q8K_D + 3],
    ]);
    let bsum =
        |s: usize| i16::from_le_bytes([block[Q8K_BSUMS + 2 * s], block[Q8K_BSUMS + 2 * s + 1]]);
    let pair = |a: i16, b: i16| f32::from_bits(u32::from(a as u16) | (u32::from(b as u16) << 16));
    out.push(d);
    // (wrapping, as the AVX-512 kernel adds them in 16 bits)
    let sum32 = |s: usize| bsum(2 * s).wrapping_add(bsum(2 * s + 1));
    for k in 0..4 {
        out.push(pair(sum32(2 * k), sum32(2 * k + 1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_cannot_pack() {
        let row = GgmlType::Q4_1.row_bytes(64).unwrap();
        assert!(PackedMatrix::new(GgmlType::Q4_1, 15, 64, &vec![0; 15 * row]).is_none());
        assert!(PackedMatrix::new(GgmlType::Q4_1, 16, 64, &vec![0; 16 * row - 1]).is_none());
        let row0 = GgmlType::Q4_0.row_bytes(64).unwrap();
        // (Q4_0 has no 16-row kernel.)
        assert!(PackedMatrix::new(GgmlType::Q4_0, 16, 64, &vec![0; 16 * row0]).is_none());
    }
}
