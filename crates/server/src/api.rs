//! The endpoints: OpenAI's `/v1/models`, `/v1/completions`, `/v1/chat/completions`
//! (JSON or server-sent events), `/tokenize`, `/detokenize`, `/health`, `/metrics`,
//! `/tokenwise/info`, and the web page at `/`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use engine::{Generation, StopReason, TokenEvent};
use model::LoadedModel;

use crate::error::ApiError;
use crate::openai::{self, ChatRequest, CompletionRequest, Prepared};
use crate::worker::Msg;
use crate::AppState;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// All routes; the OpenAI and tokenizer endpoints behind the optional API key.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenwise/info", get(info))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                ..ApiError::bad_body("no such endpoint")
            }
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Readiness: 200 while serving, 503 once shutting down.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "tokenwise",
            "meta": {
                "n_ctx": state.config.n_ctx,
                "n_vocab": state.model.model.config.vocab_size,
                "architecture": format!("{:?}", state.model.model.config.arch),
            },
        }],
    }))
}

/// What the web page needs to build its menus.
async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "model": state.config.model_name,
        "n_ctx": state.config.n_ctx,
        "parallel": state.config.parallel,
        "chat": state.model.chat_template.is_some(),
        "samplers": openai::SAMPLER_PRESETS,
        "kv_policies": engine::POLICY_NAMES,
        "kv_dtypes": openai::KV_DTYPES,
        "speculative": openai::SPECULATIVE_MODES,
        "constraint_modes": ["mask", "awrs"],
    }))
}

/// Parses a JSON body into `T`, with OpenAI-style 400s for malformed JSON, wrong
/// types and invalid UTF-8.
fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::bad_body("the request body is not valid UTF-8"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_body(format!("invalid request body: {e}")))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse(&body)?;
    let tok = &state.model.tokenizer;
    let ids = tok
        .encode(&req.content, req.add_special, req.add_special)
        .map_err(|e| ApiError::invalid(format!("cannot tokenise: {e}"), "content"))?;
    if req.with_pieces {
        let pieces: Vec<Value> = ids
            .iter()
            .map(|&id| json!({"id": id, "piece": tok.token_text(id)}))
            .collect();
        return Ok(Json(json!({ "tokens": pieces })));
    }
    Ok(Json(json!({ "tokens": ids })))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = parse(&body)?;
    let vocab = state.model.tokenizer.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
            "tokens",
        ));
    }
    let text = state
        .model
        .tokenizer
        .decode(&req.tokens)
        .map_err(|e| ApiError::invalid(e.to_string(), "tokens"))?;
    Ok(Json(json!({ "content": text })))
}

/// Which response shape a request gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// How logprobs are returned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogprobShape {
    None,
    /// `logprobs.content[]` entries (chat API).
    Content,
    /// `tokens`, `token_logprobs`, `top_logprobs`, `text_offset` (legacy completions).
    Legacy,
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body).inspect_err(|_| count_invalid(&state))?;
    let prepared = (|| {
        let messages = openai::chat_messages(&req.messages)?;
        let prompt = engine::chat_prompt_ids(&state.model, &messages, true)?;
        let logprobs = if req.logprobs {
            Some(top_logprobs(req.common.top_logprobs)?)
        } else {
            None
        };
        let room = state.config.n_ctx.saturating_sub(prompt.len());
        req.common
            .prepare(&state.model, prompt, logprobs, room, state.config.n_ctx)
    })()
    .inspect_err(|_| count_invalid(&state))?;
    let shape = if prepared.logprobs.is_some() {
        LogprobShape::Content
    } else {
        LogprobShape::None
    };
    run(state, prepared, Kind::Chat, shape, None).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body).inspect_err(|_| count_invalid(&state))?;
    let prepared = (|| {
        let prompt = openai::completion_prompt(&state.model, &req.prompt)?;
        let (logprobs, shape) = match &req.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => (None, LogprobShape::None),
            Some(Value::Bool(true)) => (
                Some(top_logprobs(req.common.top_logprobs)?),
                LogprobShape::Content,
            ),
            Some(Value::Number(n)) => match n.as_u64().filter(|&n| n <= 5) {
                Some(k) => (Some(k as usize), LogprobShape::Legacy),
                None => {
                    return Err(ApiError::invalid(
                        "logprobs must be an integer from 0 to 5 (or true with top_logprobs)",
                        "logprobs",
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "logprobs must be an integer from 0 to 5 (or true with top_logprobs)",
                    "logprobs",
                ))
            }
        };
        // OpenAI's default for completions.
        let p = req
            .common
            .prepare(&state.model, prompt, logprobs, 16, state.config.n_ctx)?;
        Ok((p, shape))
    })()
    .inspect_err(|_| count_invalid(&state))?;
    let (prepared, shape) = prepared;
    let echo = req.echo.then(|| {
        state
            .model
            .tokenizer
            .decode(&prepared.prompt)
            .unwrap_or_default()
    });
    run(state, prepared, Kind::Completion, shape, echo).await
}

fn count_invalid(state: &AppState) {
    state.engine.metrics.rejected_invalid.fetch_add(1, Relaxed);
}

fn top_logprobs(n: Option<i64>) -> Result<usize, ApiError> {
    match n {
        None => Ok(0),
        Some(k) if (0..=openai::MAX_TOP_LOGPROBS as i64).contains(&k) => Ok(k as usize),
        Some(k) => Err(ApiError::invalid(
            format!(
                "top_logprobs must be between 0 and {}, got {k}",
                openai::MAX_TOP_LOGPROBS
            ),
            "top_logprobs",
        )),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Validates against the engine's rules, queues the choices and answers with JSON or
/// a stream.
async fn run(
    state: Arc<AppState>,
    prepared: Prepared,
    kind: Kind,
    shape: LogprobShape,
    echo: Option<String>,
) -> Result<Response, ApiError> {
    for r in &prepared.requests {
        engine::Scheduler::validate(&state.model, state.config.n_ctx, r)
            .inspect_err(|_| count_invalid(&state))?;
    }
    let n = prepared.requests.len();
    let rx = state.engine.submit(prepared.requests)?;
    state.engine.metrics.requests.fetch_add(1, Relaxed);
    let ctx = ResponseCtx {
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            NEXT_ID.fetch_add(1, Relaxed)
        ),
        created: crate::unix_now(),
        model: state.config.model_name.clone(),
        kind,
        shape,
        prompt_tokens: prepared.prompt.len(),
        n,
        state: state.clone(),
    };
    if prepared.stream {
        let events = sse_stream(ctx, rx, prepared.include_usage);
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        collect(ctx, rx, echo).await
    }
}

struct ResponseCtx {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    shape: LogprobShape,
    prompt_tokens: usize,
    n: usize,
    state: Arc<AppState>,
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration | StopReason::StopString | StopReason::Cancelled => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

fn token_entry(model: &LoadedModel, id: u32, logprob: f32) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("token".into(), json!(model.tokenizer.token_text(id)));
    m.insert("logprob".into(), json!(logprob));
    m.insert("bytes".into(), json!(model.tokenizer.token_bytes(id)));
    m
}

/// One `logprobs.content[]` entry, with entropy (nats) and surprisal (nats) beside
/// OpenAI's fields.
fn content_entry(model: &LoadedModel, ev: &TokenEvent) -> Value {
    let mut m = token_entry(model, ev.id, ev.logprob);
    m.insert("id".into(), json!(ev.id));
    m.insert("entropy".into(), json!(ev.entropy));
    m.insert("surprisal".into(), json!(-ev.logprob));
    m.insert("rank".into(), json!(ev.rank));
    let top: Vec<Value> = ev
        .top
        .iter()
        .map(|&(id, lp)| Value::Object(token_entry(model, id, lp)))
        .collect();
    m.insert("top_logprobs".into(), Value::Array(top));
    Value::Object(m)
}

/// Legacy completions logprobs for a run of tokens, text offsets counted from
/// `offset` (in bytes of the shown text, as llama-server and vLLM count them).
fn legacy_logprobs(model: &LoadedModel, events: &[TokenEvent], mut offset: usize) -> Value {
    let tok = &model.tokenizer;
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    let mut entropy = Vec::new();
    for ev in events {
        tokens.push(json!(tok.token_text(ev.id)));
        lps.push(json!(ev.logprob));
        let top: BTreeMap<String, f32> = ev
            .top
            .iter()
            .map(|&(id, lp)| (tok.token_text(id), lp))
            .collect();
        tops.push(json!(top));
        offsets.push(json!(offset));
        offset += ev.text.len();
        entropy.push(json!(ev.entropy));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": offsets,
        "entropy": entropy,
    })
}

fn tokenwise_stats(g: &Generation, kv_bytes: usize) -> Value {
    json!({
        "prefill_tokens_per_sec": g.stats.prefill_tokens_per_sec(),
        "decode_tokens_per_sec": g.stats.decode_tokens_per_sec(),
        "kv_bytes": kv_bytes,
        "cached_prompt_tokens": g.stats.reused_tokens,
        "stop_reason": g.stats.stop_reason.as_str(),
    })
}

#[derive(Default)]
struct Choice {
    text: String,
    events: Vec<TokenEvent>,
    done: Option<(Generation, usize)>,
}

/// Waits for every choice and answers with one JSON object.
async fn collect(
    ctx: ResponseCtx,
    mut rx: UnboundedReceiver<(usize, Msg)>,
    echo: Option<String>,
) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..ctx.n).map(|_| Choice::default()).collect();
    let mut done = 0;
    while done < ctx.n {
        let Some((i, msg)) = rx.recv().await else {
            return Err(ApiError::unavailable("the engine stopped before finishing"));
        };
        match msg {
            Msg::Token(ev) => {
                choices[i].text.push_str(&ev.text);
                choices[i].events.push(ev);
            }
            Msg::Finished(g, kv) => {
                choices[i].done = Some((g, kv));
                done += 1;
            }
            Msg::Failed(e) => return Err(ApiError::unavailable(e)),
        }
    }
    let model = &ctx.state.model;
    // Prompt tokens taken from the prefix cache (the most any choice reused).
    let cached_tokens = choices
        .iter()
        .filter_map(|c| c.done.as_ref().map(|(g, _)| g.stats.reused_tokens))
        .max()
        .unwrap_or(0);
    let mut completion_tokens = 0;
    let mut out = Vec::new();
    let mut stats = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        let (g, kv_bytes) = c
            .done
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("a choice did not finish"))?;
        completion_tokens += g.tokens.len();
        stats.push(tokenwise_stats(g, *kv_bytes));
        let logprobs = match ctx.shape {
            LogprobShape::None => Value::Null,
            LogprobShape::Content => json!({
                "content": c.events.iter().map(|e| content_entry(model, e)).collect::<Vec<_>>()
            }),
            LogprobShape::Legacy => legacy_logprobs(model, &c.events, 0),
        };
        let finish = finish_reason(g.stats.stop_reason);
        out.push(match ctx.kind {
            Kind::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Kind::Completion => json!({
                "index": i,
                "text": match &echo { Some(p) => format!("{p}{}", c.text), None => c.text.clone() },
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        });
    }
    Ok(Json(json!({
        "id": ctx.id,
        "object": if ctx.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": ctx.created,
        "model": ctx.model,
        "choices": out,
        "usage": {
            "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": ctx.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
        "tokenwise": stats,
    }))
    .into_response())
}

struct StreamState {
    ctx: ResponseCtx,
    rx: UnboundedReceiver<(usize, Msg)>,
    include_usage: bool,
    /// Whether each choice has sent its first chunk (the chat role comes with it).
    started: Vec<bool>,
    /// Bytes of text sent per choice (legacy text offsets).
    offsets: Vec<usize>,
    finished: usize,
    completion_tokens: usize,
    /// Prompt tokens taken from the prefix cache (the most any choice reused).
    cached_tokens: usize,
    /// Events still to send before the stream ends.
    tail: Vec<Event>,
    ended: bool,
}

/// The server-sent events of a streaming response: one chunk per token, a final chunk
/// per choice with its finish reason, optional usage, then `[DONE]`. A failure (e.g.
/// shutdown) sends an `{"error": ...}` event and ends the stream.
fn sse_stream(
    ctx: ResponseCtx,
    rx: UnboundedReceiver<(usize, Msg)>,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let n = ctx.n;
    let st = StreamState {
        ctx,
        rx,
        include_usage,
        started: vec![false; n],
        offsets: vec![0; n],
        finished: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        tail: Vec::new(),
        ended: false,
    };
    stream::unfold(st, |mut st| async move {
        if let Some(ev) = st.tail.pop() {
            return Some((Ok(ev), st));
        }
        if st.ended {
            return None;
        }
        let event = match st.rx.recv().await {
            None => {
                st.ended = true;
                error_event("the engine stopped before finishing")
            }
            Some((i, Msg::Token(ev))) => token_chunk(&mut st, i, &ev),
            Some((i, Msg::Finished(g, kv_bytes))) => {
                st.finished += 1;
                st.completion_tokens += g.tokens.len();
                st.cached_tokens = st.cached_tokens.max(g.stats.reused_tokens);
                let chunk = finish_chunk(&mut st, i, &g, kv_bytes);
                if st.finished == st.ctx.n {
                    st.ended = true;
                    // Sent in reverse order (popped from the back).
                    st.tail.push(Event::default().data("[DONE]"));
                    if st.include_usage {
                        st.tail.push(usage_chunk(&st));
                    }
                }
                chunk
            }
            Some((_, Msg::Failed(e))) => {
                st.ended = true;
                error_event(&e)
            }
        };
        Some((Ok(event), st))
    })
}

fn chunk_base(st: &StreamState, choice: Value) -> Value {
    json!({
        "id": st.ctx.id,
        "object": if st.ctx.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": st.ctx.created,
        "model": st.ctx.model,
        "choices": [choice],
    })
}

fn token_chunk(st: &mut StreamState, i: usize, ev: &TokenEvent) -> Event {
    let model = &st.ctx.state.model;
    let logprobs = match st.ctx.shape {
        LogprobShape::None => Value::Null,
        LogprobShape::Content => json!({"content": [content_entry(model, ev)]}),
        LogprobShape::Legacy => legacy_logprobs(model, std::slice::from_ref(ev), st.offsets[i]),
    };
    st.offsets[i] += ev.text.len();
    let choice = match st.ctx.kind {
        Kind::Chat => {
            let mut delta = json!({"content": ev.text});
            if !st.started[i] {
                delta["role"] = json!("assistant");
            }
            json!({"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": null})
        }
        Kind::Completion => {
            json!({"index": i, "text": ev.text, "logprobs": logprobs, "finish_reason": null})
        }
    };
    st.started[i] = true;
    Event::default().data(chunk_base(st, choice).to_string())
}

fn finish_chunk(st: &mut StreamState, i: usize, g: &Generation, kv_bytes: usize) -> Event {
    let finish = finish_reason(g.stats.stop_reason);
    let choice = match st.ctx.kind {
        Kind::Chat => json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}),
        Kind::Completion => {
            json!({"index": i, "text": "", "logprobs": null, "finish_reason": finish})
        }
    };
    let mut chunk = chunk_base(st, choice);
    chunk["tokenwise"] = tokenwise_stats(g, kv_bytes);
    Event::default().data(chunk.to_string())
}

fn usage_chunk(st: &StreamState) -> Event {
    let mut chunk = chunk_base(st, Value::Null);
    chunk["choices"] = json!([]);
    chunk["usage"] = json!({
        "prompt_tokens": st.ctx.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "total_tokens": st.ctx.prompt_tokens + st.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": st.cached_tokens},
    });
    Event::default().data(chunk.to_string())
}

fn error_event(message: &str) -> Event {
    let e = ApiError::unavailable(message);
    Event::default().data(e.body().to_string())
}
