use super::*;
use proptest::prelude::*;

fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()))
        .metadata("llama.block_count", Value::U32(2))
        .metadata("llama.rope.freq_base", Value::F32(10000.0))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )
        .tensor_f32("w", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .tensor_f32("b", &[3], &[0.5, -0.5, 1.5]);
    w.to_bytes()
}

#[test]
fn parses_what_the_writer_wrote() {
    let bytes = sample_file();
    let h = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.architecture().unwrap(), "llama");
    assert_eq!(h.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(h.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(
        h.get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let w = h.tensor("w").unwrap();
    assert_eq!(w.dims, vec![4, 2]);
    assert_eq!(w.size, 32);
    let b = h.tensor("b").unwrap();
    assert_eq!(b.offset % 32, 0);
    let start = (h.data_offset + b.offset) as usize;
    let v: Vec<f32> = bytes[start..start + 12]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(v, vec![0.5, -0.5, 1.5]);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_file();
    // The last tensor ends before the final padding; cutting inside the padding is harmless.
    let h = GgufHeader::parse(&bytes).unwrap();
    let needed = h
        .tensors
        .iter()
        .map(|t| h.data_offset + t.offset + t.size)
        .max()
        .unwrap() as usize;
    for cut in 0..needed {
        let err = GgufHeader::parse(&bytes[..cut]);
        assert!(err.is_err(), "prefix of {cut} bytes parsed");
    }
}

#[test]
fn wrong_magic_and_version_are_named() {
    let mut bytes = sample_file();
    bytes[0] = b'X';
    let e = GgufHeader::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let mut bytes = sample_file();
    bytes[4] = 1;
    let e = GgufHeader::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("unsupported GGUF version 1"), "{e}");
}

#[test]
fn huge_counts_do_not_allocate() {
    // A header claiming 2^60 metadata entries must fail quickly, not try to allocate.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let e = GgufHeader::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    // A string claiming u64::MAX bytes.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 64]);
    assert!(GgufHeader::parse(&bytes).is_err());
}

#[test]
fn tensor_beyond_end_is_named() {
    let mut w = GgufWriter::new();
    w.tensor_f32("big", &[8], &[0.0; 8]);
    let mut bytes = w.to_bytes();
    bytes.truncate(bytes.len() - 16);
    let e = GgufHeader::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("\"big\"") && e.contains("beyond the end"), "{e}");
}

#[test]
fn unknown_tensor_type_is_named() {
    let mut w = GgufWriter::new();
    w.tensor_f32("t", &[8], &[0.0; 8]);
    let mut bytes = w.to_bytes();
    // type id sits after: header(24) + name(8+1) + n_dims(4) + dims(8)
    let at = 24 + 9 + 4 + 8;
    bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = GgufHeader::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("unsupported ggml type id 99"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = GgufHeader::parse(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend_from_slice(&tail);
        let _ = GgufHeader::parse(&bytes);
    }

    #[test]
    fn mutated_headers_never_panic(muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = sample_file();
        let n = bytes.len();
        for (i, b) in muts {
            bytes[i.index(n)] = b;
        }
        let _ = GgufHeader::parse(&bytes);
    }
}
