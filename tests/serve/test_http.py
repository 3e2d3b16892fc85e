"""The HTTP contract without a client library: raw SSE parsing (as curl shows it), errors in
OpenAI's shape, the API key, the body limit, the queue limit (503) and cancellation of a
request whose client goes away."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from qhybrid.serve import BackgroundServer

MODEL = "tiny-stories"
CHAT = "/v1/chat/completions"


def _sse_events(raw: str) -> list[str]:
    """The ``data:`` payloads of an event stream, as a curl user would split them."""
    events = []
    for block in raw.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if lines:
            assert all(line.startswith("data: ") for line in lines), block
            events.append("\n".join(line[6:] for line in lines))
    return events


def test_raw_sse_stream(server: BackgroundServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a story about a cat"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post(CHAT, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = _sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def _error(r: httpx.Response) -> dict[str, object]:
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param", "code"}
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 100}, "n"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"messages": []}, "messages"),
        ({"stream": "yes"}, "stream"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]},
            "messages[0].tool_calls[0]",
        ),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    server: BackgroundServer, change: dict[str, object], param: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **change}
    r = httpx.post(server.url + CHAT, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["param"] == param and param in str(err["message"])
    assert err["type"] == "invalid_request_error"


def test_unknown_model_404_and_unknown_path_404(server: BackgroundServer) -> None:
    r = httpx.post(
        server.url + CHAT,
        json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 404 and _error(r)["code"] == "model_not_found"
    r = httpx.get(server.url + "/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_longer_than_the_context_says_both_lengths(server: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="the cat sat " * 200, max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    served = server.registry.models[0]
    n = len(served.llm.tokenizer.encode("the cat sat " * 200))
    message = str(err.value.message)
    assert f"the prompt has {n} tokens" in message and "context holds 256" in message


def test_bad_json_and_embeddings_unsupported(server: BackgroundServer) -> None:
    r = httpx.post(
        server.url + CHAT,
        content=b"{nope",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="hello")
    assert err.value.code == "embeddings_not_supported"


def test_body_over_the_limit_is_refused_before_it_is_read(
    make_server: Callable[..., BackgroundServer],
) -> None:
    srv = make_server(max_body=1000)
    host, port = "127.0.0.1", srv.port
    with socket.create_connection((host, port), timeout=10) as sock:
        # Declare a large body and send none of it: the answer must come anyway.
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # A chunked body (no length given) is cut as soon as it passes the limit.
    r = httpx.post(srv.url + CHAT, content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]), timeout=30)
    assert r.status_code == 413


def test_api_key(make_server: Callable[..., BackgroundServer]) -> None:
    srv = make_server(api_key="sesame")
    good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sesame", max_retries=0)
    assert [m.id for m in good.models.list()] == ["tiny-stories.gguf"]
    bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    r = httpx.get(srv.url + "/api/tags", timeout=30)
    assert r.status_code == 401 and "API key" in r.json()["error"]


def _open_stream(url: str, port: int, max_tokens: int) -> socket.socket:
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": "Once upon a time",
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": 1.0,
            "seed": 3,
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    data = b""
    while b"data: " not in data:
        data += sock.recv(4096)
    return sock


def _slow_steps(srv: BackgroundServer, delay: float) -> None:
    """Make each engine step take ``delay`` seconds longer, so that a request of the tiny
    model (a millisecond a token) surely still runs while the test acts on it."""
    engine = srv.registry.models[0].llm.engine
    step = engine.step

    def slow() -> list[Any]:
        time.sleep(delay)
        return step()

    engine.step = slow  # type: ignore[method-assign]


def test_queue_limit_gives_503_with_retry_after(
    make_server: Callable[..., BackgroundServer],
) -> None:
    srv = make_server(slots=1, max_queue=0)
    _slow_steps(srv, 0.02)
    sock = _open_stream(srv.url, srv.port, 200)  # holds the only slot for seconds
    try:
        r = httpx.post(
            srv.url + "/v1/completions",
            timeout=30,
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert _error(r)["code"] == "server_busy"
    finally:
        sock.close()
    served = srv.registry.models[0]
    deadline = time.monotonic() + 10
    while served.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    r = httpx.post(
        srv.url + "/v1/completions",
        timeout=30,
        json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
    )
    assert r.status_code == 200


def test_a_client_that_disconnects_cancels_its_request(
    make_server: Callable[..., BackgroundServer],
) -> None:
    srv = make_server(slots=2)
    _slow_steps(srv, 0.01)
    served = srv.registry.models[0]
    engine = served.llm.engine
    before = engine.generated_total
    sock = _open_stream(srv.url, srv.port, 240)
    sock.close()
    deadline = time.monotonic() + 10
    while (engine.has_work() or served.in_flight) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not engine.has_work() and served.in_flight == 0
    assert served.cancelled_total == 1
    # It stopped long before its 240 tokens (a step takes 10 ms here).
    assert engine.generated_total - before < 100
