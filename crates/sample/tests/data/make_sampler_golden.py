#!/usr/bin/env python3
# Regenerate the sampler golden file (run from the repository root):
#
#   python3 crates/sample/tests/data/make_sampler_golden.py > crates/sample/tests/data/sampler_golden.json
#
# An independent reference for every sampler stage of the `sample` crate,
# written from the definitions (llama.cpp's src/llama-sampling.cpp where
# llama.cpp has the sampler; Hewitt et al. 2022 / Hugging Face transformers
# for epsilon and eta; Basu et al. 2021 for mirostat) in the plainest way:
# full sorts, float64, no incremental tricks. Pure Python 3, no packages.
#
# Each case applies ONE stage to a fixed logits vector (temperature 1) and
# records the surviving candidates (ids ascending) and their renormalised
# probabilities (softmax of the stage's output logits over the survivors).
# Ties are broken like the crate's canonical order: larger logit first, then
# lower id. The script refuses cases that sit within 1e-6 (relative) of a
# threshold, so float32 rounding in the crate (its fast exp has relative error
# below 4e-7) can never flip membership.

import json
import math
import random
import struct
import sys

NEG_INF = float("-inf")


def f32(x):
    """Round to the nearest float32 (the logits the Rust test reads)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def canonical(logits):
    """Ids in canonical order: larger logit first, ties to the lower id."""
    return sorted(range(len(logits)), key=lambda i: (-logits[i], i))


def softmax(logits):
    m = max(logits)
    w = [math.exp(x - m) if x != NEG_INF else 0.0 for x in logits]
    z = sum(w)
    return [x / z for x in w]


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0.0)


class Margin(Exception):
    pass


def check_margin(values, threshold, what, rel=1e-6):
    """No value may sit within `rel` (relative) of the threshold."""
    for v in values:
        if v == NEG_INF or threshold == NEG_INF:
            continue
        if abs(v - threshold) <= rel * max(abs(threshold), 1e-30):
            raise Margin(f"{what}: value {v} too close to threshold {threshold}")


# ---- the stages: each returns the processed logits (-inf = removed) --------


def top_k(logits, k):
    keep = set(canonical(logits)[:k]) if k > 0 else set(range(len(logits)))
    return [x if i in keep else NEG_INF for i, x in enumerate(logits)]


def top_p(logits, p):
    if p >= 1.0:
        return list(logits)
    probs = softmax(logits)
    order = canonical(logits)
    cum, keep = 0.0, set()
    cums = []
    for i in order:
        cum += probs[i]
        cums.append(cum)
        keep.add(i)
        if cum >= p:
            break
    check_margin(cums, p, "top_p cumulative")
    return [x if i in keep else NEG_INF for i, x in enumerate(logits)]


def min_p(logits, mp):
    probs = softmax(logits)
    pmax = max(probs)
    check_margin(probs, mp * pmax, "min_p")
    return [x if probs[i] >= mp * pmax else NEG_INF for i, x in enumerate(logits)]


def typical(logits, p):
    # Meister et al. 2022: keep tokens whose surprisal is closest to the
    # entropy until their mass exceeds p (strictly, as llama.cpp).
    probs = softmax(logits)
    h = entropy(probs)
    score = [abs(-math.log(q) - h) if q > 0 else math.inf for q in probs]
    order = sorted(range(len(logits)), key=lambda i: (score[i], -logits[i], i))
    cum, keep, cums = 0.0, set(), []
    for i in order:
        cum += probs[i]
        cums.append(cum)
        keep.add(i)
        if cum > p:
            break
    check_margin(cums, p, "typical cumulative")
    return [x if i in keep else NEG_INF for i, x in enumerate(logits)]


def top_n_sigma(logits, n):
    fin = [x for x in logits if x != NEG_INF]
    mean = sum(fin) / len(fin)
    std = math.sqrt(sum((x - mean) ** 2 for x in fin) / len(fin))
    thr = max(fin) - n * std
    check_margin(fin, thr, "top_n_sigma")
    return [x if x >= thr else NEG_INF for x in logits]


def keep_at_least_best(logits, keep_fn):
    best = max(logits)
    return [x if (x >= best or keep_fn(i)) else NEG_INF for i, x in enumerate(logits)]


def epsilon(logits, eps):
    # Hewitt et al. 2022: drop tokens with probability below epsilon.
    probs = softmax(logits)
    check_margin(probs, eps, "epsilon")
    return keep_at_least_best(logits, lambda i: probs[i] >= eps)


def eta(logits, e):
    # Hewitt et al. 2022: threshold min(eta, sqrt(eta) * exp(-H)).
    probs = softmax(logits)
    thr = min(e, math.sqrt(e) * math.exp(-entropy(probs)))
    check_margin(probs, thr, "eta")
    return keep_at_least_best(logits, lambda i: probs[i] >= thr)


def xtc(logits, threshold):
    # The coin always comes up (probability 1): remove every token at or
    # above the threshold except the least likely of them.
    probs = softmax(logits)
    check_margin(probs, threshold, "xtc")
    order = canonical(logits)
    above = [i for i in order if probs[i] >= threshold]
    # llama.cpp walks the sorted list and stops at the first token below.
    run = 0
    while run < len(order) and probs[order[run]] >= threshold:
        run += 1
    assert run == len(above)
    if run < 2:
        return list(logits)
    removed = set(order[: run - 1])
    return [NEG_INF if i in removed else x for i, x in enumerate(logits)]


def temperature(logits, t):
    if t <= 0:
        return top_k(logits, 1)
    return [x / t for x in logits]


def dynatemp(logits, t, rng, exponent):
    # llama.cpp temp_ext: T = T_min + (T_max - T_min) * (H / ln n)^exponent.
    probs = softmax(logits)
    h_norm = entropy(probs) / math.log(len(logits))
    t_min, t_max = max(0.0, t - rng), t + rng
    return temperature(logits, t_min + (t_max - t_min) * h_norm**exponent)


def penalties(logits, history, last_n, repeat, freq, present):
    window = history[-last_n:] if last_n > 0 else []
    out = list(logits)
    for tok in set(window):
        if tok >= len(out):
            continue
        count = window.count(tok)
        x = out[tok]
        x = x * repeat if x <= 0 else x / repeat
        out[tok] = x - (count * freq + present)
    return out


def dry(logits, history, mult, base, allowed, last_n, breakers):
    """DRY by its definition, naively (O(n^2)): the repeat length of a
    position j is the longest common suffix of history[:j+1] and the whole
    window, capped at the distance to the most recent breaker."""
    w = history if last_n < 0 else history[-last_n:]
    n = len(w)
    out = list(logits)
    if mult == 0 or base < 1 or last_n == 0 or n <= allowed:
        return out
    limit = n
    for i in range(n):  # i tokens back from the end
        pos = n - 1 - i
        hits = [
            len(seq) - 1
            for seq in breakers
            if seq[0] == w[pos] and len(seq) - 1 <= i and w[pos + 1 : pos + len(seq)] == seq[1:]
        ]
        if hits:
            limit = i - max(hits)
            break
    if limit < allowed:
        return out
    longest = {}
    for j in range(n - 1):
        length = 0
        while length <= j and w[j - length] == w[n - 1 - length]:
            length += 1
        length = min(length, limit)
        if length >= allowed:
            tok = w[j + 1]
            longest[tok] = max(longest.get(tok, 0), length)
    single = {seq[0] for seq in breakers if len(seq) == 1}
    max_exp = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    for tok, length in longest.items():
        if tok in single or tok >= len(out):
            continue
        e = length - allowed
        if max_exp > 0 and e > max_exp:
            e = max_exp
        out[tok] -= mult * base**e
    return out


def logit_bias(logits, bias):
    out = list(logits)
    for tok, b in bias:
        if tok < len(out):
            out[tok] += b
    return out


def mirostat_v1(logits, tau, lr, m=100):
    """Returns (processed logits, mu after drawing the best survivor)."""
    mu = 2.0 * tau
    n_vocab = len(logits)
    probs = softmax(logits)
    order = canonical(logits)
    p = [probs[i] for i in order]
    sum_tb = sum_tt = 0.0
    for i in range(min(m - 1, len(p) - 1)):
        t = math.log((i + 2) / (i + 1))
        b = math.log(p[i] / p[i + 1])
        sum_tb += t * b
        sum_tt += t * t
    s_hat = sum_tb / sum_tt
    e = s_hat - 1.0
    k = ((e * 2.0**mu) / (1.0 - n_vocab ** (-e))) ** (1.0 / s_hat)
    if abs(k - round(k)) < 1e-6 and k >= 1:
        raise Margin(f"mirostat k = {k} too close to an integer")
    k = min(max(int(k), 1), len(p))
    out = top_k(logits, k)
    chosen = order[0]
    q = softmax(out)[chosen]
    mu_after = mu - lr * (-math.log2(q) - tau)
    return out, mu_after, chosen


def mirostat_v2(logits, tau, lr):
    mu = 2.0 * tau
    probs = softmax(logits)
    surprise = [-math.log2(q) if q > 0 else math.inf for q in probs]
    check_margin(surprise, mu, "mirostat_v2")
    best = canonical(logits)[0]
    out = [x if (i == best or surprise[i] <= mu) else NEG_INF for i, x in enumerate(logits)]
    q = softmax(out)[best]
    mu_after = mu - lr * (-math.log2(q) - tau)
    return out, mu_after, best


# ---- fixed inputs ----------------------------------------------------------


def vectors():
    v = {}
    v["small"] = [2.0, 1.0, 0.5, -0.5, 3.0, 0.0, -1.0, 1.5]
    # Ties at the top and at truncation boundaries.
    v["ties"] = [1.0, 2.0, 2.0, 0.5, 2.0, -1.0, 0.5, 1.0, 0.5, -2.0]
    # A confident distribution with a tail.
    v["peaked"] = [f32(x) for x in [6.0, 3.1, 2.4, 1.7, 1.0, 0.3, -0.4, -1.1, -1.8, -2.5, -3.2, -3.9]]
    # Zipf-like, 40 tokens, shuffled ids: the chi-square vector.
    rnd = random.Random(40)
    z = [f32(-1.15 * math.log(r + 1) + 0.05 * rnd.uniform(-1, 1)) for r in range(40)]
    rnd.shuffle(z)
    v["zipf40"] = z
    # 1000 tokens: Gaussian logits (sd 3) plus a few peaks.
    rnd = random.Random(1000)
    big = [f32(rnd.gauss(0.0, 3.0)) for _ in range(1000)]
    for i, x in [(17, 14.0), (503, 13.2), (871, 12.9), (42, 12.0)]:
        big[i] = f32(x)
    v["large1000"] = big
    return v


HIST_PEN = [4, 0, 4, 7, 1, 4, 0, 9, 3, 3]
# A window with repeats: "5 6 7 8 | 2 5 6 7 9 | 5 6 7" (10 is a breaker).
HIST_DRY = [1, 5, 6, 7, 8, 2, 5, 6, 7, 9, 3, 5, 6, 7]
HIST_DRY_BREAK = [5, 6, 7, 8, 10, 5, 6, 7, 9, 11, 5, 6, 7]


def cases(v):
    out = []

    def add(vec, sampler, params, fn, history=None, extra=None):
        logits = v[vec]
        processed = fn(logits)
        mu_after = chosen = None
        if isinstance(processed, tuple):
            processed, mu_after, chosen = processed
        kept = [i for i, x in enumerate(processed) if x != NEG_INF]
        # 12 significant digits: far below the test's 1e-6 tolerance.
        probs = [float(f"{q:.12g}") for q in softmax([processed[i] for i in kept])]
        case = {
            "name": f"{sampler}/{vec}/" + ",".join(f"{k}={params[k]}" for k in sorted(params)),
            "vector": vec,
            "sampler": sampler,
            "params": params,
            "history": history or [],
            "kept": kept,
            "probs": probs,
        }
        if mu_after is not None:
            case["chosen"] = chosen
            case["mu_after"] = float(f"{mu_after:.12g}")
        out.append(case)

    for vec in ["small", "ties", "zipf40", "large1000"]:
        for k in [1, 3, 10, 50]:
            add(vec, "top_k", {"top_k": k}, lambda l, k=k: top_k(l, k))
    for vec, ps in [
        ("small", [0.5, 0.8, 0.95]),
        ("ties", [0.3, 0.6, 0.9]),
        ("zipf40", [0.5, 0.75, 0.9]),
        ("large1000", [0.5, 0.9, 0.99]),
    ]:
        for p in ps:
            add(vec, "top_p", {"top_p": p}, lambda l, p=p: top_p(l, p))
    for vec, ps in [("small", [0.05, 0.3]), ("ties", [0.5]), ("zipf40", [0.05, 0.2]), ("large1000", [0.01, 0.1])]:
        for p in ps:
            add(vec, "min_p", {"min_p": p}, lambda l, p=p: min_p(l, p))
    for vec, ps in [
        ("small", [0.2, 0.5, 0.9]),
        ("ties", [0.3, 0.7]),
        ("peaked", [0.5, 0.9]),
        ("zipf40", [0.3, 0.6, 0.95]),
        ("large1000", [0.2, 0.5, 0.9]),
    ]:
        for p in ps:
            add(vec, "typ_p", {"typical_p": p}, lambda l, p=p: typical(l, p))
    for vec, ns in [("small", [1.0, 1.5]), ("zipf40", [1.0, 2.0]), ("large1000", [1.0, 2.0, 3.0])]:
        for n in ns:
            add(vec, "top_n_sigma", {"top_n_sigma": n}, lambda l, n=n: top_n_sigma(l, n))
    for vec, es in [("small", [0.01, 0.1]), ("peaked", [0.02]), ("zipf40", [0.01, 0.05]), ("large1000", [0.0003, 0.003])]:
        for e in es:
            add(vec, "epsilon", {"epsilon": e}, lambda l, e=e: epsilon(l, e))
    for vec, es in [("small", [0.05, 0.3]), ("peaked", [0.05, 0.2]), ("zipf40", [0.05, 0.3]), ("large1000", [0.0009, 0.01])]:
        for e in es:
            add(vec, "eta", {"eta": e}, lambda l, e=e: eta(l, e))
    for vec, ts in [("small", [0.1, 0.2]), ("ties", [0.12]), ("zipf40", [0.05, 0.1]), ("large1000", [0.02, 0.1])]:
        for t in ts:
            add(vec, "xtc", {"xtc_probability": 1.0, "xtc_threshold": t}, lambda l, t=t: xtc(l, t))
    for vec in ["small", "ties", "zipf40", "large1000"]:
        for t in [0.0, 0.5, 1.7]:
            add(vec, "temperature", {"temperature": t}, lambda l, t=t: temperature(l, t))
    for vec in ["small", "peaked", "zipf40", "large1000"]:
        for t, r, e in [(1.0, 0.5, 1.0), (0.8, 0.7, 2.0), (0.3, 0.5, 0.5)]:
            add(
                vec,
                "temperature",
                {"temperature": t, "dynatemp_range": r, "dynatemp_exponent": e},
                lambda l, t=t, r=r, e=e: dynatemp(l, t, r, e),
            )
    for vec in ["small", "ties", "zipf40"]:
        for last_n, rep, fq, pr in [(64, 1.3, 0.2, 0.5), (3, 1.1, 0.0, 0.0), (6, 1.0, 0.4, -0.3), (64, 0.8, 0.0, 0.0)]:
            add(
                vec,
                "penalties",
                {"repeat_last_n": last_n, "repeat_penalty": rep, "frequency_penalty": fq, "presence_penalty": pr},
                lambda l, a=(last_n, rep, fq, pr): penalties(l, HIST_PEN, *a),
                history=HIST_PEN,
            )
    for vec in ["zipf40"]:
        for hist, breakers in [(HIST_DRY, []), (HIST_DRY_BREAK, [[10], [11, 5]]), (HIST_DRY_BREAK, [[9, 11]])]:
            for mult, base, allowed, last_n in [(0.8, 1.75, 2, -1), (1.0, 2.0, 1, 8), (0.5, 1.75, 3, -1)]:
                add(
                    vec,
                    "dry",
                    {
                        "dry_multiplier": mult,
                        "dry_base": base,
                        "dry_allowed_length": allowed,
                        "dry_penalty_last_n": last_n,
                        "dry_sequence_breakers": breakers,
                    },
                    lambda l, h=hist, a=(mult, base, allowed, last_n, breakers): dry(l, h, *a),
                    history=hist,
                )
    for vec in ["small", "zipf40"]:
        bias = [[0, "-inf"], [3, 2.5], [3, -0.5], [5, 1.25], [999, 3.0]]
        add(
            vec,
            "logit_bias",
            {"logit_bias": bias},
            lambda l, b=bias: logit_bias(l, [(t, float(x)) for t, x in b]),
        )
    for vec in ["small", "zipf40", "large1000"]:
        add(vec, "greedy", {}, lambda l: top_k(l, 1))
    for vec, taus in [("zipf40", [2.0, 3.0]), ("large1000", [1.5, 3.0, 5.0])]:
        for tau in taus:
            add(vec, "mirostat", {"mirostat_tau": tau, "mirostat_lr": 0.1}, lambda l, t=tau: mirostat_v1(l, t, 0.1))
            add(
                vec,
                "mirostat_v2",
                {"mirostat_tau": tau, "mirostat_lr": 0.1},
                lambda l, t=tau: mirostat_v2(l, t, 0.1),
            )
    return out


def main():
    v = vectors()
    doc = {
        "generated_by": "crates/sample/tests/data/make_sampler_golden.py",
        "command": "python3 crates/sample/tests/data/make_sampler_golden.py > crates/sample/tests/data/sampler_golden.json",
        "vectors": v,
        "cases": cases(v),
    }
    # One vector and one case per line: diffs stay readable.
    w = sys.stdout.write
    w("{\n")
    for key in ["generated_by", "command"]:
        w(f"{json.dumps(key)}: {json.dumps(doc[key])},\n")
    w('"vectors": {\n')
    w(",\n".join(f"{json.dumps(k)}: {json.dumps(x)}" for k, x in doc["vectors"].items()))
    w('\n},\n"cases": [\n')
    w(",\n".join(json.dumps(c, separators=(",", ":")) for c in doc["cases"]))
    w("\n]\n}\n")


if __name__ == "__main__":
    main()
