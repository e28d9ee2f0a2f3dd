//! A defensive reader for GGUF files (versions 2 and 3), the model format of llama.cpp.
//!
//! Layout (all little-endian):
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, value_type: u32, value)
//! n_tensors × (name: string, n_dims: u32, dims: [u64; n_dims], ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! ```
//! A string is `len: u64` followed by `len` UTF-8 bytes.
//!
//! The file may be truncated, corrupt or hostile. Every length read from it is checked
//! against the bytes that remain before anything is allocated, so parsing never panics
//! and never allocates more than a small multiple of the file's size.

mod metadata;
mod reader;
pub mod writer;

pub use metadata::{Value, ValueType};
pub use quant::GgmlType;
pub use writer::GgufWriter;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use reader::Reader;

/// "GGUF" read as a little-endian u32.
const GGUF_MAGIC: u32 = 0x4655_4747;
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// What went wrong while reading a GGUF file. Messages name the offending item.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated: needed {needed} bytes at offset {offset} while reading {what}, file has {len}")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        len: usize,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("metadata key {key:?}: {detail}")]
    Metadata { key: String, detail: String },
    #[error("tensor {name:?}: {detail}")]
    Tensor { name: String, detail: String },
}

impl GgufError {
    pub(crate) fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Self {
        GgufError::Invalid {
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn metadata(key: &str, detail: impl Into<String>) -> Self {
        GgufError::Metadata {
            key: key.to_string(),
            detail: detail.into(),
        }
    }
    fn tensor(name: &str, detail: impl Into<String>) -> Self {
        GgufError::Tensor {
            name: name.to_string(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One tensor's description from the header; its bytes live in the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension, e.g. a weight
    /// matrix `[n_out, n_in]` in row-major terms is stored as `dims = [n_in, n_out]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The parsed header of a GGUF file: version, metadata and tensor infos.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parses a header from the start of `bytes`, which must hold the whole file
    /// (tensor extents are checked against its length).
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
        let mut r = Reader::new(bytes);
        let magic = r.bytes(4, "magic")?;
        let magic: [u8; 4] = [magic[0], magic[1], magic[2], magic[3]];
        if u32::from_le_bytes(magic) != GGUF_MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each key/value takes at least 8 (key len) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let value = metadata::read_value(&mut r, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::metadata(&key, "duplicate key"));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| {
                    GgufError::metadata("general.alignment", "not an unsigned integer")
                })?;
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(GgufError::metadata(
                        "general.alignment",
                        format!("{a} is not a power of two in 1..=1048576"),
                    ));
                }
                a
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            tensors.push(read_tensor_info(&mut r, alignment)?);
        }
        let data_offset = align_up(r.offset() as u64, alignment)
            .ok_or_else(|| GgufError::invalid("header", "data offset overflows"))?;

        let file_len = bytes.len() as u64;
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::tensor(&t.name, "duplicate tensor name"));
            }
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::tensor(
                        &t.name,
                        format!(
                            "data [{} + {}, +{} bytes) lies beyond the end of the file ({} bytes): truncated file?",
                            data_offset, t.offset, t.size, file_len
                        ),
                    ))
                }
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, e.g. "llama", "gemma3", "qwen2".
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(v) => v.as_str().ok_or_else(|| {
                GgufError::metadata(key, format!("expected a string, found {}", v.type_name()))
            }),
            None => Err(GgufError::metadata(key, "missing")),
        }
    }

    /// A required unsigned integer value (any integer type that is non-negative).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            Some(v) => v.as_u64().ok_or_else(|| {
                GgufError::metadata(
                    key,
                    format!("expected an unsigned integer, found {}", v.type_name()),
                )
            }),
            None => Err(GgufError::metadata(key, "missing")),
        }
    }

    /// A required float value (f32/f64, or an integer).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| {
                GgufError::metadata(key, format!("expected a number, found {}", v.type_name()))
            }),
            None => Err(GgufError::metadata(key, "missing")),
        }
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

fn read_tensor_info(r: &mut Reader<'_>, alignment: u64) -> Result<TensorInfo> {
    let name = r.string("tensor name")?;
    let n_dims = r.u32("tensor n_dims")?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufError::tensor(
            &name,
            format!("{n_dims} dimensions (expected 1..=4)"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64("tensor dimension")?);
    }
    let type_id = r.u32("tensor type")?;
    let ggml_type = GgmlType::from_u32(type_id)
        .ok_or_else(|| GgufError::tensor(&name, format!("unsupported ggml type id {type_id}")))?;
    let offset = r.u64("tensor offset")?;
    if offset % alignment != 0 {
        return Err(GgufError::tensor(
            &name,
            format!("offset {offset} is not aligned to {alignment}"),
        ));
    }
    let mut n_elements: u64 = 1;
    for &d in &dims {
        n_elements = n_elements
            .checked_mul(d)
            .ok_or_else(|| GgufError::tensor(&name, format!("dimensions {dims:?} overflow")))?;
    }
    if dims[0] % ggml_type.block_size() as u64 != 0 {
        return Err(GgufError::tensor(
            &name,
            format!(
                "row length {} is not a multiple of the {} block size {}",
                dims[0],
                ggml_type.name(),
                ggml_type.block_size()
            ),
        ));
    }
    let size = (n_elements / ggml_type.block_size() as u64)
        .checked_mul(ggml_type.type_size() as u64)
        .ok_or_else(|| GgufError::tensor(&name, "size overflows"))?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        size,
    })
}

/// A GGUF file mapped into memory, with its parsed header.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: GgufHeader,
    mmap: memmap2::Mmap,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, then parses and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io_err)?;
        // SAFETY: the mapping is read-only; like every mmap reader we rely on the file
        // not being truncated by another process while it is mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let header = GgufHeader::parse(&mmap)?;
        Ok(GgufFile { path, header, mmap })
    }

    /// The raw bytes of a tensor (bounds were validated when the header was parsed).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.size as usize]
    }

    /// Looks a tensor up by name and returns its info and bytes.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let info = self.header.tensor(name)?;
        Some((info, self.tensor_data(info)))
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// Drops this process's pages of bytes `start..start + len` of the file (e.g. a
    /// tensor the engine keeps in another layout); reading them later maps them in
    /// again from the file. Only a hint: errors are ignored.
    pub fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: the mapping is private and read-only, so MADV_DONTNEED cannot lose
        // data: a later read of a dropped page faults it in from the file again with
        // the same bytes, and no reference into the mapping sees different contents.
        unsafe {
            let _ =
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }
}

#[cfg(test)]
mod tests;
