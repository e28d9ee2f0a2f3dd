//! `tokenwise bench serve`: load on the HTTP server from 1, 4, 8 concurrent streaming
//! clients (greedy, fixed prompts from real text, a fixed number of new tokens each),
//! optionally against llama.cpp's `llama-server` in the same run.
//!
//! Each server is started as a child process on a free loopback port, warmed up with
//! one request, then loaded; its peak RSS is read from `/proc/PID/status` (VmHWM).
//! Reported per server and client count: aggregate generated tokens/s (all tokens over
//! the wall time of the round, prefill included), decode tokens/s (clients over the
//! mean inter-token latency: the batch's steady generation rate once prompts are in),
//! time to first token p50/p95, inter-token latency p50/p95.
//!
//! Every round and the warm-up use prompts of their own, so no server answers from a
//! prompt cache filled by an earlier round (llama-server reuses a slot's prompt).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (the same GGUF is given to llama-server).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub clients: Vec<usize>,
    /// New tokens per request (end-of-generation ignored so every request makes them).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Threads of each server.
    #[arg(long, short, default_value_t = 2)]
    pub threads: usize,
    /// Sequences each server decodes together.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Context per sequence.
    #[arg(long, default_value_t = 1024)]
    pub ctx: usize,
    /// Words of each prompt (taken from the start of a passage).
    #[arg(long, default_value_t = 120)]
    pub prompt_words: usize,
    /// Prompts: a JSONL file of {"text": ...} (default: the Python documentation
    /// passages of `scripts/fetch_eval_text.py`).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// llama.cpp's llama-server binary, to measure it in the same run.
    #[arg(long)]
    pub llama_server: Option<PathBuf>,
}

/// One request's timings.
struct RequestTimes {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

struct Round {
    clients: usize,
    tokens: usize,
    wall: f64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

struct Server {
    name: String,
    child: Child,
    base: String,
    /// Extra request fields that make the server ignore end-of-generation.
    ignore_eos: Value,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--clients needs counts of at least 1");
    }
    let path = models::resolve(&a.model)?;
    // One warm-up prompt, then fresh prompts for every round.
    let prompts = load_prompts(
        a.prompts.as_deref(),
        a.prompt_words,
        1 + a.clients.iter().sum::<usize>(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let mut servers: Vec<Box<dyn Fn() -> Result<Server>>> = Vec::new();
    {
        let (path, a_threads, parallel, ctx) = (path.clone(), a.threads, a.parallel, a.ctx);
        servers.push(Box::new(move || {
            start_tokenwise(&path, a_threads, parallel, ctx)
        }));
    }
    if let Some(bin) = &a.llama_server {
        let (bin, path, threads, parallel, ctx) =
            (bin.clone(), path.clone(), a.threads, a.parallel, a.ctx);
        servers.push(Box::new(move || {
            start_llama(&bin, &path, threads, parallel, ctx)
        }));
    }

    let mut results: Vec<(String, Vec<Round>, u64)> = Vec::new();
    for start in &servers {
        let server = start()?;
        eprintln!("{}: {}", server.name, server.base);
        let rounds = runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?;
            wait_ready(&client, &server.base).await?;
            // Warm-up: page in the weights, start the threads.
            one_request(&client, &server, &prompts[0], 8).await?;
            let mut rounds = Vec::new();
            let mut next = 1;
            for &c in &a.clients {
                let round_prompts = &prompts[next..next + c];
                next += c;
                rounds.push(load_round(&client, &server, round_prompts, a.max_tokens).await?);
                let r = rounds.last().expect("pushed");
                eprintln!(
                    "  {c} clients: {:.1} tok/s aggregate",
                    r.tokens as f64 / r.wall
                );
            }
            anyhow::Ok(rounds)
        })?;
        let rss = peak_rss_kib(server.child.id()).unwrap_or(0);
        results.push((server.name.clone(), rounds, rss));
    }
    print_report(&a, &path, &results);
    Ok(())
}

fn load_prompts(file: Option<&std::path::Path>, words: usize, n: usize) -> Result<Vec<String>> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => models::cache_dir()
            .parent()
            .map(|p| p.join("data/python-doc-passages.jsonl"))
            .context("no cache directory")?,
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run scripts/fetch_eval_text.py, or pass --prompts)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).context("prompt file: not JSONL")?;
        let t = v["text"]
            .as_str()
            .context("prompt file: a line has no \"text\"")?;
        let head: Vec<&str> = t.split_whitespace().take(words).collect();
        out.push(head.join(" "));
        if out.len() == n {
            break;
        }
    }
    if out.len() < n {
        bail!("{} holds {} prompts, {n} needed", path.display(), out.len());
    }
    Ok(out)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(l.local_addr()?.port())
}

fn start_tokenwise(
    model: &std::path::Path,
    threads: usize,
    parallel: usize,
    ctx: usize,
) -> Result<Server> {
    let exe = std::env::current_exe().context("cannot find the tokenwise binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--port", "0", "--model"])
        .arg(model)
        .args([
            "-t",
            &threads.to_string(),
            "--parallel",
            &parallel.to_string(),
        ])
        .args(["--ctx", &ctx.to_string(), "--max-queue", "64"])
        .env("TOKENWISE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start tokenwise serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("tokenwise serve printed nothing")?;
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from tokenwise serve: {line:?}"))?
        .to_string();
    Ok(Server {
        name: "tokenwise".into(),
        child,
        base,
        ignore_eos: json!({"tokenwise": {"ignore_eos": true}}),
    })
}

fn start_llama(
    bin: &std::path::Path,
    model: &std::path::Path,
    threads: usize,
    parallel: usize,
    ctx: usize,
) -> Result<Server> {
    let port = free_port()?;
    let child = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &threads.to_string(), "-np", &parallel.to_string()])
        // llama-server splits its context over the slots.
        .args(["-c", &(ctx * parallel).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Server {
        name: "llama-server".into(),
        child,
        base: format!("http://127.0.0.1:{port}"),
        ignore_eos: json!({"ignore_eos": true}),
    })
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{base} did not become ready in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request_body(server: &Server, prompt: &str, max_tokens: usize) -> Value {
    let mut body = json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    });
    if let (Some(b), Some(extra)) = (body.as_object_mut(), server.ignore_eos.as_object()) {
        for (k, v) in extra {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// One streaming completion; the time of every token chunk.
async fn one_request(
    client: &reqwest::Client,
    server: &Server,
    prompt: &str,
    max_tokens: usize,
) -> Result<RequestTimes> {
    let start = Instant::now();
    let r = client
        .post(format!("{}/v1/completions", server.base))
        .json(&request_body(server, prompt, max_tokens))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "{}: {} {}",
            server.name,
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut times = Vec::new();
    'read: while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data.trim() == "[DONE]" {
                break 'read;
            }
            let v: Value = serde_json::from_str(data).context("a stream chunk is not JSON")?;
            if v.get("error").is_some() {
                bail!("{}: {v}", server.name);
            }
            // One chunk per token; the closing chunk carries the finish reason.
            let choice = &v["choices"][0];
            if choice.is_object() && choice["finish_reason"].is_null() {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let ttft = times.first().copied().unwrap_or(f64::NAN);
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    Ok(RequestTimes {
        ttft,
        gaps,
        tokens: times.len(),
    })
}

async fn load_round(
    client: &reqwest::Client,
    server: &Server,
    prompts: &[String],
    max_tokens: usize,
) -> Result<Round> {
    let start = Instant::now();
    let all = futures_util::future::join_all(
        prompts
            .iter()
            .map(|p| one_request(client, server, p, max_tokens)),
    )
    .await;
    let wall = start.elapsed().as_secs_f64();
    let mut round = Round {
        clients: prompts.len(),
        tokens: 0,
        wall,
        ttft: Vec::new(),
        itl: Vec::new(),
    };
    for r in all {
        let r = r?;
        round.tokens += r.tokens;
        round.ttft.push(r.ttft);
        round.itl.extend(r.gaps);
    }
    Ok(round)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}

/// The batch's steady generation rate: every client gets a token per mean gap.
fn decode_rate(r: &Round) -> f64 {
    if r.itl.is_empty() {
        return f64::NAN;
    }
    let mean = r.itl.iter().sum::<f64>() / r.itl.len() as f64;
    r.clients as f64 / mean
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn print_report(a: &Args, model: &std::path::Path, results: &[(String, Vec<Round>, u64)]) {
    println!(
        "model {} · {} threads · --parallel {} · {} new tokens per request · greedy",
        model.display(),
        a.threads,
        a.parallel,
        a.max_tokens
    );
    println!();
    println!("| server | clients | aggregate tok/s | decode tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, rounds, rss) in results {
        for r in rounds {
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
                r.clients,
                r.tokens as f64 / r.wall,
                decode_rate(r),
                percentile(&r.ttft, 0.5) * 1e3,
                percentile(&r.ttft, 0.95) * 1e3,
                percentile(&r.itl, 0.5) * 1e3,
                percentile(&r.itl, 0.95) * 1e3,
                *rss as f64 / 1024.0
            );
        }
    }
    if results.len() == 2 {
        println!();
        for (ours, theirs) in results[0].1.iter().zip(&results[1].1) {
            println!(
                "{} clients: tokenwise / llama-server = {:.2}x",
                ours.clients,
                (ours.tokens as f64 / ours.wall) / (theirs.tokens as f64 / theirs.wall)
            );
        }
    }
    if let Some(one) = results[0].1.iter().find(|r| r.clients == 1) {
        for r in &results[0].1 {
            println!(
                "tokenwise {} clients / 1 client = {:.2}x",
                r.clients,
                (r.tokens as f64 / r.wall) / (one.tokens as f64 / one.wall)
            );
        }
    }
}
