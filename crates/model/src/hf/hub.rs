//! Downloads a checkpoint from the Hugging Face hub into the local hub cache
//! (`HF_HOME`, default `~/.cache/huggingface`), reusing files already there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

use super::shards::{read_index, INDEX_FILE, SINGLE_FILE};
use crate::{ModelError, Result};

/// Files fetched when the repository has them.
const OPTIONAL: [&str; 5] = [
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
];

/// Fetches what [`load_dir`](super::load_dir) reads from `repo_id` at `revision`
/// (default `main`) and returns the snapshot directory that holds it.
pub fn download(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    let hub_err =
        |e: hf_hub::api::sync::ApiError| ModelError::Io(format!("hub {repo_id}@{revision}: {e}"));
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(hub_err)?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo.info().map_err(hub_err)?;
    let files: HashSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let get = |repo: &ApiRepo, file: &str| repo.get(file).map_err(hub_err);

    let config = get(&repo, "config.json")?;
    get(&repo, "tokenizer.json")?;
    for file in OPTIONAL {
        if files.contains(file) {
            get(&repo, file)?;
        }
    }
    if files.contains(INDEX_FILE) {
        let index = get(&repo, INDEX_FILE)?;
        let shards: HashSet<String> = read_index(&index)?.into_values().collect();
        for shard in shards {
            get(&repo, &shard)?;
        }
    } else if files.contains(SINGLE_FILE) {
        get(&repo, SINGLE_FILE)?;
    } else {
        return Err(ModelError::Unsupported(format!(
            "hub {repo_id}@{revision}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints load)"
        )));
    }
    // Every file of one revision lands in the same snapshot directory.
    Ok(config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}
