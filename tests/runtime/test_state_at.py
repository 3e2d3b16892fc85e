"""A recorded run's state at a tick, rebuilt from its nearest checkpoint by replay; deleting a
run and what it alone used; full message payloads kept beside the trace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qhybrid._resources import resource_path
from qhybrid.runtime import RuntimeConfig, load_scenario
from qhybrid.runtime.store import DurableRuntime, RunRecorder, RunStore, StoreError, state_at


def relays(tmp_path: Path, hops: int = 12) -> Path:
    path = tmp_path / "relays.toml"
    path.write_text(
        f"""
name = "relays"
[stop]
max_ticks = 200
[[agents]]
name = "relay"
module = "{resource_path("agents", "relay.wat").as_posix()}"
count = 4
[[agents]]
name = "sink"
module = "{resource_path("agents", "sink.wat").as_posix()}"
[[messages]]
to = "relay"
kind = 1
payload_i64 = [{hops}, 0]
[[messages]]
to = "sink"
kind = 9
at = 3
payload = "a payload longer than the thirty-two bytes the trace keeps"
""",
        encoding="utf-8",
    )
    return path


def record(store: Path, scenario_path: Path, every: int, seed: int = 1) -> str:
    """Record a run in this process, as ``qhybrid --headless`` does."""
    scenario = load_scenario(scenario_path).with_seed(seed)
    with RunStore(store) as s:
        run_id = s.new_run(
            scenario_name=scenario.name,
            scenario_path=str(scenario_path),
            scenario_text=scenario_path.read_text("utf-8"),
            seed=seed,
            config={"workers": 1, "checkpoint_every": every},
            version="test",
        )
    recorder = RunRecorder(store, run_id, checkpoint_every=every)
    runtime = DurableRuntime(scenario, RuntimeConfig(workers=1, device="cpu"), recorder=recorder)

    async def go() -> None:
        async with runtime:
            result = await runtime.run()
        summary = result.to_json()
        assert (
            recorder.finish(
                runtime, result.status, result.reason, trace_hash=result.trace_hash, summary=summary
            )
            is None
        )

    asyncio.run(go())
    return run_id


def delivered_by(store: Path, run_id: str, tick: int) -> int:
    with RunStore(store, readonly=True) as s:
        return sum(
            1
            for _, t, line in s.records(run_id, to_tick=tick)
            if line.startswith(("('ok'", "('fail'"))
        )


def test_state_at_a_tick_is_the_same_from_a_checkpoint_and_from_the_start(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    scenario = relays(tmp_path)
    with_cps = record(store, scenario, every=4)
    without = record(store, scenario, every=0)
    with RunStore(store, readonly=True) as s:
        assert s.checkpoint_ticks(with_cps)[:2] == [4, 8]
        assert s.checkpoint_ticks(without) == []
    a = state_at(store, with_cps, 6)
    b = state_at(store, without, 6)
    assert (a.checkpoint, a.replayed_ticks) == (4, 2)  # from the checkpoint at 4: ticks 5, 6
    assert (b.checkpoint, b.replayed_ticks) == (None, 7)  # from the start: ticks 0 .. 6
    assert a.divergence is None and b.divergence is None
    assert a.tick == b.tick == 6
    assert [(g.name, g.state, g.handled) for g in a.agents] == [
        (g.name, g.state, g.handled) for g in b.agents
    ]
    assert [ag.name for ag in a.agents] == ["relay-0", "relay-1", "relay-2", "relay-3", "sink"]
    # What the trace says was delivered by tick 6, the state's counters and agents agree on.
    handled = sum(g.handled for g in a.agents)
    assert a.counters["delivered"] == handled == delivered_by(store, with_cps, 6)
    assert all(g.snapshot_bytes and g.snapshot_bytes > 0 for g in a.agents)
    # The queue after tick 6: the four tokens in flight (one per relay the scenario started),
    # due at tick 7, payloads in full: each with 12 - 7 hops left.
    assert a.queue == b.queue
    assert [(q.tick, q.kind, len(q.payload or b"")) for q in a.queue] == [(7, 1, 16)] * 4
    assert {int.from_bytes((q.payload or b"")[:8], "little") for q in a.queue} == {12 - 7}
    # Later ticks see more handled; a tick past the end gives the end's state.
    later = state_at(store, with_cps, 10)
    assert sum(g.handled for g in later.agents) > handled
    end = state_at(store, with_cps, 10_000)
    assert end.queue == [] and end.asked == 10_000 and end.tick < 200


def test_state_at_refuses_a_bad_tick_and_an_unknown_run(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, relays(tmp_path, hops=2), every=0)
    with pytest.raises(ValueError, match="tick must be >= 0"):
        state_at(store, run_id, -1)
    with pytest.raises(StoreError, match="no run 'nope'"):
        state_at(store, "nope", 1)


def test_long_payloads_are_kept_in_full_beside_the_trace(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    run_id = record(store, relays(tmp_path, hops=4), every=0)
    with RunStore(store, readonly=True) as s:
        payloads = s.payloads(run_id)
        lines = [line for _, _, line in s.records(run_id)]
    assert list(payloads.values()) == [
        b"a payload longer than the thirty-two bytes the trace keeps"
    ]
    ((tick, seq),) = payloads
    # The trace's record of that message (tick 3, the same queue seq) keeps only a digest.
    (line,) = [x for x in lines if x.startswith(f"('ok', 3, {seq}, -1, ")]
    assert tick == 3 and "'a payload" not in line


def test_deleting_a_run_frees_what_only_it_used_and_keeps_its_forks_readable(
    tmp_path: Path,
) -> None:
    store = tmp_path / "runs.sqlite"
    scenario = relays(tmp_path)
    first = record(store, scenario, every=4)
    second = record(store, scenario, every=4)  # the same run again: the same blobs
    with RunStore(store) as s:
        s._conn.execute(
            "UPDATE runs SET parent = ?, fork_tick = 4 WHERE run_id = ?", (first, second)
        )
        blobs_before = s._conn.execute("SELECT count(*) FROM blobs").fetchone()[0]
        done = s.delete_run(first)
        assert done["runs"] == 1 and done["records"] > 0 and done["checkpoints"] > 0
        assert done["blobs"] == 0  # every snapshot is also the other run's
        assert done["forks"] == [second]
        assert [r["run_id"] for r in s.runs()] == [second]
        with pytest.raises(StoreError, match=f"no run '{first}'"):
            s.run(first)
        assert s.run(second)["parent_deleted"] is True
        assert s._conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == blobs_before
    # The fork (here: the second run) still opens at a tick from its own checkpoint.
    assert state_at(store, second, 6).checkpoint == 4
    with RunStore(store) as s:
        done = s.delete_run(second)
        assert done["blobs"] > 0
        assert s._conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
        assert s.runs() == []


def test_a_running_run_is_not_deleted(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as s:
        run_id = s.new_run(
            scenario_name="s",
            scenario_path="/x/s.toml",
            scenario_text="",
            seed=1,
            config={},
            version="test",
        )
        with pytest.raises(StoreError, match="still running"):
            s.delete_run(run_id)


def test_a_message_posted_from_outside_is_recorded_and_replayed(tmp_path: Path) -> None:
    """The window's chat posts between ticks: the store keeps each post, and a replay (and
    the state at a later tick) posts it again at the same point, so the traces match."""
    from qhybrid.runs_cli import main as runs_main

    store = tmp_path / "runs.sqlite"
    path = relays(tmp_path, hops=6)
    scenario = load_scenario(path)
    with RunStore(store) as s:
        run_id = s.new_run(
            scenario_name=scenario.name,
            scenario_path=str(path),
            scenario_text=path.read_text("utf-8"),
            seed=scenario.seed,
            config={"workers": 1},
            version="test",
        )
    recorder = RunRecorder(store, run_id, checkpoint_every=2)
    runtime = DurableRuntime(scenario, RuntimeConfig(workers=1, device="cpu"), recorder=recorder)

    async def go() -> None:
        async with runtime:
            while await runtime.step():
                if runtime.tick == 2:
                    runtime.post("relay-1", (3).to_bytes(8, "little") * 2, kind=1)
            result = runtime.result
            assert result is not None
        assert (
            recorder.finish(
                runtime,
                result.status,
                result.reason,
                trace_hash=result.trace_hash,
                summary=result.to_json(),
            )
            is None
        )

    asyncio.run(go())
    with RunStore(store, readonly=True) as s:
        assert [k for k in s.effects(run_id)] == ["(post) 00000000"]
    assert runs_main(["replay", run_id, "--store", str(store)]) == 0
    # The state after tick 3 (from the checkpoint at 2, the post made again): relay-1 got it.
    at = state_at(store, run_id, 3)
    assert at.checkpoint == 2 and at.divergence is None
    # Without the recorded post, the replay differs: what makes it the post that counts.
    with RunStore(store) as s, s.transaction() as conn:
        conn.execute("DELETE FROM effects")
    assert runs_main(["replay", run_id, "--store", str(store)]) == 1


def test_a_forks_state_before_and_after_its_fork_tick_and_after_its_parent_goes(
    tmp_path: Path,
) -> None:
    """A fork with another seed: before its fork tick its state is its parent's; from the
    fork tick on, its own checkpoint there (taken reseeded) rebuilds it, parent or not."""
    from qhybrid.runs_cli import main as runs_main

    store = tmp_path / "runs.sqlite"
    parent = record(store, relays(tmp_path), every=4)
    args = ["fork", parent, "--at", "6", "--seed", "9", "--store", str(store)]
    assert runs_main([*args, "--checkpoint-every", "4"]) == 0
    with RunStore(store, readonly=True) as s:
        fork = s.run(parent)["children"][0]
        assert s.checkpoint_ticks(fork)[0] == 6  # at its fork tick
    before = state_at(store, fork, 3)
    assert before.from_run == parent and before.divergence is None
    assert before.agents == state_at(store, parent, 3).agents
    after = state_at(store, fork, 8)
    assert after.checkpoint == 6 and after.divergence is None and after.from_run is None
    assert after.queue != state_at(store, parent, 8).queue  # another seed, other hops
    with RunStore(store) as s:
        s.delete_run(parent)
    again = state_at(store, fork, 8)
    assert again.divergence is None and again.agents == after.agents
