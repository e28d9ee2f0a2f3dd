//! Diagnostic: teacher-forces llama.cpp's greedy tokens and prints how far our
//! log-probabilities of its top-5 candidates drift from its figures, per prompt.
//! Usage: golden_drift MODEL.gguf GOLDEN.json [reference|fast] [threads]

use model::{Batch, Kernels, LogitsFor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: golden_drift MODEL.gguf GOLDEN.json [reference|fast] [threads]");
        std::process::exit(2);
    }
    let threads = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut loaded = match model::load_gguf(std::path::Path::new(&args[1]), threads) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if args.get(3).map(String::as_str) == Some("reference") {
        loaded.model.kernels = Kernels::Reference;
    }
    let m = &loaded.model;
    let text = std::fs::read_to_string(&args[2]).expect("golden file");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut overall: f64 = 0.0;
    for (pi, rec) in golden.as_array().unwrap().iter().enumerate() {
        let prompt = ids(&rec["prompt_ids"]);
        let greedy = ids(&rec["greedy_ids"]);
        let steps = rec["steps"].as_array().unwrap();
        let mut all = prompt.clone();
        all.extend_from_slice(&greedy);
        let mut state = m.new_state(all.len() + 1);
        let positions: Vec<usize> = (0..prompt.len()).collect();
        let mut logits = m
            .forward(
                &mut state,
                &Batch {
                    logits: LogitsFor::Last,
                    ..Batch::causal(&prompt, &positions)
                },
                None,
            )
            .unwrap()
            .to_vec();
        let mut worst: f64 = 0.0;
        let mut worst_step = 0;
        let mut min_margin = f64::INFINITY;
        let penalty: f32 = std::env::var("PENALTY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0);
        let last_n: usize = std::env::var("LAST_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let mut hist = prompt.clone();
        for (step, &tok) in greedy.iter().enumerate() {
            if penalty != 1.0 {
                let mut seen = std::collections::HashSet::new();
                for &t in hist.iter().rev().take(last_n) {
                    if seen.insert(t) {
                        let l = &mut logits[t as usize];
                        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                    }
                }
            }
            hist.push(tok);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + logits
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            for t in steps[step]["top"].as_array().unwrap() {
                let id = t[0].as_u64().unwrap() as usize;
                let d = (logits[id] as f64 - lse - t[2].as_f64().unwrap()).abs();
                if d > worst {
                    worst = d;
                    worst_step = step;
                }
            }
            let top = steps[step]["top"].as_array().unwrap();
            if std::env::var("DUMP")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                == Some(pi)
                && step < 3
            {
                let ours: Vec<(usize, f64)> = top
                    .iter()
                    .map(|t| {
                        let id = t[0].as_u64().unwrap() as usize;
                        (id, ((logits[id] as f64 - lse) * 1e4).round() / 1e4)
                    })
                    .collect();
                println!("step {step}: ours {ours:?}");
            }
            min_margin = min_margin.min(top[0][2].as_f64().unwrap() - top[1][2].as_f64().unwrap());
            let pos = state.cache.next_position();
            logits = m
                .forward(&mut state, &Batch::causal(&[tok], &[pos]), None)
                .unwrap()
                .to_vec();
        }
        overall = overall.max(worst);
        println!("prompt {pi:2}: len {:3} worst |dlogprob| {worst:.5} at step {worst_step:2}; llama.cpp's smallest top-2 margin {min_margin:.5}", prompt.len());
    }
    println!("overall worst {overall:.5}");
}
