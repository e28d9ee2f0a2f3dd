//! Intel AMX (tile) kernels over the 16-row packed weights, for batches of
//! activation rows (prefill, batched decoding, speculative verification).
//!
//! Why: the [`crate::avx512`] kernels spend one `vpdpbusd` per four elements
//! per activation row, plus the broadcasts and scale arithmetic around it. An
//! AMX `tdpbsud`/`tdpbssd` multiplies a tile of up to 16 activation rows by
//! the 16 weight rows of a group over a whole 32-element block at once, so
//! what is left per block is the scaling of the integer sums, which is the
//! same per-(row, block) arithmetic as before.
//!
//! Results are bit-identical to the AVX-512 kernels: the integer block sums
//! are exact either way, and the `f32` scaling and accumulation run the same
//! instructions in the same (block) order per (weight row, activation row).
//! So the choice between the two paths is a matter of speed only, and
//! batched rows stay equal to single rows.
//!
//! Tiles (fixed roles):
//! - `tmm0`: C, `M` activation rows × 16 weight rows of `i32`;
//! - `tmm1`: A, `M` activation rows × 32 quants (`i8`), read in place from the
//!   quantised activation rows with their row stride;
//! - `tmm2`: B, 8 rows × (16 weight rows × 4 quants), the packed layout's
//!   chunks, which is the layout AMX wants for B.
//!
//! # Safety
//! Every function requires AMX-TILE/INT8 with the tile data permission granted
//! by the kernel (see [`available`]) plus the AVX-512 features of
//! [`crate::avx512`].

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use crate::blocks::{off::*, *};
use crate::packed::{
    Q4_1X16_BYTES, Q5_0X16_BYTES, Q8K_TABLE_Q4K_MINS, Q8K_TABLE_WORDS, Q8_0X16_BYTES,
};

/// Whether the AMX kernels can run: the CPU has AMX-TILE and AMX-INT8, Linux
/// granted this process the tile data state, the AVX-512 kernels are in use,
/// and `QUANT_NO_AMX` is not set. Detected once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("QUANT_NO_AMX").is_some() || !crate::packed_kernels_available() {
            return false;
        }
        // CPUID.(EAX=7, ECX=0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        // (CPUID leaf 7 exists on every CPU with AVX-512.)
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        request_tile_permission()
    })
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: a plain system call that only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// A tile configuration (`ldtilecfg`'s 64-byte operand, palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// C and A with `m` rows, A `a_bytes` wide, B with `b_rows` rows of 64 bytes.
    fn new(m: usize, a_bytes: usize, b_rows: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |tile: usize, rows: usize, bytes: usize| {
            c[16 + 2 * tile..16 + 2 * tile + 2].copy_from_slice(&(bytes as u16).to_le_bytes());
            c[48 + tile] = rows as u8;
        };
        set(0, m, 64);
        set(1, m, a_bytes);
        set(2, b_rows, 64);
        TileConfig(c)
    }
}

/// C as stored from `tmm0`, read back right away: a second buffer, to let
/// one block's scaling overlap the next block's tile work, measured slower.
#[repr(C, align(64))]
struct CTile([[i32; 16]; 16]);

/// Loads the tile configuration. The matching `tilerelease` is in [`release`].
#[inline(always)]
unsafe fn configure(cfg: &TileConfig) {
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
}

#[inline(always)]
unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// `tmm0 = A(a, stride) · B(b)`, A signed, B unsigned; stores C to `c`.
#[inline(always)]
unsafe fn block_dots_su(a: *const u8, stride: usize, b: *const u8, c: *mut [i32; 16]) {
    asm!(
        "tileloadd tmm1, [{a} + {s}*1]",
        "tileloadd tmm2, [{b} + {w}*1]",
        "tilezero tmm0",
        "tdpbsud tmm0, tmm1, tmm2",
        "tilestored [{c} + {w}*1], tmm0",
        a = in(reg) a, s = in(reg) stride, b = in(reg) b, c = in(reg) c, w = in(reg) 64usize,
        options(nostack),
    );
}

/// As [`block_dots_su`], both operands signed.
#[inline(always)]
unsafe fn block_dots_ss(a: *const u8, stride: usize, b: *const u8, c: *mut [i32; 16]) {
    asm!(
        "tileloadd tmm1, [{a} + {s}*1]",
        "tileloadd tmm2, [{b} + {w}*1]",
        "tilezero tmm0",
        "tdpbssd tmm0, tmm1, tmm2",
        "tilestored [{c} + {w}*1], tmm0",
        a = in(reg) a, s = in(reg) stride, b = in(reg) b, c = in(reg) c, w = in(reg) 64usize,
        options(nostack),
    );
}

/// Activation rows for the tile kernels: `m` (1..=16) quantised rows at a
/// fixed stride, and their block scales as `f32`.
pub(crate) struct Tile<'a> {
    /// Row 0; row `i` starts `i * stride` bytes later.
    pub rows: *const u8,
    pub stride: usize,
    pub m: usize,
    /// Per row and block: `[d, s]` (Q8_1) or `[d]` (Q8_0), row after row.
    pub scales: &'a [f32],
}

/// Runs `$kern::<M>` for the tile's `m`.
macro_rules! dispatch_m {
    ($kern:ident, $tile:expr, $($arg:expr),*) => {
        match $tile.m {
            1 => $kern::<1>($($arg),*), 2 => $kern::<2>($($arg),*),
            3 => $kern::<3>($($arg),*), 4 => $kern::<4>($($arg),*),
            5 => $kern::<5>($($arg),*), 6 => $kern::<6>($($arg),*),
            7 => $kern::<7>($($arg),*), 8 => $kern::<8>($($arg),*),
            9 => $kern::<9>($($arg),*), 10 => $kern::<10>($($arg),*),
            11 => $kern::<11>($($arg),*), 12 => $kern::<12>($($arg),*),
            13 => $kern::<13>($($arg),*), 14 => $kern::<14>($($arg),*),
            15 => $kern::<15>($($arg),*), 16 => $kern::<16>($($arg),*),
            m => panic!("AMX tile of {m} rows"),
        }
    };
}

/// `out[g][i][r]`: weight row `16 * (g0 + g) + r` · activation row `i`, for
/// the groups `g0..g0 + out.len()` of a packed Q4_1 matrix (`w`: all groups,
/// `nb` blocks per row) against Q8_1 activations.
///
/// # Safety
/// See the module; `w` must hold the groups, the tile's rows `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn q4_1(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    dispatch_m!(q4_1_m, tile, nb, w, g0, tile, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_1_m<const M: usize>(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    assert!(w.len() >= (g0 + out.len()) * nb * Q4_1X16_BYTES);
    assert!(tile.scales.len() >= M * nb * 2);
    let low = _mm512_set1_epi8(0x0f);
    let mut c = CTile([[0; 16]; 16]);
    // The group's B tiles, unpacked before the tile loads read them (a tile load
    // right after the vector stores to the same lines stalls).
    let bt = unpack_buffer(nb * 512);
    configure(&TileConfig::new(M, 32, 8));
    for (g, group_out) in out.iter_mut().enumerate() {
        let wg = w.as_ptr().add((g0 + g) * nb * Q4_1X16_BYTES);
        for b in 0..nb {
            let wb = wg.add(b * Q4_1X16_BYTES);
            let dst = bt.add(512 * b);
            // B rows 0..4: low nibbles (elements 4t..4t+4), rows 4..8: high (16+4t..).
            for t in 0..4 {
                let z = _mm512_loadu_si512(wb.add(64 + 64 * t).cast());
                _mm512_store_si512(dst.add(64 * t).cast(), _mm512_and_si512(z, low));
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
                _mm512_store_si512(dst.add(64 * (4 + t)).cast(), hi);
            }
        }
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let a = tile.rows.add(b * Q8_1_BYTES + Q8_1_QS);
            block_dots_su(a, tile.stride, bt.add(512 * b), c.0.as_mut_ptr());
            let wb = wg.add(b * Q4_1X16_BYTES);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let mw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.add(32).cast()));
            for (i, (acc, c)) in acc.iter_mut().zip(&c.0).enumerate() {
                let dot = _mm512_cvtepi32_ps(_mm512_load_si512(c.as_ptr().cast()));
                let ds = tile.scales.as_ptr().add(2 * (i * nb + b));
                let da = _mm512_set1_ps(*ds);
                let sa = _mm512_set1_ps(*ds.add(1));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), dot, *acc);
                *acc = _mm512_fmadd_ps(mw, sa, *acc);
            }
        }
        for (o, a) in group_out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
    release();
}

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// Each thread's buffer for a group's unpacked B tiles; it only grows.
    static UNPACKED: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's 64-byte aligned unpack buffer, at least `len` bytes. Valid
/// until the next call on this thread (the kernels do not nest).
fn unpack_buffer(len: usize) -> *mut u8 {
    UNPACKED.with_borrow_mut(|buf| {
        if buf.len() * 64 < len {
            buf.resize(len.div_ceil(64), Line([0; 64]));
        }
        buf.as_mut_ptr().cast()
    })
}

/// As [`q4_1`] for packed Q8_0 weights against Q8_0 activations (scales `[d]`).
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn q8_0(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    dispatch_m!(q8_0_m, tile, nb, w, g0, tile, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_m<const M: usize>(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    assert!(w.len() >= (g0 + out.len()) * nb * Q8_0X16_BYTES);
    assert!(tile.scales.len() >= M * nb);
    let mut c = CTile([[0; 16]; 16]);
    configure(&TileConfig::new(M, 32, 8));
    for (g, group_out) in out.iter_mut().enumerate() {
        let wg = w.as_ptr().add((g0 + g) * nb * Q8_0X16_BYTES);
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            // The packed chunks are B as they lie.
            let a = tile.rows.add(b * Q8_0_BYTES + Q8_0_QS);
            block_dots_ss(
                a,
                tile.stride,
                wg.add(b * Q8_0X16_BYTES + 64),
                c.0.as_mut_ptr(),
            );
            signed_block_scaling(
                &c.0,
                wg.add(b * Q8_0X16_BYTES),
                tile.scales,
                nb,
                b,
                &mut acc,
            );
        }
        for (o, a) in group_out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
    release();
}

/// As [`q4_1`] for packed Q5_0 weights against Q8_0 activations (scales `[d]`).
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn q5_0(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    dispatch_m!(q5_0_m, tile, nb, w, g0, tile, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q5_0_m<const M: usize>(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    assert!(w.len() >= (g0 + out.len()) * nb * Q5_0X16_BYTES);
    assert!(tile.scales.len() >= M * nb);
    let low = _mm512_set1_epi8(0x0f);
    let minus16 = _mm512_set1_epi8(0xF0u8 as i8);
    let mut c = CTile([[0; 16]; 16]);
    let bt = unpack_buffer(nb * 512);
    configure(&TileConfig::new(M, 32, 8));
    for (g, group_out) in out.iter_mut().enumerate() {
        let wg = w.as_ptr().add((g0 + g) * nb * Q5_0X16_BYTES);
        for b in 0..nb {
            let wb = wg.add(b * Q5_0X16_BYTES);
            let masks = wb.add(320).cast::<u64>();
            // The signed quants, as the AVX-512 kernel rebuilds them: B row
            // 4h + t holds chunk t's low (h = 0) or high (h = 1) nibbles.
            for t in 0..4 {
                let z = _mm512_loadu_si512(wb.add(64 + 64 * t).cast());
                let halves = [
                    _mm512_and_si512(z, low),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(z), low),
                ];
                for (h, nibble) in halves.into_iter().enumerate() {
                    let bit4 = masks.add(4 * h + t).read_unaligned();
                    let q = _mm512_mask_blend_epi8(bit4, _mm512_or_si512(nibble, minus16), nibble);
                    _mm512_store_si512(bt.add(512 * b + 64 * (4 * h + t)).cast(), q);
                }
            }
        }
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let a = tile.rows.add(b * Q8_0_BYTES + Q8_0_QS);
            block_dots_ss(a, tile.stride, bt.add(512 * b), c.0.as_mut_ptr());
            signed_block_scaling(
                &c.0,
                wg.add(b * Q5_0X16_BYTES),
                tile.scales,
                nb,
                b,
                &mut acc,
            );
        }
        for (o, a) in group_out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
    release();
}

/// `acc[i] += d_w * d_a[i] * dot[i]` for block `b` (`wb`: its packed block,
/// `d_w` first), as the AVX-512 kernel's `signed_block_column` does it.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn signed_block_scaling<const M: usize>(
    c: &[[i32; 16]; 16],
    wb: *const u8,
    scales: &[f32],
    nb: usize,
    b: usize,
    acc: &mut [__m512; M],
) {
    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
    for (i, (acc, c)) in acc.iter_mut().zip(c).enumerate() {
        let dot = _mm512_cvtepi32_ps(_mm512_load_si512(c.as_ptr().cast()));
        let da = _mm512_set1_ps(*scales.as_ptr().add(i * nb + b));
        *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), dot, *acc);
    }
}

/// As [`q4_1`] for packed Q4_K weights against Q8_K activations (the scales
/// are read from the activation rows; `tile.scales` is unused). Per
/// super-block, the eight sub-blocks' integer sums are scaled by their 6-bit
/// scales in integers, then the super-block is folded in as the AVX-512
/// kernel does it.
///
/// # Safety
/// As [`q4_1`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn q4k(nb: usize, w: &[u8], g0: usize, tile: &Tile, out: &mut [[[f32; 16]; 16]]) {
    dispatch_m!(q4k_m, tile, nb, w, g0, tile, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_m<const M: usize>(
    nb: usize,
    w: &[u8],
    g0: usize,
    tile: &Tile,
    out: &mut [[[f32; 16]; 16]],
) {
    use crate::packed::Q4KX16_BYTES;
    assert!(w.len() >= (g0 + out.len()) * nb * Q4KX16_BYTES);
    let low = _mm512_set1_epi8(0x0f);
    let mut c = CTile([[0; 16]; 16]);
    // B of sub-block s of super-block b at 512 * (8b + s).
    let bt = unpack_buffer(nb * 8 * 512);
    configure(&TileConfig::new(M, 32, 8));
    for (g, group_out) in out.iter_mut().enumerate() {
        let wg = w.as_ptr().add((g0 + g) * nb * Q4KX16_BYTES);
        for b in 0..nb {
            let wb = wg.add(b * Q4KX16_BYTES);
            for s in 0..8 {
                let pair = wb.add(448 + 512 * (s / 2));
                let dst = bt.add(512 * (8 * b + s));
                for t in 0..8 {
                    let z = _mm512_loadu_si512(pair.add(64 * t).cast());
                    let z = if s % 2 == 1 {
                        _mm512_srli_epi16::<4>(z)
                    } else {
                        z
                    };
                    _mm512_store_si512(dst.add(64 * t).cast(), _mm512_and_si512(z, low));
                }
            }
        }
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let wb = wg.add(b * Q4KX16_BYTES);
            let mut isum = [_mm512_setzero_si512(); M];
            for s in 0..8 {
                let a = tile.rows.add(b * Q8K_BYTES + Q8K_QS + 32 * s);
                block_dots_su(a, tile.stride, bt.add(512 * (8 * b + s)), c.0.as_mut_ptr());
                let scale = _mm512_cvtepu8_epi32(_mm_loadu_si128(wb.add(64 + 16 * s).cast()));
                for (isum, c) in isum.iter_mut().zip(&c.0) {
                    let dot = _mm512_load_si512(c.as_ptr().cast());
                    *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(dot, scale));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.cast()));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(wb.add(32).cast()));
            for (i, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
                let t = q8k_table(tile.scales, nb, i, b);
                // sum_s mn_s * bsum_s, bsum_s the sum of sub-block s's 32 activation quants
                let mut msum = _mm512_setzero_si512();
                for k in 0..4 {
                    let mins = _mm512_loadu_si512(wb.add(192 + 64 * k).cast());
                    let pair =
                        _mm512_set1_epi32(t.add(Q8K_TABLE_Q4K_MINS + k).cast::<i32>().read());
                    msum = _mm512_dpwssd_epi32(msum, mins, pair);
                }
                let da = _mm512_set1_ps(*t);
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(*isum), *acc);
                *acc = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(msum), *acc);
            }
        }
        for (o, a) in group_out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
    release();
}

/// The Q8_K table words of activation row `i`, super-block `b` (as `f32`
/// slots; words past the first are integer bit patterns).
#[inline(always)]
unsafe fn q8k_table(table: &[f32], nb: usize, i: usize, b: usize) -> *const f32 {
    table.as_ptr().add((i * nb + b) * Q8K_TABLE_WORDS)
}
