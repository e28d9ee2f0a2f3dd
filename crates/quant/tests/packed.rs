//! The 16-row packed kernels against the scalar reference, and batch
//! independence (a row's result must not depend on how many activation rows
//! are computed together).

mod common;

use common::{dequantize, quantize, random_row, Rng};
use quant::packed::{PackedMatrix, GROUP};
use quant::{reference, GgmlType};

/// The formats with a 16-row kernel.
const TYPES: [GgmlType; 4] = [
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q4K,
];

/// A random matrix, some rows with quants at their limits.
fn matrix(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let nb = cols / ty.block_size();
    // Quants follow the f16 scale (and Q4_1's f16 minimum).
    // (Q6_K: quants first, the scales and d after them are kept.)
    let quants = match ty {
        GgmlType::Q4_1 => 4,
        GgmlType::Q4K => 16,
        GgmlType::Q5_0 => 2, // the fifth bits too
        _ => 2,
    };
    let mut data = Vec::new();
    for r in 0..rows {
        let mut row = random_row(rng, ty, nb);
        if r % 5 == 4 {
            let fill = [0x00u8, 0xff, 0x88, 0x80, 0x7f][r % 5];
            for b in row.chunks_mut(ty.type_size()) {
                if ty == GgmlType::Q6K {
                    b[..192].fill(fill);
                } else {
                    b[quants..].fill(fill);
                }
            }
        }
        data.extend_from_slice(&row);
    }
    data
}

fn abs_dot(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f32 {
    let wf = dequantize(ty, w, n);
    let af = dequantize(ty.vec_dot_type(), a, n);
    wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum()
}

#[test]
fn packed_kernels_match_reference() {
    let mut rng = Rng::new(21);
    for (ty, cols) in TYPES
        .into_iter()
        .flat_map(|t| [1, 2, 3, 18, 48].map(|b| (t, b * t.block_size())))
    {
        let rows = 2 * GROUP;
        let data = matrix(&mut rng, ty, rows, cols);
        let Some(packed) = PackedMatrix::new(ty, rows, cols, &data) else {
            assert!(!quant::packed_kernels_available(), "{ty} was not packed");
            eprintln!("no packed kernels on this CPU; skipping");
            return;
        };
        let acts: Vec<Vec<u8>> = (0..6)
            .map(|_| quantize(ty.vec_dot_type(), &rng.normal_vec(cols, 2.0)))
            .collect();
        let refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
        let row_bytes = ty.row_bytes(cols).unwrap();
        for g in 0..rows / GROUP {
            let mut out = vec![[f32::NAN; GROUP]; refs.len()];
            packed.group_dots(g, &refs, &mut out);
            for (k, a) in refs.iter().enumerate() {
                for r in 0..GROUP {
                    let w = &data[(g * GROUP + r) * row_bytes..][..row_bytes];
                    let want = reference::vec_dot(ty, cols, w, a);
                    let bound = 1e-5 * abs_dot(ty, w, a, cols) + 1e-6;
                    let got = out[k][r];
                    assert!(
                        (got - want).abs() <= bound,
                        "{ty} cols {cols} group {g} row {r} act {k}: {got} vs {want} (bound {bound})"
                    );
                }
            }
        }
    }
}

#[test]
fn packed_results_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(22);
    for ty in TYPES {
        let (rows, cols) = (3 * GROUP, 3 * ty.block_size());
        let data = matrix(&mut rng, ty, rows, cols);
        let Some(packed) = PackedMatrix::new(ty, rows, cols, &data) else {
            assert!(!quant::packed_kernels_available(), "{ty} was not packed");
            return;
        };
        let acts: Vec<Vec<u8>> = (0..11)
            .map(|_| quantize(ty.vec_dot_type(), &rng.normal_vec(cols, 1.0)))
            .collect();
        let refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
        for g in 0..rows / GROUP {
            let mut all = vec![[0.0; GROUP]; refs.len()];
            packed.group_dots(g, &refs, &mut all);
            for (k, a) in refs.iter().enumerate() {
                let mut one = [[0.0; GROUP]];
                packed.group_dots(g, &[a], &mut one);
                for r in 0..GROUP {
                    assert_eq!(
                        one[0][r].to_bits(),
                        all[k][r].to_bits(),
                        "{ty} group {g} act {k} row {r}"
                    );
                }
            }
        }
    }
}

/// The formats `tile_dots` runs on AMX tiles (others fall back to `group_dots`).
const TILE_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q4K,
    // (no AMX kernel: the fallback to `group_dots`)
    GgmlType::Q6K,
];

#[test]
fn tile_dots_equal_group_dots_bit_for_bit() {
    eprintln!("AMX tiles: {}", quant::amx_available());
    let mut rng = Rng::new(23);
    for ty in TILE_TYPES {
        for blocks in [1, 3, 6] {
            let (rows, cols) = (4 * GROUP, blocks * ty.block_size());
            let data = matrix(&mut rng, ty, rows, cols);
            let Some(packed) = PackedMatrix::new(ty, rows, cols, &data) else {
                assert!(!quant::packed_kernels_available(), "{ty} was not packed");
                return;
            };
            let act_type = ty.vec_dot_type();
            for m in 1..=GROUP {
                let rows_q: Vec<Vec<u8>> = (0..m)
                    .map(|_| quantize(act_type, &rng.normal_vec(cols, 1.5)))
                    .collect();
                let acts: Vec<u8> = rows_q.concat();
                let mut scales = Vec::new();
                quant::packed::activation_scales(act_type, &acts, m, &mut scales);
                // Groups 1..4: an offset start, several groups per call.
                let mut tiles = vec![[[f32::NAN; GROUP]; GROUP]; 3];
                packed.tile_dots(1, &acts, m, &scales, &mut tiles);
                // The AMX kernel itself, also for the m that `tile_dots` gives
                // to the AVX-512 kernel.
                let mut amx = vec![[[f32::NAN; GROUP]; GROUP]; 3];
                if packed.amx_tile_dots(1, &acts, m, &scales, &mut amx) {
                    for (t, a) in tiles.iter().zip(&amx) {
                        let bits = |x: &[[f32; GROUP]; GROUP]| -> Vec<u32> {
                            x[..m].iter().flatten().map(|v| v.to_bits()).collect()
                        };
                        assert_eq!(bits(t), bits(a), "{ty} {blocks} blocks, m {m}: AMX differs");
                    }
                }
                let refs: Vec<&[u8]> = rows_q.iter().map(|a| a.as_slice()).collect();
                for (j, tile) in tiles.iter().enumerate() {
                    let mut want = vec![[0.0; GROUP]; m];
                    packed.group_dots(1 + j, &refs, &mut want);
                    for i in 0..m {
                        for r in 0..GROUP {
                            assert_eq!(
                                tile[i][r].to_bits(),
                                want[i][r].to_bits(),
                                "{ty} {blocks} blocks, m {m}, group {}, act {i}, row {r}: {} vs {}",
                                1 + j,
                                tile[i][r],
                                want[i][r]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn tile_dots_reject_wrong_sizes() {
    let ty = GgmlType::Q4_1;
    let (rows, cols) = (GROUP, 2 * ty.block_size());
    let data = matrix(&mut Rng::new(24), ty, rows, cols);
    let Some(packed) = PackedMatrix::new(ty, rows, cols, &data) else {
        return;
    };
    let act = quantize(ty.vec_dot_type(), &vec![0.5; cols]);
    let mut scales = Vec::new();
    quant::packed::activation_scales(ty.vec_dot_type(), &act, 1, &mut scales);
    let mut out = vec![[[0.0; GROUP]; GROUP]; 1];
    let run = |acts: &[u8], m: usize, scales: &[f32], groups: usize| {
        let mut out = vec![[[0.0; GROUP]; GROUP]; groups];
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            packed.tile_dots(0, acts, m, scales, &mut out)
        }))
        .is_err()
    };
    assert!(run(&act[1..], 1, &scales, 1), "short activation row");
    assert!(run(&act, 1, &scales[1..], 1), "short scales");
    assert!(run(&act, 0, &scales, 1), "no rows");
    assert!(run(&act, 1, &scales, 2), "group out of range");
    packed.tile_dots(0, &act, 1, &scales, &mut out);
}
