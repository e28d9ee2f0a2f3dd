//! Weight tensors as the forward pass sees them: quantised matrices kept in their GGUF
//! block format (memory-mapped, never copied) and small f32 vectors.

use std::collections::HashMap;
use std::sync::Arc;

use gguf::{GgufFile, TensorInfo};
use quant::packed::PackedMatrix;
use quant::GgmlType;

use crate::config::ModelConfig;
use crate::{ModelError, Result};

/// Where a weight's bytes live.
pub enum Backing {
    /// A memory-mapped GGUF file.
    Gguf(GgufFile),
    /// Bytes produced at load time (e.g. converted from safetensors).
    Owned(Vec<u8>),
    /// A memory-mapped file of another format (a safetensors shard).
    Mapped(memmap2::Mmap),
}

impl Backing {
    /// Drops the resident pages of a memory-mapped range that the forward pass no
    /// longer reads (its matrix was repacked); owned bytes stay.
    fn release(&self, start: usize, len: usize) {
        if let Backing::Gguf(f) = self {
            f.release(start, len);
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Gguf(f) => f.bytes(),
            Backing::Owned(v) => v,
            Backing::Mapped(m) => m,
        }
    }
}

/// A row-major matrix `[rows, cols]` whose rows are stored in a ggml block format.
/// (In ggml's dimension order this is `[cols, rows]`.)
#[derive(Clone)]
pub struct Matrix {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    backing: Arc<Backing>,
    start: usize,
    row_bytes: usize,
    /// The same rows repacked for the 16-row kernels (when this CPU and format
    /// have them); the fast path reads these, the reference path the GGUF rows.
    packed: Option<Arc<PackedMatrix>>,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matrix({} {} [{}, {}])",
            self.name,
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

impl Matrix {
    /// A matrix over `len` bytes of `backing` starting at `start`, validated against the shape.
    pub fn new(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        backing: Arc<Backing>,
        start: usize,
    ) -> Result<Matrix> {
        let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
            ModelError::Format(format!(
                "{name}: row length {cols} does not fit the {} block size",
                ty.name()
            ))
        })?;
        rows.checked_mul(row_bytes)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= backing.bytes().len())
            .ok_or_else(|| ModelError::Format(format!("{name}: data out of bounds")))?;
        let packed = PackedMatrix::new(
            ty,
            rows,
            cols,
            &backing.bytes()[start..start + rows * row_bytes],
        )
        .map(Arc::new);
        if packed.is_some() {
            // The fast path reads the packed copy; the GGUF rows (reference path,
            // embedding lookup) come back from the file if they are read again.
            backing.release(start, rows * row_bytes);
        }
        Ok(Matrix {
            name: name.to_string(),
            ty,
            rows,
            cols,
            backing,
            start,
            row_bytes,
            packed,
        })
    }

    /// An F32 matrix owning `values` (`rows * cols` of them, row-major).
    pub fn from_f32(name: &str, rows: usize, cols: usize, values: &[f32]) -> Result<Matrix> {
        if values.len() != rows * cols {
            return Err(ModelError::Format(format!(
                "{name}: {} values for a [{rows}, {cols}] matrix",
                values.len()
            )));
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Matrix::new(
            name,
            GgmlType::F32,
            rows,
            cols,
            Arc::new(Backing::Owned(bytes)),
            0,
        )
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All rows' bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.rows * self.row_bytes]
    }

    /// One row's bytes.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        let start = self.start + r * self.row_bytes;
        &self.backing.bytes()[start..start + self.row_bytes]
    }

    /// The rows packed for the 16-row kernels, if they were.
    #[inline]
    pub fn packed(&self) -> Option<&PackedMatrix> {
        self.packed.as_deref()
    }

    /// Row `r` dequantised to f32 (the reference path, and embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        quant::dequantize_row(self.ty, self.row(r), out)
            .map_err(|e| ModelError::Format(format!("{}: {e}", self.name)))
    }
}

/// The weights of one transformer block.
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub struct ModelWeights {
    pub token_embd: Matrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// The LM head; shares `token_embd`'s bytes when the embeddings are tied.
    pub output: Matrix,
}

/// Looks tensors up in a GGUF file and checks their shapes.
struct GgufTensors<'a> {
    file: &'a GgufFile,
    backing: Arc<Backing>,
}

impl GgufTensors<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.file
            .header
            .tensor(name)
            .ok_or_else(|| ModelError::Format(format!("missing tensor {name:?}")))
    }

    fn has(&self, name: &str) -> bool {
        self.file.header.tensor(name).is_some()
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let info = self.info(name)?;
        if info.dims != [cols as u64, rows as u64] {
            return Err(ModelError::Format(format!(
                "tensor {name:?} has dims {:?}, expected [{cols}, {rows}]",
                info.dims
            )));
        }
        let start = (self.file.header.data_offset + info.offset) as usize;
        Matrix::new(
            name,
            info.ggml_type,
            rows,
            cols,
            self.backing.clone(),
            start,
        )
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.n_elements() != len as u64 {
            return Err(ModelError::Format(format!(
                "tensor {name:?} has dims {:?}, expected {len} elements",
                info.dims
            )));
        }
        let mut out = vec![0.0; len];
        quant::dequantize_row(info.ggml_type, self.file.tensor_data(info), &mut out)
            .map_err(|e| ModelError::Format(format!("{name}: {e}")))?;
        Ok(out)
    }
}

impl ModelWeights {
    /// Takes ownership of the mapped file; matrices point into it.
    pub fn from_gguf(file: GgufFile, c: &ModelConfig) -> Result<ModelWeights> {
        // The Arc below owns the file; `t.file` borrows the same mapping through it.
        let backing = Arc::new(Backing::Gguf(file));
        let Backing::Gguf(file) = &*backing else {
            unreachable!("constructed as Gguf just above")
        };
        let t = GgufTensors {
            file,
            backing: backing.clone(),
        };
        let (e, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let token_embd = t.matrix("token_embd.weight", c.vocab_size, e)?;
        let output = if t.has("output.weight") {
            t.matrix("output.weight", c.vocab_size, e)?
        } else {
            token_embd.clone()
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let (bq, bk, bv) = if c.qkv_bias {
                (
                    Some(t.vector(&n("attn_q.bias"), q)?),
                    Some(t.vector(&n("attn_k.bias"), kv)?),
                    Some(t.vector(&n("attn_v.bias"), kv)?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(t.vector(&n("attn_q_norm.weight"), c.head_dim)?),
                    Some(t.vector(&n("attn_k_norm.weight"), c.head_dim)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if c.post_norms {
                (
                    Some(t.vector(&n("post_attention_norm.weight"), e)?),
                    Some(t.vector(&n("post_ffw_norm.weight"), e)?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: t.vector(&n("attn_norm.weight"), e)?,
                wq: t.matrix(&n("attn_q.weight"), q, e)?,
                wk: t.matrix(&n("attn_k.weight"), kv, e)?,
                wv: t.matrix(&n("attn_v.weight"), kv, e)?,
                wo: t.matrix(&n("attn_output.weight"), e, q)?,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: t.vector(&n("ffn_norm.weight"), e)?,
                w_gate: t.matrix(&n("ffn_gate.weight"), ff, e)?,
                w_up: t.matrix(&n("ffn_up.weight"), ff, e)?,
                w_down: t.matrix(&n("ffn_down.weight"), e, ff)?,
                post_ffn_norm,
            });
        }
        let output_norm = t.vector("output_norm.weight", e)?;
        Ok(ModelWeights {
            token_embd,
            layers,
            output_norm,
            output,
        })
    }
}

// --- Weights from named tensors (Hugging Face checkpoints) ---

/// A tensor handed to [`ModelWeights::from_tensors`]: `shape` outermost first (PyTorch
/// order, so a linear layer is `[out, in]` = `[rows, cols]`), elements row-major in
/// `ty`'s encoding (F32, F16 or BF16 for safetensors) at `backing[start..]`.
#[derive(Clone)]
pub struct RawTensor {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub backing: Arc<Backing>,
    pub start: usize,
}

impl RawTensor {
    /// An F32 tensor owning `values` (a converted or computed tensor).
    pub fn from_f32(shape: &[usize], values: &[f32]) -> RawTensor {
        RawTensor {
            ty: GgmlType::F32,
            shape: shape.to_vec(),
            backing: Arc::new(Backing::Owned(
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )),
            start: 0,
        }
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's bytes; an error when the backing is too short for the shape.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let len = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| self.ty.row_bytes(n))
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "tensor {name:?}: shape {:?} does not fit {}",
                    self.shape,
                    self.ty.name()
                ))
            })?;
        self.start
            .checked_add(len)
            .and_then(|end| self.backing.bytes().get(self.start..end))
            .ok_or_else(|| ModelError::Format(format!("tensor {name:?}: data out of bounds")))
    }

    /// All elements as f32.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.n_elements()];
        quant::dequantize_row(self.ty, self.bytes(name)?, &mut out)
            .map_err(|e| ModelError::Format(format!("tensor {name:?}: {e}")))?;
        Ok(out)
    }
}

/// Looks tensors up by their GGUF name in a map and checks their shapes.
struct NamedTensors<'a> {
    tensors: &'a HashMap<String, RawTensor>,
}

impl NamedTensors<'_> {
    fn get(&self, name: &str) -> Result<&RawTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::Format(format!("missing tensor {name:?}")))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let t = self.get(name)?;
        if t.shape != [rows, cols] {
            return Err(ModelError::Format(format!(
                "tensor {name:?} has shape {:?}, expected [{rows}, {cols}]",
                t.shape
            )));
        }
        Matrix::new(name, t.ty, rows, cols, t.backing.clone(), t.start)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [len] {
            return Err(ModelError::Format(format!(
                "tensor {name:?} has shape {:?}, expected [{len}]",
                t.shape
            )));
        }
        t.to_f32(name)
    }
}

impl ModelWeights {
    /// Builds the weights from tensors keyed by their GGUF names (`token_embd.weight`,
    /// `blk.0.attn_q.weight`, ...; see [`ModelWeights::from_gguf`]) in GGUF's conventions:
    /// q/k rows ordered for `c.rope_style`, Gemma norms holding `1 + w`. Matrices point
    /// into the tensors' backings; `output.weight` may be absent (tied embeddings).
    pub fn from_tensors(
        tensors: &HashMap<String, RawTensor>,
        c: &ModelConfig,
    ) -> Result<ModelWeights> {
        let t = NamedTensors { tensors };
        let (e, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let token_embd = t.matrix("token_embd.weight", c.vocab_size, e)?;
        let output = if tensors.contains_key("output.weight") {
            t.matrix("output.weight", c.vocab_size, e)?
        } else {
            token_embd.clone()
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let opt_vec = |on: bool, name: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if on {
                    t.vector(&n(name), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: t.vector(&n("attn_norm.weight"), e)?,
                wq: t.matrix(&n("attn_q.weight"), q, e)?,
                wk: t.matrix(&n("attn_k.weight"), kv, e)?,
                wv: t.matrix(&n("attn_v.weight"), kv, e)?,
                wo: t.matrix(&n("attn_output.weight"), e, q)?,
                bq: opt_vec(c.qkv_bias, "attn_q.bias", q)?,
                bk: opt_vec(c.qkv_bias, "attn_k.bias", kv)?,
                bv: opt_vec(c.qkv_bias, "attn_v.bias", kv)?,
                q_norm: opt_vec(c.qk_norm, "attn_q_norm.weight", c.head_dim)?,
                k_norm: opt_vec(c.qk_norm, "attn_k_norm.weight", c.head_dim)?,
                post_attn_norm: opt_vec(c.post_norms, "post_attention_norm.weight", e)?,
                ffn_norm: t.vector(&n("ffn_norm.weight"), e)?,
                w_gate: t.matrix(&n("ffn_gate.weight"), ff, e)?,
                w_up: t.matrix(&n("ffn_up.weight"), ff, e)?,
                w_down: t.matrix(&n("ffn_down.weight"), e, ff)?,
                post_ffn_norm: opt_vec(c.post_norms, "post_ffw_norm.weight", e)?,
            });
        }
        let output_norm = t.vector("output_norm.weight", e)?;
        Ok(ModelWeights {
            token_embd,
            layers,
            output_norm,
            output,
        })
    }
}
