"""Scenario files: a TOML description of a run, loaded and checked before anything starts.

A scenario names the agent groups (WebAssembly modules, how many instances of each, their
limits, the directories and environment variables granted to them, and what an error does), the
initial messages, the tensors created in shared memory and the tensor tasks, the LLM, and when
the run stops. :func:`load_scenario` reads a file and :func:`parse_scenario` a string; both check
everything up front (types, ranges, names, message targets, module files and granted
directories, task inputs and op shapes) so that a mistake is reported as one
:class:`ScenarioError` naming the file, the line and the field (``demo.toml:13: agents[0].count:
expected an integer from 1 to 100000, got -1``), before a worker or the GPU thread is started.
The format is documented in ``docs/scenarios.md``; ``docs/scenario.schema.json`` is its JSON
Schema, for editors.

The parts, one job each:

- ``_scenario_toml``: reading the file (a regular file of bounded size, UTF-8), TOML syntax
  errors with their line, and the map from field paths to lines (tomllib gives no positions).
- ``_scenario_models``: the format itself, as pydantic models, one per table, one field per key.
- ``_scenario_types``: the value checks those fields are annotated with, each with the message
  the file's author reads and the constraint the JSON Schema shows.
- ``_scenario_errors``: :class:`ScenarioError`, pydantic's errors turned into it, "did you mean".
- ``_scenario_build``: what one value cannot tell (names, targets, ticks, task shapes, files)
  and the specs built from the models.
- ``_scenario_specs``: the frozen specs the runtime reads (:class:`Scenario`, :class:`AgentSpec`,
  ...), this module's public API with the two functions.
- ``_scenario_schema``: ``docs/scenario.schema.json`` from the models, and ``qhybrid scenario``.

Why pydantic (v2) rather than msgspec: the messages. A pydantic error is structured (its type,
its location as a tuple of keys and indexes, the input, the context), and a custom type is a
small class with a validator and a JSON Schema of its own, so the checks keep the exact
``file:line: field: message`` texts and the "did you mean" suggestions users and tests rely on,
while pydantic walks the tables, arrays, defaults and required keys. msgspec stops at its first
error with an English sentence ("Expected `int`, got `str` - at `$.agents[0].count`") whose
location would have to be parsed back out of the text, and checks of our own go through its
decode hook, whose errors lose that structure too. Both generate a JSON Schema. Speed
is not the concern: a scenario is checked once; the models check the demo's tables in about
0.3 ms (the whole load, with TOML and the files, takes about 2.5 ms, as before).

Adding a field (for example ``[checkpoints] every = 100``, ``[agents.quotas] messages = ...``):

1. Declare it, once, on its table's model in ``_scenario_models`` (a new table: a new
   ``Table`` subclass with ``WHAT``/``ENTRY`` names, and a field for it on its parent). The
   annotation says the type and the bounds with a ``_scenario_types`` check (``Annotated[int,
   IntRange(1)]``; write a new check class there if none fits), ``Field`` the default and the
   description. That is the validation, the messages with file, line and "did you mean", the
   ``allowed:`` list and the JSON Schema.
2. For the runtime to read it, give the spec in ``_scenario_specs`` a field of the same name
   and type (or, for a new table, a field typed with the model class itself: models are frozen
   and can be specs, hashable as long as their fields are tuples rather than lists or dicts).
   ``_scenario_build._copy`` fills same-named fields; code is needed there only when the
   runtime reads the value differently from how it is written (a path resolved, MiB to bytes,
   a target name to instance names) or when it refers to other parts of the scenario.
3. Regenerate the schema: ``qhybrid scenario schema --write docs/scenario.schema.json``
   (a test in ``tests/runtime/test_scenario.py`` fails while it is out of date, and another
   while a key of a model has no field on its spec), and document the key in
   ``docs/scenarios.md``.

When a file has several mistakes, the one reported is the first in the file among those the
models find; what ``_scenario_build`` checks comes after them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from qhybrid.runtime._scenario_build import WASM_PAGE_BYTES, build_scenario
from qhybrid.runtime._scenario_errors import ScenarioError, from_validation_error
from qhybrid.runtime._scenario_models import (
    AGENT_ON_ERROR,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_TICKS,
    DEFAULT_TIMEOUT_S,
    GRANT_MODES,
    MAX_AGENT_COUNT,
    MAX_MEMORY_MB,
    MAX_PRIORITY,
    MAX_RESTARTS,
    MAX_STACK_KB,
    MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK,
    MIN_STACK_KB,
    RESERVED_KIND_BASE,
    TASK_KINDS,
    TENSOR_DTYPES,
    TENSOR_INITS,
    ScenarioFile,
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
from qhybrid.runtime._scenario_toml import (
    MAX_SCENARIO_BYTES,
    parse_toml,
    read_scenario_text,
    scan_field_lines,
)
from qhybrid.runtime._scenario_types import INT64_MAX, ModulePath

__all__ = [
    "AGENT_ON_ERROR",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_MAX_TICKS",
    "DEFAULT_TIMEOUT_S",
    "GRANT_MODES",
    "INT64_MAX",
    "MAX_AGENT_COUNT",
    "MAX_MEMORY_MB",
    "MAX_PRIORITY",
    "MAX_RESTARTS",
    "MAX_SCENARIO_BYTES",
    "MAX_STACK_KB",
    "MAX_TENSOR_ELEMENTS",
    "MAX_TENSOR_RANK",
    "MIN_STACK_KB",
    "MODULE_SUFFIXES",
    "RESERVED_KIND_BASE",
    "TASK_KINDS",
    "TENSOR_DTYPES",
    "TENSOR_INITS",
    "WASM_PAGE_BYTES",
    "AgentGrants",
    "AgentLimits",
    "AgentSpec",
    "DirGrant",
    "LlmSpec",
    "MemorySpec",
    "MessageSpec",
    "Scenario",
    "ScenarioError",
    "StopSpec",
    "TaskSpec",
    "TensorSpec",
    "ToolSpec",
    "load_scenario",
    "parse_scenario",
]

MODULE_SUFFIXES = ModulePath.SUFFIXES


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check the scenario file at ``path``; module paths are relative to its folder."""
    text = read_scenario_text(path)
    return parse_scenario(text, source=path, base_dir=Path(path).parent)


def parse_scenario(
    text: str,
    *,
    source: str | os.PathLike[str] | None = None,
    base_dir: Path | None = None,
    require_model: bool = True,
) -> Scenario:
    """Check the scenario in ``text``.

    ``require_model=False`` accepts an ``[llm]`` model file that is not there (a replay
    answers from the run store and never opens it).

    ``source`` names the file in errors and gives the default scenario name (its stem);
    module paths are relative to ``base_dir``, by default the source's folder, else the
    current directory.
    """
    display = None if source is None else os.fspath(source)
    source_path = None if source is None else Path(source)
    text = text.removeprefix("\ufeff")
    data = parse_toml(text, display)
    lines = scan_field_lines(text)
    try:
        file = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, display, lines) from None
    if base_dir is None:
        base_dir = source_path.parent if source_path is not None else Path.cwd()
    default_name = source_path.stem if source_path is not None and source_path.stem else ""
    return build_scenario(
        file,
        source=source_path,
        display=display,
        lines=lines,
        base_dir=base_dir,
        default_name=default_name or "scenario",
        require_model=require_model,
    )
