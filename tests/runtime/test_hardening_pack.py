"""The hostile-agents pack (issue 12, item 12): every runaway at once, through the CLI.

What users rely on: a scenario full of hostile agents with no limits set still completes; each
culprit is stopped by the default limits or quotas and named with its reason, and the
well-behaved agents beside them handle every message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACK = ROOT / "tests" / "agents" / "pack" / "hostile.toml"

CULPRITS = {
    "spin": "out of fuel (limit 1000000000 per message, the default)",
    "spin_host": "timeout (limit 5000 ms per message, the default)",
    "grow": "out of memory (limit 256 MiB, the default",
    "sender": "quota exceeded: send: more than 10000 messages",
    "bulk": "quota exceeded: send: more than 64 MiB of payload",
    "hoarder": "quota exceeded: tensor_create: more than 1024 MiB",
}


def test_the_hostile_pack_completes_naming_every_culprit(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    text = PACK.read_text(encoding="utf-8")
    text = text.replace("@HOSTILE@", (ROOT / "tests" / "agents").as_posix())
    text = text.replace("@AGENTS@", (ROOT / "resources" / "agents").as_posix())
    path = tmp_path / "hostile.toml"
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "qhybrid", "--headless", "--json", "--workers", "2",
         "--device", "cpu", str(path)],
        capture_output=True, text=True, env=cli_env, timeout=150, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    data = json.loads(proc.stdout)
    agents = {a["name"]: a for a in data["agents"]}
    for name, reason in CULPRITS.items():
        assert agents[name]["state"] == "skipped", agents[name]
        assert reason in (agents[name]["error"] or ""), agents[name]
        assert name in proc.stderr  # named on the terminal too
    # The log flood and the escapes are contained, not failures.
    assert agents["chatty"]["state"] == "loaded" and agents["chatty"]["handled"] == 1
    assert agents["escapes"]["state"] == "loaded"
    # The well-behaved agents handled everything sent to them.
    relays = [a for n, a in agents.items() if n.startswith("relay")]
    assert all(a["state"] == "loaded" and a["error"] is None for a in relays)
    assert sum(a["handled"] for a in relays) >= 30
    assert agents["sink"]["state"] == "loaded"
