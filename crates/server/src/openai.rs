//! OpenAI's request shapes, and their translation into engine requests.
//!
//! Unknown top-level fields are ignored, as OpenAI-compatible servers do (clients send
//! fields such as `user` or `stream_options` that change nothing here); the
//! `tokenwise` extension object is strict, so a misspelt technique is an error, not a
//! silent no-op.

use serde::Deserialize;
use serde_json::Value;

use engine::kv::{KvDtype, KvQuant};
use engine::{
    Budget, ConstraintMode, GenerationParams, Grammar, KvOptions, SamplerConfig, SequenceRequest,
    SpeculativeMethod,
};
use model::chat::ChatMessage;
use model::LoadedModel;

use crate::error::ApiError;

/// Most alternatives per token, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most choices per request.
pub const MAX_N: usize = 16;

/// Fields shared by `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct CommonFields {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// The chat API's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Token id (as a string key, OpenAI's shape) to bias in [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub tokenwise: Option<Extension>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Legacy: the number of alternatives (0-5) per token; `true`/`false` is also
    /// accepted, then `top_logprobs` counts the alternatives and the chat shape is
    /// returned.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: CommonFields,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(flatten)]
    pub common: CommonFields,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentField>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// The `tokenwise` extension: sampler stages beyond OpenAI's, KV policy and
/// speculative decoding, chosen per request by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// A named starting point for the sampler: see [`SAMPLER_PRESETS`]; fields set
    /// explicitly override it.
    pub sampler_preset: Option<String>,
    /// The order of sampler stages (llama.cpp's names, e.g. `["top_k", "min_p",
    /// "temperature"]`).
    pub samplers: Option<Vec<String>>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub top_n_sigma: Option<f32>,
    pub epsilon: Option<f32>,
    pub eta: Option<f32>,
    pub xtc_probability: Option<f32>,
    pub xtc_threshold: Option<f32>,
    pub mirostat: Option<u8>,
    pub mirostat_tau: Option<f32>,
    pub mirostat_eta: Option<f32>,
    pub dynatemp_range: Option<f32>,
    pub dynatemp_exponent: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub dry_multiplier: Option<f32>,
    pub dry_base: Option<f32>,
    pub dry_allowed_length: Option<usize>,
    pub kv_policy: Option<String>,
    /// Tokens (a number) or a share of the context (`"25%"`).
    pub kv_budget: Option<Value>,
    pub kv_dtype: Option<String>,
    pub speculative: Option<String>,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: Option<bool>,
    /// How `response_format` is enforced: `mask` (the allowed-token mask every step)
    /// or `awrs` (adaptive weighted rejection sampling: check only drawn tokens).
    pub constraint: Option<String>,
}

/// Named sampler starting points offered by the web page and the API.
pub const SAMPLER_PRESETS: [&str; 7] = [
    "greedy", "default", "min_p", "typical", "mirostat", "top_k", "dynatemp",
];

/// KV storage types a request may pick (`tokenwise.kv_dtype`; int8/int4/mixed are KIVI).
pub const KV_DTYPES: &[&str] = KvDtype::NAMES;

/// Speculative modes a request may pick (`tokenwise.speculative`): the model-free
/// drafters, verified inside the batched step; the output equals plain decoding.
pub const SPECULATIVE_MODES: [&str; 4] = ["none", "lookup", "recycle", "ngram-adaptive"];

fn preset(name: &str) -> Result<SamplerConfig, ApiError> {
    let base = SamplerConfig::default();
    Ok(match name {
        "greedy" => SamplerConfig::greedy(),
        // llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8.
        "default" => SamplerConfig {
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            temperature: 0.8,
            ..base
        },
        "min_p" => SamplerConfig {
            min_p: 0.1,
            temperature: 1.0,
            ..base
        },
        "typical" => SamplerConfig {
            typical_p: 0.9,
            ..base
        },
        "mirostat" => SamplerConfig {
            mirostat: 2,
            mirostat_tau: 5.0,
            ..base
        },
        "top_k" => SamplerConfig { top_k: 40, ..base },
        // Entropy-adaptive temperature: 0.8 +- 0.5 by the normalised entropy.
        "dynatemp" => SamplerConfig {
            temperature: 0.8,
            dynatemp_range: 0.5,
            ..base
        },
        other => {
            return Err(ApiError::invalid(
                format!(
                    "unknown sampler_preset {other:?}; valid: {}",
                    SAMPLER_PRESETS.join(", ")
                ),
                "tokenwise.sampler_preset",
            ))
        }
    })
}

/// What the handlers need from either endpoint, decoded and checked.
pub struct Prepared {
    pub prompt: Vec<u32>,
    /// One request per choice (`n`), seeds `seed + i`.
    pub requests: Vec<SequenceRequest>,
    pub stream: bool,
    pub include_usage: bool,
    /// Alternatives per token, when logprobs were asked for.
    pub logprobs: Option<usize>,
}

impl CommonFields {
    /// Builds the engine requests for `prompt`; `default_max` applies when the client
    /// gives no `max_tokens`.
    pub fn prepare(
        &self,
        model: &LoadedModel,
        prompt: Vec<u32>,
        logprobs: Option<usize>,
        default_max: usize,
        n_ctx: usize,
    ) -> Result<Prepared, ApiError> {
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N as i64).contains(&n) {
            return Err(ApiError::invalid(
                format!("n must be between 1 and {MAX_N}, got {n}"),
                "n",
            ));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m <= 0 => {
                return Err(ApiError::invalid(
                    format!("max_tokens must be at least 1, got {m}"),
                    "max_tokens",
                ))
            }
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
            None => default_max,
        };
        if let Some(lp) = logprobs {
            if lp > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(
                    format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {lp}"),
                    "top_logprobs",
                ));
            }
        }
        let ext = self.tokenwise.as_ref();
        let grammar = self.grammar(model, ext)?;
        let mut sampler = match ext.and_then(|e| e.sampler_preset.as_deref()) {
            Some(name) => preset(name)?,
            None => SamplerConfig::default(),
        };
        if let Some(t) = self.temperature {
            sampler.temperature = t;
        }
        if let Some(p) = self.top_p {
            sampler.top_p = p;
        }
        if let Some(p) = self.frequency_penalty {
            sampler.frequency_penalty = p;
        }
        if let Some(p) = self.presence_penalty {
            sampler.presence_penalty = p;
        }
        if let Some(bias) = &self.logit_bias {
            for (k, v) in bias {
                let id: u32 = k.parse().map_err(|_| {
                    ApiError::invalid(
                        format!("logit_bias key {k:?} is not a token id"),
                        "logit_bias",
                    )
                })?;
                let b = v
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("logit_bias for {k} must be a number in [-100, 100]"),
                            "logit_bias",
                        )
                    })?;
                sampler.logit_bias.push((id, b as f32));
            }
        }
        if let Some(e) = ext {
            apply_extension(&mut sampler, e);
        }
        let kv = kv_options(ext)?;
        let speculative = match ext.and_then(|e| e.speculative.as_deref()) {
            None | Some("none") => None,
            Some(s) => {
                let known = ["skip", "draft"];
                let msg = if known.contains(&s) {
                    format!(
                        "speculative {s:?} needs a second model or a calibration the server \
                         does not load; valid: {}",
                        SPECULATIVE_MODES.join(", ")
                    )
                } else {
                    format!(
                        "unknown speculative mode {s:?}; valid: {}",
                        SPECULATIVE_MODES.join(", ")
                    )
                };
                let method = SPECULATIVE_MODES
                    .contains(&s)
                    .then(|| s.parse::<SpeculativeMethod>().ok())
                    .flatten()
                    .ok_or_else(|| ApiError::invalid(msg, "tokenwise.speculative"))?;
                if kv.as_ref().is_some_and(|k| !k.is_exact()) {
                    return Err(ApiError::invalid(
                        "speculative decoding needs the exact KV cache (no kv_policy other \
                         than full, kv_dtype f16)",
                        "tokenwise.speculative",
                    ));
                }
                Some(method)
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop takes at most 4 non-empty strings",
                "stop",
            ));
        }
        let seed = self.seed.unwrap_or_else(random_seed);
        let stop_at_eog = !ext.and_then(|e| e.ignore_eos).unwrap_or(false);
        let room = n_ctx.saturating_sub(prompt.len());
        let requests = (0..n as u64)
            .map(|i| SequenceRequest {
                prompt: prompt.clone(),
                params: GenerationParams {
                    // Past the context the sequence ends with finish_reason "length".
                    max_tokens: max_tokens.min(room.max(1)),
                    sampler: SamplerConfig {
                        seed: seed.wrapping_add(i),
                        ..sampler.clone()
                    },
                    stop_at_eog,
                    top_logprobs: logprobs.unwrap_or(0),
                    stop: stop.clone(),
                    ..GenerationParams::default()
                },
                kv: kv.clone(),
                grammar: grammar.clone(),
                speculative,
            })
            .collect();
        Ok(Prepared {
            prompt,
            requests,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            logprobs,
        })
    }
}

impl CommonFields {
    /// The grammar of `response_format` (`json_object`, `json_schema`), compiled, and
    /// the enforcement mode; `None` for text.
    fn grammar(
        &self,
        model: &LoadedModel,
        ext: Option<&Extension>,
    ) -> Result<Option<(Grammar, ConstraintMode)>, ApiError> {
        let mode = match ext.and_then(|e| e.constraint.as_deref()) {
            Some(name) => ConstraintMode::from_name(name)
                .map_err(|e| ApiError::invalid(e.to_string(), "tokenwise.constraint"))?,
            None => ConstraintMode::default(),
        };
        let Some(rf) = &self.response_format else {
            return Ok(None);
        };
        let bad = |msg: String| ApiError::invalid(msg, "response_format");
        let grammar = match rf.get("type").and_then(Value::as_str) {
            Some("text") => return Ok(None),
            Some("json_object") => Grammar::json_object(model),
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| {
                        bad("json_schema needs {\"json_schema\": {\"schema\": {...}}}".into())
                    })?;
                Grammar::json_schema(model, schema)
            }
            other => {
                return Err(bad(format!(
                    "unknown response_format type {:?}; valid: text, json_object, json_schema",
                    other.unwrap_or("")
                )))
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        Ok(Some((grammar, mode)))
    }
}

fn apply_extension(s: &mut SamplerConfig, e: &Extension) {
    macro_rules! set {
        ($($field:ident => $target:ident),* $(,)?) => {
            $(if let Some(v) = e.$field.clone() { s.$target = v; })*
        };
    }
    set!(
        samplers => samplers,
        top_k => top_k,
        min_p => min_p,
        typical_p => typical_p,
        top_n_sigma => top_n_sigma,
        epsilon => epsilon,
        eta => eta,
        xtc_probability => xtc_probability,
        xtc_threshold => xtc_threshold,
        mirostat => mirostat,
        mirostat_tau => mirostat_tau,
        mirostat_eta => mirostat_lr,
        dynatemp_range => dynatemp_range,
        dynatemp_exponent => dynatemp_exponent,
        repeat_penalty => repeat_penalty,
        repeat_last_n => repeat_last_n,
        dry_multiplier => dry_multiplier,
        dry_base => dry_base,
        dry_allowed_length => dry_allowed_length,
    );
}

fn kv_options(ext: Option<&Extension>) -> Result<Option<KvOptions>, ApiError> {
    let Some(e) = ext else { return Ok(None) };
    let dtype = match e.kv_dtype.as_deref() {
        None => KvDtype::F16,
        Some(d) => d.parse::<KvDtype>().map_err(|_| {
            ApiError::invalid(
                format!("unknown kv_dtype {d:?}; valid: {}", KV_DTYPES.join(", ")),
                "tokenwise.kv_dtype",
            )
        })?,
    };
    // KIVI's defaults, as on the command line: 32-token residual window, groups of 32.
    let quant = KvQuant {
        dtype,
        ..KvQuant::default()
    };
    let Some(policy) = e.kv_policy.as_deref() else {
        if e.kv_budget.is_some() {
            return Err(ApiError::invalid(
                "kv_budget needs a kv_policy",
                "tokenwise.kv_budget",
            ));
        }
        return Ok((dtype != KvDtype::F16).then(|| KvOptions::new("full", None).with_quant(quant)));
    };
    if !engine::POLICY_NAMES.contains(&policy) {
        return Err(ApiError::invalid(
            format!(
                "unknown kv_policy {policy:?}; valid: {}",
                engine::POLICY_NAMES.join(", ")
            ),
            "tokenwise.kv_policy",
        ));
    }
    let budget = match &e.kv_budget {
        None => None,
        Some(Value::Number(n)) => Some(Budget::Tokens(
            n.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "kv_budget must be a positive token count or a percentage like \"25%\"",
                        "tokenwise.kv_budget",
                    )
                })?,
        )),
        Some(Value::String(s)) => Some(
            s.parse::<Budget>()
                .map_err(|e| ApiError::invalid(format!("kv_budget: {e}"), "tokenwise.kv_budget"))?,
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                "kv_budget must be a positive token count or a percentage like \"25%\"",
                "tokenwise.kv_budget",
            ))
        }
    };
    Ok(Some(KvOptions::new(policy, budget).with_quant(quant)))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process and varies per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The prompt of a completion request as token ids.
pub fn completion_prompt(model: &LoadedModel, p: &PromptField) -> Result<Vec<u32>, ApiError> {
    let text = match p {
        PromptField::Text(t) => t,
        PromptField::Tokens(ids) => return Ok(ids.clone()),
        PromptField::Texts(v) if v.len() == 1 => &v[0],
        PromptField::Texts(_) => {
            return Err(ApiError::invalid(
                "send one prompt per request (use n for several completions)",
                "prompt",
            ))
        }
    };
    model
        .tokenizer
        .encode_prompt(text)
        .map_err(|e| ApiError::invalid(format!("cannot tokenise the prompt: {e}"), "prompt"))
}

/// The chat messages as the template's input.
pub fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(ContentField::Text(t)) => t.clone(),
                Some(ContentField::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(
                                format!(
                                    "content part type {:?} is not supported; only text",
                                    p.kind
                                ),
                                "messages",
                            ));
                        }
                        s.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    s
                }
            };
            Ok(ChatMessage::new(m.role.clone(), content))
        })
        .collect()
}
