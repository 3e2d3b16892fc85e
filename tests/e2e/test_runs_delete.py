"""``qhybrid runs delete RUN``: the run goes with what only it used; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qhybrid.runs_cli import main
from qhybrid.runtime.store import RunStore
from tests.runtime.test_state_at import record, relays


def test_runs_delete_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "runs.sqlite"
    scenario = relays(tmp_path, hops=3)
    keep, gone = record(store, scenario, every=2), record(store, scenario, every=2, seed=5)
    assert main(["runs", "delete", gone[:-1] + "?", "--store", str(store)]) == 2
    assert "no run" in capsys.readouterr().err
    assert main(["runs", "delete", gone, "--store", str(store), "--json"]) == 0
    out = capsys.readouterr()
    (deleted,) = json.loads(out.out)["deleted"]
    assert deleted["run_id"] == gone and deleted["runs"] == 1
    assert f"deleted run {gone}" in out.err
    with RunStore(store, readonly=True) as s:
        assert [r["run_id"] for r in s.runs()] == [keep]
    assert main(["runs", "delete", "--store", str(store)]) == 2
    assert main(["runs", keep, "--store", str(store)]) == 2  # `runs ID` is not a delete
    assert "invalid choice" in capsys.readouterr().err
    with RunStore(store, readonly=True) as s:
        assert len(s.runs()) == 1
