//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`) rendered
//! with minijinja the way Hugging Face `transformers` renders it.
//!
//! `transformers` renders with a Jinja2 sandbox configured with `trim_blocks` and
//! `lstrip_blocks`, the `loopcontrols` extension, the `tojson` filter, a
//! `raise_exception(msg)` global and Python semantics for string methods
//! (`.strip()`, `.startswith()`, `.split()`, ...). minijinja follows Jinja2 closely;
//! `minijinja-contrib`'s pycompat callback supplies the Python methods, and the globals
//! are added here, so templates written for `transformers` render to the same text.
//!
//! Context provided to a template: `messages` (list of `{role, content}`),
//! `add_generation_prompt`, `bos_token`, `eos_token` (empty strings when unknown), and the
//! functions `raise_exception(msg)` and `strftime_now(format)`. Anything else a template
//! asks for (`tools`, `documents`, ...) is undefined, which Jinja treats as false/empty.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{ModelError, Result, Tokenizer};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// Formats a minijinja error on one line, with its detail and location when known.
fn template_err(e: &Error) -> ModelError {
    let mut msg = e.kind().to_string();
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    ModelError::Template(msg)
}

impl ChatTemplate {
    /// The model's template from `tokenizer.chat_template`, with BOS/EOS text from the
    /// tokenizer; `None` when the file has no template.
    pub fn from_gguf(h: &gguf::GgufHeader, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
        let Some(v) = h.get("tokenizer.chat_template") else {
            return Ok(None);
        };
        let source = v
            .as_str()
            .ok_or_else(|| ModelError::Format("tokenizer.chat_template is not a string".into()))?;
        let bos = tok.bos_id().map(|id| tok.token_text(id));
        let eos = tok.eos_id().map(|id| tok.token_text(id));
        ChatTemplate::new(source, bos, eos).map(Some)
    }

    /// Compiles `source`; a syntax error is a [`ModelError::Template`].
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // transformers' Jinja settings.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_err(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos: bos.unwrap_or_default(),
            eos: eos.unwrap_or_default(),
        })
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `add_generation_prompt` appends the header that starts the
    /// assistant's turn (e.g. `<|im_start|>assistant\n`). Errors raised by the template
    /// (`raise_exception`) or during rendering are [`ModelError::Template`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err(&e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        };
        tmpl.render(ctx).map_err(|e| template_err(&e))
    }
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(msg: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)`: the current UTC date/time, supporting the codes templates use
/// (`%Y %m %d %e %B %b %H %M %S %y %A %a %j %%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format)
}

fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let mi = (month - 1) as usize;
    let yday = CUM[mi] + day + i64::from(leap && month > 2);

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(MONTHS[mi]),
            Some('b') => out.push_str(&MONTHS[mi][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime(t, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(
            strftime(t, "%A %B %e, %H:%M:%S %j %%"),
            "Thursday February 29, 13:05:09 060 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }

    #[test]
    fn renders_python_methods_and_exceptions() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.content.strip().upper() }}]{% endfor %}{{ eos_token }}",
            None,
            Some("</s>".into()),
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "  hi  ")], false)
            .unwrap();
        assert_eq!(out, "[HI]</s>");
        match t.render(&[ChatMessage::new("tool", "x")], false) {
            Err(ModelError::Template(msg)) => assert!(msg.contains("bad role tool"), "{msg}"),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_template_is_an_error() {
        match ChatTemplate::new("{% for m in messages %}{{ m.content }", None, None) {
            Err(ModelError::Template(_)) => {}
            other => panic!("expected a template error, got {other:?}"),
        }
    }
}
