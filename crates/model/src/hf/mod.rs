//! Hugging Face checkpoints: `config.json`, `tokenizer.json` (+ `tokenizer_config.json`,
//! `generation_config.json`, the chat template) and safetensors weights, from a local
//! directory or (feature `hub`) downloaded from the Hugging Face hub.
//!
//! The tensors are renamed to their GGUF names and brought into GGUF's conventions so
//! that [`ModelWeights::from_tensors`] assembles the same weights the GGUF path builds:
//!
//! * Gemma's RMSNorm multiplies by `1 + w`; checkpoints store `w`, and llama.cpp's
//!   converter stores `w + 1` (every `*norm.weight` of Gemma 3, q/k norms included), which
//!   is what the forward pass expects. We add 1 here, in f32.
//! * Llama: llama.cpp's converter permutes the q/k rows so that GGUF pairs adjacent
//!   dimensions for RoPE; HF keeps `rotate_half` order. We keep the rows and set
//!   [`RopeStyle::Neox`](crate::RopeStyle::Neox) instead (see
//!   [`ModelConfig::from_hf_config`]), so matrices stay zero-copy in the mapped shards.
//! * Matrices keep their dtype (F32, F16, BF16), which the kernels read directly; norms
//!   and biases become f32.

mod shards;

#[cfg(feature = "hub")]
mod hub;
#[cfg(feature = "hub")]
pub use hub::download;

use std::collections::HashMap;
use std::path::Path;

use crate::chat::ChatTemplate;
use crate::config::{Architecture, ModelConfig};
use crate::weights::{ModelWeights, RawTensor};
use crate::{LoadedModel, Model, ModelError, Result, Tokenizer};

pub use shards::open_checkpoint;

/// Loads the checkpoint in `dir`: hyper-parameters, tokenizer, chat template, weights
/// (memory-mapped).
pub fn load_dir(dir: &Path, n_threads: usize) -> Result<LoadedModel> {
    let config_text = read_text(&dir.join("config.json"))?;
    let config = ModelConfig::from_hf_config(&config_text)?;
    let tied = tie_word_embeddings(&config_text, config.arch)?;

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ModelError::Io(format!(
            "{}: not found (a Hugging Face checkpoint needs tokenizer.json)",
            tokenizer_path.display()
        )));
    }
    let tokenizer = Tokenizer::from_hf_file(&tokenizer_path)?;
    let chat_template = chat_template(dir, &tokenizer)?;

    let tensors = open_checkpoint(dir)?;
    let weights = weights_from_hf(&tensors, &config, tied)?;
    Ok(LoadedModel {
        model: Model::new(config, weights, n_threads),
        tokenizer,
        chat_template,
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
}

/// Whether the LM head is the embedding matrix. `transformers` then ties the two and
/// ignores a stored `lm_head.weight`.
fn tie_word_embeddings(config_json: &str, arch: Architecture) -> Result<bool> {
    let root: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
    let key = "tie_word_embeddings";
    let v = root
        .get(key)
        .or_else(|| root.get("text_config").and_then(|t| t.get(key)))
        .filter(|v| !v.is_null());
    match v {
        // transformers' defaults: Gemma ties, Llama and Qwen2 do not.
        None => Ok(arch == Architecture::Gemma3),
        Some(v) => v.as_bool().ok_or_else(|| {
            ModelError::Format(format!("config.json: {key} = {v} is not a boolean"))
        }),
    }
}

/// Where the decoder's tensors live: `model.` for the text models, the language model
/// of Gemma 3's multimodal checkpoints otherwise.
const PREFIXES: [&str; 3] = ["model.", "language_model.model.", "model.language_model."];

/// Renames, converts and assembles the checkpoint's tensors.
pub fn weights_from_hf(
    hf: &HashMap<String, RawTensor>,
    c: &ModelConfig,
    tied: bool,
) -> Result<ModelWeights> {
    let prefix = PREFIXES
        .iter()
        .copied()
        .find(|p| hf.contains_key(&format!("{p}embed_tokens.weight")))
        .unwrap_or(PREFIXES[0]);
    let gemma = c.arch == Architecture::Gemma3;
    let mut tensors: HashMap<String, RawTensor> = HashMap::new();
    for (name, t) in hf {
        let Some(gguf) = name.strip_prefix(prefix).and_then(|n| gguf_name(c.arch, n)) else {
            continue;
        };
        let t = if gemma && name.ends_with("norm.weight") {
            // Gemma3RMSNorm: x̂ · (1 + w), computed in f32 as transformers does.
            let w: Vec<f32> = t.to_f32(name)?.iter().map(|w| 1.0 + w).collect();
            RawTensor::from_f32(&t.shape, &w)
        } else {
            t.clone()
        };
        tensors.insert(gguf, t);
    }
    if !tied {
        let head = ["lm_head.weight", "language_model.lm_head.weight"]
            .iter()
            .find_map(|n| hf.get(*n));
        match head {
            Some(t) => {
                tensors.insert("output.weight".into(), t.clone());
            }
            None => {
                return Err(ModelError::Format(
                    "missing tensor \"lm_head.weight\" (config.json: tie_word_embeddings is false)"
                        .into(),
                ))
            }
        }
    }
    ModelWeights::from_tensors(&tensors, c).map_err(|e| match e {
        // Name the tensor as the checkpoint does.
        ModelError::Format(msg) => ModelError::Format(rename_in_message(&msg, c.arch, prefix)),
        e => e,
    })
}

/// The GGUF name of a decoder tensor (its HF name without the prefix); `None` for
/// tensors the forward pass does not use.
fn gguf_name(arch: Architecture, name: &str) -> Option<String> {
    match name {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let gguf = LAYER_NAMES
        .iter()
        .find(|(hf, _, only)| *hf == rest && only.is_none_or(|a| a == arch))
        .map(|(_, g, _)| *g)?;
    Some(format!("blk.{il}.{gguf}"))
}

/// The HF name of a GGUF tensor name (for error messages).
fn hf_name(arch: Architecture, gguf: &str, prefix: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some(format!("{prefix}embed_tokens.weight")),
        "output_norm.weight" => return Some(format!("{prefix}norm.weight")),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let (il, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let hf = LAYER_NAMES
        .iter()
        .find(|(_, g, only)| *g == rest && only.is_none_or(|a| a == arch))
        .map(|(h, _, _)| *h)?;
    Some(format!("{prefix}layers.{il}.{hf}"))
}

/// Replaces the first quoted GGUF tensor name in `msg` by the checkpoint's name.
fn rename_in_message(msg: &str, arch: Architecture, prefix: &str) -> String {
    let mut parts = msg.splitn(3, '"');
    let (Some(before), Some(name), Some(after)) = (parts.next(), parts.next(), parts.next()) else {
        return msg.to_string();
    };
    match hf_name(arch, name, prefix) {
        Some(hf) => format!("{before}\"{hf}\"{after}"),
        None => msg.to_string(),
    }
}

/// (HF name within a layer, GGUF name within a block, architecture it is specific to).
/// Llama and Qwen2's `post_attention_layernorm` is the pre-MLP norm; Gemma 3's is a
/// post-norm, with `pre_feedforward_layernorm` before the MLP.
const LAYER_NAMES: &[(&str, &str, Option<Architecture>)] = &[
    ("input_layernorm.weight", "attn_norm.weight", None),
    ("self_attn.q_proj.weight", "attn_q.weight", None),
    ("self_attn.k_proj.weight", "attn_k.weight", None),
    ("self_attn.v_proj.weight", "attn_v.weight", None),
    ("self_attn.o_proj.weight", "attn_output.weight", None),
    ("self_attn.q_proj.bias", "attn_q.bias", None),
    ("self_attn.k_proj.bias", "attn_k.bias", None),
    ("self_attn.v_proj.bias", "attn_v.bias", None),
    ("self_attn.q_norm.weight", "attn_q_norm.weight", None),
    ("self_attn.k_norm.weight", "attn_k_norm.weight", None),
    ("mlp.gate_proj.weight", "ffn_gate.weight", None),
    ("mlp.up_proj.weight", "ffn_up.weight", None),
    ("mlp.down_proj.weight", "ffn_down.weight", None),
    (
        "post_attention_layernorm.weight",
        "ffn_norm.weight",
        Some(Architecture::Llama),
    ),
    (
        "post_attention_layernorm.weight",
        "ffn_norm.weight",
        Some(Architecture::Qwen2),
    ),
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
        Some(Architecture::Gemma3),
    ),
    (
        "pre_feedforward_layernorm.weight",
        "ffn_norm.weight",
        Some(Architecture::Gemma3),
    ),
    (
        "post_feedforward_layernorm.weight",
        "post_ffw_norm.weight",
        Some(Architecture::Gemma3),
    ),
];

/// The chat template, looked for where `transformers` looks: `chat_template.jinja`, then
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
/// which `default` is used), then `chat_template.json` (processors of multimodal models).
pub fn chat_template(dir: &Path, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let Some(source) = chat_template_source(dir)? else {
        return Ok(None);
    };
    let bos = tok.bos_id().map(|id| tok.token_text(id));
    let eos = tok.eos_id().map(|id| tok.token_text(id));
    ChatTemplate::new(&source, bos, eos).map(Some)
}

fn chat_template_source(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read_text(&jinja).map(Some);
    }
    for file in ["tokenizer_config.json", "chat_template.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&read_text(&path)?)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let bad = || ModelError::Format(format!("{}: chat_template is malformed", path.display()));
        match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            Some(serde_json::Value::Array(named)) => {
                let pick = named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or(named.first())
                    .ok_or_else(bad)?;
                let s = pick
                    .get("template")
                    .and_then(|t| t.as_str())
                    .ok_or_else(bad)?;
                return Ok(Some(s.to_string()));
            }
            Some(_) => return Err(bad()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for arch in [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Gemma3,
        ] {
            for (hf, _, only) in LAYER_NAMES {
                if only.is_some_and(|a| a != arch) {
                    continue;
                }
                let full = format!("model.layers.7.{hf}");
                let g = gguf_name(arch, &full["model.".len()..]).unwrap();
                assert_eq!(hf_name(arch, &g, "model.").as_deref(), Some(full.as_str()));
            }
        }
        assert_eq!(
            gguf_name(
                Architecture::Llama,
                "layers.3.post_attention_layernorm.weight"
            )
            .unwrap(),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name(
                Architecture::Gemma3,
                "layers.3.post_attention_layernorm.weight"
            )
            .unwrap(),
            "blk.3.post_attention_norm.weight"
        );
        assert_eq!(
            gguf_name(
                Architecture::Llama,
                "layers.0.self_attn.rotary_emb.inv_freq"
            ),
            None
        );
        assert_eq!(
            gguf_name(Architecture::Llama, "layers.x.mlp.up_proj.weight"),
            None
        );
    }

    #[test]
    fn error_messages_use_checkpoint_names() {
        let m = rename_in_message(
            "missing tensor \"blk.1.attn_k.weight\"",
            Architecture::Qwen2,
            "model.",
        );
        assert_eq!(
            m,
            "missing tensor \"model.layers.1.self_attn.k_proj.weight\""
        );
        assert_eq!(
            rename_in_message("no quotes", Architecture::Llama, "model."),
            "no quotes"
        );
    }
}
