//! Attention over quantised KV lanes on the real SmolLM2-135M: the on-the-fly kernels
//! (scores from the codes, values unpacked per row) against the reference (the same
//! lanes dequantised into f32 containers), and int8/int4 logits against f16's.

mod common;

use model::kv_cache::{KvDtype, KvQuant};
use model::{Batch, Kernels, LoadedModel, SequenceState};

const PROMPT: &str = "The history of the printing press begins in China, where woodblock printing was used on cloth and later on paper. Movable type was invented there around 1040 by Bi Sheng, using porcelain; later metal type appeared in Korea. In Europe, Johannes Gutenberg";

fn quant(dtype: KvDtype) -> KvQuant {
    KvQuant {
        dtype,
        residual: 8,
        key_group: 16,
        value_group: 32,
        mixed_keep: 0.25,
    }
}

/// Prefills the prompt, quantises settled entries under `q`, optionally turns them back
/// into f32 containers (`reference`), then returns the logits of one more token.
fn step_logits(m: &LoadedModel, prompt: &[u32], q: KvQuant, reference: bool) -> Vec<f32> {
    let model = &m.model;
    let mut st: SequenceState = model.new_state(256);
    st.cache.set_quant(q).expect("valid settings");
    let positions: Vec<usize> = (0..prompt.len()).collect();
    model
        .forward(&mut st, &Batch::causal(prompt, &positions), None)
        .expect("prefill");
    st.cache.quantize_settled(None);
    if q.is_quantized() {
        assert!(st.cache.quantized_entries() > 0);
    }
    if reference {
        // Dequantise every lane into full-precision entries holding the same numbers.
        st.cache.set_quant(KvQuant::default()).expect("f16");
        assert_eq!(st.cache.quantized_entries(), 0);
    }
    let pos = [prompt.len()];
    model
        .forward(&mut st, &Batch::causal(&[prompt[5]], &pos), None)
        .expect("step")
        .to_vec()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn quantised_attention_matches_the_dequantised_reference_and_f16() {
    let mut m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("loads");
    let prompt = m.tokenizer.encode_prompt(PROMPT).expect("tokenises");
    assert!(prompt.len() > 40, "{}", prompt.len());
    // Reference kernels (f32 activations): the fast kernels quantise activations to
    // 8 bits, where a last-digit difference in attention can flip a rounding and move
    // the logits by far more than the attention kernels differ.
    m.model.kernels = Kernels::Reference;
    for dtype in [KvDtype::Int8, KvDtype::Int4] {
        let fast = step_logits(&m, &prompt, quant(dtype), false);
        let reference = step_logits(&m, &prompt, quant(dtype), true);
        let scale = reference.iter().map(|x| x.abs()).fold(0.0, f32::max);
        // Same numbers attended, only the summation order differs. Measured:
        // 0.3e-4 to 1.6e-4 of the scale, moving with numerically equivalent
        // changes elsewhere (libm's or our polynomial exp in softmax and SiLU).
        let d = max_abs(&fast, &reference);
        eprintln!("{dtype}: max |fast - reference| {d} (scale {scale})");
        assert!(
            d <= 2.5e-4 * scale,
            "{dtype}: fast vs reference {d} (scale {scale})"
        );
    }
    m.model.kernels = Kernels::Fast;
    let f16 = step_logits(&m, &prompt, KvQuant::default(), false);
    let scale = f16.iter().map(|x| x.abs()).fold(0.0, f32::max);
    for dtype in [KvDtype::Int8, KvDtype::Int4] {
        let q = step_logits(&m, &prompt, quant(dtype), false);
        // Quantisation error on the logits: small for int8, larger for int4.
        let e = max_abs(&q, &f16);
        let bound = if dtype == KvDtype::Int8 { 0.03 } else { 0.06 };
        eprintln!("{dtype}: max |logit - f16| {e} (scale {scale})");
        assert!(e <= bound * scale, "{dtype}: vs f16 {e} (scale {scale})");
        if dtype == KvDtype::Int8 {
            assert_eq!(argmax(&q), argmax(&f16));
        }
    }
}
