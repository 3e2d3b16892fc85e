"""The limits every agent runs under when its scenario sets none (issue 12).

Ticks are lock-step: one handler that never returns stops every agent. So no agent runs
without bounds: a limit the scenario leaves unset takes the default here, and a scenario raises
(or lowers) a limit by setting it in ``[agents.limits]``. The defaults are documented in
``docs/limits.md``; they are generous for any real handler and stop a runaway one in seconds.

- **fuel** (wasmtime's instruction-like units) per message: deterministic, it is the limit that
  normally stops a loop, and the same message runs out of fuel at the same place every run;
- **time** per message: a safety net for what fuel does not count (time spent in host calls in
  a loop), the only limit that depends on the machine's speed;
- **memory** per instance, and a **total across the instances of one worker** process, so a
  worker's agents together cannot exhaust the host.

Start-up runs under the same limits: the start function, ``_initialize``, ``qh_abi_version`` and
``qh_init`` each get a fresh budget.
"""

from __future__ import annotations

from qhybrid.runtime.wasm_pool._protocol import Limits

__all__ = [
    "DEFAULT_FUEL",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TIMEOUT_MS",
    "DEFAULT_WORKER_MEMORY_BYTES",
    "effective_limits",
]

#: Fuel per message: a few tenths of a second of a tight loop on a 2020s CPU core, so that
#: even on a loaded machine a runaway loop runs out of fuel (deterministic) well before the
#: time limit (which is not).
DEFAULT_FUEL = 1_000_000_000
#: Wall-clock time per message, in milliseconds.
DEFAULT_TIMEOUT_MS = 5_000
#: Linear memory per instance (wasm32 allows 4 GiB).
DEFAULT_MEMORY_BYTES = 256 << 20
#: Linear memory of all the instances of one worker process together.
DEFAULT_WORKER_MEMORY_BYTES = 2 << 30


def effective_limits(limits: Limits) -> tuple[Limits, frozenset[str]]:
    """``limits`` with every unset limit at its default, and the names of those defaulted."""
    defaulted = set()
    fuel, timeout_ms, memory = limits.fuel, limits.timeout_ms, limits.memory_bytes
    if fuel is None:
        fuel = DEFAULT_FUEL
        defaulted.add("fuel")
    if timeout_ms is None:
        timeout_ms = DEFAULT_TIMEOUT_MS
        defaulted.add("timeout_ms")
    if memory is None:
        memory = DEFAULT_MEMORY_BYTES
        defaulted.add("memory")
    return Limits(fuel, memory, timeout_ms, limits.stack_bytes), frozenset(defaulted)
