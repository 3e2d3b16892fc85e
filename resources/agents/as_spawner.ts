// as_spawner: spawner.c in AssemblyScript (ABI v2 spawn and stop_run). Kind 1 from the runtime
// spawns `helpers` (config, default 3) instances of group "crew"; each SPAWNED answer gets the
// new agent a job (kind 10, {"n": i}); when every spawned agent has answered (kind 11), the
// run ends with stopRun. A refused spawn (over max_spawned) is logged and not waited for.
import {
  Message, configGet, glue, info, jsonGetInt, sendEnv, spawn, spawnedAgent, stopRun, warn,
} from "../../sdk/assemblyscript/assembly/index";
import { KIND_SPAWNED, new_corr } from "../../sdk/assemblyscript/assembly/abi";
export { qh_abi_version, qh_alloc } from "../../sdk/assemblyscript/assembly/index";

const KIND_START = 1;
const KIND_JOB = 10;
const KIND_RESULT = 11;
let helpers: i64 = 3;
let spawned: i32 = 0;
let refused: i32 = 0;
let answered: i32 = 0;

function doneIfAll(): void {
  if (<i64>(spawned + refused) == helpers && answered == spawned) {
    const reason = answered.toString() + " helpers answered, " + refused.toString() + " refused";
    info("stop_run " + stopRun(reason).toString());
  }
}

function onMessage(msg: Message): bool {
  if (msg.kind == KIND_START && msg.fromRuntime()) {
    const n = configGet("helpers");
    if (n != null) helpers = I64.parseInt(<string>n);
    for (let i: i64 = 0; i < helpers; i++) {
      spawn("crew", "", "{\"index\":" + i.toString() + "}", <i32>i);
    }
    return true;
  }
  if (msg.kind == KIND_SPAWNED) {
    const answer = msg.text();
    const agent = spawnedAgent(answer);
    if (agent < 0) {
      refused++;
      warn("spawn refused: " + answer);
      doneIfAll();
      return true;
    }
    spawned++;
    info("spawned agent " + agent.toString());
    const job = "{\"n\":" + jsonGetInt(answer, "tag", 0).toString() + "}";
    return sendEnv(agent, KIND_JOB, new_corr(), -1, job) == 0;
  }
  if (msg.kind == KIND_RESULT) {
    answered++;
    doneIfAll();
  }
  return true;
}

export function qh_on_message(from: i32, kind: i32, ptr: usize, len: usize): i32 {
  return glue(from, kind, ptr, len, onMessage);
}
