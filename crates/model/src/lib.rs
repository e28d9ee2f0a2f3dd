//! Model loading and the transformer forward pass.
//!
//! - [`gguf`] files are parsed by the `gguf` crate; [`weights`] maps their tensors
//!   without copying; [`config`] reads the hyper-parameters.
//! - [`tokenizer`] builds a Hugging Face `tokenizers::Tokenizer` from GGUF metadata;
//!   [`chat`] renders the model's chat template.
//! - [`hf`] loads Hugging Face checkpoints (safetensors, `config.json`, `tokenizer.json`)
//!   into the same structures.
//! - [`transformer`] is the forward pass (reference and fast kernels side by side),
//!   over a per-sequence [`kv_cache`].

pub mod chat;
pub mod config;
pub mod hf;
pub mod kv_cache;
pub mod ops;
pub mod threadpool;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

use std::path::Path;

pub use config::{Activation, Architecture, ModelConfig, RopeStyle};
pub use kv_cache::KvCache;
pub use tokenizer::Tokenizer;
pub use transformer::{
    reposition_cache, AttentionObserver, AttentionWeights, Batch, ForwardScratch, Kernels,
    LogitsFor, Model, SequenceBatch, SequenceState,
};

/// Everything that can go wrong loading or running a model. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("malformed model: {0}")]
    Format(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("context full: {needed} tokens needed, the context holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A loaded model with its tokenizer and chat template.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<chat::ChatTemplate>,
}

/// Loads a GGUF model: header, hyper-parameters, tokenizer, weights (memory-mapped).
pub fn load_gguf(path: &Path, n_threads: usize) -> Result<LoadedModel> {
    let file = gguf::GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file.header)?;
    let tokenizer = Tokenizer::from_gguf(&file.header)?;
    let chat_template = chat::ChatTemplate::from_gguf(&file.header, &tokenizer)?;
    let weights = weights::ModelWeights::from_gguf(file, &config)?;
    Ok(LoadedModel {
        model: Model::new(config, weights, n_threads),
        tokenizer,
        chat_template,
    })
}

// --- Hugging Face checkpoints ---

/// Loads a Hugging Face checkpoint directory: `config.json`, `tokenizer.json` (with
/// `tokenizer_config.json` and the chat template when present) and safetensors weights
/// (`model.safetensors` or a sharded index), memory-mapped. See [`hf`].
pub fn load_hf_dir(path: &Path, n_threads: usize) -> Result<LoadedModel> {
    hf::load_dir(path, n_threads)
}

/// Downloads `repo_id` at `revision` (default `main`) from the Hugging Face hub into its
/// local cache, then loads it like [`load_hf_dir`].
#[cfg(feature = "hub")]
pub fn load_hf_hub(repo_id: &str, revision: Option<&str>, n_threads: usize) -> Result<LoadedModel> {
    let dir = hf::download(repo_id, revision)?;
    hf::load_dir(&dir, n_threads)
}
