// as_chat: an LLM chat agent in AssemblyScript with structured output. A message from the
// runtime (kind 1, text) becomes a chat request whose answer must follow a JSON Schema
// ({"topic": string, "words": integer}); the answer (LLM_CHAT_DONE) is logged as
// `as_chat: topic <t> (<n> words)`, or `as_chat: llm error: ...`.
import { Message, JsonWriter, abi, glue, info, jsonGetInt, jsonGetString, llmChat, warn, snapshotPut } from "../../sdk/assemblyscript/assembly/index";
export { qh_abi_version, qh_alloc } from "../../sdk/assemblyscript/assembly/index";

const SCHEMA = "{\"type\":\"object\",\"properties\":{\"topic\":{\"type\":\"string\"}," +
  "\"words\":{\"type\":\"integer\"}},\"required\":[\"topic\",\"words\"]}";

function onMessage(msg: Message): bool {
  if (msg.kind == abi.KIND_LLM_CHAT_DONE) {
    const answer = msg.text();
    if (jsonGetInt(answer, "status", 1) != 0) {
      const why = jsonGetString(answer, "error");
      warn("as_chat: llm error: " + (why ? why : "?"));
      return true;
    }
    const text = jsonGetString(answer, "text");
    const parsed = text ? text : "{}";
    const topic = jsonGetString(parsed, "topic");
    info("as_chat: topic " + (topic ? topic : "?") + " (" + jsonGetInt(parsed, "words", -1).toString() + " words)");
    return true;
  }
  if (msg.fromRuntime() && msg.kind == 1) {
    const w = new JsonWriter().begin().key("messages").beginArray();
    w.begin().key("role").str("system").key("content").str("Name the topic of the text. Answer in JSON.").end();
    w.begin().key("role").str("user").key("content").str(msg.text()).end();
    w.endArray().key("max_tokens").int(48).key("json_schema").raw(SCHEMA).end();
    llmChat(w.toString(), 0);
  }
  return true;
}

export function qh_on_message(from: i32, kind: i32, ptr: usize, len: usize): i32 {
  return glue(from, kind, ptr, len, onMessage);
}

// Stateless: an empty snapshot restores it exactly.
export function qh_snapshot(): i32 {
  snapshotPut(new Uint8Array(0));
  return 0;
}

export function qh_restore(ptr: usize, len: usize): i32 {
  return len == 0 ? 0 : 1;
}
