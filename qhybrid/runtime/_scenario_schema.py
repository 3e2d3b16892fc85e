"""The scenario format's JSON Schema, generated from the models, and ``qhybrid scenario``.

``docs/scenario.schema.json`` is :func:`scenario_json_schema_text` written out; a test
regenerates it and fails when the checked-in file differs, so the published schema always says
what :func:`~qhybrid.runtime._scenario.load_scenario` accepts. Editors read it for completion,
hover text and checking while one types (taplo, Even Better TOML: see ``docs/scenarios.md``).
The schema checks each table and value on its own; what needs the whole scenario or the disk
(targets, task shapes, files) is left to ``qhybrid scenario check``.

``qhybrid scenario schema [--write FILE]`` prints (or writes) the schema; ``qhybrid scenario
check FILE...`` loads each scenario as ``qhybrid --headless`` would, without running it, and
exits 2 at the first one that is wrong, with its ``file:line: field: message``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from qhybrid._argparse import EXIT_BAD_INPUT, EXIT_OK, Parser
from qhybrid.runtime._scenario_models import ScenarioFile

__all__ = ["main", "scenario_json_schema", "scenario_json_schema_text"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _TomlJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, for a TOML file: no nulls, no titles made up from field names."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        # TOML has no null: an optional key is one that may be left out.
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:  # "absent" is the default: nothing to show
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema of scenario files (JSON Schema 2020-12)."""
    schema = ScenarioFile.model_json_schema(schema_generator=_TomlJsonSchema)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def scenario_json_schema_text() -> str:
    """:func:`scenario_json_schema` as the text of ``docs/scenario.schema.json``."""
    return json.dumps(scenario_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qhybrid scenario",
        description="The scenario format: its JSON Schema, and checking scenario files.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of scenario files (docs/scenario.schema.json)"
    )
    schema.add_argument("--write", type=Path, metavar="FILE", help="write it to FILE instead")
    check = commands.add_parser(
        "check", help="check scenario files as `qhybrid --headless` would, without running them"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    return parser


def main(argv: list[str]) -> int:
    """``qhybrid scenario ...``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        text = scenario_json_schema_text()
        if args.write is None:
            sys.stdout.write(text)
            return EXIT_OK
        try:
            args.write.write_text(text, encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"qhybrid scenario: error: {args.write}: {exc.strerror or exc}\n")
            return EXIT_BAD_INPUT
        return EXIT_OK
    from qhybrid.runtime._scenario import ScenarioError, load_scenario

    for file in args.files:
        try:
            scenario = load_scenario(file)
        except ScenarioError as exc:
            sys.stderr.write(f"qhybrid scenario: error: {exc}\n")
            return EXIT_BAD_INPUT
        agents = sum(agent.count for agent in scenario.agents)
        sys.stdout.write(f"{file}: ok ({scenario.name}: {agents} agents)\n")
    return EXIT_OK
