//! Rough throughput numbers for the dot-product kernels (no external bench
//! harness): `cargo bench -p quant`.

use std::hint::black_box;
use std::time::Instant;

use quant::{reference, GgmlType};

fn pseudo_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// A weight matrix of `rows` rows with f16 scales patched to sane values.
fn weights(ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let mut w = pseudo_bytes(ty.row_bytes(n).unwrap() * rows, 7);
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let offs: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    };
    if ty.block_size() > 1 {
        for b in w.chunks_mut(ty.type_size()) {
            for &o in offs {
                b[o..o + 2].copy_from_slice(&d);
            }
        }
    } else {
        for b in w.chunks_mut(ty.type_size()) {
            b.fill(0);
        }
    }
    w
}

fn main() {
    let n = 4096;
    let rows = 256;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    println!("kernel: {}", quant::kernel_name());
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::F32,
    ] {
        let w = weights(ty, n, rows);
        let rb = ty.row_bytes(n).unwrap();
        let at = ty.vec_dot_type();
        let mut a = vec![0u8; at.row_bytes(n).unwrap()];
        quant::quantize_row(at, &x, &mut a).unwrap();

        // Minimum over several runs: the numbers are for comparing kernels on
        // a possibly busy machine.
        let time = |f: &dyn Fn(&[u8]) -> f32, reps: usize| {
            (0..7)
                .map(|_| {
                    let t = Instant::now();
                    let mut acc = 0.0;
                    for _ in 0..reps {
                        for r in w.chunks(rb) {
                            acc += f(black_box(r));
                        }
                    }
                    black_box(acc);
                    t.elapsed().as_secs_f64() / (reps * rows) as f64
                })
                .fold(f64::MAX, f64::min)
        };
        let fast = time(&|r| quant::vec_dot(ty, n, r, &a), 20);
        let scalar = time(&|r| reference::vec_dot(ty, n, r, &a), 1);

        // Multi-column: 8 activation rows.
        let acts: Vec<Vec<u8>> = (0..8).map(|_| a.clone()).collect();
        let refs: Vec<&[u8]> = acts.iter().map(|v| v.as_slice()).collect();
        let mut out = [0f32; 8];
        let multi = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..5 {
                    for r in w.chunks(rb) {
                        quant::vec_dot_multi(ty, n, black_box(r), &refs, &mut out);
                    }
                }
                black_box(out);
                t.elapsed().as_secs_f64() / (5 * rows * 8) as f64
            })
            .fold(f64::MAX, f64::min);

        println!(
            "{:5} n={n}: vec_dot {:7.0} ns/row ({:5.1} GB/s weights), multi {:7.0} ns/row/col, scalar {:8.0} ns/row",
            ty.name(),
            fast * 1e9,
            rb as f64 / fast / 1e9,
            multi * 1e9,
            scalar * 1e9
        );
    }
}
