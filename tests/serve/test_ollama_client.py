"""The `ollama` package against `qhybrid serve`: tags, generate and chat, NDJSON streaming,
options, format (JSON and a schema) and tool calls."""

from __future__ import annotations

import json

import jsonschema
import ollama
import pytest

from qhybrid.serve import BackgroundServer

MODEL = "tiny-stories"
PET = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
    "required": ["kind", "legs"],
}


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def test_tags_lists_the_model(client: ollama.Client) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["tiny-stories.gguf"]
    assert models[0].details is not None and models[0].details.family == "llama"
    assert models[0].size and models[0].size > 100_000


def test_generate_streams_ndjson_and_ends_with_counts(client: ollama.Client) -> None:
    parts = list(
        client.generate(
            model=MODEL,
            prompt="what color is grass?",
            stream=True,
            options={"temperature": 0, "num_predict": 12},
        )
    )
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason in ("stop", "length")
    text = "".join(p.response or "" for p in parts)
    assert "green" in text
    assert parts[-1].eval_count and parts[-1].eval_count <= 12
    assert parts[-1].prompt_eval_count and parts[-1].prompt_eval_count > 3


def test_generate_unstreamed_respects_num_predict_and_seed(client: ollama.Client) -> None:
    opts = {"num_predict": 10, "seed": 4, "temperature": 1.0}
    a = client.generate(model=MODEL, prompt="tell me a story", options=opts)
    b = client.generate(model=MODEL, prompt="tell me a story", options=opts)
    assert a.response == b.response and a.eval_count == 10 and a.done_reason == "length"


def test_chat_streams_messages(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "what sound does a cow make?"}],
            stream=True,
            options={"temperature": 0, "num_predict": 16},
        )
    )
    text = "".join(p.message.content or "" for p in parts)
    assert "moo" in text.lower()
    assert parts[-1].done


def test_chat_format_schema_validates(client: ollama.Client) -> None:
    r = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "a pet"}],
        format=PET,
        options={"num_predict": 100, "seed": 9},
    )
    jsonschema.validate(json.loads(r.message.content or ""), PET)


def test_generate_format_json(client: ollama.Client) -> None:
    r = client.generate(
        model=MODEL,
        prompt="hi",
        format="json",
        options={"num_predict": 150, "seed": 1, "temperature": 0.5},
    )
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response), dict)


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model", prompt="hi")
    assert err.value.status_code == 404 and "no-such-model" in err.value.error


def test_chat_tool_call_comes_back_as_tool_calls(client: ollama.Client) -> None:
    # Ollama has no tool_choice; a format that spells a call (what "required" compiles to on
    # the OpenAI side) makes the tiny model call the tool.
    params = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"],
    }
    call = {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": params},
        "required": ["name", "arguments"],
    }
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": params}}
    r = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[tool],
        format=call,
        options={"num_predict": 100, "seed": 2},
    )
    calls = r.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(dict(calls[0].function.arguments), params)
