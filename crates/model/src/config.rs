//! Model hyper-parameters, read from GGUF metadata (or an HF `config.json`).

use crate::{ModelError, Result};
use gguf::GgufHeader;

/// The decoder families tokenwise runs. They share one forward pass; the differences
/// are spelled out as fields of [`ModelConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama (SmolLM2): RoPE on adjacent pairs, GQA, RMSNorm, SwiGLU.
    Llama,
    /// Qwen2 (Qwen2.5-Coder): Llama plus q/k/v biases and NeoX-style RoPE.
    Qwen2,
    /// Gemma 3: QK-norm, post-norms, GELU, scaled embeddings, local sliding-window
    /// and global layers with their own RoPE bases.
    Gemma3,
}

impl Architecture {
    pub fn from_name(name: &str) -> Option<Architecture> {
        match name {
            "llama" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            "gemma3" => Some(Architecture::Gemma3),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma3 => "gemma3",
        }
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate (x[2i], x[2i+1]): Llama as stored in GGUF (the converter permutes q/k).
    Adjacent,
    /// Rotate (x[i], x[i + d/2]): GPT-NeoX, Qwen2, Gemma.
    Neox,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU-gated MLP (SwiGLU).
    Silu,
    /// GELU (tanh approximation)-gated MLP (GeGLU).
    GeluTanh,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub n_layer: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
    /// RoPE base of global-attention layers.
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3), else equal to `rope_base`.
    pub rope_base_local: f32,
    /// Sliding window of local layers, in positions (Gemma 3).
    pub sliding_window: Option<usize>,
    /// Every `swa_period`-th layer is global, the others local (Gemma 3: 6).
    pub swa_period: usize,
    pub attn_scale: f32,
    /// Multiply token embeddings by this (Gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub post_norms: bool,
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    /// Whether layer `il` attends only within the sliding window.
    pub fn is_local_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.swa_period)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Reads the hyper-parameters of a GGUF model.
    pub fn from_gguf(h: &GgufHeader) -> Result<ModelConfig> {
        let arch_name = h.architecture()?;
        let arch = Architecture::from_name(arch_name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "unknown architecture {arch_name:?} (supported: llama, qwen2, gemma3)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let usize_of = |k: &str| -> Result<usize> {
            let v = h.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < (1 << 31))
                .ok_or_else(|| ModelError::Format(format!("{}: {v} is out of range", key(k))))
        };
        let n_layer = usize_of("block_count")?;
        let n_embd = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = match h.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => n_head,
        };
        let head_dim = match h.get(&key("attention.key_length")) {
            Some(_) => usize_of("attention.key_length")?,
            None => n_embd / n_head,
        };
        let n_ff = usize_of("feed_forward_length")?;
        let context_length = usize_of("context_length")?;
        let rms_eps = h.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let rope_base = match h.get(&key("rope.freq_base")) {
            Some(_) => h.get_f64(&key("rope.freq_base"))? as f32,
            None => 10_000.0,
        };
        let vocab_size = match h.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => usize_of("vocab_size")?,
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(ModelError::Format(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(ModelError::Format(format!(
                "head dimension {head_dim} is odd"
            )));
        }
        let mut c = ModelConfig {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            vocab_size,
            context_length,
            rms_eps,
            rope_style: RopeStyle::Adjacent,
            rope_base,
            rope_base_local: rope_base,
            sliding_window: None,
            swa_period: 1,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embed_scale: None,
            activation: Activation::Silu,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            final_logit_softcap: None,
        };
        match arch {
            Architecture::Llama => {}
            Architecture::Qwen2 => {
                c.rope_style = RopeStyle::Neox;
                c.qkv_bias = true;
            }
            Architecture::Gemma3 => {
                c.rope_style = RopeStyle::Neox;
                // Gemma 3 keeps the local layers' RoPE base at 10k; GGUF stores only the global one.
                c.rope_base_local = 10_000.0;
                c.sliding_window = Some(usize_of("attention.sliding_window")?);
                c.swa_period = 6;
                c.embed_scale = Some((n_embd as f32).sqrt());
                c.activation = Activation::GeluTanh;
                c.qk_norm = true;
                c.post_norms = true;
                if let Some(v) = h.get(&key("final_logit_softcapping")) {
                    c.final_logit_softcap = v.as_f64().map(|v| v as f32);
                }
            }
        }
        Ok(c)
    }
}
