//! The byte-level distributions against brute force on a hand-made vocabulary and a
//! deterministic toy model: they sum to one, their chain equals the token-level
//! probability summed over every tokenisation (cover encodings for a prefix, complete
//! tokenisations followed by an end token for a whole string), the model is called once
//! per tokenisation of each prefix, and pruning stays within its stated bound.

use bytelevel::{ByteLevel, ByteLevelError, Prune, TokenLm, Vocabulary};

/// Token ids: 0 = end, 1 = a control token (no bytes), then text tokens. `a` twice (a
/// byte token beside a normal one), UTF-8 of `é` whole and split, no token for `z`.
fn pieces() -> Vec<Vec<u8>> {
    let text: [&[u8]; 14] = [
        b"a",
        b"b",
        b"ab",
        b"ba",
        b"aab",
        b"abb",
        b"bab",
        b"a",
        b"c",
        b"abc",
        b"\xc3",
        b"\xa9",
        b"\xc3\xa9",
        b"b\xc3",
    ];
    let mut v = vec![b"</s>".to_vec(), Vec::new()];
    v.extend(text.iter().map(|t| t.to_vec()));
    v
}

const END: u32 = 0;

fn vocab() -> Vocabulary {
    Vocabulary::new(pieces(), vec![END]).expect("valid vocabulary")
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Logits in [-4, 4) from a hash of the context and the token; counts its calls.
struct ToyLm {
    n: usize,
    calls: u64,
}

impl ToyLm {
    fn logit(context: &[u32], token: u32) -> f32 {
        let mut h = 0x1234_5678u64;
        for &t in context {
            h = splitmix(h ^ t as u64);
        }
        let r = splitmix(h ^ (0xABCD_0000 + token as u64));
        (r >> 11) as f32 / (1u64 << 53) as f32 * 8.0 - 4.0
    }
}

impl TokenLm for ToyLm {
    fn next_logits(
        &mut self,
        context: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.calls += 1;
        out.clear();
        out.extend((0..self.n as u32).map(|t| Self::logit(context, t)));
        Ok(())
    }
}

fn toy() -> ToyLm {
    ToyLm {
        n: pieces().len(),
        calls: 0,
    }
}

/// Next-token probability of the brute force: softmax over text and end tokens,
/// written independently of the crate.
fn p_next(v: &Vocabulary, context: &[u32], token: u32) -> f64 {
    let allowed: Vec<u32> = (0..v.len() as u32).filter(|&t| v.is_allowed(t)).collect();
    let z: f64 = allowed
        .iter()
        .map(|&t| (ToyLm::logit(context, t) as f64).exp())
        .sum();
    (ToyLm::logit(context, token) as f64).exp() / z
}

fn text_tokens(v: &Vocabulary) -> Vec<u32> {
    (0..v.len() as u32)
        .filter(|&t| !v.piece(t).is_empty())
        .collect()
}

/// `P(x)`: the sum over cover encodings, enumerated recursively from scratch.
fn brute_prefix(v: &Vocabulary, x: &[u8]) -> f64 {
    fn go(v: &Vocabulary, x: &[u8], i: usize, ctx: &mut Vec<u32>, p: f64) -> f64 {
        let mut sum = 0.0;
        for t in text_tokens(v) {
            let piece = v.piece(t);
            let rest = &x[i..];
            if piece.starts_with(rest) {
                // The last token: it reaches the end of x.
                sum += p * p_next(v, ctx, t);
            } else if rest.starts_with(piece) {
                let q = p * p_next(v, ctx, t);
                ctx.push(t);
                sum += go(v, x, i + piece.len(), ctx, q);
                ctx.pop();
            }
        }
        sum
    }
    if x.is_empty() {
        return 1.0;
    }
    go(v, x, 0, &mut Vec::new(), 1.0)
}

/// Every token sequence spelling exactly `x`.
fn tokenisations(v: &Vocabulary, x: &[u8]) -> Vec<Vec<u32>> {
    if x.is_empty() {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for t in text_tokens(v) {
        if x.starts_with(v.piece(t)) {
            for mut rest in tokenisations(v, &x[v.piece(t).len()..]) {
                rest.insert(0, t);
                out.push(rest);
            }
        }
    }
    out
}

/// `P(x, end)`: every complete tokenisation of `x`, then the end token.
fn brute_complete(v: &Vocabulary, x: &[u8]) -> f64 {
    tokenisations(v, x)
        .iter()
        .map(|ts| {
            let mut p = 1.0;
            for k in 0..ts.len() {
                p *= p_next(v, &ts[..k], ts[k]);
            }
            p * p_next(v, ts, END)
        })
        .sum()
}

fn assert_sums_to_one(bl: &ByteLevel<'_, ToyLm>) {
    let d = bl.distribution();
    let total: f64 = d.bytes.iter().sum::<f64>() + d.end;
    assert!(
        (total - 1.0).abs() < 1e-9,
        "sum {total} after {:?}",
        bl.prefix()
    );
}

const STRINGS: [&[u8]; 6] = [
    b"abab",
    b"aabba",
    b"babc",
    b"ab\xc3\xa9a",
    b"b\xc3\xa9",
    b"aaabbbab",
];

#[test]
fn distribution_sums_to_one_at_every_step() {
    let v = vocab();
    for s in STRINGS {
        let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
        assert_sums_to_one(&bl);
        for &b in s {
            bl.push(b).expect("possible byte");
            assert_sums_to_one(&bl);
        }
    }
}

#[test]
fn chain_equals_sum_over_tokenisations() {
    let v = vocab();
    let mut max_rel = 0.0f64;
    for s in STRINGS {
        let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
        let mut chain = 0.0;
        for (k, &b) in s.iter().enumerate() {
            chain += bl.push(b).expect("possible byte");
            let want = brute_prefix(&v, &s[..=k]);
            max_rel = max_rel.max((chain - want.ln()).abs());
        }
        let (lo, hi) = bl.log_prefix_bounds();
        assert!((lo - chain).abs() < 1e-12 && (hi - lo).abs() < 1e-15);
        // The whole string, ended: chain times P(end | x) against complete tokenisations.
        let ended = chain + bl.distribution().end.ln();
        let want = brute_complete(&v, s);
        max_rel = max_rel.max((ended - want.ln()).abs());
    }
    println!("max |Δ log p| = {max_rel:e}");
    assert!(max_rel < 1e-9, "max |Δ log p| = {max_rel:e}");
}

#[test]
fn next_byte_probabilities_match_brute_force() {
    let v = vocab();
    let x = b"aab";
    let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
    bl.push_all(x).expect("possible bytes");
    let d = bl.distribution();
    let px = brute_prefix(&v, x);
    for b in 0..=255u8 {
        let mut xb = x.to_vec();
        xb.push(b);
        let want = brute_prefix(&v, &xb) / px;
        assert!((d.bytes[b as usize] - want).abs() < 1e-12, "byte {b}");
    }
    let want_end = brute_complete(&v, x) / px;
    assert!((d.end - want_end).abs() < 1e-12);
}

#[test]
fn one_model_call_per_tokenisation_of_each_prefix() {
    let v = vocab();
    let s = b"aaabbbab";
    let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
    bl.push_all(s).expect("possible bytes");
    let want: usize = (0..=s.len())
        .map(|i| tokenisations(&v, &s[..i]).len())
        .sum();
    assert_eq!(bl.stats().model_calls, want as u64);
    assert_eq!(bl.lm().calls, want as u64);
}

#[test]
fn empty_prefix() {
    let v = vocab();
    let bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
    let d = bl.distribution();
    assert_sums_to_one(&bl);
    // First bytes: a, b, c, 0xc3, 0xa9 (and ending at once).
    for b in 0..=255u8 {
        let want = brute_prefix(&v, &[b]);
        assert!((d.bytes[b as usize] - want).abs() < 1e-12, "byte {b}");
    }
    assert!((d.end - p_next(&v, &[], END)).abs() < 1e-12);
    assert!(d.entropy() > 0.0);
}

#[test]
fn impossible_bytes_have_probability_zero_and_are_errors() {
    let v = vocab();
    let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
    assert_eq!(bl.distribution().bytes[b'z' as usize], 0.0);
    assert_eq!(bl.logprob(b'z'), f64::NEG_INFINITY);
    match bl.push(b'z') {
        Err(ByteLevelError::ZeroProbability { byte, prefix_len }) => {
            assert_eq!((byte, prefix_len), (b'z', 0));
        }
        other => panic!("expected ZeroProbability, got {other:?}"),
    }
    // The state is unchanged and still usable.
    assert!(bl.prefix().is_empty());
    bl.push(b'a').expect("a is possible");
    assert_sums_to_one(&bl);
}

#[test]
fn invalid_utf8_prefixes() {
    let v = vocab();
    // A lone continuation byte, a truncated two-byte sequence, then completing it.
    for s in [&b"\xa9"[..], b"a\xc3", b"b\xc3\xa9\xc3"] {
        let mut bl = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
        let chain = bl.push_all(s).expect("possible bytes");
        assert_sums_to_one(&bl);
        assert!((chain - brute_prefix(&v, s).ln()).abs() < 1e-9);
    }
}

#[test]
fn model_errors_and_bad_logits_are_errors() {
    struct Short;
    impl TokenLm for Short {
        fn next_logits(
            &mut self,
            _: &[u32],
            out: &mut Vec<f32>,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            out.push(0.0);
            Ok(())
        }
    }
    let v = vocab();
    assert!(matches!(
        ByteLevel::new(&v, Short, Prune::exact()),
        Err(ByteLevelError::LogitsLength { .. })
    ));
    assert!(Vocabulary::new(pieces(), vec![99]).is_err());
}

#[test]
fn pruning_stays_within_its_bound() {
    let v = vocab();
    let prune = Prune {
        min_relative: 0.05,
        max_new_boundaries: 2,
    };
    for s in STRINGS {
        let mut exact = ByteLevel::new(&v, toy(), Prune::exact()).expect("starts");
        let mut approx = ByteLevel::new(&v, toy(), prune).expect("starts");
        for &b in s {
            exact.push(b).expect("possible byte");
            approx.push(b).expect("possible byte under pruning");
            // ln P(x) lies within the reported bounds.
            let (lo, hi) = approx.log_prefix_bounds();
            let truth = brute_prefix(&v, approx.prefix()).ln();
            assert!(
                lo <= truth + 1e-12 && truth <= hi + 1e-12,
                "{lo} <= {truth} <= {hi}"
            );
            let (e, a) = (exact.distribution(), approx.distribution());
            let delta = a.error_bound;
            for (pe, pa) in e
                .bytes
                .iter()
                .chain([&e.end])
                .zip(a.bytes.iter().chain([&a.end]))
            {
                assert!(*pe >= pa / (1.0 + delta) - 1e-12, "{pe} < {pa}/(1+{delta})");
                assert!(*pe <= pa + delta + 1e-12, "{pe} > {pa} + {delta}");
            }
        }
        assert!(approx.stats().model_calls <= exact.stats().model_calls);
    }
    // The harshest pruning still keeps one boundary per byte, so every byte a
    // single-byte token spells stays possible.
    let harsh = Prune {
        min_relative: 1.0,
        max_new_boundaries: 0,
    };
    for s in STRINGS {
        let mut approx = ByteLevel::new(&v, toy(), harsh).expect("starts");
        for &b in s {
            approx.push(b).expect("possible byte under pruning");
            assert_sums_to_one(&approx);
            for one in [b'a', b'b', b'c', 0xc3, 0xa9] {
                assert!(approx.distribution().bytes[one as usize] > 0.0);
            }
        }
    }
    // Pruning did happen, so the comparisons above tested something. (The toy model's
    // random logits make every tokenisation about as likely as the canonical one, so δ
    // grows quickly here; a real model's non-canonical tokenisations are rare.)
    let mut approx = ByteLevel::new(&v, toy(), prune).expect("starts");
    approx.push_all(b"aaabbbab").expect("possible bytes");
    assert!(approx.stats().pruned > 0);
    let delta = approx.distribution().error_bound;
    println!("δ after aaabbbab: {delta:e}");
    assert!(delta > 0.0 && delta.is_finite());
}
