//! `tokenwise`: run, inspect and measure LLMs token by token.
//!
//! Each subcommand lives in `cmd/<name>.rs` with its own clap `Args` and `run`.

mod cmd;
mod models;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tokenwise",
    version,
    about = "LLM inference that measures every token"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens (optionally with per-token entropy).
    Generate(Box<cmd::generate::Args>),
    /// Interactive chat using the model's chat template.
    Chat(cmd::chat::Args),
    /// Perplexity of a text file (llama.cpp's method) and bits per byte.
    Perplexity(cmd::perplexity::Args),
    /// Score every token of a text: logprob, entropy, rank; perplexity and the
    /// Fast-DetectGPT machine-text criterion.
    Score(cmd::score::Args),
    /// Evaluate the Fast-DetectGPT criterion as a machine-text detector (AUROC of human
    /// passages against the model's own continuations).
    DetectEval(cmd::detect_eval::Args),
    /// Evaluations: `eval kv` compares KV eviction policies and budgets; `eval fim`
    /// completes HumanEval prompts cut mid-token (naive, token healing, byte-level);
    /// `eval ensemble` scores text byte by byte with two models and their ensembles.
    Eval(cmd::eval::EvalArgs),
    /// Show a model file's metadata, tensor types and sizes.
    Inspect(cmd::inspect::Args),
    /// Measure prefill and decode speed (optionally beside llama.cpp's llama-bench).
    Bench(cmd::bench::Args),
    /// Compress any file losslessly with the model's next-token probabilities.
    Compress(cmd::compress::CompressArgs),
    /// Restore a file compressed by `tokenwise compress` (needs the same model).
    Decompress(cmd::compress::DecompressArgs),
    /// Serve the OpenAI-compatible API and the web playground (continuous batching).
    Serve(cmd::serve::Args),
    /// List the model aliases and where they are cached.
    Models,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(*a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::DetectEval(a) => cmd::detect_eval::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Compress(a) => cmd::compress::compress(a),
        Command::Decompress(a) => cmd::compress::decompress(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Models => models::list(),
    };
    if let Err(e) = result {
        // One line, no backtrace: the error chain joined with ": ".
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
