//! Model loading and the transformer forward pass.
//!
//! - [`gguf`] files are parsed by the `gguf` crate; [`weights`] maps their tensors
//!   without copying; [`config`] reads the hyper-parameters.
//! - [`tokenizer`] builds a Hugging Face `tokenizers::Tokenizer` from GGUF metadata;
//!   [`chat`] renders the model's chat template.
//! - [`transformer`] is the forward pass (reference and fast kernels side by side),
//!   over a per-sequence [`kv_cache`].

pub mod chat;
pub mod config;
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
    AttentionObserver, AttentionWeights, Batch, Kernels, LogitsFor, Model, SequenceState,
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
