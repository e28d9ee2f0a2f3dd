//! A row of logits turned into integer symbol frequencies with a fixed total.
//!
//! The encoder and the decoder must derive *the same integers* from the same logits, so
//! nothing here depends on a float reduction or a libm function:
//!
//! 1. `m` = the largest logit of a codable token (a sequential scan; max is exact).
//! 2. For each codable token, `d = m - logit` (one IEEE subtraction) is scaled to
//!    fixed point in units of 2^-12 bits, `q = d * 4096 * log2(e)` (one IEEE
//!    multiplication by a constant; Rust never fuses it into an FMA), then truncated.
//! 3. Its weight is `2^(-q / 4096)` scaled to 2^32, from a 4096-entry table built with
//!    integer multiplications out of twelve 62-bit constants ([`exp2_table`]), shifted
//!    right by the integer part of `q / 4096`.
//! 4. The integer weights are summed (exactly) and scaled to the budget the floors
//!    leave; every codable token gets `1 +` its share, the leftover of the rounding goes
//!    to the most probable token (lowest id on ties), and the totals add up to
//!    [`TOTAL`] exactly.
//!
//! The precision is 2^-12 bit in log-probability (a relative error of 1.7e-4 in each
//! weight), far below what the floors and the model's own quantisation cost.
//!
//! The alphabet is the model's vocabulary (tokens with no bytes, such as unused slots,
//! get frequency 0: the encoder never emits them) followed by two control symbols:
//! [`Symbol::Escape`] (a raw byte follows, coded uniformly) and [`Symbol::EndOfWindow`]
//! (only in Equal-Info Windows mode). Both have fixed frequencies at the top of the
//! range, so their intervals do not depend on the logits.

use std::sync::OnceLock;

use crate::CodecError;

/// Sum of all frequencies of a step.
pub const TOTAL: u64 = 1 << 32;
/// Frequency of the escape symbol: an escaped byte costs 16 bits plus 8 for the byte;
/// the mass it takes from the tokens costs 2^-16 / ln 2 bits per token.
pub const ESCAPE_FREQ: u64 = 1 << 16;
/// Frequency of the end-of-window symbol in Equal-Info Windows mode: 8 bits per window,
/// and about 0.006 bits per token for the mass it takes (optimal near 1/256 for windows
/// of a few hundred tokens).
pub const END_OF_WINDOW_FREQ: u64 = 1 << 24;

/// Fraction bits of the fixed-point log2 distance.
const FRAC_BITS: u32 = 12;
/// `2^FRAC_BITS * log2(e)`: natural-log logit distances to fixed-point bits.
const NATS_TO_FIXED_BITS: f32 = 4096.0 * std::f32::consts::LOG2_E;
/// Distances of 33 bits or more weigh 0 (below 2^32 * 2^-33) and get only the floor.
const MAX_FIXED: f32 = (33u32 << FRAC_BITS) as f32;

/// A symbol of the coded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Symbol {
    Token(u32),
    /// A byte the vocabulary cannot express, coded uniformly after this symbol.
    Escape,
    EndOfWindow,
}

/// `2^(-i/4096) * 2^32` for `i` in `0..4096`, in integers only.
fn exp2_table() -> &'static [u64; 4096] {
    /// `2^(-2^b / 4096) * 2^62`, rounded, for `b` in `0..12` (computed to 60 digits).
    const ROOTS: [u64; 12] = [
        0x3FFD3A46FFC6E30F,
        0x3FFA74ACBDF6C9D5,
        0x3FF4E9D4703DF843,
        0x3FE9D59487236BB4,
        0x3FD3B2D65447B229,
        0x3FA784571EE3E213,
        0x3F4F83033D21B05D,
        0x3EA0ECB6DC8A80CF,
        0x3D495F454921B30B,
        0x3AB031B9F7490E4C,
        0x35D13F32B5A75ABD,
        0x2D413CCCFE779921,
    ];
    static TABLE: OnceLock<[u64; 4096]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u64; 4096];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut x: u128 = 1 << 62;
            for (b, &root) in ROOTS.iter().enumerate() {
                if i & (1 << b) != 0 {
                    x = (x * root as u128 + (1 << 61)) >> 62;
                }
            }
            *slot = ((x + (1 << 29)) >> 30) as u64;
        }
        t
    })
}

/// Quantises logit rows into frequencies over a fixed alphabet; reuses its buffers.
#[derive(Clone, Debug)]
pub struct Quantiser {
    /// Which token ids may be coded (frequency >= 1); the others get 0.
    codable: Vec<bool>,
    n_codable: u64,
    end_of_window_freq: u64,
    weights: Vec<u64>,
    /// `cum[s]`: start of symbol `s`'s interval; `cum[n_symbols] == TOTAL`.
    cum: Vec<u64>,
}

impl Quantiser {
    /// `codable[id]`: whether token `id` can be coded (the row's width is
    /// `codable.len()`). `end_of_window`: whether the alphabet has the end-of-window
    /// symbol (Equal-Info Windows).
    pub fn new(codable: Vec<bool>, end_of_window: bool) -> Result<Quantiser, CodecError> {
        let n_codable = codable.iter().filter(|&&c| c).count() as u64;
        let eow = if end_of_window { END_OF_WINDOW_FREQ } else { 0 };
        if n_codable == 0 {
            return Err(CodecError::Model(
                "the vocabulary has no token with bytes".into(),
            ));
        }
        if n_codable + ESCAPE_FREQ + eow >= TOTAL / 2 {
            return Err(CodecError::Model(format!(
                "a vocabulary of {n_codable} tokens is too large for the coder"
            )));
        }
        let n = codable.len();
        Ok(Quantiser {
            codable,
            n_codable,
            end_of_window_freq: eow,
            weights: vec![0; n],
            cum: vec![0; n + 3],
        })
    }

    /// Tokens in the alphabet (the logit rows' width).
    pub fn n_tokens(&self) -> usize {
        self.codable.len()
    }

    pub fn is_codable(&self, id: u32) -> bool {
        self.codable.get(id as usize).copied().unwrap_or(false)
    }

    fn index(&self, s: Symbol) -> usize {
        let n = self.codable.len();
        match s {
            Symbol::Token(id) => id as usize,
            Symbol::Escape => n,
            Symbol::EndOfWindow => n + 1,
        }
    }

    /// Sets the frequencies from a row of logits (`None`: uniform over the codable
    /// tokens, for a first token that has no context).
    pub fn quantise(&mut self, logits: Option<&[f32]>) {
        let n = self.codable.len();
        let table = exp2_table();
        // The most probable codable token; NaN never compares greater.
        let mut best: Option<(usize, f32)> = None;
        if let Some(row) = logits {
            for (i, (&x, &c)) in row.iter().zip(&self.codable).enumerate() {
                if c && best.is_none_or(|(_, m)| x > m) {
                    best = Some((i, x));
                }
            }
        }
        let (arg, max) = match best {
            Some((i, m)) if m.is_finite() => (i, Some(m)),
            // No row, or no usable logit: uniform.
            _ => (self.codable.iter().position(|&c| c).unwrap_or(0), None),
        };
        let mut sum: u64 = 0;
        for (i, w) in self.weights.iter_mut().enumerate() {
            *w = if !self.codable[i] {
                0
            } else if let (Some(m), Some(row)) = (max, logits) {
                let q = (m - row[i]) * NATS_TO_FIXED_BITS;
                // NaN fails `q < MAX` too: a NaN or -inf logit weighs 0.
                if q < MAX_FIXED {
                    let q = q as u32; // q >= 0: truncation toward zero
                    table[(q & ((1 << FRAC_BITS) - 1)) as usize] >> (q >> FRAC_BITS)
                } else {
                    0
                }
            } else {
                1
            };
            sum += *w;
        }
        // The argmax weighs 2^32, so sum > 0.
        let budget = TOTAL - self.n_codable - ESCAPE_FREQ - self.end_of_window_freq;
        let scale = ((budget as u128) << 32) / sum as u128;
        let mut acc: u64 = 0;
        for i in 0..n {
            self.cum[i] = acc;
            if self.codable[i] {
                let share = ((self.weights[i] as u128 * scale) >> 32) as u64;
                acc += 1 + share;
            }
        }
        // Rounding left `TOTAL - ESCAPE - EOW - acc` over: give it to the argmax, so the
        // total is exact. The shares sum to at most `budget` (each is rounded down).
        let leftover = TOTAL - ESCAPE_FREQ - self.end_of_window_freq - acc;
        for c in &mut self.cum[arg + 1..n] {
            *c += leftover;
        }
        self.cum[n] = TOTAL - ESCAPE_FREQ - self.end_of_window_freq;
        self.cum[n + 1] = TOTAL - self.end_of_window_freq;
        self.cum[n + 2] = TOTAL;
    }

    /// `(cum, freq)` of a symbol under the current frequencies (freq 0: not codable).
    /// The control symbols' intervals are constants, so a decoder can recognise an
    /// end of window before it computes the next row of logits.
    pub fn interval(&self, s: Symbol) -> (u64, u64) {
        let eow = self.end_of_window_freq;
        match s {
            Symbol::EndOfWindow => (TOTAL - eow, eow),
            Symbol::Escape => (TOTAL - eow - ESCAPE_FREQ, ESCAPE_FREQ),
            Symbol::Token(_) => {
                let i = self.index(s);
                match self.cum.get(i + 1) {
                    Some(&hi) if i < self.codable.len() => (self.cum[i], hi - self.cum[i]),
                    _ => (0, 0),
                }
            }
        }
    }

    /// The symbol whose interval contains `v` (`v < TOTAL`), with that interval.
    pub fn find(&self, v: u64) -> (Symbol, u64, u64) {
        let n = self.codable.len();
        // Symbols with frequency 0 share their start with the next one, so the last
        // start `<= v` belongs to the symbol that holds `v`.
        let i = self.cum[..n + 2].partition_point(|&c| c <= v) - 1;
        let s = if i < n {
            Symbol::Token(i as u32)
        } else if i == n {
            Symbol::Escape
        } else {
            Symbol::EndOfWindow
        };
        (s, self.cum[i], self.cum[i + 1] - self.cum[i])
    }

    /// Frequencies of the tokens (tests and diagnostics).
    pub fn token_freqs(&self) -> Vec<u64> {
        (0..self.codable.len())
            .map(|i| self.cum[i + 1] - self.cum[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_exp2() {
        let t = exp2_table();
        for (i, &v) in t.iter().enumerate() {
            let want = (2f64).powf(-(i as f64) / 4096.0) * 4294967296.0;
            assert!((v as f64 - want).abs() <= 2.0, "{i}: {v} vs {want}");
        }
        assert_eq!(t[0], 1 << 32);
    }

    #[test]
    fn frequencies_follow_softmax_and_sum_to_total() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, f32::NEG_INFINITY, f32::NAN, 3.0];
        let codable = vec![true, true, true, true, true, true, false];
        let mut q = Quantiser::new(codable, false).unwrap();
        q.quantise(Some(&logits));
        let f = q.token_freqs();
        assert_eq!(f[6], 0, "a token that is not codable gets nothing");
        assert_eq!(f[4], 1, "-inf gets the floor");
        assert_eq!(f[5], 1, "NaN gets the floor");
        let z: f64 = logits[..4].iter().map(|&x| (x as f64).exp()).sum();
        let budget = (TOTAL - ESCAPE_FREQ) as f64;
        for i in 0..4 {
            let p = (logits[i] as f64).exp() / z;
            let got = f[i] as f64 / budget;
            assert!((got / p - 1.0).abs() < 1e-3, "token {i}: {got} vs {p}");
        }
        let total: u64 = f.iter().sum::<u64>() + ESCAPE_FREQ;
        assert_eq!(total, TOTAL);
        assert_eq!(
            q.interval(Symbol::Escape),
            (TOTAL - ESCAPE_FREQ, ESCAPE_FREQ)
        );
        assert_eq!(q.interval(Symbol::EndOfWindow).1, 0);
    }

    #[test]
    fn uniform_without_logits() {
        let mut q = Quantiser::new(vec![true, false, true, true], true).unwrap();
        q.quantise(None);
        let f = q.token_freqs();
        assert_eq!(f[1], 0);
        assert!(f[0].abs_diff(f[2]) <= 2 && f[2] == f[3]);
        assert_eq!(
            q.interval(Symbol::EndOfWindow),
            (TOTAL - END_OF_WINDOW_FREQ, END_OF_WINDOW_FREQ)
        );
    }

    #[test]
    fn find_inverts_interval() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.7).collect();
        let codable: Vec<bool> = (0..50).map(|i| i % 9 != 4).collect();
        let mut q = Quantiser::new(codable.clone(), true).unwrap();
        q.quantise(Some(&logits));
        let mut syms: Vec<Symbol> = (0..50u32)
            .filter(|&i| codable[i as usize])
            .map(Symbol::Token)
            .collect();
        syms.extend([Symbol::Escape, Symbol::EndOfWindow]);
        for s in syms {
            let (c, f) = q.interval(s);
            assert!(f > 0);
            for v in [c, c + f / 2, c + f - 1] {
                assert_eq!(q.find(v), (s, c, f));
            }
        }
    }
}
