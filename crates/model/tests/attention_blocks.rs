//! Attention by blocks of queries that share a KV head (the fast path) against attention
//! one (token, head) at a time: bit-identical logits and attention weights on the real
//! models, through every case the attention handles: prefill chunks (causal, partial
//! tiles), Gemma 3's sliding-window layers, lanes that evicted different entries,
//! quantised entries, a tree mask, and the weights handed to an observer.

mod common;

use model::kv_cache::{KvDtype, KvQuant};
use model::{AttentionObserver, AttentionWeights, Batch, LoadedModel, LogitsFor, SequenceState};

/// Every layer's weights, as bits.
#[derive(Default)]
struct Recorder(Vec<Vec<u32>>);

impl AttentionObserver for Recorder {
    fn observe(&mut self, w: &AttentionWeights<'_>) {
        self.0.push(w.weights.iter().map(|x| x.to_bits()).collect());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A long prompt: numbered sentences, so no two chunks are alike.
fn long_prompt(m: &LoadedModel, n_tokens: usize) -> Vec<u32> {
    let mut text = String::new();
    for i in 0.. {
        text.push_str(&format!(
            "Entry {i}: the river crossed {} valleys before it reached the sea at dawn. ",
            i * 7 % 13
        ));
        let ids = m.tokenizer.encode(&text, false, false).expect("encode");
        if ids.len() >= n_tokens {
            return ids[..n_tokens].to_vec();
        }
    }
    unreachable!()
}

/// Runs one step on both states, blocked on `a`, by item on `b`, and checks the logits
/// (and, with `observe`, every layer's weights) are equal bit for bit.
fn step_both(
    m: &mut LoadedModel,
    a: &mut SequenceState,
    b: &mut SequenceState,
    batch: &Batch<'_>,
    observe: bool,
    what: &str,
) {
    let mut run = |blocks: bool, st: &mut SequenceState| -> (Vec<u32>, Vec<Vec<u32>>) {
        let mut rec = Recorder::default();
        m.model.attention_blocks = blocks;
        let obs = observe.then_some(&mut rec as &mut dyn AttentionObserver);
        let logits = bits(m.model.forward(st, batch, obs).expect("forward"));
        (logits, rec.0)
    };
    let (la, wa) = run(true, a);
    let (lb, wb) = run(false, b);
    m.model.attention_blocks = true;
    let differing = la.iter().zip(&lb).filter(|(x, y)| x != y).count();
    assert_eq!(la.len(), lb.len(), "{what}: logits length");
    assert_eq!(differing, 0, "{what}: {differing} logits differ");
    assert_eq!(wa.len(), wb.len());
    for (layer, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!(x == y, "{what}: layer {layer} weights differ");
    }
}

fn check(file: &str, prompt_tokens: usize) {
    let mut m = model::load_gguf(&common::model_path(file), 2).expect("load");
    let prompt = long_prompt(&m, prompt_tokens);
    let cap = prompt_tokens + 16;
    let (mut a, mut b) = (m.model.new_state(cap), m.model.new_state(cap));
    let all = LogitsFor::All;

    // Prefill in uneven chunks: blocks of 16 tokens with a partial one, partial key
    // tiles, and (past 1024 slots) whole GQA groups per block.
    let mut done = 0;
    for (k, len) in [300, 77, 1].into_iter().cycle().enumerate() {
        if done + 8 >= prompt.len() {
            break;
        }
        let end = (done + len).min(prompt.len() - 8);
        let positions: Vec<usize> = (done..end).collect();
        let mut batch = Batch::causal(&prompt[done..end], &positions);
        batch.logits = all;
        step_both(
            &mut m,
            &mut a,
            &mut b,
            &batch,
            k == 1,
            &format!("{file} chunk {k}"),
        );
        done = end;
    }

    // Lanes that hold different entries: one KV head of every layer drops every third.
    for st in [&mut a, &mut b] {
        let n_head_kv = st.cache.n_head_kv();
        for layer in 0..st.cache.n_layer() {
            let len = st.cache.lane(layer, n_head_kv - 1).len();
            let keep: Vec<usize> = (0..len).filter(|e| e % 3 != 1).collect();
            st.cache.retain_lane(layer, n_head_kv - 1, &keep);
        }
    }
    let positions: Vec<usize> = (done..done + 3).collect();
    let mut batch = Batch::causal(&prompt[done..done + 3], &positions);
    batch.logits = all;
    step_both(
        &mut m,
        &mut a,
        &mut b,
        &batch,
        true,
        &format!("{file} evicted lanes"),
    );
    done += 3;

    // Quantised settled entries (int8 keys per channel, values per token).
    for st in [&mut a, &mut b] {
        let q = KvQuant {
            dtype: KvDtype::Int8,
            residual: 8,
            key_group: 16,
            value_group: 32,
            mixed_keep: 0.25,
        };
        st.cache.set_quant(q).expect("int8");
        st.cache.quantize_settled(None);
        assert!(st.cache.quantized_entries() > 0);
    }

    // A tree of 4 tokens: two branches of two (0 -> 1 and 2 -> 3).
    let n_slots = a.cache.len() + 4;
    let mut mask = vec![false; 4 * n_slots];
    let parent = [None, Some(0), None, Some(2)];
    for i in 0..4 {
        let row = &mut mask[i * n_slots..(i + 1) * n_slots];
        row[..a.cache.len()].fill(true);
        let mut node = Some(i);
        while let Some(j) = node {
            row[a.cache.len() + j] = true;
            node = parent[j];
        }
    }
    let tokens = &prompt[done..done + 4];
    let positions = [done, done + 1, done, done + 1];
    let batch = Batch {
        tokens,
        positions: &positions,
        mask: Some(&mask),
        logits: all,
    };
    step_both(
        &mut m,
        &mut a,
        &mut b,
        &batch,
        true,
        &format!("{file} tree"),
    );

    // One decode step with an observer.
    let pos = [done + 2];
    let batch = Batch::causal(&prompt[done + 4..done + 5], &pos);
    step_both(
        &mut m,
        &mut a,
        &mut b,
        &batch,
        true,
        &format!("{file} decode"),
    );
}

#[test]
fn blocked_attention_equals_item_attention_on_smollm2() {
    check(common::SMOLLM2, 1200);
}

/// Gemma 3's local layers see a 512-token sliding window, so 700 tokens exercise it.
#[test]
fn blocked_attention_equals_item_attention_on_gemma3() {
    check(common::GEMMA3, 700);
}
