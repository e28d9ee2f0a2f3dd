//! Grammar-constrained decoding benchmark: the same JSON-schema prompts decoded with
//! the full-vocabulary mask every step and with adaptive weighted rejection sampling
//! (`engine::constraint`), reporting tokens/s, grammar time per token, AWRS checks per
//! token and fallbacks, and how many outputs parse and validate against their schema.

use std::time::Instant;

use engine::constraint::{self, ConstrainedSampler, ConstraintMode, ConstraintStats, Grammar};
use model::chat::ChatMessage;
use model::LoadedModel;
use sample::{Sampler, SamplerConfig};
use serde_json::{json, Value};

use crate::EvalError;

/// What to run.
#[derive(Clone, Debug)]
pub struct ConstrainedBenchOptions {
    /// Prompts (cycling through [`prompt_set`] when more than it holds).
    pub n_prompts: usize,
    /// Tokens per output at most.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub seed: u64,
    pub modes: Vec<ConstraintMode>,
    pub n_ctx: usize,
}

impl Default for ConstrainedBenchOptions {
    fn default() -> Self {
        ConstrainedBenchOptions {
            n_prompts: 8,
            max_tokens: 96,
            temperature: 0.0,
            seed: 42,
            modes: vec![ConstraintMode::Mask, ConstraintMode::Awrs],
            n_ctx: 1024,
        }
    }
}

/// Totals of one mode over all prompts.
#[derive(Clone, Debug, Default)]
pub struct ModeReport {
    pub mode: &'static str,
    pub prompts: usize,
    pub tokens: usize,
    /// Decode loop seconds (forward passes + grammar + sampling), prefill excluded.
    pub decode_secs: f64,
    /// Outputs that completed the grammar within `max_tokens`.
    pub finished: usize,
    /// Outputs that parse as JSON and validate against the schema.
    pub valid: usize,
    pub stats: ConstraintStats,
    /// Outputs identical to the first mode's for the same prompt.
    pub same_as_first: usize,
}

impl ModeReport {
    pub fn tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 {
            self.tokens as f64 / self.decode_secs
        } else {
            0.0
        }
    }

    /// Milliseconds of grammar work (masks and checks) per token.
    pub fn grammar_ms_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            1e3 * (self.stats.mask_secs + self.stats.check_secs) / self.tokens as f64
        }
    }

    /// Milliseconds per token in `ConstrainedSampler::choose`: grammar, sampler chain
    /// and re-draws, i.e. everything but the forward pass.
    pub fn choose_ms_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            1e3 * self.stats.choose_secs / self.tokens as f64
        }
    }

    pub fn validity_rate(&self) -> f64 {
        if self.prompts == 0 {
            0.0
        } else {
            self.valid as f64 / self.prompts as f64
        }
    }
}

/// Fixed prompts, each with the schema its answer must follow.
pub fn prompt_set() -> Vec<(&'static str, Value)> {
    let s = |n: u64| json!({"type": "string", "maxLength": n});
    vec![
        (
            "Describe a user of a web site as JSON with name, age, role and tags.",
            json!({"type": "object", "properties": {
                "name": s(20), "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "role": {"enum": ["admin", "user", "guest"]},
                "tags": {"type": "array", "items": s(12), "maxItems": 4}},
              "required": ["name", "age", "role", "tags"], "additionalProperties": false}),
        ),
        (
            "Give a famous book as JSON: title, author (first and last name) and year.",
            json!({"type": "object", "properties": {
                "title": s(40),
                "author": {"type": "object", "properties": {"first": s(16), "last": s(16)},
                           "required": ["first", "last"], "additionalProperties": false},
                "year": {"type": "integer", "minimum": 1000, "maximum": 2100}},
              "required": ["title", "author", "year"], "additionalProperties": false}),
        ),
        (
            "Summarise a unit test run as JSON.",
            json!({"type": "object", "properties": {
                "ok": {"type": "boolean"}, "status": {"enum": ["pass", "fail", "skip"]},
                "counts": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9999},
                           "minItems": 1, "maxItems": 4}},
              "required": ["ok", "status", "counts"], "additionalProperties": false}),
        ),
        (
            "Give the weather in Paris today as JSON.",
            json!({"type": "object", "properties": {
                "city": s(20), "temperature_c": {"type": "integer", "minimum": -50, "maximum": 60},
                "sky": {"enum": ["sunny", "cloudy", "rain", "snow"]}, "wind_kmh": {"type": "integer", "minimum": 0, "maximum": 300}},
              "required": ["city", "temperature_c", "sky", "wind_kmh"], "additionalProperties": false}),
        ),
        (
            "List three fruits with their colours as JSON.",
            json!({"type": "object", "properties": {
                "fruits": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                    "type": "object", "properties": {"name": s(16), "colour": s(12)},
                    "required": ["name", "colour"], "additionalProperties": false}}},
              "required": ["fruits"], "additionalProperties": false}),
        ),
        (
            "Describe a city as JSON: its name, country and population.",
            json!({"type": "object", "properties": {
                "name": s(24), "country": s(24), "population": {"type": "integer", "minimum": 0, "maximum": 100000000}},
              "required": ["name", "country", "population"], "additionalProperties": false}),
        ),
        (
            "Write a to-do item as JSON with a title, a priority and whether it is done.",
            json!({"type": "object", "properties": {
                "title": s(32), "priority": {"enum": ["low", "medium", "high"]}, "done": {"type": "boolean"}},
              "required": ["title", "priority", "done"], "additionalProperties": false}),
        ),
        (
            "Give a product from a shop as JSON: name, price in cents, and categories.",
            json!({"type": "object", "properties": {
                "name": s(24), "price_cents": {"type": "integer", "minimum": 0, "maximum": 1000000},
                "categories": {"type": "array", "items": s(12), "minItems": 1, "maxItems": 3}},
              "required": ["name", "price_cents", "categories"], "additionalProperties": false}),
        ),
    ]
}

/// Checks `v` against `schema` for the keywords [`prompt_set`] uses (type, properties,
/// required, additionalProperties, enum, items, min/maxItems, min/maxLength,
/// minimum/maximum). Returns what failed, with its JSON path.
pub fn validate(v: &Value, schema: &Value) -> Result<(), String> {
    validate_at(v, schema, "$")
}

fn validate_at(v: &Value, s: &Value, path: &str) -> Result<(), String> {
    let too = |k: &str, n: f64, below: bool| {
        s.get(k)
            .and_then(Value::as_f64)
            .is_some_and(|m| if below { n < m } else { n > m })
    };
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} is not one of the enum"));
        }
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let o = v.as_object().ok_or(format!("{path}: not an object"))?;
            let props = s.get("properties").and_then(Value::as_object);
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap_or_default();
                if !o.contains_key(r) {
                    return Err(format!("{path}: missing {r}"));
                }
            }
            let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => validate_at(x, ps, &format!("{path}.{k}"))?,
                    None if closed => return Err(format!("{path}: extra property {k}")),
                    None => {}
                }
            }
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{path}: not an array"))?;
            let n = a.len() as f64;
            if too("minItems", n, true) || too("maxItems", n, false) {
                return Err(format!("{path}: {n} items"));
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate_at(x, items, &format!("{path}[{i}]"))?;
                }
            }
        }
        Some("string") => {
            let t = v.as_str().ok_or(format!("{path}: not a string"))?;
            let n = t.chars().count() as f64;
            if too("minLength", n, true) || too("maxLength", n, false) {
                return Err(format!("{path}: length {n}"));
            }
        }
        Some(ty @ ("integer" | "number")) => {
            let x = v.as_f64().ok_or(format!("{path}: not a number"))?;
            if ty == "integer" && !(v.is_i64() || v.is_u64()) {
                return Err(format!("{path}: not an integer"));
            }
            if too("minimum", x, true) || too("maximum", x, false) {
                return Err(format!("{path}: {x} out of range"));
            }
        }
        Some("boolean") => {
            v.as_bool().ok_or(format!("{path}: not a boolean"))?;
        }
        _ => {}
    }
    Ok(())
}

fn engine_err(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

/// The prompt as a chat turn, or as plain text ending in "JSON:" for a model without a
/// chat template.
fn prompt_ids(model: &LoadedModel, text: &str) -> Result<Vec<u32>, EvalError> {
    match engine::chat_prompt_ids(model, &[ChatMessage::new("user", text)], true) {
        Err(engine::EngineError::NoChatTemplate) => {
            Ok(model.tokenizer.encode_prompt(&format!("{text}\nJSON: "))?)
        }
        r => r.map_err(engine_err),
    }
}

/// Runs every prompt in every mode (same session per prompt, so the prompt's cache is
/// computed once), calling `progress` with a line per output.
pub fn bench_constrained(
    model: &LoadedModel,
    opts: &ConstrainedBenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ModeReport>, EvalError> {
    if opts.modes.is_empty() || opts.n_prompts == 0 || opts.max_tokens == 0 {
        return Err(EvalError::Input(
            "need at least one mode, one prompt and one token".into(),
        ));
    }
    let set = prompt_set();
    let mut reports: Vec<ModeReport> = opts
        .modes
        .iter()
        .map(|m| ModeReport {
            mode: m.name(),
            ..ModeReport::default()
        })
        .collect();
    let mut session = engine::Session::new(model, opts.n_ctx).map_err(engine_err)?;
    for i in 0..opts.n_prompts {
        let (text, schema) = &set[i % set.len()];
        let t = Instant::now();
        let grammar = Grammar::json_schema(model, schema).map_err(engine_err)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let prompt = prompt_ids(model, text)?;
        let mut first: Option<Vec<u32>> = None;
        for (mode, report) in opts.modes.iter().zip(reports.iter_mut()) {
            let mut cs = ConstrainedSampler::new(&grammar, *mode).map_err(engine_err)?;
            let mut sampler = Sampler::new(SamplerConfig {
                temperature: opts.temperature,
                seed: opts.seed.wrapping_add(i as u64),
                ..SamplerConfig::default()
            });
            let out = constraint::generate(
                &mut session,
                &prompt,
                &mut cs,
                &mut sampler,
                opts.max_tokens,
            )
            .map_err(engine_err)?;
            let check = serde_json::from_str::<Value>(&out.text)
                .map_err(|e| e.to_string())
                .and_then(|v| validate(&v, schema));
            report.prompts += 1;
            report.tokens += out.tokens.len();
            report.decode_secs += out.decode_secs;
            report.finished += usize::from(out.finished);
            report.valid += usize::from(check.is_ok());
            let s = out.stats;
            let r = &mut report.stats;
            r.steps += s.steps;
            r.checks += s.checks;
            r.rejections += s.rejections;
            r.masks += s.masks;
            r.fallbacks += s.fallbacks;
            r.mask_secs += s.mask_secs;
            r.check_secs += s.check_secs;
            r.choose_secs += s.choose_secs;
            match &first {
                None => {
                    first = Some(out.tokens.clone());
                    report.same_as_first += 1;
                }
                Some(f) => report.same_as_first += usize::from(*f == out.tokens),
            }
            progress(&format!(
                "prompt {} {:>4}: {} tokens, {:.1} tok/s, {:.2} checks/token, schema compiled in {:.1} ms, {}: {}",
                i + 1,
                mode.name(),
                out.tokens.len(),
                out.tokens.len() as f64 / out.decode_secs.max(1e-9),
                s.checks_per_token(),
                compile_ms,
                match &check {
                    Ok(()) => "valid".to_string(),
                    Err(e) => format!("INVALID ({e})"),
                },
                out.text
            ));
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_catches_violations() {
        for (_, schema) in prompt_set() {
            assert!(schema.is_object());
        }
        let schema = &prompt_set()[0].1;
        let good = json!({"name": "Ann", "age": 30, "role": "user", "tags": []});
        assert!(validate(&good, schema).is_ok());
        let bad = json!({"name": "Ann", "age": 300, "role": "user", "tags": []});
        assert!(validate(&bad, schema).unwrap_err().contains("age"));
        let bad = json!({"name": "Ann", "age": 3, "role": "root", "tags": []});
        assert!(validate(&bad, schema).is_err());
        let bad = json!({"name": "Ann", "age": 3, "role": "user"});
        assert!(validate(&bad, schema).unwrap_err().contains("missing tags"));
    }
}
