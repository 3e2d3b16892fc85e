"""ABI v2 services on the orchestrator's side: HTTP tools on an allow-list with a size limit,
Python tools, recorded results replayed instead of called again."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qhybrid.runtime._agent_services import AgentServices
from qhybrid.runtime._scenario import ToolSpec
from qhybrid.runtime.wasm_pool import KIND_TOOL_DONE


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"x" * 5000 if self.path == "/big" else b'{"weather": "sunny"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def services(
    tools: dict[str, ToolSpec], recording: dict[str, str] | None = None
) -> tuple[AgentServices, list[tuple[object, ...]], list[tuple[object, ...]]]:
    pushed: list[tuple[object, ...]] = []
    records: list[tuple[object, ...]] = []
    svc = AgentServices(
        push=lambda *a: pushed.append(a),
        record=lambda *a: records.append(a),
        stop_agent=lambda agent, tick: None,
        tools=tools,
        recording=recording if recording is not None else {},
    )
    return svc, pushed, records


def call(svc: AgentServices, tool: str, args: object, call_id: int = 0) -> None:
    svc.apply(3, "asker", 7, 1, 0, ("tool", call_id, 9, tool, json.dumps(args).encode()))


def answer(pushed: list[tuple[object, ...]]) -> dict[str, object]:
    tick, _priority, sender, dst, kind, payload = pushed[-1]
    assert (tick, sender, dst, kind) == (8, -1, 3, KIND_TOOL_DONE)
    assert isinstance(payload, bytes)
    result: dict[str, object] = json.loads(payload)
    return result


def test_http_tool_reaches_allowed_hosts_only_within_its_size_limit(server: str) -> None:
    web = ToolSpec("web", "http", hosts=("127.0.0.1",), max_bytes=1000)
    svc, pushed, records = services({"web": web})
    call(svc, "web", {"url": f"{server}/now"})
    got = answer(pushed)
    assert got["status"] == 0 and got["call"] == 0 and got["tag"] == 9
    assert got["result"] == {"status": 200, "body": '{"weather": "sunny"}'}
    assert records[-1][0] == "tool"  # recorded in the trace
    call(svc, "web", {"url": f"{server}/big"}, 1)
    assert "over the limit of 1000 bytes" in str(answer(pushed)["error"])
    call(svc, "web", {"url": "http://localhost:1/x"}, 2)
    got = answer(pushed)
    assert got["status"] == 1 and "host 'localhost' is not allowed (127.0.0.1)" in str(got["error"])
    call(svc, "web", {"nope": 1}, 3)
    assert "arguments must be" in str(answer(pushed)["error"])


def test_python_tool_errors_go_back_to_the_agent(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("def half(n):\n    return n // 2\n")
    svc, pushed, _ = services({"half": ToolSpec("half", "python", f"{tmp_path}/t.py:half")})
    call(svc, "half", {"n": 9})
    assert answer(pushed)["result"] == 4
    call(svc, "half", {"m": 9}, 1)
    assert "TypeError" in str(answer(pushed)["error"])
    call(svc, "ghost", {}, 2)
    assert answer(pushed)["error"] == "no tool named 'ghost'"


def test_recorded_results_are_replayed_not_called_again(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text(
        "calls = []\ndef f():\n    calls.append(1)\n    return len(calls)\n"
    )
    tool = ToolSpec("f", "python", f"{tmp_path}/t.py:f")
    svc, pushed, _ = services({"f": tool})
    call(svc, "f", {})
    first = pushed[-1]
    recording = dict(svc.recording)
    assert list(recording) == ["asker/tool/0"]
    # A second run with the recording: the same answer, and the tool is not called (a fresh
    # import of t.py would answer 1 again, but a changed tool would differ).
    (tmp_path / "t.py").write_text("def f():\n    return 'changed'\n")
    replay, pushed2, _ = services({"f": tool}, recording)
    call(replay, "f", {})
    assert pushed2[-1] == first
