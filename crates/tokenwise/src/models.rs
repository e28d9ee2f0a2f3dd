//! Model aliases and the model cache (filled by `scripts/fetch_models.py`).

use std::path::PathBuf;

use anyhow::{bail, Result};

/// alias -> file name in the cache. Keep in step with `scripts/fetch_models.py`.
pub const ALIASES: &[(&str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3-270m", "gemma-3-270m-Q4_K_M.gguf"),
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
];

pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// `$TOKENWISE_CACHE/models` or `~/.cache/tokenwise/models`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tokenwise/models"),
    }
}

/// Resolves a `--model` argument: an existing path, or an alias of a cached model.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if let Some((alias, file)) = ALIASES.iter().find(|(a, _)| *a == spec) {
        let p = cache_dir().join(file);
        if p.exists() {
            return Ok(p);
        }
        bail!("model {alias:?} is not in the cache ({}): run `scripts/fetch_models.py {alias}`", p.display());
    }
    let known: Vec<&str> = ALIASES.iter().map(|(a, _)| *a).collect();
    bail!("no such model file {spec:?} (and not an alias; aliases: {})", known.join(", "))
}

pub fn list() -> Result<()> {
    for (alias, file) in ALIASES {
        let p = cache_dir().join(file);
        let state = if p.exists() { "cached" } else { "not fetched" };
        println!("{alias:20} {state:12} {}", p.display());
    }
    Ok(())
}
