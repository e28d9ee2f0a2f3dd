//! `tokenwise eval ensemble`: two models with different vocabularies ensembled at the
//! byte level (`eval::ensemble`). Each passage of each JSONL file is scored byte by
//! byte by both models' exact next-byte distributions in lockstep; the table gives
//! bits per byte of each model alone, of linear and geometric pooling, of a Bayesian
//! mixture, and the per-passage best of the two models (an oracle, for reference:
//! it picks after seeing the text, so it is no code).
//!
//! Byte-level scoring runs at tens of bytes per second per model, so passages are cut
//! at `--max-bytes` and the files at `--limit` passages.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::byte_level::{model_vocabulary, ByteScorer};
use eval::ensemble::{score_pair, Method, PassageBits};

use crate::cmd::score::byte_prune;
use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model 1: file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Model 2: file or alias; may have a different tokenizer.
    #[arg(long)]
    pub model2: String,
    /// JSONL file of passages (a string field "text", optionally "source"); repeat the
    /// flag for several files, each one row of the table.
    #[arg(long, required = true, value_name = "FILE.jsonl")]
    pub text: Vec<PathBuf>,
    /// Passages per file, the first N (0: all).
    #[arg(long, default_value_t = 8)]
    pub limit: usize,
    /// Cut each passage to at most N bytes (at a character boundary; 0: no cut).
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub max_bytes: usize,
    /// Drop a new tokenisation whose probability, relative to the prefix's, is below
    /// this (as `score --bytes`; 0 = exact, exponential in the text's length).
    #[arg(long, value_name = "P", default_value_t = 1e-4)]
    pub byte_prune: f64,
    /// Keep at most this many new tokenisations per byte (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub byte_beam: usize,
    /// Worker threads of each model (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// Also write the markdown tables to FILE.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
}

/// One passage of a JSONL file.
struct Passage {
    source: String,
    bytes: Vec<u8>,
}

/// The passages of `path`: the first `limit` lines with a non-empty "text" (blank lines
/// skipped), each cut to `max_bytes`.
fn read_passages(path: &Path, limit: usize, max_bytes: usize) -> Result<Vec<Passage>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut passages = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        if limit != 0 && passages.len() == limit {
            break;
        }
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), index + 1);
        let record: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: not a JSON object", where_()))?;
        let Some(text) = record.get("text").and_then(|t| t.as_str()) else {
            bail!("{}: no string field \"text\"", where_());
        };
        if text.is_empty() {
            continue;
        }
        let source = record
            .get("source")
            .and_then(|s| s.as_str())
            .map_or_else(|| format!("line {}", index + 1), str::to_owned);
        passages.push(Passage {
            source,
            bytes: cut_at_char_boundary(text, max_bytes).as_bytes().to_vec(),
        });
    }
    if passages.is_empty() {
        bail!("{}: no passages with a non-empty \"text\"", path.display());
    }
    Ok(passages)
}

/// The longest prefix of at most `max_bytes` bytes that ends between characters (so
/// the byte stream is still the UTF-8 the models were trained on); 0 keeps all.
fn cut_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    if max_bytes == 0 || text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bits of every passage of one file, and its wall time.
struct FileResult {
    name: String,
    passages: Vec<(String, PassageBits)>,
    seconds: f64,
}

/// Bits per byte over passages (weighted by bytes): one per method, then the oracle.
fn totals(passages: &[&PassageBits], n_methods: usize) -> (usize, Vec<f64>) {
    let bytes: usize = passages.iter().map(|p| p.bytes).sum();
    let mut bits = vec![0.0; n_methods + 1];
    for p in passages {
        for (sum, b) in bits.iter_mut().zip(&p.bits) {
            *sum += b;
        }
        // Oracle: the better of the two models on this passage (methods 0 and 1).
        bits[n_methods] += p.bits[0].min(p.bits[1]);
    }
    (bytes, bits.iter().map(|b| b / bytes as f64).collect())
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let prune = byte_prune(a.byte_prune, a.byte_beam)?;
    // Read every file first: a bad line fails before minutes of model loading.
    let files = a
        .text
        .iter()
        .map(|p| read_passages(p, a.limit, a.max_bytes).map(|ps| (p.clone(), ps)))
        .collect::<Result<Vec<_>>>()?;
    let (path1, loaded1) = models::load(&a.model, a.threads)?;
    let (path2, loaded2) = models::load(&a.model2, a.threads)?;
    let vocab1 = model_vocabulary(&loaded1).context("building model 1's byte vocabulary")?;
    let vocab2 = model_vocabulary(&loaded2).context("building model 2's byte vocabulary")?;
    let methods = Method::standard();
    let bayes = methods
        .iter()
        .position(|&m| m == Method::Bayes)
        .context("the standard methods include the Bayesian mixture")?;
    let mut results = Vec::new();
    for (path, passages) in &files {
        let started = Instant::now();
        let mut scored = Vec::new();
        for (i, p) in passages.iter().enumerate() {
            let t0 = Instant::now();
            let context = || format!("{} passage {} ({})", path.display(), i + 1, p.source);
            // A token context never holds more tokens than there are bytes.
            let mut s1 = ByteScorer::new(&loaded1, &vocab1, prune, p.bytes.len())
                .with_context(|| format!("{}: starting model 1", context()))?;
            let mut s2 = ByteScorer::new(&loaded2, &vocab2, prune, p.bytes.len())
                .with_context(|| format!("{}: starting model 2", context()))?;
            let bits = score_pair(&mut s1, &mut s2, &p.bytes, &methods).with_context(context)?;
            eprintln!(
                "[{}/{}] {} {} bytes: m1 {:.3} m2 {:.3} bayes {:.3} bits/byte ({:.1}s)",
                i + 1,
                passages.len(),
                p.source,
                bits.bytes,
                bits.bits_per_byte(0),
                bits.bits_per_byte(1),
                bits.bits_per_byte(bayes),
                t0.elapsed().as_secs_f64()
            );
            scored.push((p.source.clone(), bits));
        }
        results.push(FileResult {
            name: file_name(path),
            passages: scored,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let md = markdown(&file_name(&path1), &file_name(&path2), &methods, &results);
    print!("{md}");
    if let Some(p) = &a.write_md {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// The summary table (one row per file, and all files together when there are
/// several), then one row per passage.
fn markdown(model1: &str, model2: &str, methods: &[Method], results: &[FileResult]) -> String {
    let mut s = format!("m1 = {model1}, m2 = {model2}; bits per byte (lower is better)\n\n");
    let header = |first: &str| {
        let mut h = format!("| {first} | passages | bytes |");
        for m in methods {
            h.push_str(&format!(" {} |", m.name()));
        }
        h.push_str(" oracle |");
        h
    };
    let rule = |extra: usize| {
        let mut r = String::from("|---|");
        // passages, bytes, the methods, the oracle.
        for _ in 0..methods.len() + 3 + extra {
            r.push_str("---:|");
        }
        r
    };
    let row = |name: &str, passages: &[&PassageBits]| {
        let (bytes, bpb) = totals(passages, methods.len());
        let mut r = format!("| {name} | {} | {bytes} |", passages.len());
        for x in bpb {
            r.push_str(&format!(" {x:.4} |"));
        }
        r
    };
    s.push_str(&format!("{} wall s |\n{}\n", header("source"), rule(1)));
    for f in results {
        let passages: Vec<&PassageBits> = f.passages.iter().map(|(_, p)| p).collect();
        s.push_str(&format!("{} {:.1} |\n", row(&f.name, &passages), f.seconds));
    }
    if results.len() > 1 {
        let all: Vec<&PassageBits> = results
            .iter()
            .flat_map(|f| f.passages.iter().map(|(_, p)| p))
            .collect();
        let seconds: f64 = results.iter().map(|f| f.seconds).sum();
        s.push_str(&format!("{} {seconds:.1} |\n", row("all", &all)));
    }
    s.push_str(&format!("\n{}\n{}\n", header("passage"), rule(0)));
    for f in results {
        for (i, (source, p)) in f.passages.iter().enumerate() {
            let name = format!("{} #{} {}", f.name, i + 1, source.replace('|', "/"));
            s.push_str(&format!("{}\n", row(&name, &[p])));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::cut_at_char_boundary;

    #[test]
    fn cuts_between_characters() {
        assert_eq!(cut_at_char_boundary("héllo", 2), "h");
        assert_eq!(cut_at_char_boundary("héllo", 3), "hé");
        assert_eq!(cut_at_char_boundary("héllo", 0), "héllo");
        assert_eq!(cut_at_char_boundary("hi", 10), "hi");
    }
}
