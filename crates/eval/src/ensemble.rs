//! Byte-level ensembles of two models, whatever their vocabularies.
//!
//! Two token models with different tokenizers cannot be averaged token by token, but
//! each defines an exact next-byte distribution (`engine::byte_level`, marginalised
//! over tokenisations), and two distributions over the same 256 bytes + end can be
//! combined. The combinations here, all causal (each byte's probability uses only the
//! bytes before it), so each is a model an arithmetic coder could use losslessly:
//!
//! * [`mixture`]: `p = w p1 + (1 - w) p2` (linear pooling). Never worse than
//!   `-log2 w` bits per byte above model 1 (and `-log2 (1 - w)` above model 2).
//! * [`product`]: `p ∝ p1^a p2^(1-a)` (geometric pooling, a product of experts):
//!   sharper than the mixture where the models agree, but a byte one model all but
//!   rules out stays unlikely whatever the other says.
//! * [`BayesMixture`]: a mixture whose weights are each expert's posterior, i.e. its
//!   prior times its likelihood of the bytes so far (the weighting of context-mixing
//!   compressors, without their learned step size). Its code length is at most the
//!   best expert's plus `log2 K` bits over the whole sequence, for `K` experts with a
//!   uniform prior: `P_mix(x) = Σ_i P_i(x) / K >= max_i P_i(x) / K`.
//!   With a fixed share `α` ([`BayesMixture::fixed_share`], Herbster & Warmuth 1998)
//!   each step hands `α` of the weight back to the uniform prior, so an expert that
//!   was bad for a while recovers quickly when it becomes the better one (the
//!   situation of two models each stronger on different parts of a text); it costs at
//!   most `log2 1/(1-α)` bits per byte against the plain Bayesian bound.
//!
//! [`score_pair`] pushes a text through two byte models in lockstep and adds up
//! `-log2 p(actual byte)` for each model alone and each [`Method`].

use engine::byte_level::{ByteDistribution, ByteScorer};

use crate::{EvalError, Result};

/// Outcomes of a next-byte distribution: the 256 bytes, then the end of the stream.
const OUTCOMES: usize = 257;

/// A causal next-byte model: its distribution after the bytes pushed so far.
pub trait NextByteModel {
    /// `P(b | prefix)` for every byte, and of ending.
    fn distribution(&self) -> ByteDistribution;
    /// Appends a byte to the prefix.
    fn push(&mut self, byte: u8) -> Result<()>;
}

impl NextByteModel for ByteScorer<'_> {
    fn distribution(&self) -> ByteDistribution {
        ByteScorer::distribution(self)
    }

    fn push(&mut self, byte: u8) -> Result<()> {
        ByteScorer::push(self, byte)
            .map(|_| ())
            .map_err(|e| EvalError::Input(e.to_string()))
    }
}

fn outcome(d: &ByteDistribution, k: usize) -> f64 {
    if k < 256 {
        d.bytes[k]
    } else {
        d.end
    }
}

fn from_outcomes(p: &[f64; OUTCOMES], error_bound: f64) -> ByteDistribution {
    let mut bytes = [0.0; 256];
    bytes.copy_from_slice(&p[..256]);
    ByteDistribution {
        bytes,
        end: p[256],
        error_bound,
    }
}

fn check_weight(name: &str, w: f64) -> Result<()> {
    if (0.0..=1.0).contains(&w) {
        Ok(())
    } else {
        Err(EvalError::Input(format!(
            "{name} weight {w} is not in [0, 1]"
        )))
    }
}

/// Linear pooling: `p = w p1 + (1 - w) p2` over the 256 bytes and the end. Sums to 1
/// when both inputs do.
pub fn mixture(p1: &ByteDistribution, p2: &ByteDistribution, w: f64) -> Result<ByteDistribution> {
    check_weight("mixture", w)?;
    let mut p = [0.0; OUTCOMES];
    for (k, pk) in p.iter_mut().enumerate() {
        *pk = w * outcome(p1, k) + (1.0 - w) * outcome(p2, k);
    }
    // Each input's pruning bound `q/(1+δ) <= P <= q + δ` survives a convex
    // combination with the larger δ.
    Ok(from_outcomes(&p, p1.error_bound.max(p2.error_bound)))
}

/// Geometric pooling: `p ∝ p1^a p2^(1-a)` over the 256 bytes and the end, normalised.
/// A weight of 0 drops that model entirely (`0^0 = 1`), so `a = 1` returns model 1
/// exactly. An error when no outcome has mass under both models (disjoint supports).
pub fn product(p1: &ByteDistribution, p2: &ByteDistribution, a: f64) -> Result<ByteDistribution> {
    check_weight("product", a)?;
    // In the log domain, shifted by the largest term: the product of two small
    // probabilities underflows long before its normalised value does.
    let weighted_ln = |w: f64, q: f64| if w == 0.0 { 0.0 } else { w * q.ln() };
    let mut log_p = [0.0; OUTCOMES];
    for (k, l) in log_p.iter_mut().enumerate() {
        *l = weighted_ln(a, outcome(p1, k)) + weighted_ln(1.0 - a, outcome(p2, k));
    }
    let max = log_p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(EvalError::Input(
            "product of two distributions with disjoint supports (or a NaN)".into(),
        ));
    }
    let mut p = [0.0; OUTCOMES];
    let mut total = 0.0;
    for (pk, &l) in p.iter_mut().zip(&log_p) {
        *pk = (l - max).exp();
        total += *pk;
    }
    for pk in &mut p {
        *pk /= total;
    }
    // Pruning bounds do not carry through a renormalised product: exact inputs give an
    // exact product, otherwise no bound is claimed.
    let error_bound = if p1.error_bound == 0.0 && p2.error_bound == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    Ok(from_outcomes(&p, error_bound))
}

/// A Bayesian mixture of `K` experts with a uniform prior: the weight of expert `i` is
/// its posterior `∝ Π_t p_i(x_t)`, kept in the log domain (likelihoods of long texts
/// underflow).
#[derive(Clone, Debug)]
pub struct BayesMixture {
    /// `ln` of each expert's unnormalised weight.
    log_weights: Vec<f64>,
    /// Fraction of the weight returned to the uniform prior after each update.
    share: f64,
}

impl BayesMixture {
    pub fn new(experts: usize) -> BayesMixture {
        BayesMixture {
            log_weights: vec![0.0; experts],
            share: 0.0,
        }
    }

    /// A fixed-share mixture: after each Bayesian update the weights become
    /// `(1 - share) w + share / K` (`share` in `[0, 1]`).
    pub fn fixed_share(experts: usize, share: f64) -> Result<BayesMixture> {
        check_weight("fixed-share", share)?;
        Ok(BayesMixture {
            log_weights: vec![0.0; experts],
            share,
        })
    }

    /// The normalised weights (the posterior over experts), each in `[0, 1]`.
    pub fn weights(&self) -> Vec<f64> {
        let max = self
            .log_weights
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = self.log_weights.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    /// The mixture's probability of an outcome to which the experts give `expert_p`.
    pub fn probability(&self, expert_p: &[f64]) -> f64 {
        self.weights()
            .iter()
            .zip(expert_p)
            .map(|(w, p)| w * p)
            .sum()
    }

    /// The mixture's next-outcome distribution over the experts' distributions.
    pub fn distribution(&self, experts: &[&ByteDistribution]) -> ByteDistribution {
        let w = self.weights();
        let mut p = [0.0; OUTCOMES];
        for (pk, k) in p.iter_mut().zip(0..) {
            *pk = experts.iter().zip(&w).map(|(d, w)| w * outcome(d, k)).sum();
        }
        let error_bound = experts.iter().map(|d| d.error_bound).fold(0.0, f64::max);
        from_outcomes(&p, error_bound)
    }

    /// Bayes' rule after an outcome the experts gave `expert_p`: each weight times its
    /// expert's probability. An expert that gave it zero drops out for good; when all
    /// did, the weights are left as they were (the caller reports the zero).
    pub fn update(&mut self, expert_p: &[f64]) {
        if expert_p.iter().all(|&p| p <= 0.0) {
            return;
        }
        for (l, &p) in self.log_weights.iter_mut().zip(expert_p) {
            *l += p.ln();
        }
        if self.share > 0.0 {
            let uniform = 1.0 / self.log_weights.len() as f64;
            let shared: Vec<f64> = self
                .weights()
                .iter()
                .map(|w| ((1.0 - self.share) * w + self.share * uniform).ln())
                .collect();
            self.log_weights = shared;
        }
    }
}

/// One way of predicting each byte from the two models' distributions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Model1,
    Model2,
    /// [`mixture`] with model 1's weight.
    Mixture(f64),
    /// [`product`] with model 1's exponent.
    Product(f64),
    /// [`BayesMixture`] of the two models.
    Bayes,
    /// [`BayesMixture::fixed_share`] of the two models with this share.
    FixedShare(f64),
    /// [`BayesMixture`] of model 1, model 2 and their [`product`] at 0.5: the mixture
    /// can pick the product where the models agree and fall back to one where it fails.
    BayesWithProduct,
}

impl Method {
    /// The methods the evaluation reports, in table order.
    pub fn standard() -> Vec<Method> {
        vec![
            Method::Model1,
            Method::Model2,
            Method::Mixture(0.25),
            Method::Mixture(0.5),
            Method::Mixture(0.75),
            Method::Product(0.5),
            Method::Bayes,
            // 1/100 chosen before any measurement: about one switch per hundred
            // bytes, at most 0.0145 bits per byte of overhead.
            Method::FixedShare(0.01),
            Method::BayesWithProduct,
        ]
    }

    /// A short column name: `m1`, `m2`, `mix 0.25`, `prod 0.5`, `bayes`, `bayes+prod`.
    pub fn name(&self) -> String {
        match self {
            Method::Model1 => "m1".into(),
            Method::Model2 => "m2".into(),
            Method::Mixture(w) => format!("mix {w}"),
            Method::Product(a) => format!("prod {a}"),
            Method::Bayes => "bayes".into(),
            Method::FixedShare(s) => format!("share {s}"),
            Method::BayesWithProduct => "bayes+prod".into(),
        }
    }
}

/// Bits of one text under each method.
#[derive(Clone, Debug, PartialEq)]
pub struct PassageBits {
    pub bytes: usize,
    /// `Σ -log2 p(byte)`, one entry per method, in the order asked for.
    pub bits: Vec<f64>,
}

impl PassageBits {
    pub fn bits_per_byte(&self, method: usize) -> f64 {
        self.bits[method] / self.bytes as f64
    }
}

/// Per-method state through one text: the Bayesian mixtures' posteriors.
enum MethodState {
    Stateless,
    Bayes(BayesMixture),
}

/// Pushes `text` through both models in lockstep (each must start at the empty
/// prefix) and adds up each method's `-log2 p(actual byte)`. An error, never NaN, if a
/// method gives an actual byte probability zero (or a non-finite one).
pub fn score_pair<M1: NextByteModel, M2: NextByteModel>(
    model1: &mut M1,
    model2: &mut M2,
    text: &[u8],
    methods: &[Method],
) -> Result<PassageBits> {
    let mut states: Vec<MethodState> = methods
        .iter()
        .map(|m| match m {
            Method::Bayes => Ok(MethodState::Bayes(BayesMixture::new(2))),
            Method::FixedShare(s) => BayesMixture::fixed_share(2, *s).map(MethodState::Bayes),
            Method::BayesWithProduct => Ok(MethodState::Bayes(BayesMixture::new(3))),
            _ => Ok(MethodState::Stateless),
        })
        .collect::<Result<_>>()?;
    let mut bits = vec![0.0; methods.len()];
    for (index, &byte) in text.iter().enumerate() {
        let d1 = model1.distribution();
        let d2 = model2.distribution();
        let b = byte as usize;
        // The product at 0.5 is the third Bayesian expert; computed once per byte.
        let half_product = if methods.contains(&Method::BayesWithProduct) {
            Some(product(&d1, &d2, 0.5)?.bytes[b])
        } else {
            None
        };
        for ((method, state), total) in methods.iter().zip(&mut states).zip(&mut bits) {
            let p = match (method, state) {
                (Method::Model1, _) => d1.bytes[b],
                (Method::Model2, _) => d2.bytes[b],
                (Method::Mixture(w), _) => mixture(&d1, &d2, *w)?.bytes[b],
                (Method::Product(a), _) => product(&d1, &d2, *a)?.bytes[b],
                (
                    Method::Bayes | Method::FixedShare(_) | Method::BayesWithProduct,
                    MethodState::Bayes(mix),
                ) => {
                    let mut expert_p = vec![d1.bytes[b], d2.bytes[b]];
                    expert_p.extend(half_product.filter(|_| *method == Method::BayesWithProduct));
                    let p = mix.probability(&expert_p);
                    mix.update(&expert_p);
                    p
                }
                (
                    Method::Bayes | Method::FixedShare(_) | Method::BayesWithProduct,
                    MethodState::Stateless,
                ) => {
                    unreachable!("Bayesian methods are given a mixture state above")
                }
            };
            if !(p > 0.0 && p.is_finite()) {
                return Err(EvalError::Input(format!(
                    "{}: byte {index} (0x{byte:02x}) has probability {p}",
                    method.name()
                )));
            }
            *total -= p.log2();
        }
        let which = |n: u8| move |e: EvalError| EvalError::Input(format!("model {n}: {e}"));
        model1.push(byte).map_err(which(1))?;
        model2.push(byte).map_err(which(2))?;
    }
    Ok(PassageBits {
        bytes: text.len(),
        bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distribution from unnormalised weights over the 256 bytes and the end.
    fn dist(weights: impl Fn(usize) -> f64) -> ByteDistribution {
        let mut p = [0.0; OUTCOMES];
        for (k, pk) in p.iter_mut().enumerate() {
            *pk = weights(k);
        }
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        from_outcomes(&p, 0.0)
    }

    fn total(d: &ByteDistribution) -> f64 {
        d.bytes.iter().sum::<f64>() + d.end
    }

    /// Varied shapes: uniform, peaked, a zero-probability region, tiny masses that
    /// underflow when multiplied naively.
    fn samples() -> Vec<ByteDistribution> {
        vec![
            dist(|_| 1.0),
            dist(|k| if k == b'e' as usize { 100.0 } else { 1.0 }),
            dist(|k| if k < 128 { (k + 1) as f64 } else { 0.0 }),
            dist(|k| (-((k as f64) - 40.0).powi(2) / 8.0).exp() + 1e-300),
            dist(|k| if k == 256 { 0.5 } else { 1e-200 }),
        ]
    }

    #[test]
    fn combinations_sum_to_one() {
        for (i, p1) in samples().iter().enumerate() {
            for (j, p2) in samples().iter().enumerate() {
                for w in [0.0, 0.25, 0.5, 0.75, 1.0] {
                    let m = mixture(p1, p2, w).unwrap();
                    assert!((total(&m) - 1.0).abs() < 1e-9, "mixture {i} {j} {w}");
                    let p = product(p1, p2, w).unwrap();
                    assert!((total(&p) - 1.0).abs() < 1e-9, "product {i} {j} {w}");
                    let mut bayes = BayesMixture::new(2);
                    bayes.update(&[p1.bytes[7], p2.bytes[7]]);
                    let b = bayes.distribution(&[p1, p2]);
                    assert!((total(&b) - 1.0).abs() < 1e-9, "bayes {i} {j}");
                }
            }
        }
    }

    #[test]
    fn full_weight_returns_model_one() {
        for p1 in &samples() {
            for p2 in &samples() {
                assert_eq!(&mixture(p1, p2, 1.0).unwrap(), p1);
                let p = product(p1, p2, 1.0).unwrap();
                for k in 0..OUTCOMES {
                    let (got, want) = (outcome(&p, k), outcome(p1, k));
                    assert!((got - want).abs() <= 1e-12 * want.max(1e-300), "{k}");
                }
            }
        }
    }

    #[test]
    fn product_of_equal_distributions_is_that_distribution() {
        for p in &samples() {
            let q = product(p, p, 0.5).unwrap();
            for k in 0..OUTCOMES {
                assert!((outcome(&q, k) - outcome(p, k)).abs() <= 1e-12 * outcome(p, k));
            }
        }
    }

    #[test]
    fn bad_weights_and_disjoint_supports_are_errors() {
        let low = dist(|k| if k < 100 { 1.0 } else { 0.0 });
        let high = dist(|k| if k >= 100 { 1.0 } else { 0.0 });
        assert!(mixture(&low, &high, 1.5).is_err());
        assert!(mixture(&low, &high, f64::NAN).is_err());
        assert!(product(&low, &high, -0.1).is_err());
        assert!(product(&low, &high, 0.5).is_err());
    }

    /// A synthetic byte model: a fixed distribution per position, from a table.
    struct Scripted {
        steps: Vec<ByteDistribution>,
        at: usize,
    }

    impl NextByteModel for Scripted {
        fn distribution(&self) -> ByteDistribution {
            self.steps[self.at].clone()
        }
        fn push(&mut self, _byte: u8) -> Result<()> {
            self.at += 1;
            Ok(())
        }
    }

    /// A deterministic pseudo-random sequence in [0, 1) (xorshift), so the test data
    /// is the same on every run without a dependency.
    fn uniforms(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    /// Two scripted models over a text in which model 1 is good on the first half and
    /// model 2 on the second, with random noise: the case a mixture is for.
    fn scripted_pair(seed: u64, n: usize) -> (Scripted, Scripted, Vec<u8>) {
        let noise = uniforms(seed, 3 * n);
        let text: Vec<u8> = (0..n).map(|i| b'a' + (noise[i] * 26.0) as u8).collect();
        let peaked = |target: u8, strength: f64, jitter: &[f64]| {
            dist(|k| {
                let base = 0.05 + jitter[k % jitter.len()];
                if k == target as usize {
                    base + strength
                } else {
                    base
                }
            })
        };
        let mut s1 = Vec::new();
        let mut s2 = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            let first_half = i < n / 2;
            let j = &noise[n + i..n + i + 7];
            let wrong = b'a' + ((b - b'a' + 1) % 26);
            s1.push(peaked(
                if first_half { b } else { wrong },
                20.0 * noise[2 * n + i],
                j,
            ));
            s2.push(peaked(
                if first_half { wrong } else { b },
                20.0 * noise[2 * n + i],
                j,
            ));
        }
        // One distribution per byte: `score_pair` asks before each push only.
        (
            Scripted { steps: s1, at: 0 },
            Scripted { steps: s2, at: 0 },
            text,
        )
    }

    #[test]
    fn bayes_mixture_is_within_log2_k_bits_of_the_best_expert() {
        for (seed, n) in [(1u64, 10usize), (7, 200), (12345, 1000)] {
            let (mut m1, mut m2, text) = scripted_pair(seed, n);
            let methods = Method::standard();
            let r = score_pair(&mut m1, &mut m2, &text, &methods).unwrap();
            let bits = |m: Method| r.bits[methods.iter().position(|&x| x == m).unwrap()];
            let best = bits(Method::Model1).min(bits(Method::Model2));
            assert!(bits(Method::Bayes) <= best + 1.0 + 1e-9, "seed {seed}");
            // Fixed share pays at most log2 1/(1-α) per byte more than plain Bayes's bound.
            let share_cost = n as f64 * -(1.0 - 0.01f64).log2();
            assert!(
                bits(Method::FixedShare(0.01)) <= best + 1.0 + share_cost + 1e-9,
                "seed {seed}"
            );
            let best3 = best.min(bits(Method::Product(0.5)));
            assert!(
                bits(Method::BayesWithProduct) <= best3 + 3f64.log2() + 1e-9,
                "seed {seed}"
            );
            for (m, b) in methods.iter().zip(&r.bits) {
                assert!(b.is_finite() && *b > 0.0, "{m:?} {b}");
            }
        }
    }

    #[test]
    fn bayes_weights_stay_in_the_unit_interval() {
        let (m1, m2, text) = scripted_pair(99, 300);
        let mut mix = BayesMixture::new(2);
        for (i, &b) in text.iter().enumerate() {
            let expert_p = [m1.steps[i].bytes[b as usize], m2.steps[i].bytes[b as usize]];
            mix.update(&expert_p);
            let w = mix.weights();
            assert!(w.iter().all(|x| (0.0..=1.0).contains(x)), "{w:?}");
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // Model 2 is right on the second half: by the end it holds nearly all weight.
        assert!(mix.weights()[1] > 0.99, "{:?}", mix.weights());

        let mut shared = BayesMixture::fixed_share(2, 0.01).unwrap();
        for (i, &b) in text.iter().enumerate() {
            shared.update(&[m1.steps[i].bytes[b as usize], m2.steps[i].bytes[b as usize]]);
            let w = shared.weights();
            // The share keeps every weight at least α/K.
            assert!(w.iter().all(|x| (0.005 - 1e-12..=1.0).contains(x)), "{w:?}");
        }
        assert!(BayesMixture::fixed_share(2, 1.5).is_err());
    }

    #[test]
    fn mixture_of_a_model_with_itself_scores_as_the_model() {
        let (mut m1, _, text) = scripted_pair(5, 100);
        let mut copy = Scripted {
            steps: m1.steps.clone(),
            at: 0,
        };
        let methods = Method::standard();
        let r = score_pair(&mut m1, &mut copy, &text, &methods).unwrap();
        for b in &r.bits {
            assert!((b - r.bits[0]).abs() < 1e-9 * r.bits[0], "{:?}", r.bits);
        }
    }

    #[test]
    fn an_impossible_byte_is_an_error_not_nan() {
        let zero_for_a = dist(|k| if k == b'a' as usize { 0.0 } else { 1.0 });
        let mut m1 = Scripted {
            steps: vec![zero_for_a.clone()],
            at: 0,
        };
        let mut m2 = Scripted {
            steps: vec![zero_for_a],
            at: 0,
        };
        let err = score_pair(&mut m1, &mut m2, b"a", &Method::standard()).unwrap_err();
        assert!(err.to_string().contains("probability 0"), "{err}");
    }
}
