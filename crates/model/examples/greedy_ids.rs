//! Diagnostic: greedy ids (48) for every prompt of a golden file, as JSON.
use model::Batch;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let loaded = model::load_gguf(std::path::Path::new(&a[1]), 2).unwrap();
    let m = &loaded.model;
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a[2]).unwrap()).unwrap();
    let mut all = vec![];
    for rec in golden.as_array().unwrap() {
        let prompt: Vec<u32> = rec["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut st = m.new_state(prompt.len() + 50);
        let pos: Vec<usize> = (0..prompt.len()).collect();
        let mut logits = m
            .forward(&mut st, &Batch::causal(&prompt, &pos), None)
            .unwrap()
            .to_vec();
        let mut out = vec![];
        for _ in 0..48 {
            let t = sample::argmax(&logits);
            out.push(t);
            if loaded.tokenizer.is_end_of_generation(t) {
                break;
            }
            let p = st.cache.next_position();
            logits = m
                .forward(&mut st, &Batch::causal(&[t], &[p]), None)
                .unwrap()
                .to_vec();
        }
        all.push(out);
    }
    println!("{}", serde_json::to_string(&all).unwrap());
}
