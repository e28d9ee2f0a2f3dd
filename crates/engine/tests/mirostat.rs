//! Mirostat v2 on the real SmolLM2-135M holds the observed surprise of the generated
//! tokens at its target: the mean over 256 tokens within ±10% of tau for tau 3 and 5.
//! The observed surprise is measured the way Mirostat (and llama.cpp) measure it: the
//! token's surprise under the distribution it was drawn from (after mirostat's own
//! truncation), which is what the algorithm's feedback loop controls.

mod common;

use std::ops::ControlFlow;

use engine::{GenerationParams, SamplerConfig, Session};

#[test]
fn mirostat_v2_holds_the_target_surprise() {
    let m = model::load_gguf(&common::model_path(common::SMOLLM2), 2).unwrap();
    let prompt = m
        .tokenizer
        .encode_prompt("The history of the city begins in the year")
        .unwrap();
    for tau in [3.0f32, 5.0] {
        let params = GenerationParams {
            max_tokens: 256,
            stop_at_eog: false,
            report_stages: true,
            sampler: SamplerConfig {
                temperature: 1.0,
                mirostat: 2,
                mirostat_tau: tau,
                mirostat_lr: 0.1,
                seed: 11,
                ..SamplerConfig::default()
            },
            ..GenerationParams::default()
        };
        let mut s = Session::new(&m, 512).unwrap();
        let mut observed = Vec::new();
        let mut model_surprise = Vec::new();
        s.generate(&prompt, &params, |e| {
            let p = e
                .sampled_prob
                .expect("report_stages gives the sampled probability");
            observed.push(-p.log2());
            model_surprise.push(-f64::from(e.logprob) / std::f64::consts::LN_2);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(observed.len(), 256);
        let mean = observed.iter().sum::<f64>() / 256.0;
        let model_mean = model_surprise.iter().sum::<f64>() / 256.0;
        eprintln!(
            "tau {tau}: observed mean surprise {mean:.3} bits (under the model's full \
             distribution {model_mean:.3} bits)"
        );
        let tau = f64::from(tau);
        assert!(
            (mean - tau).abs() <= 0.1 * tau,
            "tau {tau}: mean observed surprise {mean:.3} bits is not within 10%"
        );
    }
}
