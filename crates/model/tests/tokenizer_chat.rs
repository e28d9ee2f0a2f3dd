//! Chat templates from the GGUF files render conversations to exactly the ChatML text of
//! the golden chat prompts.

mod common;

use model::chat::{ChatMessage, ChatTemplate};
use model::tokenizer::Tokenizer;
use model::ModelError;

fn template(file: &str) -> (Tokenizer, Option<ChatTemplate>) {
    let path = common::model_path(file);
    let header = gguf::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .header;
    let tok = Tokenizer::from_gguf(&header).unwrap();
    let tmpl = ChatTemplate::from_gguf(&header, &tok).unwrap();
    (tok, tmpl)
}

/// The user question of a golden ChatML prompt.
fn user_text(prompt: &str) -> &str {
    let start = prompt.find("<|im_start|>user\n").expect("user turn") + "<|im_start|>user\n".len();
    let end = start
        + prompt[start..]
            .find("<|im_end|>")
            .expect("end of user turn");
    &prompt[start..end]
}

fn chat_prompts(golden: &str) -> Vec<String> {
    common::golden(golden)
        .iter()
        .filter(|r| r["kind"] == "chat")
        .map(|r| r["prompt"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn smollm2_template_renders_golden_chat_prompts() {
    let (_, tmpl) = template(common::SMOLLM2);
    let tmpl = tmpl.expect("SmolLM2 has a chat template");
    let prompts = chat_prompts("golden-smollm2-public.json");
    assert!(!prompts.is_empty());
    for prompt in prompts {
        let system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
        let msgs = [
            ChatMessage::new("system", system),
            ChatMessage::new("user", user_text(&prompt)),
        ];
        assert_eq!(tmpl.render(&msgs, true).unwrap(), prompt);
        // SmolLM2's template inserts the same system prompt when none is given.
        let msgs = [ChatMessage::new("user", user_text(&prompt))];
        assert_eq!(tmpl.render(&msgs, true).unwrap(), prompt);
    }
}

#[test]
fn qwen_template_renders_golden_chat_prompts() {
    let (_, tmpl) = template(common::QWEN05);
    let tmpl = tmpl.expect("Qwen has a chat template");
    let system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
    let prompts = chat_prompts("golden-qwen05-public.json");
    assert!(!prompts.is_empty());
    for prompt in prompts {
        let user = user_text(&prompt);
        let msgs = [
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ];
        assert_eq!(tmpl.render(&msgs, true).unwrap(), prompt);
        // No system message: Qwen's template supplies its default one.
        let msgs = [ChatMessage::new("user", user)];
        assert_eq!(tmpl.render(&msgs, true).unwrap(), prompt);
        // Without the generation prompt the assistant header is left out.
        let no_gen = tmpl.render(&msgs, false).unwrap();
        assert_eq!(format!("{no_gen}<|im_start|>assistant\n"), prompt);
    }
    // A custom system prompt replaces the default; a multi-turn history renders in order.
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(
        tmpl.render(&msgs, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn gemma3_base_has_no_template() {
    let (_, tmpl) = template(common::GEMMA3);
    assert!(tmpl.is_none());
}

#[test]
fn template_tokens_and_errors() {
    let (tok, _) = template(common::QWEN05);
    let t = ChatTemplate::new(
        "{{ bos_token }}|{{ eos_token }}|{{ messages | length }}",
        tok.bos_id().map(|i| tok.token_text(i)),
        tok.eos_id().map(|i| tok.token_text(i)),
    )
    .unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<|endoftext|>|<|im_end|>|0");

    for bad in ["{% if %}", "{{ messages[0].content }", "{% for x in y %}"] {
        assert!(
            matches!(
                ChatTemplate::new(bad, None, None),
                Err(ModelError::Template(_))
            ),
            "{bad}"
        );
    }
    // A runtime error (calling a number) is also a Template error, not a panic.
    let t = ChatTemplate::new("{{ messages | length() () }}", None, None);
    if let Ok(t) = t {
        assert!(matches!(t.render(&[], false), Err(ModelError::Template(_))));
    }
}
