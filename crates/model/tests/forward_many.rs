//! `Model::forward_many` (several sequences in one pass, as continuous batching runs
//! them) against each sequence run alone with `Model::forward`.

mod common;

use model::{Batch, ForwardScratch, LogitsFor, SequenceBatch};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Three sequences with different cached lengths: one prefilling a chunk, two decoding
/// one token each, in the same pass. Rows must equal, bit for bit, the same rows
/// computed alone (the one-row and multi-row dot-product kernels sum in the same
/// order), for each model's weight formats (Q4_1/Q8_0; Q4_K/Q6_K/Q8_0; Q4_K/Q6_K).
#[test]
fn batched_sequences_match_separate_forwards() {
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-Q4_K_M.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        println!("{file}");
        check_batched(file);
    }
}

fn check_batched(file: &str) {
    let loaded = model::load_gguf(&common::model_path(file), 2).expect("model loads");
    let m = &loaded.model;
    let tok = &loaded.tokenizer;
    let prompts = [
        "The capital of France is",
        "fn main() {\n    let x = vec![1, 2, 3];",
        "Once upon a time, in a small village by the sea, there lived",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode_prompt(p).expect("encodes"))
        .collect();
    let vocab = m.config.vocab_size;

    // Alone: prefill all but the last token of sequences 1 and 2, then one step each;
    // sequence 0 is prefilled whole in one chunk.
    let mut alone = Vec::new();
    let mut states: Vec<_> = ids.iter().map(|_| m.new_state(128)).collect();
    for (k, seq) in ids.iter().enumerate() {
        let (head, tail) = if k == 0 {
            (&seq[..0], &seq[..])
        } else {
            seq.split_at(seq.len() - 1)
        };
        if !head.is_empty() {
            let pos: Vec<usize> = (0..head.len()).collect();
            m.forward(&mut states[k], &Batch::causal(head, &pos), None)
                .expect("prefill");
        }
        let pos: Vec<usize> = (head.len()..seq.len()).collect();
        let batch = Batch {
            logits: LogitsFor::All,
            ..Batch::causal(tail, &pos)
        };
        alone.push(
            m.forward(&mut states[k], &batch, None)
                .expect("step")
                .to_vec(),
        );
    }

    // Together: the same heads prefilled alone, then the three tails in one pass.
    let mut caches: Vec<_> = ids.iter().map(|_| m.new_state(128)).collect();
    let mut tails = Vec::new();
    for (k, seq) in ids.iter().enumerate() {
        let split = if k == 0 { 0 } else { seq.len() - 1 };
        if split > 0 {
            let pos: Vec<usize> = (0..split).collect();
            m.forward(&mut caches[k], &Batch::causal(&seq[..split], &pos), None)
                .expect("prefill");
        }
        tails.push((split, (split..seq.len()).collect::<Vec<usize>>()));
    }
    let mut scratch = ForwardScratch::default();
    let mut seqs: Vec<SequenceBatch> = caches
        .iter_mut()
        .zip(&tails)
        .zip(&ids)
        .map(|((state, (split, pos)), seq)| SequenceBatch {
            cache: &mut state.cache,
            batch: Batch {
                logits: LogitsFor::All,
                ..Batch::causal(&seq[*split..], pos)
            },
            observer: None,
        })
        .collect();
    let together = m
        .forward_many(&mut scratch, &mut seqs)
        .expect("batched pass");
    let mut offset = 0;
    for (k, rows) in alone.iter().enumerate() {
        let got = &together[offset..offset + rows.len()];
        offset += rows.len();
        let diff = max_abs_diff(got, rows);
        println!(
            "sequence {k}: {} rows, max |Δlogit| {diff}",
            rows.len() / vocab
        );
        assert!(diff == 0.0, "{file}, sequence {k}: max |Δlogit| {diff}");
    }
    assert_eq!(offset, together.len());

    // The caches hold the same keys as after the separate runs.
    for (k, (a, b)) in states.iter().zip(&caches).enumerate() {
        assert_eq!(a.cache.len(), b.cache.len(), "sequence {k}");
        assert_eq!(a.cache.positions(), b.cache.positions(), "sequence {k}");
    }
}

#[test]
fn forward_layers_with_every_layer_equals_forward() {
    let loaded = model::load_gguf(&common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 2)
        .expect("model loads");
    let m = &loaded.model;
    let ids = loaded
        .tokenizer
        .encode_prompt("Hello there, how")
        .expect("encodes");
    let pos: Vec<usize> = (0..ids.len()).collect();
    let mut a = m.new_state(32);
    let mut b = m.new_state(32);
    let full = m
        .forward(&mut a, &Batch::causal(&ids, &pos), None)
        .expect("forward")
        .to_vec();
    let all = vec![true; m.config.n_layer];
    let same = m
        .forward_layers(&mut b, &Batch::causal(&ids, &pos), &all)
        .expect("forward_layers");
    assert_eq!(full, same);
    let mut skip = all.clone();
    skip[10] = false;
    skip[20] = false;
    let mut c = m.new_state(32);
    let skipped = m
        .forward_layers(&mut c, &Batch::causal(&ids, &pos), &skip)
        .expect("forward_layers");
    assert_ne!(full, skipped, "skipping layers changes the logits");
    assert!(m
        .forward_layers(&mut c, &Batch::causal(&ids, &pos), &skip[1..])
        .is_err());
}
