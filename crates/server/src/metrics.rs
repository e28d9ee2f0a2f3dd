//! Counters shared by the HTTP handlers and the engine thread, rendered as
//! Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub active_sequences: AtomicUsize,
    pub kv_bytes: AtomicUsize,
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_prompt_tokens: AtomicU64,
    /// Bytes held by the prefix cache's kept sequences.
    pub prefix_cache_bytes: AtomicUsize,
    /// Draft tokens verified and accepted (speculative requests).
    pub drafted_tokens: AtomicU64,
    pub accepted_tokens: AtomicU64,
    /// Decode throughput over recent steps (tokens/s), smoothed.
    pub tokens_per_sec: Mutex<f64>,
}

impl Metrics {
    /// Records one scheduler step.
    pub fn record_step(&self, stats: &engine::StepStats, active: usize, kv_bytes: usize) {
        self.steps.fetch_add(1, Relaxed);
        self.prompt_tokens
            .fetch_add(stats.prompt_tokens as u64, Relaxed);
        self.generated_tokens
            .fetch_add(stats.generated_tokens as u64, Relaxed);
        self.cached_prompt_tokens
            .fetch_add(stats.reused_tokens as u64, Relaxed);
        self.drafted_tokens.fetch_add(stats.drafted as u64, Relaxed);
        self.accepted_tokens
            .fetch_add(stats.accepted as u64, Relaxed);
        self.active_sequences.store(active, Relaxed);
        self.kv_bytes.store(kv_bytes, Relaxed);
        if stats.generated_tokens > 0 && stats.secs > 0.0 {
            let now = stats.generated_tokens as f64 / stats.secs;
            if let Ok(mut r) = self.tokens_per_sec.lock() {
                // Exponential smoothing over roughly the last 10 steps.
                *r = if *r == 0.0 { now } else { 0.9 * *r + 0.1 * now };
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP tokenwise_{name} {help}");
            let _ = writeln!(out, "# TYPE tokenwise_{name} {kind}");
            let _ = writeln!(out, "tokenwise_{name} {value}");
        };
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        let g = |a: &AtomicUsize| a.load(Relaxed).to_string();
        put(
            "requests_total",
            "counter",
            "Requests accepted.",
            c(&self.requests),
        );
        put(
            "requests_rejected_busy_total",
            "counter",
            "Requests refused with 429 (queue full).",
            c(&self.rejected_busy),
        );
        put(
            "requests_rejected_invalid_total",
            "counter",
            "Requests refused with 400.",
            c(&self.rejected_invalid),
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens computed.",
            c(&self.prompt_tokens),
        );
        put(
            "generated_tokens_total",
            "counter",
            "Tokens generated.",
            c(&self.generated_tokens),
        );
        put(
            "steps_total",
            "counter",
            "Batched forward passes.",
            c(&self.steps),
        );
        put(
            "tokens_per_second",
            "gauge",
            "Generated tokens per second over recent steps (all sequences).",
            format!(
                "{:.3}",
                self.tokens_per_sec.lock().map(|r| *r).unwrap_or(0.0)
            ),
        );
        put(
            "queue_depth",
            "gauge",
            "Requests waiting for a free sequence.",
            g(&self.queue_depth),
        );
        put(
            "active_sequences",
            "gauge",
            "Sequences being prefilled or decoded.",
            g(&self.active_sequences),
        );
        put(
            "kv_bytes",
            "gauge",
            "Bytes of keys and values held by active sequences (measured from the caches).",
            g(&self.kv_bytes),
        );
        put(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens taken from the prefix cache (not computed).",
            c(&self.cached_prompt_tokens),
        );
        put(
            "prefix_cache_bytes",
            "gauge",
            "Bytes of keys and values kept by the prefix cache for later requests.",
            g(&self.prefix_cache_bytes),
        );
        put(
            "speculative_drafted_tokens_total",
            "counter",
            "Draft tokens verified for speculative requests.",
            c(&self.drafted_tokens),
        );
        put(
            "speculative_accepted_tokens_total",
            "counter",
            "Draft tokens accepted (each saves a forward pass).",
            c(&self.accepted_tokens),
        );
        let drafted = self.drafted_tokens.load(Relaxed);
        put(
            "speculative_acceptance_ratio",
            "gauge",
            "Accepted share of all drafted tokens so far (0 before any draft).",
            if drafted == 0 {
                "0".into()
            } else {
                format!(
                    "{:.4}",
                    self.accepted_tokens.load(Relaxed) as f64 / drafted as f64
                )
            },
        );
        out
    }
}
