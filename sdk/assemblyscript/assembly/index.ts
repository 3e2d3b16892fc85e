// Write qhybrid agents in AssemblyScript (agent ABI version 2).
//
// An agent file re-exports the glue and defines its handler:
//
//   import { Message, glue, info, send } from "../../sdk/assemblyscript/assembly/index";
//   export { qh_abi_version, qh_alloc } from "../../sdk/assemblyscript/assembly/index";
//   function onMessage(msg: Message): bool {
//     if (!msg.fromRuntime()) send(msg.from, msg.kind, msg.payload);
//     return true;
//   }
//   export function qh_on_message(from: i32, kind: i32, ptr: usize, len: usize): i32 {
//     return glue(from, kind, ptr, len, onMessage);
//   }
//
// Build with `python sdk/build.py` (asc from sdk/assemblyscript/install.sh): the incremental
// garbage collector (the stub runtime never frees, and runs out of memory on a long run), and
// `--use abort=...qhAbort`, which logs the abort's message and place as an error line before
// the module traps. Its state lives in globals the host cannot see, so an agent that must
// survive a worker crash exports qh_snapshot/qh_restore built on snapshotPut (see as_echo.ts).
import * as abi from "./abi";
export { abi };

// -- export glue -------------------------------------------------------------------------------

export function qh_abi_version(): i32 {
  return abi.ABI_VERSION;
}

let scratch: usize = 0;
let scratchCap: usize = 0;

/** One growing scratch buffer outside the garbage-collected heap. */
export function qh_alloc(size: usize): usize {
  if (size > scratchCap || scratch == 0) {
    let cap: usize = scratchCap > 0 ? scratchCap : 256;
    while (cap < size) cap <<= 1;
    if (scratch != 0) heap.free(scratch);
    scratch = heap.alloc(cap);
    scratchCap = cap;
  }
  return scratch;
}

/** The abort handler (`--use abort=...`): a log line, then a trap. */
export function qhAbort(message: string | null, file: string | null, line: u32, column: u32): void {
  const text = "abort: " + (message ? message : "") + " at " + (file ? file : "?") + ":" +
    line.toString() + ":" + column.toString();
  log(abi.LOG_ERROR, text);
  unreachable();
}

/** One incoming message; `payload` is a copy, `text()` decodes it. */
export class Message {
  constructor(public from: i32, public kind: i32, public payload: Uint8Array) {}
  fromRuntime(): bool {
    return this.from == abi.FROM_RUNTIME;
  }
  text(): string {
    return String.UTF8.decodeUnsafe(this.payload.dataStart, this.payload.length);
  }
  corr(): i64 {
    return abi.msg_corr();
  }
  timer(): i32 {
    return abi.msg_timer();
  }
}

/** Call `handler` for one message: `true` handled; `false` (see `fail`) fails the message. */
export function glue(from: i32, kind: i32, ptr: usize, len: usize, handler: (msg: Message) => bool): i32 {
  const payload = new Uint8Array(<i32>len);
  memory.copy(payload.dataStart, ptr, len);
  return handler(new Message(from, kind, payload)) ? 0 : 1;
}

/** Log `text` as an error and make it the message's failure; returns false. */
export function fail(text: string): bool {
  log(abi.LOG_ERROR, text);
  const bytes = String.UTF8.encode(text);
  abi.set_error(changetype<usize>(bytes), bytes.byteLength);
  return false;
}

// -- host calls with strings -------------------------------------------------------------------

function utf8(text: string): ArrayBuffer {
  return String.UTF8.encode(text);
}

export function log(level: i32, text: string): void {
  const b = utf8(text);
  abi.log(level, changetype<usize>(b), min(b.byteLength, abi.LOG_MAX));
}
export function info(text: string): void {
  log(abi.LOG_INFO, text);
}
export function warn(text: string): void {
  log(abi.LOG_WARNING, text);
}

export function send(to: i32, kind: i32, payload: Uint8Array): i32 {
  return abi.send(to, kind, payload.dataStart, payload.length);
}
export function sendText(to: i32, kind: i32, text: string): i32 {
  const b = utf8(text);
  return abi.send(to, kind, changetype<usize>(b), b.byteLength);
}
export function sendEnv(to: i32, kind: i32, corr: i64, replyTo: i32, text: string): i32 {
  const b = utf8(text);
  return abi.send_env(to, kind, corr, replyTo, changetype<usize>(b), b.byteLength);
}
/** Answer the message being handled (its reply-to, its correlation id). */
export function reply(kind: i32, text: string): i32 {
  const b = utf8(text);
  return abi.reply(kind, changetype<usize>(b), b.byteLength);
}
export function groupSize(group: string): i32 {
  const b = utf8(group);
  return abi.group_size(changetype<usize>(b), b.byteLength);
}
export function subscribe(topic: string): i32 {
  const b = utf8(topic);
  return abi.subscribe(changetype<usize>(b), b.byteLength);
}
export function publish(topic: string, kind: i32, text: string): i32 {
  const t = utf8(topic);
  const b = utf8(text);
  return abi.publish(changetype<usize>(t), t.byteLength, kind, changetype<usize>(b), b.byteLength);
}
export function timerAfter(delay: i32, kind: i32): i32 {
  return abi.timer_after(delay, kind, 0, 0);
}
export function timerEvery(period: i32, kind: i32): i32 {
  return abi.timer_every(period, kind, 0, 0);
}
// -- tensors and GPU jobs (handles are i32; errors are the ABI's negative codes) --------------

export function tensorOpen(name: string): i32 {
  const b = utf8(name);
  return abi.tensor_open(changetype<usize>(b), b.byteLength);
}
/** A new zero-filled tensor (dtype one of abi.DTYPE_*), existing from the end of the tick. */
export function tensorCreate(name: string, dtype: i32, shape: Int32Array): i32 {
  const b = utf8(name);
  return abi.tensor_create(changetype<usize>(b), b.byteLength, dtype, shape.length, shape.dataStart);
}
export function tensorReadF32(h: i32, start: i32, dst: Float32Array): i32 {
  return abi.tensor_read(h, start * 4, dst.dataStart, dst.length * 4);
}
export function tensorWriteF32(h: i32, start: i32, src: Float32Array): i32 {
  return abi.tensor_write(h, start * 4, src.dataStart, src.length * 4);
}
/** v2: release a tensor this agent made, at the end of the tick (its name is free again). */
export function tensorRelease(h: i32): i32 {
  return abi.tensor_release(h);
}
/** Queue op(inputs) -> outName (a new tensor); the job id. */
export function gpuSubmit(op: string, inputs: Int32Array, outName: string, param: f32): i32 {
  const o = utf8(op);
  const n = utf8(outName);
  return abi.gpu_submit(
    changetype<usize>(o), o.byteLength, inputs.dataStart, inputs.length,
    changetype<usize>(n), n.byteLength, param,
  );
}
/** v2: queue op(inputs) into the existing tensor out, in place; the job id. */
export function gpuSubmitInto(op: string, inputs: Int32Array, out: i32, param: f32): i32 {
  const o = utf8(op);
  return abi.gpu_submit_into(changetype<usize>(o), o.byteLength, inputs.dataStart, inputs.length, out, param);
}

/** The config value at a dotted path as JSON text, or null. */
export function configGet(path: string): string | null {
  const p = utf8(path);
  let cap = 256;
  while (true) {
    const buf = new ArrayBuffer(cap);
    const n = abi.config_get(changetype<usize>(p), p.byteLength, changetype<usize>(buf), cap);
    if (n < 0) return null;
    if (n <= cap) return String.UTF8.decodeUnsafe(changetype<usize>(buf), n);
    cap = n;
  }
}
export function llmChat(requestJson: string, tag: i32): i32 {
  const b = utf8(requestJson);
  return abi.llm_chat(changetype<usize>(b), b.byteLength, tag);
}
export function toolCall(tool: string, argsJson: string, tag: i32): i32 {
  const t = utf8(tool);
  const b = utf8(argsJson);
  return abi.tool_call(changetype<usize>(t), t.byteLength, changetype<usize>(b), b.byteLength, tag);
}
/** Start an instance of the scenario's group `group` (name "": `group-N`; configJson "": the
 *  group's config) when this message succeeds; the spawn id, or a negative code. The new
 *  agent's id comes as KIND_SPAWNED: read it with spawnedAgent. */
export function spawn(group: string, name: string, configJson: string, tag: i32): i32 {
  const g = utf8(group);
  const n = utf8(name);
  const c = utf8(configJson);
  return abi.spawn(
    changetype<usize>(g), g.byteLength, changetype<usize>(n), n.byteLength,
    changetype<usize>(c), c.byteLength, tag,
  );
}
/** The new agent's id in a KIND_SPAWNED payload (JSON text), or -1 when it was refused. */
export function spawnedAgent(answerJson: string): i32 {
  if (jsonGetInt(answerJson, "status", 1) != 0) return -1;
  return <i32>jsonGetInt(answerJson, "agent", -1);
}
/** End the whole run after this tick with `reason` (needs grants.stop_run); 0 or -9. */
export function stopRun(reason: string): i32 {
  const b = utf8(reason);
  return abi.stop_run(changetype<usize>(b), b.byteLength);
}
/** Inside qh_snapshot: hand the host the agent's state. */
export function snapshotPut(state: Uint8Array): void {
  abi.snapshot_put(state.dataStart, state.length);
}

// -- JSON --------------------------------------------------------------------------------------

/** Builds compact JSON: `new JsonWriter().begin().key("n").int(3).end().toString()`. */
export class JsonWriter {
  private parts: string[] = [];
  private comma: bool = false;
  private sep(): void {
    if (this.comma) this.parts.push(",");
    this.comma = false;
  }
  begin(): JsonWriter { this.sep(); this.parts.push("{"); return this; }
  end(): JsonWriter { this.parts.push("}"); this.comma = true; return this; }
  beginArray(): JsonWriter { this.sep(); this.parts.push("["); return this; }
  endArray(): JsonWriter { this.parts.push("]"); this.comma = true; return this; }
  key(k: string): JsonWriter { this.str(k); this.parts.push(":"); this.comma = false; return this; }
  int(v: i64): JsonWriter { this.sep(); this.parts.push(v.toString()); this.comma = true; return this; }
  raw(json: string): JsonWriter { this.sep(); this.parts.push(json); this.comma = true; return this; }
  str(s: string): JsonWriter {
    this.sep();
    let out = "\"";
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c == 0x22) out += "\\\"";
      else if (c == 0x5c) out += "\\\\";
      else if (c == 0x0a) out += "\\n";
      else if (c < 0x20) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
      else out += String.fromCharCode(c);
    }
    this.parts.push(out + "\"");
    this.comma = true;
    return this;
  }
  toString(): string { return this.parts.join(""); }
}

function skipWs(s: string, i: i32): i32 {
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
    i++;
  }
  return i;
}

/** The end (exclusive) of the JSON string starting at the quote at `i`, or -1. */
function skipString(s: string, i: i32): i32 {
  i++;
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c == 0x5c) i += 2;
    else if (c == 0x22) return i + 1;
    else i++;
  }
  return -1;
}

/** The end (exclusive) of the JSON value starting at `i`, or -1. */
function skipValue(s: string, i: i32): i32 {
  i = skipWs(s, i);
  if (i >= s.length) return -1;
  const c = s.charCodeAt(i);
  if (c == 0x22) return skipString(s, i);
  if (c == 0x7b || c == 0x5b) {
    let depth = 0;
    while (i < s.length) {
      const d = s.charCodeAt(i);
      if (d == 0x22) { i = skipString(s, i); if (i < 0) return -1; continue; }
      if (d == 0x7b || d == 0x5b) depth++;
      if (d == 0x7d || d == 0x5d) { depth--; if (depth == 0) return i + 1; }
      i++;
    }
    return -1;
  }
  while (i < s.length) {
    const d = s.charCodeAt(i);
    if (d == 0x2c || d == 0x7d || d == 0x5d || d == 0x20 || d == 0x0a) break;
    i++;
  }
  return i;
}

/** The raw JSON text of the top-level member `key` of an object, or null. */
export function jsonGet(s: string, key: string): string | null {
  let i = skipWs(s, 0);
  if (i >= s.length || s.charCodeAt(i) != 0x7b) return null;
  i++;
  while (true) {
    i = skipWs(s, i);
    if (i >= s.length || s.charCodeAt(i) != 0x22) return null;
    const kEnd = skipString(s, i);
    if (kEnd < 0) return null;
    const k = s.substring(i + 1, kEnd - 1);
    i = skipWs(s, kEnd);
    if (i >= s.length || s.charCodeAt(i) != 0x3a) return null;
    const vStart = skipWs(s, i + 1);
    const vEnd = skipValue(s, vStart);
    if (vEnd < 0) return null;
    if (k == key) return s.substring(vStart, vEnd);
    i = skipWs(s, vEnd);
    if (i >= s.length || s.charCodeAt(i) != 0x2c) return null;
    i++;
  }
}

/** The integer member `key`, or `otherwise`. */
export function jsonGetInt(s: string, key: string, otherwise: i64): i64 {
  const v = jsonGet(s, key);
  if (v == null) return otherwise;
  const text = <string>v;
  if (text.length == 0) return otherwise;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (!(c >= 0x30 && c <= 0x39) && !(i == 0 && c == 0x2d)) return otherwise;
  }
  return I64.parseInt(text);
}

/** The string member `key` (escapes \" \\ \n \/ decoded), or null. */
export function jsonGetString(s: string, key: string): string | null {
  const v = jsonGet(s, key);
  if (v == null) return null;
  const text = <string>v;
  if (text.length < 2 || text.charCodeAt(0) != 0x22) return null;
  let out = "";
  for (let i = 1; i < text.length - 1; i++) {
    const c = text.charCodeAt(i);
    if (c == 0x5c && i + 1 < text.length - 1) {
      i++;
      const e = text.charCodeAt(i);
      if (e == 0x6e) out += "\n";
      else if (e == 0x74) out += "\t";
      else if (e == 0x75 && i + 4 < text.length) {
        out += String.fromCharCode(<i32>I32.parseInt(text.substring(i + 1, i + 5), 16));
        i += 4;
      } else out += String.fromCharCode(e);
    } else out += String.fromCharCode(c);
  }
  return out;
}
