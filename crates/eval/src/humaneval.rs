//! HumanEval with prompts cut inside a token: does a model complete a half-typed line
//! correctly? pass@1 (greedy) of three ways to continue a prompt that ends mid-token:
//!
//! * [`Method::Naive`]: tokenise the cut prompt as it is and generate.
//! * [`Method::Healing`]: token healing ([`engine::healing`]): back up the last prompt
//!   token and constrain the first generated token(s) to spell it again.
//! * [`Method::ByteLevel`]: exact next-byte probabilities ([`engine::byte_level`]),
//!   marginalised over the tokenisations of the cut line, then token-level decoding
//!   (see [`complete_byte_level`] for the hand-over).
//!
//! # The cut prompt
//!
//! HumanEval prompts end with the function's docstring; the body starts on the next
//! line. A prompt cut "inside its last line" is the problem's prompt plus the first
//! non-blank line of the canonical solution cut at a random byte: with `indent` the
//! line's leading whitespace and `n` its length (newline excluded), the cut keeps
//! `indent + k` bytes, `k` uniform in `1..=n - indent - 1` (at least one byte of code
//! kept, at least one removed; only UTF-8 character boundaries). A line with fewer
//! than two bytes of code is cut after its indentation's first code byte (`k = 1`),
//! i.e. at its end. The draw is seeded by `(seed, task_id)` alone (FNV-1a of the id
//! mixed into the seed, then SplitMix64), so a problem is cut at the same place
//! whatever `--limit` or the order of problems, and the same cut serves every method
//! and model.
//!
//! # Conditioning
//!
//! Every method conditions on the model's start token (BOS, or EOS for models without
//! one) followed by the cut prompt: the byte-level model always starts its contexts so
//! ([`engine::byte_level::ModelLm`]), and the token methods do the same so the three
//! see the same context.
//!
//! # End of the function
//!
//! A completion ends at the first line after the cut line that is not blank and is
//! indented less than the cut line (the function's body): that line and everything
//! after it are dropped. It also ends at an end-of-generation token (byte-level: the
//! end outcome) or after `max_tokens` tokens.
//!
//! # Running the tests
//!
//! `cut prompt + completion + "\n\n" + test + "\ncheck(entry_point)\n"` runs in
//! [`run_sandboxed`]: `python3 -I` (isolated: no user site, no `PYTHON*` variables, the
//! script's directory not on `sys.path`) in a fresh temporary directory, with an empty
//! environment, stdin closed, stdout/stderr captured (first 64 KiB), a wall-clock
//! timeout after which the whole process group is killed, and a preamble that sets
//! hard resource limits before the program runs (CPU seconds, address space, file
//! size, processes: `RLIMIT_NPROC` is not enforced for root, so the preamble also
//! removes `os.fork`, `os.system`, `subprocess.Popen` and the file-removing functions,
//! as the HumanEval harness's `reliability_guard` does). A program passes when it
//! exits with status 0.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine::byte_level::{model_vocabulary, ByteLevel, ModelLm, Prune, TokenLm};
use engine::healing::{Healer, DEFAULT_BACK_UP};
use engine::{GenerationParams, Session};
use model::LoadedModel;

use crate::{EvalError, Result};

/// One HumanEval problem, as `scripts/fetch_humaneval.py` caches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub test: String,
    pub canonical_solution: String,
}

/// `$TOKENWISE_CACHE/data/humaneval.jsonl`, or `~/.cache/tokenwise/data/humaneval.jsonl`.
pub fn default_path() -> PathBuf {
    let root = match std::env::var_os("TOKENWISE_CACHE") {
        Some(r) => PathBuf::from(r),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tokenwise")
        }
    };
    root.join("data/humaneval.jsonl")
}

/// Reads the problems. A missing file, or one written before the cache carried the
/// canonical solutions, is an error naming the script that (re)writes it.
pub fn load_problems(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::Io(format!(
            "reading {}: {e} (run scripts/fetch_humaneval.py to fetch HumanEval)",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            EvalError::Input(format!("{}:{}: not JSON ({e})", path.display(), n + 1))
        })?;
        let field = |k: &str| -> Result<String> {
            v[k].as_str().map(str::to_string).ok_or_else(|| {
                EvalError::Input(format!(
                    "{}:{}: no string field {k:?} (run scripts/fetch_humaneval.py to refresh \
                     the cache)",
                    path.display(),
                    n + 1
                ))
            })
        };
        out.push(Problem {
            task_id: field("task_id")?,
            prompt: field("prompt")?,
            entry_point: field("entry_point")?,
            test: field("test")?,
            canonical_solution: field("canonical_solution")?,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: no problems (run scripts/fetch_humaneval.py)",
            path.display()
        )));
    }
    Ok(out)
}

/// A problem's prompt cut inside the first line of its solution (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutPrompt {
    /// The problem's prompt plus the kept part of the line.
    pub text: String,
    /// The whole line (newline excluded), as the canonical solution has it.
    pub line: String,
    /// Bytes of `line` kept (its indentation included).
    pub cut: usize,
    /// Bytes of indentation of the line: the function body's indentation.
    pub indent: usize,
}

impl CutPrompt {
    /// The part of the line the model has to complete.
    pub fn removed(&self) -> &str {
        &self.line[self.cut..]
    }
}

/// SplitMix64: a small, well-mixed generator for the seeded cut points.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, so each task's draw depends on its id, not on its place in a list.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Cuts `p`'s prompt inside the first line of its canonical solution, at a point drawn
/// from `(seed, task_id)` (see the module docs).
pub fn cut_prompt(p: &Problem, seed: u64) -> Result<CutPrompt> {
    let line = p
        .canonical_solution
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| {
            EvalError::Input(format!("{}: the canonical solution is empty", p.task_id))
        })?;
    let indent = line.len() - line.trim_start().len();
    // Cut points strictly inside the code: at least one byte kept and one removed.
    let points: Vec<usize> = (indent + 1..line.len())
        .filter(|&i| line.is_char_boundary(i))
        .collect();
    let cut = if points.is_empty() {
        line.len()
    } else {
        let mut state = seed ^ fnv1a(&p.task_id);
        points[(splitmix64(&mut state) % points.len() as u64) as usize]
    };
    let mut text = p.prompt.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line[..cut]);
    Ok(CutPrompt {
        text,
        line: line.to_string(),
        cut,
        indent,
    })
}

/// Where the function ends in `completion` (which continues the cut line): the byte
/// offset of the first later line that is not blank and is indented less than
/// `indent`; `None` while no such line has started (its first non-space byte decides).
pub fn function_end(completion: &str, indent: usize) -> Option<usize> {
    let mut start = completion.find('\n')? + 1;
    loop {
        let rest = &completion[start..];
        let line_len = rest.find('\n');
        let line = &rest[..line_len.unwrap_or(rest.len())];
        let spaces = line.len() - line.trim_start().len();
        let has_code = !line.trim().is_empty();
        if has_code && spaces < indent {
            return Some(start);
        }
        match line_len {
            Some(n) => start += n + 1,
            None => return None,
        }
    }
}

/// `completion` cut where the function ends (or whole).
pub fn truncate_function(completion: &str, indent: usize) -> &str {
    match function_end(completion, indent) {
        Some(end) => &completion[..end],
        None => completion,
    }
}

/// How a cut prompt is continued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Naive,
    Healing,
    ByteLevel,
}

impl Method {
    pub const NAMES: [&'static str; 3] = ["naive", "healing", "byte-level"];

    pub fn from_name(name: &str) -> Result<Method> {
        match name {
            "naive" => Ok(Method::Naive),
            "healing" => Ok(Method::Healing),
            "byte-level" => Ok(Method::ByteLevel),
            _ => Err(EvalError::Input(format!(
                "unknown method {name:?}: valid methods are {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::Healing => "healing",
            Method::ByteLevel => "byte-level",
        }
    }
}

/// How completions are generated.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionOptions {
    /// Most tokens per completion (the byte-level phase's bytes count as the tokens
    /// they are handed over as).
    pub max_tokens: usize,
    /// Most bytes generated byte by byte before the hand-over to tokens.
    pub byte_level_max_bytes: usize,
    /// Pruning of the byte-level model (as `generate --byte-level`: relative mass
    /// 1e-4, at most 8 new tokenisations per byte).
    pub prune: Prune,
    /// Context of the token-level session.
    pub n_ctx: usize,
}

impl Default for CompletionOptions {
    fn default() -> Self {
        CompletionOptions {
            max_tokens: 256,
            byte_level_max_bytes: 128,
            prune: Prune {
                min_relative: 1e-4,
                max_new_boundaries: 8,
            },
            n_ctx: 4096,
        }
    }
}

/// One completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// What follows the cut prompt, cut at the function's end.
    pub text: String,
    /// Seconds spent generating (prefill included).
    pub secs: f64,
    /// Bytes the byte-level phase generated (0 for the token methods).
    pub byte_phase_bytes: usize,
}

fn engine_err(e: engine::EngineError) -> EvalError {
    EvalError::Input(e.to_string())
}

fn byte_err(e: engine::byte_level::ByteLevelError) -> EvalError {
    EvalError::Input(format!("byte-level: {e}"))
}

/// `text` tokenised as a prompt, starting with the model's start token (see the module
/// docs); `eval ead` conditions its prompts the same way.
pub(crate) fn prompt_ids(loaded: &LoadedModel, text: &str) -> Result<Vec<u32>> {
    let tok = &loaded.tokenizer;
    let mut ids = tok.encode_prompt(text)?;
    if let Some(start) = tok.bos_id().or(tok.eos_id()) {
        if ids.first() != Some(&start) {
            ids.insert(0, start);
        }
    }
    Ok(ids)
}

/// The completer of one model: a token session and the tables each method needs,
/// built once and reused for every problem.
pub struct Completer<'m> {
    loaded: &'m LoadedModel,
    session: Session<'m>,
    healer: Healer<'m>,
    vocab: engine::byte_level::Vocabulary,
    opts: CompletionOptions,
}

impl<'m> Completer<'m> {
    pub fn new(loaded: &'m LoadedModel, opts: CompletionOptions) -> Result<Completer<'m>> {
        Ok(Completer {
            loaded,
            session: Session::new(loaded, opts.n_ctx).map_err(engine_err)?,
            healer: Healer::new(loaded),
            vocab: model_vocabulary(loaded).map_err(byte_err)?,
            opts,
        })
    }

    /// Completes `cut` with `method`, greedily.
    pub fn complete(&mut self, cut: &CutPrompt, method: Method) -> Result<Completion> {
        let started = Instant::now();
        let (text, byte_phase_bytes) = match method {
            Method::Naive => {
                let ids = prompt_ids(self.loaded, &cut.text)?;
                (
                    self.generate_tokens(&ids, cut.indent, self.opts.max_tokens)?,
                    0,
                )
            }
            Method::Healing => (self.complete_healing(cut)?, 0),
            Method::ByteLevel => self.complete_byte_level(cut)?,
        };
        Ok(Completion {
            text: truncate_function(&text, cut.indent).to_string(),
            secs: started.elapsed().as_secs_f64(),
            byte_phase_bytes,
        })
    }

    /// Greedy token generation after `ids` until the function ends (the generated
    /// text alone decides, as it continues the cut line), an end-of-generation token or
    /// `max_tokens`.
    fn generate_tokens(&mut self, ids: &[u32], indent: usize, max_tokens: usize) -> Result<String> {
        self.generate_after(ids, "", indent, max_tokens)
    }

    /// As [`generate_tokens`](Self::generate_tokens), when `already` (text generated
    /// before `ids` was handed over, continuing the cut line) precedes the new text.
    fn generate_after(
        &mut self,
        ids: &[u32],
        already: &str,
        indent: usize,
        max_tokens: usize,
    ) -> Result<String> {
        if max_tokens == 0 {
            return Ok(String::new());
        }
        let params = GenerationParams {
            max_tokens,
            ..GenerationParams::default()
        };
        let mut text = already.to_string();
        let g = self
            .session
            .generate(ids, &params, |e| stop_at_end(&mut text, &e.text, indent))
            .map_err(engine_err)?;
        Ok(g.text)
    }

    /// Token healing: back up [`DEFAULT_BACK_UP`] token, constrain, then generate.
    fn complete_healing(&mut self, cut: &CutPrompt) -> Result<String> {
        let ids = prompt_ids(self.loaded, &cut.text)?;
        let plan = self
            .healer
            .plan(&ids, DEFAULT_BACK_UP)
            .map_err(engine_err)?;
        let params = GenerationParams {
            max_tokens: self.opts.max_tokens,
            ..GenerationParams::default()
        };
        let mut seen = String::new();
        // The removed text is part of the cut line: the stop rule sees it too (it
        // holds no newline of the function's lines past the cut).
        let g = self
            .healer
            .generate(&mut self.session, &plan, &params, |e| {
                stop_at_end(&mut seen, &e.text, cut.indent)
            })
            .map_err(engine_err)?;
        match g.continuation() {
            Some(c) => Ok(c.to_string()),
            // Cut short before the removed text was spelled (cannot happen with a
            // token budget of at least the removed bytes): nothing continues the prompt.
            None => Ok(String::new()),
        }
    }

    /// Byte-level completion with a hand-over to tokens.
    ///
    /// Generating a whole function byte by byte costs one forward pass (of several
    /// tokenisations) per byte, far more than token decoding; what only byte-level
    /// decoding gets right is the token the cut split. So:
    ///
    /// 1. The cut prompt is tokenised; its tokens up to the start of the cut line's
    ///    tokens (the last token boundary at or before the line's first byte) are a
    ///    fixed context, and the bytes after them (the line's indentation and kept
    ///    code) are pushed through the byte-level model, which sums over every
    ///    tokenisation of them (pruned as in `generate --byte-level`).
    /// 2. Bytes are generated greedily (the most likely next byte) until the cut line
    ///    is finished and the next line has begun: the first byte that is not
    ///    whitespace after the first newline (or `byte_level_max_bytes`, or the end
    ///    outcome). Stopping on the newline itself would hand over in the middle of a
    ///    token for tokenizers that merge a newline with the next line's indentation
    ///    (`"\n   "` in SmolLM2's), which is the very problem being measured.
    /// 3. The cut prompt plus those bytes is tokenised canonically, its last token
    ///    dropped (it may be an unfinished word of the next line), and token-level
    ///    greedy decoding continues from there; the dropped bytes are generated again
    ///    by the tokens. The token budget left is `max_tokens` minus the tokens the
    ///    kept bytes past the cut tokenised to.
    fn complete_byte_level(&mut self, cut: &CutPrompt) -> Result<(String, usize)> {
        let ids = prompt_ids(self.loaded, &cut.text)?;
        let line_start = cut.text.len() - cut.cut;
        let (fixed, fixed_bytes) = self.fixed_context(&ids, &cut.text, line_start)?;
        let tail = &cut.text.as_bytes()[fixed_bytes..];
        let max_context = fixed.len() + tail.len() + self.opts.byte_level_max_bytes + 1;
        let lm = PrefixedLm {
            inner: ModelLm::new(self.loaded, max_context).map_err(byte_err)?,
            prefix: fixed,
        };
        let mut bl = ByteLevel::new(&self.vocab, lm, self.opts.prune).map_err(byte_err)?;
        for &b in tail {
            bl.push(b).map_err(byte_err)?;
        }
        let mut generated: Vec<u8> = Vec::new();
        let mut ended = false;
        let mut newline = false;
        while generated.len() < self.opts.byte_level_max_bytes {
            let d = bl.distribution();
            let (best, p) =
                d.bytes
                    .iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |acc, (b, &p)| {
                        if p > acc.1 {
                            (b, p)
                        } else {
                            acc
                        }
                    });
            if d.end > p {
                ended = true;
                break;
            }
            let b = best as u8;
            bl.push(b).map_err(byte_err)?;
            generated.push(b);
            if b == b'\n' {
                newline = true;
            } else if newline && !b.is_ascii_whitespace() {
                break;
            }
        }
        drop(bl);
        let byte_phase = generated.len();
        let so_far = String::from_utf8_lossy(&generated).into_owned();
        if ended || function_end(&so_far, cut.indent).is_some() {
            return Ok((so_far, byte_phase));
        }
        // Hand over: the canonical tokens of everything so far, less the last one.
        let full = format!("{}{so_far}", cut.text);
        let all = prompt_ids(self.loaded, &full)?;
        let mut keep = all.len().saturating_sub(1);
        let spelled =
            |n: usize| -> usize { all[..n].iter().map(|&t| self.healer.piece(t).len()).sum() };
        if spelled(keep) < cut.text.len() {
            // The last token reaches back into the prompt: keep it.
            keep = all.len();
        }
        let kept_len = spelled(keep);
        let kept_text = full.as_bytes().get(cut.text.len()..kept_len).unwrap_or(&[]);
        let kept_text = String::from_utf8_lossy(kept_text).into_owned();
        let own_tokens = keep - prompt_ids(self.loaded, &cut.text)?.len().min(keep);
        let budget = self.opts.max_tokens.saturating_sub(own_tokens);
        let rest = self.generate_after(&all[..keep], &kept_text, cut.indent, budget)?;
        Ok((format!("{kept_text}{rest}"), byte_phase))
    }

    /// The tokens of `ids` before the cut line (the longest prefix spelling at most
    /// `line_start` bytes) and the bytes they spell. Fails when the tokens do not spell
    /// `text` (a tokenizer that adds a space prefix).
    fn fixed_context(
        &self,
        ids: &[u32],
        text: &str,
        line_start: usize,
    ) -> Result<(Vec<u32>, usize)> {
        let mut spelled: Vec<u8> = Vec::with_capacity(text.len());
        let mut fixed = 0;
        let mut fixed_bytes = 0;
        for (i, &t) in ids.iter().enumerate() {
            spelled.extend_from_slice(self.healer.piece(t));
            if spelled.len() <= line_start {
                fixed = i + 1;
                fixed_bytes = spelled.len();
            }
        }
        if spelled != text.as_bytes() {
            return Err(EvalError::Input(
                "byte-level: the prompt's tokens do not spell the prompt's bytes".into(),
            ));
        }
        // The byte-level model puts the start token first itself.
        let start = ids
            .first()
            .filter(|&&t| self.healer.piece(t).is_empty())
            .map_or(0, |_| 1);
        Ok((ids[start.min(fixed)..fixed].to_vec(), fixed_bytes))
    }
}

/// Appends `new` to `text` and asks to stop once the function has ended.
fn stop_at_end(text: &mut String, new: &str, indent: usize) -> ControlFlow<()> {
    text.push_str(new);
    if function_end(text, indent).is_some() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// The token oracle with a fixed token context before every context asked for: the
/// prompt's lines before the cut line, tokenised canonically. [`ModelLm`]'s token tree
/// computes them once.
struct PrefixedLm<'m> {
    inner: ModelLm<'m>,
    prefix: Vec<u32>,
}

impl PrefixedLm<'_> {
    fn full(&self, context: &[u32]) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.prefix.len() + context.len());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(context);
        v
    }
}

type LmResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

impl TokenLm for PrefixedLm<'_> {
    fn next_logits(&mut self, context: &[u32], out: &mut Vec<f32>) -> LmResult {
        let full = self.full(context);
        self.inner.next_logits(&full, out)
    }

    fn next_logits_batch(&mut self, contexts: &[&[u32]], out: &mut Vec<f32>) -> LmResult {
        let full: Vec<Vec<u32>> = contexts.iter().map(|c| self.full(c)).collect();
        let refs: Vec<&[u32]> = full.iter().map(|c| c.as_slice()).collect();
        self.inner.next_logits_batch(&refs, out)
    }

    fn retain(&mut self, live: &[&[u32]]) {
        let full: Vec<Vec<u32>> = live.iter().map(|c| self.full(c)).collect();
        let refs: Vec<&[u32]> = full.iter().map(|c| c.as_slice()).collect();
        self.inner.retain(&refs);
    }
}

/// Limits of a sandboxed run.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxOptions {
    /// Wall-clock limit; the process group is killed after it.
    pub timeout: Duration,
    /// `RLIMIT_CPU` in seconds.
    pub cpu_secs: u64,
    /// `RLIMIT_AS` in bytes.
    pub memory_bytes: u64,
    /// `RLIMIT_NPROC` (not enforced for root: see the module docs).
    pub max_processes: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub max_file_bytes: u64,
    /// The interpreter.
    pub python: String,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            timeout: Duration::from_secs(10),
            cpu_secs: 10,
            memory_bytes: 1 << 30,
            max_processes: 16,
            max_file_bytes: 1 << 20,
            python: "python3".into(),
        }
    }
}

/// How a sandboxed program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Non-zero exit (a failed assertion, a syntax error, a resource limit): the last
    /// line of stderr, or the exit status.
    Failed(String),
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Passed
    }

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
        }
    }
}

/// A sandboxed run's outcome and captured output.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxRun {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

/// The preamble that limits the program before it runs (hard limits: the program
/// cannot raise them again) and removes process and file-removal functions.
fn preamble(o: &SandboxOptions) -> String {
    format!(
        "import resource as _r\n\
         for _k, _v in ((_r.RLIMIT_CPU, {cpu}), (_r.RLIMIT_AS, {mem}), (_r.RLIMIT_NPROC, {nproc}), (_r.RLIMIT_FSIZE, {fsize})):\n    \
             _r.setrlimit(_k, (_v, _v))\n\
         import os as _os, shutil as _sh, subprocess as _sp\n\
         for _n in ('fork', 'forkpty', 'system', 'kill', 'killpg', 'remove', 'unlink', 'rmdir', 'removedirs', 'rename', 'putenv', 'chdir'):\n    \
             setattr(_os, _n, None)\n\
         _sh.rmtree = _sh.move = None\n\
         _sp.Popen = None\n\
         del _r, _k, _v, _os, _sh, _sp, _n\n",
        cpu = o.cpu_secs,
        mem = o.memory_bytes,
        nproc = o.max_processes,
        fsize = o.max_file_bytes,
    )
}

/// Output kept per stream.
const CAPTURE_LIMIT: usize = 64 * 1024;

/// A fresh directory under the system's temporary directory.
fn fresh_dir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tokenwise-sandbox-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)
        .map_err(|e| EvalError::Io(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Reads a pipe to its end on a thread, keeping the first [`CAPTURE_LIMIT`] bytes.
fn capture(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut p) = pipe {
            let mut buf = [0u8; 8192];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Runs `program` with Python in the sandbox described in the module docs.
pub fn run_sandboxed(program: &str, o: &SandboxOptions) -> Result<SandboxRun> {
    use std::os::unix::process::CommandExt;

    let dir = fresh_dir()?;
    let script = dir.join("program.py");
    let source = format!("{}{program}", preamble(o));
    let result = std::fs::write(&script, source)
        .map_err(|e| EvalError::Io(format!("writing {}: {e}", script.display())))
        .and_then(|()| {
            let started = Instant::now();
            let mut child = Command::new(&o.python)
                .arg("-I")
                .arg("program.py")
                .current_dir(&dir)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own process group, so a timeout kills its children too.
                .process_group(0)
                .spawn()
                .map_err(|e| EvalError::External(format!("running {}: {e}", o.python)))?;
            let out = capture(child.stdout.take());
            let err = capture(child.stderr.take());
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if started.elapsed() >= o.timeout => break None,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => return Err(EvalError::External(format!("waiting for python: {e}"))),
                }
            };
            if status.is_none() {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            let outcome = match status {
                None => Outcome::TimedOut,
                Some(s) if s.success() => Outcome::Passed,
                Some(s) => Outcome::Failed(
                    stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map_or_else(|| s.to_string(), |l| l.trim().to_string()),
                ),
            };
            Ok(SandboxRun {
                outcome,
                stdout,
                stderr,
                secs: started.elapsed().as_secs_f64(),
            })
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// SIGKILL to process group `pgid` (the child's own, see [`run_sandboxed`]).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The program that tests a completion.
pub fn test_program(p: &Problem, cut: &CutPrompt, completion: &str) -> String {
    format!(
        "{}{completion}\n\n{}\ncheck({})\n",
        cut.text, p.test, p.entry_point
    )
}

/// One problem completed by one method, and the verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct FimRecord {
    pub task_id: String,
    pub method: Method,
    /// The cut line's kept part and the part removed.
    pub kept: String,
    pub removed: String,
    pub completion: String,
    /// The completed cut line equals the canonical solution's line.
    pub line_exact: bool,
    pub outcome: Outcome,
    pub gen_secs: f64,
    pub byte_phase_bytes: usize,
}

impl FimRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "task_id": self.task_id,
            "method": self.method.name(),
            "kept": self.kept,
            "removed": self.removed,
            "completion": self.completion,
            "line_exact": self.line_exact,
            "passed": self.outcome.passed(),
            "outcome": self.outcome.name(),
            "detail": match &self.outcome { Outcome::Failed(d) => d.as_str(), _ => "" },
            "gen_secs": self.gen_secs,
            "generated_bytes": self.completion.len(),
            "byte_phase_bytes": self.byte_phase_bytes,
        })
    }
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct FimOptions {
    pub methods: Vec<Method>,
    pub seed: u64,
    pub completion: CompletionOptions,
    pub sandbox: SandboxOptions,
}

/// Totals of one method.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodSummary {
    pub problems: usize,
    pub passed: usize,
    pub line_exact: usize,
    pub timeouts: usize,
    pub gen_secs: f64,
    pub generated_bytes: usize,
}

impl MethodSummary {
    pub fn pass_at_1(&self) -> f64 {
        ratio(self.passed, self.problems)
    }

    pub fn line_exact_rate(&self) -> f64 {
        ratio(self.line_exact, self.problems)
    }

    /// Generated bytes per second of generation.
    pub fn bytes_per_sec(&self) -> f64 {
        if self.gen_secs > 0.0 {
            self.generated_bytes as f64 / self.gen_secs
        } else {
            0.0
        }
    }

    fn add(&mut self, r: &FimRecord) {
        self.problems += 1;
        self.passed += usize::from(r.outcome.passed());
        self.line_exact += usize::from(r.line_exact);
        self.timeouts += usize::from(r.outcome == Outcome::TimedOut);
        self.gen_secs += r.gen_secs;
        self.generated_bytes += r.completion.len();
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Completes and tests every problem with every method (problem by problem, so an
/// interrupted run has the same problems for each method), reporting each record to
/// `on_record` as it is done. Returns the totals per method, in `opts.methods` order.
pub fn run_fim(
    loaded: &LoadedModel,
    problems: &[Problem],
    opts: &FimOptions,
    on_record: &mut dyn FnMut(&FimRecord),
) -> Result<Vec<(Method, MethodSummary)>> {
    if opts.methods.is_empty() {
        return Err(EvalError::Input("no methods to evaluate".into()));
    }
    let mut completer = Completer::new(loaded, opts.completion.clone())?;
    let mut totals: Vec<(Method, MethodSummary)> = opts
        .methods
        .iter()
        .map(|&m| (m, MethodSummary::default()))
        .collect();
    for p in problems {
        let cut = cut_prompt(p, opts.seed)?;
        for (method, total) in totals.iter_mut() {
            let c = completer.complete(&cut, *method)?;
            let run = run_sandboxed(&test_program(p, &cut, &c.text), &opts.sandbox)?;
            let first_line = c.text.split('\n').next().unwrap_or_default();
            let record = FimRecord {
                task_id: p.task_id.clone(),
                method: *method,
                kept: cut.line[..cut.cut].to_string(),
                removed: cut.removed().to_string(),
                line_exact: first_line.trim_end() == cut.removed().trim_end(),
                completion: c.text,
                outcome: run.outcome,
                gen_secs: c.secs,
                byte_phase_bytes: c.byte_phase_bytes,
            };
            total.add(&record);
            on_record(&record);
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(id: &str, solution: &str) -> Problem {
        Problem {
            task_id: id.into(),
            prompt: "def f(x):\n    \"\"\"Doc.\"\"\"\n".into(),
            entry_point: "f".into(),
            test: "def check(c):\n    assert c(2) == 4\n".into(),
            canonical_solution: solution.into(),
        }
    }

    fn quick() -> SandboxOptions {
        SandboxOptions {
            timeout: Duration::from_secs(3),
            cpu_secs: 5,
            ..SandboxOptions::default()
        }
    }

    #[test]
    fn cut_prompts_are_deterministic_and_inside_the_code() {
        let p = problem("HumanEval/7", "    return x * x\n");
        let a = cut_prompt(&p, 1).unwrap();
        assert_eq!(a, cut_prompt(&p, 1).unwrap());
        assert_eq!(a.indent, 4);
        assert!(a.cut > 4 && a.cut < a.line.len(), "{a:?}");
        assert_eq!(a.text, format!("{}{}", p.prompt, &a.line[..a.cut]));
        // The draw depends on the seed and the task, not on anything else.
        let cuts: std::collections::HashSet<usize> =
            (0..20).map(|s| cut_prompt(&p, s).unwrap().cut).collect();
        assert!(cuts.len() > 3, "{cuts:?}");
        // Blank lines before the code are skipped; a one-byte line is cut at its end.
        let q = problem("x", "\n  \n    1\n");
        let c = cut_prompt(&q, 3).unwrap();
        assert_eq!((c.line.as_str(), c.cut), ("    1", 5));
        assert!(cut_prompt(&problem("e", " \n"), 0).is_err());
    }

    #[test]
    fn function_end_is_the_first_dedented_code_line() {
        let c = "x + 1\n\n    return y\n\n\ndef g():\n    pass\n";
        let end = function_end(c, 4).unwrap();
        assert_eq!(&c[..end], "x + 1\n\n    return y\n\n\n");
        // Not decided before the next line's first non-space byte arrives.
        assert_eq!(function_end("x + 1\n  ", 4), None);
        assert_eq!(function_end("x + 1", 4), None);
        assert_eq!(truncate_function("a\nb\n", 4), "a\n");
        assert_eq!(truncate_function("a\n        b\n", 4), "a\n        b\n");
    }

    #[test]
    fn sandbox_passes_fails_and_times_out() {
        let p = problem("t", "    return x * x\n");
        let cut = CutPrompt {
            text: p.prompt.clone(),
            line: String::new(),
            cut: 0,
            indent: 4,
        };
        let ok = run_sandboxed(&test_program(&p, &cut, "    return x * x\n"), &quick()).unwrap();
        assert_eq!(ok.outcome, Outcome::Passed, "{}", ok.stderr);
        let bad = run_sandboxed(&test_program(&p, &cut, "    return x + 3\n"), &quick()).unwrap();
        assert!(
            matches!(&bad.outcome, Outcome::Failed(m) if m.contains("AssertionError")),
            "{bad:?}"
        );
        let syntax = run_sandboxed(&test_program(&p, &cut, "    return x +\n"), &quick()).unwrap();
        assert!(
            matches!(&syntax.outcome, Outcome::Failed(m) if m.contains("SyntaxError")),
            "{syntax:?}"
        );
        let started = Instant::now();
        let slow = run_sandboxed("while True:\n    pass\n", &quick()).unwrap();
        assert_eq!(slow.outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(6));
    }

    #[test]
    fn sandbox_is_isolated() {
        // Empty environment, a fresh working directory, no fork.
        let probe = "import os, sys\n\
                     assert 'HOME' not in os.environ, os.environ\n\
                     assert os.listdir('.') == ['program.py'], os.listdir('.')\n\
                     assert os.fork is None\n\
                     import resource\n\
                     assert resource.getrlimit(resource.RLIMIT_CPU)[1] == 5\n";
        let r = run_sandboxed(probe, &quick()).unwrap();
        assert_eq!(r.outcome, Outcome::Passed, "{}", r.stderr);
        // Memory beyond the address-space limit fails instead of swapping.
        let hog = run_sandboxed("x = bytearray(4 << 30)\n", &quick()).unwrap();
        assert!(
            matches!(&hog.outcome, Outcome::Failed(m) if m.contains("MemoryError")),
            "{hog:?}"
        );
    }

    #[test]
    fn missing_file_names_the_fetch_script() {
        let e = load_problems(Path::new("/nonexistent/humaneval.jsonl")).unwrap_err();
        assert!(e.to_string().contains("scripts/fetch_humaneval.py"), "{e}");
    }

    #[test]
    fn method_names_round_trip() {
        for n in Method::NAMES {
            assert_eq!(Method::from_name(n).unwrap().name(), n);
        }
        assert!(Method::from_name("magic").is_err());
    }
}
