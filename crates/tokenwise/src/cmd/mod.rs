pub mod bench;
pub mod chat;
pub mod detect_eval;
pub mod generate;
pub mod inspect;
pub mod perplexity;
pub mod score;
