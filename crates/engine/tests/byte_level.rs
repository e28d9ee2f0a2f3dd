//! Byte-level probabilities on the real SmolLM2-135M: the chain of next-byte
//! probabilities of a short string, ended, equals the token model's probability summed
//! over every tokenisation of it (brute force, each scored with a fresh forward pass),
//! every next-byte distribution sums to one, and pruned scoring stays within its bound.

mod common;

use common::{load, smollm2, GEMMA3};

use std::collections::HashMap;
use std::time::Instant;

use engine::byte_level::{model_vocabulary, ByteLevel, ByteScorer, ModelLm, Prune, Vocabulary};
use model::{Batch, LoadedModel, LogitsFor};

/// Every token sequence of text tokens spelling exactly `x`.
fn tokenisations(by_bytes: &HashMap<&[u8], Vec<u32>>, x: &[u8]) -> Vec<Vec<u32>> {
    if x.is_empty() {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for len in 1..=x.len() {
        let Some(ids) = by_bytes.get(&x[..len]) else {
            continue;
        };
        for rest in tokenisations(by_bytes, &x[len..]) {
            for &id in ids {
                let mut seq = vec![id];
                seq.extend_from_slice(&rest);
                out.push(seq);
            }
        }
    }
    out
}

/// `ln P(tokens, end)` with one fresh forward pass over `start + tokens`, next-token
/// probabilities renormalised over text and end tokens (the byte-level definition).
fn complete_logprob(loaded: &LoadedModel, vocab: &Vocabulary, tokens: &[u32]) -> f64 {
    let tok = &loaded.tokenizer;
    let start = tok.bos_id().or(tok.eos_id()).expect("a start token");
    let mut seq = vec![start];
    seq.extend_from_slice(tokens);
    let positions: Vec<usize> = (0..seq.len()).collect();
    let mut state = loaded.model.new_state(seq.len());
    let batch = Batch {
        tokens: &seq,
        positions: &positions,
        mask: None,
        logits: LogitsFor::All,
    };
    let logits = loaded
        .model
        .forward(&mut state, &batch, None)
        .expect("forward");
    let n = vocab.len();
    let allowed: Vec<u32> = (0..n as u32).filter(|&t| vocab.is_allowed(t)).collect();
    let log_p = |row: &[f32], t: u32| {
        let max = allowed
            .iter()
            .map(|&a| row[a as usize] as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = allowed
            .iter()
            .map(|&a| (row[a as usize] as f64 - max).exp())
            .sum();
        row[t as usize] as f64 - max - z.ln()
    };
    let mut lp = 0.0;
    for (k, &t) in tokens.iter().enumerate() {
        lp += log_p(&logits[k * n..(k + 1) * n], t);
    }
    let last = &logits[tokens.len() * n..(tokens.len() + 1) * n];
    let end: f64 = vocab
        .end_tokens()
        .iter()
        .map(|&e| log_p(last, e).exp())
        .sum();
    lp + end.ln()
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

#[test]
fn chain_equals_sum_over_all_tokenisations() {
    let loaded = smollm2();
    let vocab = model_vocabulary(&loaded).expect("vocabulary");
    let mut by_bytes: HashMap<&[u8], Vec<u32>> = HashMap::new();
    for id in 0..vocab.len() as u32 {
        let piece = vocab.piece(id);
        if !piece.is_empty() {
            by_bytes.entry(piece).or_default().push(id);
        }
    }

    for text in ["Hi there", "é42"] {
        let x = text.as_bytes();
        let t0 = Instant::now();
        let mut scorer = ByteScorer::new(&loaded, &vocab, Prune::exact(), x.len()).expect("starts");
        let mut chain = 0.0;
        for &b in x {
            let d = scorer.distribution();
            let total: f64 = d.bytes.iter().sum::<f64>() + d.end;
            assert!((total - 1.0).abs() < 1e-6, "sum {total}");
            assert_eq!(d.error_bound, 0.0);
            chain += scorer.push(b).expect("possible byte");
        }
        let ended = chain + scorer.distribution().end.ln();
        let byte_secs = t0.elapsed().as_secs_f64();

        let all = tokenisations(&by_bytes, x);
        let scores: Vec<f64> = all
            .iter()
            .map(|ts| complete_logprob(&loaded, &vocab, ts))
            .collect();
        let want = log_sum_exp(&scores);
        let canonical = loaded
            .tokenizer
            .encode(text, false, false)
            .expect("encodes");
        let canonical_lp = complete_logprob(&loaded, &vocab, &canonical);
        let stats = scorer.stats();
        println!(
            "{text:?}: {} tokenisations, {} model calls ({} tokens run), {:.2}s; \
             byte chain + end {ended:.6}, brute force {want:.6} (|Δ| = {:.2e}), canonical {canonical_lp:.6}",
            all.len(),
            stats.model_calls,
            scorer.lm().tokens_evaluated,
            byte_secs,
            (ended - want).abs()
        );
        assert!((ended - want).abs() < 1e-3, "{ended} vs {want}");
        assert!(want >= canonical_lp);

        // Pruned to the most likely tokenisations, ln P(x) stays within the bounds.
        let prune = Prune {
            min_relative: 1e-3,
            max_new_boundaries: 2,
        };
        let mut pruned = ByteScorer::new(&loaded, &vocab, prune, x.len()).expect("starts");
        let mut pruned_chain = 0.0;
        for &b in x {
            pruned_chain += pruned.push(b).expect("possible byte");
        }
        let (lo, hi) = pruned.log_prefix_bounds();
        println!(
            "  pruned: {} model calls, chain {pruned_chain:.6} (exact {chain:.6}), bounds [{lo:.6}, {hi:.6}]",
            pruned.stats().model_calls
        );
        assert!(lo <= chain + 1e-9 && chain <= hi + 1e-9);
    }
}

#[test]
fn pruned_scoring_of_a_sentence() {
    let loaded = smollm2();
    let vocab = model_vocabulary(&loaded).expect("vocabulary");
    let text = "The quick brown fox jumps over the lazy dog.";
    let prune = Prune {
        min_relative: 1e-4,
        max_new_boundaries: 8,
    };
    let t0 = Instant::now();
    let mut scorer = ByteScorer::new(&loaded, &vocab, prune, text.len()).expect("starts");
    let mut chain = 0.0;
    for &b in text.as_bytes() {
        chain += scorer.push(b).expect("possible byte");
        let d = scorer.distribution();
        let total: f64 = d.bytes.iter().sum::<f64>() + d.end;
        assert!((total - 1.0).abs() < 1e-6, "sum {total}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let d = scorer.distribution();
    let stats = scorer.stats();
    let (lower, _) = scorer.log_prefix_bounds();
    println!(
        "{} bytes in {secs:.2}s ({:.1} bytes/s), {} model calls, {} pruned, δ = {:.2e}, \
         {:.4} bits/byte, chain {chain:.4} nats, rigorous lower bound {lower:.4}",
        text.len(),
        text.len() as f64 / secs,
        stats.model_calls,
        stats.pruned,
        d.error_bound,
        -chain / std::f64::consts::LN_2 / text.len() as f64
    );
    // The chain is within a small gap of a rigorous lower bound on ln P(text).
    assert!(chain - lower < 1e-2, "chain {chain}, lower bound {lower}");
}

#[test]
fn dropping_dead_branches_of_the_token_tree_changes_nothing() {
    let loaded = smollm2();
    let vocab = model_vocabulary(&loaded).expect("vocabulary");
    // Markdown: several tokenisations stay in play for many bytes.
    let text = b"## The `tokenwise` CLI\n\n| crate | job |\n|---|---|\n";
    let prune = Prune {
        min_relative: 1e-4,
        max_new_boundaries: 8,
    };
    let run = |gc_at: usize| {
        let lm = ModelLm::new(&loaded, text.len())
            .expect("model")
            .with_gc_threshold(gc_at);
        let mut bl = ByteLevel::new(&vocab, lm, prune).expect("starts");
        let lps: Vec<f64> = text
            .iter()
            .map(|&b| bl.push(b).expect("possible byte"))
            .collect();
        (lps, bl.lm().cached_slots(), bl.lm().tokens_evaluated)
    };
    let (never, slots_never, run_never) = run(usize::MAX);
    let (often, slots_often, run_often) = run(4);
    println!(
        "{} bytes: {slots_never} slots without collection, {slots_often} with; \
         {run_never} / {run_often} tokens run",
        text.len()
    );
    assert!(slots_often < slots_never);
    for (a, b) in never.iter().zip(&often) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}

/// Gemma 3's newline and whitespace-run tokens are user-defined; they must spell
/// their bytes, or byte-level scoring prices every newline as a byte token.
#[test]
fn user_defined_whitespace_tokens_spell_their_bytes() {
    let (_turn, gemma) = load(GEMMA3);
    let vocab = model_vocabulary(gemma).expect("vocabulary");
    let newline = gemma
        .tokenizer
        .encode("a\nb", false, false)
        .expect("tokenises");
    let spelled: Vec<&[u8]> = newline.iter().map(|&t| vocab.piece(t)).collect();
    assert_eq!(spelled.concat(), b"a\nb", "pieces {spelled:?}");
    assert!(
        newline.iter().any(|&t| vocab.piece(t) == b"\n"),
        "no single-token newline in {newline:?}"
    );
}
