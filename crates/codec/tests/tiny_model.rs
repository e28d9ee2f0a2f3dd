//! The whole codec on a tiny synthetic model (one layer, 16 wide, a vocabulary of
//! printable ASCII without byte tokens): arbitrary bytes, escapes, both window modes,
//! and every way an archive can be wrong. The forward pass costs microseconds, so
//! these can be property tests.

mod common;

use codec::container::{Header, Mode};
use codec::{CodecError, CompressOptions, LmCodec};
use proptest::prelude::*;

fn opts(mode: Mode, batch: usize) -> CompressOptions {
    CompressOptions {
        mode,
        batch,
        read_block: 97, // tiny blocks: many cut points and chunk boundaries
    }
}

const SLIDING: Mode = Mode::Sliding {
    ctx: 24,
    overlap: 8,
};
const EQUAL_INFO: Mode = Mode::EqualInfo {
    ctx: 24,
    window_bytes: 16,
};

/// Replaces an archive's header and recomputes both checksums, as a writer with other
/// settings (or a future version) would have.
fn reseal(archive: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let (mut h, start) = Header::parse(archive).unwrap();
    edit(&mut h);
    let mut out = h.to_bytes();
    out.extend_from_slice(&archive[start..archive.len() - 4]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn text_with_unrepresentable_bytes_uses_escapes() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    let text = "the cat in the hat\nthé\u{2581}café \x00 naïve \u{1F600}!\n".as_bytes();
    for mode in [SLIDING, EQUAL_INFO] {
        let mut archive = Vec::new();
        let st = c
            .compress(
                &mut &text[..],
                text.len() as u64,
                crc32fast::hash(text),
                &opts(mode, 4),
                &mut archive,
                &mut |_, _| {},
            )
            .unwrap();
        assert!(st.escaped_bytes >= 10, "{st:?}");
        assert_eq!(c.decompress_to_vec(&archive).unwrap(), text, "{mode:?}");
    }
}

#[test]
fn equal_info_windows_have_equal_size() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    let text = "the theory of the thing in the hearth\n".repeat(20);
    let archive = c
        .compress_bytes(text.as_bytes(), &opts(EQUAL_INFO, 8))
        .unwrap();
    let (_, start) = Header::parse(&archive).unwrap();
    let payload = archive.len() - start - 4;
    assert_eq!(payload % 16, 0);
    assert!(payload / 16 > 5, "{payload} bytes of windows");
    assert_eq!(c.decompress_to_vec(&archive).unwrap(), text.as_bytes());
}

#[test]
fn thread_counts_and_batching_do_not_change_the_archive() {
    let text = "in the heather the other hen ate the wheat\n".repeat(8);
    let m1 = common::tiny_model(1, 1);
    let m2 = common::tiny_model(1, 2);
    let c1 = LmCodec::new(&m1, "tiny").unwrap();
    let c2 = LmCodec::new(&m2, "tiny").unwrap();
    for mode in [SLIDING, EQUAL_INFO] {
        let a1 = c1.compress_bytes(text.as_bytes(), &opts(mode, 1)).unwrap();
        let a2 = c2.compress_bytes(text.as_bytes(), &opts(mode, 16)).unwrap();
        assert_eq!(a1, a2, "{mode:?}");
        assert_eq!(c2.decompress_to_vec(&a1).unwrap(), text.as_bytes());
        assert_eq!(c1.decompress_to_vec(&a2).unwrap(), text.as_bytes());
    }
}

#[test]
fn wrong_model_is_refused_naming_both() {
    let ma = common::tiny_model(1, 1);
    let mb = common::tiny_model(2, 1);
    let a = LmCodec::new(&ma, "tiny-a").unwrap();
    let b = LmCodec::new(&mb, "tiny-b").unwrap();
    let archive = a.compress_bytes(b"the hat", &opts(SLIDING, 4)).unwrap();
    let err = b.decompress_to_vec(&archive).unwrap_err();
    assert!(matches!(err, CodecError::WrongModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("tiny-a") && msg.contains("tiny-b"), "{msg}");
}

#[test]
fn unknown_version_and_foreign_files_are_refused() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    let mut archive = c.compress_bytes(b"the hat", &opts(SLIDING, 4)).unwrap();
    archive[8] = 9;
    let err = c.decompress_to_vec(&archive).unwrap_err();
    assert!(matches!(err, CodecError::UnsupportedVersion(9)), "{err}");
    assert!(err.to_string().contains("version 9"), "{err}");
    let err = c
        .decompress_to_vec(b"hello world, not an archive")
        .unwrap_err();
    assert!(matches!(err, CodecError::NotAnArchive), "{err}");
    assert!(c.decompress_to_vec(b"").is_err());
}

#[test]
fn other_numerics_are_refused_before_decoding() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    let archive = c.compress_bytes(b"the hat", &opts(SLIDING, 4)).unwrap();
    let bad = reseal(&archive, |h| h.fingerprint ^= 1);
    let err = c.decompress_to_vec(&bad).unwrap_err();
    assert!(matches!(err, CodecError::Numerics(_)), "{err}");
}

#[test]
fn a_wrong_content_checksum_is_an_error_not_output() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    let archive = c.compress_bytes(b"the hat", &opts(SLIDING, 4)).unwrap();
    let bad = reseal(&archive, |h| h.content_crc ^= 1);
    assert!(c.decompress_to_vec(&bad).is_err());
    // A longer declared length runs out of coded stream or of windows.
    for mode in [SLIDING, EQUAL_INFO] {
        let archive = c.compress_bytes(b"the hat", &opts(mode, 4)).unwrap();
        let bad = reseal(&archive, |h| h.original_len += 3);
        assert!(c.decompress_to_vec(&bad).is_err(), "{mode:?}");
        let bad = reseal(&archive, |h| h.original_len -= 3);
        assert!(c.decompress_to_vec(&bad).is_err(), "{mode:?}");
        // A crafted header claiming a terabyte ends at the end of the coded stream
        // instead of decoding zeros forever.
        let bad = reseal(&archive, |h| h.original_len = 1 << 40);
        assert!(c.decompress_to_vec(&bad).is_err(), "{mode:?}");
    }
}

#[test]
fn every_truncation_and_single_byte_change_is_refused() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    for mode in [SLIDING, EQUAL_INFO] {
        let archive = c
            .compress_bytes(b"the heath\xff\x00 in the hat", &opts(mode, 4))
            .unwrap();
        for n in 0..archive.len() {
            assert!(
                c.decompress_to_vec(&archive[..n]).is_err(),
                "{mode:?} cut at {n}"
            );
        }
        for i in 0..archive.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut bad = archive.clone();
                bad[i] ^= x;
                assert!(
                    c.decompress_to_vec(&bad).is_err(),
                    "{mode:?} byte {i} ^ {x:#x}"
                );
            }
        }
        let mut longer = archive.clone();
        longer.push(0);
        assert!(c.decompress_to_vec(&longer).is_err());
    }
}

#[test]
fn bad_settings_are_errors() {
    let m = common::tiny_model(1, 1);
    let c = LmCodec::new(&m, "tiny").unwrap();
    for mode in [
        Mode::Sliding { ctx: 8, overlap: 7 },
        Mode::Sliding { ctx: 1, overlap: 0 },
        Mode::EqualInfo {
            ctx: 8,
            window_bytes: 4,
        },
        Mode::Sliding {
            ctx: 100_000,
            overlap: 10,
        },
    ] {
        assert!(c.compress_bytes(b"x", &opts(mode, 1)).is_err(), "{mode:?}");
    }
}

fn any_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        (2u32..40, 0u32..39).prop_filter_map("overlap < ctx - 1", |(ctx, o)| {
            (o + 1 < ctx).then_some(Mode::Sliding { ctx, overlap: o })
        }),
        (2u32..40, 16u32..64).prop_map(|(ctx, w)| Mode::EqualInfo {
            ctx,
            window_bytes: w
        }),
    ]
}

fn any_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "[ -~\n]{0,200}".prop_map(String::into_bytes),
        "(the |in |he|\u{e9}|\u{2581}|\n|\u{1F600}){0,60}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any bytes, any window settings, any batch size: the archive decodes to the input.
    #[test]
    fn arbitrary_bytes_roundtrip(text in any_text(), mode in any_mode(), batch in 1usize..20) {
        let m = common::tiny_model(1, 1);
        let c = LmCodec::new(&m, "tiny").unwrap();
        let archive = c.compress_bytes(&text, &opts(mode, batch)).unwrap();
        prop_assert_eq!(c.decompress_to_vec(&archive).unwrap(), text);
    }

    /// Any change of any byte is refused (never wrong output, never a panic).
    #[test]
    fn mutated_archives_are_refused(text in any_text(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let m = common::tiny_model(1, 1);
        let c = LmCodec::new(&m, "tiny").unwrap();
        let mut archive = c.compress_bytes(&text, &opts(SLIDING, 4)).unwrap();
        let i = pos.index(archive.len());
        archive[i] ^= x;
        prop_assert!(c.decompress_to_vec(&archive).is_err());
    }
}
