//! The cache's lane operations, with and without quantisation.

use super::*;

/// Two layers, one KV head of dimension 2 (kv_dim 2, as the old layout's test).
fn cache() -> KvCache {
    KvCache::with_shape(2, 1, 2, 8)
}

fn filled() -> KvCache {
    let mut c = cache();
    c.begin_append(&[0, 1, 2, 3, 3]);
    for l in 0..2 {
        let k: Vec<f32> = (0..10).map(|i| (l * 100 + i) as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        c.write(l, &k, &v);
    }
    c
}

#[test]
fn retain_slots_compacts_every_layer_and_position() {
    let mut c = filled();
    c.retain_slots(&[0, 2, 4]);
    assert_eq!(c.positions(), &[0, 2, 3]);
    assert_eq!(
        c.lane(1, 0).keys(),
        &[100.0, 101.0, 104.0, 105.0, 108.0, 109.0]
    );
    assert_eq!(c.lane(0, 0).values(), &[-0.0, -1.0, -4.0, -5.0, -8.0, -9.0]);
    assert!(c.is_dense());
    c.retain_slots(&[]);
    assert!(c.is_empty());
}

#[test]
fn lanes_evict_independently_and_unused_slots_go() {
    let mut c = filled();
    c.retain_lane(0, 0, &[0, 3]);
    c.retain_lane(1, 0, &[1, 3]);
    assert!(!c.is_dense());
    let mut kept = Vec::new();
    c.drop_unused_slots(&mut kept);
    // Slot 2 is held by no lane; slot 4 by none either but it is the last.
    assert_eq!(kept, vec![0, 1, 3, 4]);
    assert_eq!(c.positions(), &[0, 1, 3, 3]);
    assert_eq!(c.lane(0, 0).slots(), &[0, 2]);
    assert_eq!(c.lane(0, 0).keys(), &[0.0, 1.0, 6.0, 7.0]);
    assert_eq!(c.lane(1, 0).slots(), &[1, 2]);
    assert_eq!(c.lane(1, 0).values(), &[-102.0, -103.0, -106.0, -107.0]);
    assert_eq!(c.memory_bytes(), 2 * 4 * 2 * 4);
    // Truncation drops the slot suffix from every lane.
    c.truncate(2);
    assert_eq!(c.lane(0, 0).slots(), &[0]);
    assert_eq!(c.lane(1, 0).slots(), &[1]);
    assert_eq!(c.next_position(), 2);
}

/// One layer, one KV head of dimension 64, `n` tokens of pseudo-random f16 data (keys
/// with an outlier channel), quantised with `quant` after appending.
fn quantized(n: usize, quant: KvQuant) -> (KvCache, Vec<f32>, Vec<f32>) {
    let hd = 64;
    let mut c = KvCache::with_shape(1, 1, hd, 4096);
    c.set_quant(quant).expect("valid settings");
    let mut s = 12345u32;
    let mut rnd = |scale: f32| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        scale * ((s as f32 / u32::MAX as f32) * 2.0 - 1.0)
    };
    let k: Vec<f32> = (0..n * hd)
        .map(|i| f16::from_f32(rnd(if i % hd == 5 { 8.0 } else { 1.0 })).to_f32())
        .collect();
    let v: Vec<f32> = (0..n * hd)
        .map(|_| f16::from_f32(rnd(1.0)).to_f32())
        .collect();
    let positions: Vec<usize> = (0..n).collect();
    c.begin_append(&positions);
    c.write(0, &k, &v);
    c.quantize_settled(None);
    (c, k, v)
}

fn int(dtype: KvDtype) -> KvQuant {
    KvQuant {
        dtype,
        residual: 8,
        key_group: 16,
        value_group: 32,
        mixed_keep: 0.25,
    }
}

/// Largest |a - b| over the rows of a lane's dequantised keys and values against the
/// originals at the lane's slots.
fn max_errors(c: &KvCache, k: &[f32], v: &[f32]) -> (f32, f32) {
    let hd = c.head_dim();
    let lane = c.lane(0, 0);
    let (mut dk, mut dv) = (Vec::new(), Vec::new());
    lane.dequantize_keys(hd, &mut dk);
    lane.dequantize_values(hd, &mut dv);
    let (mut ek, mut ev) = (0f32, 0f32);
    for (e, &s) in lane.slots().iter().enumerate() {
        let s = s as usize;
        for d in 0..hd {
            ek = ek.max((dk[e * hd + d] - k[s * hd + d]).abs());
            ev = ev.max((dv[e * hd + d] - v[s * hd + d]).abs());
        }
    }
    (ek, ev)
}

#[test]
fn settling_quantises_complete_groups_out_of_the_residual_window() {
    // 8 residual + 16 per group: 60 tokens -> 3 groups (48 entries), 12 full
    // precision (a 4th group waits until 8 + 16 are held).
    let (c, k, v) = quantized(60, int(KvDtype::Int8));
    let lane = c.lane(0, 0);
    assert_eq!(lane.n_quantized(), 48);
    assert_eq!(lane.groups().len(), 3);
    assert_eq!(lane.keys().len(), 12 * 64);
    // The full-precision tail is exact.
    assert_eq!(lane.keys(), &k[48 * 64..]);
    assert_eq!(lane.values(), &v[48 * 64..]);
    // int8: half a step of ranges ~16 (outlier channel) and ~2: < 0.02 everywhere.
    let (ek, ev) = max_errors(&c, &k, &v);
    assert!(ek > 0.0 && ek < 16.0 / 255.0 / 2.0 * 1.01, "{ek}");
    assert!(ev < 2.0 / 255.0 / 2.0 * 1.01, "{ev}");
    let (c4, k4, v4) = quantized(60, int(KvDtype::Int4));
    let (ek, ev) = max_errors(&c4, &k4, &v4);
    assert!(
        ek < 16.0 / 15.0 / 2.0 * 1.01 && ev < 2.0 / 15.0 / 2.0 * 1.01,
        "{ek} {ev}"
    );
    // Nothing more settles until the window holds another whole group.
    let mut c = c;
    c.quantize_settled(None);
    assert_eq!(c.lane(0, 0).n_quantized(), 48);
}

#[test]
fn memory_shrinks_to_the_codes_plus_scales() {
    let n = 8 + 16 * 8;
    let (f, ..) = quantized(n, KvQuant::default());
    let (c8, ..) = quantized(n, int(KvDtype::Int8));
    let (c4, ..) = quantized(n, int(KvDtype::Int4));
    let hd = 64;
    assert_eq!(f.memory_bytes(), n * hd * 2 * 4);
    assert_eq!(f.memory_bytes_f16(), n * hd * 2 * 2);
    // Per quantised token: k and v codes, 2 value groups × (min, scale) f16; per group
    // of 16: per-channel key min and scale.
    let q = 16 * 8;
    let params = q * 2 * 2 * 2 + 8 * hd * 2 * 2;
    assert_eq!(c8.memory_bytes(), q * hd * 2 + params + 8 * hd * 2 * 4);
    assert_eq!(c4.memory_bytes(), q * hd + params + 8 * hd * 2 * 4);
    assert_eq!(c4.memory_bytes_f16(), q * hd + params + 8 * hd * 2 * 2);
    // Against true f16 for the quantised part: int8 ~ 1/2 + scales, int4 ~ 1/4 + scales.
    let f16_q = q * hd * 2 * 2;
    let r8 = (c8.memory_bytes_f16() - 8 * hd * 4) as f64 / f16_q as f64;
    let r4 = (c4.memory_bytes_f16() - 8 * hd * 4) as f64 / f16_q as f64;
    assert!(
        (0.5..0.65).contains(&r8) && (0.25..0.4).contains(&r4),
        "{r8} {r4}"
    );
}

#[test]
fn eviction_on_quantised_lanes_keeps_the_right_entries_exactly() {
    let (mut c, k, v) = quantized(60, int(KvDtype::Int4));
    let (mut before_k, mut before_v) = (Vec::new(), Vec::new());
    c.lane(0, 0).dequantize_keys(64, &mut before_k);
    c.lane(0, 0).dequantize_values(64, &mut before_v);
    // Keep most of both groups (no merge) and every other full-precision entry.
    let keep: Vec<usize> = (0..60).filter(|&e| e % 5 != 2 || e >= 50).collect();
    c.retain_lane(0, 0, &keep);
    let lane = c.lane(0, 0);
    assert_eq!(lane.len(), keep.len());
    let kept_slots: Vec<u32> = keep.iter().map(|&e| e as u32).collect();
    assert_eq!(lane.slots(), &kept_slots[..]);
    assert_eq!(lane.n_quantized(), keep.iter().filter(|&&e| e < 48).count());
    assert_eq!(lane.groups().len(), 3);
    let (mut after_k, mut after_v) = (Vec::new(), Vec::new());
    lane.dequantize_keys(64, &mut after_k);
    lane.dequantize_values(64, &mut after_v);
    for (new, &old) in keep.iter().enumerate() {
        assert_eq!(
            after_k[new * 64..(new + 1) * 64],
            before_k[old * 64..(old + 1) * 64]
        );
        assert_eq!(
            after_v[new * 64..(new + 1) * 64],
            before_v[old * 64..(old + 1) * 64]
        );
    }
    // Drop the unused slots: lanes and positions renumber, data follows.
    let mut kept = Vec::new();
    c.drop_unused_slots(&mut kept);
    assert_eq!(kept, keep);
    assert_eq!(c.positions().len(), keep.len());
    let (ek, _) = max_errors(&c, &k, &v);
    assert!(ek.is_finite());
    // Truncation into the quantised part keeps a prefix.
    c.truncate(10);
    assert_eq!(c.lane(0, 0).len(), 10);
    assert_eq!(c.lane(0, 0).n_quantized(), 10);
    assert_eq!(c.lane(0, 0).keys().len(), 0);
    let mut t = Vec::new();
    c.lane(0, 0).dequantize_keys(64, &mut t);
    assert_eq!(t[..], after_k[..10 * 64]);
}

#[test]
fn small_groups_merge_and_stay_within_the_error_bound() {
    let (mut c, k, v) = quantized(8 + 16 * 6, int(KvDtype::Int4));
    assert_eq!(c.lane(0, 0).groups().len(), 6);
    // Keep 3 of every 16 quantised entries (below half a group): neighbours merge.
    let keep: Vec<usize> = (0..104).filter(|&e| e >= 96 || e % 16 < 3).collect();
    c.retain_lane(0, 0, &keep);
    let lane = c.lane(0, 0);
    let rows: usize = lane.groups().iter().map(|g| g.len()).sum();
    assert_eq!(rows, 18);
    assert!(lane.groups().len() <= 2, "{}", lane.groups().len());
    // A merged key errs by at most two half-steps of the widest range involved.
    let (ek, ev) = max_errors(&c, &k, &v);
    assert!(ek < 2.0 * 16.0 / 15.0 / 2.0 * 1.01, "{ek}");
    assert!(ev < 2.0 / 15.0 / 2.0 * 1.01, "{ev}");
}

#[test]
fn retain_slots_renumbers_quantised_lanes() {
    let (mut c, k, v) = quantized(60, int(KvDtype::Int8));
    let keep: Vec<usize> = (0..60).filter(|s| s % 3 != 0).collect();
    c.retain_slots(&keep);
    assert_eq!(c.len(), keep.len());
    let lane = c.lane(0, 0);
    assert!(lane
        .slots()
        .iter()
        .enumerate()
        .all(|(e, &s)| e == s as usize));
    // Entries are the kept slots: compare against the originals at those slots.
    let hd = 64;
    let mut dk = Vec::new();
    lane.dequantize_keys(hd, &mut dk);
    for (new, &old) in keep.iter().enumerate() {
        for d in 0..hd {
            assert!(
                (dk[new * hd + d] - k[old * hd + d]).abs() < 16.0 / 255.0,
                "{new} {d}"
            );
        }
    }
    assert!(v.len() == 60 * hd);
}

#[test]
fn mixed_keeps_the_most_important_at_int8() {
    let (mut c, ..) = quantized(0, int(KvDtype::Mixed));
    let n = 8 + 16 * 2;
    let positions: Vec<usize> = (0..n).collect();
    c.begin_append(&positions);
    let k: Vec<f32> = (0..n * 64).map(|i| (i % 7) as f32 * 0.25).collect();
    c.write(0, &k, &k);
    // Importance = the slot's parity: odd slots matter; 25% of 16 = 4 at int8.
    let mut importance = |cand: &SettleCandidates<'_>, out: &mut Vec<f32>| {
        out.extend(cand.slots.iter().map(|&s| (s % 2) as f32 + s as f32 * 1e-3));
    };
    c.quantize_settled(Some(&mut importance));
    let lane = c.lane(0, 0);
    assert_eq!(lane.n_quantized(), 32);
    let high: Vec<u32> = lane
        .groups()
        .iter()
        .filter(|g| g.bits() == 8)
        .flat_map(|g| g.rows().iter().copied())
        .collect();
    // The 4 latest odd slots of each group of 16 (ties broken by the small ramp).
    assert_eq!(high, vec![9, 11, 13, 15, 25, 27, 29, 31]);
    assert!(lane.groups().iter().all(|g| g.bits() == 8 || g.len() == 12));
}

#[test]
fn back_to_f16_dequantises_and_bad_settings_are_errors() {
    let (mut c, k, v) = quantized(60, int(KvDtype::Int8));
    let (ek, _) = max_errors(&c, &k, &v);
    c.set_quant(KvQuant::default()).expect("f16");
    assert_eq!(c.quantized_entries(), 0);
    assert_eq!(c.memory_bytes(), 60 * 64 * 2 * 4);
    assert_eq!(max_errors(&c, &k, &v).0, ek);
    let bad = KvQuant {
        value_group: 24,
        ..int(KvDtype::Int4)
    };
    let e = c.set_quant(bad).expect_err("24 does not divide 64");
    assert!(e.to_string().contains("divide"), "{e}");
    assert!("int3".parse::<KvDtype>().is_err());
    assert_eq!("INT4".parse::<KvDtype>(), Ok(KvDtype::Int4));
}
