//! Safetensors files: `model.safetensors`, or the shards `model.safetensors.index.json`
//! lists, memory-mapped; every tensor becomes a [`RawTensor`] pointing into its shard.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use quant::GgmlType;
use safetensors::{Dtype, SafeTensors};

use crate::weights::{Backing, RawTensor};
use crate::{ModelError, Result};

/// The single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (`weight_map`: tensor name → shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// All tensors of the checkpoint in `dir`, by their names in the file.
pub fn open_checkpoint(dir: &Path) -> Result<HashMap<String, RawTensor>> {
    let mut tensors = HashMap::new();
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let weight_map = read_index(&index_path)?;
        let shards: BTreeSet<&str> = weight_map.values().map(String::as_str).collect();
        for shard in shards {
            open_file(&dir.join(shard), &mut tensors)?;
        }
        // A shard that lacks what the index promises is a partial download.
        let mut missing: Vec<&String> = weight_map
            .keys()
            .filter(|k| !tensors.contains_key(*k))
            .collect();
        missing.sort();
        if let Some(name) = missing.first() {
            return Err(ModelError::Format(format!(
                "{}: tensor {name:?} is not in its shard {:?} ({} missing in all)",
                index_path.display(),
                weight_map[*name],
                missing.len()
            )));
        }
    } else {
        let path = dir.join(SINGLE_FILE);
        if !path.is_file() {
            return Err(ModelError::Io(format!(
                "{}: neither {SINGLE_FILE} nor {INDEX_FILE} found",
                dir.display()
            )));
        }
        open_file(&path, &mut tensors)?;
    }
    Ok(tensors)
}

/// The shard names of a checkpoint index, checked to be plain file names in the directory.
pub fn read_index(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let bad = |what: &str| ModelError::Format(format!("{}: {what}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("weight_map is missing or not an object"))?;
    let mut out = HashMap::with_capacity(map.len());
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| is_plain_file_name(f))
            .ok_or_else(|| bad(&format!("weight_map[{name:?}] = {file} is not a file name")))?;
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

/// A file name without directories (a shard outside the checkpoint is refused).
fn is_plain_file_name(f: &str) -> bool {
    !f.is_empty() && f != "." && f != ".." && !f.contains(['/', '\\'])
}

/// Maps one safetensors file and adds its tensors to `out`.
fn open_file(path: &Path, out: &mut HashMap<String, RawTensor>) -> Result<()> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{shown}: {e}")))?;
    // SAFETY: the mapping is read-only; like every mmap reader we rely on the file not
    // being truncated by another process while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| ModelError::Io(format!("{shown}: {e}")))?;
    // Checks the header, that the tensors tile the data without gaps or overlaps, that
    // each one's size matches its shape, and that the file is exactly that long.
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| ModelError::Format(format!("{shown}: not a valid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let backing = Arc::new(Backing::Mapped(mmap));
    for (name, info) in metadata.tensors() {
        let ty = match info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{shown}: tensor {name:?} has dtype {other:?} (supported: F32, F16, BF16)"
                )))
            }
        };
        let tensor = RawTensor {
            ty,
            shape: info.shape.clone(),
            backing: backing.clone(),
            start: data_start + info.data_offsets.0,
        };
        if out.insert(name.clone(), tensor).is_some() {
            return Err(ModelError::Format(format!(
                "{shown}: tensor {name:?} appears in more than one shard"
            )));
        }
    }
    Ok(())
}
