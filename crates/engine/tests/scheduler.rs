//! Continuous batching: concurrent sequences give exactly what each gives alone.

mod common;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use engine::{
    Generation, GenerationParams, KvOptions, SamplerConfig, Scheduler, SchedulerConfig,
    SequenceEvent, SequenceRequest, Session,
};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colours are",
    "Write a haiku about autumn leaves:",
    "import numpy as np\n\ndef normalize(x):",
    "Question: What is the boiling point of water at sea level?\nAnswer:",
    "A list of fruits: apple, banana,",
];

/// Everything a sink saw: token ids and texts, and how the sequence ended.
#[derive(Default)]
struct Seen {
    ids: Vec<u32>,
    text: String,
    finished: Option<Generation>,
    failed: Option<String>,
}

fn sink(seen: Arc<Mutex<Seen>>, stop_after: Option<usize>) -> engine::EventSink {
    Box::new(move |ev| {
        let mut s = seen.lock().expect("lock");
        match ev {
            SequenceEvent::Token(t) => {
                s.ids.push(t.id);
                s.text.push_str(&t.text);
                if stop_after.is_some_and(|n| s.ids.len() >= n) {
                    return ControlFlow::Break(());
                }
            }
            SequenceEvent::Finished { generation, .. } => s.finished = Some(generation.clone()),
            SequenceEvent::Failed(e) => s.failed = Some(e.to_string()),
        }
        ControlFlow::Continue(())
    })
}

fn run_all(sched: &mut Scheduler<'_>) -> usize {
    let mut steps = 0;
    while sched.active() > 0 {
        sched.step();
        steps += 1;
        assert!(steps < 10_000, "the scheduler does not finish");
    }
    steps
}

/// 8 greedy requests admitted together (prefill chunks shared over steps, decodes
/// batched) equal the same requests run one at a time with `Session::generate`.
#[test]
fn concurrent_greedy_equals_sequential() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    let params = GenerationParams {
        max_tokens: 24,
        sampler: SamplerConfig::greedy(),
        top_logprobs: 2,
        ..GenerationParams::default()
    };
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| m.tokenizer.encode_prompt(p).expect("encodes"))
        .collect();

    let mut sched = Scheduler::new(
        &m,
        SchedulerConfig {
            max_sequences: 8,
            n_ctx: 256,
            prefill_chunk: 16,
            prefix_cache: 0,
        },
    )
    .expect("scheduler");
    let seen: Vec<Arc<Mutex<Seen>>> = prompts.iter().map(|_| Arc::default()).collect();
    for (p, s) in prompts.iter().zip(&seen) {
        let req = SequenceRequest {
            prompt: p.clone(),
            params: params.clone(),
            kv: None,
            grammar: None,
            speculative: None,
        };
        sched.admit(req, sink(s.clone(), None)).expect("admitted");
    }
    assert!(!sched.has_room());
    let steps = run_all(&mut sched);
    assert_eq!(sched.kv_bytes(), 0, "finished sequences free their caches");

    for (k, (p, s)) in prompts.iter().zip(&seen).enumerate() {
        let mut session = Session::new(&m, 256).expect("session");
        let alone = session
            .generate(p, &params, |_| ControlFlow::Continue(()))
            .expect("generates");
        let s = s.lock().expect("lock");
        assert!(s.failed.is_none(), "{:?}", s.failed);
        let fin = s.finished.as_ref().expect("finished");
        assert_eq!(s.ids, alone.tokens, "prompt {k}: batched tokens differ");
        assert_eq!(fin.tokens, alone.tokens);
        assert_eq!(s.text, alone.text, "prompt {k}");
        assert_eq!(fin.text, alone.text);
        assert_eq!(fin.stats.stop_reason, alone.stats.stop_reason);
    }
    println!("8 sequences in {steps} steps");
}

/// A sink that breaks ends its sequence at once; the others go on; requests admitted
/// while others run are served too.
#[test]
fn cancelled_sequences_free_their_cache_and_late_requests_join() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    let mut sched = Scheduler::new(
        &m,
        SchedulerConfig {
            max_sequences: 3,
            n_ctx: 128,
            prefill_chunk: 64,
            prefix_cache: 0,
        },
    )
    .expect("scheduler");
    let params = GenerationParams {
        max_tokens: 12,
        stop_at_eog: false,
        ..GenerationParams::default()
    };
    let ids = |s: &str| m.tokenizer.encode_prompt(s).expect("encodes");
    let a = Arc::<Mutex<Seen>>::default();
    let b = Arc::<Mutex<Seen>>::default();
    let c = Arc::<Mutex<Seen>>::default();
    let req = |p: &str| SequenceRequest {
        prompt: ids(p),
        params: params.clone(),
        kv: None,
        grammar: None,
        speculative: None,
    };
    sched
        .admit(req(PROMPTS[0]), sink(a.clone(), Some(3)))
        .expect("a");
    sched
        .admit(req(PROMPTS[1]), sink(b.clone(), None))
        .expect("b");
    sched.step();
    sched.step();
    assert!(sched.kv_bytes() > 0);
    // Joins while the others decode.
    sched
        .admit(req(PROMPTS[2]), sink(c.clone(), None))
        .expect("c");
    run_all(&mut sched);
    assert_eq!(sched.active(), 0);
    assert_eq!(sched.kv_bytes(), 0);
    let a = a.lock().expect("lock");
    assert_eq!(a.ids.len(), 3, "a stopped after its sink broke");
    assert!(a.finished.is_none() && a.failed.is_none());
    for s in [&b, &c] {
        let s = s.lock().expect("lock");
        assert_eq!(s.ids.len(), 12);
        assert!(s.finished.is_some());
    }
}

/// Per-request KV policies: a windowed sequence beside an exact one; the exact one
/// still equals plain generation, and invalid requests are refused at admission.
#[test]
fn per_sequence_kv_policy_and_validation() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    let mut sched = Scheduler::new(
        &m,
        SchedulerConfig {
            max_sequences: 2,
            n_ctx: 128,
            prefill_chunk: 32,
            prefix_cache: 0,
        },
    )
    .expect("scheduler");
    let params = GenerationParams {
        max_tokens: 16,
        ..GenerationParams::default()
    };
    let prompt = m.tokenizer.encode_prompt(PROMPTS[2]).expect("encodes");
    let exact = Arc::<Mutex<Seen>>::default();
    let windowed = Arc::<Mutex<Seen>>::default();
    sched
        .admit(
            SequenceRequest {
                prompt: prompt.clone(),
                params: params.clone(),
                kv: None,
                grammar: None,
                speculative: None,
            },
            sink(exact.clone(), None),
        )
        .expect("exact");
    sched
        .admit(
            SequenceRequest {
                prompt: prompt.clone(),
                params: params.clone(),
                kv: Some(KvOptions::new("tova", Some(engine::Budget::Tokens(8)))),
                grammar: None,
                speculative: None,
            },
            sink(windowed.clone(), None),
        )
        .expect("tova");
    // Full: a third request is refused, not queued.
    let refused = sched.admit(
        SequenceRequest {
            prompt: prompt.clone(),
            params: params.clone(),
            kv: None,
            grammar: None,
            speculative: None,
        },
        sink(Arc::default(), None),
    );
    assert!(refused.is_err());
    run_all(&mut sched);

    let mut session = Session::new(&m, 128).expect("session");
    let alone = session
        .generate(&prompt, &params, |_| ControlFlow::Continue(()))
        .expect("generates");
    assert_eq!(exact.lock().expect("lock").ids, alone.tokens);
    let w = windowed.lock().expect("lock");
    assert!(w.failed.is_none(), "{:?}", w.failed);
    assert_eq!(w.ids.len(), alone.tokens.len());

    // Bad requests: each a clear error, nothing admitted.
    let bad = [
        SequenceRequest::default(),
        SequenceRequest {
            prompt: vec![1; 200],
            ..SequenceRequest::default()
        },
        SequenceRequest {
            prompt: vec![u32::MAX],
            ..SequenceRequest::default()
        },
        SequenceRequest {
            prompt: prompt.clone(),
            kv: Some(KvOptions::new("no-such-policy", None)),
            ..SequenceRequest::default()
        },
    ];
    for req in bad {
        let e = sched
            .admit(req, sink(Arc::default(), None))
            .expect_err("refused");
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(sched.active(), 0);
}

/// A JSON-schema constrained request through the scheduler, beside a free one: the
/// constrained output parses and has the required fields, and ends when the grammar
/// is complete.
#[test]
fn constrained_sequence_produces_valid_json() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let mut sched = Scheduler::new(
        &m,
        SchedulerConfig {
            max_sequences: 2,
            n_ctx: 256,
            prefill_chunk: 64,
            prefix_cache: 0,
        },
    )
    .expect("scheduler");
    let prompt = m
        .tokenizer
        .encode_prompt("A person described as JSON with a name and an age:\n")
        .expect("encodes");
    let seen: Vec<Arc<Mutex<Seen>>> = (0..2).map(|_| Arc::default()).collect();
    for (mode, s) in [engine::ConstraintMode::Mask, engine::ConstraintMode::Awrs]
        .into_iter()
        .zip(&seen)
    {
        let grammar = engine::Grammar::json_schema(&m, &schema).expect("schema compiles");
        let req = SequenceRequest {
            prompt: prompt.clone(),
            params: GenerationParams {
                max_tokens: 64,
                ..GenerationParams::default()
            },
            kv: None,
            grammar: Some((grammar, mode)),
            speculative: None,
        };
        sched.admit(req, sink(s.clone(), None)).expect("admitted");
    }
    run_all(&mut sched);
    let texts: Vec<String> = seen
        .iter()
        .map(|s| {
            let s = s.lock().expect("lock");
            assert!(s.failed.is_none(), "{:?}", s.failed);
            let fin = s.finished.as_ref().expect("finished");
            assert_eq!(fin.stats.stop_reason, engine::StopReason::EndOfGeneration);
            s.text.clone()
        })
        .collect();
    for t in &texts {
        let v: serde_json::Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(v["name"].is_string() && v["age"].is_i64(), "{t}");
    }
    // Greedy: both ways of enforcing the grammar choose the same tokens.
    assert_eq!(texts[0], texts[1]);
}

/// Speculative sequences (every model-free drafter) in a batch with plain ones give
/// exactly the tokens, texts and logprobs of plain decoding, greedy and seeded
/// sampling alike, in fewer forward passes per sequence when drafts are accepted.
#[test]
fn speculative_sequences_equal_plain_decoding() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    // Copy-heavy prompts (lookup finds matches) and ordinary ones.
    let texts = [
        "Repeat the list exactly: red, green, blue, yellow, purple, orange. Again: red, green, blue, yellow, purple, orange. Again:",
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
        PROMPTS[0],
        PROMPTS[2],
        "one two three four five six seven eight nine ten one two three four five six",
        PROMPTS[5],
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|p| m.tokenizer.encode_prompt(p).expect("encodes"))
        .collect();
    let params = |k: usize| GenerationParams {
        max_tokens: 32,
        // Even prompts greedy, odd ones sampled with a seed.
        sampler: if k.is_multiple_of(2) {
            SamplerConfig::greedy()
        } else {
            SamplerConfig {
                temperature: 0.8,
                top_k: 40,
                seed: 7 + k as u64,
                ..SamplerConfig::default()
            }
        },
        top_logprobs: 2,
        ..GenerationParams::default()
    };
    // (tokens, text, logprobs) per prompt; decode steps; drafted; accepted.
    type Run = (Vec<(Vec<u32>, String, Vec<f32>)>, usize, usize, usize);
    let run = |method: Option<engine::SpeculativeMethod>| -> Run {
        let mut sched = Scheduler::new(
            &m,
            SchedulerConfig {
                max_sequences: 8,
                n_ctx: 256,
                prefill_chunk: 64,
                prefix_cache: 0,
            },
        )
        .expect("scheduler");
        let logprobs: Vec<Arc<Mutex<Vec<f32>>>> = prompts.iter().map(|_| Arc::default()).collect();
        let seen: Vec<Arc<Mutex<Seen>>> = prompts.iter().map(|_| Arc::default()).collect();
        for (k, p) in prompts.iter().enumerate() {
            let (seen, lp) = (seen[k].clone(), logprobs[k].clone());
            let mut inner = sink(seen, None);
            let req = SequenceRequest {
                prompt: p.clone(),
                params: params(k),
                speculative: method,
                ..SequenceRequest::default()
            };
            let wrapped: engine::EventSink = Box::new(move |ev| {
                if let SequenceEvent::Token(t) = &ev {
                    lp.lock().expect("lock").push(t.logprob);
                }
                inner(ev)
            });
            sched.admit(req, wrapped).expect("admitted");
        }
        let (mut steps, mut drafted, mut accepted) = (0, 0, 0);
        while sched.active() > 0 {
            let st = sched.step();
            steps += 1;
            drafted += st.drafted;
            accepted += st.accepted;
            assert!(steps < 10_000);
        }
        // Forward passes each sequence took while decoding, summed.
        let decode_steps = seen
            .iter()
            .map(|s| {
                let s = s.lock().expect("lock");
                s.finished.as_ref().expect("finished").stats.decode_steps
            })
            .sum::<usize>();
        let out = seen
            .iter()
            .zip(&logprobs)
            .map(|(s, lp)| {
                let s = s.lock().expect("lock");
                assert!(s.failed.is_none(), "{:?}", s.failed);
                (
                    s.ids.clone(),
                    s.text.clone(),
                    lp.lock().expect("lock").clone(),
                )
            })
            .collect();
        (out, decode_steps, drafted, accepted)
    };
    let (plain, plain_steps, d0, _) = run(None);
    assert_eq!(d0, 0);
    for method in engine::SpeculativeMethod::MODEL_FREE {
        let (spec, steps, drafted, accepted) = run(Some(method));
        for (k, (a, b)) in plain.iter().zip(&spec).enumerate() {
            assert_eq!(a.0, b.0, "{method} prompt {k}: tokens differ");
            assert_eq!(a.1, b.1, "{method} prompt {k}: text differs");
            assert_eq!(a.2, b.2, "{method} prompt {k}: logprobs differ");
        }
        println!(
            "{method}: {steps} decode steps (plain {plain_steps}), {accepted}/{drafted} drafts accepted"
        );
        assert!(drafted > 0, "{method} drafted nothing");
        if method == engine::SpeculativeMethod::Lookup {
            assert!(
                accepted > 0 && steps < plain_steps,
                "{method}: {accepted} accepted, {steps} steps"
            );
        }
    }
}

/// Only the model-free drafters run in a batch, and only on the exact cache.
#[test]
fn speculative_requests_are_checked() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 1).expect("model loads");
    let prompt = m.tokenizer.encode_prompt("Hello").expect("encodes");
    let mut sched = Scheduler::new(&m, SchedulerConfig::default()).expect("scheduler");
    let draft = SequenceRequest {
        prompt: prompt.clone(),
        speculative: Some(engine::SpeculativeMethod::Draft),
        ..SequenceRequest::default()
    };
    let err = sched
        .admit(draft, sink(Arc::default(), None))
        .expect_err("draft needs a model");
    assert!(err.to_string().contains("lookup"), "{err}");
    let evicting = SequenceRequest {
        prompt,
        speculative: Some(engine::SpeculativeMethod::Lookup),
        kv: Some(KvOptions::new("window", Some(engine::Budget::Tokens(64)))),
        ..SequenceRequest::default()
    };
    let err = sched
        .admit(evicting, sink(Arc::default(), None))
        .expect_err("eviction and speculation do not mix");
    assert!(err.to_string().contains("exact KV"), "{err}");
    assert_eq!(sched.active(), 0);
}

/// Prefix cache: a request that starts with the tokens of a finished one (the same
/// prompt again, or the next chat turn: prompt + answer + more) reuses that cache and
/// gives exactly the output of a scheduler without the cache.
#[test]
fn prefix_cache_reuses_finished_sequences_without_changing_outputs() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).expect("model loads");
    let first = m
        .tokenizer
        .encode_prompt("You are a helpful assistant. Answer briefly and precisely.\nQuestion: What is the capital of France?\nAnswer:")
        .expect("encodes");
    let params = GenerationParams {
        max_tokens: 8,
        sampler: SamplerConfig::greedy(),
        stop_at_eog: false,
        ..GenerationParams::default()
    };
    let config = |prefix_cache| SchedulerConfig {
        max_sequences: 2,
        n_ctx: 256,
        prefill_chunk: 32,
        prefix_cache,
    };
    // One request at a time; (tokens, reused prompt tokens).
    let run = |sched: &mut Scheduler<'_>, prompt: &[u32]| -> (Vec<u32>, usize) {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let req = SequenceRequest {
            prompt: prompt.to_vec(),
            params: params.clone(),
            ..SequenceRequest::default()
        };
        sched
            .admit(req, sink(seen.clone(), None))
            .expect("admitted");
        run_all(sched);
        let s = seen.lock().expect("lock");
        let fin = s.finished.as_ref().expect("finished");
        (s.ids.clone(), fin.stats.reused_tokens)
    };
    let mut cached = Scheduler::new(&m, config(2)).expect("scheduler");
    let mut plain = Scheduler::new(&m, config(0)).expect("scheduler");

    let (a, reused) = run(&mut cached, &first);
    assert_eq!(reused, 0, "nothing cached yet");
    assert!(cached.prefix_cache_bytes() > 0);
    // The same prompt again: all but its last token come from the cache.
    let (again, reused) = run(&mut cached, &first);
    assert_eq!(reused, first.len() - 1);
    assert_eq!(again, a);
    // The next turn: prompt + answer + a follow-up.
    let mut second = first.clone();
    second.extend_from_slice(&a);
    second.extend(
        m.tokenizer
            .encode("\nQuestion: And of Italy?\nAnswer:", false, false)
            .expect("encodes"),
    );
    let (b, reused) = run(&mut cached, &second);
    // The cache held the prompt and the answer tokens fed back (all but the last).
    assert_eq!(reused, first.len() + a.len() - 1);
    let (b_plain, none) = run(&mut plain, &second);
    assert_eq!(none, 0);
    assert_eq!(b, b_plain, "reuse changes nothing");
    assert_eq!(plain.prefix_cache_bytes(), 0);
    cached.clear_prefix_cache();
    assert_eq!(cached.prefix_cache_bytes(), 0);
}
