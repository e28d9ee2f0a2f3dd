//! `tokenwise serve`: an OpenAI-compatible HTTP server (axum) over the engine's
//! continuous-batching [`engine::Scheduler`], with Prometheus metrics and a web page
//! that colours every token by its entropy or surprisal.
//!
//! * [`worker`]: the engine thread and the bounded queue in front of it.
//! * [`openai`]: request shapes and their translation into engine requests.
//! * [`api`]: the endpoints and response shapes.
//! * [`metrics`]: counters rendered at `/metrics`.
//!
//! This is the only crate that knows HTTP and JSON.

pub mod api;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use engine::SchedulerConfig;
use model::LoadedModel;

pub use api::router;

/// Settings of a running server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name clients send as `model` and `/v1/models` lists.
    pub model_name: String,
    pub host: String,
    pub port: u16,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Context per sequence.
    pub n_ctx: usize,
    /// Requests waiting beyond `parallel` before new ones get 429.
    pub max_queue: usize,
    /// Prompt tokens per batched step (chunked prefill).
    pub prefill_chunk: usize,
    /// Finished sequences' caches kept for prompts that share their prefix (0: off).
    pub prefix_cache: usize,
    /// Require `Authorization: Bearer KEY` on the API.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "model".into(),
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            n_ctx: 2048,
            max_queue: 64,
            prefill_chunk: 128,
            prefix_cache: 4,
            api_key: None,
            max_body_bytes: 4 << 20,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub model: Arc<LoadedModel>,
    pub engine: worker::EngineHandle,
    pub config: ServerConfig,
    /// Unix time the server started (OpenAI's `created` of the model).
    pub started: u64,
}

impl AppState {
    /// Starts the engine thread for `model`.
    pub fn new(model: Arc<LoadedModel>, config: ServerConfig) -> anyhow::Result<Arc<AppState>> {
        let engine = worker::EngineHandle::spawn(
            model.clone(),
            SchedulerConfig {
                max_sequences: config.parallel,
                n_ctx: config.n_ctx,
                prefill_chunk: config.prefill_chunk,
                prefix_cache: config.prefix_cache,
            },
            config.max_queue,
        )?;
        Ok(Arc::new(AppState {
            model,
            engine,
            config,
            started: unix_now(),
        }))
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Binds and serves until `shutdown` resolves; then in-flight streams end with an error
/// event and the engine thread stops.
pub async fn serve_until(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    let engine_state = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending in-flight streams");
        // Blocking join of the engine thread: off the async workers.
        let _ = tokio::task::spawn_blocking(move || engine_state.engine.shutdown()).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .context("server error")?;
    state.engine.shutdown();
    Ok(())
}

/// Serves `model` on `config.host:config.port` until SIGINT or SIGTERM.
pub async fn serve(model: LoadedModel, config: ServerConfig) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", config.host, config.port)
        .parse()
        .with_context(|| format!("invalid address {}:{}", config.host, config.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    let state = AppState::new(Arc::new(model), config)?;
    tracing::info!(
        "serving {} on http://{local} ({} parallel sequences, context {})",
        state.config.model_name,
        state.config.parallel,
        state.config.n_ctx
    );
    // Printed for scripts that start the server on port 0 and need the address.
    println!("listening on http://{local}");
    serve_until(state, listener, shutdown_signal()).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
