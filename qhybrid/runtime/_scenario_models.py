"""The scenario file format, declared once: pydantic models of the TOML tables.

Each model is one table of the file (``[stop]``, ``[[agents]]``, ``[agents.limits]``, ...); each
field is one key, with its type, default, bounds (the ``Annotated`` value types of
:mod:`~qhybrid.runtime._scenario_types`) and a description. From these declarations come the
checks of every value, the "unknown field (did you mean ...)" and "required field" messages,
and ``docs/scenario.schema.json`` (:mod:`~qhybrid.runtime._scenario_schema`). The models know
nothing of other tables or of the disk: names that refer to each other, ticks against
``stop.max_ticks``, files and folders are checked by :mod:`~qhybrid.runtime._scenario_build`.

Field order is the order of the ``allowed:`` lists in messages, of the checks, and of the
schema's properties.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qhybrid.runtime._scenario_errors import describe, problem, suggest
from qhybrid.runtime._scenario_types import (
    INT64_MIN,
    Array,
    ArrayOfTables,
    Flag,
    GuestPath,
    HexBytes,
    Identifier,
    IntRange,
    MessageKind,
    MiB,
    ModulePath,
    NonNegativeNumber,
    Numbers,
    OneOf,
    OpName,
    PathText,
    PositiveNumber,
    Settings,
    Shape,
    Text,
    Variables,
)
from qhybrid.runtime.wasm_pool import _limits as limits_defaults
from qhybrid.runtime.wasm_pool import _quotas as quota_defaults

__all__ = [
    "AgentTable",
    "DirGrantTable",
    "GrantsTable",
    "LimitsTable",
    "LlmTable",
    "MessageTable",
    "ScenarioFile",
    "StopTable",
    "Table",
    "TaskTable",
    "TensorTable",
    "ToolTable",
]

#: Message kinds from here up are the runtime's own (task notifications, control messages).
RESERVED_KIND_BASE = 0x7F000000
MAX_AGENT_COUNT = 100_000
MAX_SPAWNED = 10_000
MAX_PRIORITY = 1000
MAX_TENSOR_RANK = 4
MAX_TENSOR_ELEMENTS = 2**28
DEFAULT_MAX_TICKS = 10_000
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS = 1000
MAX_MEMORY_MB = 4096
MIN_STACK_KB = 16
MAX_STACK_KB = 65536

AGENT_ON_ERROR = ("fail", "skip", "restart")
GRANT_MODES = ("ro", "rw")
TASK_KINDS = ("gpu", "cpu")
TENSOR_DTYPES = ("float32",)
TENSOR_INITS = ("random", "zeros", "ones", "arange")
LLM_DEVICES = ("auto", "gpu", "cpu")

Tick = Annotated[int, IntRange(0)]
Priority = Annotated[int, IntRange(-MAX_PRIORITY, MAX_PRIORITY)]


class Table(BaseModel):
    """A TOML table: its keys are the model's fields, and no others."""

    # extra="forbid" puts additionalProperties: false in the schema; _check_keys words the error.
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How messages name the table ("unknown field ... in [[agents]]").
    WHAT: ClassVar[str] = "a table"
    #: How messages name one entry ("required field ... is missing from this [[agents]] entry").
    ENTRY: ClassVar[str] = "this table"

    @model_validator(mode="before")
    @classmethod
    def _check_table(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise problem(f"expected a table ({cls.WHAT}), got {describe(data)}")
        cls._check_keys(data)
        return data

    @classmethod
    def _check_keys(cls, data: dict[str, Any]) -> None:
        allowed = list(cls.model_fields)
        for key in data:
            if key not in cls.model_fields:
                raise problem(
                    f'unknown field "{key}" in {cls.WHAT}{suggest(key, allowed)}; '
                    f"allowed: {', '.join(allowed)}",
                    key,
                )
        for key, info in cls.model_fields.items():
            if info.is_required() and key not in data:
                raise problem(f'required field "{key}" is missing from {cls.ENTRY}', key)


class StopTable(Table):
    """When the run ends: a logical time, optionally a message count, and a wall-clock limit."""

    WHAT = ENTRY = "[stop]"

    max_ticks: Annotated[int, IntRange(1)] = Field(
        default=DEFAULT_MAX_TICKS, description="The run ends at this logical tick."
    )
    max_messages: Annotated[int, IntRange(1)] | None = Field(
        default=None,
        description="The run ends after this many delivered messages (default: no limit).",
    )
    timeout_s: Annotated[float, PositiveNumber()] = Field(
        default=DEFAULT_TIMEOUT_S, description="Wall-clock limit of the whole run, in seconds."
    )


class MemoryTable(Table):
    """Agents' long-term memory: quotas per agent and a persistent namespace."""

    WHAT = ENTRY = "[memory]"

    namespace: Annotated[str, Text()] = Field(
        default="",
        description="Keep each agent's memory under this name in the run store, from one run "
        "to the next (default: none).",
    )
    max_keys: Annotated[int, IntRange(1)] = Field(default=1024, description="Keys per agent.")
    max_bytes: Annotated[int, IntRange(1)] = Field(
        default=1 << 20, description="Bytes of keys plus values per agent."
    )


class LlmTable(Table):
    """The scenario's LLM: the GGUF model that agents' `llm_complete` calls go to."""

    WHAT = ENTRY = "[llm]"

    model: Annotated[str, PathText()] = Field(
        description="A GGUF file, relative to the scenario's folder or absolute."
    )
    device: Annotated[str, OneOf(*LLM_DEVICES)] = Field(
        default="auto",
        description="Where the model runs: auto (GPU when there is one), gpu or cpu.",
    )
    slots: Annotated[int, IntRange(1, 256)] = Field(
        default=8, description="Requests decoded together (continuous batching)."
    )
    n_ctx: Annotated[int, IntRange(0, 1 << 20)] = Field(
        default=0, description="Context per request in tokens; 0: the model's, at most 2048."
    )
    chat: Annotated[bool, Flag()] = Field(
        default=False,
        description="Render each prompt as a user message with the model's chat template.",
    )
    temperature: Annotated[float, NonNegativeNumber(" (0 is greedy)")] = Field(
        default=0.8, description="Sampling temperature; 0 is greedy."
    )
    top_k: Annotated[int, IntRange(0, 1 << 20)] = Field(
        default=40, description="Sample from the k most likely tokens; 0: all."
    )
    top_p: Annotated[float, PositiveNumber(at_most=1.0)] = Field(
        default=0.95,
        description="Nucleus sampling: the smallest set of tokens with this probability.",
    )
    repeat_penalty: Annotated[float, PositiveNumber()] = Field(
        default=1.0, description="Penalty on tokens already in the context; 1: none."
    )
    stop: Annotated[
        tuple[Annotated[str, Text(non_empty=True, blank_ok=True)], ...],
        Array("a list of strings"),
    ] = Field(default=(), description="Strings that end an answer.")

    @field_validator("n_ctx")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise problem("expected 0 (the model's context) or at least 2, got 1")
        return value


class LimitsTable(Table):
    """What one message may cost an agent instance; absent: no limit of the runtime's own."""

    WHAT = ENTRY = "[agents.limits]"

    fuel: Annotated[int, IntRange(1)] | None = Field(
        default=None, description="Fuel (wasmtime's instruction-like units) per message."
    )
    memory_mb: Annotated[float, MiB(MAX_MEMORY_MB)] | None = Field(
        default=None,
        description="Maximum linear memory in MiB (rounded down to 64 KiB pages, at least one).",
    )
    timeout_ms: Annotated[int, IntRange(1)] | None = Field(
        default=None, description="Wall-clock time per message, in milliseconds."
    )
    stack_kb: Annotated[int, IntRange(MIN_STACK_KB, MAX_STACK_KB)] | None = Field(
        default=None, description="WebAssembly stack size in KiB."
    )


class QuotasTable(Table):
    """What one message may ask of the runtime (issue 12); absent: the defaults of docs/limits.md.

    Past a quota the message fails (``quota exceeded: ...``) and the group's ``on_error`` applies;
    log output past ``log_bytes`` is dropped instead. Frozen and hashable: it is its own spec.
    """

    WHAT = ENTRY = "[agents.quotas]"

    sends: Annotated[int, IntRange(1, 1 << 40)] = Field(
        default=quota_defaults.MAX_SENDS, description="Messages one handler may send."
    )
    send_bytes: Annotated[int, IntRange(1, 1 << 40)] = Field(
        default=quota_defaults.MAX_SEND_BYTES,
        description="Payload bytes one handler may send, all its messages together.",
    )
    log_bytes: Annotated[int, IntRange(1, 1 << 40)] = Field(
        default=quota_defaults.MAX_LOG_BYTES,
        description="Log bytes one handler may write (its log calls and WASI stdout/stderr); "
        "the rest is dropped.",
    )
    tensor_bytes: Annotated[int, IntRange(1, 1 << 40)] = Field(
        default=quota_defaults.MAX_TENSOR_BYTES,
        description="Tensor bytes one handler may create or write (GPU job outputs included).",
    )
    llm_requests: Annotated[int, IntRange(1, 1 << 20)] = Field(
        default=quota_defaults.MAX_LLM_REQUESTS, description="LLM requests one handler may make."
    )
    llm_prompt_bytes: Annotated[int, IntRange(1, 1 << 30)] = Field(
        default=quota_defaults.MAX_LLM_PROMPT_BYTES,
        description="Bytes of one LLM prompt (checked before anything tokenises it).",
    )


class WorkersTable(Table):
    """What the worker processes share between the instances each hosts."""

    WHAT = ENTRY = "[workers]"

    memory_mb: Annotated[int, IntRange(1, 1 << 20)] = Field(
        default=limits_defaults.DEFAULT_WORKER_MEMORY_BYTES >> 20,
        description="Linear memory of all the agent instances of one worker process together, "
        "in MiB.",
    )


class DirGrantTable(Table):
    """A host directory the agent may open through WASI, at `guest` inside its sandbox."""

    WHAT = "a directory grant"
    ENTRY = "this directory grant"

    host: Annotated[str, PathText()] = Field(
        description="An existing directory, relative to the scenario's folder or absolute."
    )
    guest: Annotated[str, GuestPath()] = Field(
        description='Where the agent sees it: an absolute POSIX path such as "/data".'
    )
    mode: Annotated[str, OneOf("ro", "rw")] = Field(
        default="ro", description="ro (read only) or rw (read and write)."
    )


class GrantsTable(Table):
    """What the agent may reach through WASI beyond the default nothing."""

    WHAT = ENTRY = "[agents.grants]"

    dirs: Annotated[tuple[DirGrantTable, ...], ArrayOfTables("agents.grants.dirs")] = Field(
        default=(), description="Directories the agent may open."
    )
    env: Annotated[tuple[tuple[str, str], ...], Variables()] = Field(
        default=(), description='Environment variables the agent sees: NAME = "value".'
    )
    tools: Annotated[tuple[Annotated[str, Identifier()], ...], Array("an array of tool names")] = (
        Field(default=(), description="The [[tools]] the agent may call (ABI v2 tool_call).")
    )
    spawn: Annotated[
        tuple[Annotated[str, Identifier()], ...], Array("an array of agent group names")
    ] = Field(
        default=(),
        description="The [[agents]] groups (with max_spawned > 0) the agent may start new "
        "instances of at run time (ABI v2 spawn).",
    )
    stop_run: Annotated[bool, Flag()] = Field(
        default=False, description="Whether the agent may end the whole run (ABI v2 stop_run)."
    )


TOOL_KINDS = ("python", "http")


class ToolTable(Table):
    """A tool agents may call where granted (ABI v2 `tool_call`); results are recorded."""

    WHAT = "[[tools]]"
    ENTRY = "this [[tools]] entry"

    name: Annotated[str, Identifier()] = Field(description="The name agents call it by.")
    kind: Annotated[str, OneOf(*TOOL_KINDS)] = Field(
        description="python (a host-side function) or http (a request to allowed hosts)."
    )
    function: Annotated[str, Text(non_empty=True)] | None = Field(
        default=None,
        description='For python: "package.module:function" or "file.py:function" (beside the '
        "scenario).",
    )
    hosts: Annotated[
        tuple[Annotated[str, Text(non_empty=True)], ...], Array("an array of hosts")
    ] = Field(default=(), description="For http: the host names requests may go to.")
    max_bytes: Annotated[int, IntRange(1, 1 << 30)] = Field(
        default=1 << 20, description="The largest response or result, in bytes."
    )
    timeout_s: Annotated[float, PositiveNumber()] = Field(
        default=10.0, description="How long one call may take, in seconds."
    )


class AgentTable(Table):
    """A group of agent instances running the same WebAssembly module with the same config."""

    # count = 0 (a group only agents spawn) needs max_spawned >= 1, in the schema too.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"count": {"const": 0}}, "required": ["count"]},
            "then": {"properties": {"max_spawned": {"minimum": 1}}, "required": ["max_spawned"]},
        }
    )

    WHAT = "[[agents]]"
    ENTRY = "this [[agents]] entry"

    name: Annotated[str, Identifier()] = Field(
        description='The group\'s name; with count > 1 the instances are "name-0" ... "name-N".'
    )
    module: Annotated[str, ModulePath()] = Field(
        description="A .wasm or .wat file, relative to the scenario's folder or absolute."
    )
    count: Annotated[int, IntRange(0, MAX_AGENT_COUNT)] = Field(
        default=1,
        description="How many instances run this module from the start (0: only spawned ones).",
    )
    on_error: Annotated[str, OneOf(*AGENT_ON_ERROR)] = Field(
        default="fail",
        description="What an error in a handler does: fail the run, skip the message, or "
        "restart the instance.",
    )
    config: Annotated[dict[str, Any], Settings()] = Field(
        default_factory=dict,
        description="Settings the agent reads: strings, integers, floats, booleans or arrays.",
    )
    max_restarts: Annotated[int, IntRange(0, MAX_RESTARTS)] = Field(
        default=DEFAULT_MAX_RESTARTS,
        description='How many times an instance is replaced (only with on_error = "restart").',
    )
    limits: LimitsTable = Field(
        default_factory=LimitsTable, description="What one message may cost an instance."
    )
    grants: GrantsTable = Field(
        default_factory=GrantsTable, description="Directories and variables granted through WASI."
    )
    quotas: QuotasTable = Field(
        default_factory=QuotasTable, description="What one message may ask of the runtime."
    )
    overrides: Annotated[dict[str, Any], Settings()] = Field(
        default_factory=dict,
        description="Instance name -> config keys that replace the group's for that instance.",
    )
    max_spawned: Annotated[int, IntRange(0, MAX_SPAWNED)] = Field(
        default=0,
        description="How many more instances agents may start at run time (ABI v2 spawn, "
        "where their grants.spawn names this group); 0: none.",
    )

    @model_validator(mode="after")
    def _some_instances(self) -> AgentTable:
        if self.count == 0 and self.max_spawned == 0:
            raise problem(
                "count = 0 needs max_spawned > 0 (a group that only agents spawn); "
                "otherwise the group has no instances at all",
                "count",
            )
        return self

    @model_validator(mode="after")
    def _restarts_need_restart(self) -> AgentTable:
        if "max_restarts" in self.model_fields_set and self.on_error != "restart":
            # Most likely on_error was forgotten: a silent no-op would hide that.
            raise problem(
                f'max_restarts is used only with on_error = "restart"; this group has '
                f'on_error = "{self.on_error}"',
                "max_restarts",
            )
        return self


PAYLOAD_KEYS = ("payload", "payload_i64", "payload_hex")


class MessageTable(Table):
    """A message delivered at a tick, to an agent group (every instance) or one instance."""

    WHAT = "[[messages]]"
    ENTRY = "this [[messages]] entry"

    to: Annotated[str, Text()] = Field(description="An agent group or an instance name.")
    kind: Annotated[int, MessageKind(RESERVED_KIND_BASE)] = Field(
        default=0, description="The message kind the agent's handler sees."
    )
    payload: Annotated[str, Text()] | None = Field(
        default=None, description="A UTF-8 text payload."
    )
    payload_i64: (
        Annotated[
            tuple[Annotated[int, IntRange(INT64_MIN, expected="a 64-bit signed integer")], ...],
            Array("an array of integers"),
        ]
        | None
    ) = Field(default=None, description="A payload of little-endian 64-bit signed integers.")
    payload_hex: Annotated[bytes, HexBytes()] | None = Field(
        default=None, description='A payload of bytes in hex, such as "00ff 10".'
    )
    at: Tick = Field(default=0, description="The tick it is delivered at (before stop.max_ticks).")
    priority: Priority = Field(
        default=0, description="Within a tick, higher priorities are delivered first."
    )

    @classmethod
    def _check_keys(cls, data: dict[str, Any]) -> None:
        super()._check_keys(data)
        given = [key for key in PAYLOAD_KEYS if key in data]
        if len(given) > 1:
            raise problem(
                f"give at most one of payload, payload_i64 and payload_hex "
                f"(this message has {given[0]} and {given[1]})",
                given[1],
            )

    def payload_bytes(self) -> bytes:
        if self.payload is not None:
            return self.payload.encode("utf-8")
        if self.payload_i64 is not None:
            return struct.pack(f"<{len(self.payload_i64)}q", *self.payload_i64)
        return self.payload_hex or b""


class TensorTable(Table):
    """A tensor created in shared memory before the run."""

    WHAT = "[[tensors]]"
    ENTRY = "this [[tensors]] entry"

    name: Annotated[str, Identifier()] = Field(description="The name tasks and agents use.")
    shape: Annotated[
        tuple[Annotated[int, IntRange(1, MAX_TENSOR_ELEMENTS)], ...],
        Shape(MAX_TENSOR_RANK, MAX_TENSOR_ELEMENTS),
    ] = Field(description="1 to 4 dimensions, at most 2**28 elements in all.")
    dtype: Annotated[str, OneOf(*TENSOR_DTYPES)] = Field(
        default="float32", description="The element type."
    )
    init: Annotated[str, OneOf(*TENSOR_INITS)] = Field(
        default="zeros", description="The initial values (random draws from the scenario's seed)."
    )
    writable: Annotated[bool, Flag()] = Field(
        default=False, description="Whether agents may write it with tensor_write."
    )


class TaskTable(Table):
    """A tensor operation run at a tick, on the GPU thread or in a worker process."""

    WHAT = "[[tasks]]"
    ENTRY = "this [[tasks]] entry"

    name: Annotated[str, Identifier()] = Field(description="The task's name.")
    kind: Annotated[str, OneOf(*TASK_KINDS)] = Field(
        description="gpu (the GPU thread) or cpu (a worker process)."
    )
    op: Annotated[str, OpName()] = Field(description="The tensor operation.")
    inputs: Annotated[tuple[Annotated[str, Text()], ...], Array("an array of names")] = Field(
        description="Tensors, or outputs of tasks at earlier ticks."
    )
    output: Annotated[str, Identifier()] = Field(description="The name of the result tensor.")
    params: Annotated[dict[str, float], Numbers()] = Field(
        default_factory=dict, description="The op's parameters."
    )
    at: Tick = Field(default=0, description="The tick it runs at (before stop.max_ticks).")
    priority: Priority = Field(default=0, description="Within a tick, higher priorities run first.")
    notify: Annotated[str, Text()] | None = Field(
        default=None, description="An agent group or instance told when the task is done."
    )


def _at_least_one(schema: dict[str, Any]) -> None:
    # Required in the schema: the model's own default () is only there to word the error.
    schema.pop("default", None)
    schema["minItems"] = 1


class ScenarioFile(Table):
    """A qhybrid scenario: the agents, messages, tensors and tasks of one run, and its end."""

    WHAT = ENTRY = "the top level"
    model_config = ConfigDict(
        title="qhybrid scenario",
        json_schema_extra={"required": ["agents"]},
    )

    name: Annotated[str, Text(non_empty=True)] | None = Field(
        default=None, description="The scenario's name (default: the file's name without .toml)."
    )
    description: Annotated[str, Text()] = Field(default="", description="What the scenario shows.")
    seed: Annotated[int, IntRange(0)] = Field(
        default=0, description="The seed of every random draw; the same seed gives the same trace."
    )
    stop: StopTable = Field(default_factory=StopTable, description="When the run ends.")
    llm: LlmTable | None = Field(
        default=None, description="The model that agents' llm_complete calls go to."
    )
    agents: Annotated[tuple[AgentTable, ...], ArrayOfTables("agents")] = Field(
        default=(),
        description="At least one group of agents.",
        json_schema_extra=_at_least_one,
    )
    messages: Annotated[tuple[MessageTable, ...], ArrayOfTables("messages")] = Field(
        default=(), description="The messages that start the run."
    )
    tensors: Annotated[tuple[TensorTable, ...], ArrayOfTables("tensors")] = Field(
        default=(), description="Tensors created in shared memory before the run."
    )
    tasks: Annotated[tuple[TaskTable, ...], ArrayOfTables("tasks")] = Field(
        default=(), description="Tensor operations run at given ticks."
    )
    tools: Annotated[tuple[ToolTable, ...], ArrayOfTables("tools")] = Field(
        default=(), description="Tools agents may call where their grants name them (ABI v2)."
    )
    memory: MemoryTable = Field(
        default_factory=MemoryTable, description="Agents' long-term memory (the mem_* ABI)."
    )
    workers: WorkersTable = Field(
        default_factory=WorkersTable, description="What the worker processes share."
    )
    checkpoint_every: Annotated[int, IntRange(0)] = Field(
        default=0,
        description="Ticks between the run store's checkpoints (0: the command line's default).",
    )

    @model_validator(mode="after")
    def _some_agents(self) -> ScenarioFile:
        if not self.agents:
            raise problem("at least one [[agents]] entry is required", "agents")
        return self
