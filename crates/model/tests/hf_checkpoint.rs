//! Hugging Face checkpoints: tiny models written here (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, safetensors) must give
//!
//! * the same logits as the same weights written as GGUF the way llama.cpp's
//!   `convert_hf_to_gguf.py` writes them (Llama q/k rows permuted for adjacent-pair RoPE,
//!   Gemma norms stored as `1 + w`), loaded through `load_gguf`: within 1e-4;
//! * the logits of a plain forward pass written here with HF's conventions
//!   (`rotate_half` RoPE, `(1 + w)` Gemma norms), rounding q/k/v to f16 where the engine's
//!   f16 KV cache does: within 1e-3 of the largest logit.
//!
//! Bad checkpoints (malformed JSON, missing or misshapen tensors, truncated files, unknown
//! families) are one-line errors, never panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gguf::{GgufWriter, Value};
use model::{load_gguf, load_hf_dir, Batch, Kernels, LoadedModel, LogitsFor, ModelError};
use quant::GgmlType;

// ---------------------------------------------------------------------------------------
// Scratch directories and random numbers
// ---------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tokenwise-hf-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn write(&self, file: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(file);
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: uniform floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Tiny models
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Llama,
    Qwen2,
    Gemma3,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }
    fn round(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
    fn ggml(self) -> GgmlType {
        match self {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    family: Family,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    n_ff: usize,
    vocab: usize,
    tied: bool,
    eps: f32,
    rope_theta: f32,
    /// Gemma 3 only.
    sliding_window: usize,
    softcap: Option<f32>,
}

const VOCAB: usize = 300;

fn llama_spec() -> Spec {
    Spec {
        family: Family::Llama,
        n_layer: 2,
        n_embd: 64,
        n_head: 4,
        n_kv: 2,
        head_dim: 16,
        n_ff: 96,
        vocab: VOCAB,
        tied: false,
        eps: 1e-5,
        rope_theta: 10_000.0,
        sliding_window: 0,
        softcap: None,
    }
}

fn qwen2_spec() -> Spec {
    Spec {
        family: Family::Qwen2,
        tied: true,
        eps: 1e-6,
        rope_theta: 1_000_000.0,
        ..llama_spec()
    }
}

/// Six layers so that the last is global (Gemma 3 alternates five local, one global);
/// a window of 4 so that the 9-token prompt reaches past it.
fn gemma3_spec() -> Spec {
    Spec {
        family: Family::Gemma3,
        n_layer: 6,
        n_embd: 48,
        n_head: 2,
        n_kv: 1,
        head_dim: 32,
        n_ff: 64,
        tied: true,
        eps: 1e-6,
        rope_theta: 1_000_000.0,
        sliding_window: 4,
        softcap: Some(30.0),
        ..llama_spec()
    }
}

/// One tensor in HF's naming and layout (`[out, in]` for linear layers); the values are
/// already rounded to the checkpoint's dtype.
#[derive(Clone)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Random weights in HF layout, seeded, scaled so that activations stay O(1).
fn hf_tensors(s: &Spec, dtype: Dtype, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng(seed | 1);
    let (e, q, kv, ff) = (s.n_embd, s.n_head * s.head_dim, s.n_kv * s.head_dim, s.n_ff);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        let values = values.iter().map(|&v| dtype.round(v)).collect();
        out.push(Tensor {
            name,
            shape,
            values,
        });
    };
    let gemma = s.family == Family::Gemma3;
    // Gemma stores w with the norm computing (1 + w); the others store w itself.
    let norm = |rng: &mut Rng, n: usize| -> Vec<f32> {
        let offset = if gemma { 0.0 } else { 1.0 };
        rng.vec(n, 0.2).iter().map(|v| v + offset).collect()
    };
    let lin =
        |rng: &mut Rng, rows: usize, cols: usize| rng.vec(rows * cols, (3.0 / cols as f32).sqrt());
    push(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, e],
        rng.vec(s.vocab * e, 1.0),
    );
    for il in 0..s.n_layer {
        let n = |x: &str| format!("model.layers.{il}.{x}");
        push(n("input_layernorm.weight"), vec![e], norm(&mut rng, e));
        push(
            n("self_attn.q_proj.weight"),
            vec![q, e],
            lin(&mut rng, q, e),
        );
        push(
            n("self_attn.k_proj.weight"),
            vec![kv, e],
            lin(&mut rng, kv, e),
        );
        push(
            n("self_attn.v_proj.weight"),
            vec![kv, e],
            lin(&mut rng, kv, e),
        );
        push(
            n("self_attn.o_proj.weight"),
            vec![e, q],
            lin(&mut rng, e, q),
        );
        if s.family == Family::Qwen2 {
            push(n("self_attn.q_proj.bias"), vec![q], rng.vec(q, 0.5));
            push(n("self_attn.k_proj.bias"), vec![kv], rng.vec(kv, 0.5));
            push(n("self_attn.v_proj.bias"), vec![kv], rng.vec(kv, 0.5));
        }
        if gemma {
            push(
                n("self_attn.q_norm.weight"),
                vec![s.head_dim],
                norm(&mut rng, s.head_dim),
            );
            push(
                n("self_attn.k_norm.weight"),
                vec![s.head_dim],
                norm(&mut rng, s.head_dim),
            );
            push(
                n("post_attention_layernorm.weight"),
                vec![e],
                norm(&mut rng, e),
            );
            push(
                n("pre_feedforward_layernorm.weight"),
                vec![e],
                norm(&mut rng, e),
            );
            push(
                n("post_feedforward_layernorm.weight"),
                vec![e],
                norm(&mut rng, e),
            );
        } else {
            push(
                n("post_attention_layernorm.weight"),
                vec![e],
                norm(&mut rng, e),
            );
        }
        push(n("mlp.gate_proj.weight"), vec![ff, e], lin(&mut rng, ff, e));
        push(n("mlp.up_proj.weight"), vec![ff, e], lin(&mut rng, ff, e));
        push(n("mlp.down_proj.weight"), vec![e, ff], lin(&mut rng, e, ff));
    }
    push("model.norm.weight".into(), vec![e], norm(&mut rng, e));
    if !s.tied {
        push(
            "lm_head.weight".into(),
            vec![s.vocab, e],
            lin(&mut rng, s.vocab, e),
        );
    }
    out
}

fn config_json(s: &Spec) -> serde_json::Value {
    let mut c = serde_json::json!({
        "hidden_size": s.n_embd,
        "intermediate_size": s.n_ff,
        "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head,
        "num_key_value_heads": s.n_kv,
        "head_dim": s.head_dim,
        "rms_norm_eps": s.eps,
        "rope_theta": s.rope_theta,
        "max_position_embeddings": 128,
        "vocab_size": s.vocab,
        "tie_word_embeddings": s.tied,
        "torch_dtype": "float32",
        "rope_scaling": null,
        "bos_token_id": 0,
        "eos_token_id": 1,
    });
    let extra = match s.family {
        Family::Llama => serde_json::json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
        }),
        Family::Qwen2 => serde_json::json!({
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_act": "silu",
            "use_sliding_window": false,
            "sliding_window": 32,
        }),
        Family::Gemma3 => serde_json::json!({
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": s.sliding_window,
            "rope_local_base_freq": 10_000.0,
            "query_pre_attn_scalar": s.head_dim,
            "final_logit_softcapping": s.softcap,
            "attn_logit_softcapping": null,
            "layer_types": (0..s.n_layer).map(gemma3_layer_type).collect::<Vec<_>>(),
        }),
    };
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Gemma 3: five sliding-window layers, then a global one.
fn gemma3_layer_type(il: usize) -> &'static str {
    if (il + 1).is_multiple_of(6) {
        "full_attention"
    } else {
        "sliding_attention"
    }
}

/// The words of the tiny vocabulary: id 0 `<s>`, 1 `</s>`, 2 `<unk>`, then `w3`...
fn vocab_words(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i {
            0 => "<s>".to_string(),
            1 => "</s>".to_string(),
            2 => "<unk>".to_string(),
            i => format!("w{i}"),
        })
        .collect()
}

/// A WordLevel `tokenizer.json` with whitespace pre-tokenisation.
fn tokenizer_json(n: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = vocab_words(n)
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, serde_json::json!(i)))
        .collect();
    let added = |id: usize, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        })
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<s>"), added(1, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        // BOS comes from the post-processor, as in the tokenizer.json files transformers writes.
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

fn tokenizer_config_json() -> String {
    serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": true,
        "chat_template": CHAT_TEMPLATE,
    })
    .to_string()
}

/// A safetensors file (header padded to 8 bytes, as the Python writer does).
fn safetensors_bytes(tensors: &[Tensor], dtype: Dtype) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let bytes = dtype.encode(&t.values);
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": t.shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(&bytes);
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Writes a complete checkpoint directory.
fn write_checkpoint(dir: &Scratch, s: &Spec, tensors: &[Tensor], dtype: Dtype) {
    dir.write("config.json", config_json(s).to_string());
    dir.write("tokenizer.json", tokenizer_json(s.vocab));
    dir.write("tokenizer_config.json", tokenizer_config_json());
    dir.write("model.safetensors", safetensors_bytes(tensors, dtype));
}

// ---------------------------------------------------------------------------------------
// The same weights as GGUF, converted as llama.cpp's convert_hf_to_gguf.py does
// ---------------------------------------------------------------------------------------

/// `LlamaModel.permute`: within each head, rows (j, i) of HF's [2, d/2] halves become
/// rows (i, j), so that RoPE pairs adjacent rows.
fn llama_permute(values: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / n_head;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let dst = h * hd + 2 * i + j;
                let src = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(family: Family, hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    if hf == "lm_head.weight" {
        return "output.weight".into();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (il, rest) = rest.split_once('.').unwrap();
    let g = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" if family == Family::Gemma3 => {
            "post_attention_norm.weight"
        }
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{il}.{g}")
}

fn gguf_bytes(s: &Spec, tensors: &[Tensor], dtype: Dtype) -> Vec<u8> {
    let arch = match s.family {
        Family::Llama => "llama",
        Family::Qwen2 => "qwen2",
        Family::Gemma3 => "gemma3",
    };
    let k = |x: &str| format!("{arch}.{x}");
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String(arch.into()))
        .metadata(&k("block_count"), Value::U32(s.n_layer as u32))
        .metadata(&k("context_length"), Value::U32(128))
        .metadata(&k("embedding_length"), Value::U32(s.n_embd as u32))
        .metadata(&k("feed_forward_length"), Value::U32(s.n_ff as u32))
        .metadata(&k("attention.head_count"), Value::U32(s.n_head as u32))
        .metadata(&k("attention.head_count_kv"), Value::U32(s.n_kv as u32))
        .metadata(&k("attention.key_length"), Value::U32(s.head_dim as u32))
        .metadata(&k("attention.value_length"), Value::U32(s.head_dim as u32))
        .metadata(&k("attention.layer_norm_rms_epsilon"), Value::F32(s.eps))
        .metadata(&k("rope.freq_base"), Value::F32(s.rope_theta))
        .metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata("tokenizer.ggml.pre", Value::String("default".into()))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                vocab_words(s.vocab)
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            ),
        )
        .metadata("tokenizer.ggml.merges", Value::Array(vec![]))
        .metadata("tokenizer.ggml.bos_token_id", Value::U32(0))
        .metadata("tokenizer.ggml.eos_token_id", Value::U32(1));
    if s.family == Family::Gemma3 {
        w.metadata(
            &k("attention.sliding_window"),
            Value::U32(s.sliding_window as u32),
        );
        if let Some(cap) = s.softcap {
            w.metadata(&k("final_logit_softcapping"), Value::F32(cap));
        }
    }
    for t in tensors {
        let name = gguf_name(s.family, &t.name);
        if t.shape.len() == 1 {
            // Norms and biases are written as F32; Gemma's norms as 1 + w.
            let shift = if s.family == Family::Gemma3 && t.name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            };
            let v: Vec<f32> = t.values.iter().map(|v| v + shift).collect();
            w.tensor_f32(&name, &[t.shape[0] as u64], &v);
        } else {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let mut v = t.values.clone();
            if s.family == Family::Llama && t.name.ends_with("q_proj.weight") {
                v = llama_permute(&v, s.n_head, cols);
            }
            if s.family == Family::Llama && t.name.ends_with("k_proj.weight") {
                v = llama_permute(&v, s.n_kv, cols);
            }
            w.tensor(
                &name,
                &[cols as u64, rows as u64],
                dtype.ggml(),
                dtype.encode(&v),
            );
        }
    }
    w.to_bytes()
}

// ---------------------------------------------------------------------------------------
// A plain forward pass with Hugging Face's conventions
// ---------------------------------------------------------------------------------------

fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

// x: [d], w: [d] -> [d]
fn rms_norm(x: &[f32], w: &[f32], eps: f32, gemma: bool) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, g)| v * r * if gemma { 1.0 + g } else { *g })
        .collect()
}

// w: [rows, cols], x: [cols] -> [rows]
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// HF's `apply_rotary_pos_emb`: x·cos + rotate_half(x)·sin, rotate_half(x) = (-x2, x1).
// x: [n_heads * hd] in place
fn rope_rotate_half(x: &mut [f32], hd: usize, pos: usize, base: f32) {
    let half = hd / 2;
    for head in x.chunks_exact_mut(hd) {
        for i in 0..half {
            let inv_freq = 1.0 / base.powf((2 * i) as f32 / hd as f32);
            let (sin, cos) = (pos as f32 * inv_freq).sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Logits `[tokens.len(), vocab]` of a causal pass over `tokens` at positions 0, 1, ...
fn reference_forward(s: &Spec, tensors: &[Tensor], tokens: &[u32]) -> Vec<f32> {
    let t: HashMap<&str, &Vec<f32>> = tensors
        .iter()
        .map(|t| (t.name.as_str(), &t.values))
        .collect();
    let get = |n: &str| -> &[f32] { t.get(n).unwrap_or_else(|| panic!("no tensor {n}")) };
    let gemma = s.family == Family::Gemma3;
    let (e, hd) = (s.n_embd, s.head_dim);
    let n = tokens.len();
    let group = s.n_head / s.n_kv;
    let mut x: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&tok| {
            let row = &get("model.embed_tokens.weight")[tok as usize * e..(tok as usize + 1) * e];
            let scale = if gemma { (e as f32).sqrt() } else { 1.0 };
            row.iter().map(|v| v * scale).collect()
        })
        .collect();
    for il in 0..s.n_layer {
        let w = |x: &str| get(&format!("model.layers.{il}.{x}"));
        let global = !gemma || gemma3_layer_type(il) == "full_attention";
        let base = if global { s.rope_theta } else { 10_000.0 };
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, xi) in x.iter().enumerate() {
            let h = rms_norm(xi, w("input_layernorm.weight"), s.eps, gemma);
            let mut q = matvec(w("self_attn.q_proj.weight"), &h);
            let mut k = matvec(w("self_attn.k_proj.weight"), &h);
            let mut v = matvec(w("self_attn.v_proj.weight"), &h);
            if s.family == Family::Qwen2 {
                let add =
                    |a: &mut Vec<f32>, b: &[f32]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                add(&mut q, w("self_attn.q_proj.bias"));
                add(&mut k, w("self_attn.k_proj.bias"));
                add(&mut v, w("self_attn.v_proj.bias"));
            }
            if gemma {
                let norm_heads = |a: &[f32], g: &[f32]| -> Vec<f32> {
                    a.chunks_exact(hd)
                        .flat_map(|hh| rms_norm(hh, g, s.eps, true))
                        .collect()
                };
                q = norm_heads(&q, w("self_attn.q_norm.weight"));
                k = norm_heads(&k, w("self_attn.k_norm.weight"));
            }
            rope_rotate_half(&mut q, hd, pos, base);
            rope_rotate_half(&mut k, hd, pos, base);
            // The engine keeps K/V in an f16 cache and rounds q to f16 before q·k.
            qs.push(q.iter().map(|&v| f16_round(v)).collect::<Vec<f32>>());
            ks.push(k.iter().map(|&v| f16_round(v)).collect::<Vec<f32>>());
            vs.push(v.iter().map(|&v| f16_round(v)).collect::<Vec<f32>>());
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for i in 0..n {
            let mut attn = vec![0f32; s.n_head * hd];
            for h in 0..s.n_head {
                let g = h / group;
                let qh = &qs[i][h * hd..(h + 1) * hd];
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| global || i - j < s.sliding_window)
                    .collect();
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&j| {
                        qh.iter()
                            .zip(&ks[j][g * hd..(g + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f32 = exps.iter().sum();
                for (&j, p) in visible.iter().zip(&exps) {
                    for d in 0..hd {
                        attn[h * hd + d] += p / sum * vs[j][g * hd + d];
                    }
                }
            }
            let mut o = matvec(w("self_attn.o_proj.weight"), &attn);
            if gemma {
                o = rms_norm(&o, w("post_attention_layernorm.weight"), s.eps, true);
            }
            x[i].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for xi in x.iter_mut() {
            let pre = if gemma {
                "pre_feedforward_layernorm.weight"
            } else {
                "post_attention_layernorm.weight"
            };
            let h = rms_norm(xi, w(pre), s.eps, gemma);
            let gate = matvec(w("mlp.gate_proj.weight"), &h);
            let up = matvec(w("mlp.up_proj.weight"), &h);
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| {
                    if gemma {
                        gelu_tanh(g) * u
                    } else {
                        g / (1.0 + (-g).exp()) * u
                    }
                })
                .collect();
            let mut d = matvec(w("mlp.down_proj.weight"), &act);
            if gemma {
                d = rms_norm(&d, w("post_feedforward_layernorm.weight"), s.eps, true);
            }
            xi.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }
    let head = if s.tied {
        get("model.embed_tokens.weight")
    } else {
        get("lm_head.weight")
    };
    let mut logits = Vec::with_capacity(n * s.vocab);
    for xi in &x {
        let h = rms_norm(xi, get("model.norm.weight"), s.eps, gemma);
        let mut l = matvec(head, &h);
        if let Some(cap) = s.softcap {
            l.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits.extend(l);
    }
    logits
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const PROMPT: [u32; 9] = [0, 17, 250, 3, 99, 42, 299, 5, 128];

fn logits_all(m: &mut LoadedModel, kernels: Kernels, tokens: &[u32]) -> Vec<f32> {
    m.model.kernels = kernels;
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let mut state = m.model.new_state(64);
    let batch = Batch {
        tokens,
        positions: &positions,
        mask: None,
        logits: LogitsFor::All,
    };
    m.model
        .forward(&mut state, &batch, None)
        .expect("forward")
        .to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|v| v.abs()).fold(0.0, f32::max)
}

/// Loads the checkpoint as HF and as the converted GGUF; compares both with each other
/// (both kernel sets) and with the reference forward.
fn check_family(s: Spec, dtype: Dtype, seed: u64) {
    let tensors = hf_tensors(&s, dtype, seed);
    let dir = Scratch::new(&format!("{:?}-{}", s.family, dtype.name()));
    write_checkpoint(&dir, &s, &tensors, dtype);
    let gguf_path = dir.write("converted.gguf", gguf_bytes(&s, &tensors, dtype));

    let mut hf = load_hf_dir(dir.path(), 2).expect("load HF checkpoint");
    let mut gg = load_gguf(&gguf_path, 2).expect("load converted GGUF");
    assert_eq!(hf.model.config.vocab_size, s.vocab);
    assert_eq!(hf.model.config.n_layer, s.n_layer);

    let reference = reference_forward(&s, &tensors, &PROMPT);
    let scale = max_abs(&reference);
    assert!(scale > 0.5, "degenerate logits: max |logit| = {scale}");
    for kernels in [Kernels::Reference, Kernels::Fast] {
        let a = logits_all(&mut hf, kernels, &PROMPT);
        let b = logits_all(&mut gg, kernels, &PROMPT);
        let d = max_abs_diff(&a, &b);
        assert!(
            d <= 1e-4,
            "{:?} {} {kernels:?}: HF vs GGUF logits differ by {d}",
            s.family,
            dtype.name()
        );
        // The fast kernels round activations to bf16/f16 for such weights, as ggml does.
        let tol = if kernels == Kernels::Fast && dtype != Dtype::F32 {
            2e-2
        } else {
            1e-3
        };
        let d = max_abs_diff(&a, &reference);
        assert!(
            d <= tol * scale,
            "{:?} {} {kernels:?}: HF logits differ from the reference by {d} (max |logit| {scale})",
            s.family,
            dtype.name()
        );
    }
}

fn load_err(dir: &Path) -> ModelError {
    match load_hf_dir(dir, 1) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            e
        }
    }
}

fn assert_err_contains(dir: &Path, needles: &[&str]) -> ModelError {
    let e = load_err(dir);
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} lacks {n:?}");
    }
    e
}

/// A valid tiny Llama checkpoint to break in the error tests.
fn good_llama(name: &str) -> (Scratch, Spec, Vec<Tensor>) {
    let s = Spec {
        n_layer: 2,
        n_embd: 32,
        n_head: 2,
        n_kv: 1,
        head_dim: 16,
        n_ff: 48,
        ..llama_spec()
    };
    let tensors = hf_tensors(&s, Dtype::F32, 7);
    let dir = Scratch::new(name);
    write_checkpoint(&dir, &s, &tensors, Dtype::F32);
    (dir, s, tensors)
}

// ---------------------------------------------------------------------------------------
// Equivalence tests
// ---------------------------------------------------------------------------------------

#[test]
fn llama_f32_matches_gguf_and_reference() {
    check_family(llama_spec(), Dtype::F32, 1);
}

#[test]
fn llama_bf16_matches_gguf_and_reference() {
    check_family(llama_spec(), Dtype::BF16, 2);
}

#[test]
fn llama_f16_matches_gguf_and_reference() {
    check_family(llama_spec(), Dtype::F16, 3);
}

#[test]
fn qwen2_with_biases_matches_gguf_and_reference() {
    check_family(qwen2_spec(), Dtype::F32, 4);
    check_family(qwen2_spec(), Dtype::BF16, 5);
}

#[test]
fn gemma3_matches_gguf_and_reference() {
    check_family(gemma3_spec(), Dtype::F32, 6);
    check_family(gemma3_spec(), Dtype::BF16, 7);
}

#[test]
fn tokenizer_and_chat_template_come_from_the_checkpoint() {
    let (dir, _, _) = good_llama("tokenizer");
    let m = load_hf_dir(dir.path(), 1).expect("load");
    assert_eq!(m.tokenizer.bos_id(), Some(0));
    assert_eq!(m.tokenizer.eos_id(), Some(1));
    assert_eq!(
        m.tokenizer.encode("w5 w77 w299", true, false).unwrap(),
        vec![0, 5, 77, 299]
    );
    let template = m
        .chat_template
        .expect("chat template from tokenizer_config.json");
    let text = template
        .render(&[model::chat::ChatMessage::new("user", "w5")], true)
        .unwrap();
    assert_eq!(text, "<s>user: w5</s>assistant:");

    // chat_template.jinja takes precedence, as in transformers.
    dir.write("chat_template.jinja", "{{ messages[0].content }}!");
    let m = load_hf_dir(dir.path(), 1).expect("load");
    let text = m
        .chat_template
        .unwrap()
        .render(&[model::chat::ChatMessage::new("user", "hi")], false)
        .unwrap();
    assert_eq!(text, "hi!");
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let (dir, s, tensors) = good_llama("sharded");
    let mut single = load_hf_dir(dir.path(), 1).expect("load single file");
    let expected = logits_all(&mut single, Kernels::Reference, &PROMPT[..5]);
    drop(single);

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    dir.write(
        "model-00001-of-00002.safetensors",
        safetensors_bytes(a, Dtype::F32),
    );
    dir.write(
        "model-00002-of-00002.safetensors",
        safetensors_bytes(b, Dtype::F32),
    );
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        for t in part {
            map.insert(t.name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    dir.write("model.safetensors.index.json", index.to_string());
    let mut sharded = load_hf_dir(dir.path(), 1).expect("load shards");
    assert_eq!(sharded.model.config.n_layer, s.n_layer);
    let got = logits_all(&mut sharded, Kernels::Reference, &PROMPT[..5]);
    assert_eq!(got, expected);
    drop(sharded);

    // An index that promises a tensor its shard lacks: a partial download.
    let mut map2 = map.clone();
    map2.insert(
        "model.layers.9.mlp.up_proj.weight".into(),
        serde_json::json!("model-00001-of-00002.safetensors"),
    );
    dir.write(
        "model.safetensors.index.json",
        serde_json::json!({"weight_map": map2}).to_string(),
    );
    assert_err_contains(dir.path(), &["model.layers.9.mlp.up_proj.weight", "shard"]);

    // A shard path that leaves the directory is refused.
    let mut map3 = map.clone();
    map3.insert(
        "model.norm.weight".into(),
        serde_json::json!("../elsewhere.safetensors"),
    );
    dir.write(
        "model.safetensors.index.json",
        serde_json::json!({"weight_map": map3}).to_string(),
    );
    assert_err_contains(dir.path(), &["not a file name"]);

    // A missing shard.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    dir.write("model.safetensors.index.json", index.to_string());
    assert_err_contains(dir.path(), &["model-00002-of-00002.safetensors"]);
}

// ---------------------------------------------------------------------------------------
// Error tests
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_model_type_is_unsupported() {
    let (dir, s, _) = good_llama("unknown-type");
    let mut c = config_json(&s);
    c["model_type"] = serde_json::json!("mamba");
    dir.write("config.json", c.to_string());
    let e = assert_err_contains(dir.path(), &["\"mamba\"", "llama", "qwen2", "gemma3"]);
    assert!(matches!(e, ModelError::Unsupported(_)), "{e:?}");
}

#[test]
fn unsupported_config_features_are_refused() {
    let (dir, s, _) = good_llama("unsupported-features");
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "llama3",
        ),
        ("attention_bias", serde_json::json!(true), "attention_bias"),
        ("hidden_act", serde_json::json!("relu"), "relu"),
        ("mlp_bias", serde_json::json!(true), "mlp_bias"),
    ];
    for (key, value, needle) in cases {
        let mut c = config_json(&s);
        c[key] = value;
        dir.write("config.json", c.to_string());
        let e = assert_err_contains(dir.path(), &[needle]);
        assert!(matches!(e, ModelError::Unsupported(_)), "{key}: {e:?}");
    }
}

#[test]
fn malformed_config_is_an_error() {
    let (dir, s, _) = good_llama("bad-config");
    let good = config_json(&s).to_string();
    dir.write("config.json", &good[..good.len() / 2]);
    assert_err_contains(dir.path(), &["config.json"]);

    dir.write("config.json", "[1, 2, 3]");
    assert_err_contains(dir.path(), &["config.json", "object"]);

    let mut c = config_json(&s);
    c.as_object_mut().unwrap().remove("hidden_size");
    dir.write("config.json", c.to_string());
    assert_err_contains(dir.path(), &["hidden_size", "missing"]);

    let mut c = config_json(&s);
    c["num_attention_heads"] = serde_json::json!("four");
    dir.write("config.json", c.to_string());
    assert_err_contains(dir.path(), &["num_attention_heads"]);

    let mut c = config_json(&s);
    c["num_key_value_heads"] = serde_json::json!(3);
    dir.write("config.json", c.to_string());
    assert_err_contains(dir.path(), &["num_key_value_heads"]);

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_err_contains(dir.path(), &["config.json"]);
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let (dir, s, tensors) = good_llama("bad-tensors");
    let without: Vec<Tensor> = tensors
        .iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .cloned()
        .collect();
    dir.write("model.safetensors", safetensors_bytes(&without, Dtype::F32));
    assert_err_contains(
        dir.path(),
        &["missing tensor", "model.layers.1.mlp.up_proj.weight"],
    );

    // k_proj stored transposed.
    let mut transposed = tensors.clone();
    let k = transposed
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    k.shape.reverse();
    dir.write(
        "model.safetensors",
        safetensors_bytes(&transposed, Dtype::F32),
    );
    assert_err_contains(
        dir.path(),
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "shape [32, 16]",
            "[16, 32]",
        ],
    );

    // A vocabulary larger than the embedding.
    let mut c = config_json(&s);
    c["vocab_size"] = serde_json::json!(s.vocab + 1);
    dir.write("config.json", c.to_string());
    dir.write("model.safetensors", safetensors_bytes(&tensors, Dtype::F32));
    assert_err_contains(dir.path(), &["model.embed_tokens.weight", "shape"]);

    // Untied embeddings without an LM head.
    dir.write("config.json", config_json(&s).to_string());
    let headless: Vec<Tensor> = tensors
        .iter()
        .filter(|t| t.name != "lm_head.weight")
        .cloned()
        .collect();
    dir.write(
        "model.safetensors",
        safetensors_bytes(&headless, Dtype::F32),
    );
    assert_err_contains(dir.path(), &["lm_head.weight", "tie_word_embeddings"]);
    // ... which is fine once the config says they are tied.
    let mut c = config_json(&s);
    c["tie_word_embeddings"] = serde_json::json!(true);
    dir.write("config.json", c.to_string());
    load_hf_dir(dir.path(), 1).expect("tied embeddings need no lm_head");
}

#[test]
fn broken_safetensors_files_are_errors() {
    let (dir, _, tensors) = good_llama("bad-safetensors");
    let good = safetensors_bytes(&tensors, Dtype::F32);

    // Truncated: data missing at the end, then inside the header.
    for cut in [good.len() - 100, 40, 5, 0] {
        dir.write("model.safetensors", &good[..cut]);
        assert_err_contains(dir.path(), &["model.safetensors"]);
    }
    // Trailing garbage.
    let mut long = good.clone();
    long.extend_from_slice(&[0; 16]);
    dir.write("model.safetensors", &long);
    assert_err_contains(dir.path(), &["model.safetensors"]);
    // A header length far beyond the file.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    dir.write("model.safetensors", &huge);
    assert_err_contains(dir.path(), &["model.safetensors"]);
    // A header that is not JSON.
    let mut garbled = good.clone();
    garbled[8..20].copy_from_slice(b"not json!!!!");
    dir.write("model.safetensors", &garbled);
    assert_err_contains(dir.path(), &["model.safetensors"]);
    // Random bytes.
    let mut rng = Rng(99);
    let noise: Vec<u8> = (0..4096)
        .map(|_| (rng.next_f32() * 127.0) as i8 as u8)
        .collect();
    dir.write("model.safetensors", &noise);
    assert_err_contains(dir.path(), &["model.safetensors"]);

    // An integer tensor (a quantised checkpoint, say).
    let mut bytes = Vec::new();
    let header = serde_json::json!({
        "model.embed_tokens.weight": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 16]}
    })
    .to_string();
    let mut h = header.into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&[0; 16]);
    dir.write("model.safetensors", &bytes);
    let e = assert_err_contains(dir.path(), &["I32", "model.embed_tokens.weight"]);
    assert!(matches!(e, ModelError::Unsupported(_)), "{e:?}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_err_contains(dir.path(), &["model.safetensors"]);
}

#[test]
fn tokenizer_files_are_checked() {
    let (dir, _, _) = good_llama("bad-tokenizer");
    dir.write("tokenizer.json", "{ not json");
    assert_err_contains(dir.path(), &["tokenizer.json"]);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_err_contains(dir.path(), &["tokenizer.json"]);
}

#[test]
fn malformed_chat_template_source_is_an_error() {
    let (dir, _, _) = good_llama("bad-template");
    dir.write("tokenizer_config.json", r#"{"chat_template": 42}"#);
    assert_err_contains(dir.path(), &["chat_template"]);
    dir.write("tokenizer_config.json", r#"{"chat_template": "{% for %}"}"#);
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Template(_)), "{e:?}");
    // Named templates: `default` is the one used.
    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    );
    let m = load_hf_dir(dir.path(), 1).expect("load");
    assert_eq!(m.chat_template.unwrap().render(&[], false).unwrap(), "D");
}

#[test]
fn gemma3_layer_pattern_is_read_and_checked() {
    let s = gemma3_spec();
    let mut c = config_json(&s);
    let cfg = model::ModelConfig::from_hf_config(&c.to_string()).unwrap();
    assert_eq!(cfg.swa_period, 6);
    assert!(cfg.is_local_layer(0) && !cfg.is_local_layer(5));
    assert_eq!(cfg.rope_base, 1_000_000.0);
    assert_eq!(cfg.rope_base_local, 10_000.0);
    assert_eq!(cfg.sliding_window, Some(4));
    assert_eq!(cfg.final_logit_softcap, Some(30.0));

    // Older configs give only the period.
    c.as_object_mut().unwrap().remove("layer_types");
    c["sliding_window_pattern"] = serde_json::json!(3);
    let cfg = model::ModelConfig::from_hf_config(&c.to_string()).unwrap();
    assert_eq!(cfg.swa_period, 3);

    // An irregular pattern cannot be expressed.
    c["layer_types"] = serde_json::json!([
        "full_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "sliding_attention"
    ]);
    let e = model::ModelConfig::from_hf_config(&c.to_string()).unwrap_err();
    assert!(matches!(e, ModelError::Unsupported(_)), "{e:?}");

    // transformers 5 keeps RoPE bases under rope_parameters.
    let mut c = config_json(&s);
    let o = c.as_object_mut().unwrap();
    o.remove("rope_theta");
    o.remove("rope_local_base_freq");
    o.remove("rope_scaling");
    c["rope_parameters"] = serde_json::json!({
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}
    });
    let cfg = model::ModelConfig::from_hf_config(&c.to_string()).unwrap();
    assert_eq!((cfg.rope_base, cfg.rope_base_local), (500_000.0, 20_000.0));
    c["rope_parameters"]["full_attention"]["rope_type"] = serde_json::json!("linear");
    let e = model::ModelConfig::from_hf_config(&c.to_string()).unwrap_err();
    assert!(matches!(e, ModelError::Unsupported(_)), "{e:?}");
}
