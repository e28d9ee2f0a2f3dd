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

// --- Hugging Face `config.json` ---

/// Reads `config.json` fields, naming the file's key in every error.
struct HfJson<'a>(&'a serde_json::Value);

impl HfJson<'_> {
    fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0 && v < (1 << 31))
            .map(Some)
            .ok_or_else(|| ModelError::Format(format!("config.json: {key} = {v} is out of range")))
    }

    fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize> {
        self.usize_opt(key)?
            .or(default)
            .ok_or_else(|| ModelError::Format(format!("config.json: {key} is missing")))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ModelError::Format(format!("config.json: {key} = {v} is not a number")))
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        Ok(self.f32_opt(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                ModelError::Format(format!("config.json: {key} = {v} is not a boolean"))
            }),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                ModelError::Format(format!("config.json: {key} = {v} is not a string"))
            }),
        }
    }

    /// Rejects RoPE scaling (linear, YaRN, llama3, ...), which the forward pass lacks.
    /// Accepts `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5),
    /// either flat or per attention type.
    fn check_rope_scaling(&self) -> Result<()> {
        for key in ["rope_scaling", "rope_parameters"] {
            let Some(v) = self.get(key) else { continue };
            let sets: Vec<&serde_json::Value> = match v.as_object() {
                Some(o) if o.values().all(|x| x.is_object()) && !o.is_empty() => {
                    o.values().collect()
                }
                _ => vec![v],
            };
            for s in sets {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default");
                if ty != "default" {
                    return Err(ModelError::Unsupported(format!(
                        "config.json: {key} of type {ty:?} (only unscaled RoPE is supported)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A RoPE base: `key` at the top level, else in `rope_parameters` (transformers 5),
    /// under `attn_type` when that is per attention type.
    fn rope_theta(&self, key: &str, attn_type: &str) -> Result<Option<f32>> {
        if let Some(v) = self.f32_opt(key)? {
            return Ok(Some(v));
        }
        let Some(p) = self.get("rope_parameters") else {
            return Ok(None);
        };
        let p = p.get(attn_type).unwrap_or(p);
        HfJson(p).f32_opt("rope_theta")
    }
}

impl ModelConfig {
    /// Reads the hyper-parameters of a Hugging Face checkpoint from its `config.json`.
    ///
    /// `model_type` selects the family: `llama`, `qwen2`, `gemma3_text`, or `gemma3` (the
    /// multimodal wrapper, whose `text_config` is read). Missing optional keys take
    /// `transformers`' defaults for that family. Features the forward pass lacks (RoPE
    /// scaling, attention-logit soft-capping, Qwen2's sliding window, Llama's output or
    /// MLP biases) are [`ModelError::Unsupported`] rather than silently ignored.
    ///
    /// Differences from [`ModelConfig::from_gguf`] for the same model: HF Llama keeps q/k
    /// in NeoX order (see the `Llama` arm below), and `vocab_size` is the embedding's row
    /// count, which may exceed the tokenizer's (the GGUF converter drops or pads rows).
    pub fn from_hf_config(json: &str) -> Result<ModelConfig> {
        let root: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        if !root.is_object() {
            return Err(ModelError::Format("config.json: not a JSON object".into()));
        }
        let top = HfJson(&root);
        let model_type = top
            .str_opt("model_type")?
            .ok_or_else(|| ModelError::Format("config.json: model_type is missing".into()))?;
        let (arch, h) = match model_type {
            "llama" => (Architecture::Llama, top),
            "qwen2" => (Architecture::Qwen2, top),
            "gemma3_text" => (Architecture::Gemma3, top),
            "gemma3" => match root.get("text_config").filter(|v| v.is_object()) {
                Some(tc) => (Architecture::Gemma3, HfJson(tc)),
                None => (Architecture::Gemma3, top),
            },
            other => {
                return Err(ModelError::Unsupported(format!(
                    "model_type {other:?} (supported: llama, qwen2, gemma3_text, gemma3)"
                )))
            }
        };
        let gemma = arch == Architecture::Gemma3;
        h.check_rope_scaling()?;

        // Gemma3TextConfig has defaults for the keys its multimodal configs leave out.
        let gemma_default = |v: usize| if gemma { Some(v) } else { None };
        let n_layer = h.usize_or("num_hidden_layers", None)?;
        let n_embd = h.usize_or("hidden_size", None)?;
        let n_ff = h.usize_or("intermediate_size", None)?;
        let n_head = h.usize_or("num_attention_heads", gemma_default(8))?;
        let n_head_kv = h.usize_or("num_key_value_heads", Some(if gemma { 4 } else { n_head }))?;
        let head_dim = h.usize_or("head_dim", Some(if gemma { 256 } else { n_embd / n_head }))?;
        let vocab_size = h.usize_or("vocab_size", gemma_default(262_208))?;
        let context_length = h.usize_or(
            "max_position_embeddings",
            Some(match arch {
                Architecture::Llama => 2048,
                Architecture::Qwen2 => 32_768,
                Architecture::Gemma3 => 131_072,
            }),
        )?;
        let rms_eps = h.f32_or("rms_norm_eps", 1e-6)?;
        let rope_base = h
            .rope_theta("rope_theta", "full_attention")?
            .unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(ModelError::Format(format!(
                "config.json: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
            )));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Format(format!(
                "config.json: head dimension {head_dim} is not a positive even number"
            )));
        }
        let act_key = if gemma {
            "hidden_activation"
        } else {
            "hidden_act"
        };
        let act = h
            .str_opt(act_key)?
            .or(h.str_opt("hidden_act")?)
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let activation = match act {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "config.json: activation {other:?} (supported: silu, gelu_pytorch_tanh)"
                )))
            }
        };

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
            // HF checkpoints keep q/k rows in the order `rotate_half` expects for every
            // family here, Llama included (see below).
            rope_style: RopeStyle::Neox,
            rope_base,
            rope_base_local: rope_base,
            sliding_window: None,
            swa_period: 1,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embed_scale: None,
            activation,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            final_logit_softcap: None,
        };
        match arch {
            Architecture::Llama => {
                // HF Llama applies RoPE with `rotate_half`, i.e. to the pairs (x[i], x[i + d/2]).
                // llama.cpp's converter permutes the q/k rows of each head so that GGUF files
                // pair adjacent dimensions instead; we load the rows as they are and rotate
                // NeoX-style, which is the same computation without copying the matrices.
                // (Only the order of additions in q·k differs from the GGUF path.)
                if h.bool_or("attention_bias", false)? {
                    return Err(ModelError::Unsupported(
                        "config.json: attention_bias (the o_proj bias is not supported)".into(),
                    ));
                }
                if h.bool_or("mlp_bias", false)? {
                    return Err(ModelError::Unsupported("config.json: mlp_bias".into()));
                }
            }
            Architecture::Qwen2 => {
                if h.bool_or("use_sliding_window", false)? {
                    return Err(ModelError::Unsupported(
                        "config.json: use_sliding_window (Qwen2's sliding window)".into(),
                    ));
                }
                c.qkv_bias = true;
            }
            Architecture::Gemma3 => {
                if h.get("attn_logit_softcapping").is_some() {
                    return Err(ModelError::Unsupported(
                        "config.json: attn_logit_softcapping".into(),
                    ));
                }
                c.rope_base_local = h
                    .rope_theta("rope_local_base_freq", "sliding_attention")?
                    .unwrap_or(10_000.0);
                c.sliding_window = Some(h.usize_or("sliding_window", None)?);
                c.swa_period = gemma3_swa_period(&h, n_layer)?;
                // HF: queries are scaled by query_pre_attn_scalar^-1/2 (= head_dim, except
                // for the 27B model).
                let scalar = h.f32_or("query_pre_attn_scalar", head_dim as f32)?;
                if scalar <= 0.0 {
                    return Err(ModelError::Format(format!(
                        "config.json: query_pre_attn_scalar {scalar} is not positive"
                    )));
                }
                c.attn_scale = 1.0 / scalar.sqrt();
                // HF rounds this factor to the weights' dtype; llama.cpp and our GGUF path
                // use the f32 value.
                c.embed_scale = Some((n_embd as f32).sqrt());
                c.qk_norm = true;
                c.post_norms = true;
                c.final_logit_softcap = h.f32_opt("final_logit_softcapping")?;
            }
        }
        Ok(c)
    }
}

/// Gemma 3's pattern of local and global layers as a period: every `p`-th layer is
/// global. Read from `layer_types` (transformers ≥ 4.53) when present, checked against
/// `sliding_window_pattern` (older configs; default 6); a pattern that is not periodic
/// is [`ModelError::Unsupported`].
fn gemma3_swa_period(h: &HfJson<'_>, n_layer: usize) -> Result<usize> {
    let pattern = match h.usize_opt("sliding_window_pattern")? {
        Some(p) => Some(p),
        None => h.usize_opt("_sliding_window_pattern")?,
    };
    let Some(types) = h.get("layer_types") else {
        return Ok(pattern.unwrap_or(6));
    };
    let types: Vec<&str> = types
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        .filter(|t| t.len() == n_layer)
        .ok_or_else(|| {
            ModelError::Format(format!(
                "config.json: layer_types is not a list of {n_layer} strings"
            ))
        })?;
    let period = match types.iter().position(|&t| t == "full_attention") {
        Some(i) => i + 1,
        // No global layer: any period longer than the model will do.
        None => pattern.filter(|&p| p > n_layer).unwrap_or(n_layer + 1),
    };
    for (il, &t) in types.iter().enumerate() {
        let expected = if (il + 1).is_multiple_of(period) {
            "full_attention"
        } else {
            "sliding_attention"
        };
        if t != expected {
            return Err(ModelError::Unsupported(format!(
                "config.json: layer_types[{il}] = {t:?}; only a global layer every {period} layers is supported"
            )));
        }
    }
    Ok(period)
}
