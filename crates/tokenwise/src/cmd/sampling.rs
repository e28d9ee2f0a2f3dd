//! Sampling flags shared by `generate`, `chat` and `detect-eval`, named and defaulted
//! like llama.cpp's (`--mirostat 2 --mirostat-tau 5 --mirostat-lr 0.1`, `--typical P`,
//! `--min-p P`, `--dynatemp-range R`, `--samplers "top_k;top_p;temperature"`, ...).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use engine::SamplerConfig;
use sample::{
    dry_sequence_breakers, parse_sampler_chars, parse_sampler_list, DEFAULT_DRY_SEQUENCE_BREAKERS,
    WHOLE_HISTORY,
};

#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Softmax temperature (0 = greedy). 0.8 is llama.cpp's default: a little sharper
    /// than the model's distribution, which keeps small models on topic.
    #[arg(long, visible_alias = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Always take the most likely token (same as --temperature 0).
    #[arg(long)]
    pub greedy: bool,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Locally typical sampling (Meister et al.): keep the tokens whose surprisal is
    /// closest to the entropy, up to mass P (1 = off).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub typical: f32,
    /// Keep tokens within N standard deviations of the top logit (-1 = off).
    #[arg(long, value_name = "N", default_value_t = -1.0, allow_negative_numbers = true)]
    pub top_n_sigma: f32,
    /// Epsilon sampling (Hewitt et al.): drop tokens with probability below E (0 = off;
    /// needs `epsilon` in --samplers).
    #[arg(long, value_name = "E", default_value_t = 0.0)]
    pub epsilon: f32,
    /// Eta sampling (Hewitt et al.): entropy-dependent threshold
    /// min(eta, sqrt(eta) * exp(-H)) (0 = off; needs `eta` in --samplers).
    #[arg(long, value_name = "ETA", default_value_t = 0.0)]
    pub eta: f32,
    /// Entropy-adaptive temperature: the temperature ranges over T ± R with the
    /// normalised entropy of the distribution (0 = off).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub dynatemp_range: f32,
    /// Exponent of the entropy-to-temperature mapping.
    #[arg(long, value_name = "E", default_value_t = 1.0)]
    pub dynatemp_exp: f32,
    /// Mirostat: 0 = off, 1 = v1, 2 = v2 (replaces the truncation stages).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub mirostat: u8,
    /// Mirostat's target surprise in bits.
    #[arg(
        long,
        value_name = "TAU",
        visible_alias = "mirostat-ent",
        default_value_t = 5.0
    )]
    pub mirostat_tau: f32,
    /// Mirostat's learning rate.
    #[arg(long, value_name = "ETA", default_value_t = 0.1)]
    pub mirostat_lr: f32,
    /// Exclude Top Choices: with probability P, drop every token above the threshold
    /// except the least likely of them (0 = off).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub xtc_probability: f32,
    #[arg(long, value_name = "T", default_value_t = 0.1)]
    pub xtc_threshold: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of the penalties (-1 = the whole history).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub repeat_last_n: i64,
    /// Subtract N * count of each token seen in the window.
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Subtract N from each token seen in the window.
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// DRY ("don't repeat yourself") penalty multiplier (0 = off).
    #[arg(long, value_name = "M", default_value_t = 0.0)]
    pub dry_multiplier: f32,
    #[arg(long, value_name = "B", default_value_t = 1.75)]
    pub dry_base: f32,
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub dry_allowed_length: usize,
    /// Window of DRY (-1 = the whole history).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub dry_penalty_last_n: i64,
    /// A string that interrupts DRY's repetition matching (repeatable; default
    /// "\n", ":", "\"", "*").
    #[arg(long, value_name = "TEXT")]
    pub dry_sequence_breaker: Vec<String>,
    /// Add BIAS to a token's logit, llama.cpp's syntax: `TOKEN_ID(+|-)BIAS`, e.g.
    /// `15043+1` or `15043-inf` (repeatable).
    #[arg(long, value_name = "ID+BIAS", allow_hyphen_values = true)]
    pub logit_bias: Vec<String>,
    /// The chain of stages, in order, separated by ';' (e.g.
    /// "penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature", llama.cpp's default
    /// with top_n_sigma after dry). Add `epsilon` or `eta` here to use them.
    #[arg(long, value_name = "LIST", conflicts_with = "sampling_seq")]
    pub samplers: Option<String>,
    /// The chain as llama.cpp's one-letter codes (e.g. "edskypmxt").
    #[arg(long, value_name = "CODES")]
    pub sampling_seq: Option<String>,
    /// Random seed (default: from the clock; the summary prints the one used).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampler settings, validated, so a bad flag fails before the model loads.
    /// DRY's sequence breakers need the tokenizer: see [`Self::with_dry_breakers`].
    pub fn config(&self) -> Result<SamplerConfig> {
        let seed = self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let window = |n: i64, flag: &str| -> Result<usize> {
            match n {
                -1 => Ok(WHOLE_HISTORY),
                n if n >= 0 => Ok(n as usize),
                n => bail!("{flag} must be -1 (whole history) or >= 0 (got {n})"),
            }
        };
        let mut c = SamplerConfig {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            dynatemp_range: self.dynatemp_range,
            dynatemp_exponent: self.dynatemp_exp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical,
            top_n_sigma: self.top_n_sigma,
            epsilon: self.epsilon,
            eta: self.eta,
            xtc_probability: self.xtc_probability,
            xtc_threshold: self.xtc_threshold,
            mirostat: self.mirostat,
            mirostat_tau: self.mirostat_tau,
            mirostat_lr: self.mirostat_lr,
            seed,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: window(self.repeat_last_n, "--repeat-last-n")?,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_penalty_last_n: window(self.dry_penalty_last_n, "--dry-penalty-last-n")?,
            logit_bias: self
                .logit_bias
                .iter()
                .map(|s| parse_logit_bias(s))
                .collect::<Result<_>>()?,
            ..SamplerConfig::default()
        };
        if let Some(list) = &self.samplers {
            c.samplers = parse_sampler_list(list)?;
        } else if let Some(seq) = &self.sampling_seq {
            c.samplers = parse_sampler_chars(seq)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Fills DRY's sequence breakers from the model's vocabulary (only when DRY is on:
    /// it costs a pass over the vocabulary).
    pub fn with_dry_breakers(
        &self,
        mut c: SamplerConfig,
        tok: &model::tokenizer::Tokenizer,
    ) -> Result<SamplerConfig> {
        if c.dry_multiplier <= 0.0 {
            return Ok(c);
        }
        let strings: Vec<&str> = if self.dry_sequence_breaker.is_empty() {
            DEFAULT_DRY_SEQUENCE_BREAKERS.to_vec()
        } else {
            self.dry_sequence_breaker
                .iter()
                .map(String::as_str)
                .collect()
        };
        c.dry_sequence_breakers = dry_sequence_breakers(
            &strings,
            tok.vocab_size() as u32,
            |id| tok.token_bytes(id),
            |bytes| {
                String::from_utf8(bytes.to_vec())
                    .ok()
                    .and_then(|s| tok.encode(&s, false, false).ok())
                    .unwrap_or_default()
            },
        );
        c.validate().context("DRY sequence breakers")?;
        Ok(c)
    }
}

/// `TOKEN_ID(+|-)BIAS`, as llama.cpp's `--logit-bias` (`-inf` bans the token).
fn parse_logit_bias(s: &str) -> Result<(u32, f32)> {
    let bad = || anyhow::anyhow!("--logit-bias {s:?}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS");
    // The sign after the id (the first character may itself be a sign: an error below).
    let split = s
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i)
        .ok_or_else(bad)?;
    let id: u32 = s[..split].trim().parse().map_err(|_| bad())?;
    let bias: f32 = s[split..].trim().parse().map_err(|_| bad())?;
    if bias.is_nan() || bias == f32::INFINITY {
        bail!("--logit-bias {s:?}: the bias must be a number or -inf");
    }
    Ok((id, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_syntax_is_llama_cpps() {
        assert_eq!(parse_logit_bias("15043+1").unwrap(), (15043, 1.0));
        assert_eq!(parse_logit_bias("7-0.5").unwrap(), (7, -0.5));
        assert_eq!(parse_logit_bias("7-inf").unwrap(), (7, f32::NEG_INFINITY));
        for bad in ["", "+1", "x+1", "7", "7+", "7+nan", "7+inf", "é+1", "-"] {
            assert!(parse_logit_bias(bad).is_err(), "{bad:?}");
        }
    }
}
