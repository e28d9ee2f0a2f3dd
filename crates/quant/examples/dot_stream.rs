//! Diagnostic: ns per Q4_1 block for vec_dot over a cache-resident vs a DRAM-sized matrix.
use quant::GgmlType;
use std::time::Instant;
fn main() {
    let ty = GgmlType::Q4_1;
    let cols = 576;
    let rb = ty.row_bytes(cols).unwrap();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut act = vec![0u8; GgmlType::Q8_1.row_bytes(cols).unwrap()];
    quant::quantize_row(GgmlType::Q8_1, &x, &mut act).unwrap();
    for &rows in &[1000usize, 270_000] {
        let mut w = vec![0u8; rows * rb];
        for (i, b) in w.iter_mut().enumerate() {
            *b = ((i * 2654435761usize) >> 7) as u8;
        }
        // keep f16 scales sane: set d and m of each block to small values
        for blk in w.chunks_exact_mut(20) {
            blk[0..2].copy_from_slice(&0x2000u16.to_le_bytes());
            blk[2..4].copy_from_slice(&0x2000u16.to_le_bytes());
        }
        let reps = (270_000 / rows).max(1) * 3;
        let t = Instant::now();
        let mut s = 0f32;
        for _ in 0..reps {
            for r in 0..rows {
                s += quant::vec_dot(ty, cols, &w[r * rb..(r + 1) * rb], &act);
            }
        }
        let blocks = (reps * rows * cols / 32) as f64;
        println!(
            "rows {rows}: {:.2} ns/block ({s})",
            t.elapsed().as_secs_f64() * 1e9 / blocks
        );
    }
}
