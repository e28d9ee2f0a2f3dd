//! Group-wise asymmetric integer quantisation of cached keys and values (KIVI).
//!
//! KIVI (Liu et al., 2024) observes that keys have outlier *channels* (a few
//! dimensions of large magnitude across all tokens) while values have no such
//! structure, so it quantises
//! * keys **per channel**: a group is a run of tokens; each channel `d` of the group
//!   has its own `min_d` and `scale_d`, `k[t][d] ≈ min_d + scale_d · code[t][d]`;
//! * values **per token**: each token's `head_dim` channels are cut into groups of
//!   `value_group` channels, each with its own min and scale.
//!
//! Both are asymmetric: `scale = (max - min) / (2^bits - 1)`, `code = round((x - min) /
//! scale)`, so the error of every element is at most `scale / 2`. Min and scale are
//! stored as f16 (rounded so the range still covers every element).
//!
//! A [`QuantGroup`] holds one key group and the same tokens' values. Its tokens
//! ("rows") are lane entries listed in `rows`, not necessarily contiguous: eviction
//! drops rows from a group without touching the others' codes (their group's min and
//! scale stay valid), and mixed precision splits a run of tokens into an int8 and an
//! int4 group.
//!
//! Packing (`row_bytes = head_dim * bits / 8` per row): int8 is one code per byte;
//! int4 keeps channel `j` in the low nibble and channel `j + head_dim / 2` in the high
//! nibble of byte `j` (ggml's q4_0 split), so unpacking reads both halves contiguously.

use half::f16;

/// Bytes of one packed row of `head_dim` codes of `bits` bits.
pub fn row_bytes(head_dim: usize, bits: u8) -> usize {
    head_dim * bits as usize / 8
}

/// Largest code of `bits` bits.
fn qmax(bits: u8) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// The next f16 towards -inf (for finite `x`).
fn f16_down(x: f16) -> f16 {
    let b = x.to_bits();
    if b & 0x8000 == 0 {
        if b == 0 {
            f16::from_bits(0x8001)
        } else {
            f16::from_bits(b - 1)
        }
    } else {
        f16::from_bits(b + 1)
    }
}

/// The f16 `(min, scale)` of a range `[lo, hi]` for `bits`-bit codes: `min <= lo` and
/// `min + scale * qmax >= hi`, so rounding to the nearest code errs by at most
/// `scale / 2` everywhere in the range.
pub fn min_scale(lo: f32, hi: f32, bits: u8) -> (f16, f16) {
    let q = qmax(bits);
    let mut mn = f16::from_f32(lo);
    if mn.to_f32() > lo {
        mn = f16_down(mn);
    }
    let m = mn.to_f32();
    let mut sc = f16::from_f32((hi - m) / q);
    // Rounding the scale down may leave `hi` outside the range: step it up.
    while m + sc.to_f32() * q < hi {
        sc = f16::from_bits(sc.to_bits() + 1);
    }
    (mn, sc)
}

/// `round((x - min) / scale)` clamped to the code range (0 for a zero scale).
#[inline]
fn code(x: f32, min: f32, inv_scale: f32, q: f32) -> u8 {
    ((x - min) * inv_scale).round().clamp(0.0, q) as u8
}

/// Packs `codes` (`[head_dim]`, each < 2^bits) into `out` (`[row_bytes]`).
pub fn pack(codes: &[u8], bits: u8, out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            let half = codes.len() / 2;
            for (j, o) in out.iter_mut().enumerate() {
                *o = codes[j] | (codes[j + half] << 4);
            }
        }
        _ => unreachable!("only 8- and 4-bit codes"),
    }
}

/// Unpacks one row of codes as f32: `out[d] = code[d]`.
// packed: [row_bytes] -> out: [head_dim]
#[inline]
pub fn unpack_f32(packed: &[u8], bits: u8, out: &mut [f32]) {
    match bits {
        8 => quant::widen_u8(packed, out),
        4 => {
            let (lo, hi) = out.split_at_mut(packed.len());
            quant::widen_nibbles(packed, lo, hi);
        }
        _ => unreachable!("only 8- and 4-bit codes"),
    }
}

/// [`unpack_f32`] of consecutive packed rows of `head_dim` codes into `out`
/// (`[rows, head_dim]`), in as few kernel calls as the layout allows.
pub fn unpack_rows_f32(packed: &[u8], bits: u8, head_dim: usize, out: &mut [f32]) {
    match bits {
        // One code per byte: the rows are one contiguous run of codes.
        8 => quant::widen_u8(packed, out),
        _ => {
            let rb = row_bytes(head_dim, bits);
            for (row, o) in packed.chunks_exact(rb).zip(out.chunks_exact_mut(head_dim)) {
                unpack_f32(row, bits, o);
            }
        }
    }
}

/// Keys per channel over the group's tokens: `(min [hd], scale [hd], codes [n, row_bytes])`.
// keys: [n, head_dim]
#[allow(clippy::type_complexity)]
fn quantize_keys(bits: u8, head_dim: usize, keys: &[f32]) -> (Vec<f16>, Vec<f16>, Vec<u8>) {
    let n = keys.len() / head_dim;
    let (q, rb) = (qmax(bits), row_bytes(head_dim, bits));
    let mut kmin = Vec::with_capacity(head_dim);
    let mut kscale = Vec::with_capacity(head_dim);
    for d in 0..head_dim {
        let (lo, hi) = (0..n)
            .map(|t| keys[t * head_dim + d])
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
        let (mn, sc) = min_scale(lo, hi, bits);
        kmin.push(mn);
        kscale.push(sc);
    }
    let params: Vec<(f32, f32)> = kmin
        .iter()
        .zip(&kscale)
        .map(|(mn, sc)| {
            let sc = sc.to_f32();
            (mn.to_f32(), if sc > 0.0 { 1.0 / sc } else { 0.0 })
        })
        .collect();
    let mut codes = vec![0u8; head_dim];
    let mut kcodes = vec![0u8; n * rb];
    for t in 0..n {
        for (d, (c, &(mn, inv))) in codes.iter_mut().zip(&params).enumerate() {
            *c = code(keys[t * head_dim + d], mn, inv, q);
        }
        pack(&codes, bits, &mut kcodes[t * rb..(t + 1) * rb]);
    }
    (kmin, kscale, kcodes)
}

/// Values per token, in groups of `value_group` channels: `(params [n, hd / vg, 2],
/// codes [n, row_bytes])`.
// values: [n, head_dim]
fn quantize_values(
    bits: u8,
    head_dim: usize,
    value_group: usize,
    values: &[f32],
) -> (Vec<f16>, Vec<u8>) {
    let n = values.len() / head_dim;
    let (q, rb) = (qmax(bits), row_bytes(head_dim, bits));
    let mut codes = vec![0u8; head_dim];
    let mut vparams = Vec::with_capacity(n * head_dim / value_group * 2);
    let mut vcodes = vec![0u8; n * rb];
    for (t, row) in values.chunks_exact(head_dim).enumerate() {
        for (g, chunk) in row.chunks_exact(value_group).enumerate() {
            let lo = chunk.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mn, sc) = min_scale(lo, hi, bits);
            vparams.push(mn);
            vparams.push(sc);
            let (mn, sc) = (mn.to_f32(), sc.to_f32());
            let inv = if sc > 0.0 { 1.0 / sc } else { 0.0 };
            for (c, &x) in codes[g * value_group..(g + 1) * value_group]
                .iter_mut()
                .zip(chunk)
            {
                *c = code(x, mn, inv, q);
            }
        }
        pack(&codes, bits, &mut vcodes[t * rb..(t + 1) * rb]);
    }
    (vparams, vcodes)
}

/// One key group (per-channel min/scale over its tokens) and its tokens' values
/// (per-token, per-channel-group min/scale).
#[derive(Clone, Debug)]
pub struct QuantGroup {
    bits: u8,
    /// Lane entry of each row, strictly increasing.
    rows: Vec<u32>,
    /// `[head_dim]` each.
    kmin: Vec<f16>,
    kscale: Vec<f16>,
    /// `[n, row_bytes]`
    kcodes: Vec<u8>,
    /// `[n, head_dim / value_group, 2]`: (min, scale) of each value channel group.
    vparams: Vec<f16>,
    /// `[n, row_bytes]`
    vcodes: Vec<u8>,
}

impl QuantGroup {
    /// Quantises `n` tokens: `keys`, `values`: `[n, head_dim]`, lane entries `rows`.
    pub fn quantize(
        bits: u8,
        head_dim: usize,
        value_group: usize,
        keys: &[f32],
        values: &[f32],
        rows: Vec<u32>,
    ) -> QuantGroup {
        let n = rows.len();
        debug_assert_eq!(keys.len(), n * head_dim);
        debug_assert_eq!(values.len(), n * head_dim);
        let (kmin, kscale, kcodes) = quantize_keys(bits, head_dim, keys);
        let (vparams, vcodes) = quantize_values(bits, head_dim, value_group, values);
        QuantGroup {
            bits,
            rows,
            kmin,
            kscale,
            kcodes,
            vparams,
            vcodes,
        }
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Lane entry of each row.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }
    /// Per-channel key minimum and scale, `[head_dim]` each.
    pub fn key_params(&self) -> (&[f16], &[f16]) {
        (&self.kmin, &self.kscale)
    }
    /// Packed key codes, `[n, row_bytes]`.
    pub fn key_codes_all(&self) -> &[u8] {
        &self.kcodes
    }
    /// Packed value codes `[n, row_bytes]` and their `[n, head_dim / value_group, 2]`
    /// (min, scale).
    pub fn values_all(&self) -> (&[f16], &[u8]) {
        (&self.vparams, &self.vcodes)
    }
    /// Packed key codes of row `r`.
    pub fn key_codes(&self, r: usize) -> &[u8] {
        let rb = self.kcodes.len() / self.len().max(1);
        &self.kcodes[r * rb..(r + 1) * rb]
    }
    /// Packed value codes of row `r` and its `[head_dim / value_group, 2]` (min, scale).
    pub fn value_row(&self, r: usize) -> (&[f16], &[u8]) {
        let rb = self.vcodes.len() / self.len().max(1);
        let pb = self.vparams.len() / self.len().max(1);
        (
            &self.vparams[r * pb..(r + 1) * pb],
            &self.vcodes[r * rb..(r + 1) * rb],
        )
    }

    /// Reference dequantisation of row `r`'s key: `out[d] = min_d + scale_d · code`.
    // -> out: [head_dim]
    pub fn dequantize_key(&self, r: usize, out: &mut [f32]) {
        unpack_f32(self.key_codes(r), self.bits, out);
        for ((o, mn), sc) in out.iter_mut().zip(&self.kmin).zip(&self.kscale) {
            *o = mn.to_f32() + sc.to_f32() * *o;
        }
    }

    /// Reference dequantisation of row `r`'s value.
    // -> out: [head_dim]
    pub fn dequantize_value(&self, r: usize, out: &mut [f32]) {
        let (params, codes) = self.value_row(r);
        unpack_f32(codes, self.bits, out);
        let vg = out.len() / (params.len() / 2);
        for (chunk, p) in out.chunks_exact_mut(vg).zip(params.chunks_exact(2)) {
            let (mn, sc) = (p[0].to_f32(), p[1].to_f32());
            chunk.iter_mut().for_each(|x| *x = mn + sc * *x);
        }
    }

    /// Keeps the rows whose entry `remap` maps to a new entry (`u32::MAX`: dropped),
    /// renumbered; the others' codes stay valid under the group's min and scale.
    pub fn retain(&mut self, remap: &[u32]) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let rb = self.kcodes.len() / n;
        let pb = self.vparams.len() / n;
        let mut dst = 0;
        for src in 0..n {
            let new = remap[self.rows[src] as usize];
            if new == u32::MAX {
                continue;
            }
            self.rows[dst] = new;
            if dst != src {
                self.kcodes.copy_within(src * rb..(src + 1) * rb, dst * rb);
                self.vcodes.copy_within(src * rb..(src + 1) * rb, dst * rb);
                self.vparams.copy_within(src * pb..(src + 1) * pb, dst * pb);
            }
            dst += 1;
        }
        self.rows.truncate(dst);
        self.kcodes.truncate(dst * rb);
        self.vcodes.truncate(dst * rb);
        self.vparams.truncate(dst * pb);
    }

    /// One group of the rows of `groups` (same bits), in entry order. Values are per
    /// token, so their codes move as they are; keys share per-channel ranges, so they
    /// are dequantised and quantised once more over the union (adding at most half a
    /// step of the merged range to each key's error).
    pub fn merge(groups: &[QuantGroup], head_dim: usize) -> QuantGroup {
        let bits = groups[0].bits;
        debug_assert!(groups.iter().all(|g| g.bits == bits));
        // (entry, group, row), sorted by entry.
        let mut order: Vec<(u32, usize, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.rows.iter().enumerate().map(move |(r, &e)| (e, gi, r)))
            .collect();
        order.sort_unstable();
        let n = order.len();
        let mut keys = vec![0f32; n * head_dim];
        let mut rows = Vec::with_capacity(n);
        let (mut vparams, mut vcodes) = (Vec::new(), Vec::new());
        for (t, &(e, gi, r)) in order.iter().enumerate() {
            let g = &groups[gi];
            g.dequantize_key(r, &mut keys[t * head_dim..(t + 1) * head_dim]);
            rows.push(e);
            let (p, c) = g.value_row(r);
            vparams.extend_from_slice(p);
            vcodes.extend_from_slice(c);
        }
        let (kmin, kscale, kcodes) = quantize_keys(bits, head_dim, &keys);
        QuantGroup {
            bits,
            rows,
            kmin,
            kscale,
            kcodes,
            vparams,
            vcodes,
        }
    }

    /// Bytes of codes, minima and scales.
    pub fn payload_bytes(&self) -> usize {
        self.kcodes.len()
            + self.vcodes.len()
            + 2 * (self.kmin.len() + self.kscale.len() + self.vparams.len())
    }

    /// Bytes allocated (capacities), the row index included.
    pub fn allocated_bytes(&self) -> usize {
        self.kcodes.capacity()
            + self.vcodes.capacity()
            + 2 * (self.kmin.capacity() + self.kscale.capacity() + self.vparams.capacity())
            + 4 * self.rows.capacity()
            + std::mem::size_of::<QuantGroup>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random f16-rounded data with outlier channels (as keys
    /// have): channel 3 is ~20× larger than the rest.
    fn data(n: usize, hd: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n * hd)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s as f32 / u32::MAX as f32) * 2.0 - 1.0;
                let x = if i % hd == 3 { 20.0 * u } else { u };
                f16::from_f32(x).to_f32()
            })
            .collect()
    }

    #[test]
    fn min_scale_covers_the_range() {
        for bits in [4u8, 8] {
            for (lo, hi) in [
                (-1.0f32, 1.0f32),
                (0.1, 0.1),
                (-3.3e-3, 7.9),
                (1e4, 1e4 + 3.0),
            ] {
                let (mn, sc) = min_scale(lo, hi, bits);
                assert!(mn.to_f32() <= lo, "{lo}");
                assert!(mn.to_f32() + sc.to_f32() * qmax(bits) >= hi, "{hi}");
            }
        }
    }

    #[test]
    fn pack_unpack_round_trips() {
        let codes: Vec<u8> = (0..64).map(|i| (i * 7 % 16) as u8).collect();
        for bits in [4u8, 8] {
            let mut packed = vec![0u8; row_bytes(64, bits)];
            pack(&codes, bits, &mut packed);
            let mut out = vec![0f32; 64];
            unpack_f32(&packed, bits, &mut out);
            assert!(out.iter().zip(&codes).all(|(&o, &c)| o == c as f32));
        }
        assert_eq!(row_bytes(64, 4), 32);
    }

    /// Every element of every group errs by at most half its group's step (plus f32
    /// rounding of the affine map), for keys per channel and values per token.
    #[test]
    fn int8_and_int4_round_trip_within_half_a_step_per_group() {
        let (n, hd, vg) = (32, 64, 32);
        let keys = data(n, hd, 1);
        let values = data(n, hd, 2);
        for bits in [8u8, 4] {
            let g = QuantGroup::quantize(bits, hd, vg, &keys, &values, (0..n as u32).collect());
            assert_eq!(
                g.payload_bytes(),
                2 * n * row_bytes(hd, bits) + 2 * (2 * hd + n * 4)
            );
            let mut out = vec![0f32; hd];
            let (mut max_rel_k, mut max_rel_v) = (0f32, 0f32);
            for t in 0..n {
                g.dequantize_key(t, &mut out);
                for d in 0..hd {
                    let step = g.kscale[d].to_f32();
                    let err = (out[d] - keys[t * hd + d]).abs();
                    assert!(
                        err <= step * 0.5 * (1.0 + 1e-3) + 1e-6,
                        "bits {bits} key {t},{d}"
                    );
                    // Range of the channel: error relative to it.
                    max_rel_k = max_rel_k.max(err / (step * qmax(bits)).max(1e-9));
                }
                g.dequantize_value(t, &mut out);
                let (params, _) = g.value_row(t);
                for d in 0..hd {
                    let step = params[2 * (d / vg) + 1].to_f32();
                    let err = (out[d] - values[t * hd + d]).abs();
                    assert!(
                        err <= step * 0.5 * (1.0 + 1e-3) + 1e-6,
                        "bits {bits} value {t},{d}"
                    );
                    max_rel_v = max_rel_v.max(err / (step * qmax(bits)).max(1e-9));
                }
            }
            // Half a step of the range: 1/510 for int8, 1/30 for int4.
            let bound = 0.5 / qmax(bits) * 1.001;
            assert!(
                max_rel_k <= bound && max_rel_v <= bound,
                "{max_rel_k} {max_rel_v}"
            );
        }
    }

    /// Per-channel keys: the outlier channel does not widen the other channels' steps.
    #[test]
    fn key_outlier_channels_keep_their_own_scale() {
        let (n, hd) = (32, 64);
        let keys = data(n, hd, 5);
        let g = QuantGroup::quantize(4, hd, 32, &keys, &keys, (0..n as u32).collect());
        let outlier = g.kscale[3].to_f32();
        let other = g.kscale[4].to_f32();
        assert!(outlier > 10.0 * other, "{outlier} vs {other}");
    }

    #[test]
    fn retain_keeps_the_surviving_rows_codes_and_merge_interleaves() {
        let (n, hd) = (8, 16);
        let keys = data(n, hd, 7);
        let values = data(n, hd, 8);
        let full = QuantGroup::quantize(8, hd, 8, &keys, &values, (0..n as u32).collect());
        let mut g = full.clone();
        // Drop entries 1, 2 and 6; survivors renumbered.
        let remap = [0, u32::MAX, u32::MAX, 1, 2, 3, u32::MAX, 4];
        g.retain(&remap);
        assert_eq!(g.rows(), &[0, 1, 2, 3, 4]);
        let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
        for (r, old) in [(0, 0), (1, 3), (2, 4), (3, 5), (4, 7)] {
            g.dequantize_key(r, &mut a);
            full.dequantize_key(old, &mut b);
            assert_eq!(a, b);
            g.dequantize_value(r, &mut a);
            full.dequantize_value(old, &mut b);
            assert_eq!(a, b);
        }
        // Two groups over interleaved entries merge into entry order; values exact,
        // keys within the merged group's half step plus the first quantisation's.
        let ga = QuantGroup::quantize(
            4,
            hd,
            8,
            &keys[..4 * hd],
            &values[..4 * hd],
            vec![0, 2, 4, 6],
        );
        let gb = QuantGroup::quantize(
            4,
            hd,
            8,
            &keys[4 * hd..],
            &values[4 * hd..],
            vec![1, 3, 5, 7],
        );
        let m = QuantGroup::merge(&[ga.clone(), gb.clone()], hd);
        assert_eq!(m.rows(), &[0, 1, 2, 3, 4, 5, 6, 7]);
        for (r, (src, sr)) in [(&ga, 0), (&gb, 0), (&ga, 1), (&gb, 1)]
            .into_iter()
            .enumerate()
        {
            m.dequantize_value(r, &mut a);
            src.dequantize_value(sr, &mut b);
            assert_eq!(a, b, "value row {r}");
            m.dequantize_key(r, &mut a);
            src.dequantize_key(sr, &mut b);
            for d in 0..hd {
                assert!((a[d] - b[d]).abs() <= m.kscale[d].to_f32() * 0.5 * 1.001 + 1e-6);
            }
        }
    }
}
