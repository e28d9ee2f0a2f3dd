//! Grammar-constrained decoding: JSON that parses and validates, mask and AWRS
//! agreeing (greedy: identical output; sampled: the same distribution, checked by
//! chi-square on fixed logits).

mod common;

use std::sync::Arc;

use engine::constraint::{
    self, AwrsConfig, ConstrainedSampler, ConstraintMode, Grammar, GrammarEnv,
};
use model::chat::ChatMessage;
use sample::{Sampler, SamplerConfig};
use serde_json::{json, Value};

// ---------- a small JSON-schema checker (the subset the schemas below use) ----------

fn validate(v: &Value, s: &Value, path: &str) -> Result<(), String> {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} not in enum"));
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
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => validate(x, ps, &format!("{path}.{k}"))?,
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{path}: extra property {k}"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{path}: not an array"))?;
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return Err(format!("{path}: {n} items"));
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate(x, items, &format!("{path}[{i}]"))?;
                }
            }
        }
        Some("string") => {
            let t = v.as_str().ok_or(format!("{path}: not a string"))?;
            let n = t.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return Err(format!("{path}: length {n}"));
            }
        }
        Some("integer") | Some("number") => {
            let x = v.as_f64().ok_or(format!("{path}: not a number"))?;
            if s.get("type") == Some(&json!("integer")) && !(v.is_i64() || v.is_u64()) {
                return Err(format!("{path}: not an integer"));
            }
            if s.get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x < m)
                || s.get("maximum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| x > m)
            {
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

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Describe a user of a web site as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "role": {"enum": ["admin", "user", "guest"]},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}
                },
                "required": ["name", "age", "role", "tags"],
                "additionalProperties": false
            }),
        ),
        (
            "Give a book as JSON with its title, author and year.",
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 24},
                    "author": {
                        "type": "object",
                        "properties": {
                            "first": {"type": "string", "maxLength": 12},
                            "last": {"type": "string", "maxLength": 12}
                        },
                        "required": ["first", "last"],
                        "additionalProperties": false
                    },
                    "year": {"type": "integer", "minimum": 1000, "maximum": 2100}
                },
                "required": ["title", "author", "year"],
                "additionalProperties": false
            }),
        ),
        (
            "Report a test run as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "ok": {"type": "boolean"},
                    "status": {"enum": ["pass", "fail", "skip"]},
                    "counts": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
                               "minItems": 1, "maxItems": 4}
                },
                "required": ["ok", "status", "counts"],
                "additionalProperties": false
            }),
        ),
    ]
}

fn prompt(m: &model::LoadedModel, text: &str) -> Vec<u32> {
    engine::chat_prompt_ids(m, &[ChatMessage::new("user", text)], true).unwrap()
}

fn run(
    m: &model::LoadedModel,
    grammar: &Grammar,
    mode: ConstraintMode,
    prompt: &[u32],
    config: SamplerConfig,
) -> constraint::ConstrainedOutput {
    let mut session = engine::Session::new(m, 512).unwrap();
    let mut cs = ConstrainedSampler::new(grammar, mode).unwrap();
    let mut sampler = Sampler::new(config);
    constraint::generate(&mut session, prompt, &mut cs, &mut sampler, 64).unwrap()
}

#[test]
fn json_schema_outputs_validate_and_modes_agree() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    for (i, (text, schema)) in schemas().into_iter().enumerate() {
        let grammar = Grammar::json_schema(&m, &schema).unwrap();
        let p = prompt(&m, text);
        let greedy_mask = run(
            &m,
            &grammar,
            ConstraintMode::Mask,
            &p,
            SamplerConfig::greedy(),
        );
        let greedy_awrs = run(
            &m,
            &grammar,
            ConstraintMode::Awrs,
            &p,
            SamplerConfig::greedy(),
        );
        assert_eq!(
            greedy_mask.tokens, greedy_awrs.tokens,
            "greedy mask and AWRS differ:\n{}\n{}",
            greedy_mask.text, greedy_awrs.text
        );
        // AWRS checks far fewer tokens than the vocabulary per step.
        let st = greedy_awrs.stats;
        assert!(st.checks >= st.steps && st.masks <= st.steps, "{st:?}");
        let sampled = SamplerConfig {
            temperature: 0.8,
            seed: 7 + i as u64,
            ..SamplerConfig::default()
        };
        let outs = [
            ("greedy", greedy_mask),
            (
                "sampled mask",
                run(&m, &grammar, ConstraintMode::Mask, &p, sampled.clone()),
            ),
            (
                "sampled awrs",
                run(&m, &grammar, ConstraintMode::Awrs, &p, sampled),
            ),
        ];
        for (what, out) in outs {
            eprintln!("{what} {:?}: {}", out.stats, out.text);
            assert!(
                out.finished,
                "{what} did not finish in 64 tokens: {}",
                out.text
            );
            let v: Value = serde_json::from_str(&out.text)
                .unwrap_or_else(|e| panic!("{what}: {e}: {}", out.text));
            validate(&v, &schema, "$").unwrap_or_else(|e| panic!("{what}: {e}: {}", out.text));
        }
    }
}

#[test]
fn json_object_and_bad_schema() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    let grammar = Grammar::json_object(&m).unwrap();
    let p = prompt(
        &m,
        "Give a JSON object with the keys a and b, both numbers.",
    );
    for mode in [ConstraintMode::Mask, ConstraintMode::Awrs] {
        let out = run(&m, &grammar, mode, &p, SamplerConfig::greedy());
        if out.finished {
            let v: Value = serde_json::from_str(&out.text).unwrap();
            assert!(v.is_object(), "{}", out.text);
        } else {
            assert!(out.text.starts_with('{'), "{}", out.text);
        }
    }
    // A bad schema is a one-line error, not a panic.
    let bad = json!({"type": "object", "properties": {"x": {"type": "strin"}}});
    let err = Grammar::json_schema(&m, &bad).unwrap_err().to_string();
    assert!(
        err.starts_with("invalid setting: grammar:") && !err.contains('\n'),
        "{err}"
    );
    // The token environment is built once per vocabulary.
    assert!(Arc::ptr_eq(
        &GrammarEnv::for_model(&m).unwrap(),
        &GrammarEnv::for_model(&m).unwrap()
    ));
}

// ---------- exactness of AWRS on fixed logits ----------

/// A tiny vocabulary: 8 one-byte tokens, 4 two-byte ones, and an EOS.
fn tiny_env() -> Arc<GrammarEnv> {
    let mut tokens: Vec<Vec<u8>> = [
        "a", "b", "c", "d", "e", "f", "g", "h", "ab", "bd", "ce", "hh",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    tokens.push(b"\xFF<eos>".to_vec());
    Arc::new(GrammarEnv::from_tokens(tokens, &[12]).unwrap())
}

/// Frequencies of the first token over `n` fresh sequences, and the total stats.
fn first_token_counts(
    grammar: &Grammar,
    mode: ConstraintMode,
    logits: &[f32],
    config: SamplerConfig,
    gumbel: bool,
    n: usize,
) -> (Vec<usize>, constraint::ConstraintStats) {
    let mut sampler = Sampler::new(config);
    if gumbel {
        sampler = sampler.with_gumbel_max();
    }
    let mut counts = vec![0; logits.len()];
    let mut work = Vec::new();
    let mut total = constraint::ConstraintStats::default();
    for _ in 0..n {
        let mut cs = ConstrainedSampler::new(grammar, mode)
            .unwrap()
            .with_awrs_config(AwrsConfig {
                max_rejections: 4,
                min_remaining_mass: 1e-3,
            });
        let t = cs.choose(logits, &mut work, &mut sampler, &[]).unwrap();
        counts[t as usize] += 1;
        let s = cs.stats();
        total.steps += s.steps;
        total.checks += s.checks;
        total.fallbacks += s.fallbacks;
        total.masks += s.masks;
    }
    (counts, total)
}

/// Pearson chi-square statistic of `counts` against probabilities `p` (cells with
/// p = 0 must be empty).
fn chi_square(counts: &[usize], p: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let mut x2 = 0.0;
    for (&c, &q) in counts.iter().zip(p) {
        if q == 0.0 {
            assert_eq!(c, 0, "a token outside the allowed set was drawn");
        } else {
            let e = q * n as f64;
            x2 += (c as f64 - e).powi(2) / e;
        }
    }
    x2
}

fn masked_softmax(logits: &[f32], allowed: &[u32], temperature: f32) -> Vec<f64> {
    let mut p = vec![0.0; logits.len()];
    for &t in allowed {
        p[t as usize] = (f64::from(logits[t as usize]) / f64::from(temperature)).exp();
    }
    let z: f64 = p.iter().sum();
    p.iter().map(|x| x / z).collect()
}

#[test]
fn awrs_samples_the_masked_distribution() {
    let env = tiny_env();
    // First token: b, d, or bd (then c / e / ...): allowed = {b, d, bd}.
    let grammar = Grammar::regex_in(env, "(b|d)+(c|e)").unwrap();
    let allowed = ConstrainedSampler::new(&grammar, ConstraintMode::Mask)
        .unwrap()
        .allowed_tokens()
        .unwrap();
    assert_eq!(allowed, vec![1, 3, 9]);
    // Case 1: the allowed tokens hold a fair share of the mass (rejection usually
    // succeeds). Case 2: they hold ~0.2% of it (rejections run out, the mask fallback
    // decides): both must be exact.
    let cases: [(&str, [f32; 13]); 2] = [
        (
            "common",
            [
                2.0, 1.5, 1.0, 0.5, 0.0, -0.5, 0.3, 0.1, 1.2, 0.2, -1.0, 0.7, -2.0,
            ],
        ),
        (
            "rare",
            [
                6.0, 0.0, 5.5, -0.5, 5.0, 4.5, 4.0, 3.5, 6.0, 0.7, 5.0, 5.5, -9.0,
            ],
        ),
    ];
    let temperature = 0.9;
    let n = 12_000;
    for (name, logits) in cases {
        let p = masked_softmax(&logits, &allowed, temperature);
        for gumbel in [false, true] {
            let config = SamplerConfig {
                temperature,
                seed: 11,
                ..SamplerConfig::default()
            };
            let (counts, st) =
                first_token_counts(&grammar, ConstraintMode::Awrs, &logits, config, gumbel, n);
            // 2 degrees of freedom: P(X² > 13.8) = 0.001.
            let x2 = chi_square(&counts, &p);
            assert!(
                x2 < 13.8,
                "{name} gumbel={gumbel}: X²={x2} {counts:?} vs {p:?}"
            );
            if name == "rare" {
                assert!(st.fallbacks > n / 2, "{st:?}");
            } else {
                assert!(st.masks < n / 4 && st.checks > n, "{st:?}");
            }
        }
        // Mask mode samples the same distribution.
        let config = SamplerConfig {
            temperature,
            seed: 5,
            ..SamplerConfig::default()
        };
        let (counts, _) =
            first_token_counts(&grammar, ConstraintMode::Mask, &logits, config, false, n);
        let x2 = chi_square(&counts, &p);
        assert!(x2 < 13.8, "{name} mask: X²={x2} {counts:?} vs {p:?}");
        // Greedy: the best allowed token, in both modes.
        for mode in [ConstraintMode::Mask, ConstraintMode::Awrs] {
            let (counts, _) =
                first_token_counts(&grammar, mode, &logits, SamplerConfig::greedy(), false, 3);
            let best = *allowed
                .iter()
                .max_by(|&&a, &&b| {
                    logits[a as usize]
                        .total_cmp(&logits[b as usize])
                        .then(b.cmp(&a))
                })
                .unwrap();
            assert_eq!(counts[best as usize], 3, "{name} {mode:?}");
        }
    }
}

#[test]
fn awrs_with_truncating_chain_stays_valid() {
    // top-k 2 keeps only disallowed tokens: AWRS must fall back and still obey.
    let grammar = Grammar::regex_in(tiny_env(), "(b|d)+(c|e)").unwrap();
    let logits = [
        6.0, 0.0, 5.5, -0.5, 5.0, 4.5, 4.0, 3.5, 6.0, 0.7, 5.0, 5.5, -9.0,
    ];
    let config = SamplerConfig {
        top_k: 2,
        seed: 3,
        ..SamplerConfig::default()
    };
    let (counts, st) =
        first_token_counts(&grammar, ConstraintMode::Awrs, &logits, config, false, 200);
    assert_eq!(counts[1] + counts[3] + counts[9], 200, "{counts:?}");
    assert_eq!(st.fallbacks, 200);
}
