//! Stop strings over streamed text.
//!
//! A stop string may arrive split over several tokens, so text that could be the start
//! of one is held back until it either completes the stop string (then it is dropped,
//! with everything after it) or can no longer do so (then it is released). The
//! concatenation of everything released is therefore exactly the text before the first
//! stop string, and nothing of the stop string is ever shown.

use crate::StopReason;

/// Accumulates generated text and releases what is safe to show.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// All text pushed so far (cut at the stop string once one is found).
    text: String,
    /// Bytes of `text` already released.
    released: usize,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..StopMatcher::default()
        }
    }

    /// Adds text; returns the part that may be shown now and whether a stop string was
    /// completed (after which further pushes are ignored).
    pub fn push(&mut self, new: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text.push_str(new);
        let unreleased = &self.text[self.released..];
        // An occurrence cannot start in released text: it would have been held back.
        let first = self
            .stops
            .iter()
            .filter_map(|s| unreleased.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let end = self.released + at;
            let out = self.text[self.released..end].to_string();
            self.text.truncate(end);
            self.released = end;
            self.stopped = true;
            return (out, true);
        }
        let hold = self.held_suffix_len();
        let end = self.text.len() - hold;
        let out = self.text[self.released..end].to_string();
        self.released = end;
        (out, false)
    }

    /// Releases whatever is still held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    /// Whether a stop string was found.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All text so far, without the stop string and what followed it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Length of the longest unreleased suffix of the text that is a proper prefix of a
    /// stop string (the part that must wait for more text).
    fn held_suffix_len(&self) -> usize {
        let unreleased = &self.text[self.released..];
        unreleased
            .char_indices()
            .map(|(i, _)| &unreleased[i..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

/// What the generation loops show for each chosen token and whether generation ends
/// with it: the token's text (complete UTF-8 only, minus anything that may begin a stop
/// string), end of generation, stop strings, and a limit reached. One implementation so
/// that plain and speculative decoding emit exactly the same text and stop reasons.
pub(crate) struct TokenText<'a> {
    stream: model::tokenizer::TextStream<'a>,
    stop: StopMatcher,
}

impl<'a> TokenText<'a> {
    pub(crate) fn new(tok: &'a model::tokenizer::Tokenizer, stops: &[String]) -> Self {
        TokenText {
            stream: model::tokenizer::TextStream::new(tok),
            stop: StopMatcher::new(stops),
        }
    }

    /// Takes token `id`. `end_of_generation`: the token ends generation and shows no
    /// text; `limit`: why generation must end after this token if nothing else ends it
    /// (`max_tokens`, a full context). Returns the text to show now and the reason
    /// generation ends, if it does. At the end, an incomplete character and text held
    /// back for stop strings are flushed (unless a stop string was hit).
    pub(crate) fn push(
        &mut self,
        id: u32,
        end_of_generation: bool,
        limit: Option<StopReason>,
    ) -> (String, Option<StopReason>) {
        let mut shown = String::new();
        let mut reason = None;
        if end_of_generation {
            reason = Some(StopReason::EndOfGeneration);
        } else {
            let (out, hit) = self.stop.push(&self.stream.push(id));
            shown = out;
            if hit {
                reason = Some(StopReason::StopString);
            }
        }
        if reason.is_none() {
            reason = limit;
        }
        if reason.is_some() && reason != Some(StopReason::StopString) {
            let (out, hit) = self.stop.push(&self.stream.finish());
            shown.push_str(&out);
            if hit {
                reason = Some(StopReason::StopString);
            } else {
                shown.push_str(&self.stop.finish());
            }
        }
        (shown, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (s, stop) = m.push(p);
            out.push(s);
            if stop {
                return (out, true, m.text().to_string());
            }
        }
        out.push(m.finish());
        (out, false, m.text().to_string())
    }

    #[test]
    fn no_stops_releases_everything_at_once() {
        let (out, stopped, text) = run(&[], &["a", "b", "c"]);
        assert_eq!(out, ["a", "b", "c", ""]);
        assert!(!stopped);
        assert_eq!(text, "abc");
    }

    #[test]
    fn stop_split_across_pieces_is_never_shown() {
        let (out, stopped, text) = run(&["\n\nUser:"], &["Hi", " there\n", "\nUs", "er:", " more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hi there");
        assert_eq!(text, "Hi there");
        assert_eq!(out[1], " there"); // the newline waits
    }

    #[test]
    fn false_start_is_released_later() {
        let (out, stopped, _) = run(&["END"], &["x E", "N", "d", "!"]);
        assert!(!stopped);
        assert_eq!(out, ["x ", "", "ENd", "!", ""]);
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_cut_on_char_boundaries() {
        let (out, stopped, text) = run(&["é!", "b"], &["aé", "!b"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        assert_eq!(text, "a");
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let (out, stopped, _) = run(&["STOP"], &["ok S", "T"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "ok ST");
    }
}
