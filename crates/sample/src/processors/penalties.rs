//! Stages that reshape logits by token id: the repetition / frequency /
//! presence penalties and the logit bias.

use super::{LogitsProcessor, SampleContext};
use crate::candidates::Candidates;

/// llama.cpp's `penalties` stage. For every token that occurs `count > 0`
/// times in the last `last_n` history tokens:
///
/// 1. repetition penalty: a positive logit is divided by `repeat`, a
///    non-positive one multiplied (so `repeat > 1` always makes the token
///    less likely; each token once, however often it occurred);
/// 2. then `count * freq + present` is subtracted (OpenAI-style frequency
///    and presence penalties).
///
/// Off when `last_n == 0` or all three are neutral (1, 0, 0).
#[derive(Clone, Debug)]
pub struct Penalties {
    last_n: usize,
    repeat: f32,
    freq: f32,
    present: f32,
    /// Scratch: the window, sorted.
    window: Vec<u32>,
    /// Scratch: distinct ids of the window (sorted) and their counts.
    ids: Vec<u32>,
    counts: Vec<u32>,
}

impl Penalties {
    /// Registry name.
    pub const NAME: &'static str = "penalties";

    /// `last_n` 0 or neutral penalties turn it off; `last_n` beyond the
    /// history uses all of it.
    pub fn new(last_n: usize, repeat: f32, freq: f32, present: f32) -> Self {
        Penalties {
            last_n,
            repeat,
            freq,
            present,
            window: Vec::new(),
            ids: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Only the repetition penalty (frequency and presence off).
    pub fn repetition(repeat: f32, last_n: usize) -> Self {
        Self::new(last_n, repeat, 0.0, 0.0)
    }
}

impl LogitsProcessor for Penalties {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, ctx: &SampleContext<'_>) {
        let neutral = self.repeat == 1.0 && self.freq == 0.0 && self.present == 0.0;
        if self.last_n == 0 || neutral || ctx.history.is_empty() {
            return;
        }
        let h = ctx.history;
        self.window.clear();
        self.window
            .extend_from_slice(&h[h.len().saturating_sub(self.last_n)..]);
        self.window.sort_unstable();
        self.ids.clear();
        self.counts.clear();
        for &t in &self.window {
            if self.ids.last() == Some(&t) {
                if let Some(c) = self.counts.last_mut() {
                    *c += 1;
                }
            } else {
                self.ids.push(t);
                self.counts.push(1);
            }
        }
        let (repeat, freq, present) = (self.repeat, self.freq, self.present);
        let counts = &self.counts;
        cands.update_ids_indexed(&self.ids, |i, l| {
            if *l <= 0.0 {
                *l *= repeat;
            } else {
                *l /= repeat;
            }
            *l -= counts[i] as f32 * freq + present;
        });
    }
}

/// Adds a fixed bias to the logits of chosen tokens (llama.cpp's
/// `logit-bias`); `-inf` bans a token. Biases for the same id add up; ids
/// outside the vocabulary are ignored.
#[derive(Clone, Debug)]
pub struct LogitBias {
    ids: Vec<u32>,
    biases: Vec<f32>,
}

impl LogitBias {
    /// Registry name.
    pub const NAME: &'static str = "logit_bias";

    /// A bias list of `(token, bias)` pairs, in any order.
    pub fn new(bias: &[(u32, f32)]) -> Self {
        let mut sorted = bias.to_vec();
        sorted.sort_unstable_by_key(|&(id, _)| id);
        let mut ids: Vec<u32> = Vec::with_capacity(sorted.len());
        let mut biases: Vec<f32> = Vec::with_capacity(sorted.len());
        for (id, b) in sorted {
            match (ids.last(), biases.last_mut()) {
                (Some(&last), Some(acc)) if last == id => *acc += b,
                _ => {
                    ids.push(id);
                    biases.push(b);
                }
            }
        }
        LogitBias { ids, biases }
    }
}

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn process(&mut self, cands: &mut Candidates, _ctx: &SampleContext<'_>) {
        let biases = &self.biases;
        cands.update_ids_indexed(&self.ids, |i, l| *l += biases[i]);
    }
}
