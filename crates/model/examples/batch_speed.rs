//! Diagnostic: decode tokens/s of B sequences stepped together with `forward_many`
//! (continuous batching's inner loop) against one sequence alone.
//! Usage: [STEPS=32] batch_speed MODEL [THREADS] [CONTEXT] [B,...]
use model::{Batch, ForwardScratch, LogitsFor, SequenceBatch};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let threads: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let ctx: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(150);
    let bs: Vec<usize> = a
        .get(4)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1, 2, 4, 8]);
    let mut loaded = model::load_gguf(std::path::Path::new(&a[1]), threads).unwrap();
    // ATTENTION_ITEMS=1: attention one (token, head) at a time, for comparison.
    loaded.model.attention_blocks = std::env::var_os("ATTENTION_ITEMS").is_none();
    let m = &loaded.model;
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let toks: Vec<u32> = (0..ctx as u32 + steps as u32)
        .map(|i| (i * 7919 + 13) % 40000 + 100)
        .collect();
    let pos: Vec<usize> = (0..toks.len()).collect();
    for &b in &bs {
        let mut states: Vec<_> = (0..b).map(|_| m.new_state(ctx + steps + 1)).collect();
        for st in states.iter_mut() {
            m.forward(st, &Batch::causal(&toks[..ctx], &pos[..ctx]), None)
                .unwrap();
        }
        let mut scratch = ForwardScratch::default();
        let t = Instant::now();
        for i in 0..steps {
            let mut seqs: Vec<SequenceBatch> = states
                .iter_mut()
                .map(|st| SequenceBatch {
                    cache: &mut st.cache,
                    batch: Batch {
                        logits: LogitsFor::Last,
                        ..Batch::causal(&toks[ctx + i..ctx + i + 1], &pos[ctx + i..ctx + i + 1])
                    },
                    observer: None,
                })
                .collect();
            m.forward_many(&mut scratch, &mut seqs).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "threads {threads} ctx {ctx} batch {b}: {:.1} ms/step, {:.1} tok/s",
            secs * 1e3 / steps as f64,
            (b * steps) as f64 / secs
        );
    }
}
