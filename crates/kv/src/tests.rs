use super::*;

const SHAPE: KvShape = KvShape {
    n_layer: 1,
    n_head: 2,
    n_head_kv: 1,
    head_dim: 2,
};

/// A lane holding slots `0..n` at positions `0..n`, key of entry e = [e, 0].
fn lane<'a>(slots: &'a [u32], positions: &'a [usize], keys: &'a [f32]) -> LaneView<'a> {
    LaneView {
        layer: 0,
        kv_head: 0,
        slots,
        positions,
        keys,
        head_dim: 2,
    }
}

fn select(p: &mut dyn KvPolicy, n: usize, keys: &[f32], budget: usize) -> Vec<usize> {
    let slots: Vec<u32> = (0..n as u32).collect();
    let positions: Vec<usize> = (0..n).collect();
    let mut keep = Vec::new();
    p.select(&lane(&slots, &positions, keys), budget, &mut keep);
    assert_eq!(keep.len(), budget, "{}", p.name());
    assert!(keep.windows(2).all(|w| w[0] < w[1]), "{}", p.name());
    keep
}

/// One query per head over `n` slots, head 0 and head 1 given.
fn observe(p: &mut dyn KvPolicy, w0: &[f32], w1: &[f32]) {
    let weights: Vec<f32> = w0.iter().chain(w1).copied().collect();
    p.observe(&LayerAttention {
        layer: 0,
        n_tokens: 1,
        n_head: 2,
        n_slots: w0.len(),
        weights: &weights,
    });
}

#[test]
fn unknown_names_and_bad_params_are_errors() {
    let e = policy_from_name("lru", &PolicyParams::default()).err();
    assert!(e
        .unwrap()
        .to_string()
        .contains("expected one of full, window"));
    for name in POLICY_NAMES {
        assert_eq!(
            policy_from_name(name, &PolicyParams::default())
                .unwrap()
                .name(),
            *name
        );
    }
    assert_eq!(
        policy_from_name("H2O", &Default::default()).unwrap().name(),
        "h2o"
    );
    let bad = PolicyParams {
        forget: 0.0,
        ..Default::default()
    };
    assert!(policy_from_name("a2sf", &bad).is_err());
}

#[test]
fn budgets_parse_and_resolve() {
    assert_eq!("256".parse::<Budget>(), Ok(Budget::Tokens(256)));
    assert_eq!(" 25% ".parse::<Budget>(), Ok(Budget::Percent(25.0)));
    for bad in ["", "x", "-3", "0%", "101%", "1.5"] {
        assert!(bad.parse::<Budget>().is_err(), "{bad}");
    }
    assert_eq!(Budget::Percent(25.0).resolve(1000), Ok(250));
    assert!(Budget::Tokens(0).resolve(1000).is_err());
    assert!(Budget::Percent(0.01).resolve(10).is_err());
    let e = Budget::Tokens(2000).resolve(1000).unwrap_err().to_string();
    assert!(e.contains("exceeds the 1000-token context"), "{e}");
}

#[test]
fn window_keeps_sinks_and_the_most_recent() {
    let keys = vec![0.0; 20];
    let mut w = Window::new(2);
    assert_eq!(select(&mut w, 10, &keys, 5), vec![0, 1, 7, 8, 9]);
    let mut w0 = Window::new(0);
    assert_eq!(select(&mut w0, 10, &keys, 3), vec![7, 8, 9]);
}

#[test]
fn h2o_keeps_heavy_hitters_plus_recent() {
    let mut p = H2o::new(0.5);
    p.reset(&SHAPE);
    // Slot 1 is a heavy hitter for head 0, slot 2 (less) for head 1.
    observe(
        &mut p,
        &[0.1, 0.6, 0.1, 0.1, 0.05, 0.05],
        &[0.1, 0.1, 0.5, 0.1, 0.1, 0.1],
    );
    observe(
        &mut p,
        &[0.1, 0.6, 0.1, 0.1, 0.05, 0.05],
        &[0.1, 0.1, 0.5, 0.1, 0.1, 0.1],
    );
    let keys = vec![0.0; 12];
    assert_eq!(select(&mut p, 6, &keys, 4), vec![1, 2, 4, 5]);
    // After slots 0 and 3 are dropped the scores follow the renumbered slots.
    p.retain_slots(&[1, 2, 4, 5]);
    assert_eq!(select(&mut p, 4, &keys, 2), vec![0, 3]);
}

#[test]
fn tova_keeps_the_newest_querys_favourites() {
    let mut p = Tova::default();
    p.reset(&SHAPE);
    observe(&mut p, &[0.9, 0.0, 0.0, 0.1], &[0.0, 0.0, 0.9, 0.1]);
    let keys = vec![0.0; 8];
    assert_eq!(select(&mut p, 4, &keys, 2), vec![0, 2]);
    // Only the newest query counts.
    observe(&mut p, &[0.0, 0.9, 0.0, 0.1], &[0.0, 0.5, 0.0, 0.5]);
    assert_eq!(select(&mut p, 4, &keys, 2), vec![1, 3]);
}

#[test]
fn a2sf_forgets_old_attention() {
    let mut p = A2sf::new(0.5);
    p.reset(&SHAPE);
    // Slot 0 was attended long ago; slot 1 recently.
    observe(&mut p, &[1.0, 0.0, 0.0], &[1.0, 0.0, 0.0]);
    for _ in 0..3 {
        observe(&mut p, &[0.0, 0.3, 0.7], &[0.0, 0.3, 0.7]);
    }
    let keys = vec![0.0; 6];
    assert_eq!(select(&mut p, 3, &keys, 2), vec![1, 2]);
    let mut h = H2o::new(0.0);
    h.reset(&SHAPE);
    observe(&mut h, &[1.0, 0.0, 0.0], &[1.0, 0.0, 0.0]);
    for _ in 0..3 {
        observe(&mut h, &[0.0, 0.3, 0.7], &[0.0, 0.3, 0.7]);
    }
    assert_eq!(
        select(&mut h, 3, &keys, 2),
        vec![0, 2],
        "H2O keeps the old heavy hitter"
    );
}

#[test]
fn knorm_keeps_the_smallest_keys() {
    let keys = [3.0, 0.0, 1.0, 0.0, 5.0, 5.0, 0.5, 0.0];
    assert_eq!(select(&mut KNorm, 4, &keys, 2), vec![1, 3]);
}

#[test]
fn snapkv_pools_and_keeps_the_window() {
    let mut p = SnapKv::new(2, 3);
    p.reset(&SHAPE);
    let n = 10;
    let mut row = vec![0.0; n];
    row[2] = 1.0; // pooled with kernel 3: entries 1, 2, 3 score 1
    let mut row1 = vec![0.0; n];
    row1[6] = 0.5; // entries 5, 6, 7 score 0.5
    observe(&mut p, &row, &row1);
    observe(&mut p, &row, &row1);
    let keys = vec![0.0; 2 * n];
    assert_eq!(select(&mut p, n, &keys, 5), vec![1, 2, 3, 8, 9]);
    assert_eq!(
        select(&mut p, n, &keys, 7),
        vec![1, 2, 3, 6, 7, 8, 9],
        "ties go to the more recent"
    );
}

#[test]
fn keyformer_is_seeded_and_favours_attended_tokens() {
    let run = || {
        let mut p = Keyformer::new(0.25, 1.0, 7);
        p.reset(&SHAPE);
        for _ in 0..50 {
            observe(
                &mut p,
                &[0.05, 0.7, 0.05, 0.05, 0.05, 0.1],
                &[0.05, 0.05, 0.05, 0.7, 0.05, 0.1],
            );
        }
        select(&mut p, 6, &[0.0; 12], 4)
    };
    let keep = run();
    assert_eq!(keep, run(), "same seed, same choice");
    // The recent window (1 entry) plus the two heavily attended tokens.
    assert!(
        keep.contains(&1) && keep.contains(&3) && keep.contains(&5),
        "{keep:?}"
    );
}

/// `importance` ranks entries as `select` keeps them (beyond the recent window), on
/// any subset of a lane; positional policies give no scores.
#[test]
fn importance_scores_agree_with_selection() {
    let n = 8;
    let keys: Vec<f32> = (0..n).flat_map(|e| [((e * 5) % 8) as f32, 0.0]).collect();
    let w: Vec<f32> = (0..n).map(|e| ((e * 3) % 8) as f32 / 28.0).collect();
    for name in POLICY_NAMES {
        let params = PolicyParams {
            recent_ratio: 0.0,
            obs_window: 1,
            pool_kernel: 1,
            ..Default::default()
        };
        let mut p = policy_from_name(name, &params).unwrap();
        p.reset(&SHAPE);
        observe(p.as_mut(), &w, &w);
        let slots: Vec<u32> = (0..n as u32).collect();
        let positions: Vec<usize> = (0..n).collect();
        let mut scores = Vec::new();
        p.importance(&lane(&slots, &positions, &keys), &mut scores);
        if !p.has_importance() {
            assert!(scores.is_empty(), "{name}");
            continue;
        }
        assert_eq!(scores.len(), n, "{name}");
        // The 3 best by score are what select keeps with a budget of 3 (snapkv always
        // keeps its 1-query window: the last entry).
        let mut best: Vec<usize> = (0..n).collect();
        best.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a)));
        let mut top: Vec<usize> = best[..3].to_vec();
        if *name == "snapkv" {
            top = best
                .iter()
                .copied()
                .filter(|&e| e != n - 1)
                .take(2)
                .collect();
            top.push(n - 1);
        }
        top.sort_unstable();
        let keep = select(p.as_mut(), n, &keys, 3);
        assert_eq!(keep, top, "{name}");
        // A subset of the lane scores its entries as the whole lane does.
        let sub_slots = [1u32, 4, 6];
        let sub_keys: Vec<f32> = sub_slots
            .iter()
            .flat_map(|&s| keys[2 * s as usize..2 * s as usize + 2].to_vec())
            .collect();
        let mut sub = Vec::new();
        p.importance(&lane(&sub_slots, &positions, &sub_keys), &mut sub);
        if *name != "snapkv" {
            let want: Vec<f32> = sub_slots.iter().map(|&s| scores[s as usize]).collect();
            assert_eq!(sub, want, "{name}");
        }
    }
}
