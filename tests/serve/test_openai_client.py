"""The `openai` package against `qhybrid serve`: models, chat and completions, streaming,
sampling parameters, structured output and tool calls (validated with `jsonschema`)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from qhybrid.serve import BackgroundServer

MODEL = "tiny-stories"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
        "happy": {"type": "boolean"},
    },
    "required": ["name", "age", "happy"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model_by_its_qhybrid_models_name(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny-stories.gguf"]
    assert client.models.retrieve("tiny-stories").id == "tiny-stories.gguf"


def test_chat_answers_with_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what color is the sky?"}],
        max_tokens=20,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert "blue" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_ends_with_usage_and_matches_the_unstreamed_answer(
    client: openai.OpenAI,
) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "tell me a story about a cat"}],
        max_tokens=30,
        seed=11,
        temperature=0.9,
    )
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # same seed, same tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens <= 30


def test_completions_n_seed_stop_and_max_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=24, n=3, seed=5, temperature=1.0
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # each choice has its own stream
    again = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=24, n=3, seed=5, temperature=1.0
    )
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    assert r.usage is not None and r.usage.completion_tokens == 72
    one = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=1)
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 1
    stopped = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=60, temperature=0, stop=["."]
    )
    assert "." not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_completions_stream_and_top_p(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="The dog", max_tokens=12, stream=True, top_p=0.5, seed=1
        )
    )
    text = "".join(c.choices[0].text for c in chunks)
    assert text and chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_json_schema_output_always_validates(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "describe a person"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON},
        },
        max_tokens=200,
        temperature=1.0,
        seed=seed,
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_json_object_output_is_an_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        response_format={"type": "json_object"},
        max_tokens=200,
        seed=3,
        temperature=0.7,
    )
    text = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # ran out of tokens inside an unbounded object: still a valid prefix
        assert text.startswith("{")


def test_required_tool_call_has_valid_arguments(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what is the weather in Paris?"}],
        tools=[WEATHER, CLOCK],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=200,
        seed=2,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_")
    fn = calls[0].function  # type: ignore[union-attr]
    assert fn.name in ("get_weather", "get_time")
    args = json.loads(fn.arguments)
    if fn.name == "get_weather":
        jsonschema.validate(args, WEATHER["function"]["parameters"])  # type: ignore[index]


def test_named_tool_choice_streams_the_call(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "weather?"}],
            tools=[WEATHER, CLOCK],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=200,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(
        json.loads(calls[0].function.arguments or ""), WEATHER["function"]["parameters"]
    )  # type: ignore[index]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_go_back_through_the_template(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Paris", "unit": "c"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 20 C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=10,
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_chat_stream_with_n_choices(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "tell me a story"}],
            max_tokens=10,
            n=2,
            seed=1,
            stream=True,
        )
    )
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts[0] and texts[1] and texts[0] != texts[1]
    assert finishes == {0: "length", 1: "length"}
