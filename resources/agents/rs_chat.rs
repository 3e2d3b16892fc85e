//! rs_chat: an LLM chat agent in Rust with structured output. Each message from the runtime
//! (kind 1, UTF-8 text) becomes a chat request whose answer must follow a JSON Schema
//! ({"mood": "happy" | "sad", "reason": string}); the answer (LLM_CHAT_DONE) is parsed and
//! logged as `rs_chat: mood <m>: <reason>`, or `rs_chat: llm error: ...`.
//!
//! Config: max_tokens (default 48).
use qhybrid::{abi, json, Agent, Message};

struct Chat {
    max_tokens: i64,
}

fn schema() -> json::Value {
    let mood = json::object().set("enum", vec![json::Value::from("happy"), "sad".into()]);
    let reason = json::object().set("type", "string");
    json::object()
        .set("type", "object")
        .set("properties", json::object().set("mood", mood).set("reason", reason))
        .set("required", vec![json::Value::from("mood"), "reason".into()])
}

impl Agent for Chat {
    fn init(config: &json::Value) -> Result<Self, String> {
        let max_tokens = config.get("max_tokens").map(|v| v.as_i64()).unwrap_or(Some(48));
        match max_tokens {
            Some(n) if n >= 1 => Ok(Chat { max_tokens: n }),
            _ => Err("rs_chat: max_tokens must be a positive integer".to_string()),
        }
    }
    fn on_message(&mut self, msg: &Message) -> Result<(), String> {
        if msg.kind == abi::KIND_LLM_CHAT_DONE {
            let answer = msg.json()?;
            if answer.get("status").and_then(|s| s.as_i64()) != Some(0) {
                let why = answer.get("error").and_then(|e| e.as_str()).unwrap_or("?");
                qhybrid::warn(&format!("rs_chat: llm error: {}", why));
                return Ok(());
            }
            let text = answer.get("text").and_then(|t| t.as_str()).unwrap_or("");
            let parsed = json::parse(text.as_bytes())?;
            let mood = parsed.get("mood").and_then(|m| m.as_str()).unwrap_or("?");
            let reason = parsed.get("reason").and_then(|r| r.as_str()).unwrap_or("");
            qhybrid::info(&format!("rs_chat: mood {}: {}", mood, reason));
            return Ok(());
        }
        if msg.from_runtime() && msg.kind == 1 {
            let request = qhybrid::chat_request(
                "You judge the mood of a sentence. Answer in JSON.",
                &msg.text(),
                self.max_tokens,
                Some(schema()),
            );
            qhybrid::llm_chat(&request, 0);
        }
        Ok(())
    }
}

qhybrid::export_agent!(Chat);
