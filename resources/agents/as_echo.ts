// as_echo: the AssemblyScript SDK's smallest agent. Sends every message back to its sender
// (same kind and payload) and counts them; logs messages from the runtime. Its count survives
// a worker crash through an agent-defined snapshot (qh_snapshot / qh_restore).
import { Message, glue, info, send, snapshotPut } from "../../sdk/assemblyscript/assembly/index";
export { qh_abi_version, qh_alloc } from "../../sdk/assemblyscript/assembly/index";

let echoed: i64 = 0;

function onMessage(msg: Message): bool {
  if (msg.fromRuntime()) {
    info("as_echo: from the runtime, kind " + msg.kind.toString() + ": " + msg.text());
    return true;
  }
  echoed++;
  return send(msg.from, msg.kind, msg.payload) == 0;
}

export function qh_on_message(from: i32, kind: i32, ptr: usize, len: usize): i32 {
  return glue(from, kind, ptr, len, onMessage);
}

export function qh_snapshot(): i32 {
  const state = new Uint8Array(8);
  store<i64>(state.dataStart, echoed);
  snapshotPut(state);
  return 0;
}

export function qh_restore(ptr: usize, len: usize): i32 {
  if (len != 8) return 1;
  echoed = load<i64>(ptr);
  return 0;
}
