"""py_manager: the tour's manager in Python (ABI v2; docs/tour.md), the same as manager.c.

    kind 1 from the runtime   start: one job (kind 10, {"n": i}) per instance of the groups
                              in config `groups`, each with its own correlation id; a
                              progress timer (kind 12, every 2 ticks)
    kind 11 (a reply)         a result {"n", "steps"}, matched to its job by correlation id;
                              when all are in: the timer is cancelled, the tool `sum` called
    TOOL_DONE                 logs the total, asks the LLM for a verdict as JSON (a JSON
                              Schema), publishes {"total"} on topic "done" (kind 13)
    LLM_CHAT_DONE             logs the answer
"""

import json

import qhybrid

KIND_START, KIND_JOB, KIND_RESULT, KIND_TICK, KIND_DONE = 1, 10, 11, 12, 13
VERDICT = {
    "type": "object",
    "properties": {"verdict": {"enum": ["small", "large"]}},
    "required": ["verdict"],
}

jobs = {}  # correlation id -> steps (None until the reply comes)
timer = -1


def start():
    global timer
    for group in qhybrid.config("groups", ["crew"]):
        for i in range(qhybrid.group_size(group)):
            corr = qhybrid.new_corr()
            jobs[corr] = None
            job = json.dumps({"n": len(jobs) - 1})
            qhybrid.send_env(qhybrid.group_member(group, i), KIND_JOB, corr, -1, job)
    qhybrid.info(f"manager: sent {len(jobs)} jobs")
    timer = qhybrid.timer_every(2, KIND_TICK, b"")


def result(msg):
    corr = msg.corr
    if jobs.get(corr, 0) is not None:
        raise qhybrid.Fail("manager: a result for no job of mine")
    jobs[corr] = msg.json()["steps"]
    if all(steps is not None for steps in jobs.values()):
        qhybrid.timer_cancel(timer)
        qhybrid.tool_call("sum", json.dumps({"values": list(jobs.values())}), 0)


def tool_done(msg):
    answer = msg.json()
    if answer["status"] != 0:
        raise qhybrid.Fail(f"manager: the tool failed: {answer['error']}")
    total = answer["result"]
    qhybrid.info(f"manager: all {len(jobs)} results in, total {total}")
    question = f"Is {total} a small or a large total?"
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": question},
    ]
    qhybrid.chat(messages, 1, max_tokens=24, temperature=0, json_schema=VERDICT)
    qhybrid.publish("done", KIND_DONE, json.dumps({"total": total}, separators=(",", ":")))


def on_message(msg):
    if msg.kind == KIND_START and msg.from_runtime:
        start()
    elif msg.kind == KIND_RESULT:
        result(msg)
    elif msg.kind == KIND_TICK:
        done = sum(steps is not None for steps in jobs.values())
        qhybrid.info(f"manager: {done} of {len(jobs)} results in")
    elif msg.kind == qhybrid.KIND_TOOL_DONE:
        tool_done(msg)
    elif msg.kind == qhybrid.KIND_LLM_CHAT_DONE:
        answer = msg.json()
        if answer["status"] == 0:
            qhybrid.info(f"manager: the LLM says {answer['text']}")
        else:
            qhybrid.warn(f"manager: llm: {answer['error']}")


# The state is the jobs table and the timer id: small, so the agent defines its snapshot.
def snapshot():
    return json.dumps({"jobs": [[c, s] for c, s in jobs.items()], "timer": timer}).encode()


def restore(state):
    global timer
    data = json.loads(state)
    jobs.clear()
    jobs.update((c, s) for c, s in data["jobs"])
    timer = data["timer"]
