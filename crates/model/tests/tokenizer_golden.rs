//! Tokenisation must equal llama.cpp's, id for id, on every golden prompt of the three
//! test models (tests/data/golden, copied from llama.cpp runs). A missing model file fails
//! the test with the command that fetches it.

mod common;

use std::time::Instant;

use model::tokenizer::{TextStream, Tokenizer, VocabKind};

fn load(file: &str) -> Tokenizer {
    let path = common::model_path(file);
    let header = gguf::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .header;
    let t0 = Instant::now();
    let tok = Tokenizer::from_gguf(&header).unwrap_or_else(|e| panic!("{file}: {e}"));
    let dt = t0.elapsed();
    eprintln!("{file}: tokenizer built in {:.3} s", dt.as_secs_f64());
    // The release-build budget is 2 s; test builds are less optimised, so allow slack.
    assert!(
        dt.as_secs_f64() < 10.0,
        "{file}: building the tokenizer took {dt:?}"
    );
    tok
}

/// Checks every record; returns (matching prompts, total).
fn check_golden(tok: &Tokenizer, golden: &str) -> (usize, usize) {
    let records = common::golden(golden);
    let mut matched = 0;
    let mut failures = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let prompt = rec["prompt"].as_str().expect("prompt");
        let want = common::ids(&rec["prompt_ids"]);
        let got = tok.encode_prompt(prompt).expect("encode");
        if got == want {
            matched += 1;
        } else {
            let first = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            failures.push(format!(
                "{golden} #{i} ({}): first difference at {first}: got {:?} want {:?}",
                rec["kind"],
                &got[first..(first + 6).min(got.len())],
                &want[first..(first + 6).min(want.len())]
            ));
        }

        // decode(prompt_ids) gives the prompt back (a leading BOS aside).
        let body: &[u32] = match (want.first(), tok.bos_id()) {
            (Some(&f), Some(b)) if f == b && tok.adds_bos() => &want[1..],
            _ => &want,
        };
        assert_eq!(
            tok.decode(body).unwrap(),
            prompt,
            "{golden} #{i}: decode(prompt_ids)"
        );

        // greedy_text is the concatenated pieces of greedy_ids; llama.cpp stops before
        // (and does not print) an end-of-generation token.
        let greedy = common::ids(&rec["greedy_ids"]);
        let text_ids: Vec<u32> = greedy
            .iter()
            .copied()
            .take_while(|&id| !tok.is_end_of_generation(id))
            .collect();
        let bytes: Vec<u8> = text_ids
            .iter()
            .flat_map(|&id| tok.token_bytes(id))
            .collect();
        let want_text = rec["greedy_text"].as_str().expect("greedy_text");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            want_text,
            "{golden} #{i}: greedy_text"
        );

        // Streaming gives the same text, chunk by chunk.
        let mut stream = TextStream::new(tok);
        let mut streamed = String::new();
        for &id in &text_ids {
            streamed.push_str(&stream.push(id));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, want_text, "{golden} #{i}: TextStream");
    }
    for f in &failures {
        eprintln!("{f}");
    }
    eprintln!(
        "{golden}: {matched}/{} prompts match llama.cpp",
        records.len()
    );
    assert!(
        failures.is_empty(),
        "{golden}: {} prompts differ from llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
    (matched, records.len())
}

#[test]
fn smollm2_matches_llama_cpp() {
    let tok = load(common::SMOLLM2);
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.adds_bos());
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    assert!(tok.is_end_of_generation(im_end));
    assert!(tok.is_end_of_generation(tok.token_id("<|endoftext|>").unwrap()));
    assert!(!tok.is_end_of_generation(tok.token_id("<|im_start|>").unwrap()));
    check_golden(&tok, "golden-smollm2-public.json");

    // parse_special off: control tokens written in the text stay text.
    let parsed = tok.encode("<|im_start|>user", false, true).unwrap();
    assert_eq!(parsed[0], tok.token_id("<|im_start|>").unwrap());
    let plain = tok.encode("<|im_start|>user", false, false).unwrap();
    assert!(!plain.contains(&parsed[0]), "{plain:?}");
    assert_eq!(tok.decode(&plain).unwrap(), "<|im_start|>user");
}

#[test]
fn qwen05_matches_llama_cpp() {
    let tok = load(common::QWEN05);
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(tok.vocab_size(), 151936);
    assert_eq!(tok.eos_id(), Some(151645));
    for t in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ] {
        assert!(tok.is_end_of_generation(tok.token_id(t).unwrap()), "{t}");
    }
    check_golden(&tok, "golden-qwen05-public.json");

    // A user-defined token is matched even without special parsing (as llama.cpp does).
    let tool_call = tok.token_id("<tool_call>").unwrap();
    assert_eq!(
        tok.encode("<tool_call>", false, false).unwrap(),
        vec![tool_call]
    );
    // Unused padding tokens contribute nothing to the text.
    assert!(tok.token_bytes(151700).is_empty());
}

#[test]
fn gemma3_matches_llama_cpp() {
    let tok = load(common::GEMMA3);
    assert_eq!(tok.kind(), VocabKind::Spm);
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!(tok.bos_id(), Some(2));
    assert!(tok.adds_bos());
    assert!(tok.is_end_of_generation(1));
    assert!(tok.is_end_of_generation(tok.token_id("<end_of_turn>").unwrap()));
    check_golden(&tok, "golden-gemma3-public.json");

    // Byte-fallback tokens decode to their byte; a character split over byte tokens
    // streams out only once complete.
    let nl = tok.token_id("<0x0A>").unwrap();
    assert_eq!(tok.token_bytes(nl), b"\n");
    let e_acute: Vec<u32> = "é"
        .bytes()
        .map(|b| tok.token_id(&format!("<0x{b:02X}>")).unwrap())
        .collect();
    let mut stream = TextStream::new(&tok);
    assert_eq!(stream.push(e_acute[0]), "");
    assert_eq!(stream.push(e_acute[1]), "é");
    assert_eq!(stream.push(e_acute[0]), "");
    assert_eq!(stream.finish(), "\u{FFFD}");

    // Without special parsing, Gemma's control tokens are plain text.
    let sot = tok.token_id("<start_of_turn>").unwrap();
    assert_eq!(
        tok.encode("<start_of_turn>user", false, true).unwrap()[0],
        sot
    );
    assert!(!tok
        .encode("<start_of_turn>user", false, false)
        .unwrap()
        .contains(&sot));
}

#[test]
fn bad_ids_do_not_panic() {
    let tok = load(common::SMOLLM2);
    let n = tok.vocab_size() as u32;
    assert!(tok.decode(&[0, n, u32::MAX]).is_err());
    assert_eq!(tok.token_text(u32::MAX), "\u{FFFD}");
    assert_eq!(tok.token_bytes(n), "\u{FFFD}".as_bytes());
    let mut stream = TextStream::new(&tok);
    assert_eq!(stream.push(u32::MAX), "\u{FFFD}");
    assert_eq!(tok.encode("", true, true).unwrap(), Vec::<u32>::new());
}

/// The SmolLM2 tokenizer serialised to tokenizer.json and loaded back through
/// `from_hf_file` tokenises every golden prompt identically.
#[test]
fn hf_json_roundtrip_keeps_ids() {
    let tok = load(common::SMOLLM2);
    let dir = std::env::temp_dir().join(format!("tokenwise-hf-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    tok.inner().save(&path, false).expect("save tokenizer.json");
    let hf = Tokenizer::from_hf_file(&path).expect("load tokenizer.json");
    assert_eq!(hf.kind(), VocabKind::HuggingFace);
    assert_eq!(hf.vocab_size(), tok.vocab_size());
    for rec in common::golden("golden-smollm2-public.json") {
        let prompt = rec["prompt"].as_str().unwrap();
        let want = common::ids(&rec["prompt_ids"]);
        assert_eq!(hf.encode_prompt(prompt).unwrap(), want, "{prompt:?}");
        assert_eq!(hf.decode(&want).unwrap(), prompt);
    }
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert!(!hf
        .encode("<|im_start|>", false, false)
        .unwrap()
        .contains(&im_start));
    assert!(hf.is_end_of_generation(tok.token_id("<|im_end|>").unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Arbitrary text (emoji, CJK, combining marks, control characters, runs of whitespace,
/// special-token look-alikes) never panics and decodes back to itself.
#[test]
fn arbitrary_text_roundtrips() {
    let samples = [
        "héllo wörld — naïve café ☕ 🦀🦀 日本語のテキスト 한국어 עברית",
        "tabs\tand\r\nwindows\r\nlines\n\n\n   trailing   ",
        "e\u{301} a\u{308} \u{200d}\u{feff}\u{0}\u{7}\u{1b}[0m",
        "<|im_start|>user <start_of_turn> <bos> </s> <table><tr> <0x0A> [PAD151700]",
        "    def f(x):\n        return x ** 2  # ok\n",
        "1234567890 3.14159 0xDEADBEEF 1e-10",
        " leading space and  double  spaces",
        "",
    ];
    for file in [common::SMOLLM2, common::QWEN05, common::GEMMA3] {
        let tok = load(file);
        for s in samples {
            let ids = tok.encode(s, false, false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), s, "{file}: {s:?} -> {ids:?}");
            // With special parsing the text still round-trips.
            let ids = tok.encode(s, false, true).unwrap();
            assert_eq!(
                tok.decode(&ids).unwrap(),
                s,
                "{file} (special): {s:?} -> {ids:?}"
            );
            let mut stream = TextStream::new(&tok);
            let streamed: String =
                ids.iter().map(|&id| stream.push(id)).collect::<String>() + &stream.finish();
            assert_eq!(streamed, s, "{file}: stream {s:?}");
        }
    }
}
