//! The HTTP API against a real server on a free loopback port with SmolLM2: shapes,
//! errors and their status codes, batching, disconnects, queue limits, shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use server::{AppState, ServerConfig};
use tokio::sync::oneshot;

fn model_path() -> PathBuf {
    let root = match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tokenwise")
        }
    };
    let p = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch_models.py --all-test` (or `make models`)",
        p.display()
    );
    p
}

struct TestServer {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start(config: ServerConfig) -> TestServer {
        let model = model::load_gguf(&model_path(), 2).expect("model loads");
        let state = AppState::new(Arc::new(model), config).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_until(state, listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            stop: Some(stop),
            task,
        }
    }

    fn config() -> ServerConfig {
        ServerConfig {
            model_name: "smollm2".into(),
            parallel: 8,
            n_ctx: 512,
            max_queue: 16,
            ..ServerConfig::default()
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("tokenwise_{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops in time")
            .expect("join")
            .expect("server ran");
    }
}

fn greedy_completion(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_shapes() {
    let s = TestServer::start(TestServer::config()).await;

    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "smollm2");

    // Completion with legacy logprobs.
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 3}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().expect("tokens").len(), 6);
    assert_eq!(lp["top_logprobs"][0].as_object().expect("top").len(), 3);
    let text: String = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("str"))
        .collect();
    assert_eq!(choice["text"], text.as_str());
    assert_eq!(r["usage"]["completion_tokens"], 6);
    assert_eq!(
        r["usage"]["total_tokens"].as_u64(),
        Some(r["usage"]["prompt_tokens"].as_u64().expect("prompt") + 6)
    );

    // Chat with logprobs in the chat shape, entropy beside them.
    let (st, r) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "What is 2+2?"}],
                   "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let content = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert!(!content.is_empty());
    for e in content {
        assert!(e["logprob"].as_f64().expect("logprob") <= 0.0);
        assert!(e["entropy"].as_f64().expect("entropy") >= 0.0);
        assert_eq!(e["top_logprobs"].as_array().expect("top").len(), 2);
        assert!(e["bytes"].is_array());
    }

    // n > 1 with sampling: distinct seeds per choice.
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 12, "n": 3, "seed": 7, "temperature": 1.0}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let texts: Vec<&str> = r["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");
    // The same seed gives the same choices.
    let (_, again) = s
        .post(
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 12, "n": 3, "seed": 7, "temperature": 1.0}),
        )
        .await;
    assert_eq!(again["choices"], r["choices"]);

    // A stop sequence ends generation before it and is not shown.
    let (_, free) = s
        .post("/v1/completions", greedy_completion("1, 2, 3, 4,", 12))
        .await;
    let free_text = free["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let stop = free_text
        .trim_start()
        .chars()
        .next()
        .expect("non-empty")
        .to_string();
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": [stop.clone()]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(!r["choices"][0]["text"]
        .as_str()
        .expect("text")
        .contains(&stop));

    // JSON-schema output, enforced both ways, parses and has the required fields.
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "population": {"type": "integer"},
            "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]}
        },
        "required": ["city", "population", "continent"],
        "additionalProperties": false
    });
    let mut outputs = Vec::new();
    for mode in ["mask", "awrs"] {
        let (st, r) = s
            .post(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "Describe Paris as JSON."}],
                       "max_tokens": 80, "temperature": 0,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
                       "tokenwise": {"constraint": mode}}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(v["city"].is_string() && v["population"].is_i64(), "{text}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        outputs.push(text);
    }
    assert_eq!(outputs[0], outputs[1], "greedy mask and AWRS agree");

    // tokenize / detokenize round trip.
    let (st, t) = s.post("/tokenize", json!({"content": "Hello world"})).await;
    assert_eq!(st, 200);
    let (_, d) = s.post("/detokenize", json!({"tokens": t["tokens"]})).await;
    assert_eq!(d["content"], "Hello world");

    // Per-request KV policy.
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
                   "tokenwise": {"kv_policy": "window", "kv_budget": 16}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let kv = r["tokenwise"][0]["kv_bytes"].as_u64().expect("kv_bytes");
    assert!(kv > 0, "{r}");

    // Per-request KV dtype: a 300-token prompt held in int4 (KIVI, 32-token f16
    // residual) takes less memory than in f16, alone or under an eviction policy.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(33);
    let mut bytes = Vec::new();
    for ext in [
        json!({}),
        json!({"kv_dtype": "int8"}),
        json!({"kv_dtype": "int4"}),
        json!({"kv_dtype": "int4", "kv_policy": "window", "kv_budget": 128}),
    ] {
        let (st, r) = s
            .post(
                "/v1/completions",
                json!({"prompt": long, "max_tokens": 2, "temperature": 0, "tokenwise": ext}),
            )
            .await;
        assert_eq!(st, 200, "{ext} -> {r}");
        bytes.push(r["tokenwise"][0]["kv_bytes"].as_u64().expect("kv_bytes"));
    }
    assert!(
        bytes[0] > bytes[1] && bytes[1] > bytes[2] && bytes[2] > bytes[3],
        "KV bytes f16 > int8 > int4 > int4 under a 128-token window: {bytes:?}"
    );

    // Per-request speculative decoding: the same text and logprobs as plain decoding,
    // with drafts verified and accepted (counted in /metrics).
    let copy = "Repeat: red, green, blue, yellow, purple, orange. Again: red, green, blue, yellow, purple, orange. Again:";
    let mut outs = Vec::new();
    for spec in ["none", "lookup", "recycle", "ngram-adaptive"] {
        let (st, r) = s
            .post(
                "/v1/completions",
                json!({"prompt": copy, "max_tokens": 24, "temperature": 0, "logprobs": 2,
                       "tokenwise": {"speculative": spec}}),
            )
            .await;
        assert_eq!(st, 200, "{spec} -> {r}");
        outs.push(r["choices"][0].clone());
    }
    for o in &outs[1..] {
        assert_eq!(o["text"], outs[0]["text"]);
        assert_eq!(o["logprobs"], outs[0]["logprobs"]);
    }
    assert!(s.metric("speculative_drafted_tokens_total").await > 0.0);
    assert!(s.metric("speculative_accepted_tokens_total").await > 0.0);

    // Prefix cache: the same long prompt again is served from the finished sequence's
    // cache (usage.prompt_tokens_details.cached_tokens), with the same output.
    let prompt = "Summarise in one line: ".to_string()
        + &"the river runs to the sea and the sea returns the rain; ".repeat(4);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (st, r) = s
            .post(
                "/v1/completions",
                json!({"prompt": prompt, "max_tokens": 6, "temperature": 0}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        seen.push((
            r["choices"][0]["text"].clone(),
            r["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached_tokens"),
            r["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens"),
        ));
    }
    assert_eq!(seen[0].0, seen[1].0);
    assert_eq!(
        seen[1].1,
        seen[1].2 - 1,
        "all but the last prompt token cached: {seen:?}"
    );
    assert!(s.metric("prompt_tokens_cached_total").await >= seen[1].1 as f64);

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_status_codes_and_openai_shape() {
    let s = TestServer::start(TestServer::config()).await;
    let cases = [
        json!({"prompt": "x", "max_tokens": 0}),
        json!({"prompt": "x", "max_tokens": -3}),
        json!({"prompt": "x", "max_tokens": "many"}),
        json!({"prompt": 12}),
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "logprobs": 9}),
        json!({"prompt": "x", "temperature": -1}),
        json!({"prompt": "word ".repeat(600)}),
        json!({"prompt": "x", "tokenwise": {"kv_policy": "nope"}}),
        json!({"prompt": "x", "tokenwise": {"kv_dtype": "int3"}}),
        json!({"prompt": "x", "tokenwise": {"no_such_field": 1}}),
        json!({"prompt": "x", "tokenwise": {"speculative": "warp"}}),
        json!({"prompt": "x", "tokenwise": {"speculative": "draft"}}),
        json!({"prompt": "x", "tokenwise": {"speculative": "lookup", "kv_policy": "window", "kv_budget": 64}}),
        json!({"prompt": "x", "response_format": {"type": "xml"}}),
        json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}),
        json!({"prompt": "x", "response_format": {"type": "json_object"}, "tokenwise": {"constraint": "maybe"}}),
        json!({"prompt": [999999]}),
    ];
    for body in cases {
        let (st, r) = s.post("/v1/completions", body.clone()).await;
        assert_eq!(st, 400, "{body} -> {r}");
        let msg = r["error"]["message"].as_str().expect("message");
        assert!(!msg.is_empty());
        assert_eq!(r["error"]["type"], "invalid_request_error");
    }
    let (_, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "x", "tokenwise": {"kv_policy": "nope"}}),
        )
        .await;
    let msg = r["error"]["message"].as_str().expect("message");
    assert!(msg.contains("h2o") && msg.contains("tova"), "{msg}");

    let (st, _) = s
        .post("/v1/chat/completions", json!({"messages": []}))
        .await;
    assert_eq!(st, 400);

    // Malformed JSON and invalid UTF-8.
    for raw in [
        b"{bad json".to_vec(),
        b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
    ] {
        let r = s
            .client
            .post(format!("{}/v1/completions", s.base))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.expect("json error");
        assert!(v["error"]["message"].is_string());
    }
    let r = s
        .client
        .get(format!("{}/v1/nothing", s.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 404);
    // Body size limit.
    let big = "a".repeat(5 << 20);
    let r = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"prompt": big}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);
    assert!(s.metric("requests_rejected_invalid_total").await >= 16.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_queue_limit() {
    let s = TestServer::start(ServerConfig {
        api_key: Some("sesame".into()),
        parallel: 1,
        max_queue: 0,
        ..TestServer::config()
    })
    .await;
    let (st, r) = s.post("/v1/completions", greedy_completion("Hi", 2)).await;
    assert_eq!(st, 401, "{r}");
    let health = s
        .client
        .get(format!("{}/health", s.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);

    let authed = |body: Value| {
        s.client
            .post(format!("{}/v1/completions", s.base))
            .bearer_auth("sesame")
            .json(&body)
            .send()
    };
    // One long stream occupies the only sequence; the next request gets 429.
    let long = authed(json!({"prompt": "Tell me a long story.", "max_tokens": 200,
                             "temperature": 0, "stream": true, "tokenwise": {"ignore_eos": true}}))
    .await
    .expect("stream");
    assert_eq!(long.status().as_u16(), 200);
    let mut body = long.bytes_stream();
    body.next().await.expect("first chunk").expect("bytes");
    let busy = authed(greedy_completion("Hi", 2)).await.expect("send");
    assert_eq!(busy.status().as_u16(), 429);
    assert_eq!(
        busy.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    drop(body);
    // Once the stream is dropped its place frees up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = authed(greedy_completion("Hi", 2)).await.expect("send");
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

/// Greedy outputs of 8 concurrent requests equal the same requests one at a time
/// (batched rows are bit-identical, so no tie tolerance is needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_changes_nothing() {
    let s = TestServer::start(TestServer::config()).await;
    let prompts = [
        "The capital of France is",
        "def add(a, b):",
        "Once upon a time",
        "The three primary colours are",
        "import os\nimport sys\n",
        "Water boils at",
        "My favourite book is",
        "Rust is a programming language that",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        let (st, r) = s.post("/v1/completions", greedy_completion(p, 24)).await;
        assert_eq!(st, 200);
        alone.push(r["choices"][0]["text"].clone());
    }
    let together = futures_util::future::join_all(
        prompts
            .iter()
            .map(|p| s.post("/v1/completions", greedy_completion(p, 24))),
    )
    .await;
    for ((st, r), want) in together.iter().zip(&alone) {
        assert_eq!(*st, 200);
        assert_eq!(&r["choices"][0]["text"], want);
    }
    s.stop().await;
}

/// 8 streams opened and dropped mid-generation leave no active sequence and no KV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_free_sequences_and_kv() {
    let s = TestServer::start(TestServer::config()).await;
    let mut streams = Vec::new();
    for i in 0..8 {
        let r = s
            .client
            .post(format!("{}/v1/chat/completions", s.base))
            .json(
                &json!({"messages": [{"role": "user", "content": format!("Count to {}", 100 + i)}],
                          "max_tokens": 400, "stream": true, "tokenwise": {"ignore_eos": true}}),
            )
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status().as_u16(), 200);
        let mut body = r.bytes_stream();
        body.next().await.expect("a chunk").expect("bytes");
        streams.push(body);
    }
    assert!(s.metric("active_sequences").await >= 1.0);
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = s.metric("active_sequences").await;
        let kv = s.metric("kv_bytes").await;
        if active == 0.0 && kv == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after disconnects: {active} active, {kv} KV bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

/// Shutdown ends an in-flight stream with an error event; the server then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_an_error_event() {
    let s = TestServer::start(TestServer::config()).await;
    let r = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(
            &json!({"prompt": "Once upon a time", "max_tokens": 400, "stream": true,
                      "tokenwise": {"ignore_eos": true}}),
        )
        .send()
        .await
        .expect("stream");
    let mut body = r.bytes_stream();
    body.next().await.expect("a chunk").expect("bytes");
    let TestServer {
        stop,
        task,
        client: _,
        base: _,
    } = s;
    let _ = stop.expect("stop").send(());
    let mut rest = String::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the stream ends");
    assert!(rest.contains("\"error\""), "{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("ran");
}
