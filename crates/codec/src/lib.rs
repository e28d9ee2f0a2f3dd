//! Lossless compression of any byte string with a language model.
//!
//! The text is tokenised ([`segment`]: tokens where the tokenizer gives the bytes back,
//! byte tokens or escaped raw bytes elsewhere); each token is range-coded ([`coder`])
//! under the model's next-token distribution, quantised to integers ([`cdf`]); the
//! result is wrapped in a versioned, checksummed [`container`]. [`lm`] drives the
//! model over windows of at most `ctx` tokens, either as one stream with an overlap
//! carried across window boundaries, or as Equal-Info Windows (every window codes to
//! the same number of bytes and starts from a fresh context).
//!
//! Decoding must reproduce the encoder's probabilities bit for bit. The integer CDF is
//! a pure function of the logits' bits; the logits come from the model's single-token
//! decode path in the decoder and from batched prefill in the encoder, which is used
//! only after a probe on the loaded model shows the two give identical bits (see
//! [`lm::LmCodec::probe`]); the probe's hash is stored in the archive so a machine or
//! build that computes different logits is refused before decoding starts.
//!
//! Architecture invariant: `coder`, `cdf`, `container` and `segment` know nothing of
//! models; only `lm` and `identity` touch `model`.

pub mod cdf;
pub mod coder;
pub mod container;
pub mod identity;
pub mod lm;
pub mod segment;

pub use container::{Header, Mode, ModelId};
/// The CRC-32 the header carries for the content (callers compute it before compressing).
pub use crc32fast::Hasher as Crc32;
pub use lm::{CompressOptions, CompressStats, DecompressStats, LmCodec};

/// Everything that can go wrong compressing or decompressing. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a tokenwise archive (bad magic bytes)")]
    NotAnArchive,
    #[error("unsupported archive format version {0} (this build reads version {v})", v = container::VERSION)]
    UnsupportedVersion(u16),
    #[error("truncated archive")]
    Truncated,
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("wrong model: the archive was compressed with {archive}, but {loaded} is loaded")]
    WrongModel { archive: String, loaded: String },
    #[error("{0}")]
    Numerics(String),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Io(String),
}

impl From<model::ModelError> for CodecError {
    fn from(e: model::ModelError) -> Self {
        CodecError::Model(e.to_string())
    }
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e.to_string())
    }
}

pub type Result<T, E = CodecError> = std::result::Result<T, E>;
