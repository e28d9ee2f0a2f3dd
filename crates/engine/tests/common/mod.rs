//! Locating the cached test models (copied from the model crate's test helpers, which
//! a test of another crate cannot import).
#![allow(dead_code)]

use std::path::PathBuf;

/// The cache directory `scripts/fetch_models.py` fills.
pub fn model_dir() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
    }
}

/// Path of a test model; panics with the command to run when it is missing, so a
/// missing model fails the suite instead of silently skipping it.
pub fn model_path(file: &str) -> PathBuf {
    let p = model_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch_models.py --all-test` (or `make models`)",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
