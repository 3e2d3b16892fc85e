"""The tour's host-side tool (resources/scenarios/tour.toml, docs/tour.md).

A scenario's ``[[tools]]`` entry of kind "python" names a function; an agent granted the tool
calls it with ``tool_call("sum", '{"values": [...]}')`` and gets the JSON result back as a
TOOL_DONE message. The result is recorded in the trace.
"""

from __future__ import annotations


def total(values: list[int]) -> int:
    """The sum of a list of integers."""
    if not all(isinstance(v, int) for v in values):
        raise TypeError("values must be integers")
    return sum(values)
