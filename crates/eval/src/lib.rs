//! Evaluation: how good a model is on a text, and how fast it runs.
//!
//! - [`perplexity`] follows llama.cpp's `llama-perplexity` (non-overlapping windows, the
//!   second half of each scored) so that its figure can be compared digit for digit with
//!   llama.cpp's on the same GGUF file; it adds bits per byte, which, unlike perplexity,
//!   compares models with different tokenizers.
//! - [`score`] scores every token of a text (log-probability, entropy, varentropy,
//!   rank) in one pass, and from it perplexity and the Fast-DetectGPT criterion.
//! - [`detect`] evaluates that criterion as a machine-text detector (AUROC of human
//!   passages against the model's own continuations of their first sentence).
//! - [`ensemble`] combines two models' exact next-byte distributions (linear and
//!   geometric pooling, a Bayesian mixture), so models with different tokenizers can
//!   be ensembled, and reports bits per byte of each model and each combination.
//! - [`bench`] measures prefill and decode throughput the way `llama-bench` does
//!   (random tokens from an empty cache, a warm-up run, mean ± sd over repetitions).
//! - [`llama_bench`] runs llama.cpp's `llama-bench` and parses its JSON, so both engines
//!   can be measured in one run on one machine.
//! - [`humaneval`] completes HumanEval prompts cut inside the first line of the
//!   canonical solution (naive tokenisation, token healing, byte-level generation) and
//!   runs each problem's tests in a sandboxed `python3` subprocess (pass@1).
//! - [`ead`] evaluates entropy-adaptive model switching (`engine::switching`) on
//!   HumanEval: pass@1, the large model's share of tokens, speed, and perplexity under
//!   the large model, for each model alone and each threshold.
//! - [`sysinfo`] reads what a benchmark report needs about the machine (CPU, kernel,
//!   peak RSS).
//!
//! Architecture invariant: this crate prints nothing and draws no progress bars; it
//! reports progress through callbacks and returns plain data. The CLI formats.

pub mod bench;
pub mod constrained;
pub mod detect;
pub mod ead;
pub mod ensemble;
pub mod humaneval;
pub mod kv_eval;
pub mod lastde;
pub mod llama_bench;
pub mod perplexity;
pub mod plot;
pub mod score;
pub mod sysinfo;

pub use bench::{
    bench_decode, bench_prefill, run_bench, BenchOptions, BenchReport, BenchRow, Throughput,
};
pub use llama_bench::{parse_llama_bench_json, run_llama_bench, LlamaBenchRow};
pub use perplexity::{perplexity, PerplexityReport};
pub use score::{auroc, score_text, SamplingDiscrepancy, ScoreReport, ScoredToken};

/// Everything that can go wrong in an evaluation. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The caller's input (text, sizes, options) cannot be evaluated as asked.
    #[error("{0}")]
    Input(String),
    /// An external program (llama-bench) failed or printed something unexpected.
    #[error("{0}")]
    External(String),
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
