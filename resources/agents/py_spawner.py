"""py_spawner: spawner.c in Python (ABI v2 spawn and stop_run).

kind 1 from the runtime   start: spawn `helpers` (config) instances of group `group`,
                          each with the config {"index": i}
SPAWNED                   the new agent's id: send it a job (kind 10, {"n": i})
kind 11 (a reply)         count it; when every spawned agent has answered, end the run
"""

import qhybrid

KIND_START, KIND_JOB, KIND_RESULT = 1, 10, 11
state = {"spawned": 0, "refused": 0, "answered": 0}


def done_if_all():
    helpers = qhybrid.config("helpers", 3)
    if state["spawned"] + state["refused"] == helpers and state["answered"] == state["spawned"]:
        reason = f"{state['answered']} helpers answered, {state['refused']} refused"
        qhybrid.info(f"stop_run {qhybrid.stop_run(reason)}")


def on_message(msg):
    if msg.kind == KIND_START and msg.from_runtime:
        for i in range(qhybrid.config("helpers", 3)):
            qhybrid.spawn_agent(qhybrid.config("group", "crew"), config={"index": i}, tag=i)
    elif msg.kind == qhybrid.KIND_SPAWNED:
        agent = qhybrid.spawned_agent(msg)
        if agent is None:
            state["refused"] += 1
            qhybrid.warn(f"spawn refused: {msg.json()['error']}")
            done_if_all()
            return
        state["spawned"] += 1
        qhybrid.info(f"spawned {msg.json()['name']} as agent {agent}")
        qhybrid.send_env(agent, KIND_JOB, qhybrid.new_corr(), -1, {"n": msg.json()["tag"]})
    elif msg.kind == KIND_RESULT:
        state["answered"] += 1
        done_if_all()


def snapshot():
    import json

    return json.dumps(state).encode()


def restore(data):
    import json

    state.update(json.loads(data))
