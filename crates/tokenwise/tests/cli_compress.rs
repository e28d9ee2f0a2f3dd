//! `tokenwise compress` / `decompress` end to end: a round trip across thread counts,
//! standard input and output, and one-line errors (exit code 1, no panic, no output
//! file left behind) for every way an archive or a request can be wrong.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::{model_path, Scratch, GEMMA3, SMOLLM2};

fn tokenwise(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenwise"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary runs");
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            i.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let out = tokenwise(args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Exit code 1, stderr exactly one line starting with `error:` and containing `expect`.
fn one_line_error(args: &[&str], expect: &str) {
    let out = tokenwise(args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expect),
        "{args:?}: expected {expect:?} in {stderr}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TEXT: &[u8] =
    b"The licenses for most software are designed to take away your freedom to share\n\
      and change it.\x00\xff\xfe caf\xc3\xa9 \xe2\x82\n";

#[test]
fn roundtrip_across_threads_and_stdio() {
    let model = model_path(SMOLLM2);
    let dir = Scratch::new("roundtrip");
    let input = dir.write("text.bin", TEXT);
    ok(
        &[
            "compress",
            "-m",
            s(&model),
            "-t",
            "1",
            "--ctx",
            "32",
            "--overlap",
            "8",
            s(&input),
        ],
        None,
    );
    let archive = dir.path("text.bin.twz");
    std::fs::remove_file(&input).unwrap();
    ok(
        &["decompress", "-m", s(&model), "-t", "2", s(&archive)],
        None,
    );
    assert_eq!(std::fs::read(&input).unwrap(), TEXT);
    assert_eq!(dir.files(), ["text.bin", "text.bin.twz"]);

    // Standard input to standard output, both ways; the model found by the archive's
    // name when it is an alias is not tested here (the cache may hold other files), so
    // the path is passed.
    let packed = ok(
        &["compress", "-m", s(&model), "--equal-info", "32", "-"],
        Some(TEXT),
    )
    .stdout;
    let unpacked = ok(&["decompress", "-m", s(&model), "-"], Some(&packed)).stdout;
    assert_eq!(unpacked, TEXT);
}

#[test]
fn bad_archives_and_requests_are_one_line_errors() {
    let model = model_path(SMOLLM2);
    let m = s(&model);
    let dir = Scratch::new("errors");
    let input = dir.write("a.txt", TEXT);
    ok(&["compress", "-m", m, s(&input)], None);
    let archive = std::fs::read(dir.path("a.txt.twz")).unwrap();
    std::fs::remove_file(&input).unwrap();

    let truncated = dir.write("t.twz", &archive[..archive.len() - 3]);
    one_line_error(&["decompress", "-m", m, s(&truncated)], "corrupt archive");
    let mut changed = archive.clone();
    let mid = changed.len() - 8;
    changed[mid] ^= 0x40;
    let changed = dir.write("c.twz", &changed);
    one_line_error(&["decompress", "-m", m, s(&changed)], "corrupt archive");
    let mut v2 = archive.clone();
    v2[8] = 2;
    let v2 = dir.write("v.twz", &v2);
    one_line_error(
        &["decompress", "-m", m, s(&v2)],
        "unsupported archive format version 2",
    );
    let foreign = dir.write("f.twz", b"PK\x03\x04 not ours");
    one_line_error(
        &["decompress", "-m", m, s(&foreign)],
        "not a tokenwise archive",
    );
    let empty = dir.write("e.twz", b"");
    one_line_error(
        &["decompress", "-m", m, s(&empty)],
        "not a tokenwise archive",
    );
    // None of them left an output file (or a temporary one) behind.
    assert_eq!(
        dir.files(),
        ["a.txt.twz", "c.twz", "e.twz", "f.twz", "t.twz", "v.twz"]
    );

    let gemma = model_path(GEMMA3);
    one_line_error(
        &["decompress", "-m", s(&gemma), s(&dir.path("a.txt.twz"))],
        "wrong model",
    );
    assert!(!dir.path("a.txt").exists());

    one_line_error(
        &["decompress", "-m", m, s(&dir.path("missing.twz"))],
        "missing.twz",
    );
    one_line_error(
        &["decompress", "-m", m, s(&foreign), "-o", s(&dir.path("x"))],
        "not a tokenwise archive",
    );
    let input = dir.write("a.txt", TEXT);
    one_line_error(&["compress", "-m", m, s(&input)], "already exists");
    one_line_error(
        &[
            "compress",
            "-m",
            m,
            "--ctx",
            "8",
            "--overlap",
            "7",
            "-f",
            s(&input),
        ],
        "overlap",
    );
    one_line_error(
        &["compress", "-m", m, "--equal-info", "4", "-f", s(&input)],
        "windows",
    );
}
