//! Diagnostic: prefill-512 and decode-128 tokens/s (the `bench` command is the real benchmark).
use model::{Batch, LogitsFor};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let threads: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let loaded = model::load_gguf(std::path::Path::new(&a[1]), threads).unwrap();
    let m = &loaded.model;
    let toks: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % 40000 + 100).collect();
    let pos: Vec<usize> = (0..512).collect();
    let mut st = m.new_state(1024);
    m.forward(
        &mut st,
        &Batch {
            tokens: &toks[..16],
            positions: &pos[..16],
            mask: None,
            logits: LogitsFor::Last,
        },
        None,
    )
    .unwrap();
    st.cache.clear();
    let t = Instant::now();
    m.forward(
        &mut st,
        &Batch {
            tokens: &toks,
            positions: &pos,
            mask: None,
            logits: LogitsFor::Last,
        },
        None,
    )
    .unwrap();
    let pp = 512.0 / t.elapsed().as_secs_f64();
    st.cache.clear();
    let t = Instant::now();
    for i in 0..128 {
        m.forward(
            &mut st,
            &Batch::causal(&toks[i..i + 1], &pos[i..i + 1]),
            None,
        )
        .unwrap();
    }
    let tg = 128.0 / t.elapsed().as_secs_f64();
    println!("threads {threads}: prefill {pp:.1} tok/s, decode {tg:.1} tok/s");
}
