// as_worker: a tour worker in AssemblyScript (request/reply with envelopes). A job (kind 10,
// JSON {"n": i}) gets a reply (kind 11, JSON {"n": i, "steps": s}), s the Collatz steps of
// i + 1. Stateless, so its snapshot is empty.
import { Message, JsonWriter, fail, glue, jsonGetInt, reply, snapshotPut } from "../../sdk/assemblyscript/assembly/index";
export { qh_abi_version, qh_alloc } from "../../sdk/assemblyscript/assembly/index";

const KIND_JOB = 10;
const KIND_RESULT = 11;

function collatzSteps(n: u64): i64 {
  let steps: i64 = 0;
  while (n > 1) {
    n = n % 2 == 0 ? n / 2 : 3 * n + 1;
    steps++;
  }
  return steps;
}

function onMessage(msg: Message): bool {
  if (msg.kind != KIND_JOB) return true;
  const n = jsonGetInt(msg.text(), "n", -1);
  if (n < 0) return fail("as_worker: a job is {\"n\": a non-negative integer}");
  const out = new JsonWriter().begin().key("n").int(n).key("steps").int(collatzSteps(<u64>n + 1)).end();
  return reply(KIND_RESULT, out.toString()) == 0;
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
