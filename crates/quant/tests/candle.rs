//! Cross-check of `dequantize_row` against candle's independent
//! implementation of the ggml formats. Exact (bitwise) equality expected.

mod common;

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_1, GgmlType as CandleGgmlType};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::Device;
use common::{dequantize, random_row, Rng};
use quant::GgmlType;

fn candle_dtype(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
    }
}

fn candle_dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    // candle's QTensor loader rejects Q8_1/Q8_K; use its block types directly.
    match ty {
        GgmlType::Q8_1 => return candle_blocks_to_float::<BlockQ8_1>(bytes, n),
        GgmlType::Q8K => return candle_blocks_to_float::<BlockQ8K>(bytes, n),
        _ => {}
    }
    let qt = qtensor_from_ggml(candle_dtype(ty), bytes, vec![n], &Device::Cpu).unwrap();
    qt.dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Copies `bytes` into candle block structs and runs their `to_float`.
fn candle_blocks_to_float<B: CandleGgmlType>(bytes: &[u8], n: usize) -> Vec<f32> {
    let nb = n / B::BLCK_SIZE;
    assert_eq!(bytes.len(), nb * std::mem::size_of::<B>());
    let mut blocks = vec![B::zeros(); nb];
    // SAFETY: candle's block types are `#[repr(C)]` plain-old-data (f16 and
    // integer fields, every bit pattern valid, size asserted equal to the
    // ggml block size above), and the destination holds exactly
    // `bytes.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        )
    };
    let mut out = vec![0f32; n];
    B::to_float(&blocks, &mut out);
    out
}

#[test]
fn dequantize_matches_candle() {
    let mut rng = Rng::new(20);
    for ty in GgmlType::ALL {
        let nb = if ty.block_size() == 1 { 96 } else { 5 };
        let n = nb * ty.block_size();
        for trial in 0..20 {
            let row = random_row(&mut rng, ty, nb);
            let ours = dequantize(ty, &row, n);
            let theirs = candle_dequantize(ty, &row, n);
            assert_eq!(ours.len(), theirs.len());
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{ty} trial {trial} element {i}: {a} vs {b}"
                );
            }
        }
    }
}
