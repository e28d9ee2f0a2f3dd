//! Selective contrastive decoding (USCD) on the real SmolLM2-135M: off above every
//! entropy and with alpha 0 it is plain greedy decoding (the lame context's own cache
//! does not disturb the main one); when it contrasts, each token is the argmax of
//! `log p - alpha * log p_lame` over the plausible tokens, checked against fresh
//! sessions for both contexts.

mod common;

use std::ops::ControlFlow;

use engine::{ContrastiveConfig, GenerationParams, Session};
use model::LoadedModel;
use sample::{argmax, entropy, log_softmax};

const PROMPT: &str =
    "Translate English to French.\nsea otter => loutre de mer\ncheese => fromage\nhouse =>";
const LAME: &str = "Translate English to French.\nhouse =>";

fn generate(
    m: &LoadedModel,
    contrastive: Option<ContrastiveConfig>,
    n: usize,
) -> engine::Generation {
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let params = GenerationParams {
        max_tokens: n,
        stop_at_eog: false,
        contrastive,
        ..GenerationParams::default()
    };
    let mut s = Session::new(m, 256).unwrap();
    s.generate(&prompt, &params, |_| ControlFlow::Continue(()))
        .unwrap()
}

fn logits_after(m: &LoadedModel, prefix: &[u32], ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(m, 256).unwrap();
    s.prefill(prefix).unwrap();
    for &t in ids {
        s.prefill(&[t]).unwrap();
    }
    s.logits().unwrap().to_vec()
}

#[test]
fn contrastive_decoding_is_exact() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    let lame = m.tokenizer.encode_prompt(LAME).unwrap();
    let n = 12;
    let greedy = generate(&m, None, n);
    let config = |alpha, entropy_threshold, plausibility| ContrastiveConfig {
        lame_prompt: lame.clone(),
        alpha,
        entropy_threshold,
        plausibility,
    };
    let never = generate(&m, Some(config(0.5, 1e9, 0.1)), n);
    assert_eq!(never.tokens, greedy.tokens);
    assert_eq!(never.stats.contrastive.contrasted, 0);
    let neutral = generate(&m, Some(config(0.0, 0.0, 0.0)), n);
    assert_eq!(neutral.tokens, greedy.tokens);
    assert_eq!(neutral.stats.contrastive.contrasted, n);
    assert!(neutral.stats.contrastive.lame_tokens >= lame.len() + n - 1);

    let c = config(1.0, 0.5, 0.1);
    let g = generate(&m, Some(c.clone()), n);
    let prompt = m.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut contrasted = 0;
    for i in 0..g.tokens.len() {
        let main = logits_after(&m, &prompt, &g.tokens[..i]);
        if entropy(&main) <= c.entropy_threshold {
            assert_eq!(g.tokens[i], argmax(&main), "step {i}");
            continue;
        }
        contrasted += 1;
        let other = logits_after(&m, &lame, &g.tokens[..i]);
        let (mut lp, mut llp) = (vec![0.0; main.len()], vec![0.0; main.len()]);
        log_softmax(&main, &mut lp);
        log_softmax(&other, &mut llp);
        let max = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let best = (0..lp.len())
            .filter(|&t| lp[t] >= max + c.plausibility.ln())
            .max_by(|&a, &b| {
                (lp[a] - c.alpha * llp[a])
                    .total_cmp(&(lp[b] - c.alpha * llp[b]))
                    .then(b.cmp(&a))
            })
            .unwrap();
        assert_eq!(g.tokens[i], best as u32, "step {i}");
    }
    assert_eq!(contrasted, g.stats.contrastive.contrasted);
    assert!(contrasted > 0, "no uncertain step in {n} tokens");
}
