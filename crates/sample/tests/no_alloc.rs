//! After its first call, the sampler allocates nothing per token.
//!
//! This file is its own test binary, so it can install a counting global
//! allocator. Only allocations made by the test's own thread are counted
//! (the harness may allocate on other threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sample::{Sampler, SamplerConfig};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

#[test]
fn no_allocation_per_token_after_the_first() {
    let vocab = 32_000;
    let logits: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 977) as f32 / 97.0)
        .collect();
    let history: Vec<u32> = (0..200).map(|i| (i * 31) % vocab as u32).collect();
    let configs = [
        SamplerConfig::default(),
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed: 3,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            top_p: 0.5,
            repeat_penalty: 1.3,
            ..SamplerConfig::default()
        },
        // Every other stage, on.
        SamplerConfig {
            typical_p: 0.9,
            top_n_sigma: 2.0,
            xtc_probability: 0.5,
            xtc_threshold: 0.05,
            dynatemp_range: 0.5,
            frequency_penalty: 0.1,
            presence_penalty: 0.2,
            dry_multiplier: 0.8,
            dry_sequence_breakers: vec![vec![5], vec![7, 8]],
            logit_bias: vec![(3, -1.0), (9, 2.0)],
            ..SamplerConfig::default()
        },
        SamplerConfig {
            epsilon: 0.0001,
            eta: 0.0005,
            samplers: ["epsilon", "eta", "greedy"].map(String::from).to_vec(),
            ..SamplerConfig::default()
        },
        SamplerConfig {
            mirostat: 1,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            mirostat: 2,
            ..SamplerConfig::default()
        },
    ];
    for config in configs {
        let mut s = Sampler::new(config.clone());
        let mut row = logits.clone();
        s.sample(&mut row, &history).unwrap();
        let before = allocs();
        for _ in 0..20 {
            row.copy_from_slice(&logits);
            s.sample(&mut row, &history).unwrap();
        }
        assert_eq!(allocs() - before, 0, "{config:?} allocated per token");
    }
}
