"""The KV cache's size, checked against the memory there is before it is allocated.

``n_slots`` sequences of ``n_ctx`` positions need ``2 * n_layer * n_slots * n_ctx * n_head_kv
* head_dim`` float32 values (keys and values of every layer). A context of a billion positions,
or 256 slots of a million, is within what the flags and the scenario format accept but far
beyond any machine: the check refuses it with a message that says what fits, instead of a
memory-allocation traceback (or the kernel's OOM killer) later.
"""

from __future__ import annotations

import os
from pathlib import Path

from qhybrid.runtime.llm._gguf import ModelConfig, ModelError, ModelFile

__all__ = ["KV_MEMORY_FRACTION", "available_memory", "check_kv_cache", "kv_cache_bytes"]

#: The share of the available memory the KV cache may take (the weights, the runtime and the
#: rest of the machine need the remainder).
KV_MEMORY_FRACTION = 0.8
_F32 = 4


def kv_cache_bytes(config: ModelConfig, n_slots: int, n_ctx: int) -> int:
    """Bytes of the whole KV cache (every layer, keys and values)."""
    return 2 * config.n_layer * n_slots * n_ctx * config.n_head_kv * config.head_dim * _F32


def _cgroup_room() -> int | None:
    """What this process's cgroup (v2) may still use, when it has a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - current)


def available_memory() -> int | None:
    """Bytes of host memory available now (free plus reclaimable), or None if unknown."""
    room: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if room is None and hasattr(os, "sysconf"):
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            room = None
    cgroup = _cgroup_room()
    if cgroup is not None:
        room = cgroup if room is None else min(room, cgroup)
    return room


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def _slots(n: int) -> str:
    return f"{n} slot" if n == 1 else f"{n} slots"


def check_kv_cache(
    model: ModelFile,
    n_slots: int,
    n_ctx: int,
    *,
    available: int | None = None,
    max_buffer: int | None = None,
) -> None:
    """Raise :class:`ModelError` when the KV cache cannot fit, saying what would.

    ``available`` is the host memory to count on (default: what is available now);
    ``max_buffer`` the largest buffer the GPU can bind, when the cache goes to the GPU (one
    layer's keys, or values, are one buffer).
    """
    c = model.config
    per_position = kv_cache_bytes(c, 1, 1)
    need = per_position * n_slots * n_ctx
    what = f"{model.path}: the KV cache for {_slots(n_slots)} x {n_ctx} positions"
    if max_buffer is not None:
        per_layer = need // (2 * c.n_layer)
        if per_layer > max_buffer:
            fit = max_buffer // (per_layer // (n_slots * n_ctx))
            raise ModelError(
                f"{what} needs {_gib(per_layer)} per layer, more than the largest GPU buffer "
                f"({_gib(max_buffer)}): at most {fit // n_slots} positions with "
                f"{_slots(n_slots)}, or run it on the CPU"
            )
    room = available_memory() if available is None else available
    if room is None:
        return  # unknown on this platform: the allocation itself will tell
    budget = int(room * KV_MEMORY_FRACTION)
    if need <= budget:
        return
    positions = budget // (per_position * n_slots)
    slots = budget // (per_position * n_ctx)
    raise ModelError(
        f"{what} needs {_gib(need)} ({c.n_layer} layers, float32), but only "
        f"{_gib(budget)} may be used ({int(KV_MEMORY_FRACTION * 100)} % of the "
        f"{_gib(budget / KV_MEMORY_FRACTION)} available): at most {positions} positions "
        f"with {_slots(n_slots)}"
        + (f", or {_slots(slots)} of {n_ctx} positions" if slots >= 1 else "")
        + " (n_ctx, slots)"
    )
