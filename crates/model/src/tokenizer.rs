//! Tokenizers built from GGUF metadata (or a Hugging Face `tokenizer.json`), with the
//! rules llama.cpp adds on top of the plain BPE algorithm.
//!
//! The heavy lifting (merging, byte-level mapping, byte fallback) is done by a Hugging
//! Face [`tokenizers::Tokenizer`] that we assemble from the `tokenizer.ggml.*` keys. What
//! llama.cpp does *around* the model is reproduced here, because that is where the two
//! libraries differ and where token ids would otherwise drift from the reference:
//!
//! * **Special-token partition.** llama.cpp first cuts the text at every occurrence of a
//!   CONTROL, USER_DEFINED or UNKNOWN token (longest token text first, each token splitting
//!   all of its leftmost non-overlapping occurrences in the remaining raw fragments).
//!   CONTROL/UNKNOWN tokens take part only when `parse_special` is on; USER_DEFINED tokens
//!   (Gemma's runs of spaces, newlines, tabs, HTML tags; Qwen's `<tool_call>`) are *always*
//!   cut out. Only the raw fragments in between go through the BPE model. The HF added
//!   vocabulary matches leftmost-longest instead, which disagrees on overlapping tokens,
//!   so for GGUF tokenizers the partition is done here and the HF pipeline is only run on
//!   the fragments.
//! * **SentencePiece ("llama" model).** llama.cpp's SPM tokenizer starts from the UTF-8
//!   characters of the text (spaces escaped to `▁`) and repeatedly merges the adjacent
//!   pair whose concatenation is a vocabulary piece with the highest *score*, leftmost
//!   first on equal scores; symbols that never became pieces fall back to `<0xNN>` byte
//!   tokens. That is exactly BPE whose merge table contains, for every piece `p` and every
//!   split `p = a + b` with `a` and `b` in the vocabulary, the merge `(a, b) -> p`, ranked
//!   by `score(p)` descending: BPE pops the lowest-rank (= highest-score) applicable pair,
//!   leftmost first on equal ranks, and re-examines the neighbours after every merge, just
//!   like llama.cpp's priority queue. See [`spm_merges`] for the derivation and its one
//!   known tie-breaking caveat.
//! * **Space prefix.** With `tokenizer.ggml.add_space_prefix` (default true for SPM,
//!   false for Gemma 3) llama.cpp prepends a space to a raw fragment only when it starts
//!   the text or follows a special token, not to every fragment.
//! * **BPE ("gpt2" model).** The pre-tokenizer regexes follow llama.cpp's per
//!   `tokenizer.ggml.pre` table (applied in sequence, matches and gaps both kept, as HF's
//!   `Split` with `Isolated` behaviour), followed by the GPT-2 byte-to-unicode mapping.
//! * **BOS/EOS and end of generation.** `add_bos` follows `tokenizer.ggml.add_bos_token`
//!   with llama.cpp's per-model defaults; the end-of-generation set is llama.cpp's (EOS,
//!   EOT, EOM, FIM pad/repo/separator tokens and every token whose text is one of the
//!   well-known end markers such as `<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`).
//!
//! Known deviations from llama.cpp: see the "Deviations" section on [`Tokenizer`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use aho_corasick::AhoCorasick;
use gguf::{GgufHeader, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, AddedVocabulary, DecoderWrapper, Encoding, Model, ModelWrapper, NormalizerWrapper,
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

use crate::{ModelError, Result};

/// The SentencePiece word-boundary marker that stands for a space in SPM vocabularies.
const SPM_SPACE: &str = "\u{2581}";

/// Token texts llama.cpp treats as end of generation (`special_eog_ids`), whatever the
/// model's EOS id says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// FIM pad / repository / file-separator tokens, which llama.cpp also adds to the
/// end-of-generation set (a code model that emits them has finished its file).
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Tokens that llama.cpp cuts out of the text before running the model
    /// (`cache_special_tokens`).
    fn is_partitioned(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }

    /// Tokens matched in the text only when special-token parsing is on.
    fn needs_parse_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

/// Which tokenisation algorithm drives the raw text fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// SentencePiece BPE by piece score (GGUF `tokenizer.ggml.model = "llama"`).
    Spm,
    /// Byte-level BPE with ranked merges (GGUF `tokenizer.ggml.model = "gpt2"`).
    Bpe,
    /// Whatever a Hugging Face `tokenizer.json` describes; encoded by its own pipeline.
    HuggingFace,
}

/// How a vocabulary entry turns back into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2 byte-to-unicode mapped text.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` is a raw byte.
    SentencePiece,
    /// The text is the text.
    Plain,
}

/// A tokenizer with llama.cpp-compatible encoding rules.
///
/// # Decoding and bad input
///
/// * [`decode`](Self::decode) concatenates [`token_bytes`](Self::token_bytes) of every id,
///   special tokens included (so a prompt with `<|im_start|>` round-trips), and converts
///   the bytes to text lossily (invalid UTF-8 becomes U+FFFD). When the model adds a space
///   prefix (SPM with `add_space_prefix`), the one leading space of the first token after
///   an optional leading BOS is dropped, undoing what encoding added. An id outside the
///   vocabulary is an [`ModelError::Input`] error.
/// * [`token_bytes`](Self::token_bytes) and [`token_text`](Self::token_text) never fail:
///   an out-of-range id yields U+FFFD.
/// * Encoding never panics; the HF model can only fail on a character it has neither a
///   piece, a byte token nor an unknown token for, reported as [`ModelError::Tokenizer`].
///
/// # Deviations from llama.cpp
///
/// * Special tokens of equal text length are tried in id order (llama.cpp's unstable sort
///   leaves that order unspecified); it only matters when two such tokens overlap.
/// * SPM: pieces with *equal* scores that are different tokens are ranked by id, not by
///   position (scores are distinct for Gemma's normal pieces, so this only concerns the
///   -1000-scored control/user-defined texts); a character missing from the vocabulary is
///   split into byte tokens at once, whereas llama.cpp would still let it merge with a
///   neighbour into a piece that contains it.
/// * BPE merges whose parts or result are not in the vocabulary are dropped (llama.cpp
///   would merge them and then emit the result byte by byte).
/// * LSTRIP/RSTRIP attributes, which llama.cpp sets only for a few models by name (Phi-3,
///   Jina, ModernBERT), are not applied; decoding does not apply `clean_spaces`.
/// * Byte-level tokens containing a character outside the GPT-2 byte map decode to that
///   character's UTF-8 (llama.cpp writes `[UNK_BYTE_0x…]`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: VocabKind,
    /// Vocabulary text per id (GGUF spelling: `Ġ`/`▁` included).
    texts: Vec<String>,
    types: Vec<TokenType>,
    /// The bytes each token contributes to the output text.
    pieces: Vec<Vec<u8>>,
    text_to_id: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: HashSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Partitioned tokens, longest text first (ties by id).
    specials: Vec<u32>,
    /// Finds which of `specials` occur in a text at all (pattern i = specials[i]).
    special_finder: Option<AhoCorasick>,
    /// For HF tokenizers: the added vocabulary with special-token matching switched off.
    added_plain: Option<AddedVocabulary>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// One piece of the partitioned input: raw text (a byte range of the input) or a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF header's `tokenizer.ggml.*` keys.
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer> {
        let model = meta_str(h, "tokenizer.ggml.model")?
            .ok_or_else(|| ModelError::Format("tokenizer.ggml.model is missing".into()))?;
        let kind = match model {
            "llama" => VocabKind::Spm,
            "gpt2" => VocabKind::Bpe,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tokenizer model {other:?} (only \"llama\" SentencePiece and \"gpt2\" BPE are supported)"
                )))
            }
        };
        let pre = meta_str(h, "tokenizer.ggml.pre")?.unwrap_or("default");

        let mut texts: Vec<String> = string_array(h, "tokenizer.ggml.tokens")?
            .ok_or_else(|| ModelError::Format("tokenizer.ggml.tokens is missing".into()))?;
        let n = texts.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(ModelError::Format(format!(
                "tokenizer.ggml.tokens has {n} entries"
            )));
        }
        for (i, t) in texts.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let mut types: Vec<TokenType> = match h.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n],
            Some(v) => {
                let a = v.as_array().ok_or_else(|| {
                    ModelError::Format("tokenizer.ggml.token_type is not an array".into())
                })?;
                if a.len() < n {
                    return Err(ModelError::Format(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                a[..n]
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .map(TokenType::from_gguf)
                            .unwrap_or(TokenType::Undefined)
                    })
                    .collect()
            }
        };
        let scores: Option<Vec<f32>> = match h.get("tokenizer.ggml.scores") {
            None => None,
            Some(v) => {
                let a = v.as_array().ok_or_else(|| {
                    ModelError::Format("tokenizer.ggml.scores is not an array".into())
                })?;
                if a.len() < n {
                    return Err(ModelError::Format(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                Some(
                    a[..n]
                        .iter()
                        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                        .collect(),
                )
            }
        };

        // Later duplicates win, as in llama.cpp's token_to_id map before it rejected them.
        let mut text_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            text_to_id.insert(t.clone(), i as u32);
        }

        // Per-model defaults, then the explicit keys (llama_vocab::impl::load).
        let (mut add_bos, mut add_space_prefix) = match kind {
            VocabKind::Spm => (true, true),
            _ => (
                matches!(
                    pre,
                    "llama3"
                        | "llama-v3"
                        | "llama-bpe"
                        | "falcon3"
                        | "falcon-h1"
                        | "pixtral"
                        | "midm-2.0"
                        | "lfm2"
                        | "tekken"
                        | "chameleon"
                ),
                false,
            ),
        };
        if let Some(b) = meta_bool(h, "tokenizer.ggml.add_bos_token") {
            add_bos = b;
        }
        if let Some(b) = meta_bool(h, "tokenizer.ggml.add_space_prefix") {
            add_space_prefix = b;
        }
        let add_eos = meta_bool(h, "tokenizer.ggml.add_eos_token").unwrap_or(false);
        if kind != VocabKind::Spm {
            // llama.cpp's BPE path never prefixes a space.
            add_space_prefix = false;
        }

        let token_key = |key: &str, default: Option<u32>| -> Option<u32> {
            let id = match h.get(key) {
                Some(v) => v.as_u64().map(|x| x as u32).or(default),
                None => default,
            };
            id.filter(|&i| (i as usize) < n)
        };
        let (def_bos, def_eos) = match kind {
            VocabKind::Spm => (Some(1), Some(2)),
            _ => (None, None),
        };
        let bos = token_key("tokenizer.ggml.bos_token_id", def_bos);
        let eos = token_key("tokenizer.ggml.eos_token_id", def_eos);
        let unk = token_key(
            "tokenizer.ggml.unknown_token_id",
            if kind == VocabKind::Spm {
                Some(0)
            } else {
                None
            },
        );

        // End of generation, as llama.cpp assembles special_eog_ids.
        let mut eog = HashSet::new();
        for key in [
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ] {
            if let Some(id) = token_key(key, None) {
                eog.insert(id);
            }
        }
        for t in EOG_TEXTS.iter().chain(FIM_EOG_TEXTS) {
            if let Some(&id) = text_to_id.get(*t) {
                eog.insert(id);
                // llama.cpp forces control-looking end tokens to CONTROL.
                if matches!(types[id as usize], TokenType::Normal | TokenType::Undefined) {
                    types[id as usize] = TokenType::Control;
                }
            }
        }
        if let Some(e) = eos {
            eog.insert(e);
        }

        let inner = match kind {
            VocabKind::Spm => build_spm(&texts, scores.as_deref(), unk, add_space_prefix)?,
            _ => {
                let merges = string_array(h, "tokenizer.ggml.merges")?.ok_or_else(|| {
                    ModelError::Format(
                        "tokenizer.ggml.merges is missing for a gpt2 tokenizer".into(),
                    )
                })?;
                build_bpe(&text_to_id, &merges, pre)?
            }
        };
        let mut inner = inner;
        register_added_tokens(&mut inner, &texts, &types);

        let style = if kind == VocabKind::Spm {
            PieceStyle::SentencePiece
        } else {
            PieceStyle::ByteLevel
        };
        let pieces = texts
            .iter()
            .zip(&types)
            .map(|(t, &ty)| piece_bytes(t, ty, style))
            .collect();

        let mut tok = Tokenizer {
            inner,
            kind,
            texts,
            types,
            pieces,
            text_to_id,
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            specials: Vec::new(),
            special_finder: None,
            added_plain: None,
        };
        tok.build_specials()?;
        Ok(tok)
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// Encoding uses the file's own pipeline (normalizer, pre-tokenizer, model, added
    /// tokens and post-processor), so ids equal what `transformers` produces; added tokens
    /// marked `special` count as control tokens (parsed only with `parse_special`), the
    /// others as user-defined. BOS/EOS come from `tokenizer_config.json` next to the file
    /// when present (`bos_token`, `eos_token`, `add_bos_token`), then from the
    /// post-processor's template, then from well-known token names; end of generation adds
    /// `generation_config.json`'s `eos_token_id` list and the usual end markers.
    pub fn from_hf_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let vocab = inner.get_vocab(true);
        let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        if n == 0 {
            return Err(ModelError::Tokenizer(format!(
                "{}: empty vocabulary",
                path.display()
            )));
        }
        let mut texts = vec![String::new(); n];
        let mut types = vec![TokenType::Undefined; n];
        for (t, &i) in &vocab {
            texts[i as usize] = t.clone();
            types[i as usize] = TokenType::Normal;
        }
        for (i, added) in inner.get_added_tokens_decoder() {
            if let Some(ty) = types.get_mut(i as usize) {
                *ty = if added.special {
                    TokenType::Control
                } else {
                    TokenType::UserDefined
                };
            }
        }
        let text_to_id: HashMap<String, u32> = vocab.into_iter().collect();

        let style = hf_piece_style(&inner);
        if style == PieceStyle::SentencePiece {
            for (t, ty) in texts.iter().zip(types.iter_mut()) {
                if *ty == TokenType::Normal && parse_byte_token(t).is_some() {
                    *ty = TokenType::Byte;
                }
            }
        }
        let pieces = texts
            .iter()
            .zip(&types)
            .map(|(t, &ty)| piece_bytes(t, ty, style))
            .collect();

        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"));
        let config_token = |key: &str| -> Option<u32> {
            let v = config.as_ref()?.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            text_to_id.get(s).copied()
        };
        // What the post-processor puts in front of an empty sequence is the BOS it adds.
        let template_bos = inner
            .post_process(Encoding::default(), None, true)
            .ok()
            .and_then(|e| e.get_ids().first().copied());
        let by_name = |names: &[&str]| names.iter().find_map(|s| text_to_id.get(*s).copied());
        let bos = config_token("bos_token")
            .or(template_bos)
            .or_else(|| by_name(&["<|begin_of_text|>", "<bos>", "<s>", "<|startoftext|>"]));
        let eos = config_token("eos_token").or_else(|| {
            by_name(&[
                "<|end_of_text|>",
                "<eos>",
                "</s>",
                "<|endoftext|>",
                "<|im_end|>",
            ])
        });
        let add_bos = config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(template_bos.is_some());

        let mut eog: HashSet<u32> = eos.into_iter().collect();
        for t in EOG_TEXTS.iter().chain(FIM_EOG_TEXTS) {
            if let Some(&id) = text_to_id.get(*t) {
                eog.insert(id);
            }
        }
        if let Some(gen) = read_json(&dir.join("generation_config.json")) {
            match gen.get("eos_token_id") {
                Some(serde_json::Value::Number(x)) => eog.extend(x.as_u64().map(|v| v as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eog.extend(a.iter().filter_map(|x| x.as_u64()).map(|v| v as u32))
                }
                _ => {}
            }
        }

        let mut added_plain = inner.get_added_vocabulary().clone();
        added_plain.set_encode_special_tokens(true);
        Ok(Tokenizer {
            inner,
            kind: VocabKind::HuggingFace,
            texts,
            types,
            pieces,
            text_to_id,
            bos,
            eos,
            eog,
            add_bos,
            add_eos: false,
            add_space_prefix: false,
            specials: Vec::new(),
            special_finder: None,
            added_plain: Some(added_plain),
        })
    }

    /// Collects the partitioned tokens (longest first) and their occurrence finder.
    fn build_specials(&mut self) -> Result<()> {
        let mut specials: Vec<u32> = (0..self.texts.len() as u32)
            .filter(|&i| self.types[i as usize].is_partitioned())
            .collect();
        specials.sort_by(|&a, &b| {
            self.texts[b as usize]
                .len()
                .cmp(&self.texts[a as usize].len())
                .then(a.cmp(&b))
        });
        if !specials.is_empty() {
            let patterns: Vec<&str> = specials
                .iter()
                .map(|&i| self.texts[i as usize].as_str())
                .collect();
            self.special_finder = Some(AhoCorasick::new(patterns).map_err(tok_err)?);
        }
        self.specials = specials;
        Ok(())
    }

    /// Splits `text` at special tokens exactly as llama.cpp's `tokenizer_st_partition`.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        let Some(finder) = &self.special_finder else {
            return frags;
        };
        // Which special tokens occur anywhere in the text (a cheap prefilter: llama.cpp
        // scans the text once per special token, thousands of them for Gemma).
        let mut present = vec![false; self.specials.len()];
        let mut any = false;
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        for (k, &id) in self.specials.iter().enumerate() {
            if !present[k] || (!parse_special && self.types[id as usize].needs_parse_special()) {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = text[start..end].find(needle) {
                    let m = start + pos;
                    if m > start {
                        next.push(Fragment::Text(start, m));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// Tokenises `text`.
    ///
    /// * `add_bos`: add the special tokens the model asks for: BOS when
    ///   `tokenizer.ggml.add_bos_token` (or the model's default) says so, and EOS for the
    ///   rare models with `add_eos_token` (llama.cpp's `add_special`).
    /// * `parse_special`: control tokens written in the text (`<|im_start|>`) become their
    ///   special ids; otherwise they are tokenised as plain text. User-defined tokens are
    ///   matched either way, as in llama.cpp.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        if self.kind == VocabKind::HuggingFace {
            return self.encode_hf(text, add_bos, parse_special);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        let mut is_prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    is_prev_special = true;
                }
                Fragment::Text(s, e) => {
                    self.encode_fragment(&text[s..e], is_prev_special, &mut out)?;
                    is_prev_special = false;
                }
            }
        }
        if add_bos && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Runs the HF model (and, for BPE, the pre-tokenizer) over one raw fragment.
    fn encode_fragment(&self, text: &str, is_prev_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match self.kind {
            VocabKind::Spm => {
                let mut s = String::with_capacity(text.len() + 8);
                if self.add_space_prefix && is_prev_special {
                    s.push_str(SPM_SPACE);
                }
                for c in text.chars() {
                    if c == ' ' {
                        s.push_str(SPM_SPACE);
                    } else {
                        s.push(c);
                    }
                }
                let toks = self.inner.get_model().tokenize(&s).map_err(tok_err)?;
                out.extend(toks.iter().map(|t| t.id));
            }
            _ => {
                let mut pts = PreTokenizedString::from(text);
                if let Some(pt) = self.inner.get_pre_tokenizer() {
                    pt.pre_tokenize(&mut pts).map_err(tok_err)?;
                }
                let model = self.inner.get_model();
                pts.tokenize(|s| model.tokenize(s.get())).map_err(tok_err)?;
                for (_, _, toks) in pts.get_splits(OffsetReferential::Original, OffsetType::None) {
                    if let Some(toks) = toks {
                        out.extend(toks.iter().map(|t| t.id));
                    }
                }
            }
        }
        Ok(())
    }

    fn encode_hf(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let added = match (&self.added_plain, parse_special) {
            (Some(plain), false) => plain,
            _ => self.inner.get_added_vocabulary(),
        };
        let mut pts = added.extract_and_normalize(self.inner.get_normalizer(), text);
        if let Some(pt) = self.inner.get_pre_tokenizer() {
            pt.pre_tokenize(&mut pts).map_err(tok_err)?;
        }
        let model = self.inner.get_model();
        pts.tokenize(|s| model.tokenize(s.get())).map_err(tok_err)?;
        let enc = pts
            .into_encoding(None, 0, OffsetType::None)
            .map_err(tok_err)?;
        let enc = self
            .inner
            .post_process(enc, None, add_special)
            .map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// llama.cpp's default for a prompt: the model's BOS handling, special tokens parsed.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, true, true)
    }

    /// Decodes ids to text: special tokens are rendered as their text (nothing is
    /// skipped); see the type's documentation for the space-prefix rule. An id outside
    /// the vocabulary is an [`ModelError::Input`] error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut strip_space = self.add_space_prefix;
        for (k, &id) in ids.iter().enumerate() {
            let piece = self.pieces.get(id as usize).ok_or_else(|| {
                ModelError::Input(format!(
                    "token id {id} is outside the vocabulary ({} tokens)",
                    self.texts.len()
                ))
            })?;
            if k == 0 && Some(id) == self.bos {
                bytes.extend_from_slice(piece);
                continue;
            }
            if strip_space && piece.first() == Some(&b' ') {
                bytes.extend_from_slice(&piece[1..]);
            } else {
                bytes.extend_from_slice(piece);
            }
            strip_space = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes this token contributes to the text: byte-level BPE bytes, SPM pieces
    /// with `▁` as a space, `<0xNN>` byte tokens as that byte, control and user-defined
    /// tokens as their text; unused/undefined tokens contribute nothing (as in llama.cpp).
    /// An out-of-range id yields the UTF-8 of U+FFFD.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self.pieces.get(id as usize) {
            Some(p) => p.clone(),
            None => "\u{FFFD}".as_bytes().to_vec(),
        }
    }

    /// The token's text for display (lossy UTF-8 of [`token_bytes`](Self::token_bytes)).
    pub fn token_text(&self, id: u32) -> String {
        match self.pieces.get(id as usize) {
            Some(p) => String::from_utf8_lossy(p).into_owned(),
            None => "\u{FFFD}".to_string(),
        }
    }

    /// The token's vocabulary spelling (`Ġthe`, `▁the`, `<0x0A>`), if the id is valid.
    pub fn token_vocab_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|s| s.as_str())
    }

    /// The token's type (GGUF token types; for HF files derived from the added tokens).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether encoding a prompt adds BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// llama.cpp's end-of-generation set: EOS, EOT, EOM, FIM pad/repo/separator and the
    /// well-known end markers (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`, …).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The ids of the end-of-generation set, sorted.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// The id whose vocabulary spelling is exactly `text` (`<|im_end|>`, `Ġthe`, `▁the`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    /// The underlying Hugging Face tokenizer. For GGUF tokenizers, control tokens are
    /// registered as special added tokens and user-defined ones as plain added tokens, so
    /// `inner().encode(text, false)` parses them; it does not apply llama.cpp's partition
    /// order or SPM space-prefix rule, [`encode`](Self::encode) does.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Incremental detokenizer for streaming: feed ids, get the text that is complete UTF-8
/// so far. Bytes of a character split across tokens are held back until it completes;
/// bytes that can never form valid UTF-8 come out as U+FFFD.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            pending: Vec::new(),
        }
    }

    /// Adds a token; returns the newly completed text (possibly empty). An invalid id
    /// yields U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        match self.tok.pieces.get(id as usize) {
            Some(p) => self.pending.extend_from_slice(p),
            None => self.pending.extend_from_slice("\u{FFFD}".as_bytes()),
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        out
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

// ---------------------------------------------------------------------------------------
// GGUF metadata helpers

fn meta_str<'a>(h: &'a GgufHeader, key: &str) -> Result<Option<&'a str>> {
    match h.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ModelError::Format(format!("{key} is not a string"))),
    }
}

fn meta_bool(h: &GgufHeader, key: &str) -> Option<bool> {
    h.get(key)
        .and_then(|v| v.as_bool().or_else(|| v.as_u64().map(|x| x != 0)))
}

fn string_array(h: &GgufHeader, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = h.get(key) else {
        return Ok(None);
    };
    let a = v
        .as_array()
        .ok_or_else(|| ModelError::Format(format!("{key} is not an array")))?;
    a.iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ModelError::Format(format!("{key} holds a non-string"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

// ---------------------------------------------------------------------------------------
// Building the HF tokenizers

/// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to
/// U+0100 onwards, so every byte string is a string of visible characters.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

fn unicode_to_byte() -> HashMap<char, u8> {
    byte_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

thread_local! {
    static UNICODE_TO_BYTE: HashMap<char, u8> = unicode_to_byte();
}

/// `<0xNN>` → the byte.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes a token contributes to the text (llama.cpp's `token_to_piece` with
/// `special = true`).
fn piece_bytes(text: &str, ty: TokenType, style: PieceStyle) -> Vec<u8> {
    match ty {
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
            text.as_bytes().to_vec()
        }
        TokenType::Byte => match parse_byte_token(text) {
            Some(b) => vec![b],
            None => text.as_bytes().to_vec(),
        },
        TokenType::Unused | TokenType::Undefined => Vec::new(),
        TokenType::Normal => match style {
            PieceStyle::SentencePiece => text.replace(SPM_SPACE, " ").into_bytes(),
            PieceStyle::Plain => text.as_bytes().to_vec(),
            PieceStyle::ByteLevel => UNICODE_TO_BYTE.with(|map| {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match map.get(&c) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            }),
        },
    }
}

/// Guesses how an HF tokenizer's pieces map to bytes from its decoder / pre-tokenizer.
fn hf_piece_style(t: &tokenizers::Tokenizer) -> PieceStyle {
    let describe = |v: Option<String>| v.unwrap_or_default();
    let dec = describe(t.get_decoder().and_then(|d| serde_json::to_string(d).ok()));
    let pre = describe(
        t.get_pre_tokenizer()
            .and_then(|p| serde_json::to_string(p).ok()),
    );
    if dec.contains("ByteLevel") || (dec.is_empty() && pre.contains("ByteLevel")) {
        PieceStyle::ByteLevel
    } else if dec.contains("Metaspace") || dec.contains(SPM_SPACE) || dec.contains("ByteFallback") {
        PieceStyle::SentencePiece
    } else {
        PieceStyle::Plain
    }
}

/// llama.cpp's pre-tokenizer regexes per `tokenizer.ggml.pre` (applied in sequence) and
/// whether whole words found in the vocabulary skip the merges (`ignore_merges`).
fn bpe_regexes(pre: &str) -> Result<(Vec<&'static str>, bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => (vec![LLAMA3], false),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" => (vec![QWEN2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
        | "exaone4" | "a.x-4.0" | "mellum" | "granite-docling" => (vec![GPT2], false),
        "falcon" => (
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
            false,
        ),
        "deepseek-coder" => (
            vec![
                "[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
            false,
        ),
        "gpt-4o" | "llama4" => (vec![GPT4O], false),
        "tekken" => (vec![TEKKEN], true),
        "bloom" | "poro-chat" | "gpt3-finnish" => (vec![r" ?[^(\s|.,!?…。，、।۔،)]+"], false),
        "seed-coder" => (
            vec![
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            false,
        ),
        "" | "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
        ),
        other => {
            return Err(ModelError::Unsupported(format!(
                "BPE pre-tokenizer {other:?}"
            )))
        }
    })
}

/// Byte-level BPE from the GGUF vocabulary and merges, with llama.cpp's regexes.
fn build_bpe(
    text_to_id: &HashMap<String, u32>,
    merges: &[String],
    pre: &str,
) -> Result<tokenizers::Tokenizer> {
    let (regexes, ignore_merges) = bpe_regexes(pre)?;
    let vocab: Vocab = text_to_id.iter().map(|(k, &v)| (k.clone(), v)).collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for m in merges {
        // llama.cpp splits at the first space after the first byte.
        let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        let joined = format!("{a}{b}");
        if text_to_id.contains_key(a)
            && text_to_id.contains_key(b)
            && text_to_id.contains_key(&joined)
        {
            pairs.push((a.to_string(), b.to_string()));
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(
            SplitPattern::Regex(r.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex {r:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    let mut tok = tokenizers::Tokenizer::new(ModelWrapper::BPE(bpe));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(
        PreTokenizerSequence::new(steps),
    )));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    ))));
    Ok(tok)
}

/// Derives a BPE merge table that reproduces llama.cpp's score-driven SentencePiece merges.
///
/// llama.cpp merges the adjacent pair of symbols whose concatenation is in the vocabulary
/// with the highest score. Every symbol it can ever hold is a single character or a
/// vocabulary piece, so the pairs it can consider are exactly the splits `p = a + b` of a
/// piece `p` into two pieces `a`, `b`. Listing all of them, ordered by `score(p)` from
/// high to low, gives BPE ranks under which "lowest rank first, leftmost on ties" picks the
/// same pair llama.cpp's queue pops. Splits of the same piece share a score in llama.cpp
/// and get consecutive ranks here (ordered by split position); different pieces with equal
/// scores are ordered by id. Both can only differ from llama.cpp's leftmost rule when the
/// competing pairs overlap, which needs equal scores: Gemma's normal pieces all have
/// distinct scores.
///
/// All token types take part, as in llama.cpp, whose bigram lookup does not check types.
fn spm_merges(
    texts: &[String],
    scores: &[f32],
    text_to_id: &HashMap<&str, u32>,
) -> Vec<(String, String)> {
    let mut found: Vec<(f32, u32, u32)> = Vec::new(); // (score, id, split byte offset)
    for (id, t) in texts.iter().enumerate() {
        let id = id as u32;
        if text_to_id.get(t.as_str()) != Some(&id) {
            continue; // a shadowed duplicate never results from a merge
        }
        for (off, _) in t.char_indices().skip(1) {
            if text_to_id.contains_key(&t[..off]) && text_to_id.contains_key(&t[off..]) {
                found.push((scores[id as usize], id, off as u32));
            }
        }
    }
    found.sort_unstable_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    found
        .into_iter()
        .map(|(_, id, off)| {
            let t = &texts[id as usize];
            let off = off as usize;
            (t[..off].to_string(), t[off..].to_string())
        })
        .collect()
}

/// SentencePiece as BPE ranked by piece score, with byte fallback and `▁` escaping.
fn build_spm(
    texts: &[String],
    scores: Option<&[f32]>,
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let zeros;
    let scores = match scores {
        Some(s) => s,
        None => {
            zeros = vec![0.0f32; texts.len()];
            &zeros
        }
    };
    let mut by_text: HashMap<&str, u32> = HashMap::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        by_text.insert(t.as_str(), i as u32);
    }
    let merges = spm_merges(texts, scores, &by_text);
    let vocab: Vocab = by_text.iter().map(|(k, &v)| (k.to_string(), v)).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(false);
    if let Some(u) = unk {
        builder = builder.unk_token(texts[u as usize].clone());
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut tok = tokenizers::Tokenizer::new(ModelWrapper::BPE(bpe));
    let replace = Replace::new(" ", SPM_SPACE).map_err(tok_err)?;
    let normalizer = if add_space_prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())),
            NormalizerWrapper::Replace(replace),
        ]))
    } else {
        NormalizerWrapper::Replace(replace)
    };
    tok.with_normalizer(Some(normalizer));
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));
    Ok(tok)
}

/// Registers control tokens as special added tokens and user-defined tokens as plain
/// added tokens, so that `inner()` users see them parsed and a saved `tokenizer.json`
/// keeps them.
fn register_added_tokens(tok: &mut tokenizers::Tokenizer, texts: &[String], types: &[TokenType]) {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (t, &ty) in texts.iter().zip(types) {
        match ty {
            TokenType::Control | TokenType::Unknown => {
                special.push(AddedToken::from(t.clone(), true).normalized(false))
            }
            TokenType::UserDefined => {
                plain.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&plain);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_roundtrips() {
        let fwd = byte_to_unicode();
        let back = unicode_to_byte();
        assert_eq!(back.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(back[&fwd[b as usize]], b);
        }
        assert_eq!(fwd[b' ' as usize], 'Ġ');
        assert_eq!(fwd[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }

    #[test]
    fn spm_merges_rank_by_score() {
        let texts: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let map: HashMap<&str, u32> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let m = spm_merges(&texts, &scores, &map);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    /// A tiny hand-written tokenizer.json (word-level BPE) loads, encodes and decodes;
    /// BOS/EOS come from the tokenizer_config.json beside it.
    #[test]
    fn from_hf_file_loads_tiny_tokenizer() {
        let dir = std::env::temp_dir().join(format!("tokenwise-hf-tiny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = r#"{
          "version": "1.0",
          "truncation": null, "padding": null,
          "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
          "post_processor": null,
          "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
          "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": {"<s>": 0, "</s>": 1, "h": 2, "i": 3, "Ġ": 4, "hi": 5, "Ġhi": 6},
                    "merges": ["h i", "Ġ hi"]}
        }"#;
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true}"#,
        )
        .unwrap();
        let tok = Tokenizer::from_hf_file(&path).unwrap();
        assert_eq!(tok.vocab_size(), 7);
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_id(), Some(1));
        assert!(tok.is_end_of_generation(1));
        assert_eq!(tok.encode("hi hi", false, true).unwrap(), vec![5, 6]);
        assert_eq!(tok.encode("hi</s>", false, true).unwrap(), vec![5, 1]);
        // Not parsed as special: "</s>" is plain text, which this vocabulary cannot spell
        // (no pieces, no unknown token), so it must not come out as the EOS id.
        assert_ne!(
            tok.encode("</s>", false, false).unwrap_or_default(),
            vec![1]
        );
        assert_eq!(tok.decode(&[5, 6, 1]).unwrap(), "hi hi</s>");
        assert!(tok.decode(&[99]).is_err());
        assert_eq!(tok.token_text(99), "\u{FFFD}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_tokens_key_is_an_error() {
        let h = GgufHeader {
            version: 3,
            metadata: Default::default(),
            tensors: Vec::new(),
            alignment: 32,
            data_offset: 0,
        };
        assert!(Tokenizer::from_gguf(&h).is_err());
    }
}
