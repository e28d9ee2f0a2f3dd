//! Single-thread throughput of the 16-row packed kernels: `group_dots`
//! (AVX-512 VNNI) against the AMX tile kernels (where available), for a weight
//! matrix of SmolLM2's FFN shape (K-quants: Qwen2.5-1.5B's attention shape)
//! and `m` activation rows.
//! `cargo run --release -p quant --example tile_speed`
use quant::packed::{activation_scales, PackedMatrix, GROUP};
use quant::GgmlType;
use std::time::Instant;

fn main() {
    for (ty, rows, cols) in [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q8_0, 4096, 576),
        (GgmlType::Q5_0, 1536, 576),
        (GgmlType::Q4K, 1536, 1536),
    ] {
        let rb = ty.row_bytes(cols).unwrap();
        let mut w = vec![0u8; rows * rb];
        for (i, b) in w.iter_mut().enumerate() {
            *b = ((i * 2654435761usize) >> 7) as u8;
        }
        // Sane f16 scales (d, and Q4_1's m / Q4_K's dmin).
        let d_at: &[usize] = match ty {
            GgmlType::Q4_1 | GgmlType::Q4K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[0],
        };
        for blk in w.chunks_exact_mut(ty.type_size()) {
            for &o in d_at {
                blk[o..o + 2].copy_from_slice(&0x2000u16.to_le_bytes());
            }
        }
        let Some(p) = PackedMatrix::new(ty, rows, cols, &w) else {
            println!("no packed kernels");
            return;
        };
        let at = ty.vec_dot_type();
        let arb = at.row_bytes(cols).unwrap();
        for m in [1, 2, 4, 5, 6, 8, 12, 16] {
            let mut acts = vec![0u8; m * arb];
            for i in 0..m {
                let x: Vec<f32> = (0..cols)
                    .map(|j| ((i * 7 + j) as f32 * 0.37).sin())
                    .collect();
                quant::quantize_row(at, &x, &mut acts[i * arb..(i + 1) * arb]).unwrap();
            }
            let refs: Vec<&[u8]> = acts.chunks(arb).collect();
            let mut scales = Vec::new();
            activation_scales(at, &acts, m, &mut scales);
            let groups = rows / GROUP;
            let reps = 2000 / m;
            let macs = (reps * rows * cols * m) as f64;
            let mut out = vec![[0f32; GROUP]; m];
            let t = Instant::now();
            for _ in 0..reps {
                for g in 0..groups {
                    p.group_dots(g, &refs, &mut out);
                }
            }
            let vnni = macs / t.elapsed().as_secs_f64() / 1e9;
            let mut tiles = vec![[[0f32; GROUP]; GROUP]; groups];
            let t = Instant::now();
            for _ in 0..reps {
                // The AMX kernel itself, whatever `tile_dots` would pick for this m.
                if !p.amx_tile_dots(0, &acts, m, &scales, &mut tiles) {
                    p.tile_dots(0, &acts, m, &scales, &mut tiles);
                }
            }
            let amx = macs / t.elapsed().as_secs_f64() / 1e9;
            println!(
                "{ty} [{rows} x {cols}] m={m:2}: group_dots {vnni:6.1} GMAC/s, AMX {amx:6.1} GMAC/s ({:.2}x)",
                amx / vnni
            );
        }
    }
}
