//! Prompt lookup decoding: the text often repeats itself (code edits, summaries that
//! quote their source, lists), so the tokens that followed an earlier occurrence of
//! the current n-gram are a cheap, often right guess.

use crate::tree::TokenTree;
use crate::Drafter;

/// Settings of [`LookupDrafter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupConfig {
    /// Longest n-gram matched (the search tries `max_ngram` down to `min_ngram` and
    /// uses the longest size with a match).
    pub max_ngram: usize,
    pub min_ngram: usize,
    /// Distinct continuations (most recent matches first) merged into the draft tree.
    pub max_branches: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            max_ngram: 3,
            min_ngram: 1,
            max_branches: 3,
        }
    }
}

impl LookupConfig {
    /// One-line error for settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_ngram == 0 || self.min_ngram > self.max_ngram {
            return Err(format!(
                "lookup n-gram sizes must satisfy 1 <= min ({}) <= max ({})",
                self.min_ngram, self.max_ngram
            ));
        }
        if self.max_branches == 0 {
            return Err("lookup needs at least 1 branch".into());
        }
        Ok(())
    }
}

/// Drafts by n-gram matching over the prompt and the generated text. The longest
/// n-gram size with a match wins; a match of `n` tokens drafts at most `2^n` (a single
/// matching token is weak evidence, and a draft token is not free on a CPU).
#[derive(Clone, Debug, Default)]
pub struct LookupDrafter {
    config: LookupConfig,
}

impl LookupDrafter {
    pub fn new(config: LookupConfig) -> LookupDrafter {
        LookupDrafter { config }
    }
}

impl Drafter for LookupDrafter {
    fn name(&self) -> &'static str {
        "lookup"
    }

    fn propose(&mut self, context: &[u32], tree: &mut TokenTree, budget: usize, max_depth: usize) {
        let len = context.len();
        if budget == 0 || max_depth == 0 || len < 2 {
            return;
        }
        let mut left = budget;
        let mut branches = 0;
        for n in (self.config.min_ngram..=self.config.max_ngram.min(len - 1)).rev() {
            let key = &context[len - n..];
            // Starts of earlier occurrences, most recent first; each must be followed
            // by at least one token.
            for start in (0..len - n).rev() {
                if &context[start..start + n] != key {
                    continue;
                }
                // A short match predicts less: at most 2^n tokens (1-gram: 2, 2-gram: 4).
                let depth = max_depth.min(1 << n.min(16));
                let from = start + n;
                let to = (from + depth).min(len);
                left -= tree.insert_chain(0, &context[from..to], left);
                branches += 1;
                if left == 0 || branches == self.config.max_branches {
                    return;
                }
            }
            if branches > 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(ctx: &[u32], budget: usize, depth: usize, config: LookupConfig) -> TokenTree {
        let mut t = TokenTree::new(*ctx.last().unwrap());
        LookupDrafter::new(config).propose(ctx, &mut t, budget, depth);
        t
    }

    #[test]
    fn copies_what_followed_the_last_trigram() {
        let ctx = [1, 2, 3, 4, 5, 6, 9, 9, 2, 3, 4];
        let t = propose(&ctx, 10, 3, LookupConfig::default());
        // "2 3 4" was followed by "5 6 9"; depth-limited to 3.
        assert_eq!(t.tokens(), &[4, 5, 6, 9]);
        assert_eq!(t.max_depth(), 3);
        // Budget-limited.
        let t = propose(&ctx, 2, 8, LookupConfig::default());
        assert_eq!(t.tokens(), &[4, 5, 6]);
    }

    #[test]
    fn several_matches_make_a_tree_and_shorter_ngrams_are_a_fallback() {
        // "7" occurs twice before the end, followed by 1 1 and by 2 2.
        let ctx = [7, 1, 1, 5, 7, 2, 2, 8, 7];
        let t = propose(&ctx, 10, 2, LookupConfig::default());
        assert_eq!(t.tokens(), &[7, 2, 2, 1, 1]);
        assert_eq!(t.path_to(4), vec![0, 3, 4]);
        let one = LookupConfig {
            max_branches: 1,
            ..LookupConfig::default()
        };
        assert_eq!(propose(&ctx, 10, 2, one).tokens(), &[7, 2, 2]);
        // A 1-gram match drafts at most 2 tokens.
        let weak = [7, 1, 2, 3, 4, 5, 9, 7];
        assert_eq!(
            propose(&weak, 10, 8, LookupConfig::default()).tokens(),
            &[7, 1, 2]
        );
        // No match at all: nothing drafted.
        assert_eq!(propose(&[1, 2, 3], 10, 4, LookupConfig::default()).len(), 1);
        assert_eq!(propose(&[3], 10, 4, LookupConfig::default()).len(), 1);
    }

    #[test]
    fn validates_settings() {
        assert!(LookupConfig::default().validate().is_ok());
        let bad = LookupConfig {
            min_ngram: 4,
            ..LookupConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
