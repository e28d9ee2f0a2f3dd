//! `tokenwise detect-eval` without a model: bad `--lengths` are one-line errors, and
//! `--from-pairs` turns a `--pairs-out` file into the per-length table and ROC SVG.

mod common;

use common::{tokenwise, Scratch};

fn assert_error(args: &[&str], expect_in_message: &str) {
    let out = tokenwise(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(expect_in_message),
        "{args:?}: expected {expect_in_message:?} in {stderr}"
    );
}

#[test]
fn bad_lengths_are_clear_errors() {
    assert_error(&["detect-eval", "--lengths", ""], "comma-separated");
    assert_error(&["detect-eval", "--lengths", "64,0"], "at least 1 token");
    assert_error(&["detect-eval", "--lengths", "64,x"], "not a token count");
    assert_error(&["detect-eval", "--roc-svg", "x.svg"], "give --lengths too");
}

/// One pair as `--pairs-out` writes it: every detector scores `m` on the machine
/// passage and `h` on the human one; `None` where the passage is shorter than 128.
fn pair(m: f64, h: f64, long: bool) -> String {
    let s = |v: f64| format!(r#"{{"fast_detectgpt": {v}, "lastde": {v}, "lastde_pp": null}}"#);
    let at128 = if long { s(m) } else { "null".into() };
    format!(
        r#"{{"source": "x", "by_length": [{{"len": 64, "human": {}, "machine": {}}}, {{"len": 128, "human": {}, "machine": {at128}}}]}}"#,
        s(h),
        s(m),
        s(h)
    )
}

#[test]
fn tables_and_curves_come_from_a_pairs_file() {
    let dir = Scratch::new("detect-eval");
    let lines = [
        pair(2.0, 0.0, true),
        pair(3.0, 1.0, true),
        pair(0.5, 1.5, false),
    ];
    let pairs = dir.write("pairs.jsonl", lines.join("\n").as_bytes());
    let svg = dir.path("roc.svg");
    let out = tokenwise(&[
        "detect-eval",
        "--model",
        "toy",
        "--from-pairs",
        pairs.to_str().unwrap(),
        "--roc-svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At 64 tokens 3 pairs (machine 0.5 is below two of the human scores: 7 of 9 orderings);
    // at 128 the short pair is left out. Lastde++ is undefined throughout.
    assert!(
        stdout.contains("| 64 | 0.778 | 0.778 | – | 3 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| 128 | 1.000 | 1.000 | – | 2 |"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("toy: first 128 tokens (n = 2)"));
    // Two panels, each with a curve per defined detector and the diagonal.
    assert_eq!(svg.matches("<polyline").count(), 4);
    assert_eq!(svg.matches("stroke-dasharray").count(), 2);
    assert!(!svg.contains("NaN"));

    assert_error(
        &[
            "detect-eval",
            "--from-pairs",
            pairs.to_str().unwrap(),
            "--lengths",
            "256",
        ],
        "no scores at length 256",
    );
}
