//! Locating the cached test models (copied from the model crate's test helpers, which
//! a test of another crate cannot import).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use model::LoadedModel;

/// The cache directory `scripts/fetch_models.py` fills.
pub fn model_dir() -> PathBuf {
    match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
    }
}

/// Path of a test model; panics with the command to run when it is missing, so a
/// missing model fails the suite instead of silently skipping it.
pub fn model_path(file: &str) -> PathBuf {
    let p = model_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch_models.py --all-test` (or `make models`)",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-Q4_K_M.gguf";
pub const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// SmolLM2, loaded once per test binary and lent to one test at a time:
/// `Model::forward` is not safe to call from two threads at once (its thread pool runs
/// one parallel region at a time), and the test harness runs tests in parallel.
pub fn smollm2() -> MutexGuard<'static, LoadedModel> {
    static MODEL: OnceLock<Mutex<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let m = model::load_gguf(&model_path(SMOLLM2), 2);
            Mutex::new(m.expect("SmolLM2 loads"))
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One of the three test models, each loaded on first use, with a guard that lets one
/// test run at a time (each forward pass wants both cores).
pub fn load(file: &'static str) -> (MutexGuard<'static, ()>, &'static LoadedModel) {
    static TURN: Mutex<()> = Mutex::new(());
    static MODELS: [OnceLock<LoadedModel>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let files = [SMOLLM2, GEMMA3, QWEN05];
    let i = files
        .iter()
        .position(|&f| f == file)
        .expect("a known test model");
    let m =
        MODELS[i].get_or_init(|| model::load_gguf(&model_path(file), 2).expect("test model loads"));
    (guard, m)
}

/// 22 prompts of real text: the 13 golden prompts (Python tutorial passages, standard
/// library function headers, chat-formatted questions) and 9 paragraphs of the GPL v3.
pub fn prompts(qwen: bool) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/data/golden");
    let file = if qwen {
        "prompts-qwen-public.json"
    } else {
        "prompts-public.json"
    };
    let json = std::fs::read_to_string(dir.join(file)).expect("golden prompts");
    let records: Vec<serde_json::Value> = serde_json::from_str(&json).expect("prompt json");
    let mut out: Vec<String> = records
        .iter()
        .map(|r| r["prompt"].as_str().expect("prompt text").to_string())
        .collect();
    let gpl = std::fs::read_to_string(dir.join("gpl3.txt")).expect("gpl3.txt");
    out.extend(
        gpl.split("\n\n")
            .map(str::trim)
            .filter(|p| p.len() >= 200)
            .take(9)
            .map(|p| p.chars().take(400).collect::<String>()),
    );
    assert_eq!(out.len(), 22);
    out
}
