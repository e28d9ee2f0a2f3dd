//! Property tests: the validating entry points never panic, and they accept
//! exactly the well-formed lengths.

use proptest::prelude::*;
use quant::GgmlType;

fn any_type() -> impl Strategy<Value = GgmlType> {
    (0..GgmlType::ALL.len()).prop_map(|i| GgmlType::ALL[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn dequantize_never_panics(ty in any_type(), n in 0usize..1100, bytes in prop::collection::vec(any::<u8>(), 0..2500)) {
        let mut dst = vec![0f32; n];
        let r = quant::dequantize_row(ty, &bytes, &mut dst);
        let ok = ty.row_bytes(n) == Some(bytes.len());
        prop_assert_eq!(r.is_ok(), ok);
    }

    #[test]
    fn dequantize_exact_lengths(ty in any_type(), nb in 0usize..6, seed in any::<u64>()) {
        let n = nb * ty.block_size();
        let len = ty.row_bytes(n).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (seed.rotate_left(i as u32 % 64) ^ i as u64) as u8).collect();
        let mut dst = vec![0f32; n];
        prop_assert!(quant::dequantize_row(ty, &bytes, &mut dst).is_ok());
    }

    #[test]
    fn quantize_never_panics(
        ty in any_type(),
        src in prop::collection::vec(prop_oneof![any::<f32>(), -10.0f32..10.0], 0..700),
        extra in 0usize..3,
    ) {
        let want = ty.row_bytes(src.len());
        let mut dst = vec![0u8; want.unwrap_or(0) + extra];
        let r = quant::quantize_row(ty, &src, &mut dst);
        let ok = ty.is_activation_type() && want.is_some() && extra == 0;
        prop_assert_eq!(r.is_ok(), ok);
        if ok {
            // The scalar path must agree byte for byte, even with NaN/inf input.
            let mut dst2 = vec![0u8; dst.len()];
            quant::reference::quantize_row(ty, &src, &mut dst2).unwrap();
            if src.iter().all(|v| v.is_finite()) {
                prop_assert_eq!(dst, dst2);
            }
        }
    }
}
