//! Model aliases and the model cache (filled by `scripts/fetch_models.py`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// alias -> file name in the cache. Keep in step with `scripts/fetch_models.py`.
pub const ALIASES: &[(&str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3-270m", "gemma-3-270m-Q4_K_M.gguf"),
    (
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
    (
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
];

pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// `$TOKENWISE_CACHE/models` or `~/.cache/tokenwise/models`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
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
        bail!(
            "model {alias:?} is not in the cache ({}): run `scripts/fetch_models.py {alias}`",
            p.display()
        );
    }
    let known: Vec<&str> = ALIASES.iter().map(|(a, _)| *a).collect();
    bail!(
        "no such model file {spec:?} (and not an alias; aliases: {})",
        known.join(", ")
    )
}

/// Default worker threads: the available cores, at most 8. Decoding a small model is
/// bound by memory bandwidth, and past about 8 threads the per-layer synchronisation
/// costs more than the extra cores bring.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(1, 8)
}

/// Loads a model with `threads` workers (`None`: [`default_threads`]). `spec` is
/// a GGUF file, an alias of a cached GGUF file, a Hugging Face checkpoint directory
/// (`config.json`, `tokenizer.json`, safetensors), or `hf:OWNER/NAME[@REVISION]` to
/// fetch one from the Hub (builds with the `hub` feature). Errors name the source.
pub fn load(spec: &str, threads: Option<usize>) -> Result<(PathBuf, model::LoadedModel)> {
    let threads = threads.unwrap_or_else(default_threads).max(1);
    if let Some(repo) = spec.strip_prefix("hf:") {
        return load_hub(repo, threads);
    }
    let path = resolve(spec)?;
    let loaded = if path.is_dir() {
        model::load_hf_dir(&path, threads)
    } else {
        model::load_gguf(&path, threads)
    }
    .with_context(|| format!("loading {}", path.display()))?;
    Ok((path, loaded))
}

#[cfg(feature = "hub")]
fn load_hub(repo: &str, threads: usize) -> Result<(PathBuf, model::LoadedModel)> {
    let (id, revision) = match repo.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (repo, None),
    };
    let loaded = model::load_hf_hub(id, revision, threads)
        .with_context(|| format!("loading {repo} from the Hugging Face Hub"))?;
    Ok((PathBuf::from(repo), loaded))
}

#[cfg(not(feature = "hub"))]
fn load_hub(repo: &str, _threads: usize) -> Result<(PathBuf, model::LoadedModel)> {
    bail!(
        "hf:{repo}: this tokenwise was built without Hub support; rebuild with \
         `cargo build --release -p tokenwise --features hub`, or download the checkpoint \
         and pass its directory"
    )
}

/// The context size to use: `requested`, or the model's training context capped at
/// 4096 (the KV cache of a 128k-context model would otherwise reserve gigabytes when it
/// fills, and prompts here are short). Asking for more than the model was trained on
/// is allowed, with a warning: quality degrades past it.
pub fn context_size(
    path: &Path,
    loaded: &model::LoadedModel,
    requested: Option<usize>,
) -> Result<usize> {
    let trained = loaded.model.config.context_length;
    match requested {
        None => Ok(trained.min(4096)),
        Some(0) => bail!("--ctx must be at least 1 token"),
        Some(n) => {
            if n > trained {
                eprintln!(
                    "warning: --ctx {n} exceeds the context {} was trained with ({trained})",
                    path.file_name().map_or_else(
                        || path.display().to_string(),
                        |f| f.to_string_lossy().into_owned()
                    )
                );
            }
            Ok(n)
        }
    }
}

pub fn list() -> Result<()> {
    for (alias, file) in ALIASES {
        let p = cache_dir().join(file);
        let state = if p.exists() { "cached" } else { "not fetched" };
        println!("{alias:20} {state:12} {}", p.display());
    }
    Ok(())
}
