"""From the checked file to the specs: names that refer to each other, ticks, files and folders.

:mod:`~qhybrid.runtime._scenario_models` has checked every value on its own; this module checks
what depends on the rest of the scenario or on the disk: duplicate names, message and notify
targets (a group means all its instances), ticks before ``stop.max_ticks``, each task's inputs
(a tensor, or the output of a task at an earlier tick) and its output shape, an op's parameter
names, and the module files, granted directories and model file (resolved against the
scenario's folder). Each failure is a :class:`ScenarioError` at the field's line.

Fields that the runtime reads as they are written need no code here: :func:`_copy` fills a
spec's fields from the model's fields of the same name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import numpy as np

from qhybrid.runtime._scenario_errors import ScenarioError, join_field, line_for, suggest
from qhybrid.runtime._scenario_models import (
    AgentTable,
    GrantsTable,
    LimitsTable,
    LlmTable,
    MessageTable,
    ScenarioFile,
    TaskTable,
    TensorTable,
    ToolTable,
)
from qhybrid.runtime._scenario_specs import (
    AgentGrants,
    AgentLimits,
    AgentSpec,
    DirGrant,
    LlmSpec,
    MemorySpec,
    MessageSpec,
    Scenario,
    StopSpec,
    TaskSpec,
    TensorSpec,
    ToolSpec,
)
from qhybrid.runtime.tensors import OpError, get_op

__all__ = ["build_scenario"]

#: WebAssembly pages are 64 KiB; 4096 MiB (65536 pages) is all a 32-bit memory can address.
WASM_PAGE_BYTES = 65536

_Spec = TypeVar("_Spec")


def _copy(spec: type[_Spec], table: object, /, **given: Any) -> _Spec:
    """``spec(**given)``, its other fields taken from ``table``'s fields of the same name."""
    values = dict(given)
    for field in dataclasses.fields(spec):  # type: ignore[arg-type]
        if field.name not in values and hasattr(table, field.name):
            values[field.name] = getattr(table, field.name)
    return spec(**values)


def build_scenario(
    file: ScenarioFile,
    *,
    source: Path | None,
    display: str | None,
    lines: Mapping[str, int],
    base_dir: Path,
    default_name: str,
    require_model: bool = True,
) -> Scenario:
    """The :class:`Scenario` of a checked file, or the :class:`ScenarioError` of its first flaw.
    ``require_model=False`` accepts an ``[llm]`` model file that is not there (a replay
    answers from the run store)."""
    builder = _Builder(display, lines, base_dir, file.stop.max_ticks)
    tools = builder.tools(file.tools)
    builder.tool_names = {t.name for t in tools}
    builder.require_model = require_model
    agents = builder.agents(file.agents)
    targets = _Targets(agents)
    messages = builder.messages(file.messages, targets)
    tensors = builder.tensors(file.tensors)
    tasks = builder.tasks(file.tasks, tensors, targets)
    llm = None if file.llm is None else builder.llm(file.llm)
    return _copy(
        Scenario,
        file,
        name=file.name or default_name,
        source=source,
        agents=agents,
        messages=messages,
        tensors=tensors,
        tasks=tasks,
        stop=_copy(StopSpec, file.stop),
        llm=llm,
        tools=tools,
        memory=_copy(MemorySpec, file.memory),
        field_lines=MappingProxyType(dict(lines)),
    )


class _Targets:
    """Message and notify targets: group names (every instance) and instance names."""

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self.agents = agents
        self.by_name: dict[str, tuple[str, ...]] = {}
        for agent in agents:
            self.by_name[agent.name] = agent.instances
            for instance in agent.instances:
                self.by_name.setdefault(instance, (instance,))

    def resolve(self, builder: _Builder, name: str, field: str) -> tuple[str, ...]:
        found = self.by_name.get(name)
        if found is None:
            builder.fail(
                field,
                f"unknown target {json.dumps(name, ensure_ascii=False)}{self._suggestion(name)}; "
                f"known: {self._known()}",
            )
        return found

    def _suggestion(self, name: str) -> str:
        candidates = [a.name for a in self.agents]
        for agent in self.agents:
            if len(candidates) > 1000:
                break
            candidates.extend(agent.instances[:1000])
        return suggest(name, candidates)

    def _known(self) -> str:
        shown: list[str] = []
        for agent in self.agents[:8]:
            if agent.count == 1:
                shown.append(agent.name)
            else:
                last = agent.instances[-1]
                shown.append(f"{agent.name} (or one of {agent.instances[0]} ... {last})")
        if len(self.agents) > 8:
            shown.append(f"and {len(self.agents) - 8} more groups")
        return ", ".join(shown)


@dataclass(slots=True)
class _PendingTask:
    """A task whose own fields are checked; its output shape is inferred in a second pass."""

    index: int
    table: TaskTable
    notify: tuple[str, ...]


class _Builder:
    def __init__(
        self, display: str | None, lines: Mapping[str, int], base_dir: Path, max_ticks: int
    ) -> None:
        self.display = display
        self.lines = lines
        self.base_dir = base_dir
        self.max_ticks = max_ticks
        self.tool_names: set[str] = set()
        self.require_model = True

    def fail(self, field: str, message: str) -> NoReturn:
        raise ScenarioError(
            message, path=self.display, line=line_for(self.lines, field), field=field or None
        )

    def _duplicate(self, field: str, what: str, name: str, first: str) -> NoReturn:
        line = line_for(self.lines, first)
        where = first if line is None else f"{first} (line {line})"
        self.fail(field, f"duplicate {what} {json.dumps(name)}: already used by {where}")

    def _tick(self, at: int, field: str) -> int:
        if at >= self.max_ticks:
            self.fail(
                field,
                f"tick {at} is not before stop.max_ticks = {self.max_ticks}, when the run ends",
            )
        return at

    def _path(self, text: str) -> Path:
        """A path relative to the scenario's folder (or absolute), resolved."""
        return (self.base_dir / text).resolve()

    # agents

    def agents(self, tables: Sequence[AgentTable]) -> tuple[AgentSpec, ...]:
        agents: list[AgentSpec] = []
        first_use: dict[str, str] = {}
        for index, table in enumerate(tables):
            at = f"agents[{index}]"
            name = table.name
            if name in first_use:
                self._duplicate(f"{at}.name", "agent name", name, first_use[name])
            agent = _copy(
                AgentSpec,
                table,
                module=self._module(table.module, f"{at}.module"),
                config=MappingProxyType(dict(table.config)),
                limits=self._limits(table.limits),
                grants=self._grants(table.grants, f"{at}.grants"),
                overrides=self._overrides(table, at),
            )
            # Names cannot contain "-", so "relay-0" never clashes with a group; kept as a guard.
            for instance in agent.instances:
                if instance in first_use and instance != name:
                    self._duplicate(f"{at}.name", "instance name", instance, first_use[instance])
                first_use.setdefault(instance, at)
            first_use[name] = at
            agents.append(agent)
        self._spawn_grants(agents)
        return tuple(agents)

    def _spawn_grants(self, agents: Sequence[AgentSpec]) -> None:
        """Each ``grants.spawn`` names a group that can be spawned (ABI v2)."""
        spawnable = {a.name for a in agents if a.max_spawned > 0}
        for index, agent in enumerate(agents):
            for j, group in enumerate(agent.grants.spawn):
                if group not in spawnable:
                    known = ", ".join(sorted(spawnable)) or "none"
                    self.fail(
                        f"agents[{index}].grants.spawn[{j}]",
                        f"no [[agents]] group {group!r} with max_spawned > 0 (spawnable: {known})",
                    )

    def _module(self, text: str, field: str) -> Path:
        path = self._path(text)
        if not path.exists():
            self.fail(field, f"module file not found: {path}")
        if not path.is_file():
            self.fail(field, f"module path is not a file: {path}")
        return path

    @staticmethod
    def _limits(table: LimitsTable) -> AgentLimits:
        memory_bytes = None
        if table.memory_mb is not None:
            # MiB -> bytes, down to a whole page, at least one. Integers are exact; a float is
            # exact after the multiplication by a power of two.
            value = table.memory_mb
            exact = value * 2**20 if isinstance(value, int) else math.floor(value * 2**20)
            memory_bytes = max(1, exact // WASM_PAGE_BYTES) * WASM_PAGE_BYTES
        stack_bytes = None if table.stack_kb is None else table.stack_kb * 1024
        return _copy(AgentLimits, table, memory_bytes=memory_bytes, stack_bytes=stack_bytes)

    def _grants(self, table: GrantsTable, field: str) -> AgentGrants:
        dirs: list[DirGrant] = []
        guests: dict[str, str] = {}
        for index, grant in enumerate(table.dirs):
            at = f"{field}.dirs[{index}]"
            host = self._path(grant.host)
            if not host.exists():
                self.fail(f"{at}.host", f"granted directory not found: {host}")
            if not host.is_dir():
                self.fail(f"{at}.host", f"granted path is not a directory: {host}")
            if grant.guest in guests:
                self._duplicate(f"{at}.guest", "guest path", grant.guest, guests[grant.guest])
            guests[grant.guest] = at
            dirs.append(_copy(DirGrant, grant, host=host))
        for index, tool in enumerate(table.tools):
            if tool not in self.tool_names:
                known = ", ".join(sorted(self.tool_names)) or "none"
                self.fail(f"{field}.tools[{index}]", f"no [[tools]] entry named {tool!r} ({known})")
        return _copy(AgentGrants, table, dirs=tuple(dirs))

    def _overrides(self, table: AgentTable, at: str) -> Mapping[str, Any]:
        names = (
            {table.name} if table.count == 1 else {f"{table.name}-{i}" for i in range(table.count)}
        )
        for instance, value in table.overrides.items():
            if instance not in names:
                self.fail(f"{at}.overrides", f"no instance {instance!r} in group {table.name!r}")
            if not isinstance(value, Mapping):
                self.fail(f"{at}.overrides.{instance}", "expected a table of config keys")
        return MappingProxyType(dict(table.overrides))

    def tools(self, tables: Sequence[ToolTable]) -> tuple[ToolSpec, ...]:
        tools: list[ToolSpec] = []
        seen: dict[str, str] = {}
        for index, table in enumerate(tables):
            at = f"tools[{index}]"
            if table.name in seen:
                self._duplicate(f"{at}.name", "tool name", table.name, seen[table.name])
            seen[table.name] = at
            function = table.function or ""
            if table.kind == "python":
                module, _, func = function.rpartition(":")
                if module.endswith(".py") and re.fullmatch(r"[A-Za-z_]\w*", func):
                    script = self._path(module)
                    if not script.is_file():
                        self.fail(f"{at}.function", f"tool script not found: {script}")
                    function = f"{script}:{func}"
                elif not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", function):
                    self.fail(
                        f"{at}.function",
                        'expected "package.module:function" or "file.py:function", '
                        f"got {function!r}",
                    )
            elif not table.hosts:
                self.fail(f"{at}.hosts", "an http tool needs the hosts it may reach")
            tools.append(_copy(ToolSpec, table, function=function))
        return tuple(tools)

    def llm(self, table: LlmTable) -> LlmSpec:
        model = self._path(table.model)
        if self.require_model and not model.is_file():
            self.fail("llm.model", f"model file not found: {model}")
        return _copy(LlmSpec, table, model=model)

    # messages

    def messages(
        self, tables: Sequence[MessageTable], targets: _Targets
    ) -> tuple[MessageSpec, ...]:
        messages: list[MessageSpec] = []
        for index, table in enumerate(tables):
            at = f"messages[{index}]"
            to = targets.resolve(self, table.to, f"{at}.to")
            self._tick(table.at, f"{at}.at")
            messages.append(_copy(MessageSpec, table, to=to, payload=table.payload_bytes()))
        return tuple(messages)

    # tensors and tasks

    def tensors(self, tables: Sequence[TensorTable]) -> tuple[TensorSpec, ...]:
        tensors: list[TensorSpec] = []
        first_use: dict[str, str] = {}
        for index, table in enumerate(tables):
            at = f"tensors[{index}]"
            if table.name in first_use:
                self._duplicate(f"{at}.name", "tensor name", table.name, first_use[table.name])
            first_use[table.name] = at
            tensors.append(_copy(TensorSpec, table, dtype=np.dtype(table.dtype).str))
        return tuple(tensors)

    def tasks(
        self, tables: Sequence[TaskTable], tensors: Sequence[TensorSpec], targets: _Targets
    ) -> tuple[TaskSpec, ...]:
        names: dict[str, str] = {}
        # Every name a task input may refer to -> where it was declared.
        producers: dict[str, str] = {t.name: f"tensors[{i}]" for i, t in enumerate(tensors)}
        pending: list[_PendingTask] = []
        for index, table in enumerate(tables):
            at = f"tasks[{index}]"
            if table.name in names:
                self._duplicate(f"{at}.name", "task name", table.name, names[table.name])
            names[table.name] = at
            if table.output in producers:
                first = producers[table.output]
                owner = "tensor" if first.startswith("tensors") else "task output"
                self._duplicate(f"{at}.output", f"name ({owner})", table.output, first)
            producers[table.output] = at
            self._params(table, f"{at}.params")
            self._tick(table.at, f"{at}.at")
            notify: tuple[str, ...] = ()
            if table.notify is not None:
                notify = targets.resolve(self, table.notify, f"{at}.notify")
            pending.append(_PendingTask(index, table, notify))
        return self._infer(pending, tensors)

    def _params(self, table: TaskTable, field: str) -> None:
        allowed = get_op(table.op).params
        for key in table.params:
            if key not in allowed:
                takes = f"allowed: {', '.join(allowed)}" if allowed else "it takes none"
                self.fail(
                    join_field(field, key),
                    f"op {json.dumps(table.op)} has no parameter {json.dumps(key)}"
                    f"{suggest(key, allowed)}; {takes}",
                )

    def _infer(
        self, pending: Sequence[_PendingTask], tensors: Sequence[TensorSpec]
    ) -> tuple[TaskSpec, ...]:
        """Infer output shapes in tick order, checking that each input exists in time."""
        known = {t.name: (t.shape, t.dtype) for t in tensors}
        by_output = {task.table.output: task for task in pending}
        specs: dict[int, TaskSpec] = {}

        # Inputs come from earlier ticks, or from tasks before this one in the same tick's
        # queue order (chained, issue 14): queue order is a topological order.
        def order(t: _PendingTask) -> tuple[int, int, int]:
            return (t.table.at, -t.table.priority, t.index)

        for task in sorted(pending, key=order):
            table = task.table
            at = f"tasks[{task.index}]"
            shapes: list[tuple[int, ...]] = []
            dtypes: list[str] = []
            for i, name in enumerate(table.inputs):
                field = f"{at}.inputs[{i}]"
                producer = by_output.get(name)
                if name in known and (producer is None or order(producer) < order(task)):
                    shape, dtype = known[name]
                elif producer is task:
                    self.fail(
                        field,
                        f"task {json.dumps(table.name)} cannot take its own output "
                        f"{json.dumps(name)} as input",
                    )
                elif producer is not None:
                    self.fail(
                        field,
                        f"{json.dumps(name)} is the output of task "
                        f"{json.dumps(producer.table.name)} at tick {producer.table.at}, which "
                        f"is not before this task's tick {table.at}; an input must be a tensor, "
                        "the output of a task with a smaller `at`, or of one queued before this "
                        "one at the same `at` (declared earlier, at no lower priority)",
                    )
                else:
                    candidates = [t.name for t in tensors] + [t.table.output for t in pending]
                    listed = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
                    self.fail(
                        field,
                        f"unknown input {json.dumps(name)}{suggest(name, candidates)}; "
                        f"tensors and task outputs: {listed or 'none declared'}",
                    )
                shapes.append(shape)
                dtypes.append(dtype)
            params = MappingProxyType(dict(table.params))
            try:
                out_shape, out_dtype = get_op(table.op).check(shapes, dtypes, params)
            except OpError as exc:
                described = ", ".join(
                    f"{name} {list(shape)}"
                    for name, shape in zip(table.inputs, shapes, strict=True)
                )
                self.fail(f"{at}.inputs", f"{exc} (inputs: {described or 'none'})")
            known[table.output] = (out_shape, out_dtype)
            specs[task.index] = _copy(
                TaskSpec,
                table,
                output_shape=out_shape,
                output_dtype=out_dtype,
                params=params,
                notify=task.notify,
            )
        return tuple(specs[task.index] for task in pending)
