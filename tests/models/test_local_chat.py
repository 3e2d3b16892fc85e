"""The chat with a local model outside any run (issue 16, item 7): a real model (SmolLM2) loaded
off the GUI thread with progress, answers streamed once from their first character through the
model's chat template, conversations kept on disk, bad files said in a sentence."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from qhybrid.models._conversations import (
    ChatTurn,
    Conversation,
    ConversationsModel,
    ConversationStore,
)
from qhybrid.models._local_chat import (
    ChatSettings,
    LocalChat,
    conversation_prompt_ids,
    find_model_choices,
)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from qhybrid.runtime.llm._fetch import FetchError, fetch_model

    try:
        return fetch_model("smollm2")
    except FetchError as exc:
        if exc.offline:
            pytest.skip(f"off-line, cannot fetch the real model smollm2: {exc}")
        raise


@pytest.fixture
def chat(qtbot: QtBot) -> Iterator[LocalChat]:
    local = LocalChat(device="cpu")
    yield local
    local.close()


def _load(qtbot: QtBot, chat: LocalChat, path: Path) -> tuple[list[float], str]:
    progress: list[float] = []
    chat.load_progress.connect(lambda _name, f: progress.append(f))
    with qtbot.waitSignal(chat.loaded, timeout=60_000) as blocker:
        chat.load(path, "SmolLM2")
    return progress, str(blocker.args[1])


def test_qhybrid_models_choices_include_the_cached_real_model(smollm2: Path) -> None:
    choices = find_model_choices()
    assert any(c.path.resolve() == smollm2.resolve() for c in choices)
    assert all(c.label for c in choices)


def test_a_real_model_loads_with_progress_and_streams_an_answer_off_the_gui_thread(
    qtbot: QtBot, chat: LocalChat, smollm2: Path
) -> None:
    progress, info = _load(qtbot, chat, smollm2)
    assert progress[0] == 0.0 and 1.0 in progress and progress[-1] == -1.0
    assert "chat template" in info and "no chat template" not in info
    pieces: list[str] = []
    threads: set[int] = set()

    def on_delta(_request: int, text: str) -> None:
        threads.add(threading.get_ident())
        pieces.append(text)

    chat.delta.connect(on_delta)
    with qtbot.waitSignal(chat.answer_done, timeout=60_000) as done:
        request = chat.ask(
            [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            ChatSettings(max_tokens=24, temperature=0.0),
        )
    assert done.args[0] == request
    assert done.args[1] in ("stop", "length")
    answer = "".join(pieces)
    # Streamed piece by piece, starting at the first visible character, never mid-word.
    assert len(pieces) > 3
    assert answer and not answer[0].isspace()
    assert "Paris" in answer
    # Delivered to the GUI thread as queued calls (the model ran elsewhere).
    assert threads == {threading.get_ident()}


def test_a_corrupt_model_file_is_a_message_not_a_traceback(
    qtbot: QtBot, chat: LocalChat, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with qtbot.waitSignal(chat.load_failed, timeout=30_000) as failed:
        chat.load(bad)
    name, message = failed.args
    assert name == "broken.gguf"
    assert str(bad) in message and "Traceback" not in message
    assert not chat.ready
    with qtbot.waitSignal(chat.load_failed, timeout=30_000) as missing:
        chat.load(tmp_path / "nope.gguf")
    assert "no such model file" in missing.args[1]


def test_asking_with_no_model_says_so(qtbot: QtBot, chat: LocalChat) -> None:
    with qtbot.waitSignal(chat.answer_failed, timeout=10_000) as failed:
        chat.ask([{"role": "user", "content": "hi"}])
    assert "no model is loaded" in failed.args[1]


class _Tok:
    """A tokenizer with a chat template that counts one token per character."""

    chat_template = "x"
    bos_id = None

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        return [ord(c) for c in text]


def test_a_long_conversation_drops_its_oldest_turns_but_keeps_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "S"}]
    for i in range(10):
        messages += [
            {"role": "user", "content": f"q{i}" * 5},
            {"role": "assistant", "content": "a"},
        ]
    messages.append({"role": "user", "content": "last"})
    ids = conversation_prompt_ids(_Tok(), messages, 80)
    text = "".join(chr(i) for i in ids)
    assert len(ids) <= 80
    assert text.startswith("<system>S") and text.endswith("<user>last<assistant>")
    assert "q0" not in text
    with pytest.raises(ValueError, match="context leaves room"):
        conversation_prompt_ids(_Tok(), [{"role": "user", "content": "x" * 100}], 50)


# -- conversations ---------------------------------------------------------------------------


def test_conversations_are_kept_on_disk_and_unreadable_files_skipped(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "chats")
    first = Conversation(title="one", model="m", system="Be brief.")
    first.turns += [ChatTurn("user", "hi"), ChatTurn("assistant", "hello", finish="stop")]
    store.save(first)
    (tmp_path / "chats" / "junk.json").write_text("{not json", "utf-8")
    again = store.load_all()
    assert [c.id for c in again] == [first.id]
    assert again[0].system == "Be brief."
    assert [(t.role, t.content) for t in again[0].turns] == [("user", "hi"), ("assistant", "hello")]
    assert again[0].messages()[0] == {"role": "system", "content": "Be brief."}
    assert len(store.problems) == 1 and "junk.json" in store.problems[0]
    store.delete(first)
    assert store.load_all() == []


def test_the_default_store_is_under_the_platform_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert ConversationStore().folder == tmp_path / "qhybrid" / "chats"


def test_a_conversation_with_the_real_model_streams_once_and_is_kept(
    qtbot: QtBot, chat: LocalChat, smollm2: Path, tmp_path: Path
) -> None:
    store = ConversationStore(tmp_path / "chats")
    model = ConversationsModel(chat, store)
    model.settings = ChatSettings(max_tokens=16, temperature=0.0)
    assert not model.send("hello")  # no model yet: refused, said
    _load(qtbot, chat, smollm2)
    model.new_conversation("Answer in one short sentence.")
    with qtbot.waitSignal(model.busy_changed, timeout=60_000, check_params_cb=lambda b: not b):
        assert model.send("Name a colour.")
    conversation = model.current
    assert conversation is not None
    assert [t.role for t in conversation.turns] == ["user", "assistant"]
    answer = conversation.turns[1]
    assert answer.done and answer.content and answer.error is None
    assert not answer.content[0].isspace()
    # A second turn: the conversation so far goes to the model again, the answer once.
    with qtbot.waitSignal(model.busy_changed, timeout=60_000, check_params_cb=lambda b: not b):
        assert model.send("And another one?")
    assert [t.role for t in conversation.turns] == ["user", "assistant"] * 2
    saved = json.loads((tmp_path / "chats" / f"{conversation.id}.json").read_text("utf-8"))
    assert saved["title"] == "Name a colour."
    assert saved["model"] == "SmolLM2"
    assert saved["system"] == "Answer in one short sentence."
    assert [t["content"] for t in saved["turns"]] == [t.content for t in conversation.turns]
    # Kept: a new model over the same folder lists it.
    again = ConversationsModel(chat, ConversationStore(tmp_path / "chats"))
    assert again.rowCount() == 1 and again.current is not None
    assert again.current.turns[1].content == answer.content


def test_closing_while_a_model_loads_leaves_no_thread_behind(qtbot: QtBot, smollm2: Path) -> None:
    local = LocalChat(device="cpu")
    with qtbot.waitSignal(local.load_progress, timeout=10_000):
        local.load(smollm2)
    local.close()  # mid-load: cancelled, its device thread closed (the autouse fixture checks)
    assert not local.ready
    assert not [t for t in threading.enumerate() if "gpu" in t.name.lower()]


def test_stop_ends_an_answer_and_keeps_what_it_has(
    qtbot: QtBot, chat: LocalChat, smollm2: Path, tmp_path: Path
) -> None:
    model = ConversationsModel(chat, ConversationStore(tmp_path / "chats"))
    model.settings = ChatSettings(max_tokens=400, temperature=0.0)
    _load(qtbot, chat, smollm2)
    chat.delta.connect(lambda _r, _t: model.stop())
    with qtbot.waitSignal(model.busy_changed, timeout=60_000, check_params_cb=lambda b: not b):
        assert model.send("Write a long story about a dragon.")
    assert model.current is not None
    answer = model.current.turns[-1]
    assert answer.done and answer.finish == "cancelled" and answer.content
    assert answer.tokens < 400
