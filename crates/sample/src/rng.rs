//! A small seeded pseudo-random generator, written here so that a given seed
//! produces the same stream on every platform and with every dependency
//! version (no `rand` semver drift can change a reproducible run).
//!
//! The generator is xoshiro256** (Blackman & Vigna), seeded by expanding the
//! 64-bit seed with SplitMix64, as its authors recommend. It is fast, has a
//! 2^256 - 1 period and passes BigCrush; it is not cryptographic, which
//! sampling does not need.

/// One step of SplitMix64: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** seeded from a `u64` via SplitMix64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Expands `seed` into the 256-bit state with SplitMix64. SplitMix64's
    /// output function is a bijection of a state that changes every step, so
    /// four consecutive outputs are never all zero (the one forbidden state).
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform `f64` in `[0, 1)`: the top 53 bits scaled by 2^-53, so every
    /// value is exactly representable and 1.0 is never returned.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_value() {
        // First output of SplitMix64 from state 0 (reference implementation).
        let mut s = 0;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn xoshiro256starstar_reference_values() {
        // Reference stream of xoshiro256** from the state [1, 2, 3, 4].
        let mut r = Rng { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1_509_978_240);
        assert_eq!(r.next_u64(), 1_215_971_899_390_074_240);
    }

    #[test]
    fn f64_in_unit_interval_and_roughly_uniform() {
        let mut r = Rng::seed_from_u64(42);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        // Mean of U(0,1) is 0.5 with standard error 1/sqrt(12 n) ~ 0.0009.
        assert!((sum / n as f64 - 0.5).abs() < 0.005);
    }

    #[test]
    fn seeds_give_distinct_streams() {
        let mut a = Rng::seed_from_u64(0);
        let mut b = Rng::seed_from_u64(1);
        assert_ne!(a.next_u64(), b.next_u64());
        assert_eq!(
            Rng::seed_from_u64(7).next_u64(),
            Rng::seed_from_u64(7).next_u64()
        );
    }
}

/// Standard Gumbel noise for token `id` at draw `step` of the stream `seed`:
/// `-ln(-ln u)` with `u` uniform in (0, 1) from a counter-based hash of
/// `(seed, step, id)`. Any noise value can be recomputed from those three
/// numbers alone, which is what lets a counterfactual replay reuse the noise
/// of a recorded generation without storing a vocabulary-sized vector per step.
pub fn gumbel_noise(seed: u64, step: u64, id: u32) -> f64 {
    // Three SplitMix64 rounds over the mixed key: a bijective finaliser per
    // round, so distinct (step, id) pairs of one seed give independent-looking
    // outputs.
    let mut state = seed ^ step.wrapping_mul(0xd6e8_feb8_6659_fd93);
    splitmix64(&mut state);
    state ^= u64::from(id).wrapping_mul(0xa076_1d64_78bd_642f);
    let z = splitmix64(&mut state);
    // (0, 1): the top 53 bits plus one half, never 0 or 1.
    let u = ((z >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    -(-u.ln()).ln()
}

#[cfg(test)]
mod gumbel_tests {
    use super::gumbel_noise;

    #[test]
    fn gumbel_noise_is_deterministic_and_standard() {
        assert_eq!(gumbel_noise(1, 2, 3), gumbel_noise(1, 2, 3));
        assert_ne!(gumbel_noise(1, 2, 3), gumbel_noise(1, 2, 4));
        assert_ne!(gumbel_noise(1, 2, 3), gumbel_noise(1, 3, 3));
        assert_ne!(gumbel_noise(1, 2, 3), gumbel_noise(2, 2, 3));
        // Standard Gumbel: mean = Euler-Mascheroni 0.5772, variance = pi^2 / 6.
        let n = 200_000;
        let v: Vec<f64> = (0..n)
            .map(|i| gumbel_noise(7, i / 1000, (i % 1000) as u32))
            .collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.577_215_66).abs() < 0.01, "mean {mean}");
        assert!(
            (var - std::f64::consts::PI.powi(2) / 6.0).abs() < 0.03,
            "var {var}"
        );
    }
}
