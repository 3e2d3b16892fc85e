"""What a fork changes at its tick: agents' random streams (another seed)."""

from __future__ import annotations

import pickle

from qhybrid.runtime._seeding import derive_seed
from qhybrid.runtime.store._codec import plain_pickle


def fork_seed(seed: int, agent: str, tick: int) -> int:
    """An agent's new random-stream state in a fork with ``seed`` at ``tick``."""
    return derive_seed(seed, "agent", agent, "fork", str(tick)) & ((1 << 64) - 1)


def reseed_snapshot(snapshot: bytes, state: int) -> bytes:
    """An agent snapshot (see ``AgentHost.snapshot``) with its random stream set to ``state``."""
    how, host, body = plain_pickle(snapshot)  # never a plain pickle.loads: see _codec
    host = (state, *tuple(host)[1:])
    return pickle.dumps((how, host, body))
