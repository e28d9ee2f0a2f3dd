//! `tokenwise inspect`: what is inside a GGUF file, read from its header alone.
//!
//! Only the header is parsed (tensor data stays on disk), so inspecting a file is
//! instant even for large models. A file whose architecture tokenwise cannot run is
//! still described: the parts that fail to parse are reported in place.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use gguf::{GgufFile, Value};
use model::tokenizer::VocabKind;
use model::{ModelConfig, Tokenizer};
use serde_json::{json, Value as Json};

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    pub model: String,
    /// List every tensor (name, type, dimensions, bytes).
    #[arg(long)]
    pub tensors: bool,
    /// Machine-readable output (always includes the tensor list).
    #[arg(long)]
    pub json: bool,
}

/// Per-type totals.
#[derive(Default)]
struct TypeTotals {
    tensors: usize,
    elements: u64,
    bytes: u64,
}

pub fn run(a: Args) -> Result<()> {
    let path = models::resolve(&a.model)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let h = &file.header;
    let file_bytes = file.bytes().len() as u64;
    let config = ModelConfig::from_gguf(h);
    let tokenizer = Tokenizer::from_gguf(h);
    let has_template = h.get("tokenizer.chat_template").is_some();
    let arch = h.architecture().unwrap_or("(missing)");

    let mut totals: BTreeMap<&'static str, TypeTotals> = BTreeMap::new();
    for t in &h.tensors {
        let e = totals.entry(t.ggml_type.name()).or_default();
        e.tensors += 1;
        e.elements += t.n_elements();
        e.bytes += t.size;
    }
    let n_params: u64 = totals.values().map(|t| t.elements).sum();
    let tensor_bytes: u64 = totals.values().map(|t| t.bytes).sum();

    if a.json {
        let doc = json!({
            "file": path.display().to_string(),
            "file_bytes": file_bytes,
            "gguf_version": h.version,
            "architecture": arch,
            "config": match &config { Ok(c) => config_json(c), Err(_) => Json::Null },
            "config_error": config.as_ref().err().map(|e| e.to_string()),
            "tokenizer": match &tokenizer { Ok(t) => tokenizer_json(t), Err(_) => Json::Null },
            "tokenizer_error": tokenizer.as_ref().err().map(|e| e.to_string()),
            "chat_template": has_template,
            "parameters": n_params,
            "tensor_bytes": tensor_bytes,
            "metadata": h.metadata.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<serde_json::Map<_, _>>(),
            "tensor_types": totals.iter().map(|(ty, t)| json!({
                "type": ty, "tensors": t.tensors, "elements": t.elements, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "tensors": h.tensors.iter().map(|t| json!({
                "name": t.name, "type": t.ggml_type.name(), "dims": t.dims, "bytes": t.size,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    println!(
        "file:          {} ({})",
        path.display(),
        human_bytes(file_bytes)
    );
    println!(
        "format:        GGUF v{}, {} tensors, {} metadata keys, alignment {}",
        h.version,
        h.tensors.len(),
        h.metadata.len(),
        h.alignment
    );
    let name = h.get("general.name").and_then(|v| v.as_str()).unwrap_or("");
    println!(
        "architecture:  {arch}{}",
        if name.is_empty() {
            String::new()
        } else {
            format!(" ({name})")
        }
    );
    match &config {
        Ok(c) => print_config(c),
        Err(e) => println!("hyper-params:  unavailable: {e}"),
    }
    match &tokenizer {
        Ok(t) => println!("tokenizer:     {}", tokenizer_line(t)),
        Err(e) => println!("tokenizer:     unavailable: {e}"),
    }
    let template = h.get("tokenizer.chat_template").and_then(|v| v.as_str());
    println!(
        "chat template: {}",
        template.map_or("none".to_string(), |t| format!("yes ({} chars)", t.len()))
    );
    let bpw = if n_params > 0 {
        tensor_bytes as f64 * 8.0 / n_params as f64
    } else {
        0.0
    };
    println!(
        "parameters:    {} in {} of tensor data ({bpw:.2} bits/weight)",
        human_count(n_params),
        human_bytes(tensor_bytes)
    );

    println!("\ntensor types:");
    for (ty, t) in &totals {
        println!(
            "  {ty:8} {:5} tensors {:>10} weights {:>10}",
            t.tensors,
            human_count(t.elements),
            human_bytes(t.bytes)
        );
    }

    println!("\nmetadata:");
    let width = h.metadata.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, v) in &h.metadata {
        println!("  {k:width$} = {}", v.summary(72));
    }

    if a.tensors {
        println!("\ntensors:");
        let width = h.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in &h.tensors {
            let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
            println!(
                "  {:width$} {:8} {:>18} {:>12}",
                t.name,
                t.ggml_type.name(),
                format!("[{}]", dims.join(", ")),
                t.size
            );
        }
    } else {
        println!("\n(--tensors lists all {} tensors)", h.tensors.len());
    }
    Ok(())
}

fn print_config(c: &ModelConfig) {
    println!(
        "hyper-params:  {} layers, embedding {}, {} heads ({} kv heads, head dim {}), ff {}, vocab {}",
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.vocab_size
    );
    let mut extra = format!(
        "context {}, rope base {}, rms eps {:e}",
        c.context_length, c.rope_base, c.rms_eps
    );
    if let Some(w) = c.sliding_window {
        extra.push_str(&format!(
            ", sliding window {w} (every {}th layer global, local rope base {})",
            c.swa_period, c.rope_base_local
        ));
    }
    if let Some(cap) = c.final_logit_softcap {
        extra.push_str(&format!(", logit softcap {cap}"));
    }
    println!("               {extra}");
}

fn config_json(c: &ModelConfig) -> Json {
    json!({
        "architecture": c.arch.name(),
        "layers": c.n_layer,
        "embedding": c.n_embd,
        "heads": c.n_head,
        "kv_heads": c.n_head_kv,
        "head_dim": c.head_dim,
        "feed_forward": c.n_ff,
        "vocab": c.vocab_size,
        "context": c.context_length,
        "rope_base": c.rope_base,
        "rope_base_local": c.rope_base_local,
        "rms_eps": f32_json(c.rms_eps),
        "sliding_window": c.sliding_window,
        "final_logit_softcap": c.final_logit_softcap,
    })
}

/// Metadata as JSON: scalars and short arrays in full; long arrays (the vocabulary,
/// merges, scores) as a summary string, since tens of thousands of entries would
/// drown everything else.
fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::F32(x) => f32_json(*x),
        Value::F64(x) => json!(x),
        Value::Array(items) if items.len() <= 64 => {
            Json::Array(items.iter().map(value_json).collect())
        }
        Value::Array(_) => Json::String(v.summary(200)),
        other => other
            .as_i64()
            .map(|i| json!(i))
            .or_else(|| other.as_u64().map(|u| json!(u)))
            .unwrap_or_else(|| Json::String(other.summary(200))),
    }
}

/// An f32 as the shortest decimal that reads back as it (1e-5, not 9.99999974e-6).
fn f32_json(x: f32) -> Json {
    x.to_string()
        .parse::<f64>()
        .map_or(Json::Null, |v| json!(v))
}

fn kind_name(k: VocabKind) -> &'static str {
    match k {
        VocabKind::Spm => "spm (sentencepiece)",
        VocabKind::Bpe => "bpe (byte-level)",
        VocabKind::HuggingFace => "huggingface",
    }
}

fn special(t: &Tokenizer, id: Option<u32>) -> String {
    id.map_or("none".to_string(), |id| {
        format!("{id} {:?}", t.token_text(id))
    })
}

fn tokenizer_line(t: &Tokenizer) -> String {
    format!(
        "{}, {} tokens, bos {}, eos {}, adds bos: {}, {} end-of-generation tokens",
        kind_name(t.kind()),
        t.vocab_size(),
        special(t, t.bos_id()),
        special(t, t.eos_id()),
        t.adds_bos(),
        t.end_of_generation_ids().len()
    )
}

fn tokenizer_json(t: &Tokenizer) -> Json {
    json!({
        "kind": kind_name(t.kind()),
        "vocab": t.vocab_size(),
        "bos": t.bos_id(),
        "eos": t.eos_id(),
        "adds_bos": t.adds_bos(),
        "end_of_generation": t.end_of_generation_ids(),
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}
