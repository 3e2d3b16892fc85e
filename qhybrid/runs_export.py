"""``qhybrid export``: a recorded run as JSON lines (the trace records) or as a Chrome
trace-event file that https://ui.perfetto.dev opens (see docs/trace-format.md)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhybrid.runtime.store import RunStore


def record_json(line: str) -> str:
    """A stored record (its ``repr``) as the JSON array ``--trace`` writes: bytes as hex."""
    rec = ast.literal_eval(line)
    return json.dumps(
        [f.hex() if isinstance(f, bytes) else f for f in rec],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def write_jsonl(store: RunStore, run_id: str, path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for _, _, line in store.records(run_id):
            out.write(record_json(line) + "\n")
            n += 1
    return n


def write_perfetto(store: RunStore, run_id: str, path: Path) -> int:
    """Ticks on the orchestrator's track, each worker's batch on its own track, GPU and CPU
    jobs on theirs, LLM steps on the LLM's; times in microseconds from the run's start."""
    run = store.run(run_id)
    ticks = store.ticks(run_id)
    jobs = store.jobs(run_id)
    events: list[dict[str, Any]] = []
    pid = 1

    def track(tid: int, name: str) -> None:
        events.append(
            {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )

    events.append(
        {
            "ph": "M",
            "pid": pid,
            "name": "process_name",
            "args": {"name": f"qhybrid run {run_id} ({run['scenario_name']})"},
        }
    )
    track(1, "orchestrator (ticks)")
    track(2, "gpu device")
    track(3, "llm")
    workers = 0
    start_of: dict[int, float] = {}
    prev_busy: list[float] = []
    for t in ticks:
        ts, dur = t["t_s"] * 1e6, t["dur_s"] * 1e6
        start_of[t["tick"]] = ts
        events.append(
            {
                "ph": "X",
                "pid": pid,
                "tid": 1,
                "ts": ts,
                "dur": dur,
                "name": f"tick {t['tick']}",
                "args": {"delivered": t["delivered"]},
            }
        )
        busy = t["busy"]
        for w, total in enumerate(busy):
            spent = total - (prev_busy[w] if w < len(prev_busy) else 0.0)
            if spent > 0:
                events.append(
                    {
                        "ph": "X",
                        "pid": pid,
                        "tid": 10 + w,
                        "ts": ts,
                        "dur": min(spent * 1e6, dur),
                        "name": f"batch (tick {t['tick']})",
                    }
                )
        workers = max(workers, len(busy))
        prev_busy = busy
        if t["llm_s"] > 0:
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": 3,
                    "ts": ts,
                    "dur": t["llm_s"] * 1e6,
                    "name": f"llm step (tick {t['tick']})",
                }
            )
    for w in range(workers):
        track(10 + w, f"worker {w}")
    for j in jobs:
        ts = start_of.get(j["tick"], 0.0)
        tid = 2 if j["kind"] == "gpu" else 4
        events.append(
            {
                "ph": "X",
                "pid": pid,
                "tid": tid,
                "ts": ts,
                "dur": j["elapsed_s"] * 1e6,
                "name": f"{j['name']} ({j['op']})",
                "args": {"placement": j["placement"], "error": j["error"], "digest": j["digest"]},
            }
        )
    track(4, "cpu jobs")
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}), "utf-8")
    return len(events)
