//! Diagnostic: logits of the last token, computed in one batch vs token by token.
use model::{Batch, LogitsFor};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let loaded = model::load_gguf(std::path::Path::new(&a[1]), 2).unwrap();
    let m = &loaded.model;
    let toks: Vec<u32> = vec![
        26660, 2225, 654, 1462, 480, 1038, 13816, 411, 2733, 253, 725, 7768, 1128, 365, 4009, 1577,
    ];
    let pos: Vec<usize> = (0..toks.len()).collect();
    let mut st = m.new_state(64);
    let full = m
        .forward(
            &mut st,
            &Batch {
                tokens: &toks,
                positions: &pos,
                mask: None,
                logits: LogitsFor::Last,
            },
            None,
        )
        .unwrap()
        .to_vec();
    let mut st = m.new_state(64);
    let mut inc = vec![];
    for (i, &t) in toks.iter().enumerate() {
        inc = m
            .forward(&mut st, &Batch::causal(&[t], &[i]), None)
            .unwrap()
            .to_vec();
    }
    let d = full
        .iter()
        .zip(&inc)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("max |full - incremental| = {d}");
    let mut st = m.new_state(64);
    let half = m
        .forward(
            &mut st,
            &Batch {
                tokens: &toks[..8],
                positions: &pos[..8],
                mask: None,
                logits: LogitsFor::Last,
            },
            None,
        )
        .unwrap()
        .to_vec();
    let _ = half;
    let two = m
        .forward(
            &mut st,
            &Batch {
                tokens: &toks[8..],
                positions: &pos[8..],
                mask: None,
                logits: LogitsFor::Last,
            },
            None,
        )
        .unwrap()
        .to_vec();
    let d = full
        .iter()
        .zip(&two)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("max |full - two chunks| = {d}");
}
