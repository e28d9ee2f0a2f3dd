//! Verification: which drafted tokens the target model keeps.

use sample::Rng;

use crate::tree::TokenTree;

/// The outcome of [`verify_greedy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreedyVerdict {
    /// Accepted node indices from the root down (the root is always accepted).
    pub accepted: Vec<usize>,
    /// The target's argmax after the last accepted node: the next step's root.
    pub bonus: u32,
}

impl GreedyVerdict {
    /// Drafted tokens accepted (the root does not count).
    pub fn n_accepted(&self) -> usize {
        self.accepted.len() - 1
    }
}

/// Greedy verification of a token tree: starting at the root, move to the child whose
/// token equals the target's argmax at the current node, while there is one. The
/// result is exactly what plain greedy decoding would produce, since every accepted
/// token is the argmax given all the tokens before it.
///
/// `argmax(node)` is the target's greedy choice after `node` (called only along the
/// accepted path, so rows can be evaluated lazily).
pub fn verify_greedy(tree: &TokenTree, mut argmax: impl FnMut(usize) -> u32) -> GreedyVerdict {
    let mut accepted = vec![0];
    let mut at = 0;
    loop {
        let next = argmax(at);
        match tree.child(at, next) {
            Some(child) => {
                accepted.push(child);
                at = child;
            }
            None => {
                return GreedyVerdict {
                    accepted,
                    bonus: next,
                }
            }
        }
    }
}

/// The outcome of [`verify_chain_stochastic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StochasticVerdict {
    /// Draft tokens accepted (a prefix of the chain).
    pub accepted: usize,
    /// The token after them: drawn from the residual distribution at the first
    /// rejection, or from the target's last row when the whole chain was accepted.
    pub next: u32,
}

/// Speculative sampling of a draft chain (Leviathan et al. 2023, Chen et al. 2023).
///
/// * `target[i]`: the target's probabilities (after the whole sampler chain) for the
///   token after the root and the first `i` draft tokens; `draft.len() + 1` rows.
/// * `draft`: the drafted tokens.
/// * `draft_probs[i]`: the drafter's distribution `q` from which `draft[i]` was drawn;
///   `None` for a deterministic drafter, whose `q` is one-hot on the drafted token.
///
/// Token `x = draft[i]` is accepted with probability `min(1, p(x) / q(x))`; at the first
/// rejection the next token is drawn from `norm(max(0, p - q))`. Every emitted token
/// is then distributed exactly as under the target alone.
///
/// Panics if the row counts do not match the chain (a caller bug).
pub fn verify_chain_stochastic(
    target: &[&[f32]],
    draft: &[u32],
    draft_probs: Option<&[&[f32]]>,
    rng: &mut Rng,
) -> StochasticVerdict {
    assert_eq!(
        target.len(),
        draft.len() + 1,
        "one target row per draft token plus one"
    );
    if let Some(q) = draft_probs {
        assert_eq!(q.len(), draft.len(), "one draft row per draft token");
    }
    for (i, &x) in draft.iter().enumerate() {
        let p = target[i];
        let px = f64::from(p[x as usize]);
        let qx = draft_probs.map_or(1.0, |q| f64::from(q[i][x as usize]));
        // u < p/q, written without the division (q(x) > 0 for a drawn token).
        let u = rng.next_f64();
        if u * qx < px {
            continue;
        }
        // Rejected: sample from the residual max(0, p - q).
        let residual = |t: usize| -> f64 {
            let q = match draft_probs {
                Some(q) => f64::from(q[i][t]),
                None => f64::from(u8::from(t == x as usize)),
            };
            (f64::from(p[t]) - q).max(0.0)
        };
        let total: f64 = (0..p.len()).map(residual).sum();
        let next = if total > 0.0 {
            draw(p.len(), total, residual, rng)
        } else {
            // p == q up to rounding: a rejection had probability ~0; p is then exact.
            draw_probs(p, rng)
        };
        return StochasticVerdict { accepted: i, next };
    }
    StochasticVerdict {
        accepted: draft.len(),
        next: draw_probs(target[draft.len()], rng),
    }
}

fn draw_probs(p: &[f32], rng: &mut Rng) -> u32 {
    let total: f64 = p.iter().map(|&v| f64::from(v.max(0.0))).sum();
    draw(p.len(), total, |t| f64::from(p[t].max(0.0)), rng)
}

/// Inverse-CDF draw from unnormalised weights `w(0..n)` summing to `total`.
fn draw(n: usize, total: f64, w: impl Fn(usize) -> f64, rng: &mut Rng) -> u32 {
    let target = rng.next_f64() * total;
    let mut acc = 0.0;
    let mut last = 0;
    for t in 0..n {
        let wt = w(t);
        if wt <= 0.0 {
            continue;
        }
        acc += wt;
        last = t;
        if target < acc {
            return t as u32;
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_follows_the_argmax_path() {
        // 5 ─┬─ 6 ── 7
        //    └─ 8 ── 9
        let mut t = TokenTree::new(5);
        t.insert_chain(0, &[6, 7], 8);
        t.insert_chain(0, &[8, 9], 8);
        // Target: after 5 → 8, after 8 → 9, after 9 → 1.
        let choice = |n: usize| match t.token(n) {
            5 => 8,
            8 => 9,
            9 => 1,
            _ => 0,
        };
        let v = verify_greedy(&t, choice);
        assert_eq!(v.accepted, vec![0, 3, 4]);
        assert_eq!((v.bonus, v.n_accepted()), (1, 2));
        // Nothing matches: only the root.
        let v = verify_greedy(&t, |_| 42);
        assert_eq!(
            v,
            GreedyVerdict {
                accepted: vec![0],
                bonus: 42
            }
        );
    }

    /// Chi-square statistic of `counts` against probabilities `p` over `n` trials.
    fn chi_square(counts: &[usize], p: &[f64], n: usize) -> f64 {
        counts
            .iter()
            .zip(p)
            .filter(|(_, &pi)| pi > 0.0)
            .map(|(&c, &pi)| {
                let e = pi * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn softmax(logits: &[f32]) -> Vec<f32> {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = logits.iter().map(|&l| (l - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    // 99.9% quantiles of chi-square with 5 and 35 degrees of freedom.
    const CHI2_5: f64 = 20.52;
    const CHI2_35: f64 = 66.62;

    /// Over 20k trials the first emitted token follows `p0` and the pair of the first
    /// two emitted tokens follows `p0 × p1` (rows independent of the prefix here),
    /// whatever the drafter proposes.
    fn check_distribution(drafter: &str) {
        let p0 = softmax(&[1.0, 2.0, 0.5, -1.0, 1.5, 0.0]);
        let p1 = softmax(&[0.0, -0.5, 2.5, 1.0, 0.3, 1.2]);
        let p2 = softmax(&[0.2, 0.1, 0.0, 0.4, -0.3, 0.8]);
        let q0 = softmax(&[2.0, -1.0, 0.0, 1.0, 0.0, 0.5]);
        let q1 = softmax(&[0.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
        let mut rng = Rng::seed_from_u64(7);
        let n = 20_000;
        let mut first = [0usize; 6];
        let mut pair = [0usize; 36];
        for _ in 0..n {
            let (draft, q): (Vec<u32>, Option<[&[f32]; 2]>) = match drafter {
                // A deterministic drafter that is often wrong.
                "fixed" => (vec![3, 4], None),
                // Tokens drawn from q, q passed along.
                _ => {
                    let a = draw_probs(&q0, &mut rng);
                    let b = draw_probs(&q1, &mut rng);
                    (vec![a, b], Some([&q0, &q1]))
                }
            };
            let target: [&[f32]; 3] = [&p0, &p1, &p2];
            let v = verify_chain_stochastic(&target, &draft, q.as_ref().map(|q| &q[..]), &mut rng);
            let mut out: Vec<u32> = draft[..v.accepted].to_vec();
            out.push(v.next);
            if out.len() < 2 {
                // Continue as the engine would: plain sampling from the next row.
                out.push(draw_probs(&p1, &mut rng));
            }
            first[out[0] as usize] += 1;
            pair[out[0] as usize * 6 + out[1] as usize] += 1;
        }
        let e0: Vec<f64> = p0.iter().map(|&v| f64::from(v)).collect();
        let e01: Vec<f64> = (0..36)
            .map(|k| f64::from(p0[k / 6]) * f64::from(p1[k % 6]))
            .collect();
        let c1 = chi_square(&first, &e0, n);
        let c2 = chi_square(&pair, &e01, n);
        assert!(
            c1 < CHI2_5,
            "{drafter}: first token chi2 {c1:.2} >= {CHI2_5}"
        );
        assert!(
            c2 < CHI2_35,
            "{drafter}: token pair chi2 {c2:.2} >= {CHI2_35}"
        );
    }

    #[test]
    fn stochastic_output_follows_the_target_with_a_deterministic_drafter() {
        check_distribution("fixed");
    }

    #[test]
    fn stochastic_output_follows_the_target_with_a_sampling_drafter() {
        check_distribution("sampled");
    }

    #[test]
    fn stochastic_accepts_everything_when_draft_equals_target() {
        let p = [0.0f32, 1.0, 0.0];
        let mut rng = Rng::seed_from_u64(1);
        let v = verify_chain_stochastic(&[&p, &p, &p], &[1, 1], None, &mut rng);
        assert_eq!(
            v,
            StochasticVerdict {
                accepted: 2,
                next: 1
            }
        );
        // And rejects a token the target never picks, resampling from p.
        let v = verify_chain_stochastic(&[&p, &p], &[2], None, &mut rng);
        assert_eq!(
            v,
            StochasticVerdict {
                accepted: 0,
                next: 1
            }
        );
    }
}
