//! `tokenwise serve`: the OpenAI-compatible HTTP server (see the `server` crate).

use anyhow::{bail, Context, Result};

use super::generate::RuntimeArgs;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Address to bind; loopback by default (put a reverse proxy or load balancer in
    /// front to expose it).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together in one batched step.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence before new ones get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Prompt tokens per batched step: a new request's prefill delays running streams
    /// by at most one chunk.
    #[arg(long, default_value_t = 128)]
    pub prefill_chunk: usize,
    /// Finished sequences whose caches are kept for requests that start with the same
    /// tokens (a shared system prompt, the next turn of a chat); 0 turns it off.
    #[arg(long, default_value_t = 4)]
    pub prefix_cache: usize,
    /// Require `Authorization: Bearer KEY` on the API (also read from
    /// TOKENWISE_API_KEY).
    #[arg(long, env = "TOKENWISE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Name clients use as `model` (default: the alias or file stem).
    #[arg(long)]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(a: Args) -> Result<()> {
    init_logging();
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let (path, loaded) = models::load(&a.model, a.runtime.threads)?;
    let n_ctx = models::context_size(&path, &loaded, a.runtime.ctx)?;
    let model_name = a.model_name.unwrap_or_else(|| {
        if path.exists() && !a.model.contains('/') && !a.model.ends_with(".gguf") {
            a.model.clone()
        } else {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| a.model.clone())
        }
    });
    let config = server::ServerConfig {
        model_name,
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        n_ctx,
        max_queue: a.max_queue,
        prefill_chunk: a.prefill_chunk,
        prefix_cache: a.prefix_cache,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        ..server::ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The model has its own thread pool; HTTP needs little.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::serve(loaded, config))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENWISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
