//! The range coder and the quantiser alone, on random distributions and symbols.

use codec::cdf::{Quantiser, Symbol, TOTAL};
use codec::coder::{RangeDecoder, RangeEncoder, MAX_TOTAL};
use proptest::prelude::*;

/// A random frequency table (every entry >= 1) and symbols drawn from it.
fn table_and_symbols() -> impl Strategy<Value = (Vec<u64>, Vec<usize>)> {
    (1usize..300, 1u32..33).prop_flat_map(|(n, bits)| {
        let max = (MAX_TOTAL >> bits).max(1) / n as u64;
        (
            prop::collection::vec(1..=max.max(1), n),
            prop::collection::vec(0..n, 0..400),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any symbol sequence under any table decodes back; the decoder reads exactly the
    /// bytes of a finished stream, and a trimmed stream decodes the same (zero-padded).
    #[test]
    fn coder_roundtrips((freqs, symbols) in table_and_symbols()) {
        let mut cum = vec![0u64];
        for f in &freqs {
            cum.push(cum.last().unwrap() + f);
        }
        let total = *cum.last().unwrap();
        let mut e = RangeEncoder::new();
        for &s in &symbols {
            e.encode(cum[s], freqs[s], total);
        }
        let trimmed = e.clone().finish_trimmed();
        let bytes = e.finish();
        prop_assert!(bytes.starts_with(&trimmed));
        for (input, exact) in [(&bytes, true), (&trimmed, false)] {
            let mut d = RangeDecoder::new(input);
            for &s in &symbols {
                let v = d.target(total).unwrap();
                let got = cum.partition_point(|&c| c <= v) - 1;
                prop_assert_eq!(got, s);
                d.consume(cum[got], freqs[got]);
            }
            if exact {
                prop_assert_eq!(d.position(), bytes.len());
            }
        }
        // Within 1 byte of the information content, plus the tail.
        let info: f64 = symbols.iter().map(|&s| -((freqs[s] as f64) / total as f64).log2()).sum();
        prop_assert!((trimmed.len() as f64) <= info / 8.0 + 2.0, "{} bytes for {} bits", trimmed.len(), info);
    }

    /// Mixed totals in one stream (tokens at 2^32, raw bytes at 256), as the codec uses.
    #[test]
    fn mixed_totals_roundtrip(syms in prop::collection::vec((0u64..MAX_TOTAL, 0u64..256), 0..200)) {
        let mut e = RangeEncoder::new();
        for &(a, b) in &syms {
            e.encode(a, 1, MAX_TOTAL);
            e.encode(b, 1, 256);
        }
        let bytes = e.finish();
        let mut d = RangeDecoder::new(&bytes);
        for &(a, b) in &syms {
            let v = d.target(MAX_TOTAL).unwrap();
            prop_assert_eq!(v, a);
            d.consume(a, 1);
            prop_assert_eq!(d.decode_uniform(256).unwrap(), b);
        }
    }

    /// Random bytes never make the decoder panic: every target is in range or an error.
    #[test]
    fn decoder_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..64), total in 1u64..=MAX_TOTAL) {
        let mut d = RangeDecoder::new(&bytes);
        for _ in 0..100 {
            match d.target(total) {
                Ok(v) => { prop_assert!(v < total); d.consume(v, 1); }
                Err(_) => break,
            }
        }
    }

    /// Quantised rows: total exact, floors kept, and `find` inverts `interval`.
    #[test]
    fn quantiser_is_a_valid_cdf(
        logits in prop::collection::vec(prop_oneof![
            8 => -40.0f32..40.0,
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
        ], 1..200),
        mask in prop::collection::vec(any::<bool>(), 200),
        eow in any::<bool>(),
        probe in 0u64..TOTAL,
    ) {
        let mut codable: Vec<bool> = mask[..logits.len()].to_vec();
        codable[0] = true;
        let mut q = Quantiser::new(codable.clone(), eow).unwrap();
        q.quantise(Some(&logits));
        let f = q.token_freqs();
        let (_, esc) = q.interval(Symbol::Escape);
        let (_, end) = q.interval(Symbol::EndOfWindow);
        prop_assert_eq!(f.iter().sum::<u64>() + esc + end, TOTAL);
        for (i, &c) in codable.iter().enumerate() {
            prop_assert_eq!(f[i] >= 1, c);
        }
        let (s, c, fr) = q.find(probe);
        prop_assert!(c <= probe && probe < c + fr);
        prop_assert_eq!(q.interval(s), (c, fr));
        // Same logits, same integers (a fresh quantiser, the same function).
        let mut q2 = Quantiser::new(codable, eow).unwrap();
        q2.quantise(Some(&logits));
        prop_assert_eq!(q2.token_freqs(), f);
    }
}
