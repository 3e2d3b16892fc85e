"""Scenario files: a TOML description of a run, loaded and checked before anything starts.

A scenario names the agent groups (WebAssembly modules, how many instances of each, their
limits, the directories and environment variables granted to them, and what an error does), the
initial messages, the tensors created in shared memory and the tensor tasks, and when the run
stops. :func:`load_scenario` reads a file and :func:`parse_scenario` a string; both check
everything up front (types, ranges, names, message targets, module files and granted
directories, task inputs and op shapes) so that a mistake is reported as one
:class:`ScenarioError` naming the file, the line and the field, before a worker or the GPU thread
is started.

The format is documented in ``docs/scenarios.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime
import difflib
import json
import math
import os
import posixpath
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np

from qhybrid.runtime.tensors import OPS, OpError, get_op

__all__ = [
    "AgentGrants",
    "AgentLimits",
    "AgentSpec",
    "DirGrant",
    "MessageSpec",
    "Scenario",
    "ScenarioError",
    "StopSpec",
    "TaskSpec",
    "TensorSpec",
    "load_scenario",
    "parse_scenario",
]

INT64_MAX = 2**63 - 1
#: Message kinds from here up are the runtime's own (task notifications, control messages).
RESERVED_KIND_BASE = 0x7F000000
MAX_AGENT_COUNT = 100_000
MAX_PRIORITY = 1000
MAX_TENSOR_RANK = 4
MAX_TENSOR_ELEMENTS = 2**28
DEFAULT_MAX_TICKS = 10_000
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS = 1000
#: WebAssembly pages are 64 KiB; 4096 MiB (65536 pages) is all a 32-bit memory can address.
WASM_PAGE_BYTES = 65536
MAX_MEMORY_MB = 4096
MIN_STACK_KB = 16
MAX_STACK_KB = 65536

AGENT_ON_ERROR = ("fail", "skip", "restart")
GRANT_MODES = ("ro", "rw")
TASK_KINDS = ("gpu", "cpu")
TENSOR_DTYPES = ("float32",)
TENSOR_INITS = ("random", "zeros", "ones", "arange")
MODULE_SUFFIXES = (".wasm", ".wat", ".py")

_TOP_KEYS = (
    "name",
    "description",
    "seed",
    "stop",
    "llm",
    "agents",
    "messages",
    "tensors",
    "tasks",
    "tools",
)
_TOOL_KEYS = ("name", "kind", "function", "hosts", "max_bytes", "timeout_s")
TOOL_KINDS = ("python", "http")
_LLM_KEYS = (
    "model",
    "device",
    "slots",
    "n_ctx",
    "chat",
    "temperature",
    "top_k",
    "top_p",
    "repeat_penalty",
    "stop",
)
_STOP_KEYS = ("max_ticks", "max_messages", "timeout_s")
_AGENT_KEYS = (
    "name",
    "module",
    "count",
    "on_error",
    "config",
    "overrides",
    "max_restarts",
    "limits",
    "grants",
)
_LIMIT_KEYS = ("fuel", "memory_mb", "timeout_ms", "stack_kb")
_GRANT_KEYS = ("dirs", "env", "tools")
_DIR_GRANT_KEYS = ("host", "guest", "mode")
_PAYLOAD_KEYS = ("payload", "payload_i64", "payload_hex")
_MESSAGE_KEYS = ("to", "kind", *_PAYLOAD_KEYS, "at", "priority")
_TENSOR_KEYS = ("name", "shape", "dtype", "init", "writable")
_TASK_KEYS = ("name", "kind", "op", "inputs", "output", "params", "at", "priority", "notify")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


class ScenarioError(Exception):
    """A scenario that cannot run: where (file, line, field) and what is wrong.

    ``str()`` gives ``"path:line: field: message"``, leaving out the parts that are unknown
    (without a path, the line reads ``"line 12"``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.field = field

    def __str__(self) -> str:
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only arguments would be lost by the default pickling of exceptions.
        return (_rebuild_error, (self.message, self.path, self.line, self.field))


def _rebuild_error(
    message: str, path: str | None, line: int | None, field: str | None
) -> ScenarioError:
    return ScenarioError(message, path=path, line=line, field=field)


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """What one message may cost an agent instance; ``None`` is no limit of the runtime's own.

    See "Limits and failures" in ``docs/agent-abi.md`` for what happens when one is reached.
    """

    #: Fuel (wasmtime's instruction-like units) per message; ``None``: unlimited.
    fuel: int | None = None
    #: Maximum linear memory in bytes, a whole number of 64 KiB pages; ``None``: wasmtime's default.
    memory_bytes: int | None = None
    #: Wall-clock time per message in milliseconds; ``None``: none (the run's timeout still holds).
    timeout_ms: int | None = None
    #: WebAssembly stack size in bytes; ``None``: wasmtime's default.
    stack_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DirGrant:
    """A host directory an agent may open through WASI, at ``guest`` inside its sandbox."""

    #: Absolute and resolved; it existed and was a directory when the scenario was loaded.
    host: Path
    #: An absolute POSIX path, normalised (no ``.``, ``..``, repeated or trailing ``/``).
    guest: str
    #: ``"ro"`` (read only) or ``"rw"`` (read and write).
    mode: str = "ro"


@dataclass(frozen=True, slots=True)
class AgentGrants:
    """What an agent may reach through WASI beyond the default nothing: directories, variables."""

    dirs: tuple[DirGrant, ...] = ()
    #: ``(name, value)`` pairs, sorted by name.
    env: tuple[tuple[str, str], ...] = ()
    #: ABI v2: the ``[[tools]]`` the agent may call, by name.
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool agents may call (ABI v2 ``tool_call``) where their grants name it: ``kind``
    "python" calls ``function`` (``"package.module:name"``) with the JSON arguments; "http"
    requests a URL on one of ``hosts``, reading at most ``max_bytes``."""

    name: str
    kind: str
    function: str = ""
    hosts: tuple[str, ...] = ()
    max_bytes: int = 1 << 20
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A group of agent instances running the same module with the same config.

    Mapping fields here and below are read-only views; they take part in ``==`` but not in
    ``hash()`` (mappings cannot be hashed), so the specs stay usable as keys.
    """

    name: str
    module: Path
    count: int = 1
    on_error: str = "fail"
    config: Mapping[str, Any] = dataclasses.field(default_factory=_empty_mapping, hash=False)
    limits: AgentLimits = AgentLimits()
    grants: AgentGrants = AgentGrants()
    #: How many times an instance is replaced after errors (with ``on_error = "restart"``).
    max_restarts: int = DEFAULT_MAX_RESTARTS
    #: Instance name -> config keys that replace the group's for that instance (merged into
    #: nested tables).
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=_empty_mapping, hash=False
    )

    def instance_config(self, instance: str) -> dict[str, Any]:
        """The config one instance sees: the group's, with its overrides merged in."""

        def plain(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value

        def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
            for key, value in over.items():
                if isinstance(value, Mapping) and isinstance(base.get(key), dict):
                    base[key] = merge(base[key], value)
                else:
                    base[key] = plain(value)
            return base

        return merge(plain(self.config), self.overrides.get(instance, {}))

    @property
    def instances(self) -> tuple[str, ...]:
        """Instance names: the group's name when ``count == 1``, else ``name-0`` ... ``name-N``."""
        if self.count == 1:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(self.count))


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """An initial message, addressed to resolved instance names (a group gives all of them)."""

    to: tuple[str, ...]
    kind: int = 0
    payload: bytes = b""
    at: int = 0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor created in shared memory before the run."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "<f4"
    init: str = "zeros"
    #: Whether agents may write it with ``tensor_write``; if not, it is read-only to them.
    writable: bool = False


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A tensor operation run at a tick, on the GPU thread or in a worker process."""

    name: str
    kind: str
    op: str
    inputs: tuple[str, ...]
    output: str
    output_shape: tuple[int, ...]
    output_dtype: str
    params: Mapping[str, float] = dataclasses.field(default_factory=_empty_mapping, hash=False)
    at: int = 0
    priority: int = 0
    notify: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StopSpec:
    """When a run ends: a logical time, optionally a message count, and a wall-clock limit."""

    max_ticks: int = DEFAULT_MAX_TICKS
    max_messages: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class LlmSpec:
    """The scenario's LLM (``[llm]``): the GGUF file agents' ``llm_complete`` calls go to.

    ``device`` is where its graph runs (auto, gpu or cpu); ``slots`` how many requests run at
    once (continuous batching); ``n_ctx`` the context per request (0: the model's, at most
    2048); ``chat`` renders each prompt as a user message with the model's chat template; the
    sampling fields apply to every request (``temperature`` 0 is greedy), each request drawing
    from its own stream seeded by the scenario's seed, the agent and the request.
    """

    model: Path
    device: str = "auto"
    slots: int = 8
    n_ctx: int = 0
    chat: bool = False
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    """A checked scenario: every name resolved, every path absolute, every shape inferred."""

    name: str
    description: str
    seed: int
    source: Path | None
    agents: tuple[AgentSpec, ...]
    messages: tuple[MessageSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    stop: StopSpec = StopSpec()
    llm: LlmSpec | None = None
    tools: tuple[ToolSpec, ...] = ()
    #: Field path (``"agents[0].module"``) -> 1-based line in the source; best effort.
    field_lines: Mapping[str, int] = dataclasses.field(default_factory=_empty_mapping, hash=False)

    @property
    def agent_names(self) -> tuple[str, ...]:
        """Every instance name, in declaration order."""
        return tuple(name for agent in self.agents for name in agent.instances)

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario with another seed (for example from ``--seed``)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT64_MAX:
            raise ScenarioError(
                f"expected an integer from 0 to 2**63 - 1, got {_describe(seed)}", field="seed"
            )
        return dataclasses.replace(self, seed=seed)

    def error(self, field: str, message: str) -> ScenarioError:
        """An error located at ``field`` (for checks made after loading, e.g. by the runtime).

        The line is the field's own, else its nearest parent's (``agents[1].config.x`` falls back
        to ``agents[1].config``, then ``agents[1]``).
        """
        return ScenarioError(
            message,
            path=None if self.source is None else os.fspath(self.source),
            line=_line_for(self.field_lines, field),
            field=field,
        )


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check the scenario file at ``path``; module paths are relative to its folder."""
    display = os.fspath(path)
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found ({file.absolute()})", path=display) from None
    except IsADirectoryError:
        raise ScenarioError("is a directory, not a scenario file", path=display) from None
    except OSError as exc:
        raise ScenarioError(
            f"cannot read the scenario file: {exc.strerror or exc}", path=display
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            path=display,
            line=line,
        ) from None
    return parse_scenario(text, source=path, base_dir=file.parent)


def parse_scenario(
    text: str,
    *,
    source: str | os.PathLike[str] | None = None,
    base_dir: Path | None = None,
) -> Scenario:
    """Check the scenario in ``text``.

    ``source`` names the file in errors and gives the default scenario name (its stem);
    module paths are relative to ``base_dir``, by default the source's folder, else the
    current directory.
    """
    display = None if source is None else os.fspath(source)
    source_path = None if source is None else Path(source)
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, display) from None
    except RecursionError:
        raise ScenarioError("invalid TOML: values nest too deeply", path=display) from None
    except ValueError as exc:  # an integer too long to convert (over 4300 digits)
        raise ScenarioError(f"invalid TOML: {exc}", path=display) from None
    lines = _scan_field_lines(text)
    if base_dir is None:
        base_dir = source_path.parent if source_path is not None else Path.cwd()
    default_name = source_path.stem if source_path is not None and source_path.stem else ""
    builder = _Builder(_Reader(display, lines), base_dir, default_name or "scenario")
    return builder.build(data, source_path)


# --- errors and descriptions ---------------------------------------------------------------------

_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_error(message: str, text: str, display: str | None) -> ScenarioError:
    found = _AT_LINE.search(message)
    if found is not None:
        core = message[: found.start()]
        return ScenarioError(
            f"invalid TOML: {core} (column {found.group(2)})",
            path=display,
            line=int(found.group(1)),
        )
    found = _AT_END.search(message)
    if found is not None:
        core = message[: found.start()]
        return ScenarioError(
            f"invalid TOML: {core} (at the end of the file)",
            path=display,
            line=text.count("\n") + 1,
        )
    return ScenarioError(f"invalid TOML: {message}", path=display)


def _describe(value: object) -> str:
    """A value as the user wrote it, for "expected X, got Y"."""
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and math.isfinite(value):
            return f"{value!r} (a float)"
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(json.dumps(n, ensure_ascii=False) for n in names)


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {json.dumps(close[0], ensure_ascii=False)}?)" if close else ""


def _join(parent: str, key: str) -> str:
    """The field path of ``key`` inside ``parent``: ``agents[0].count``, ``config."a b"``."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{parent}.{part}" if parent else part


def _parent(field: str) -> str:
    cut = field.rfind("[") if field.endswith("]") else field.rfind(".")
    return field[:cut] if cut > 0 else ""


def _line_for(lines: Mapping[str, int], field: str) -> int | None:
    while field:
        line = lines.get(field)
        if line is not None:
            return line
        field = _parent(field)
    return None


# --- typed access to the parsed TOML -------------------------------------------------------------


class _Reader:
    """Checks for one value at a time; each failure raises at that value's field and line."""

    def __init__(self, path: str | None, lines: Mapping[str, int]) -> None:
        self.path = path
        self.lines = lines

    def fail(self, field: str, message: str) -> NoReturn:
        raise ScenarioError(
            message, path=self.path, line=_line_for(self.lines, field), field=field or None
        )

    def table(self, value: object, field: str, allowed: Sequence[str], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"expected a table ({what}), got {_describe(value)}")
        for key in value:
            if key not in allowed:
                self.fail(
                    _join(field, key),
                    f"unknown field {json.dumps(key)} in {what}{_suggest(key, allowed)}; "
                    f"allowed: {', '.join(allowed)}",
                )
        return value

    def require(self, table: Mapping[str, Any], field: str, key: str, what: str) -> Any:
        if key not in table:
            self.fail(_join(field, key), f"required field {json.dumps(key)} is missing from {what}")
        return table[key]

    def tables(self, value: object, field: str, header: str | None = None) -> list[dict[str, Any]]:
        """An array of tables (``[[header]]`` entries, ``header`` by default ``field``).

        Absent means empty.
        """
        if value is None:
            return []
        header = header or field
        if isinstance(value, dict):
            self.fail(
                field,
                f"expected an array of tables, got a table: write [[{header}]] for each entry, "
                f"not [{header}]",
            )
        if not isinstance(value, list):
            self.fail(field, f"expected an array of tables ([[{header}]]), got {_describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{field}[{index}]", f"expected a table, got {_describe(item)}")
        return value

    def array(self, value: object, field: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(field, f"expected a list, got {_describe(value)}")
        return value

    def string(self, value: object, field: str, *, non_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {_describe(value)}")
        if non_empty and not value.strip():
            self.fail(field, "expected a non-empty string")
        return value

    def identifier(self, value: object, field: str) -> str:
        name = self.string(value, field)
        if not _IDENTIFIER.fullmatch(name):
            self.fail(
                field,
                "expected a name made of letters, digits and '_' that does not start with a "
                f"digit, got {_describe(name)}",
            )
        return name

    def integer(
        self,
        value: object,
        field: str,
        low: int,
        high: int = INT64_MAX,
        *,
        expected: str | None = None,
    ) -> int:
        if expected is not None:
            pass
        elif high >= INT64_MAX:
            expected = f"an integer >= {low}"
        else:
            expected = f"an integer from {low} to {high}"
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, float) and value.is_integer():
                hint = f"; write {int(value)} without a decimal point"
            self.fail(field, f"expected {expected}, got {_describe(value)}{hint}")
        if value < low:
            self.fail(field, f"expected {expected}, got {value}")
        if value > high:
            if high >= INT64_MAX and expected.startswith("an integer >="):
                expected += " that fits in 64 bits"
            self.fail(field, f"expected {expected}, got {value}")
        return value

    def boolean(self, value: object, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"expected true or false, got {_describe(value)}")
        return value

    def positive_number(self, value: object, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, f"expected a number > 0, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number) or number <= 0:
            self.fail(field, f"expected a finite number > 0, got {_describe(value)}")
        return number

    def choice(self, value: object, field: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            self.fail(field, f"expected one of {_quoted(choices)}, got {_describe(value)}{hint}")
        return value


# --- building the scenario -----------------------------------------------------------------------


class _Targets:
    """Message and notify targets: group names (every instance) and instance names."""

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self.agents = agents
        self.by_name: dict[str, tuple[str, ...]] = {}
        for agent in agents:
            self.by_name[agent.name] = agent.instances
            for instance in agent.instances:
                self.by_name.setdefault(instance, (instance,))

    def resolve(self, reader: _Reader, value: object, field: str) -> tuple[str, ...]:
        name = reader.string(value, field)
        found = self.by_name.get(name)
        if found is None:
            reader.fail(
                field,
                f"unknown target {json.dumps(name)}{self._suggestion(name)}; "
                f"known: {self._known()}",
            )
        return found

    def _suggestion(self, name: str) -> str:
        candidates = [a.name for a in self.agents]
        for agent in self.agents:
            if len(candidates) > 1000:
                break
            candidates.extend(agent.instances[:1000])
        return _suggest(name, candidates)

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
    """A task whose fields are checked; its output shape is inferred in a second pass."""

    index: int
    name: str
    kind: str
    op: str
    inputs: tuple[str, ...]
    output: str
    params: Mapping[str, float]
    at: int
    priority: int
    notify: tuple[str, ...]


class _Builder:
    def __init__(self, reader: _Reader, base_dir: Path, default_name: str) -> None:
        self.r = reader
        self.base_dir = base_dir
        self.default_name = default_name
        self.max_ticks = DEFAULT_MAX_TICKS
        self.tool_names: set[str] = set()

    def build(self, data: dict[str, Any], source: Path | None) -> Scenario:
        r = self.r
        r.table(data, "", _TOP_KEYS, "the top level")
        name = r.string(data.get("name", self.default_name), "name", non_empty=True)
        description = r.string(data.get("description", ""), "description")
        seed = r.integer(data.get("seed", 0), "seed", 0)
        stop = self._stop(data.get("stop", {}))
        self.max_ticks = stop.max_ticks
        tools = self._tools(data.get("tools"))
        self.tool_names = {t.name for t in tools}
        agents = self._agents(data.get("agents"))
        targets = _Targets(agents)
        messages = self._messages(data.get("messages"), targets)
        tensors = self._tensors(data.get("tensors"))
        tasks = self._tasks(data.get("tasks"), tensors, targets)
        llm = self._llm(data["llm"]) if "llm" in data else None
        return Scenario(
            name=name,
            description=description,
            seed=seed,
            source=source,
            agents=agents,
            messages=messages,
            tensors=tensors,
            tasks=tasks,
            stop=stop,
            llm=llm,
            tools=tools,
            field_lines=MappingProxyType(dict(r.lines)),
        )

    def _tick(self, value: object, field: str) -> int:
        at = self.r.integer(value, field, 0)
        if at >= self.max_ticks:
            self.r.fail(
                field,
                f"tick {at} is not before stop.max_ticks = {self.max_ticks}, when the run ends",
            )
        return at

    def _priority(self, value: object, field: str) -> int:
        return self.r.integer(value, field, -MAX_PRIORITY, MAX_PRIORITY)

    def _stop(self, value: object) -> StopSpec:
        r = self.r
        raw = r.table(value, "stop", _STOP_KEYS, "[stop]")
        max_ticks = r.integer(raw.get("max_ticks", DEFAULT_MAX_TICKS), "stop.max_ticks", 1)
        max_messages = None
        if "max_messages" in raw:
            max_messages = r.integer(raw["max_messages"], "stop.max_messages", 1)
        timeout_s = r.positive_number(raw.get("timeout_s", DEFAULT_TIMEOUT_S), "stop.timeout_s")
        return StopSpec(max_ticks=max_ticks, max_messages=max_messages, timeout_s=timeout_s)

    def _llm(self, value: object) -> LlmSpec:
        r = self.r
        raw = r.table(value, "llm", _LLM_KEYS, "[llm]")
        text = r.string(r.require(raw, "llm", "model", "[llm]"), "llm.model", non_empty=True)
        model = self._path(text, "llm.model")
        if not model.is_file():
            r.fail("llm.model", f"model file not found: {model}")
        device = r.choice(raw.get("device", "auto"), "llm.device", ("auto", "gpu", "cpu"))
        slots = r.integer(raw.get("slots", 8), "llm.slots", 1, 256)
        n_ctx = r.integer(raw.get("n_ctx", 0), "llm.n_ctx", 0, 1 << 20)
        if n_ctx == 1:
            r.fail("llm.n_ctx", "expected 0 (the model's context) or at least 2, got 1")
        chat = r.boolean(raw.get("chat", False), "llm.chat")
        temperature = raw.get("temperature", 0.8)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            r.fail("llm.temperature", f"expected a number >= 0, got {_describe(temperature)}")
        if not math.isfinite(temperature) or temperature < 0:
            r.fail(
                "llm.temperature", f"expected a finite number >= 0 (0 is greedy), got {temperature}"
            )
        temperature = float(temperature)
        top_k = r.integer(raw.get("top_k", 40), "llm.top_k", 0, 1 << 20)
        top_p = r.positive_number(raw.get("top_p", 0.95), "llm.top_p")
        if top_p > 1:
            r.fail("llm.top_p", f"expected a number in (0, 1], got {top_p:g}")
        penalty = r.positive_number(raw.get("repeat_penalty", 1.0), "llm.repeat_penalty")
        stops = raw.get("stop", [])
        if not isinstance(stops, list):
            r.fail("llm.stop", f"expected a list of strings, got {_describe(stops)}")
        stop = tuple(r.string(v, f"llm.stop[{i}]") for i, v in enumerate(stops))
        for i, text in enumerate(stop):
            if not text:  # whitespace such as "\n\n" is a fine stop string; "" is not
                r.fail(f"llm.stop[{i}]", "expected a non-empty string")
        return LlmSpec(model, device, slots, n_ctx, chat, temperature, top_k, top_p, penalty, stop)

    # agents

    def _agents(self, value: object) -> tuple[AgentSpec, ...]:
        r = self.r
        items = r.tables(value, "agents")
        if not items:
            r.fail("agents", "at least one [[agents]] entry is required")
        agents: list[AgentSpec] = []
        first_use: dict[str, str] = {}
        for index, raw in enumerate(items):
            at = f"agents[{index}]"
            r.table(raw, at, _AGENT_KEYS, "[[agents]]")
            name = r.identifier(r.require(raw, at, "name", "this [[agents]] entry"), f"{at}.name")
            if name in first_use:
                self._duplicate(f"{at}.name", "agent name", name, first_use[name])
            module = self._module(
                r.require(raw, at, "module", "this [[agents]] entry"), f"{at}.module"
            )
            count = r.integer(raw.get("count", 1), f"{at}.count", 1, MAX_AGENT_COUNT)
            on_error = r.choice(raw.get("on_error", "fail"), f"{at}.on_error", AGENT_ON_ERROR)
            max_restarts = self._max_restarts(raw, at, on_error)
            config = self._config(raw.get("config", {}), f"{at}.config")
            overrides = self._overrides(raw.get("overrides", {}), f"{at}.overrides", name, raw)
            limits = self._limits(raw.get("limits", {}), f"{at}.limits")
            grants = self._grants(raw.get("grants", {}), f"{at}.grants")
            agent = AgentSpec(
                name,
                module,
                count,
                on_error,
                config,
                limits=limits,
                grants=grants,
                max_restarts=max_restarts,
                overrides=overrides,
            )
            # Names cannot contain "-", so "relay-0" never clashes with a group; kept as a guard.
            for instance in agent.instances:
                if instance in first_use and instance != name:
                    self._duplicate(f"{at}.name", "instance name", instance, first_use[instance])
                first_use.setdefault(instance, at)
            first_use[name] = at
            agents.append(agent)
        return tuple(agents)

    def _duplicate(self, field: str, what: str, name: str, first: str) -> NoReturn:
        line = _line_for(self.r.lines, first)
        where = first if line is None else f"{first} (line {line})"
        self.r.fail(field, f"duplicate {what} {json.dumps(name)}: already used by {where}")

    def _path(self, value: object, field: str) -> Path:
        """A path relative to the scenario's folder (or absolute), resolved; not checked."""
        text = self.r.string(value, field, non_empty=True)
        if "\0" in text:
            self.r.fail(field, "a path cannot contain a NUL character")
        return (self.base_dir / text).resolve()

    def _module(self, value: object, field: str) -> Path:
        text = self.r.string(value, field, non_empty=True)
        if Path(text).suffix.lower() not in MODULE_SUFFIXES:
            self.r.fail(field, f"expected a .wasm or .wat file, got {_describe(text)}")
        path = self._path(text, field)
        if not path.exists():
            self.r.fail(field, f"module file not found: {path}")
        if not path.is_file():
            self.r.fail(field, f"module path is not a file: {path}")
        return path

    def _max_restarts(self, raw: Mapping[str, Any], at: str, on_error: str) -> int:
        if "max_restarts" not in raw:
            return DEFAULT_MAX_RESTARTS
        field = f"{at}.max_restarts"
        value = self.r.integer(raw["max_restarts"], field, 0, MAX_RESTARTS)
        if on_error != "restart":
            # Most likely on_error was forgotten: a silent no-op would hide that.
            self.r.fail(
                field,
                f'max_restarts is used only with on_error = "restart"; this group has '
                f"on_error = {json.dumps(on_error)}",
            )
        return value

    def _limits(self, value: object, field: str) -> AgentLimits:
        r = self.r
        raw = r.table(value, field, _LIMIT_KEYS, "[agents.limits]")
        fuel = timeout_ms = memory_bytes = stack_bytes = None
        if "fuel" in raw:
            fuel = r.integer(raw["fuel"], f"{field}.fuel", 1)
        if "memory_mb" in raw:
            memory_bytes = self._memory_bytes(raw["memory_mb"], f"{field}.memory_mb")
        if "timeout_ms" in raw:
            timeout_ms = r.integer(raw["timeout_ms"], f"{field}.timeout_ms", 1)
        if "stack_kb" in raw:
            stack_kb = r.integer(raw["stack_kb"], f"{field}.stack_kb", MIN_STACK_KB, MAX_STACK_KB)
            stack_bytes = stack_kb * 1024
        return AgentLimits(
            fuel=fuel, memory_bytes=memory_bytes, timeout_ms=timeout_ms, stack_bytes=stack_bytes
        )

    def _memory_bytes(self, value: object, field: str) -> int:
        """Megabytes (MiB, a fraction allowed) -> bytes, down to a whole page, at least one."""
        expected = f"a number of MiB, > 0 and at most {MAX_MEMORY_MB}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.r.fail(field, f"expected {expected}, got {_describe(value)}")
        if not 0 < value <= MAX_MEMORY_MB:  # also false for nan; no float() of a huge int
            self.r.fail(field, f"expected {expected}, got {_describe(value)}")
        # Integers are exact; a float is exact after the multiplication by a power of two.
        exact = value * 2**20 if isinstance(value, int) else math.floor(value * 2**20)
        pages = max(1, exact // WASM_PAGE_BYTES)
        return pages * WASM_PAGE_BYTES

    def _grants(self, value: object, field: str) -> AgentGrants:
        r = self.r
        raw = r.table(value, field, _GRANT_KEYS, "[agents.grants]")
        dirs: list[DirGrant] = []
        guests: dict[str, str] = {}
        dirs_field = f"{field}.dirs"
        for index, item in enumerate(r.tables(raw.get("dirs"), dirs_field, "agents.grants.dirs")):
            at = f"{dirs_field}[{index}]"
            what = "this directory grant"
            r.table(item, at, _DIR_GRANT_KEYS, "a directory grant")
            host = self._grant_dir(r.require(item, at, "host", what), f"{at}.host")
            guest = self._guest_path(r.require(item, at, "guest", what), f"{at}.guest")
            if guest in guests:
                self._duplicate(f"{at}.guest", "guest path", guest, guests[guest])
            guests[guest] = at
            mode = r.choice(item.get("mode", "ro"), f"{at}.mode", GRANT_MODES)
            dirs.append(DirGrant(host, guest, mode))
        env = self._env(raw.get("env", {}), f"{field}.env")
        tools: list[str] = []
        for index, item in enumerate(r.array(raw.get("tools", []), f"{field}.tools")):
            tool = r.string(item, f"{field}.tools[{index}]", non_empty=True)
            if tool not in self.tool_names:
                known = ", ".join(sorted(self.tool_names)) or "none"
                r.fail(f"{field}.tools[{index}]", f"no [[tools]] entry named {tool!r} ({known})")
            tools.append(tool)
        return AgentGrants(dirs=tuple(dirs), env=env, tools=tuple(tools))

    def _tools(self, value: object) -> tuple[ToolSpec, ...]:
        r = self.r
        tools: list[ToolSpec] = []
        seen: dict[str, str] = {}
        for index, raw in enumerate(r.tables(value, "tools")):
            at = f"tools[{index}]"
            r.table(raw, at, _TOOL_KEYS, "[[tools]]")
            name = r.identifier(r.require(raw, at, "name", "this [[tools]] entry"), f"{at}.name")
            if name in seen:
                self._duplicate(f"{at}.name", "tool name", name, seen[name])
            seen[name] = at
            kind = r.choice(r.require(raw, at, "kind", "this tool"), f"{at}.kind", TOOL_KINDS)
            function = ""
            hosts: tuple[str, ...] = ()
            if kind == "python":
                function = r.string(
                    r.require(raw, at, "function", "a python tool"), f"{at}.function"
                )
                module, _, func = function.rpartition(":")
                if module.endswith(".py") and re.fullmatch(r"[A-Za-z_]\w*", func):
                    script = self._path(module, f"{at}.function")
                    if not script.is_file():
                        r.fail(f"{at}.function", f"tool script not found: {script}")
                    function = f"{script}:{func}"
                elif not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", function):
                    r.fail(
                        f"{at}.function",
                        'expected "package.module:function" or "file.py:function", '
                        f"got {function!r}",
                    )
            else:
                items = r.array(r.require(raw, at, "hosts", "an http tool"), f"{at}.hosts")
                hosts = tuple(
                    r.string(h, f"{at}.hosts[{i}]", non_empty=True) for i, h in enumerate(items)
                )
            max_bytes = r.integer(raw.get("max_bytes", 1 << 20), f"{at}.max_bytes", 1, 1 << 30)
            timeout = r.positive_number(raw.get("timeout_s", 10.0), f"{at}.timeout_s")
            tools.append(ToolSpec(name, kind, function, hosts, max_bytes, timeout))
        return tuple(tools)

    def _overrides(
        self, value: object, field: str, group: str, raw: Mapping[str, Any]
    ) -> Mapping[str, Mapping[str, Any]]:
        r = self.r
        if not isinstance(value, dict):
            r.fail(
                field, f"expected a table of instance name -> config table, got {_describe(value)}"
            )
        count = raw.get("count", 1)
        names = {group} if count == 1 else {f"{group}-{i}" for i in range(count)}
        out: dict[str, Mapping[str, Any]] = {}
        for instance, table in value.items():
            if instance not in names:
                r.fail(_join(field, instance), f"no instance {instance!r} in group {group!r}")
            out[instance] = self._config(table, _join(field, instance))
        return MappingProxyType(out)

    def _grant_dir(self, value: object, field: str) -> Path:
        path = self._path(value, field)
        if not path.exists():
            self.r.fail(field, f"granted directory not found: {path}")
        if not path.is_dir():
            self.r.fail(field, f"granted path is not a directory: {path}")
        return path

    def _guest_path(self, value: object, field: str) -> str:
        text = self.r.string(value, field, non_empty=True)
        if not text.startswith("/"):
            self.r.fail(
                field, f'expected an absolute POSIX path (starting with "/"), got {_describe(text)}'
            )
        if "\0" in text or "\\" in text:
            self.r.fail(field, f"a guest path cannot contain NUL or '\\', got {_describe(text)}")
        parts = [part for part in text.split("/") if part not in ("", ".")]
        if ".." in parts:
            self.r.fail(field, f"a guest path cannot contain '..', got {_describe(text)}")
        return posixpath.join("/", *parts)

    def _env(self, value: object, field: str) -> tuple[tuple[str, str], ...]:
        r = self.r
        if not isinstance(value, dict):
            r.fail(field, f'expected a table of NAME = "value" strings, got {_describe(value)}')
        env: list[tuple[str, str]] = []
        for name, item in value.items():
            key_field = _join(field, name)
            if not _IDENTIFIER.fullmatch(name):
                r.fail(
                    key_field,
                    "expected a variable name made of letters, digits and '_' that does not "
                    f"start with a digit, got {_describe(name)}",
                )
            text = r.string(item, key_field)
            if "\0" in text:
                r.fail(key_field, "an environment value cannot contain a NUL character")
            env.append((name, text))
        return tuple(sorted(env))

    def _config(self, value: object, field: str) -> Mapping[str, Any]:
        r = self.r
        if not isinstance(value, dict):
            r.fail(field, f"expected a table of settings, got {_describe(value)}")
        config: dict[str, Any] = {}
        for key, item in value.items():
            key_field = _join(field, key)
            if isinstance(item, dict):  # nested tables (read at run time with config_get)
                config[key] = self._config(item, key_field)
            elif isinstance(item, list):
                config[key] = tuple(
                    self._config_scalar(element, f"{key_field}[{i}]")
                    for i, element in enumerate(item)
                )
            else:
                config[key] = self._config_scalar(item, key_field)
        return MappingProxyType(config)

    def _config_scalar(self, value: object, field: str) -> str | int | float | bool:
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            if not -(2**63) <= value <= INT64_MAX:
                self.r.fail(field, f"expected an integer that fits in 64 bits, got {value}")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.r.fail(field, f"expected a finite number, got {value!r}")
            return value
        self.r.fail(
            field,
            "expected a string, integer, float, boolean or an array of those, "
            f"got {_describe(value)}",
        )

    # messages

    def _messages(self, value: object, targets: _Targets) -> tuple[MessageSpec, ...]:
        r = self.r
        messages: list[MessageSpec] = []
        for index, raw in enumerate(r.tables(value, "messages")):
            at = f"messages[{index}]"
            r.table(raw, at, _MESSAGE_KEYS, "[[messages]]")
            to = targets.resolve(r, r.require(raw, at, "to", "this [[messages]] entry"), f"{at}.to")
            kind = self._kind(raw.get("kind", 0), f"{at}.kind")
            payload = self._payload(raw, at)
            tick = self._tick(raw.get("at", 0), f"{at}.at")
            priority = self._priority(raw.get("priority", 0), f"{at}.priority")
            messages.append(MessageSpec(to, kind, payload, tick, priority))
        return tuple(messages)

    def _kind(self, value: object, field: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= RESERVED_KIND_BASE:
            self.r.fail(
                field,
                f"kind {value} is reserved for the runtime (kinds from 0x{RESERVED_KIND_BASE:X} "
                f"up); use 0 to {RESERVED_KIND_BASE - 1}",
            )
        return self.r.integer(value, field, 0, RESERVED_KIND_BASE - 1)

    def _payload(self, raw: Mapping[str, Any], at: str) -> bytes:
        r = self.r
        given = [key for key in _PAYLOAD_KEYS if key in raw]
        if len(given) > 1:
            r.fail(
                f"{at}.{given[1]}",
                f"give at most one of payload, payload_i64 and payload_hex "
                f"(this message has {given[0]} and {given[1]})",
            )
        if not given:
            return b""
        key = given[0]
        field = f"{at}.{key}"
        value = raw[key]
        if key == "payload":
            return r.string(value, field).encode("utf-8")
        if key == "payload_i64":
            if not isinstance(value, list):
                r.fail(field, f"expected an array of integers, got {_describe(value)}")
            numbers = [
                r.integer(item, f"{field}[{i}]", -(2**63), expected="a 64-bit signed integer")
                for i, item in enumerate(value)
            ]
            return struct.pack(f"<{len(numbers)}q", *numbers)
        text = r.string(value, field)
        try:
            return bytes.fromhex(text)
        except ValueError:
            r.fail(
                field,
                f'expected pairs of hex digits such as "00ff" (spaces allowed between bytes), '
                f"got {_describe(text)}",
            )

    # tensors and tasks

    def _tensors(self, value: object) -> tuple[TensorSpec, ...]:
        r = self.r
        tensors: list[TensorSpec] = []
        first_use: dict[str, str] = {}
        for index, raw in enumerate(r.tables(value, "tensors")):
            at = f"tensors[{index}]"
            r.table(raw, at, _TENSOR_KEYS, "[[tensors]]")
            name = r.identifier(r.require(raw, at, "name", "this [[tensors]] entry"), f"{at}.name")
            if name in first_use:
                self._duplicate(f"{at}.name", "tensor name", name, first_use[name])
            first_use[name] = at
            shape = self._shape(r.require(raw, at, "shape", "this [[tensors]] entry"), at)
            dtype = r.choice(raw.get("dtype", "float32"), f"{at}.dtype", TENSOR_DTYPES)
            init = r.choice(raw.get("init", "zeros"), f"{at}.init", TENSOR_INITS)
            writable = r.boolean(raw.get("writable", False), f"{at}.writable")
            tensors.append(TensorSpec(name, shape, np.dtype(dtype).str, init, writable))
        return tuple(tensors)

    def _shape(self, value: object, at: str) -> tuple[int, ...]:
        r = self.r
        field = f"{at}.shape"
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_TENSOR_RANK:
            r.fail(
                field,
                f"expected an array of 1 to {MAX_TENSOR_RANK} positive integers, "
                f"got {_describe(value)}"
                + (f" of length {len(value)}" if isinstance(value, list) else ""),
            )
        shape = tuple(
            r.integer(d, f"{field}[{i}]", 1, MAX_TENSOR_ELEMENTS) for i, d in enumerate(value)
        )
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            r.fail(
                field,
                f"shape {list(shape)} has {math.prod(shape)} elements; "
                f"at most {MAX_TENSOR_ELEMENTS} (2**28) are allowed",
            )
        return shape

    def _tasks(
        self, value: object, tensors: Sequence[TensorSpec], targets: _Targets
    ) -> tuple[TaskSpec, ...]:
        r = self.r
        names: dict[str, str] = {}
        # Every name a task input may refer to -> where it was declared.
        producers: dict[str, str] = {t.name: f"tensors[{i}]" for i, t in enumerate(tensors)}
        pending: list[_PendingTask] = []
        for index, raw in enumerate(r.tables(value, "tasks")):
            at = f"tasks[{index}]"
            what = "this [[tasks]] entry"
            r.table(raw, at, _TASK_KEYS, "[[tasks]]")
            name = r.identifier(r.require(raw, at, "name", what), f"{at}.name")
            if name in names:
                self._duplicate(f"{at}.name", "task name", name, names[name])
            names[name] = at
            kind = r.choice(r.require(raw, at, "kind", what), f"{at}.kind", TASK_KINDS)
            op = r.string(r.require(raw, at, "op", what), f"{at}.op")
            if op not in OPS:
                r.fail(
                    f"{at}.op",
                    f"unknown op {json.dumps(op)}{_suggest(op, OPS)}; known: {', '.join(OPS)}",
                )
            inputs_value = r.require(raw, at, "inputs", what)
            if not isinstance(inputs_value, list):
                r.fail(f"{at}.inputs", f"expected an array of names, got {_describe(inputs_value)}")
            inputs = tuple(
                r.string(item, f"{at}.inputs[{i}]") for i, item in enumerate(inputs_value)
            )
            output = r.identifier(r.require(raw, at, "output", what), f"{at}.output")
            if output in producers:
                first = producers[output]
                owner = "tensor" if first.startswith("tensors") else "task output"
                self._duplicate(f"{at}.output", f"name ({owner})", output, first)
            producers[output] = at
            params = self._params(raw.get("params", {}), f"{at}.params", op)
            tick = self._tick(raw.get("at", 0), f"{at}.at")
            priority = self._priority(raw.get("priority", 0), f"{at}.priority")
            notify: tuple[str, ...] = ()
            if "notify" in raw:
                notify = targets.resolve(r, raw["notify"], f"{at}.notify")
            pending.append(
                _PendingTask(index, name, kind, op, inputs, output, params, tick, priority, notify)
            )
        return self._infer(pending, tensors)

    def _params(self, value: object, field: str, op: str) -> Mapping[str, float]:
        r = self.r
        if not isinstance(value, dict):
            r.fail(field, f"expected a table of numbers, got {_describe(value)}")
        allowed = get_op(op).params
        params: dict[str, float] = {}
        for key, item in value.items():
            key_field = _join(field, key)
            if key not in allowed:
                takes = f"allowed: {', '.join(allowed)}" if allowed else "it takes none"
                r.fail(
                    key_field,
                    f"op {json.dumps(op)} has no parameter {json.dumps(key)}"
                    f"{_suggest(key, allowed)}; {takes}",
                )
            if isinstance(item, bool) or not isinstance(item, int | float):
                r.fail(key_field, f"expected a number, got {_describe(item)}")
            if not math.isfinite(item):
                r.fail(key_field, f"expected a finite number, got {item!r}")
            params[key] = float(item)
        return MappingProxyType(params)

    def _infer(
        self, pending: Sequence[_PendingTask], tensors: Sequence[TensorSpec]
    ) -> tuple[TaskSpec, ...]:
        """Infer output shapes in tick order, checking that each input exists in time."""
        r = self.r
        known = {t.name: (t.shape, t.dtype) for t in tensors}
        by_output = {task.output: task for task in pending}
        specs: dict[int, TaskSpec] = {}
        # Inputs must come from strictly earlier ticks, so tick order is a topological order.
        for task in sorted(pending, key=lambda t: (t.at, t.index)):
            at = f"tasks[{task.index}]"
            shapes: list[tuple[int, ...]] = []
            dtypes: list[str] = []
            for i, name in enumerate(task.inputs):
                field = f"{at}.inputs[{i}]"
                producer = by_output.get(name)
                if name in known and (producer is None or producer.at < task.at):
                    shape, dtype = known[name]
                elif producer is task:
                    r.fail(
                        field,
                        f"task {json.dumps(task.name)} cannot take its own output "
                        f"{json.dumps(name)} as input",
                    )
                elif producer is not None:
                    r.fail(
                        field,
                        f"{json.dumps(name)} is the output of task {json.dumps(producer.name)} "
                        f"at tick {producer.at}, which is not before this task's tick {task.at}; "
                        "an input must be a tensor or the output of a task with a smaller `at`",
                    )
                else:
                    candidates = [t.name for t in tensors] + [t.output for t in pending]
                    listed = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
                    r.fail(
                        field,
                        f"unknown input {json.dumps(name)}{_suggest(name, candidates)}; "
                        f"tensors and task outputs: {listed or 'none declared'}",
                    )
                shapes.append(shape)
                dtypes.append(dtype)
            try:
                out_shape, out_dtype = get_op(task.op).check(shapes, dtypes, task.params)
            except OpError as exc:
                described = ", ".join(
                    f"{name} {list(shape)}" for name, shape in zip(task.inputs, shapes, strict=True)
                )
                r.fail(f"{at}.inputs", f"{exc} (inputs: {described or 'none'})")
            known[task.output] = (out_shape, out_dtype)
            specs[task.index] = TaskSpec(
                name=task.name,
                kind=task.kind,
                op=task.op,
                inputs=task.inputs,
                output=task.output,
                output_shape=out_shape,
                output_dtype=out_dtype,
                params=task.params,
                at=task.at,
                priority=task.priority,
                notify=task.notify,
            )
        return tuple(specs[task.index] for task in pending)


# --- field path -> line ---------------------------------------------------------------------------


def _scan_field_lines(text: str) -> dict[str, int]:
    """Map field paths to 1-based lines by scanning TOML text that tomllib has accepted."""
    scanner = _LineScanner(text)
    # Best effort: on a surprise, keep what was found before the scanner lost its way.
    with contextlib.suppress(IndexError, ValueError, RecursionError):
        scanner.run()
    return scanner.lines


_SCALAR = re.compile(r"[^,\]}\r\n#]*")


class _LineScanner:
    """A small TOML walker that records where tables, keys and array elements start.

    It follows table headers (counting ``[[x]]`` occurrences for the index), ``key = value``
    lines, dotted keys, inline tables and arrays (also across lines), and skips strings and
    comments; it does not interpret values.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.breaks = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[str, int] = {}
        self.array_counts: dict[str, int] = {}

    def line(self) -> int:
        return bisect.bisect_left(self.breaks, self.pos) + 1

    def run(self) -> None:
        text = self.text
        table = ""
        while self.pos < len(text):
            start = self.pos
            self._skip_blank()
            if self.pos >= len(text):
                break
            char = text[self.pos]
            if char in "\r\n":
                self.pos += 1
                continue
            if char == "#":
                self._skip_to_eol()
                continue
            if char == "[":
                table = self._header()
            else:
                self._keyval(table)
            self._skip_to_eol()
            if self.pos == start:
                self.pos += 1

    def _skip_blank(self) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos] in " \t":
            self.pos += 1

    def _skip_to_eol(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _skip_space_and_comments(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                self._skip_to_eol()
            else:
                return

    def _header(self) -> str:
        line = self.line()
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        keys = self._dotted_key()
        path = ""
        for i, key in enumerate(keys):
            path = _join(path, key)
            # [agents.config] after [[agents]] belongs to the latest agents entry.
            if i < len(keys) - 1 and path in self.array_counts:
                path = f"{path}[{self.array_counts[path] - 1}]"
        if is_array:
            count = self.array_counts.get(path, 0)
            self.array_counts[path] = count + 1
            self.lines.setdefault(path, line)
            path = f"{path}[{count}]"
        self.lines[path] = line
        return path

    def _dotted_key(self) -> list[str]:
        text = self.text
        keys: list[str] = []
        while True:
            self._skip_blank()
            if text[self.pos] in "\"'":
                keys.append(self._string())
            else:
                found = _BARE_KEY.match(text, self.pos)
                if found is None:
                    raise ValueError("not a key")
                keys.append(found.group())
                self.pos = found.end()
            self._skip_blank()
            if self.pos < len(text) and text[self.pos] == ".":
                self.pos += 1
                continue
            return keys

    def _keyval(self, prefix: str) -> None:
        line = self.line()
        keys = self._dotted_key()
        path = prefix
        for key in keys[:-1]:
            path = _join(path, key)
            self.lines.setdefault(path, line)
        path = _join(path, keys[-1])
        self.lines[path] = line
        self._skip_blank()
        if self.text[self.pos] != "=":
            raise ValueError("expected '='")
        self.pos += 1
        self._value(path)

    def _value(self, path: str) -> None:
        self._skip_blank()
        char = self.text[self.pos]
        if char in "\"'":
            self._string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            found = _SCALAR.match(self.text, self.pos)
            if found is not None:
                self.pos = found.end()

    def _array(self, path: str) -> None:
        text = self.text
        self.pos += 1
        index = 0
        while True:
            self._skip_space_and_comments()
            if text[self.pos] == "]":
                self.pos += 1
                return
            element = f"{path}[{index}]"
            self.lines[element] = self.line()
            self._value(element)
            self._skip_space_and_comments()
            if text[self.pos] == ",":
                self.pos += 1
                index += 1
            elif text[self.pos] == "]":
                self.pos += 1
                return
            else:
                raise ValueError("expected ',' or ']'")

    def _inline_table(self, path: str) -> None:
        text = self.text
        self.pos += 1
        while True:
            self._skip_space_and_comments()
            if text[self.pos] == "}":
                self.pos += 1
                return
            self._keyval(path)
            self._skip_space_and_comments()
            if text[self.pos] == ",":
                self.pos += 1
            elif text[self.pos] == "}":
                self.pos += 1
                return
            else:
                raise ValueError("expected ',' or '}'")

    def _string(self) -> str:
        """Skip the string at the cursor; return its text (exact for keys, which are one line)."""
        text = self.text
        start = self.pos
        for quote in ('"""', "'''"):
            if text.startswith(quote, start):
                end = start + 3
                while not text.startswith(quote, end):
                    end += 2 if quote == '"""' and text[end] == "\\" else 1
                    if end >= len(text):
                        raise ValueError("unterminated string")
                end += 3
                # Up to two quotes right before the delimiter belong to the string.
                extra = 0
                while extra < 2 and end < len(text) and text[end] == quote[0]:
                    end += 1
                    extra += 1
                self.pos = end
                return text[start + 3 : end - 3]
        if text[start] == "'":
            end = text.index("'", start + 1)
            self.pos = end + 1
            return text[start + 1 : end]
        end = start + 1
        while text[end] != '"':
            end += 2 if text[end] == "\\" else 1
        self.pos = end + 1
        raw = text[start : end + 1]
        try:
            decoded = json.loads(raw, strict=False)
        except ValueError:
            return raw[1:-1]  # a TOML-only escape such as \U0001F600: close enough
        return decoded if isinstance(decoded, str) else raw[1:-1]
