"""``qhybrid fork`` and ``qhybrid diff`` (see :mod:`qhybrid.runs_cli` for the others)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qhybrid import __version__
from qhybrid._argparse import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from qhybrid.runs_cli import (
    BadInput,
    _emit,
    _err,
    _execute,
    _llm_window,
    _module_overrides,
    _open,
    _resolve,
    _restore_point,
    _run_recorded,
    _runtime_config,
    _scenario_of,
    start_recording,
)

if TYPE_CHECKING:
    from qhybrid.runtime import Scenario


# -- qhybrid fork ----------------------------------------------------------------------------------
class _Captured(Exception):
    pass


def _set_overrides(scenario: Scenario, specs: list[str]) -> Scenario:
    import tomllib
    from types import MappingProxyType

    agents = list(scenario.agents)
    for spec in specs:
        key, sep, raw = spec.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 3 or parts[1] != "config":
            raise BadInput(f"--set {spec!r}: expected GROUP.config.KEY=VALUE")
        group, name = parts[0], ".".join(parts[2:])
        index = next((i for i, a in enumerate(agents) if a.name == group), None)
        if index is None:
            raise BadInput(f"--set {spec!r}: no agent group {group!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: a string
        config = dict(agents[index].config)
        config[name] = value
        agents[index] = dataclasses.replace(agents[index], config=MappingProxyType(config))
    return dataclasses.replace(scenario, agents=tuple(agents))


def cmd_fork(args: argparse.Namespace) -> int:
    from qhybrid.runtime import LlmSpec
    from qhybrid.runtime.store import (
        DurableRuntime,
        RestorePoint,
        StoreError,
        capture,
        checkpointable,
        fork_seed,
    )

    if args.at < 0:
        raise BadInput(f"--at must be >= 0, got {args.at}")
    with _open(args, must_exist=True) as store:
        parent_id = _resolve(store, args.run)
        parent = store.run(parent_id)
        base = _scenario_of(parent)
        config = _runtime_config(parent, args)
        cp = store.checkpoint(parent_id, at_or_before=args.at)
        restore = _restore_point(store, parent_id, cp) if cp is not None else None
        effects = store.effects(parent_id)
    err = _err()
    # 1. The parent's history up to --at, re-executed from its checkpoint at or before it,
    #    held in memory at the first tick from --at on where a checkpoint can be taken.
    holder: dict[str, Any] = {}

    class _Until(DurableRuntime):
        async def step(self) -> bool:
            going = await super().step()
            if going and self.tick >= args.at and checkpointable(self):
                holder["saved"] = await capture(self)
                raise _Captured
            return going

    lines: list[str] = list(restore.lines) if restore else []
    phase1 = _Until(base, config, restore=restore, effects=effects)
    phase1._trace.sink = lambda _records, new: lines.extend(new)
    try:
        result = _execute(phase1, err, {})
    except _Captured:
        result = None
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if result is not None:
        raise BadInput(
            f"run {parent_id} ends ({result.reason}) before tick {args.at} could be forked"
        )
    saved = holder["saved"]
    # 2. The changes, and the fork itself, live from that tick.
    scenario = _set_overrides(_module_overrides(base, args.module), args.set)
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    if args.model is not None:
        if base.llm is None:
            raise BadInput("--model: the scenario has no [llm]")
        model = Path(args.model).resolve()
        if not model.is_file():
            raise BadInput(f"--model: no such file {model}")
        llm: LlmSpec = dataclasses.replace(base.llm, model=model)
        scenario = dataclasses.replace(scenario, llm=llm)
    reseed = (
        {name: fork_seed(args.seed, name, saved.tick) for name in scenario.agent_names}
        if args.seed is not None
        else None
    )
    changed = {spec.partition(".")[0] for spec in args.set}
    fresh = frozenset(
        name for group in scenario.agents if group.name in changed for name in group.instances
    )
    with _open(args, readonly=True) as store:
        llm_window = _llm_window(store, parent_id, saved.tick)
    point = RestorePoint(
        saved.state, saved.blobs, lines[: saved.records], reseed, fresh, llm_window
    )
    try:
        recording = start_recording(
            args,
            Path(parent["scenario_path"]),
            scenario,
            config,
            kind="fork",
            parent=parent_id,
            fork_tick=saved.tick,
            base_records=saved.records,
            start_tick=saved.tick,
        )
    except BadInput:
        raise
    assert recording is not None
    # The fork's trace before the fork tick is its parent's: copy those records.
    try:
        with _open(args) as store:
            store.copy_records(recording.run_id, lines[: saved.records], saved.tick)
            with _open(args, readonly=True) as parent_store:
                before = parent_store.effects(parent_id, to_tick=saved.tick)
            if before:
                store.copy_effects(recording.run_id, before, saved.tick)
    except StoreError as exc:
        raise BadInput(str(exc)) from None
    err.print(
        f"qhybrid {__version__}: fork [bold]{recording.run_id}[/] of {parent_id} at tick "
        f"{saved.tick}"
        + (
            f" (asked {args.at}: the first tick the run reached from there)"
            if saved.tick != args.at
            else ""
        )
    )
    return _run_recorded(
        args,
        recording,
        scenario,
        config,
        point,
        err,
        {"parent": parent_id, "fork_tick": saved.tick},
        checkpoint_at_start=True,
    )


# -- qhybrid diff ----------------------------------------------------------------------------------
def _agents_of(run: dict[str, Any]) -> list[str]:
    summary = run.get("summary") or {}
    return [a["name"] for a in summary.get("agents", [])]


def cmd_diff(args: argparse.Namespace) -> int:
    import ast
    import itertools

    with _open(args, readonly=True) as store:
        a_id, b_id = _resolve(store, args.run_a), _resolve(store, args.run_b)
        a_run, b_run = store.run(a_id), store.run(b_id)
        a = list(store.records(a_id))
        b = list(store.records(b_id))
    first = next(
        (
            i
            for i, (x, y) in enumerate(itertools.zip_longest(a, b))
            if x is None or y is None or x[2] != y[2]
        ),
        None,
    )
    names = _agents_of(a_run) or _agents_of(b_run)

    def per_agent(records: list[tuple[int, int, str]]) -> dict[int, list[tuple[int, str]]]:
        out: dict[int, list[tuple[int, str]]] = {}
        for _, tick, line in records:
            if line.startswith(("('ok'", "('fail'", "('drop'")):
                rec = ast.literal_eval(line)
                out.setdefault(int(rec[4]), []).append((tick, line))
        return out

    agents: dict[str, int] = {}
    if first is not None:
        pa, pb = per_agent(a), per_agent(b)
        for agent_id in sorted(set(pa) | set(pb)):
            xa, xb = pa.get(agent_id, []), pb.get(agent_id, [])
            for x, y in itertools.zip_longest(xa, xb):
                if x is None or y is None or x != y:
                    tick = (x or y)[0] if (x or y) else -1
                    if x and y:
                        tick = min(x[0], y[0])
                    name = names[agent_id] if agent_id < len(names) else str(agent_id)
                    agents[name] = tick
                    break
    context = max(0, args.context)
    around: dict[str, list[str]] = {}
    payload: dict[str, Any] = {"run_a": a_id, "run_b": b_id, "identical": first is None}
    if first is not None:
        lo = max(0, first - context)
        around = {
            "a": [r[2] for r in a[lo : first + context + 1]],
            "b": [r[2] for r in b[lo : first + context + 1]],
        }
        ref = a[first] if first < len(a) else b[first]
        payload.update(
            first_record=first,
            first_tick=ref[1],
            a=a[first][2] if first < len(a) else None,
            b=b[first][2] if first < len(b) else None,
            context=around,
            agents=agents,
        )
    if args.json:
        _emit(args, payload)
    else:
        from rich.markup import escape

        err = _err()
        if first is None:
            err.print(f"[green]identical[/]: {len(a)} records")
        else:
            err.print(f"runs differ from tick {payload['first_tick']}, record {first}:")
            lo = max(0, first - context)
            for i in range(lo, first + context + 1):
                x = a[i][2] if i < len(a) else "(end)"
                y = b[i][2] if i < len(b) else "(end)"
                if x == y:
                    err.print(f"    {escape(x)}", soft_wrap=True)
                else:
                    err.print(f"  [red]- {escape(x)}[/]", soft_wrap=True)
                    err.print(f"  [green]+ {escape(y)}[/]", soft_wrap=True)
            if agents:
                err.print("agents whose messages differ, from tick:")
                for name, tick in sorted(agents.items(), key=lambda kv: (kv[1], kv[0])):
                    err.print(f"  {escape(name)}: {tick}")
    return EXIT_OK if first is None else EXIT_FAILED
