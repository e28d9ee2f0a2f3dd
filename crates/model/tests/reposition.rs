//! Re-positioning a cache (StreamingLLM's positions inside the cache): kept keys are
//! re-rotated to their new positions. Layer 0's keys depend only on the token, so after
//! dropping tokens and re-positioning they must equal the keys of a fresh pass over the
//! kept tokens alone, at positions 0..len.

mod common;

use model::{reposition_cache, Batch};

#[test]
fn repositioned_layer0_keys_equal_a_fresh_pass() {
    // Llama (adjacent RoPE pairs), Gemma 3 (NeoX pairs, local and global bases) and Qwen.
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-Q4_K_M.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        let loaded = model::load_gguf(&common::model_path(file), 1).expect("model loads");
        let m = &loaded.model;
        let c = &m.config;
        let ids = loaded
            .tokenizer
            .encode_prompt("The quick brown fox jumps over the lazy dog near the river bank")
            .expect("encodes");
        let n = ids.len();
        assert!(n >= 10);
        let positions: Vec<usize> = (0..n).collect();
        let mut state = m.new_state(n);
        m.forward(&mut state, &Batch::causal(&ids, &positions), None)
            .expect("forward");
        // Keep 2 sinks and the last 5 tokens, as the window policy would.
        let keep: Vec<usize> = (0..2).chain(n - 5..n).collect();
        state.cache.retain_slots(&keep);
        reposition_cache(c, &mut state.cache).expect("repositions");
        assert_eq!(state.cache.positions(), (0..keep.len()).collect::<Vec<_>>());
        assert_eq!(state.cache.next_position(), keep.len());

        let kept: Vec<u32> = keep.iter().map(|&i| ids[i]).collect();
        let fresh_pos: Vec<usize> = (0..kept.len()).collect();
        let mut fresh = m.new_state(kept.len());
        m.forward(&mut fresh, &Batch::causal(&kept, &fresh_pos), None)
            .expect("forward");
        let mut worst = 0f32;
        for h in 0..c.n_head_kv {
            let (a, b) = (state.cache.lane(0, h).keys(), fresh.cache.lane(0, h).keys());
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                // Both sides were rounded to f16 once, at different positions (each
                // within 2^-11 relative), then the old one was rotated in f32.
                worst = worst.max((x - y).abs() / (1.0 + y.abs()));
            }
        }
        println!("{file}: max relative difference of layer-0 keys {worst:.2e}");
        assert!(worst < 3e-3, "{file}: {worst}");
    }
}

#[test]
fn quantised_keys_are_not_repositioned() {
    let loaded =
        model::load_gguf(&common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 1).expect("model");
    let m = &loaded.model;
    let ids: Vec<u32> = (0..80).map(|i| 100 + i).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let mut state = m.new_state(ids.len());
    m.forward(&mut state, &Batch::causal(&ids, &positions), None)
        .expect("forward");
    state
        .cache
        .set_quant(model::kv_cache::KvQuant {
            dtype: model::kv_cache::KvDtype::Int8,
            ..Default::default()
        })
        .expect("int8");
    state.cache.quantize_settled(None);
    assert!(state.cache.quantized_entries() > 0);
    let before = state.cache.positions().to_vec();
    state.cache.retain_slots(&(8..80).collect::<Vec<_>>());
    let err = reposition_cache(&m.config, &mut state.cache).expect_err("quantised");
    assert!(err.to_string().contains("kv_dtype f16"), "{err}");
    assert_eq!(state.cache.positions(), &before[8..], "nothing changed");
}
