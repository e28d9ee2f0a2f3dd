//! `tokenwise compress` / `tokenwise decompress`: lossless compression of any file with
//! the model's next-token probabilities (see the `codec` crate).
//!
//! The text is streamed (read twice when compressing: once for its length and CRC,
//! which the header carries, once to code it); the archive is read whole when
//! decompressing (it is a fraction of the text). Decompressed bytes go to a temporary
//! file that replaces the target only once every check has passed, so a corrupt
//! archive, the wrong model or a numerics mismatch never leaves wrong output behind.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use codec::{CompressOptions, Header, LmCodec, Mode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::models;

/// File name extension of archives.
const EXT: &str = "twz";

#[derive(clap::Args)]
pub struct CompressArgs {
    /// Model file or alias (see `tokenwise models`); the same model decompresses.
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Most tokens the model sees at once.
    #[arg(long, short, default_value_t = 1024)]
    pub ctx: u32,
    /// Tokens carried into the next context when one is full (sliding windows).
    #[arg(long, default_value_t = 256)]
    pub overlap: u32,
    /// Equal-Info Windows: cut the code into windows of exactly this many bytes, the
    /// model's context starting afresh at each one (instead of sliding windows).
    #[arg(long, value_name = "BYTES")]
    pub equal_info: Option<u32>,
    /// Most tokens per encoder forward pass (decoding always runs one at a time).
    #[arg(long, short, default_value_t = 64)]
    pub batch: usize,
    /// Worker threads (default: available cores, at most 8). Does not change the archive.
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// Archive to write (default: FILE.twz; `-` for standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long, short)]
    pub force: bool,
    /// Print the statistics as one JSON object on standard error.
    #[arg(long)]
    pub json: bool,
    /// File to compress (`-`: standard input, read whole into memory).
    pub file: PathBuf,
}

#[derive(clap::Args)]
pub struct DecompressArgs {
    /// Model file or alias (default: the one named in the archive, from the cache).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Worker threads (default: available cores, at most 8).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// File to write (default: the archive's name without `.twz`; `-` for standard
    /// output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long, short)]
    pub force: bool,
    /// Print the statistics as one JSON object on standard error.
    #[arg(long)]
    pub json: bool,
    /// Archive to decompress (`-`: standard input).
    pub file: PathBuf,
}

fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// The name stored in the archive: the alias when one was given (so `decompress` finds
/// the cached file by itself), else the file name.
fn archive_model_name(spec: &str, path: &Path) -> String {
    if models::ALIASES.iter().any(|(a, _)| *a == spec) {
        return spec.to_string();
    }
    path.file_name()
        .map_or_else(|| spec.to_string(), |f| f.to_string_lossy().into_owned())
}

/// A file written under a temporary name and renamed into place on success; removed if
/// dropped before that.
struct PendingFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl PendingFile {
    fn create(target: &Path, force: bool) -> Result<PendingFile> {
        if target.exists() && !force {
            bail!(
                "{} already exists (use --force to overwrite)",
                target.display()
            );
        }
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?;
        let tmp = target.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(PendingFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(file),
        })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until persisted")
    }

    fn persist(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .with_context(|| format!("writing {}", self.tmp.display()))?;
        }
        std::fs::rename(&self.tmp, &self.target)
            .with_context(|| format!("renaming to {}", self.target.display()))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn progress_bar(json: bool) -> Result<ProgressBar> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() || json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes}  {bytes_per_sec}  [{elapsed_precise}, eta {eta}]",
        )
        .context("progress bar template")?,
    );
    Ok(bar)
}

fn check_threads(t: Option<usize>) -> Result<()> {
    if t == Some(0) {
        bail!("--threads must be at least 1");
    }
    Ok(())
}

pub fn compress(a: CompressArgs) -> Result<()> {
    check_threads(a.threads)?;
    let mode = match a.equal_info {
        Some(w) => Mode::EqualInfo {
            ctx: a.ctx,
            window_bytes: w,
        },
        None => Mode::Sliding {
            ctx: a.ctx,
            overlap: a.overlap,
        },
    };
    // Settings errors before the model loads.
    Header {
        mode,
        start_token: None,
        original_len: 0,
        content_crc: 0,
        model: codec::ModelId {
            weights: [0; 16],
            vocab: 0,
            name: String::new(),
        },
        fingerprint: 0,
    }
    .validate()?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }

    // The input: its length and CRC first (the header carries them).
    let stdin_data;
    let (len, crc, mut input): (u64, u32, Box<dyn Read>) = if is_stdio(&a.file) {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        stdin_data = buf;
        (
            stdin_data.len() as u64,
            {
                let mut h = codec::Crc32::new();
                h.update(&stdin_data);
                h.finalize()
            },
            Box::new(&stdin_data[..]),
        )
    } else {
        let open = || File::open(&a.file).with_context(|| format!("reading {}", a.file.display()));
        let mut f = BufReader::with_capacity(1 << 16, open()?);
        let mut h = codec::Crc32::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", a.file.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        (
            len,
            h.finalize(),
            Box::new(BufReader::with_capacity(1 << 16, open()?)),
        )
    };

    let out_path = match &a.output {
        Some(p) => p.clone(),
        None if is_stdio(&a.file) => PathBuf::from("-"),
        None => {
            let mut s = a.file.clone().into_os_string();
            s.push(format!(".{EXT}"));
            PathBuf::from(s)
        }
    };
    let mut pending = if is_stdio(&out_path) {
        None
    } else {
        Some(PendingFile::create(&out_path, a.force)?)
    };

    let (path, loaded) = models::load(&a.model, a.threads)?;
    let name = archive_model_name(&a.model, &path);
    let codec = LmCodec::new(&loaded, &name)?;
    let opts = CompressOptions {
        mode,
        batch: a.batch,
        ..CompressOptions::default()
    };

    let bar = progress_bar(a.json)?;
    bar.set_length(len);
    let mut progress = |done: u64, _total: u64| bar.set_position(done);
    let mut run = |out: &mut dyn Write| -> Result<codec::CompressStats> {
        let st = codec.compress(&mut input, len, crc, &opts, out, &mut progress)?;
        out.flush().context("writing the archive")?;
        Ok(st)
    };
    let result = match pending.as_mut() {
        Some(p) => run(&mut std::io::BufWriter::new(p.file())),
        None => run(&mut std::io::BufWriter::new(std::io::stdout().lock())),
    };
    bar.finish_and_clear();
    let st = result.with_context(|| format!("compressing {}", a.file.display()))?;
    if let Some(p) = pending {
        p.persist()?;
    }

    let bpb = if len > 0 {
        st.archive_bytes as f64 * 8.0 / len as f64
    } else {
        0.0
    };
    let kbps = len as f64 / 1000.0 / st.seconds.max(1e-9);
    if a.json {
        eprintln!(
            "{}",
            json!({
                "model": name,
                "file": a.file.display().to_string(),
                "archive": out_path.display().to_string(),
                "input_bytes": len,
                "archive_bytes": st.archive_bytes,
                "bits_per_byte": bpb,
                "items": st.items,
                "byte_token_bytes": st.byte_token_bytes,
                "escaped_bytes": st.escaped_bytes,
                "windows": st.windows,
                "batched": st.batched,
                "seconds": st.seconds,
                "kb_per_second": kbps,
            })
        );
    } else {
        eprintln!(
            "{}: {len} -> {} bytes ({bpb:.3} bits/byte), {} tokens, {:.1} s ({kbps:.2} KB/s)",
            a.file.display(),
            st.archive_bytes,
            st.items,
            st.seconds
        );
    }
    Ok(())
}

pub fn decompress(a: DecompressArgs) -> Result<()> {
    check_threads(a.threads)?;
    let archive = if is_stdio(&a.file) {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else {
        std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?
    };
    // The header first: a corrupt or foreign file is refused before a model loads.
    let (header, _) = Header::parse(&archive).with_context(|| format!("{}", a.file.display()))?;

    let out_path = match &a.output {
        Some(p) => p.clone(),
        None if is_stdio(&a.file) => PathBuf::from("-"),
        None => match a
            .file
            .to_str()
            .and_then(|s| s.strip_suffix(&format!(".{EXT}")))
        {
            Some(stem) if !stem.is_empty() => PathBuf::from(stem),
            _ => bail!(
                "{}: cannot name the output (no .{EXT} extension): pass --output",
                a.file.display()
            ),
        },
    };

    let spec = match &a.model {
        Some(m) => m.clone(),
        None => {
            let name = &header.model.name;
            if models::ALIASES.iter().any(|(al, _)| al == name) {
                name.clone()
            } else {
                let p = models::cache_dir().join(name);
                if !p.exists() {
                    bail!(
                        "the archive was made with model {name:?}, which is not in the cache ({}): pass --model",
                        models::cache_dir().display()
                    );
                }
                p.display().to_string()
            }
        }
    };
    let (path, loaded) = models::load(&spec, a.threads)?;
    let name = archive_model_name(&spec, &path);
    let codec = LmCodec::new(&loaded, &name)?;

    // Into a temporary file in every case: standard output gets the bytes only after
    // the checksum has passed.
    let (target, force) = if is_stdio(&out_path) {
        let t = std::env::temp_dir().join(format!("tokenwise-decompress-{}", std::process::id()));
        (t, true)
    } else {
        (out_path.clone(), a.force)
    };
    let mut pending = PendingFile::create(&target, force)?;
    let bar = progress_bar(a.json)?;
    bar.set_length(header.original_len);
    let mut progress = |done: u64, _total: u64| bar.set_position(done);
    let result = {
        let mut w = std::io::BufWriter::new(pending.file());
        let r = codec.decompress(&archive, &mut w, &mut progress);
        w.flush().context("writing the output")?;
        r
    };
    bar.finish_and_clear();
    let st = result.with_context(|| format!("decompressing {}", a.file.display()))?;
    pending.persist()?;
    if is_stdio(&out_path) {
        let copied = (|| -> std::io::Result<()> {
            let mut f = File::open(&target)?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut f, &mut out)?;
            out.flush()
        })();
        let _ = std::fs::remove_file(&target);
        copied.context("writing standard output")?;
    }
    let kbps = st.output_bytes as f64 / 1000.0 / st.seconds.max(1e-9);
    if a.json {
        eprintln!(
            "{}",
            json!({
                "model": name,
                "archive": a.file.display().to_string(),
                "output": out_path.display().to_string(),
                "output_bytes": st.output_bytes,
                "items": st.items,
                "windows": st.windows,
                "seconds": st.seconds,
                "kb_per_second": kbps,
            })
        );
    } else {
        eprintln!(
            "{}: {} bytes, {} tokens, {:.1} s ({kbps:.2} KB/s)",
            out_path.display(),
            st.output_bytes,
            st.items,
            st.seconds
        );
    }
    Ok(())
}
