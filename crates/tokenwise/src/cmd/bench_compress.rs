//! `tokenwise bench compress`: the model codec against gzip -9, xz -9 and zstd -19 on
//! the same files in the same run: bits per byte, compress and decompress throughput,
//! the cost of Equal-Info Windows, and the "information capacity" view (model FLOPs
//! spent per byte against the bits saved).
//!
//! Every model archive is decompressed and compared with the input; a mismatch is an
//! error. The baselines run as the installed binaries (a missing one is reported and
//! skipped), fed through pipes, timed around the process.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use codec::{CompressOptions, LmCodec, Mode};
use eval::sysinfo::{today_utc, MachineInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::models;

#[derive(clap::Args)]
pub struct Args {
    /// Model file or alias (see `tokenwise models`).
    #[arg(long, short, default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Most tokens the model sees at once.
    #[arg(long, short, default_value_t = 1024)]
    pub ctx: u32,
    /// Tokens carried into the next context when one is full.
    #[arg(long, default_value_t = 256)]
    pub overlap: u32,
    /// Equal-Info Windows sizes in bytes to compare with sliding windows
    /// (comma-separated; compressed and checked, not timed separately).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub equal_info: Vec<u32>,
    /// Most tokens per encoder forward pass.
    #[arg(long, short, default_value_t = 64)]
    pub batch: usize,
    /// Worker threads.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Use only the first N bytes of each file (0: all of it).
    #[arg(long, default_value_t = 32768)]
    pub max_bytes: usize,
    /// Append a dated markdown section (machine, command, table) to this file.
    #[arg(long, value_name = "FILE")]
    pub write_md: Option<PathBuf>,
    /// Files to compress.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// One external compressor's result on one file.
struct Baseline {
    name: &'static str,
    bytes: usize,
    compress_s: f64,
    decompress_s: f64,
}

struct Row {
    file: String,
    bytes: usize,
    archive: usize,
    tokens: u64,
    compress_s: f64,
    decompress_s: f64,
    /// (window bytes, archive bytes) for each Equal-Info size.
    equal_info: Vec<(u32, usize)>,
    baselines: Vec<Option<Baseline>>,
}

const BASELINES: [(&str, &str, &[&str], &[&str]); 3] = [
    ("gzip -9", "gzip", &["-9", "-c"], &["-d", "-c"]),
    ("xz -9", "xz", &["-9", "-c"], &["-d", "-c"]),
    (
        "zstd -19",
        "zstd",
        &["-19", "-c", "-q"],
        &["-d", "-c", "-q"],
    ),
];

/// Runs `program args` with `input` on stdin; returns stdout and the wall time.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Result<Option<(Vec<u8>, f64)>> {
    let t0 = Instant::now();
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    let mut stdin = child.stdin.take().context("stdin of the child")?;
    let data = input.to_vec();
    // A writer thread: the child may fill its stdout pipe before reading all input.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {program}"))?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("{program} {} failed ({})", args.join(" "), out.status);
    }
    Ok(Some((out.stdout, t0.elapsed().as_secs_f64())))
}

fn baseline(
    name: &'static str,
    program: &str,
    cargs: &[&str],
    dargs: &[&str],
    data: &[u8],
) -> Result<Option<Baseline>> {
    let Some((packed, compress_s)) = pipe(program, cargs, data)? else {
        return Ok(None);
    };
    let Some((unpacked, decompress_s)) = pipe(program, dargs, &packed)? else {
        return Ok(None);
    };
    if unpacked != data {
        bail!("{name} did not round-trip");
    }
    Ok(Some(Baseline {
        name,
        bytes: packed.len(),
        compress_s,
        decompress_s,
    }))
}

fn bpb(bytes: usize, of: usize) -> f64 {
    bytes as f64 * 8.0 / of.max(1) as f64
}

/// Multiply-adds of one decode step, times two: the matrices of every layer and the LM
/// head (attention over the context is left out; it is small next to them at these
/// context lengths).
fn flops_per_token(m: &model::LoadedModel) -> f64 {
    let w = &m.model.weights;
    let mut macs = (w.output.rows * w.output.cols) as f64;
    for l in &w.layers {
        for mat in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
            macs += (mat.rows * mat.cols) as f64;
        }
    }
    2.0 * macs
}

pub fn run(a: Args) -> Result<()> {
    if a.threads == 0 || a.batch == 0 {
        bail!("--threads and --batch must be at least 1");
    }
    let (path, loaded) = models::load(&a.model, Some(a.threads))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let codec = LmCodec::new(&loaded, &name)?;
    let sliding = CompressOptions {
        mode: Mode::Sliding {
            ctx: a.ctx,
            overlap: a.overlap,
        },
        batch: a.batch,
        ..CompressOptions::default()
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} [{elapsed_precise}]")
            .context("progress bar template")?,
    );

    let mut rows = Vec::new();
    for file in &a.files {
        let mut data =
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        if a.max_bytes > 0 {
            data.truncate(a.max_bytes);
        }
        let fname = file.file_name().map_or_else(
            || file.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        bar.set_length(data.len() as u64);
        bar.set_message(format!("{fname} compress"));
        let mut archive = Vec::new();
        let st = codec
            .compress(
                &mut &data[..],
                data.len() as u64,
                crc32(&data),
                &sliding,
                &mut archive,
                &mut |d, _| bar.set_position(d),
            )
            .with_context(|| format!("compressing {fname}"))?;
        bar.set_message(format!("{fname} decompress"));
        let mut restored = Vec::with_capacity(data.len());
        let dst = codec
            .decompress(&archive, &mut restored, &mut |d, _| bar.set_position(d))
            .with_context(|| format!("decompressing {fname}"))?;
        if restored != data {
            bail!("{fname}: the archive did not decompress to the input");
        }
        let mut equal_info = Vec::new();
        for &w in &a.equal_info {
            bar.set_message(format!("{fname} equal-info {w}"));
            let o = CompressOptions {
                mode: Mode::EqualInfo {
                    ctx: a.ctx,
                    window_bytes: w,
                },
                ..sliding
            };
            let eiw = codec
                .compress_bytes(&data, &o)
                .with_context(|| format!("compressing {fname} in {w}-byte windows"))?;
            equal_info.push((w, eiw.len()));
        }
        let mut baselines = Vec::new();
        for (bname, program, cargs, dargs) in BASELINES {
            baselines.push(baseline(bname, program, cargs, dargs, &data)?);
        }
        eprintln!(
            "{fname}: {} bytes, {:.3} bits/byte, compress {:.2} KB/s, decompress {:.2} KB/s",
            data.len(),
            bpb(archive.len(), data.len()),
            data.len() as f64 / 1000.0 / st.seconds,
            data.len() as f64 / 1000.0 / dst.seconds
        );
        rows.push(Row {
            file: fname,
            bytes: data.len(),
            archive: archive.len(),
            tokens: st.items,
            compress_s: st.seconds,
            decompress_s: dst.seconds,
            equal_info,
            baselines,
        });
    }
    bar.finish_and_clear();

    let table = markdown(&rows, &a.equal_info, flops_per_token(&loaded));
    println!("{table}");
    if let Some(md) = &a.write_md {
        let section = format!(
            "\n### Compression, {name}, {}\n\nMachine: {}. Command: `{}`. {} threads, ctx {}, overlap {}, batch {}; \
             sizes include the archive header (~100 bytes) and checksums.\n\n{table}\n",
            today_utc(),
            MachineInfo::detect().describe(),
            std::env::args().collect::<Vec<_>>().join(" "),
            a.threads,
            a.ctx,
            a.overlap,
            a.batch,
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(md)
            .with_context(|| format!("opening {}", md.display()))?;
        f.write_all(section.as_bytes())
            .with_context(|| format!("writing {}", md.display()))?;
    }
    Ok(())
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = codec::Crc32::new();
    h.update(data);
    h.finalize()
}

fn markdown(rows: &[Row], eiw: &[u32], flops_per_token: f64) -> String {
    let mut s = String::new();
    s.push_str("| file | bytes | tokens | model bits/byte | compress KB/s | decompress KB/s |");
    for w in eiw {
        s.push_str(&format!(" EIW {w} B bits/byte |"));
    }
    for (name, ..) in BASELINES {
        s.push_str(&format!(" {name} bits/byte |"));
    }
    s.push_str(" vs xz -9 | model MFLOP/byte |\n|---|---:|---:|---:|---:|---:|");
    for _ in eiw {
        s.push_str("---:|");
    }
    for _ in BASELINES {
        s.push_str("---:|");
    }
    s.push_str("---:|---:|\n");
    for r in rows {
        let model_bpb = bpb(r.archive, r.bytes);
        s.push_str(&format!(
            "| {} | {} | {} | **{:.3}** | {:.2} | {:.2} |",
            r.file,
            r.bytes,
            r.tokens,
            model_bpb,
            r.bytes as f64 / 1000.0 / r.compress_s,
            r.bytes as f64 / 1000.0 / r.decompress_s,
        ));
        for (_, n) in &r.equal_info {
            s.push_str(&format!(" {:.3} |", bpb(*n, r.bytes)));
        }
        let mut xz = None;
        for b in &r.baselines {
            match b {
                Some(b) => {
                    if b.name == "xz -9" {
                        xz = Some(bpb(b.bytes, r.bytes));
                    }
                    s.push_str(&format!(
                        " {:.3} ({:.0}/{:.0} ms) |",
                        bpb(b.bytes, r.bytes),
                        b.compress_s * 1000.0,
                        b.decompress_s * 1000.0
                    ))
                }
                None => s.push_str(" (not installed) |"),
            }
        }
        match xz {
            Some(x) => s.push_str(&format!(" {:.2}x |", x / model_bpb)),
            None => s.push_str(" |"),
        }
        s.push_str(&format!(
            " {:.0} |\n",
            flops_per_token * r.tokens as f64 / r.bytes.max(1) as f64 / 1e6
        ));
    }
    s.push_str(
        "\nBaseline cells: bits/byte (compress/decompress wall time of the process). \
         \"vs xz -9\": xz's bits/byte over the model's. MFLOP/byte: 2 x the weight \
         multiply-adds of one decode step x tokens / bytes (attention left out).\n",
    );
    s
}
