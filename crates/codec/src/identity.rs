//! Which model an archive was made with: hashes of the weights and of the vocabulary.
//!
//! The weights hash covers the bytes of every tensor the forward pass reads, in their
//! stored block format (the GGUF tensor data, or the safetensors data of an HF
//! checkpoint, as the loader maps it), each preceded by its shape, in a fixed order:
//! embeddings, each block's tensors, the final norm, the LM head. The vocabulary hash
//! covers every token's bytes, because the decoder writes them: two files with the same
//! weights but a different vocabulary would decode to different text.

use model::weights::Matrix;
use model::LoadedModel;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::container::ModelId;

fn matrix(h: &mut Xxh3, m: &Matrix) {
    h.update(&(m.rows as u64).to_le_bytes());
    h.update(&(m.cols as u64).to_le_bytes());
    h.update(m.bytes());
}

fn vector(h: &mut Xxh3, v: Option<&Vec<f32>>) {
    match v {
        None => h.update(&u64::MAX.to_le_bytes()),
        Some(v) => {
            h.update(&(v.len() as u64).to_le_bytes());
            for x in v {
                h.update(&x.to_bits().to_le_bytes());
            }
        }
    }
}

/// xxh3-128 of the weights (see the module documentation).
pub fn weights_hash(m: &LoadedModel) -> [u8; 16] {
    let w = &m.model.weights;
    let mut h = Xxh3::new();
    matrix(&mut h, &w.token_embd);
    for l in &w.layers {
        vector(&mut h, Some(&l.attn_norm));
        for mat in [&l.wq, &l.wk, &l.wv, &l.wo] {
            matrix(&mut h, mat);
        }
        for v in [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm, &l.post_attn_norm] {
            vector(&mut h, v.as_ref());
        }
        vector(&mut h, Some(&l.ffn_norm));
        for mat in [&l.w_gate, &l.w_up, &l.w_down] {
            matrix(&mut h, mat);
        }
        vector(&mut h, l.post_ffn_norm.as_ref());
    }
    vector(&mut h, Some(&w.output_norm));
    matrix(&mut h, &w.output);
    h.digest128().to_le_bytes()
}

/// xxh3-64 of every token's bytes (length-prefixed), in id order.
pub fn vocab_hash(pieces: &[Vec<u8>]) -> u64 {
    let mut buf = Vec::with_capacity(pieces.len() * 8);
    for p in pieces {
        buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
        buf.extend_from_slice(p);
    }
    xxh3_64(&buf)
}

/// The identity of a loaded model; `name` is only for messages.
pub fn model_id(m: &LoadedModel, pieces: &[Vec<u8>], name: &str) -> ModelId {
    ModelId {
        weights: weights_hash(m),
        vocab: vocab_hash(pieces),
        name: name.to_string(),
    }
}
