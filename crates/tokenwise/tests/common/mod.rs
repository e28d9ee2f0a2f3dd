//! Helpers shared by the CLI tests: the cached test models and scratch directories.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-Q4_K_M.gguf";

/// A cached test model; fails with the command to run when it is missing.
pub fn model_path(file: &str) -> PathBuf {
    let dir = match std::env::var_os("TOKENWISE_CACHE") {
        Some(root) => PathBuf::from(root).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tokenwise/models"),
    };
    let p = dir.join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch_models.py --all-test` (or `make models`)",
        p.display()
    );
    p
}

pub fn smollm2_path() -> PathBuf {
    model_path(SMOLLM2)
}

/// A scratch directory of this test process, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tokenwise-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// Files left in the directory (temporary files included).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the `tokenwise` binary under test with `args` and waits for it.
pub fn tokenwise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenwise"))
        .args(args)
        .output()
        .expect("the binary runs")
}
