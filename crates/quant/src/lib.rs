//! GGUF/ggml quantised block formats and the CPU hot-path kernels.
//!
//! * [`dequantize_row`]: reference dequantisation of one row.
//! * [`quantize_row`]: activation quantisation (Q8_0, Q8_1, Q8_K, F16, BF16,
//!   F32) with ggml's x86 semantics.
//! * [`vec_dot`] / [`vec_dot_multi`]: weight-row · activation-row dot
//!   products, dispatched at runtime to AVX2 kernels when available.
//! * [`reference::vec_dot`]: the scalar reference they are tested against.
//!
//! Numerics follow ggml (llama.cpp): activations are quantised per block, the
//! products inside a block are accumulated exactly in integers, and only the
//! per-block result is scaled in `f32`. Only the order of the `f32`
//! additions across blocks differs between implementations.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
mod f32ops;
pub mod packed;
pub mod reference;
mod types;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use f32ops::{
    add_scaled_offset, affine_rows, axpy_f32, axpy_f32_rows, dot_f32, dot_f32_reference,
    dot_f32_rows, exp_f32_in_place, widen_nibbles, widen_u8,
};
pub use types::{GgmlType, QK, QK_K};

use std::sync::OnceLock;

/// Errors from the validating entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The element count is not a multiple of the type's block size.
    NotBlockMultiple {
        ty: GgmlType,
        n: usize,
        block_size: usize,
    },
    /// A buffer has the wrong length.
    LengthMismatch {
        ty: GgmlType,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The operation does not support this type.
    Unsupported { ty: GgmlType, op: &'static str },
}

impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantError::NotBlockMultiple { ty, n, block_size } => write!(
                f,
                "{n} elements is not a multiple of the {ty} block size {block_size}"
            ),
            QuantError::LengthMismatch {
                ty,
                what,
                expected,
                got,
            } => write!(
                f,
                "{ty}: {what} has {got} bytes/elements, expected {expected}"
            ),
            QuantError::Unsupported { ty, op } => write!(f, "{op} does not support type {ty}"),
        }
    }
}

impl std::error::Error for QuantError {}

/// Bytes of a row of `n` elements of `ty`, as a `Result`.
fn row_bytes_checked(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    ty.row_bytes(n).ok_or(QuantError::NotBlockMultiple {
        ty,
        n,
        block_size: ty.block_size(),
    })
}

/// Dequantises one row of `dst.len()` elements of type `ty` from `src`
/// (which must be exactly the row's size in bytes).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let expected = row_bytes_checked(ty, dst.len())?;
    if src.len() != expected {
        return Err(QuantError::LengthMismatch {
            ty,
            what: "source",
            expected,
            got: src.len(),
        });
    }
    reference::dequantize(ty, src, dst);
    Ok(())
}

/// Quantises one row of activations to `ty` (Q8_0, Q8_1, Q8_K, F16, BF16 or
/// F32), producing the same bytes as llama.cpp's x86 CPU backend
/// (`quantize_row_*` / `from_float`). `dst` must be exactly the row's size.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_quantize_args(ty, src, dst)?;
    #[cfg(target_arch = "x86_64")]
    if matches!(level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: `level()` verified avx2, fma and f16c at runtime; lengths
        // were checked above.
        unsafe {
            match ty {
                GgmlType::Q8_0 => return x86::quantize_q8_0(src, dst),
                GgmlType::Q8_1 => return x86::quantize_q8_1(src, dst),
                GgmlType::Q8K => return x86::quantize_q8k(src, dst),
                _ => {}
            }
        }
    }
    reference::quantize(ty, src, dst);
    Ok(())
}

/// Validates the arguments of [`quantize_row`].
pub(crate) fn check_quantize_args(ty: GgmlType, src: &[f32], dst: &[u8]) -> Result<(), QuantError> {
    if !ty.is_activation_type() {
        return Err(QuantError::Unsupported {
            ty,
            op: "quantize_row",
        });
    }
    let expected = row_bytes_checked(ty, src.len())?;
    if dst.len() != expected {
        return Err(QuantError::LengthMismatch {
            ty,
            what: "destination",
            expected,
            got: dst.len(),
        });
    }
    Ok(())
}

/// Asserts that `w` and `act` hold at least a row of `n` elements of `ty`
/// and `ty.vec_dot_type()`. Kept as a real (cheap) assert because the SIMD
/// kernels read through raw pointers.
#[inline(always)]
pub(crate) fn check_dot_lengths(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) {
    let bs = ty.block_size();
    assert!(
        n.is_multiple_of(bs),
        "vec_dot: {n} not a multiple of {bs} ({ty})"
    );
    let nb = n / bs;
    assert!(
        w.len() >= nb * ty.type_size() && act.len() >= nb * ty.vec_dot_type().type_size(),
        "vec_dot: row buffers too short for {n} elements of {ty}"
    );
}

/// The best instruction set available, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI: the AVX2 row kernels, and the 16-row
    /// [`packed`] kernels where a matrix was packed.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

#[inline(always)]
fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("QUANT_FORCE_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if std::env::var_os("QUANT_FORCE_AVX2").is_none() && avx512_available() {
                return Level::Avx512;
            }
            return Level::Avx2;
        }
        Level::Scalar
    })
}

/// Whether the AVX2/FMA kernels are in use (cached; honours `QUANT_FORCE_SCALAR`).
#[inline]
pub(crate) fn avx2_fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(level(), Level::Avx2 | Level::Avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether [`packed::PackedMatrix`] can be built: the AVX-512 kernels are in
/// use (not disabled by `QUANT_FORCE_AVX2` / `QUANT_FORCE_SCALAR`).
pub fn packed_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() == Level::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether [`packed::PackedMatrix::tile_dots`] runs on Intel AMX tiles (the
/// CPU has AMX-INT8, the OS grants the tile state, and `QUANT_NO_AMX` is not
/// set). Without AMX, `tile_dots` runs the AVX-512 kernels, with equal results.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has the AVX-512 subsets the [`avx512`] kernels use.
#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Name of the kernel family [`vec_dot`] dispatches to ("avx512", "avx2" or
/// "scalar"; set `QUANT_FORCE_AVX2` or `QUANT_FORCE_SCALAR` to choose a lower one).
pub fn kernel_name() -> &'static str {
    match level() {
        Level::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => "avx512",
    }
}

/// Dot product of one weight row (type `ty`, `n` elements) with activations
/// already quantised to `ty.vec_dot_type()`, using the fastest available
/// kernel. Does not allocate.
///
/// Panics if `n` is not a multiple of the block size or a buffer is too
/// short (a cheap check; callers should validate shapes once at load time).
#[inline]
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    check_dot_lengths(ty, n, w, act);
    #[cfg(target_arch = "x86_64")]
    if matches!(level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: CPU features verified by `level()`, lengths by
        // `check_dot_lengths`.
        if let Some(v) = unsafe { x86::vec_dot(ty, n, w, act) } {
            return v;
        }
    }
    reference::vec_dot(ty, n, w, act)
}

/// `out[j] = vec_dot(ty, n, w, acts[j])` for every `j`: one weight row
/// against several activation rows (prefill). The hot types decode each
/// weight block once per group of up to four activation rows.
///
/// Panics if `acts.len() != out.len()` or any buffer is too short.
pub fn vec_dot_multi(ty: GgmlType, n: usize, w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    assert_eq!(acts.len(), out.len(), "vec_dot_multi: acts/out length");
    for a in acts {
        check_dot_lengths(ty, n, w, a);
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: CPU features verified by `level()`, lengths just checked.
        if unsafe { x86::vec_dot_multi(ty, n, w, acts, out) } {
            return;
        }
    }
    for (o, a) in out.iter_mut().zip(acts) {
        *o = vec_dot(ty, n, w, a);
    }
}

/// Explicitly selected kernels, for tests and benchmarks.
pub mod kernels {
    use super::*;

    /// The AVX2 dot product for `ty`, if this CPU supports AVX2+FMA+F16C and
    /// the type has an AVX2 kernel.
    pub fn vec_dot_avx2(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Option<f32> {
        check_dot_lengths(ty, n, w, act);
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            // SAFETY: features checked just above, lengths by `check_dot_lengths`.
            return unsafe { x86::vec_dot(ty, n, w, act) };
        }
        let _ = (ty, n, w, act);
        None
    }

    /// The AVX2 multi-column dot product; `false` if unavailable for `ty`.
    pub fn vec_dot_multi_avx2(
        ty: GgmlType,
        n: usize,
        w: &[u8],
        acts: &[&[u8]],
        out: &mut [f32],
    ) -> bool {
        assert_eq!(acts.len(), out.len());
        for a in acts {
            check_dot_lengths(ty, n, w, a);
        }
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            // SAFETY: features checked just above, lengths by `check_dot_lengths`.
            return unsafe { x86::vec_dot_multi(ty, n, w, acts, out) };
        }
        let _ = (ty, n, w, acts, out);
        false
    }

    /// The AVX2 activation quantiser; `None` if unavailable for `ty`.
    pub fn quantize_row_avx2(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Option<()> {
        let expected = ty.row_bytes(src.len())?;
        assert_eq!(dst.len(), expected);
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            // SAFETY: features checked just above, lengths just asserted.
            unsafe {
                match ty {
                    GgmlType::Q8_0 => return x86::quantize_q8_0(src, dst).ok(),
                    GgmlType::Q8_1 => return x86::quantize_q8_1(src, dst).ok(),
                    GgmlType::Q8K => return x86::quantize_q8k(src, dst).ok(),
                    _ => {}
                }
            }
        }
        None
    }

    /// Whether the AVX-512 kernels can run on this CPU.
    pub fn avx512_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            avx2_available() && super::avx512_available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether the AVX2 kernels can run on this CPU.
    pub fn avx2_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}
