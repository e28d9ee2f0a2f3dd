//! Diagnostic: llama.cpp-style perplexity over a Python-list file of token ids.
use model::{Batch, LogitsFor};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let ctx: usize = a[3].parse().unwrap();
    let text = std::fs::read_to_string(&a[2]).unwrap();
    let ids: Vec<u32> = text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let loaded = model::load_gguf(std::path::Path::new(&a[1]), 2).unwrap();
    let m = &loaded.model;
    let (mut nll, mut count) = (0f64, 0usize);
    for w in 0..ids.len() / ctx {
        let toks = &ids[w * ctx..(w + 1) * ctx];
        let mut st = m.new_state(ctx);
        let pos: Vec<usize> = (0..ctx).collect();
        let logits = m
            .forward(
                &mut st,
                &Batch {
                    tokens: toks,
                    positions: &pos,
                    mask: None,
                    logits: LogitsFor::All,
                },
                None,
            )
            .unwrap();
        let v = m.config.vocab_size;
        for i in ctx / 2..ctx - 1 {
            let row = &logits[i * v..(i + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[toks[i + 1] as usize] as f64;
            count += 1;
        }
        println!("window {w}: ppl so far {:.4}", (nll / count as f64).exp());
    }
}
