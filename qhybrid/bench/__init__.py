"""Benchmarks of the runtime: ``qhybrid bench ...``.

Each benchmark measures qhybrid against a peer run side by side on the same machine and
reports ratios (see ``docs/benchmarks.md``). This package may import :mod:`qhybrid.runtime`;
the runtime never imports it, and nothing here imports Qt.

``qhybrid bench`` is :func:`qhybrid.bench._cli.main`; from Python::

    from qhybrid.bench import DispatchConfig, run_dispatch

    report = run_dispatch(DispatchConfig(workers=2, agents=64, steps=128_000, ray=False))
    print(report.to_json()["steps_per_s"], report.vs_inprocess_per_worker)
"""

from __future__ import annotations

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
