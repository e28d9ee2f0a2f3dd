//! The generation loop against the real SmolLM2-135M: greedy decoding equals a manual
//! argmax loop over `Model::forward`, chunked prefill equals one big prefill, seeded
//! sampling is reproducible, limits are errors (not panics), and a chat session that
//! reuses its cache produces what a fresh session does.

mod common;

use common::smollm2;

use std::ops::ControlFlow;

use engine::{chat_prompt_ids, EngineError, GenerationParams, Session, StopReason, TokenEvent};
use model::chat::ChatMessage;
use model::{Batch, ModelError};
use sample::{argmax, SamplerConfig};

const PROMPT: &str = "The three primary colors are";

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        // Run the full length: the manual loop below does not stop at EOS either.
        stop_at_eog: false,
        ..GenerationParams::default()
    }
}

fn collect(
    session: &mut Session<'_>,
    prompt: &[u32],
    params: &GenerationParams,
) -> (engine::Generation, Vec<TokenEvent>) {
    let mut events = Vec::new();
    let g = session
        .generate(prompt, params, |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        })
        .expect("generation succeeds");
    (g, events)
}

#[test]
fn greedy_equals_manual_argmax_loop_and_is_deterministic() {
    let guard = smollm2();
    let m = &*guard;
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let n = 12;

    // The reference: one forward over the prompt, then argmax and feed, by hand.
    let mut state = m.model.new_state(256);
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let mut logits = m
        .model
        .forward(&mut state, &Batch::causal(&prompt, &positions), None)
        .unwrap()
        .to_vec();
    let mut expected = Vec::new();
    for i in 0..n {
        let id = argmax(&logits);
        expected.push(id);
        if i + 1 < n {
            let pos = [prompt.len() + i];
            logits = m
                .model
                .forward(&mut state, &Batch::causal(&[id], &pos), None)
                .unwrap()
                .to_vec();
        }
    }

    let mut s = Session::new(m, 256).unwrap();
    let (g, events) = collect(&mut s, &prompt, &greedy(n));
    assert_eq!(g.tokens, expected);
    assert_eq!(g.stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(g.stats.generated_tokens, n);
    assert_eq!(g.stats.decode_steps, n - 1);
    assert_eq!(g.stats.prompt_tokens, prompt.len());
    // The streamed text is the decoded tokens, and greedy tokens are rank 0.
    assert_eq!(g.text, m.tokenizer.decode(&g.tokens).unwrap());
    assert_eq!(
        events.iter().map(|e| e.text.as_str()).collect::<String>(),
        g.text
    );
    for e in &events {
        assert_eq!(e.rank, 0, "{e:?}");
        assert!(e.logprob.is_finite() && e.logprob <= 0.0, "{e:?}");
        assert!(e.entropy.is_finite() && e.entropy >= 0.0, "{e:?}");
    }
    // The cache holds the prompt and all generated tokens but the last.
    assert_eq!(s.tokens().len(), prompt.len() + n - 1);

    let mut fresh = Session::new(m, 256).unwrap();
    let (again, _) = collect(&mut fresh, &prompt, &greedy(n));
    assert_eq!(again.tokens, g.tokens);
}

#[test]
fn chunked_prefill_matches_one_batch() {
    let guard = smollm2();
    let m = &*guard;
    let text = "Rust is a multi-paradigm, general-purpose programming language that emphasizes \
                performance, type safety, and concurrency. It enforces memory safety without a \
                garbage collector.";
    let prompt = m.tokenizer.encode_prompt(text).unwrap();
    assert!(prompt.len() > 20, "{}", prompt.len());

    let mut whole = Session::new(m, 128).unwrap();
    let reference = whole.prefill(&prompt).unwrap().to_vec();
    for chunk in [5, 16] {
        let mut s = Session::new(m, 128).unwrap().with_prefill_chunk(chunk);
        let logits = s.prefill(&prompt).unwrap();
        let max_diff = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff <= 1e-4, "chunk {chunk}: max |diff| = {max_diff}");
        assert_eq!(s.tokens(), prompt.as_slice());
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let guard = smollm2();
    let m = &*guard;
    let prompt = m.tokenizer.encode_prompt("Once upon a time").unwrap();
    let params = |seed| GenerationParams {
        max_tokens: 16,
        sampler: SamplerConfig {
            temperature: 1.0,
            top_k: 40,
            top_p: 0.95,
            seed,
            ..SamplerConfig::default()
        },
        stop_at_eog: false,
        top_logprobs: 3,
        stop: Vec::new(),
        ..GenerationParams::default()
    };
    let mut s = Session::new(m, 128).unwrap();
    let (a, events) = collect(&mut s, &prompt, &params(7));
    // A second run in the same session reuses the cached prompt.
    let (b, _) = collect(&mut s, &prompt, &params(7));
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(b.stats.reused_tokens, prompt.len() - 1);
    for e in &events {
        assert_eq!(e.top.len(), 3);
        assert!(e.top.windows(2).all(|w| w[0].1 >= w[1].1));
        if e.rank < 3 {
            assert_eq!(e.top[e.rank].0, e.id);
            assert!((e.top[e.rank].1 - e.logprob).abs() < 1e-6);
        }
    }
}

#[test]
fn oversize_prompt_is_an_error_before_any_work() {
    let guard = smollm2();
    let m = &*guard;
    let prompt = m.tokenizer.encode_prompt(&"word ".repeat(40)).unwrap();
    let mut s = Session::new(m, 16).unwrap();
    match s.generate(&prompt, &greedy(4), |_| ControlFlow::Continue(())) {
        Err(e @ EngineError::PromptTooLong { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && msg.contains("16"), "{msg}");
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    assert!(s.tokens().is_empty() && s.state().cache.is_empty());
    // Appending past the capacity is refused the same way.
    assert!(matches!(
        s.prefill(&prompt),
        Err(EngineError::Model(ModelError::ContextFull { .. }))
    ));
    assert!(matches!(
        s.generate(&[], &greedy(4), |_| ControlFlow::Continue(())),
        Err(EngineError::EmptyPrompt)
    ));
    let bad = GenerationParams {
        sampler: SamplerConfig {
            top_p: 2.0,
            ..SamplerConfig::default()
        },
        ..greedy(4)
    };
    assert!(matches!(
        s.generate(&prompt[..4], &bad, |_| ControlFlow::Continue(())),
        Err(EngineError::Sample(_))
    ));
}

#[test]
fn full_context_stops_generation() {
    let guard = smollm2();
    let m = &*guard;
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut s = Session::new(m, prompt.len() + 3).unwrap();
    let (g, _) = collect(&mut s, &prompt, &greedy(16));
    assert_eq!(g.stats.stop_reason, StopReason::ContextFull);
    // Three fed tokens fill the context; a fourth is sampled from the last logits.
    assert_eq!(g.tokens.len(), 4);
    assert_eq!(s.tokens().len(), s.n_ctx());
}

#[test]
fn stop_strings_and_cancellation() {
    let guard = smollm2();
    let m = &*guard;
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut s = Session::new(m, 256).unwrap();
    let (full, _) = collect(&mut s, &prompt, &greedy(12));

    // Stop at a piece of text from the middle of the greedy continuation.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() >= 12, "{:?}", full.text);
    let stop: String = chars[6..9].iter().collect();
    let before = &full.text[..full.text.find(&stop).unwrap()];
    let params = GenerationParams {
        stop: vec![stop.clone()],
        ..greedy(12)
    };
    let (g, events) = collect(&mut s, &prompt, &params);
    assert_eq!(g.stats.stop_reason, StopReason::StopString, "{stop:?}");
    assert_eq!(g.text, before);
    assert_eq!(
        events.iter().map(|e| e.text.as_str()).collect::<String>(),
        before
    );
    assert_eq!(g.tokens[..], full.tokens[..g.tokens.len()]);

    let mut seen = 0;
    let g = s
        .generate(&prompt, &greedy(12), |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(g.stats.stop_reason, StopReason::Cancelled);
    assert_eq!(g.tokens, full.tokens[..3]);

    let g = s
        .generate(&prompt, &greedy(0), |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(g.tokens.is_empty() && g.text.is_empty());
}

#[test]
fn chat_prefix_reuse_matches_a_fresh_session() {
    let guard = smollm2();
    let m = &*guard;
    let params = GenerationParams {
        max_tokens: 6,
        ..GenerationParams::default()
    };
    let mut messages = vec![ChatMessage::new("user", "What is the capital of France?")];
    let mut chat = Session::new(m, 512).unwrap();
    let first = chat_prompt_ids(m, &messages, true).unwrap();
    let (turn1, _) = collect(&mut chat, &first, &params);
    assert!(!turn1.text.is_empty());

    messages.push(ChatMessage::new("assistant", turn1.text.clone()));
    messages.push(ChatMessage::new("user", "And of Italy?"));
    let second = chat_prompt_ids(m, &messages, true).unwrap();
    assert_eq!(
        second[..first.len()],
        first[..],
        "the conversation extends the first prompt"
    );
    let (reused, _) = collect(&mut chat, &second, &params);
    assert!(
        reused.stats.reused_tokens >= first.len(),
        "reused {} of {}",
        reused.stats.reused_tokens,
        second.len()
    );
    assert_eq!(
        reused.stats.prefilled_tokens(),
        second.len() - reused.stats.reused_tokens
    );

    let mut fresh = Session::new(m, 512).unwrap();
    let (expected, _) = collect(&mut fresh, &second, &params);
    assert_eq!(reused.tokens, expected.tokens);
    assert_eq!(reused.text, expected.text);

    // A diverging history truncates the cache and still matches a fresh session.
    let other = chat_prompt_ids(
        m,
        &[ChatMessage::new("user", "What is the capital of Spain?")],
        true,
    )
    .unwrap();
    let (diverged, _) = collect(&mut chat, &other, &params);
    let mut fresh = Session::new(m, 512).unwrap();
    let (expected, _) = collect(&mut fresh, &other, &params);
    assert_eq!(diverged.tokens, expected.tokens);
    assert!(diverged.stats.reused_tokens < other.len());
}
