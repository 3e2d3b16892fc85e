"""The run store on the command line.

``qhybrid --headless`` records every run into the store (``--store PATH``, ``QHYBRID_STORE``,
or ``runs.sqlite`` in the user's data folder; ``--no-store`` turns it off). Then:

```
qhybrid runs [--json]                         the store's runs
qhybrid runs delete RUN [RUN ...] [--json]    delete runs (and what only they used)
qhybrid show RUN [--json]                     one run's summary
qhybrid resume RUN [--json]                   go on from the last checkpoint
qhybrid replay RUN [--to TICK] [--module GROUP=PATH] [--json]
qhybrid fork RUN --at TICK [--seed S] [--set GROUP.config.KEY=VALUE] [--module GROUP=PATH]
             [--model PATH] [--json]
qhybrid diff RUN_A RUN_B [--json]
qhybrid export RUN (--perfetto FILE | --jsonl FILE)
```

RUN is a run id, a unique prefix of one, or ``last``. Exit codes: 0 done (replay: identical),
1 the run failed (replay: diverged; diff: the runs differ), 2 bad input (the store, a flag, a
run id), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qhybrid import __version__
from qhybrid._argparse import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    positive_int,
)

if TYPE_CHECKING:
    from qhybrid.runtime import RunResult, Runtime, RuntimeConfig, Scenario
    from qhybrid.runtime.store import RestorePoint, RunRecorder, RunStore

COMMANDS = ("runs", "show", "resume", "replay", "fork", "diff", "export")
DEFAULT_CHECKPOINT_EVERY = 100


class BadInput(Exception):
    """A message for the user; exit code 2."""


def _err() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _say_error(message: str) -> None:
    from rich.markup import escape

    _err().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


# -- the options the headless run and these commands share ----------------------------------------
def add_store_arguments(parser: argparse.ArgumentParser, *, run: bool) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        metavar="PATH",
        default=None,
        help="the run store (default: QHYBRID_STORE, or runs.sqlite in the user's data folder)",
    )
    if run:
        parser.add_argument(
            "--no-store", action="store_true", help="do not record this run in the run store"
        )
        parser.add_argument(
            "--checkpoint-every",
            type=int,
            default=None,
            metavar="N",
            help=f"ticks between checkpoints in the store (default {DEFAULT_CHECKPOINT_EVERY}; "
            "0: none)",
        )


def store_path(args: argparse.Namespace) -> Path:
    from qhybrid.runtime.store import default_store_path

    path: Path | None = getattr(args, "store", None)
    return path if path is not None else default_store_path()


def _open(
    args: argparse.Namespace, *, readonly: bool = False, must_exist: bool = False
) -> RunStore:
    from qhybrid.runtime.store import RunStore, StoreError

    if must_exist and not store_path(args).exists():
        raise BadInput(f"run store {store_path(args)}: no such file (no run was recorded there)")
    try:
        return RunStore(store_path(args), readonly=readonly)
    except StoreError as exc:
        raise BadInput(str(exc)) from None


def _resolve(store: RunStore, ref: str) -> str:
    from qhybrid.runtime.store import StoreError

    try:
        return store.resolve(ref)
    except StoreError as exc:
        raise BadInput(str(exc)) from None


# -- recording a run -------------------------------------------------------------------------------
class Recording:
    """One run being recorded: its id, its recorder, and how to close it."""

    def __init__(self, path: Path, run_id: str, recorder: RunRecorder) -> None:
        self.path = path
        self.run_id = run_id
        self.recorder = recorder
        self.namespace = ""
        self._runtime: Runtime | None = None

    def runtime(
        self,
        scenario: Scenario,
        config: RuntimeConfig,
        restore: RestorePoint | None = None,
        **kwargs: Any,
    ) -> Runtime:
        """The runtime that records; with a persistent memory namespace, its agents start
        from what the namespace holds (a restore brings its own)."""
        from qhybrid.runtime.store import DurableRuntime, RunStore, StoreError

        runtime = DurableRuntime(
            scenario, config, recorder=self.recorder, restore=restore, **kwargs
        )
        self.namespace = scenario.memory.namespace
        if self.namespace and restore is None:
            try:
                with RunStore(self.path) as store:
                    runtime.memory.initial = store.load_memory(self.namespace)
            except StoreError as exc:
                raise BadInput(str(exc)) from None
        self._runtime = runtime
        return runtime

    def finish(self, runtime: Runtime | None, result: RunResult | None, status: str = "") -> None:
        """Record the end (and a persistent namespace's memory, when the run got to its end);
        a store that failed during the run is reported, not fatal."""
        if result is not None:
            summary = result.to_json()
            summary["run_id"] = self.run_id
            rt = self._runtime
            memory = (self.namespace, rt.memory.everyone()) if rt and self.namespace else None
            error = self.recorder.finish(
                runtime,
                result.status,
                result.reason,
                trace_hash=result.trace_hash,
                summary=summary,
                memory=memory,
            )
        else:
            error = self.recorder.finish(runtime, status or "interrupted", None)
        if error:
            _err().print(
                f"[yellow]warning:[/] the run store stopped recording this run: {error}; "
                "the run itself went on (its summary above is complete)",
                soft_wrap=True,
            )


def _config_json(config: RuntimeConfig, checkpoint_every: int) -> dict[str, Any]:
    return {
        "workers": config.workers,
        "device": config.device,
        "max_worker_restarts": config.max_worker_restarts,
        "checkpoint_every": checkpoint_every,
        # Where the workers ran (issue 17): a resume or replay runs there again.
        "backend": config.backend,
        "ray_address": config.ray_address,
    }


def start_recording(
    args: argparse.Namespace,
    scenario_path: Path,
    scenario: Scenario,
    config: RuntimeConfig,
    *,
    kind: str = "run",
    parent: str | None = None,
    fork_tick: int | None = None,
    base_records: int = 0,
    start_tick: int = 0,
) -> Recording | None:
    """Create the run in the store (``None`` with ``--no-store``). Raises :class:`BadInput`
    for a store that cannot be used, before anything runs."""
    from qhybrid.runtime.store import RunRecorder

    if getattr(args, "no_store", False):
        return None
    every = _checkpoint_every(args, scenario)
    try:
        text = scenario_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read {scenario_path}: {exc}") from None
    path = store_path(args)
    store = _open(args)
    try:
        from qhybrid.runtime.store import StoreError

        try:
            run_id = store.new_run(
                scenario_name=scenario.name,
                scenario_path=str(scenario_path.resolve()),
                scenario_text=text,
                seed=scenario.seed,
                config=_config_json(config, every),
                version=__version__,
                kind=kind,
                parent=parent,
                fork_tick=fork_tick,
            )
        except StoreError as exc:
            raise BadInput(str(exc)) from None
    finally:
        store.close()
    recorder = RunRecorder(
        path, run_id, checkpoint_every=every, base_records=base_records, start_tick=start_tick
    )
    return Recording(path, run_id, recorder)


def _checkpoint_every(args: argparse.Namespace, scenario: Scenario | None = None) -> int:
    """--checkpoint-every, else the scenario's ``checkpoint_every``, else the default."""
    every = getattr(args, "checkpoint_every", None)
    if every is None:
        every = scenario.checkpoint_every if scenario and scenario.checkpoint_every else None
    if every is None:
        every = DEFAULT_CHECKPOINT_EVERY
    if every < 0:
        raise BadInput(f"--checkpoint-every must be >= 0, got {every}")
    return int(every)


# -- running a runtime with progress and summary ---------------------------------------------------
def _execute(runtime: Runtime, err: Any, holder: dict[str, Any]) -> RunResult:
    from qhybrid.cli import _Progress

    holder["runtime"] = runtime
    progress = _Progress(err, runtime)
    runtime.events.tick_finished.connect(progress.on_tick)
    runtime.events.llm_tokens.connect(progress.on_llm)

    async def go() -> RunResult:
        async with runtime:
            return await runtime.run()

    return asyncio.run(go())


def _scenario_of(run: dict[str, Any], *, require_model: bool = True) -> Scenario:
    from qhybrid.runtime import ScenarioError, parse_scenario

    source = Path(run["scenario_path"])
    try:
        return parse_scenario(
            run["scenario_text"],
            source=source,
            base_dir=source.parent,
            require_model=require_model,
        ).with_seed(int(run["seed"]))
    except ScenarioError as exc:
        raise BadInput(f"the recorded scenario of run {run['run_id']}: {exc}") from None


def _runtime_config(run: dict[str, Any], args: argparse.Namespace) -> RuntimeConfig:
    from qhybrid.runtime import RuntimeConfig

    cfg = run["config"]
    workers = getattr(args, "workers", None) or int(cfg.get("workers", 2))
    if cfg.get("backend") == "ray":
        from qhybrid.runtime.wasm_pool import RayNotInstalled, import_ray

        try:
            import_ray()
        except RayNotInstalled as exc:
            raise BadInput(f"run {run['run_id']} ran with --backend ray: {exc}") from None
    return RuntimeConfig(
        workers=workers,
        device=getattr(args, "device", None) or cfg.get("device", "auto"),
        max_worker_restarts=int(cfg.get("max_worker_restarts", 3)),
        backend=str(cfg.get("backend", "local")),  # runs recorded before issue 17: local
        ray_address=cfg.get("ray_address"),
    )


def _llm_window(store: RunStore, run_id: str, at: int) -> Any:
    from qhybrid.runtime.store._llm_state import history, window

    return window(history(store.llm_requests(run_id), store.llm_updates(run_id)), at)


def _restore_point(store: RunStore, run_id: str, cp: Any) -> RestorePoint:
    from qhybrid.runtime.store import CheckpointUnavailable, RestorePoint, StoreError
    from qhybrid.runtime.store._checkpoint import check_restorable, load_state

    where = f"run {run_id}'s checkpoint at tick {cp.tick} in {store.path}"
    try:
        state = load_state(cp.state)
        keys = [a[4] for a in state["agents"] if a[4]] + [t[3] for t in state["tensors"]]
        blobs = store.blobs(keys)
        check_restorable(state, blobs)
    except (CheckpointUnavailable, StoreError) as exc:
        raise BadInput(f"{where}: {exc}") from None
    except (KeyError, IndexError, TypeError) as exc:
        raise BadInput(f"{where}: it is corrupt ({type(exc).__name__}: {exc})") from None
    lines = [line for n, _, line in store.records(run_id) if n < cp.records]
    llm = _llm_window(store, run_id, cp.tick) if state.get("llm_requests") else None
    return RestorePoint(cp.state, blobs, lines, llm=llm)


def _emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()


# -- qhybrid runs / show ---------------------------------------------------------------------------
def cmd_delete(args: argparse.Namespace) -> int:
    from qhybrid.runtime.store import StoreError

    if not args.targets:
        raise BadInput("runs delete: name the runs to delete (RUN ...; see `qhybrid runs`)")
    deleted = []
    with _open(args, must_exist=True) as store:
        ids = [_resolve(store, ref) for ref in args.targets]  # all resolved before any goes
        for run_id in dict.fromkeys(ids):
            try:
                done = store.delete_run(run_id)
            except StoreError as exc:
                raise BadInput(str(exc)) from None
            deleted.append({"run_id": run_id, **done})
            forks = done["forks"]
            _err().print(
                f"deleted run {run_id}: {done['records']} trace rows, "
                f"{done['checkpoints']} checkpoints, {done['blobs']} stored blobs freed"
                + (f"; its forks {', '.join(forks)} keep their own copy" if forks else "")
            )
    _emit(args, {"store": str(store_path(args)), "deleted": deleted})
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "delete":
        return cmd_delete(args)
    if getattr(args, "targets", None):
        raise BadInput(f"runs: unexpected {args.targets[0]!r} (to delete: `runs delete RUN`)")
    runs = []
    if store_path(args).exists():
        with _open(args, readonly=True) as store:
            runs = store.runs()
    if args.json:
        _emit(args, {"store": str(store_path(args)), "runs": runs})
        return EXIT_OK
    from rich.table import Table

    err = _err()
    if not runs:
        err.print(f"no runs in {store_path(args)}")
        return EXIT_OK
    table = Table(show_edge=False, pad_edge=False)
    for col in (
        "run_id",
        "kind",
        "scenario",
        "seed",
        "status",
        "ticks",
        "records",
        "parent",
        "trace",
    ):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r["run_id"],
            r["kind"],
            r["scenario_name"],
            str(r["seed"]),
            r["status"],
            str(r["last_tick"]),
            str(r["records"]),
            (r["parent"] or "") + (f"@{r['fork_tick']}" if r["fork_tick"] is not None else ""),
            (r["trace_hash"] or "")[:16],
        )
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=240)
    out.print(table)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        run_id = _resolve(store, args.run)
        run = store.run(run_id)
        run["checkpoint_ticks"] = store.checkpoint_ticks(run_id)
    run.pop("scenario_text")
    if args.json:
        _emit(args, run)
        return EXIT_OK
    err = _err()
    from rich.markup import escape

    lines = [
        f"run {run_id}  ({run['kind']}, qhybrid {run['version']})",
        f"  scenario  {run['scenario_name']}  {run['scenario_path']}  "
        f"(sha256 {run['scenario_digest'][:16]})",
        f"  seed      {run['seed']}   config {json.dumps(run['config'], sort_keys=True)}",
        f"  status    {run['status']}" + (f": {run['reason']}" if run["reason"] else ""),
        f"  started   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run['created']))}"
        + (f"   took {run['finished'] - run['created']:.2f} s" if run["finished"] else ""),
        f"  recorded  tick {run['last_tick']}, {run['records']} trace records, "
        f"{run['logs']} log lines, {run['llm_requests']} LLM requests, {run['jobs']} jobs",
        f"  checkpoints {len(run['checkpoint_ticks'])}"
        + (f" (last at tick {run['last_checkpoint']})" if run["checkpoint_ticks"] else ""),
    ]
    if run["parent"]:
        gone = " (deleted since)" if run.get("parent_deleted") else ""
        lines.append(f"  forked from {run['parent']}{gone} at tick {run['fork_tick']}")
    if run["children"]:
        lines.append(f"  forks     {', '.join(run['children'])}")
    summary = run.get("summary") or {}
    if summary:
        lines.append(
            f"  summary   {summary.get('messages_delivered')} messages, "
            f"{summary.get('tasks_completed')} tasks, {summary.get('ticks')} ticks, "
            f"{summary.get('wall_s')} s"
        )
    if run["trace_hash"]:
        lines.append(f"  trace     {run['trace_hash']}")
    for line in lines:
        err.print(escape(line), soft_wrap=True)
    return EXIT_OK


# -- qhybrid resume --------------------------------------------------------------------------------
def _owner_here(run: dict[str, Any]) -> bool:
    """Whether a ``running`` run's process is known to run on this host (and so is alive:
    the store reads a dead one as interrupted). A run from an older store, or from another
    host, has no owner this process can check: resuming it is the user's call."""
    import socket

    return run.get("owner_pid") is not None and run.get("owner_host") == socket.gethostname()


def cmd_resume(args: argparse.Namespace) -> int:
    from qhybrid.runtime.store import RunRecorder

    with _open(args, must_exist=True) as store:
        run_id = _resolve(store, args.run)
        run = store.run(run_id)
        if run["status"] == "running" and _owner_here(run):
            where = f"pid {run['owner_pid']} on {run['owner_host']}"
            raise BadInput(
                f"run {run_id} is still running ({where}); stop that process first "
                "(a run whose process is gone reads as interrupted)"
            )
        if run["status"] != "interrupted":
            raise BadInput(f"run {run_id} is {run['status']}: there is nothing to resume")
        scenario = _scenario_of(run)
        config = _runtime_config(run, args)
        cp = store.checkpoint(run_id)
        restore = _restore_point(store, run_id, cp) if cp is not None else None
        tick, records = (cp.tick, cp.records) if cp is not None else (0, 0)
        store.truncate_after(run_id, tick if cp is not None else -1, records)
    every = int(run["config"].get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY))
    err = _err()
    err.print(
        f"qhybrid {__version__}: resuming interrupted run [bold]{run_id}[/] ({scenario.name}"
        + (f"; {run['reason']}" if run["reason"] else "")
        + ") "
        + (
            f"from its checkpoint at tick {tick}"
            if cp is not None
            else "from the start (it has no checkpoint)"
        )
    )
    recorder = RunRecorder(
        store_path(args), run_id, checkpoint_every=every, base_records=records, start_tick=tick
    )
    recording = Recording(store_path(args), run_id, recorder)
    return _run_recorded(args, recording, scenario, config, restore, err, {"resumed_from": tick})


def _run_recorded(
    args: argparse.Namespace,
    recording: Recording,
    scenario: Scenario,
    config: RuntimeConfig,
    restore: RestorePoint | None,
    err: Any,
    extra: dict[str, Any],
    **kwargs: Any,
) -> int:
    from qhybrid.cli import _print_summary

    holder: dict[str, Any] = {}
    runtime = recording.runtime(scenario, config, restore, **kwargs)
    try:
        result = _execute(runtime, err, holder)
    except KeyboardInterrupt:
        recording.finish(runtime, None, "interrupted")
        err.print(
            f"[yellow]interrupted[/] at tick {runtime.tick}; `qhybrid resume "
            f"{recording.run_id}` goes on from its last checkpoint"
        )
        return EXIT_INTERRUPTED
    except BaseException:
        recording.finish(runtime, None, "failed")
        raise
    recording.finish(runtime, result)
    _print_summary(err, result)
    err.print(f"run {recording.run_id} recorded in {recording.path}")
    payload = result.to_json()
    payload.update(extra)
    payload["run_id"] = recording.run_id
    _emit(args, payload)
    return EXIT_OK if result.ok else EXIT_FAILED


def _job_results(
    store: RunStore, run_id: str, kind: str
) -> dict[tuple[int, str], tuple[bytes, str]]:
    """(tick, task) -> (output bytes, placement) of every job of ``kind`` the run kept."""
    jobs = [
        j
        for j in store.jobs(run_id)
        if j["kind"] == kind and j["error"] is None and j["digest"] and len(j["digest"]) == 64
    ]
    from qhybrid.runtime.store import StoreError

    try:
        blobs = store.blobs(j["digest"] for j in jobs)
    except StoreError:
        return {}  # an older recording without the contents: the jobs run again
    return {(j["tick"], j["name"]): (blobs[j["digest"]], j["placement"]) for j in jobs}


def _gpu_results(store: RunStore, run_id: str) -> dict[tuple[int, str], tuple[bytes, str]]:
    """(tick, task) -> (output bytes, placement) of every GPU job the run kept."""
    return _job_results(store, run_id, "gpu")


def _cpu_results(store: RunStore, run_id: str) -> dict[tuple[int, str], bytes]:
    """(tick, task) -> output bytes of every CPU task the run kept (runs recorded before
    CPU outputs were kept have none: their tasks run again in the workers)."""
    return {key: data for key, (data, _) in _job_results(store, run_id, "cpu").items()}


# -- qhybrid replay --------------------------------------------------------------------------------
def _module_overrides(scenario: Scenario, specs: list[str]) -> Scenario:
    agents = list(scenario.agents)
    for spec in specs:
        group, sep, path = spec.partition("=")
        if not sep or not group or not path:
            raise BadInput(f"--module {spec!r}: expected GROUP=PATH")
        index = next((i for i, a in enumerate(agents) if a.name == group), None)
        if index is None:
            names = ", ".join(a.name for a in agents)
            raise BadInput(f"--module {spec!r}: no agent group {group!r} (groups: {names})")
        module = Path(path).resolve()
        if not module.is_file():
            raise BadInput(f"--module {spec!r}: no such file {module}")
        agents[index] = dataclasses.replace(agents[index], module=module)
    return dataclasses.replace(scenario, agents=tuple(agents))


def cmd_replay(args: argparse.Namespace) -> int:
    from qhybrid.runtime.store import (
        ReplayRuntime,
        StoreError,
        TraceCheck,
        recorded_llm,
        replay_start,
    )

    with _open(args, readonly=True) as store:
        run_id = _resolve(store, args.run)
        run = store.run(run_id)
        scenario = _module_overrides(_scenario_of(run, require_model=False), args.module)
        config = _runtime_config(run, args)
        head = [line for _, _, line in store.records(run_id, to_tick=0)]
        updates = store.llm_updates(run_id)
        gpu_results = _gpu_results(store, run_id)
        cpu_results = _cpu_results(store, run_id)
        effects = store.effects(run_id)
        recorded = list(store.records(run_id))
        try:
            # A fork starts from its own checkpoint at its fork tick: before it, its records
            # are its parent's, made with the parent's seed (replay the parent for those).
            restore, fork_tick = replay_start(store, run_id)
        except StoreError as exc:
            raise BadInput(str(exc)) from None
    if not recorded:
        raise BadInput(f"run {run_id} has no recorded trace to replay")
    base = len(restore.lines) if restore is not None else 0
    if args.to is not None and fork_tick is not None and args.to < fork_tick:
        raise BadInput(
            f"--to {args.to}: run {run_id} is a fork at tick {fork_tick}; before it, its "
            f"records are its parent's (replay {run['parent']} instead)"
        )
    err = _err()
    err.print(
        f"qhybrid {__version__}: replaying run [bold]{run_id}[/] ({scenario.name}, "
        f"{len(recorded) - base} records"
        + (f", from its fork tick {fork_tick}" if fork_tick is not None else "")
        + (f", to tick {args.to}" if args.to is not None else "")
        + ")"
    )
    check = TraceCheck(iter(recorded[base:]), base=base, to_tick=args.to)
    holder: dict[str, Any] = {}
    box: dict[str, Any] = {}

    def make_llm(rt: Runtime) -> Any:
        box["llm"] = llm = recorded_llm(rt, head, updates)
        return llm

    runtime = ReplayRuntime(
        scenario,
        config,
        restore=restore,
        llm=make_llm,
        check=check,
        stop_at=args.to,
        gpu_results=gpu_results,
        cpu_results=cpu_results,
        effects=effects,
    )
    try:
        result = _execute(runtime, err, holder)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    check.finish(result.ticks)
    div = check.divergence
    model_calls = box["llm"].engine.model_calls if "llm" in box else 0
    identical: bool | dict[str, object] = True if div is None else div.to_json()
    if div is None:
        err.print(
            f"[green]identical[/]: {check.checked} records checked up to tick {result.ticks}, "
            f"{model_calls} model calls; trace {result.trace_hash}"
        )
    else:
        from rich.markup import escape

        err.print(f"[red]diverged[/] at tick {div.tick}, record {div.record}:", soft_wrap=True)
        err.print(f"  expected {escape(str(div.expected))}", soft_wrap=True)
        err.print(f"  got      {escape(str(div.got))}", soft_wrap=True)
    _emit(
        args,
        {
            "run_id": run_id,
            "status": "identical" if div is None else "diverged",
            "run_status": result.status,
            "trace_hash": result.trace_hash,
            "recorded_trace_hash": run["trace_hash"],
            "model_calls": model_calls,
            "gpu_jobs_from_store": runtime.gpu_jobs_replayed,
            "cpu_tasks_from_store": runtime.cpu_tasks_replayed,
            "identical": identical,
            "records_checked": check.checked,
            "from_tick": fork_tick or 0,
            "ticks": result.ticks,
        },
    )
    return EXIT_OK if div is None else EXIT_FAILED


# -- qhybrid export --------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from qhybrid.runs_export import write_jsonl, write_perfetto

    if (args.perfetto is None) == (args.jsonl is None):
        raise BadInput("export: give exactly one of --perfetto FILE and --jsonl FILE")
    with _open(args, readonly=True) as store:
        run_id = _resolve(store, args.run)
        try:
            if args.jsonl is not None:
                n = write_jsonl(store, run_id, args.jsonl)
                _err().print(f"{n} trace records of run {run_id} written to {args.jsonl}")
            else:
                n = write_perfetto(store, run_id, args.perfetto)
                _err().print(
                    f"{n} trace events of run {run_id} written to {args.perfetto} "
                    "(open it in https://ui.perfetto.dev)"
                )
        except OSError as exc:
            raise BadInput(f"cannot write the export: {exc}") from None
    return EXIT_OK


# -- parsing ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qhybrid", description="The run store: recorded runs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_store_arguments(p, run=False)
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        return p

    p = command("runs", "list the store's runs, or delete some (runs delete RUN ...)")
    p.add_argument("action", nargs="?", choices=("delete",), help="delete the runs named")
    p.add_argument("targets", nargs="*", metavar="RUN", help="runs to delete")
    p = command("show", "summarise one run")
    p.add_argument("run", metavar="RUN")
    p = command("resume", "continue an interrupted run from its last checkpoint")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N")
    p = command("replay", "re-execute a run, LLM answers from the store, and compare")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--to", type=int, default=None, metavar="TICK", help="stop after TICK")
    p.add_argument("--module", action="append", default=[], metavar="GROUP=PATH")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N")
    p.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default=None,
        help="where CPU-side work runs (GPU jobs come from the store); default: the run's",
    )
    p = command("fork", "a new run from a run's state at a tick, with changes")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--at", type=int, required=True, metavar="TICK")
    from qhybrid.cli import _seed

    p.add_argument("--seed", type=_seed, default=None, metavar="S")
    p.add_argument("--set", action="append", default=[], metavar="GROUP.config.KEY=VALUE")
    p.add_argument("--module", action="append", default=[], metavar="GROUP=PATH")
    p.add_argument("--model", default=None, metavar="PATH")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N")
    p = command("diff", "where two runs' traces first differ")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--context", type=int, default=3, metavar="N", help="records around it")
    p = command("export", "write a run's trace as Perfetto JSON or JSON lines")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--perfetto", type=Path, default=None, metavar="FILE")
    p.add_argument("--jsonl", type=Path, default=None, metavar="FILE")
    return parser


def cmd_fork(args: argparse.Namespace) -> int:
    from qhybrid.runs_fork import cmd_fork as fork

    return fork(args)


def cmd_diff(args: argparse.Namespace) -> int:
    from qhybrid.runs_fork import cmd_diff as diff

    return diff(args)


HANDLERS = {
    "runs": cmd_runs,
    "show": cmd_show,
    "resume": cmd_resume,
    "replay": cmd_replay,
    "fork": cmd_fork,
    "diff": cmd_diff,
    "export": cmd_export,
}


def main(argv: list[str]) -> int:
    """``qhybrid runs|show|resume|replay|fork|diff|export ...``; returns the exit code."""
    from qhybrid.cli import _setup_logging

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    _setup_logging(int(os.environ.get("QHYBRID_VERBOSE", "0") or 0))
    try:
        return HANDLERS[args.command](args)
    except BadInput as exc:
        _say_error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
