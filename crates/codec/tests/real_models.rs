//! The codec on real models: round trips across thread counts, batched against
//! single-token encoding, both window modes, the tokenizers' fallbacks, a wrong model.
//! Texts are kept to a few KB: SmolLM2 decodes ~130 tokens/s on two cores.

mod common;

use std::time::Instant;

use codec::container::Mode;
use codec::{CodecError, CompressOptions, LmCodec};
use model::{Batch, LogitsFor};

/// About 2 KB of real text with bytes no tokenizer sees in text: a NUL, invalid UTF-8
/// (a lone continuation byte, a truncated 3-byte sequence, 0xFF) and a CRLF.
fn mixed_text() -> Vec<u8> {
    let gpl = common::gpl3();
    let mut t = gpl[1200..2600].to_vec();
    t.extend_from_slice(b"\r\nBinary: \x00\x01\x80 caf\xc3\xa9 \xe2\x82 \xff end.\n");
    t.extend_from_slice(&gpl[2600..3000]);
    t
}

fn opts(mode: Mode, batch: usize) -> CompressOptions {
    CompressOptions {
        mode,
        batch,
        ..CompressOptions::default()
    }
}

/// The encoder's batched rows must equal the decoder's single-token rows bit for bit
/// (the multi-row dot-product kernels sum in the one-row kernel's order, and each
/// output element is computed in one task). Checked on 70 tokens of real text, which
/// spans full and partial 16-row tiles, after a prefilled prefix, at 1 and 2 threads.
#[test]
fn smollm2_batched_rows_equal_single_token_rows() {
    for threads in [1, 2] {
        let m = common::load(common::SMOLLM2, threads);
        let text = String::from_utf8(common::gpl3()[..600].to_vec()).unwrap();
        let ids = m.tokenizer.encode(&text, false, false).unwrap();
        let ids = &ids[..80];
        let pos: Vec<usize> = (0..ids.len()).collect();
        let v = m.model.config.vocab_size;
        let (head, tail) = ids.split_at(10);

        let mut single = m.model.new_state(128);
        m.model
            .forward(&mut single, &Batch::causal(head, &pos[..10]), None)
            .unwrap();
        let mut rows = Vec::new();
        for (k, t) in tail.iter().enumerate() {
            let r = m
                .model
                .forward(
                    &mut single,
                    &Batch::causal(std::slice::from_ref(t), &pos[10 + k..11 + k]),
                    None,
                )
                .unwrap();
            rows.extend_from_slice(r);
        }
        let mut batched = m.model.new_state(128);
        m.model
            .forward(&mut batched, &Batch::causal(head, &pos[..10]), None)
            .unwrap();
        let all = m
            .model
            .forward(
                &mut batched,
                &Batch {
                    logits: LogitsFor::All,
                    ..Batch::causal(tail, &pos[10..])
                },
                None,
            )
            .unwrap();
        assert_eq!(all.len(), tail.len() * v);
        let differing = all
            .iter()
            .zip(&rows)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differing, 0, "{threads} threads: {differing} logits differ");

        let c = LmCodec::new(&m, "smollm2").unwrap();
        assert!(c.probe().unwrap().batch_matches_steps);
    }
}

/// The probe (which decides whether the encoder batches) agrees for the other models.
#[test]
fn gemma3_probe_allows_batching() {
    let m = common::load(common::GEMMA3, 2);
    let c = LmCodec::new(&m, "gemma3").unwrap();
    assert!(c.probe().unwrap().batch_matches_steps);
}

/// Compress at 1 thread, decompress at 2, and the reverse; the archives of both
/// thread counts are the same bytes.
#[test]
fn smollm2_roundtrip_across_thread_counts() {
    let text = mixed_text();
    let m1 = common::load(common::SMOLLM2, 1);
    let m2 = common::load(common::SMOLLM2, 2);
    let c1 = LmCodec::new(&m1, "smollm2").unwrap();
    let c2 = LmCodec::new(&m2, "smollm2").unwrap();
    assert_eq!(c1.model_id(), c2.model_id());
    let o = opts(
        Mode::Sliding {
            ctx: 256,
            overlap: 64,
        },
        64,
    );
    let t = Instant::now();
    let a1 = c1.compress_bytes(&text, &o).unwrap();
    let tc = t.elapsed().as_secs_f64();
    let a2 = c2.compress_bytes(&text, &o).unwrap();
    assert_eq!(a1, a2, "the archive depends on the thread count");
    let t = Instant::now();
    assert_eq!(c2.decompress_to_vec(&a1).unwrap(), text);
    let td = t.elapsed().as_secs_f64();
    assert_eq!(c1.decompress_to_vec(&a2).unwrap(), text);
    let bpb = (a1.len() * 8) as f64 / text.len() as f64;
    eprintln!(
        "{} bytes -> {} ({bpb:.3} bits/byte incl. header); compress {tc:.1} s, decompress {td:.1} s",
        text.len(),
        a1.len()
    );
    // The model predicts English licence text far better than 2 bits per byte.
    assert!(bpb < 2.0, "{bpb} bits/byte");
}

/// The encoder fed in batches writes exactly the archive of single-token steps.
#[test]
fn smollm2_batched_and_stepwise_encoders_agree() {
    let text = &common::gpl3()[4000..4800];
    let m = common::load(common::SMOLLM2, 2);
    let c = LmCodec::new(&m, "smollm2").unwrap();
    for mode in [
        Mode::Sliding {
            ctx: 64,
            overlap: 16,
        },
        Mode::EqualInfo {
            ctx: 512,
            window_bytes: 32,
        },
    ] {
        let stepwise = c.compress_bytes(text, &opts(mode, 1)).unwrap();
        let batched = c.compress_bytes(text, &opts(mode, 64)).unwrap();
        assert_eq!(stepwise, batched, "{mode:?}");
    }
}

/// Equal-Info Windows and short sliding windows (several context restarts) round-trip.
#[test]
fn smollm2_window_modes_roundtrip() {
    let text = &common::gpl3()[6000..6700];
    let m = common::load(common::SMOLLM2, 2);
    let c = LmCodec::new(&m, "smollm2").unwrap();
    for mode in [
        Mode::Sliding {
            ctx: 48,
            overlap: 12,
        },
        Mode::EqualInfo {
            ctx: 512,
            window_bytes: 24,
        },
    ] {
        let archive = c.compress_bytes(text, &opts(mode, 64)).unwrap();
        assert_eq!(c.decompress_to_vec(&archive).unwrap(), text, "{mode:?}");
    }
}

#[test]
fn smollm2_edge_inputs_roundtrip() {
    let m = common::load(common::SMOLLM2, 2);
    let c = LmCodec::new(&m, "smollm2").unwrap();
    for text in [
        &b""[..],
        b"a",
        b"\x00",
        b"\x00\x00\x00\x00",
        b"\xff\xfe\x80\xc0",
        b"\xe2\x82",
        b"<|im_start|>user\n<|endoftext|>",
        "\u{2581}\u{1F600} \t\r\n".as_bytes(),
    ] {
        let archive = c.compress_bytes(text, &CompressOptions::default()).unwrap();
        assert_eq!(c.decompress_to_vec(&archive).unwrap(), text, "{text:?}");
    }
}

/// Gemma's SentencePiece vocabulary maps a literal `▁` to a space, so text holding it
/// does not round-trip through the tokenizer: the encoder must notice and fall back.
#[test]
fn gemma3_tokenizer_fallback_roundtrips() {
    let m = common::load(common::GEMMA3, 2);
    let c = LmCodec::new(&m, "gemma3").unwrap();
    let text = [
        "a\u{2581}b x\u{2581}\u{2581}y\nplain line\n\x00".as_bytes(),
        b"\xff",
    ]
    .concat();
    let text = &text[..];
    let mut archive = Vec::new();
    let st = c
        .compress(
            &mut &text[..],
            text.len() as u64,
            crc32fast::hash(text),
            &CompressOptions::default(),
            &mut archive,
            &mut |_, _| {},
        )
        .unwrap();
    assert!(st.byte_token_bytes > 0 && st.escaped_bytes == 0, "{st:?}");
    assert_eq!(c.decompress_to_vec(&archive).unwrap(), text);
}

#[test]
fn wrong_real_model_is_refused_naming_both() {
    let ms = common::load(common::SMOLLM2, 2);
    let mg = common::load(common::GEMMA3, 2);
    let s = LmCodec::new(&ms, "smollm2-135m").unwrap();
    let g = LmCodec::new(&mg, "gemma3-270m").unwrap();
    let archive = s
        .compress_bytes(b"Hello", &CompressOptions::default())
        .unwrap();
    let err = g.decompress_to_vec(&archive).unwrap_err();
    assert!(matches!(err, CodecError::WrongModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("smollm2-135m") && msg.contains("gemma3-270m"),
        "{msg}"
    );
}
