"""Fair LLM scheduling between agents (issue 12, item 6).

What users rely on: one agent with many requests does not keep the model from the others. The
engine admits, into a free slot, the earliest waiting request of the owner that holds the
fewest slots; the order depends only on the queue (the same every run), and without owners it
stays arrival order.
"""

from __future__ import annotations

from qhybrid.runtime.llm._engine import GenerationParams, LlmEngine
from tests.runtime.llm.test_engine import CountingRunner, _letters, _run


def _first_steps(owners: list[object], n_slots: int = 2) -> list[list[int]]:
    runner = CountingRunner(n_slots=n_slots)
    engine = LlmEngine(runner, _letters, eos_ids=[])
    # Prompt i is [i]: a step's items show which requests it ran (the prefill feeds the prompt).
    for i, owner in enumerate(owners):
        engine.submit([i], GenerationParams(max_tokens=2), owner=owner)
    _run(engine)
    return [[tokens[0] for _, tokens, start in step if start == 0] for step in runner.steps]


def test_a_later_agent_is_admitted_before_a_greedy_agents_backlog() -> None:
    # Agent 1 queues four requests, then agent 2 one: with two slots, agent 2's request takes
    # the second slot at once rather than waiting behind agent 1's backlog.
    admitted = _first_steps([1, 1, 1, 1, 2])
    assert admitted[0] == [0, 4], admitted
    assert [p for step in admitted for p in step] == [0, 4, 1, 2, 3]


def test_slots_rotate_between_agents_with_backlogs() -> None:
    admitted = _first_steps([1, 1, 1, 2, 2, 2, 3])
    assert admitted[0] == [0, 3]  # one each for agents 1 and 2
    # Then agent 3 (holding none), then back and forth between 1 and 2.
    assert [p for step in admitted for p in step] == [0, 3, 6, 1, 4, 2, 5]


def test_without_owners_the_order_is_arrival_order() -> None:
    admitted = _first_steps([None] * 5)
    assert [p for step in admitted for p in step] == [0, 1, 2, 3, 4]


def test_the_order_is_the_same_every_time() -> None:
    owners: list[object] = [3, 1, 1, 2, 3, 3, 1, 2, 2]
    assert _first_steps(owners, 3) == _first_steps(owners, 3)
