"""Benchmarks of the runtime: ``qhybrid bench ...``.

Each benchmark measures qhybrid against a peer run side by side on the same machine and
reports ratios (see ``docs/benchmarks.md``). This package may import :mod:`qhybrid.runtime`;
the runtime never imports it, and nothing here imports Qt.

``qhybrid bench`` is :func:`qhybrid.bench._cli.main`; from Python::

    from qhybrid.bench import DispatchConfig, run_dispatch

    report = run_dispatch(DispatchConfig(workers=2, agents=64, steps=128_000, ray=False))
    print(report.to_json()["steps_per_s"], report.vs_inprocess_per_worker)

The names are imported on first use (PEP 562), so that a benchmark's own process (``bench
llm`` measures qhybrid in a spawned child) imports only what that benchmark needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qhybrid.runtime._lazy import lazy_names

if TYPE_CHECKING:
    from qhybrid.bench._dispatch import (
        GOAL_VS_INPROCESS_PER_WORKER,
        GOAL_VS_RAY,
        BenchmarkError,
        DispatchConfig,
        DispatchReport,
        InprocessFigures,
        PoolFigures,
        RayFigures,
        machine_info,
        ping_scenario,
        run_dispatch,
        weighted_percentile,
    )

_LAZY: dict[str, str] = {
    "GOAL_VS_INPROCESS_PER_WORKER": "qhybrid.bench._dispatch",
    "GOAL_VS_RAY": "qhybrid.bench._dispatch",
    "BenchmarkError": "qhybrid.bench._dispatch",
    "DispatchConfig": "qhybrid.bench._dispatch",
    "DispatchReport": "qhybrid.bench._dispatch",
    "InprocessFigures": "qhybrid.bench._dispatch",
    "PoolFigures": "qhybrid.bench._dispatch",
    "RayFigures": "qhybrid.bench._dispatch",
    "machine_info": "qhybrid.bench._dispatch",
    "ping_scenario": "qhybrid.bench._dispatch",
    "run_dispatch": "qhybrid.bench._dispatch",
    "weighted_percentile": "qhybrid.bench._dispatch",
}

__all__ = [
    "GOAL_VS_INPROCESS_PER_WORKER",
    "GOAL_VS_RAY",
    "BenchmarkError",
    "DispatchConfig",
    "DispatchReport",
    "InprocessFigures",
    "PoolFigures",
    "RayFigures",
    "machine_info",
    "ping_scenario",
    "run_dispatch",
    "weighted_percentile",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
