"""py_worker: a tour worker in Python (ABI v2, sandboxed: CPython for WASI in wasmtime).

A job (kind 10, JSON {"n": i}) gets a reply (kind 11, JSON {"n": i, "steps": s}), s the
Collatz steps of i + 1, sent with ``reply`` to the job's reply-to with its correlation id.
"""

import json

import qhybrid

KIND_JOB, KIND_RESULT = 10, 11


def collatz_steps(n):
    steps = 0
    while n > 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def on_message(msg):
    if msg.kind != KIND_JOB:
        return
    n = msg.json().get("n")
    if not isinstance(n, int) or n < 0:
        raise qhybrid.Fail('py_worker: a job is {"n": a non-negative integer}')
    qhybrid.reply(KIND_RESULT, json.dumps({"n": n, "steps": collatz_steps(n + 1)}))


# No state: an empty snapshot restores it exactly.
def snapshot():
    return b""


def restore(state):
    return None
